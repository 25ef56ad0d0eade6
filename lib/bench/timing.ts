/** What the benchmark's worker processes share: the job they are given and how they time it. */

export interface WorkerJob {
  config: Record<string, unknown>;
  mode: 'infer' | 'train';
  reps: number;
  threads: number;
  batch: number;
  /** duat worker only: the model's precision ('bf16': AVX512_BF16 products on the CPU). */
  precision?: 'fp32' | 'bf16';
  /** onnxruntime worker only: the exported model and where onnxruntime-node lives. */
  onnx?: string;
  ort?: string;
}

export interface Timing {
  median_ms: number;
  min_ms: number;
  max_ms: number;
}

/** Seconds of FMA chains measured after each timed training step (the peak alongside). */
export const PEAK_ALONGSIDE_SECONDS = 0.05;

/** Warm-up runs before timing: at least this many, and for at least WARMUP_SECONDS (the first
 * runs of a fresh process are slow while code, caches and allocators warm; bench_torch.py
 * warms PyTorch the same way). */
export const WARMUP_RUNS = 3;
export const WARMUP_SECONDS = 1;

/** Warm-up (WARMUP_RUNS and WARMUP_SECONDS), then `reps` timed runs: median, min and max in
 * milliseconds. `after`, when given, runs after each timed run, outside its time. */
export async function timeRuns(fn: () => Promise<void> | void, reps: number, after?: () => void): Promise<Timing> {
  const start = process.hrtime.bigint();
  for (let i = 0; i < WARMUP_RUNS || Number(process.hrtime.bigint() - start) / 1e9 < WARMUP_SECONDS; i++) await fn();
  const t: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    t.push(Number(process.hrtime.bigint() - t0) / 1e6);
    after?.();
  }
  t.sort((a, b) => a - b);
  return { median_ms: t[Math.floor(t.length / 2)], min_ms: t[0], max_ms: t[t.length - 1] };
}
