/**
 * bf16 on the CPU: `precision: 'bf16'` rounds the large products' operands to bf16 (AMX tiles or
 * AVX512_BF16, float32 sums) while weights, gradients and optimizer state stay float32; 'fp32' and 'tf32' are
 * float32. Where the CPU lacks the instructions, 'bf16' computes exactly the float32 result.
 */
import { spawnSync } from 'child_process';
import * as path from 'path';
import * as duat from '../lib';

const cfg = { imageSize: 16, patchSize: 4, channels: 1, classes: 5, dim: 32, heads: 2, depth: 2, branches: 2, mlpRatio: 2, seed: 3 };
const hasBf16 = duat.backendInfo().cpu.bf16;

function logits(precision: 'fp32' | 'tf32' | 'bf16', x: duat.Tensor): Float32Array {
  const model = new duat.ParaFormer({ ...cfg, precision });
  const out = duat.noGrad(() => duat.tidy(() => model.forward(x).toArray())) as Float32Array;
  model.dispose();
  return out;
}

function maxRelDiff(a: Float32Array, b: Float32Array): number {
  let worst = 0, scale = 1e-12;
  for (let i = 0; i < a.length; i++) scale = Math.max(scale, Math.abs(b[i]));
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst / scale;
}

test("'bf16' logits are float32's to bf16 accuracy (different where the CPU has AVX512_BF16, equal where not); 'tf32' is float32", () => {
  const x = duat.randn([8, 1, 16, 16], { seed: 5 });  // 8 x 17 tokens: products on the packed path
  const f32 = logits('fp32', x), t32 = logits('tf32', x), b16 = logits('bf16', x);
  expect(Array.from(t32)).toEqual(Array.from(f32));
  const diff = maxRelDiff(b16, f32);
  if (hasBf16) {
    expect(diff).toBeGreaterThan(1e-6);
    expect(diff).toBeLessThan(3e-2);
  } else {
    expect(diff).toBe(0);
  }
  x.dispose();
});

test("training in 'bf16' lowers the loss like float32 and keeps float32 parameters and optimizer state", async () => {
  const x = duat.randn([16, 1, 16, 16], { seed: 6 });
  const y = Int32Array.from({ length: 16 }, (_, i) => i % 5);
  const losses: Record<string, number[]> = {};
  for (const precision of ['fp32', 'bf16'] as const) {
    const model = new duat.ParaFormer({ ...cfg, precision });
    const opt = new duat.optim.AdamW(model.parameters(), { lr: 3e-3 });
    losses[precision] = [];
    for (let i = 0; i < 30; i++) losses[precision].push((await model.trainStep(x, y, { optimizer: opt })).loss);
    for (const p of model.parameters()) expect(p.dtype).toBe('float32');
    model.dispose();
  }
  expect(losses.bf16[29]).toBeLessThan(0.5 * losses.bf16[0]);
  expect(Math.abs(losses.bf16[0] - losses.fp32[0])).toBeLessThan(0.02 * losses.fp32[0]);
  if (hasBf16) expect(losses.bf16).not.toEqual(losses.fp32);
  x.dispose();
});

test('setPrecision switches a model between float32 and bf16 products', () => {
  const x = duat.randn([8, 1, 16, 16], { seed: 7 });
  const model = new duat.ParaFormer({ ...cfg, precision: 'fp32' });
  const run = () => duat.noGrad(() => duat.tidy(() => model.forward(x).toArray())) as Float32Array;
  const a = run();
  model.setPrecision('bf16');
  const b = run();
  model.setPrecision('fp32');
  expect(Array.from(run())).toEqual(Array.from(a));
  expect(maxRelDiff(b, a) > 0).toBe(hasBf16);
  model.dispose();
  x.dispose();
});

test("bf16 on AMX tiles (where the CPU has them) agrees with vdpbf16ps (DUAT_CPU_AMX=0) to bf16 accuracy", () => {
  // Fresh processes: AMX is chosen at load. 40 images of 50 tokens: products on the packed path
  // with rows that are no multiple of 32 and K of 64 and 128.
  const script = `
    const duat = require(${JSON.stringify(path.join(__dirname, '..', 'dist'))});
    const model = new duat.ParaFormer({ imageSize: 28, patchSize: 4, channels: 1, classes: 10, dim: 64, heads: 2,
      depth: 1, branches: 2, mlpDim: 128, seed: 3, precision: 'bf16' });
    const out = duat.noGrad(() => model.forward(duat.randn([40, 1, 28, 28], { seed: 2 })).toArray());
    process.stdout.write(JSON.stringify({ amx: duat.backendInfo().cpu.amx, out: Array.from(out) }));`;
  const run = (amx: string) => {
    const r = spawnSync(process.execPath, ['-e', script], { env: { ...process.env, DUAT_CPU_AMX: amx }, encoding: 'utf8' });
    expect(r.stderr).toBe('');
    return JSON.parse(r.stdout) as { amx: boolean; out: number[] };
  };
  const tiles = run('1'), vdp = run('0');
  expect(vdp.amx).toBe(false);
  const a = Float32Array.from(tiles.out), b = Float32Array.from(vdp.out);
  const diff = maxRelDiff(a, b);
  if (tiles.amx) {
    expect(diff).toBeGreaterThan(0);  // another order of the bf16 sums
    expect(diff).toBeLessThan(3e-2);
  } else {
    expect(diff).toBe(0);
  }
});
