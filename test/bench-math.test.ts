/** The benchmark's arithmetic (lib/bench/bench.ts): analytic FLOPs and the fraction of the peak
 * measured alongside the steps. */
import { alongside, modelFlops } from '../lib/bench/bench';

const TINY = { dim: 192, heads: 3, mlpRatio: 4, patchSize: 4, imageSize: 28, channels: 1, classes: 10 };

describe('benchmark arithmetic', () => {
  test('a block adds its four products three times (forward, dX, dW) and attention three times', () => {
    const block = (d: number) => modelFlops({ ...TINY, depth: d, branches: 1 }, 64).train;
    const rows = 64 * 50, products = 2 * rows * 192 * (576 + 192 + 768 + 768), attention = 4 * 64 * 3 * 50 * 50 * 64;
    expect(block(2) - block(1)).toBeCloseTo(3 * products + 3 * attention, -3);
    expect(modelFlops({ ...TINY, depth: 1, branches: 4 }, 64).train).toBeCloseTo(block(4), -3);
  });

  test('alongside: the median over rounds of FLOPs over step time over that round\'s peak', () => {
    const key = 'train_b64';
    const round = (ms: number, peak?: number) => ({ framework: 'duat', variant: 'duat', peak_rss_mb: 1, [key]: { median_ms: ms, min_ms: ms, max_ms: ms }, ...(peak ? { peak_alongside: peak } : {}) });
    const runs = { runner: 'duat', mode: 'train' as const, runs: [round(100, 400), round(200, 400), round(100, 200)] };
    // 40 GFLOP in 0.1 s = 400 GFLOP/s: 1.0 of 400, 0.5 of 400 (0.2 s), 2.0 of 200
    expect(alongside(runs, key, 40e9)).toBeCloseTo(1.0, 6);
    expect(alongside({ ...runs, runs: [round(100)] }, key, 40e9)).toBeUndefined();
    expect(alongside(undefined, key, 40e9)).toBeUndefined();
  });
});
