/**
 * lib/nn by value: the ParaFormer's defaults and every option's error with its bounds, presets,
 * timm's initialisation per parameter, the no-decay names, the attention maps per branch, the
 * training step's argument checks, and Module/Linear/LayerNorm (state dicts, modes, init,
 * forward against a hand computation). Written against the survivors of the mutation run of
 * lib/nn (docs/reliability.md).
 */
import * as duat from '../lib';
import * as R from './helpers/reference';

const small = { dim: 8, heads: 2, patchSize: 7, depth: 1, branches: 2 };

function stats(t: duat.Tensor): { min: number; max: number; mean: number; std: number } {
  const v = t.toArray();
  let s = 0, s2 = 0, min = Infinity, max = -Infinity;
  for (const x of v) {
    s += x;
    s2 += x * x;
    min = Math.min(min, x);
    max = Math.max(max, x);
  }
  const mean = s / v.length;
  return { min, max, mean, std: Math.sqrt(s2 / v.length - mean * mean) };
}

describe('ParaFormer options', () => {
  test('defaults: a Para-Former-1-4 for 28 x 28 digits, width 64, 4 heads, MLP 128, sum', () => {
    const m = new duat.ParaFormer();
    expect(m.config).toEqual({
      imageSize: 28, patchSize: 4, channels: 1, classes: 10, dim: 64, heads: 4, depth: 1, branches: 4, mlpRatio: 2, combine: 'sum',
      layerScale: 0, preNorm: false, patchBias: true, pool: 'token', eps: 1e-6, seed: 0,
    });
    expect(m.mlpHidden).toBe(128);
    expect(m.nativeConfig()).toMatchObject({ mlpHidden: 128, eps: 1e-6, branchScale: 1 });
    expect(m.device).toBe('cpu');
    const shapes = new Map(m.namedParameters().map(([n, p]) => [n, p.shape]));
    expect(shapes.get('pos_embed')).toEqual([1, 50, 64]);
    expect(shapes.get('stages.0.mlp.fc1.weight')).toEqual([4, 128, 64]);
    m.dispose();
    const mean = new duat.ParaFormer({ ...small, branches: 4, combine: 'mean', mlpRatio: 1.5 });
    expect(mean.nativeConfig()).toMatchObject({ branchScale: 0.25, mlpHidden: 12 });
    mean.dispose();
  });

  test.each([
    [{ imageSize: 0 }, /imageSize/],
    [{ imageSize: 2 ** 20 + 1 }, /imageSize/],
    [{ patchSize: 0 }, /patchSize/],
    [{ channels: 4097 }, /channels/],
    [{ classes: 0 }, /classes/],
    [{ dim: 65537 }, /dim/],
    [{ heads: 0 }, /heads/],
    [{ depth: 4097 }, /depth/],
    [{ branches: 0 }, /branches/],
    [{ mlpRatio: 1 / 128 }, /mlpRatio/],
    [{ mlpRatio: 65 }, /mlpRatio/],
    [{ combine: 'max' }, /combine/],
    [{ seed: -1 }, /seed/],
    [{ precision: 'fp16' }, /precision/],
    [{ imageSize: 28, patchSize: 5 }, /Expected patchSize to divide imageSize \(28\) but received 5/],
    [{ dim: 64, heads: 5 }, /Expected heads to divide dim \(64\) but received 5/],
    [{ dim: 64, mlpRatio: 1.01 }, /Expected mlpRatio to make an integer MLP width from dim 64 but received 1\.01/],
    [7, /Expected an options object for ParaFormer options/],
  ])('option %j is refused by name', (options, message) => {
    expect(() => new duat.ParaFormer(options as duat.ParaFormerOptions)).toThrow(duat.ArgumentError);
    expect(() => new duat.ParaFormer(options as duat.ParaFormerOptions)).toThrow(message);
  });

  test('bounds that are allowed: mlpRatio 1/64 and 64, the largest seed', () => {
    expect(duat.ParaFormer.parameterSpec({ ...small, dim: 64, heads: 4, mlpRatio: 1 / 64 }).find((s) => s.name === 'stages.0.mlp.fc1.weight')!.shape).toEqual([2, 1, 64]);
    expect(duat.ParaFormer.parameterSpec({ ...small, mlpRatio: 64 }).find((s) => s.name === 'stages.0.mlp.fc1.weight')!.shape).toEqual([2, 512, 8]);
    expect(duat.ParaFormer.parameterSpec({ ...small, seed: 2 ** 53 - 1 }).length).toBe(20);
    expect(() => duat.ParaFormer.parameterSpec({ ...small, seed: 2 ** 53 })).toThrow(/seed/);
  });

  test('presets: para-former-m-n and vit-m with a size and overrides; bad names and sizes are refused', () => {
    const p = duat.ParaFormer.preset('para-former-2-3');
    expect(p.config).toMatchObject({ ...duat.nn.SIZES.mnist, depth: 2, branches: 3 });
    p.dispose();
    const v = duat.ParaFormer.preset('vit-1', 'tiny', { classes: 7, imageSize: 32 });
    expect(v.config).toMatchObject({ dim: 192, heads: 3, mlpRatio: 4, patchSize: 16, imageSize: 32, channels: 3, classes: 7, depth: 1, branches: 1 });
    v.dispose();
    expect(duat.nn.SIZES.small).toEqual({ dim: 384, heads: 6, mlpRatio: 4, patchSize: 16, imageSize: 224, channels: 3, classes: 1000 });
    expect(() => duat.ParaFormer.preset('resnet-50')).toThrow(/Expected a preset like 'para-former-2-3' or 'vit-6' for name but received "resnet-50"/);
    expect(() => duat.ParaFormer.preset('para-former-2')).toThrow(/Expected a preset/);
    expect(() => duat.ParaFormer.preset('xvit-2')).toThrow(/Expected a preset/);
    for (const bad of ['xpara-former-1-1', 'para-former-1-1x', 'vit-1x', 'para-former-a-1', 'vit-']) expect(() => duat.ParaFormer.preset(bad)).toThrow(/Expected a preset/);
    const wide = duat.ParaFormer.preset('para-former-1-12', 'mnist', { dim: 8, heads: 2, patchSize: 14 });
    expect([wide.config.depth, wide.config.branches]).toEqual([1, 12]);
    wide.dispose();
    const deep = duat.ParaFormer.preset('vit-10', 'mnist', { dim: 8, heads: 2, patchSize: 14 });
    expect([deep.config.depth, deep.config.branches]).toEqual([10, 1]);
    deep.dispose();
    expect(() => duat.ParaFormer.preset('vit-2', 'huge' as 'tiny')).toThrow(/size/);
  });
});

describe('initialisation (timm ViT)', () => {
  // Each test makes its own model (not one in the describe body), so that mutation testing's
  // per-test coverage sees the initialisation run inside the tests that check it.
  let m: duat.ParaFormer;
  let p: Map<string, duat.Tensor>;
  beforeEach(() => {
    m = new duat.ParaFormer({ dim: 48, heads: 3, patchSize: 4, depth: 2, branches: 2, seed: 3 });
    p = new Map(m.namedParameters());
  });
  afterEach(() => m.dispose());

  test('norms one, biases zero, linear weights truncated normal std 0.02 within +-0.04', () => {
    for (const [name, t] of p) {
      if (/norm[12]?\.weight$/.test(name)) expect(stats(t)).toMatchObject({ min: 1, max: 1 });
      else if (name.endsWith('.bias') && !name.startsWith('patch_embed')) expect(stats(t)).toMatchObject({ min: 0, max: 0 });
    }
    for (const name of ['stages.1.attn.qkv.weight', 'stages.0.mlp.fc1.weight', 'head.weight', 'pos_embed']) {
      const s = stats(p.get(name)!);
      expect(s.max).toBeLessThanOrEqual(0.04);
      expect(s.min).toBeGreaterThanOrEqual(-0.04);
      expect(s.std).toBeGreaterThan(0.015);
      expect(s.std).toBeLessThan(0.022);
    }
  });

  test("the class token is near zero (std 1e-6); the patch embedding is PyTorch's Conv2d default U(+-1/sqrt(fan_in)), bias too", () => {
    const cls = stats(p.get('cls_token')!);
    expect(Math.max(-cls.min, cls.max)).toBeLessThanOrEqual(2e-6);
    expect(cls.std).toBeGreaterThan(1e-7);
    const bound = 1 / Math.sqrt(1 * 4 * 4);
    for (const name of ['patch_embed.proj.weight', 'patch_embed.proj.bias']) {
      const s = stats(p.get(name)!);
      expect(s.max).toBeLessThanOrEqual(bound);
      expect(s.min).toBeGreaterThanOrEqual(-bound);
      expect(s.max - s.min).toBeGreaterThan(bound);  // spread over the range, not zero
    }
  });

  test('the seed decides the values: the same seed gives the same, another seed others; tensors differ from each other', () => {
    const a = new duat.ParaFormer({ ...small, seed: 5 }), b = new duat.ParaFormer({ ...small, seed: 5 }), c = new duat.ParaFormer({ ...small, seed: 6 });
    const w = (x: duat.ParaFormer, n: string) => Array.from(new Map(x.namedParameters()).get(n)!.toArray());
    expect(w(a, 'head.weight')).toEqual(w(b, 'head.weight'));
    expect(w(a, 'head.weight')).not.toEqual(w(c, 'head.weight'));
    expect(w(a, 'stages.0.attn.proj.weight').slice(0, 8)).not.toEqual(w(a, 'stages.0.mlp.fc2.weight').slice(0, 8));
    for (const x of [a, b, c]) x.dispose();
  });
});

describe('model behaviour', () => {
  test('no weight decay exactly on biases, norms, the class token and the positions', () => {
    const m = new duat.ParaFormer(small);
    expect(m.noDecayNames()).toEqual([
      'patch_embed.proj.bias', 'cls_token', 'pos_embed', 'stages.0.norm1.weight', 'stages.0.norm1.bias', 'stages.0.attn.qkv.bias',
      'stages.0.attn.proj.bias', 'stages.0.norm2.weight', 'stages.0.norm2.bias', 'stages.0.mlp.fc1.bias', 'stages.0.mlp.fc2.bias',
      'norm.weight', 'norm.bias', 'head.bias',
    ]);
    m.dispose();
  });

  test("attention maps: one per stage and branch, each branch's own heads, rows summing to one", () => {
    const m = new duat.ParaFormer({ ...small, depth: 2, branches: 3 });
    const x = duat.randn([2, 1, 28, 28], { seed: 4 });
    const maps = m.dynamicParameters(x);
    expect(maps.map((b) => [b.stage, b.branch])).toEqual([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]);
    const values = maps.map((b) => b.maps.toArray());
    for (const b of maps) expect(b.maps.shape).toEqual([2, 2, 17, 17]);
    for (let r = 0; r < 2 * 2 * 17; r++) {
      let s = 0;
      for (let j = 0; j < 17; j++) s += values[4][r * 17 + j];
      expect(s).toBeCloseTo(1, 5);
    }
    expect(Array.from(values[0].slice(0, 17))).not.toEqual(Array.from(values[1].slice(0, 17)));
    expect(Array.from(values[1].slice(0, 17))).not.toEqual(Array.from(values[2].slice(0, 17)));
    for (const b of maps) b.maps.dispose();
    expect(() => m.dynamicParameters('x' as unknown as duat.Tensor)).toThrow(/Expected a tensor for images but received "x"/);
    expect(() => m.forward(3 as unknown as duat.Tensor)).toThrow(/Expected a tensor for images but received 3/);
    x.dispose();
    m.dispose();
  });

  test('trainStep checks its arguments by name before it starts; Int32Array labels are freed after the step', async () => {
    const m = new duat.ParaFormer(small), other = new duat.ParaFormer(small);
    const x = duat.randn([4, 1, 28, 28], { seed: 1 });
    const y = Int32Array.from([1, 2, 3, 4]);
    const foreign = new duat.optim.AdamW(other.parameters());
    await expect(m.trainStep(x, y, { optimizer: {} as duat.optim.AdamW })).rejects.toThrow(/Expected an optimizer for optimizer but received/);
    await expect(m.trainStep(x, y, { optimizer: foreign })).rejects.toThrow(/optimizer parameter params\[0\]\[0\] is not a parameter of this model/);
    await expect(m.trainStep(x, y, { labelSmoothing: 1 })).rejects.toThrow(/labelSmoothing/);
    await expect(m.trainStep(x, y, { clipGradNorm: -1 })).rejects.toThrow(/clipGradNorm/);
    await expect(m.trainStep(x, [1, 2, 3, 4] as unknown as Int32Array)).rejects.toThrow(/Expected an Int32Array or tensor for labels but received/);
    await expect(m.trainStep('x' as unknown as duat.Tensor, y)).rejects.toThrow(/Expected a tensor for images/);
    await expect(m.trainStep(x, y, 3 as unknown as object)).rejects.toThrow(/trainStep options/);
    await expect(m.evaluate(3 as unknown as duat.Tensor)).rejects.toThrow(/Expected a tensor for images/);
    const first = await m.trainStep(x, y);  // without an optimizer: the gradients stay in .grad
    await m.trainStep(x, y, { labelSmoothing: 0.1, clipGradNorm: 1 });  // (the first of a kind warms caches)
    const before = duat.memory().tensors;
    const r = await m.trainStep(x, y, { labelSmoothing: 0.1, clipGradNorm: 1 });
    // The losses against the float64 reference on the logits (the parameters did not move: no
    // optimizer): cross-entropy, and with smoothing PyTorch's (1 - e) CE + e * mean_j(-log p_j).
    const logits = duat.tidy(() => R.arr(m.forward(x).toArray(), [4, 10]));
    expect(first.loss).toBeCloseTo(R.crossEntropy(logits, y, 0).data[0], 5);
    expect(r.loss).toBeCloseTo(R.crossEntropy(logits, y, 0.1).data[0], 5);
    expect(r.gradNorm).toBeGreaterThan(0);
    expect(duat.memory().tensors).toBe(before);  // the labels tensor made from the Int32Array is gone
    await m.evaluate(x, y);  // the first evaluation makes the inference-time derived weights (kept)
    const cached = duat.memory().tensors;
    const e = await m.evaluate(x, y);
    expect(e.predictions.length).toBe(4);
    expect(duat.memory().tensors).toBe(cached);
    // While a step is in flight everything that touches the parameters is refused by name.
    const step = m.trainStep(x, y);
    expect(() => m.forward(x)).toThrow(/in the middle of a training step; await it before you use it/);
    expect(() => m.to('cpu')).toThrow(/before you move it/);
    expect(() => m.setPrecision('fp32')).toThrow(/before you change its precision/);
    await expect(m.evaluate(x)).rejects.toThrow(/before you evaluate it/);
    await expect(m.trainStep(x, y)).rejects.toThrow(/before you start another step/);
    expect(() => m.dynamicParameters(x)).toThrow(/await it before you use it/);
    await step;
    // A tensor of labels is the caller's: still usable after the step.
    const yt = duat.tensor(y, [4]);
    await m.trainStep(x, yt);
    expect(Array.from(yt.toInt32Array())).toEqual([1, 2, 3, 4]);
    yt.dispose();
    // An error from the worker thread carries the caller's stack after an '--- async ---' line.
    const failed = await m.trainStep(x, Int32Array.from([1, 2, 3, 99])).then(() => null, (e: Error) => e);
    expect(failed).toBeInstanceOf(duat.DuatError);
    expect(failed!.stack).toMatch(/--- async ---\n(.|\n)*nn-values\.test/);
    // zeroGrad drops every gradient.
    m.zeroGrad();
    for (const q of m.parameters()) {
      const g = q.grad;
      expect(g === null || g.toArray().every((v) => v === 0)).toBe(true);
    }
    expect(() => m.setPrecision('fp16' as 'fp32')).toThrow(/precision/);
    expect(m.setPrecision('bf16')).toBe(m);
    expect(m.to('cpu')).toBe(m);
    x.dispose();
    foreign.dispose();
    m.dispose();
    other.dispose();
  });
});

describe('Module, Linear, LayerNorm', () => {
  class Pair extends duat.nn.Module {
    readonly a = this.registerModule('a', new duat.nn.Linear(3, 2, { seed: 1 }));
    readonly b = this.registerModule('b', new duat.nn.LayerNorm(2));
    readonly scale = this.registerParameter('scale', duat.tensor(Float32Array.from([2]), [1]));
  }

  test('names, order, counts and modes through children', () => {
    const m = new Pair();
    expect(m.namedParameters().map(([n, p]) => [n, p.shape])).toEqual([['scale', [1]], ['a.weight', [2, 3]], ['a.bias', [2]], ['b.weight', [2]], ['b.bias', [2]]]);
    expect(m.namedParameters('pre.')[1][0]).toBe('pre.a.weight');
    expect(m.parameterCount()).toBe(1 + 6 + 2 + 2 + 2);
    expect(m.parameters().every((p) => p.requiresGrad)).toBe(true);
    expect([m.training, m.a.training, m.b.training]).toEqual([true, true, true]);
    expect(m.eval()).toBe(m);
    expect([m.training, m.a.training, m.b.training]).toEqual([false, false, false]);
    m.train();
    expect([m.training, m.a.training]).toEqual([true, true]);
    m.train(false);
    expect(m.a.training).toBe(false);
    expect([...m.stateDict().keys()]).toEqual(['scale', 'a.weight', 'a.bias', 'b.weight', 'b.bias']);
    expect(m.stateDict().get('a.weight')).toBe(m.a.weight);
    m.dispose();
  });

  test('loadStateDict copies values; missing, unexpected, misshapen and non-tensor entries are named', () => {
    const m = new Pair(), src = new Pair();
    src.a.weight.copy_(duat.tensor(Float32Array.from([1, 2, 3, 4, 5, 6]), [2, 3]));
    m.loadStateDict(src.stateDict());
    expect(Array.from(m.a.weight.toArray())).toEqual([1, 2, 3, 4, 5, 6]);
    expect(m.a.weight).not.toBe(src.a.weight);
    const obj = Object.fromEntries(src.stateDict());
    obj['b.bias'] = duat.tensor(Float32Array.from([7, 8]), [2]);
    m.loadStateDict(obj);
    expect(Array.from(m.b.bias.toArray())).toEqual([7, 8]);
    const partial = new Map(src.stateDict());
    partial.delete('b.weight');
    expect(() => m.loadStateDict(partial)).toThrow(/loadStateDict: missing parameter 'b.weight'/);
    const extra = new Map(src.stateDict());
    extra.set('c.weight', duat.zeros([1]));
    expect(() => m.loadStateDict(extra)).toThrow(/loadStateDict: unexpected parameter 'c.weight'/);
    const wrong = new Map(src.stateDict());
    wrong.set('a.weight', duat.zeros([3, 2]));
    expect(() => m.loadStateDict(wrong)).toThrow(/loadStateDict: parameter 'a.weight' has shape \[2,3\] but the state dict has \[3,2\]/);
    const oneDim = new Map(src.stateDict());
    oneDim.set('a.weight', duat.zeros([2, 4]));
    expect(() => m.loadStateDict(oneDim)).toThrow(/parameter 'a.weight' has shape \[2,3\] but the state dict has \[2,4\]/);
    const longer = new Map(src.stateDict());
    longer.set('a.bias', duat.zeros([2, 1]));
    expect(() => m.loadStateDict(longer)).toThrow(/parameter 'a.bias' has shape \[2\] but the state dict has \[2,1\]/);
    const flat = new Map(src.stateDict());
    flat.set('a.bias', duat.zeros([1, 2]));
    expect(() => m.loadStateDict(flat)).toThrow(/parameter 'a.bias' has shape \[2\] but the state dict has \[1,2\]/);
    expect(() => m.loadStateDict(new Map([...src.stateDict()].map(([n, t]) => [n, n === 'scale' ? (5 as unknown as duat.Tensor) : t])))).toThrow(/Expected a tensor for 'scale' but received 5/);
    expect(() => m.loadStateDict(null as unknown as duat.nn.StateDict)).toThrow(/Expected a state dict \(Map or object of tensors\) but received null/);
    expect(() => m.loadStateDict(src.stateDict(), 'yes' as unknown as boolean)).toThrow(/Expected boolean for strict but received "yes"/);
    // Not strict: unknown names ignored, missing ones left as they are; nothing changes on a failed strict load.
    extra.delete('b.bias');
    const kept = Array.from(m.b.bias.toArray());
    m.loadStateDict(extra, false);
    expect(Array.from(m.b.bias.toArray())).toEqual(kept);
    m.dispose();
    src.dispose();
  });

  test('Linear: timm init, optional bias, x W^T + b; LayerNorm: ones and zeros, eps 1e-6, normalises the last dimension', () => {
    const l = new duat.nn.Linear(64, 32, { seed: 2 });
    const s = stats(l.weight);
    expect([l.weight.shape, l.bias!.shape]).toEqual([[32, 64], [32]]);
    expect(s.max).toBeLessThanOrEqual(0.04);
    expect(s.std).toBeGreaterThan(0.015);
    expect(stats(l.bias!)).toMatchObject({ min: 0, max: 0 });
    const nb = new duat.nn.Linear(2, 2, { bias: false });
    expect(nb.bias).toBeNull();
    expect(nb.namedParameters().map(([n]) => n)).toEqual(['weight']);
    const lin = new duat.nn.Linear(2, 2);
    lin.weight.copy_(duat.tensor(Float32Array.from([1, 2, 3, 4]), [2, 2]));
    lin.bias!.copy_(duat.tensor(Float32Array.from([10, 20]), [2]));
    expect(Array.from(lin.forward(duat.tensor(Float32Array.from([1, -1]), [1, 2])).toArray())).toEqual([9, 19]);
    expect(() => new duat.nn.Linear(0, 2)).toThrow(/inFeatures/);
    expect(() => new duat.nn.Linear(2, 0)).toThrow(/outFeatures/);
    expect(() => new duat.nn.Linear(2, 2, 5 as unknown as object)).toThrow(/Linear options/);
    const ln = new duat.nn.LayerNorm(4);
    expect(ln.eps).toBe(1e-6);
    expect([stats(ln.weight), stats(ln.bias)].map((x) => [x.min, x.max])).toEqual([[1, 1], [0, 0]]);
    const y = Array.from(ln.forward(duat.tensor(Float32Array.from([1, 2, 3, 4]), [1, 4])).toArray());
    const r = 1 / Math.sqrt(1.25 + 1e-6);
    expect(y).toEqual([-1.5 * r, -0.5 * r, 0.5 * r, 1.5 * r].map((v) => expect.closeTo(v, 5)));
    expect(() => new duat.nn.LayerNorm(0)).toThrow(/dim/);
    expect(() => new duat.nn.LayerNorm(4, 0)).toThrow(/eps/);
    for (const x of [l, nb, lin, ln]) x.dispose();
  });
});
