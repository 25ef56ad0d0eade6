/**
 * Times one configuration in a fresh process (so peak RSS is this measurement's): inference at
 * batch 1 and `batch`, or a training step (forward, backward, AdamW) at `batch`. Prints JSON.
 * Usage: node dist/bench/worker.js '{"config": {...}, "mode": "infer"|"train", "reps": 10, "threads": 2, "batch": 64, "precision": "fp32"|"bf16"}'
 */
import * as duat from '../index';
import { native } from '../native';
import { PEAK_ALONGSIDE_SECONDS, timeRuns, WorkerJob } from './timing';

async function main(): Promise<void> {
  const job = JSON.parse(process.argv[2]) as WorkerJob;
  const cfg = job.config as duat.ParaFormerOptions;
  duat.setNumThreads(job.threads);
  const model = new duat.ParaFormer({ ...cfg, precision: job.precision ?? 'fp32' });
  const size = cfg.imageSize ?? 28, ch = cfg.channels ?? 1;
  const out: Record<string, unknown> = { framework: 'duat', variant: job.precision === 'bf16' ? 'duat+bf16' : 'duat', threads: duat.getNumThreads(), isa: duat.backendInfo().cpu.isa, gemm_tuning: duat.backendInfo().cpu.gemmTuning };
  if (job.mode === 'infer') {
    for (const b of [1, job.batch]) {
      const x = duat.randn([b, ch, size, size], { seed: 1 });
      out[`infer_b${b}`] = await timeRuns(() => duat.noGrad(() => duat.tidy(() => void model.forward(x).toArray())), job.reps);
      x.dispose();
    }
  } else {
    const x = duat.randn([job.batch, ch, size, size], { seed: 1 });
    const y = Int32Array.from({ length: job.batch }, (_, i) => i % (cfg.classes ?? 10));
    const opt = new duat.optim.AdamW(model.parameters(), { lr: 1e-3 });
    // The machine's peak of the step's precision, measured after each timed step (the same
    // neighbours, the same clocks): its median is `peak_alongside`.
    const cpu = duat.backendInfo().cpu;
    const kind = job.precision === 'bf16' ? (cpu.amx ? 3 : 2) : cpu.isa === 'avx512' ? 1 : 0;
    const peaks: number[] = [];
    out[`train_b${job.batch}`] = await timeRuns(async () => void (await model.trainStep(x, y, { optimizer: opt })), job.reps,
      () => peaks.push(native().cpuPeak(kind, job.threads, PEAK_ALONGSIDE_SECONDS) ?? NaN));
    peaks.sort((a, b) => a - b);
    out.peak_alongside = peaks[Math.floor(peaks.length / 2)];
  }
  out.peak_rss_mb = process.resourceUsage().maxRSS / 1024;
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e: unknown) => {
  process.stderr.write(String(e instanceof Error ? e.stack : e) + '\n');
  process.exit(1);
});
