/**
 * The fast paths against the reference at realistic sizes: every CPU ISA the machine has
 * (AVX-512, AVX2+FMA, portable) and 1 or 2 threads give the float64 result.
 */
import { spawnSync } from 'child_process';
import * as path from 'path';
import * as duat from '../lib';
import { native } from '../lib/native';
import { randomData, rng } from './helpers/gradcheck';
import * as R from './helpers/reference';

/** fp32 products with K = 300 against fp64, relative to the output scale. */
const GEMM_TOL = 2e-5;
const ISAS = ['generic', 'avx2', 'avx512'] as const;

function maxRelErr(a: Float32Array, b: Float64Array): number {
  let worst = 0, scale = 1;
  b.forEach((v) => (scale = Math.max(scale, Math.abs(v))));
  b.forEach((v, i) => (worst = Math.max(worst, Math.abs(a[i] - v))));
  return worst / scale;
}

describe('CPU backends', () => {
  const info = duat.backendInfo();
  const available = ISAS.slice(0, ISAS.indexOf(info.cpu.isaBest as (typeof ISAS)[number]) + 1);

  test('backendInfo describes the CPU and why CUDA is unavailable', () => {
    expect(ISAS).toContain(info.cpu.isa);
    expect(info.cpu.threads).toBeGreaterThanOrEqual(1);
    expect(['amd', 'intel']).toContain(info.cpu.gemmTuning);
    // Either CUDA works (a CUDA build on a GPU machine) or the reason it does not is given.
    expect(info.cuda.available ? info.cuda.reason : 'unavailable').toBe(info.cuda.available ? '' : 'unavailable');
    if (!info.cuda.available) expect(info.cuda.reason.length).toBeGreaterThan(0);
  });

  test.each(available.map((isa) => [isa]))('linear forward and backward on %s kernels match float64', (isa) => {
    const prev = native().setCpuIsa(ISAS.indexOf(isa) as 0 | 1 | 2);
    try {
      // The last shape takes the split-K path for dW (K = rows = 2000 > 4 (M + N)).
      for (const [rows, inF, outF] of [[133, 300, 70], [64, 17, 129], [2000, 20, 30]]) {
        const next = rng(rows + inF);
        const xd = randomData({ shape: [rows, inF] }, next), wd = randomData({ shape: [outF, inF] }, next);
        const bd = randomData({ shape: [outF] }, next), gd = randomData({ shape: [rows, outF] }, next);
        duat.tidy(() => {
          const x = duat.tensor(xd, [rows, inF], { requiresGrad: true });
          const w = duat.tensor(wd, [outF, inF], { requiresGrad: true });
          const y = duat.F.linear(x, w, duat.tensor(bd, [outF]));
          const ref = R.linear(R.arr(xd, [rows, inF]), R.arr(wd, [outF, inF]), R.arr(bd, [outF]));
          expect(maxRelErr(y.toArray(), ref.data)).toBeLessThan(GEMM_TOL);
          y.backward(duat.tensor(gd, [rows, outF]));
          const dx = R.matmul(R.arr(gd, [rows, outF]), R.arr(wd, [outF, inF]));
          const dw = R.matmul(R.permute(R.arr(gd, [rows, outF]), [1, 0]), R.arr(xd, [rows, inF]));
          expect(maxRelErr(x.grad!.toArray(), dx.data)).toBeLessThan(GEMM_TOL);
          expect(maxRelErr(w.grad!.toArray(), dw.data)).toBeLessThan(GEMM_TOL);
        });
      }
    } finally {
      native().setCpuIsa(prev as 0 | 1 | 2);
    }
  });

  test('results do not depend on the thread count', () => {
    const run = () =>
      duat.tidy(() => {
        const x = duat.randn([2, 50, 96], { seed: 4 });
        return duat.F.attention(x, 4).add(duat.F.layerNorm(duat.randn([2, 50, 32], { seed: 5 }))).toArray();
      });
    const threads = duat.getNumThreads();
    duat.setNumThreads(1);
    const one = run();
    duat.setNumThreads(2);
    const two = run();
    duat.setNumThreads(threads);
    expect(Array.from(two)).toEqual(Array.from(one));
  });

  test('a training step gives the same bits under either product tuning (DUAT_GEMM_TUNING)', () => {
    // A Para-Former-1-2 step at batch 40 (2000 tokens): weight gradients over a long K (a
    // transposed A packed or read in place), fc1's GELU and its backward from the tiles.
    const script = `
      const duat = require(${JSON.stringify(path.join(__dirname, '..', 'dist'))});
      const model = new duat.ParaFormer({ imageSize: 28, channels: 1, patchSize: 4, dim: 64, heads: 2, mlpDim: 256,
        depth: 1, branches: 2, classes: 10, seed: 3 });
      const x = duat.randn([40, 1, 28, 28], { seed: 1 });
      const y = Int32Array.from({ length: 40 }, (_, i) => i % 10);
      const opt = new duat.optim.AdamW(model.parameters(), { lr: 1e-3 });
      model.trainStep(x, y, { optimizer: opt }).then((r) => {
        const hash = require('crypto').createHash('sha256');
        for (const p of model.parameters()) hash.update(Buffer.from(p.toArray().buffer));
        process.stdout.write(JSON.stringify({ tuning: duat.backendInfo().cpu.gemmTuning, loss: r.loss, params: hash.digest('hex') }));
      });`;
    const run = (tuning: string) => {
      const r = spawnSync(process.execPath, ['-e', script], { env: { ...process.env, DUAT_GEMM_TUNING: tuning }, encoding: 'utf8' });
      expect(r.stderr).toBe('');
      return JSON.parse(r.stdout) as { tuning: string; loss: number; params: string };
    };
    const amd = run('amd'), intel = run('intel');
    expect([amd.tuning, intel.tuning]).toEqual(['amd', 'intel']);
    expect(intel.loss).toBe(amd.loss);
    expect(intel.params).toBe(amd.params);
  });

  test('setCpuIsa refuses an unknown kernel set, and the active one stays', () => {
    expect(() => native().setCpuIsa(3 as never)).toThrow(/Expected integer in \[0, 2\] for isa/);
    expect(duat.backendInfo().cpu.isa).toBe(info.cpu.isa);
  });
});
