/**
 * Times the PyTorch reference exported to ONNX under onnxruntime-node (CPU execution provider,
 * `threads` intra-op threads, all graph optimisations): inference at batch 1 and `batch`, in a
 * fresh process. onnxruntime-node is not a dependency of duat: the job names where it lives.
 * Usage: node dist/bench/ort-worker.js '<WorkerJob json with onnx and ort>'
 */
import { timeRuns, WorkerJob } from './timing';

interface OrtTensor {
  dispose?: () => void;
}
interface Ort {
  InferenceSession: { create(path: string, o: object): Promise<{ run(feeds: object): Promise<Record<string, OrtTensor>> }> };
  Tensor: new (type: string, data: Float32Array, dims: number[]) => OrtTensor;
  version?: string;
}

async function main(): Promise<void> {
  const job = JSON.parse(process.argv[2]) as WorkerJob;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const ort = require(job.ort!) as Ort;
  const session = await ort.InferenceSession.create(job.onnx!, {
    executionProviders: ['cpu'], intraOpNumThreads: job.threads, interOpNumThreads: 1, graphOptimizationLevel: 'all', executionMode: 'sequential',
  });
  const cfg = job.config as { imageSize: number; channels: number };
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const version = (require(require('path').join(job.ort!, '..', '..', 'package.json')) as { version: string }).version;
  const out: Record<string, unknown> = { framework: `onnxruntime-node ${version}`, variant: 'onnxruntime', threads: job.threads };
  for (const b of [1, job.batch]) {
    const n = b * cfg.channels * cfg.imageSize * cfg.imageSize;
    const x = new ort.Tensor('float32', Float32Array.from({ length: n }, (_, i) => Math.sin(i)), [b, cfg.channels, cfg.imageSize, cfg.imageSize]);
    out[`infer_b${b}`] = await timeRuns(async () => void (await session.run({ images: x })), job.reps);
  }
  out.peak_rss_mb = process.resourceUsage().maxRSS / 1024;
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e: unknown) => {
  process.stderr.write(String(e instanceof Error ? e.stack : e) + '\n');
  process.exit(1);
});
