/**
 * The Para-Former against an independent PyTorch implementation (test/fixtures, made by
 * make_paraformer_fixtures.py in float64): logits, loss and every parameter's gradient.
 * Para-Former-2-1 is exactly a ViT of depth 2; 2-3 and 1-4 exercise the branch sum.
 */
import * as fs from 'fs';
import * as path from 'path';

import * as duat from '../lib';
import { native } from '../lib/native';

/** float32 forward/backward against float64: relative to each tensor's largest value. */
const FIXTURE_TOL = 1e-4;

interface Fixture {
  config: duat.ParaFormerOptions & { depth: number; branches: number };
  images: number[];
  imageShape: number[];
  labels: number[];
  logits: number[];
  loss: number;
  params: Record<string, { shape: number[]; data: number[] }>;
  grads: Record<string, number[]>;
}

function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0, scale = 1e-12;
  for (let i = 0; i < b.length; i++) scale = Math.max(scale, Math.abs(b[i]));
  for (let i = 0; i < b.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return a.length === b.length ? worst / scale : Infinity;
}

describe.each(['paraformer-2-1', 'paraformer-2-3', 'paraformer-1-4'])('%s against PyTorch', (name) => {
  const fx: Fixture = JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', `${name}.json`), 'utf8'));

  test('logits, loss and all gradients match to 1e-4 relative', () => {
    const model = new duat.ParaFormer(fx.config);
    const sd = new Map(Object.entries(fx.params).map(([k, v]) => [k, duat.tensor(Float32Array.from(v.data), v.shape)]));
    model.loadStateDict(sd);
    for (const t of sd.values()) t.dispose();
    duat.tidy(() => {
      const images = duat.tensor(Float32Array.from(fx.images), fx.imageShape);
      const logits = model.forward(images);
      expect(relErr(logits.toArray(), fx.logits)).toBeLessThan(FIXTURE_TOL);
      const loss = duat.F.crossEntropy(logits, Int32Array.from(fx.labels));
      expect(Math.abs(loss.item() - fx.loss) / Math.abs(fx.loss)).toBeLessThan(FIXTURE_TOL);
      loss.backward();
      for (const [pname, p] of model.namedParameters()) {
        const err = relErr(p.grad!.toArray(), fx.grads[pname]);
        if (err >= FIXTURE_TOL) throw new Error(`gradient of ${pname}: relative error ${err}`);
      }
    });
    model.dispose();
  });

  test('the async training step computes the same loss and gradients', async () => {
    const model = new duat.ParaFormer(fx.config);
    const sd = new Map(Object.entries(fx.params).map(([k, v]) => [k, duat.tensor(Float32Array.from(v.data), v.shape)]));
    model.loadStateDict(sd);
    for (const t of sd.values()) t.dispose();
    const images = duat.tensor(Float32Array.from(fx.images), fx.imageShape);
    const r = await model.trainStep(images, Int32Array.from(fx.labels));
    expect(Math.abs(r.loss - fx.loss) / Math.abs(fx.loss)).toBeLessThan(FIXTURE_TOL);
    for (const [pname, p] of model.namedParameters()) expect(relErr(p.grad!.toArray(), fx.grads[pname])).toBeLessThan(FIXTURE_TOL);
    images.dispose();
    model.dispose();
  });
});

describe('ParaFormer', () => {
  test('parameter names and shapes follow docs/design.md, stacked over branches', () => {
    const m = new duat.ParaFormer({ depth: 2, branches: 3, dim: 16, heads: 2, mlpRatio: 2 });
    const shapes = Object.fromEntries(m.namedParameters().map(([n, p]) => [n, p.shape]));
    expect(shapes['patch_embed.proj.weight']).toEqual([16, 1, 4, 4]);
    expect(shapes['pos_embed']).toEqual([1, 50, 16]);
    expect(shapes['stages.1.attn.qkv.weight']).toEqual([3, 48, 16]);
    expect(shapes['stages.0.mlp.fc2.weight']).toEqual([3, 16, 32]);
    expect(shapes['head.weight']).toEqual([10, 16]);
    expect(Object.keys(shapes)).toHaveLength(4 + 2 * 12 + 4);
    m.dispose();
  });

  test('presets, and dynamicParameters gives each stage and branch its attention maps', () => {
    const m = duat.ParaFormer.preset('para-former-2-3', 'mnist', { dim: 16, heads: 2 });
    expect(m.config.depth).toBe(2);
    expect(m.config.branches).toBe(3);
    duat.tidy(() => {
      const maps = m.dynamicParameters(duat.randn([2, 1, 28, 28], { seed: 1 }));
      expect(maps.map((x) => [x.stage, x.branch])).toEqual([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]);
      expect(maps[0].maps.shape).toEqual([2, 2, 50, 50]);
      const rowSums = maps[4].maps.sum(-1).toArray();
      for (const s of rowSums) expect(Math.abs(s - 1)).toBeLessThan(1e-5);  // each row is a distribution
    });
    const vit = duat.ParaFormer.preset('vit-3', 'mnist', { dim: 16, heads: 2 });
    expect([vit.config.depth, vit.config.branches]).toEqual([3, 1]);
    m.dispose();
    vit.dispose();
  });

  test("'mean' combine scales the branch sum by 1/n", () => {
    duat.tidy(() => {
      const a = new duat.ParaFormer({ depth: 1, branches: 2, dim: 8, heads: 2, seed: 3 });
      const b = new duat.ParaFormer({ depth: 1, branches: 2, dim: 8, heads: 2, seed: 3, combine: 'mean' });
      const x = duat.randn([2, 1, 28, 28], { seed: 2 });
      expect(Array.from(a.forward(x).toArray())).not.toEqual(Array.from(b.forward(x).toArray()));
      a.dispose();
      b.dispose();
    });
  });

  test('bad configs and inputs give typed errors', () => {
    expect(() => new duat.ParaFormer({ patchSize: 5 })).toThrow(/Expected patchSize to divide imageSize \(28\) but received 5/);
    expect(() => new duat.ParaFormer({ dim: 10, heads: 4 })).toThrow(duat.ArgumentError);
    expect(() => new duat.ParaFormer({ branches: 0 })).toThrow(/Expected integer in \[1, 4096\] for branches but received 0/);
    if (!duat.backendInfo().cuda.available) expect(() => new duat.ParaFormer({ device: 'cuda' })).toThrow(duat.DeviceError);
    expect(() => duat.ParaFormer.preset('resnet-50')).toThrow(/Expected a preset like/);
    const m = new duat.ParaFormer({ dim: 8, heads: 2 });
    duat.tidy(() => {
      expect(() => m.forward(duat.zeros([2, 3, 28, 28]))).toThrow(/expected images of shape \[B, 1, 28, 28\] but got \[2, 3, 28, 28\]/);
      expect(() => m.forward(duat.zeros([2, 1, 32, 32]))).toThrow(duat.ShapeError);
    });
    m.dispose();
  });

  test('a model in a training step refuses to be used until the step settles', async () => {
    const m = new duat.ParaFormer({ dim: 8, heads: 2 });
    const x = duat.randn([4, 1, 28, 28], { seed: 1 });
    const p = m.trainStep(x, Int32Array.from([0, 1, 2, 3]));
    expect(() => m.forward(x)).toThrow(duat.StateError);
    await p;
    m.forward(x).dispose();
    await expect(m.trainStep(x, Int32Array.from([0, 1, 2, 99]))).rejects.toThrow(/label 99 at index 3 is outside \[0, 10\)/);
    x.dispose();
    m.dispose();
  });
});

test('a failed evaluation leaves the worker threads able to train (grad mode is restored)', async () => {
  const m = new duat.ParaFormer({ dim: 8, heads: 2, patchSize: 7 });
  const x = duat.randn([4, 1, 28, 28], { seed: 1 });
  // More failures than libuv has worker threads: whichever thread runs the jobs (the engine
  // thread; before it, each of libuv's) has run one.
  for (let i = 0; i < 12; i++) await expect(m.evaluate(x, Int32Array.from([0, 1, 2, 99]))).rejects.toThrow(/label 99/);
  for (let i = 0; i < 8; i++) {
    const r = await m.trainStep(x, Int32Array.from([0, 1, 2, 3]));
    expect(r.gradNorm).toBeGreaterThan(0);
  }
  x.dispose();
  m.dispose();
});

describe('inference reuses derived weights (LN folds, fc2 concatenation) and sees every update', () => {
  const cfg = { depth: 2, branches: 3, dim: 16, heads: 2, patchSize: 7, seed: 5 } as const;
  // The recording forward derives the weights afresh every time: the reference.
  const recorded = (m: duat.ParaFormer, x: duat.Tensor) => duat.tidy(() => m.forward(x).detach().toArray());
  const inference = (m: duat.ParaFormer, x: duat.Tensor) => duat.noGrad(() => duat.tidy(() => m.forward(x).toArray()));

  test('after optimizer steps, loadStateDict, copy_ and an in-place scale', async () => {
    const m = new duat.ParaFormer(cfg);
    const x = duat.randn([3, 1, 28, 28], { seed: 9 });
    const first = inference(m, x);
    expect(relErr(first, recorded(m, x))).toBeLessThan(1e-6);
    expect(relErr(inference(m, x), first)).toBe(0);  // the cached weights give the same result
    // An AdamW step (in place, on a worker thread).
    const opt = new duat.optim.AdamW(m.parameters(), { lr: 0.05 });
    await m.trainStep(x, Int32Array.from([1, 2, 3]), { optimizer: opt });
    const stepped = inference(m, x);
    expect(relErr(stepped, first)).toBeGreaterThan(1e-3);
    expect(relErr(stepped, recorded(m, x))).toBeLessThan(1e-6);
    // Other parameters loaded (copy into the same tensors).
    const other = new duat.ParaFormer({ ...cfg, seed: 6 });
    m.loadStateDict(other.stateDict());
    expect(relErr(inference(m, x), recorded(other, x))).toBeLessThan(1e-6);
    // One source of a fold changed through copy_, then through an in-place scale.
    const g = m.namedParameters().find(([n]) => n === 'stages.1.norm2.weight')![1];
    g.copy_(duat.full(g.shape, 0.5));
    expect(relErr(inference(m, x), recorded(m, x))).toBeLessThan(1e-6);
    const w2 = m.namedParameters().find(([n]) => n === 'stages.0.mlp.fc2.weight')![1];
    duat.optim.clipGradNorm([w2], 1);  // no gradient: nothing changes
    native().scaleInplace(w2.handle, 3);
    expect(relErr(inference(m, x), recorded(m, x))).toBeLessThan(1e-6);
    duat.emptyCache();  // drops the derived weights too
    expect(relErr(inference(m, x), recorded(m, x))).toBeLessThan(1e-6);
    x.dispose();
    m.dispose();
    other.dispose();
  });
});

describe('inference computes the last stage for the class token alone', () => {
  // The products of one inference pass at batch 2 (rows: 2 x 17 tokens = 34, or the 2 class tokens).
  const productRows = async (m: duat.ParaFormer, x: duat.Tensor) => {
    const { report } = await duat.profile(() => duat.noGrad(() => duat.tidy(() => void m.forward(x).toArray())));
    return report.products.map((p) => Number(p.shape.split('x')[0]));
  };
  const recorded = (m: duat.ParaFormer, x: duat.Tensor) => duat.tidy(() => m.forward(x).detach().toArray());
  const inference = (m: duat.ParaFormer, x: duat.Tensor) => duat.noGrad(() => duat.tidy(() => m.forward(x).toArray()));

  test.each([
    ['Para-Former-1-4', { depth: 1, branches: 4 }],
    ['Para-Former-2-3 with layer scale', { depth: 2, branches: 3, layerScale: 0.5 }],
    ['ViT-3', { depth: 3, branches: 1 }],
  ])('%s: the same logits as every token gives, from products of 2 rows past the last attention', async (_, o) => {
    const m = new duat.ParaFormer({ dim: 16, heads: 2, patchSize: 7, seed: 3, ...o });
    const x = duat.randn([2, 1, 28, 28], { seed: 4 });
    expect(relErr(inference(m, x), recorded(m, x))).toBeLessThan(1e-6);
    const rows = await productRows(m, x);
    // Every stage's QKV over every token; the last stage's projection and MLP over the class tokens.
    expect(rows.filter((r) => r === 34).length).toBeGreaterThanOrEqual(o.depth);
    expect(rows).toContain(2);
    expect(rows.filter((r) => r === 2).length).toBeGreaterThanOrEqual(3);  // proj, fc1, fc2 (+ head)
    x.dispose();
    m.dispose();
  });

  test('a model pooled by the mean of its tokens computes every token', async () => {
    const m = new duat.ParaFormer({ dim: 16, heads: 2, patchSize: 7, depth: 1, branches: 2, seed: 3, pool: 'avg', layerScale: 0, preNorm: false, patchBias: true });
    const x = duat.randn([2, 1, 28, 28], { seed: 4 });
    expect(relErr(inference(m, x), recorded(m, x))).toBeLessThan(1e-6);
    const rows = await productRows(m, x);
    expect(rows.filter((r) => r === 34).length).toBeGreaterThanOrEqual(3);  // qkv, proj, fc1, fc2
    expect(rows.filter((r) => r === 2).length).toBeLessThanOrEqual(1);    // the head alone
    x.dispose();
    m.dispose();
  });
});

test('an empty batch gives empty logits, with and without a gradient; a training step on it is a ShapeError', async () => {
  // (LayerNorm's residual check divided by the residual's rows: an empty batch was refused with a
  // message about residual shapes.)
  const m = new duat.ParaFormer({ dim: 16, heads: 2, patchSize: 7, depth: 2, branches: 2, seed: 3 });
  const x = duat.randn([0, 1, 28, 28], { seed: 4 });
  expect(duat.noGrad(() => duat.tidy(() => m.forward(x).shape))).toEqual([0, 10]);
  const y = m.forward(x);
  expect(y.shape).toEqual([0, 10]);
  y.sum().backward();
  y.dispose();
  const opt = new duat.optim.AdamW(m.parameters(), { lr: 1e-3 });
  await expect(m.trainStep(x, new Int32Array(0), { optimizer: opt })).rejects.toThrow(duat.ShapeError);
  x.dispose();
  m.dispose();
});
