/**
 * loadViT against timm itself: small ViTs made by timm 1.0 (test/fixtures/make_timm_fixtures.py)
 * in the variants pretrained checkpoints come in, each loaded and compared with timm's logits;
 * float16 and bfloat16 files; the variants' own forward, backward and checkpoints.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import * as duat from '../lib';

const DIR = path.join(__dirname, 'fixtures', 'timm');
const ref = JSON.parse(fs.readFileSync(path.join(DIR, 'reference.json'), 'utf8')) as {
  images: number[]; shape: number[]; heads: number;
  variants: Record<string, { logits: number[]; names: string[]; head?: { weight: number[]; bias: number[] } }>;
};
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-timm-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function logitsOf(model: duat.ParaFormer): number[] {
  return duat.noGrad(() => duat.tidy(() => Array.from(model.forward(duat.tensor(Float32Array.from(ref.images), ref.shape)).toArray())));
}

function expectClose(got: number[], want: number[], tol: number): void {
  expect(got.length).toBe(want.length);
  const err = Math.max(...got.map((v, i) => Math.abs(v - want[i])));
  expect(err).toBeLessThan(tol);
}

describe("loadViT gives timm's logits", () => {
  test.each([
    ['plain', { layerScale: 0, preNorm: false, patchBias: true, pool: 'token' }],
    ['layerscale', { layerScale: 1, preNorm: false, patchBias: true, pool: 'token' }],
    ['avgpool', { layerScale: 0, preNorm: false, patchBias: true, pool: 'avg' }],
    ['prenorm', { layerScale: 0, preNorm: true, patchBias: false, pool: 'token' }],
  ])('%s', (name, variant) => {
    const model = duat.loadViT(path.join(DIR, `${name}.safetensors`), { heads: ref.heads });
    expect(model.config).toMatchObject({ ...variant, depth: 3, branches: 1, dim: 16 });
    expectClose(logitsOf(model), ref.variants[name].logits, 1e-4);
    // As a Para-Former-1-3 (every block a branch of one stage) it loads too, to another function.
    const pf = duat.loadViT(path.join(DIR, `${name}.safetensors`), { heads: ref.heads, depth: 1, branches: 3 });
    expect(pf.config).toMatchObject({ ...variant, depth: 1, branches: 3 });
    model.dispose();
    pf.dispose();
  });

  test('a backbone without a head, with a head of our own', () => {
    const model = duat.loadViT(path.join(DIR, 'nohead.safetensors'), { heads: ref.heads, classes: 10 });
    const { head } = ref.variants.nohead;
    duat.tidy(() => model.loadStateDict(new Map([
      ['head.weight', duat.tensor(Float32Array.from(head!.weight), [10, 16])],
      ['head.bias', duat.tensor(Float32Array.from(head!.bias), [10])],
    ]), false));
    expectClose(logitsOf(model), ref.variants.nohead.logits, 1e-4);
    model.dispose();
  });

  test.each(['f16', 'bf16'])('float16 and bfloat16 files are widened exactly (%s)', (tag) => {
    const file = path.join(DIR, `plain-${tag}.safetensors`);
    const { dtypes } = duat.loadSafetensors(file);
    expect(new Set(dtypes.values())).toEqual(new Set([tag === 'f16' ? 'F16' : 'BF16']));
    const model = duat.loadViT(file, { heads: ref.heads });
    expectClose(logitsOf(model), ref.variants[`plain-${tag}`].logits, 1e-4);
    model.dispose();
  });

  test('a file with LayerScale in some blocks only is refused, naming the tensor', () => {
    const { tensors } = duat.loadSafetensors(path.join(DIR, 'layerscale.safetensors'));
    const file = path.join(tmp, 'partial-ls.safetensors');
    duat.saveSafetensors(file, [...tensors].filter(([n]) => !n.startsWith('blocks.2.ls')));
    expect(() => duat.loadViT(file, { heads: 2 })).toThrow(/missing 'blocks.2.ls1.gamma'/);
    const noPatchW = path.join(tmp, 'avg-and-norm.safetensors');
    const avg = duat.loadSafetensors(path.join(DIR, 'avgpool.safetensors')).tensors;
    duat.saveSafetensors(noPatchW, [...avg, ['norm.weight', tensors.get('norm.weight')!], ['norm.bias', tensors.get('norm.bias')!]]);
    expect(() => duat.loadViT(noPatchW, { heads: 2 })).toThrow(/'norm.weight' \(a norm before average pooling as well as fc_norm\)/);
    for (const t of [...tensors.values(), ...avg.values()]) t.dispose();
  });
});

describe('the ViT variants as models', () => {
  const small = { imageSize: 14, patchSize: 7, dim: 8, heads: 2, depth: 2, branches: 2, mlpRatio: 2, seed: 3 };
  const variants: duat.ParaFormerOptions[] = [
    { layerScale: 0.5 }, { preNorm: true, patchBias: false }, { pool: 'avg' }, { eps: 1e-12 },
    { layerScale: 0.1, preNorm: true, patchBias: false, pool: 'avg' },
  ];

  test.each(variants)('gradients agree with finite differences (%o)', async (v) => {
    const model = new duat.ParaFormer({ ...small, ...v });
    // Gammas and norms away from their initial values so that every term matters.
    duat.tidy(() => {
      const sd = new Map<string, duat.Tensor>();
      for (const [n, p] of model.namedParameters()) sd.set(n, p.add(duat.randn(p.shape, { seed: n.length, std: 0.2 })));
      model.loadStateDict(sd);
    });
    const x = duat.randn([2, 1, 14, 14], { seed: 5 });
    const y = duat.tensor(Int32Array.from([1, 4]), [2]);
    await model.trainStep(x, y);
    const loss = () => duat.noGrad(() => duat.tidy(() => duat.F.crossEntropy(model.forward(x), y).item()));
    for (const name of model.namedParameters().map(([n]) => n).filter((n) => /gamma|norm_pre|fc_norm|patch_embed.proj.weight/.test(n))) {
      const p = model.namedParameters().find(([n]) => n === name)![1];
      const g = p.grad!.toArray() as Float32Array;
      const data = Float32Array.from(p.toArray() as Float32Array);
      for (const i of [0, Math.floor(data.length / 2), data.length - 1]) {
        const h = 1e-2;
        const at = (d: number) => {
          const c = Float32Array.from(data);
          c[i] += d;
          duat.tidy(() => p.copy_(duat.tensor(c, p.shape)));
          return loss();
        };
        const fd = (at(h) - at(-h)) / (2 * h);
        duat.tidy(() => p.copy_(duat.tensor(data, p.shape)));
        expect(Math.abs(fd - g[i])).toBeLessThan(2e-3 + 2e-2 * Math.abs(fd));
      }
    }
    for (const t of [model, x, y]) t.dispose();
  });

  test('names, initialisation and no weight decay for the new parameters', () => {
    const m = new duat.ParaFormer({ ...small, layerScale: 1e-5, preNorm: true, patchBias: false, pool: 'avg' });
    const names = m.namedParameters().map(([n]) => n);
    expect(names).toContain('stages.1.ls2.gamma');
    expect(names).toContain('norm_pre.weight');
    expect(names).toContain('fc_norm.bias');
    expect(names).not.toContain('patch_embed.proj.bias');
    expect(names).not.toContain('norm.weight');
    const p = new Map(m.namedParameters());
    expect(Array.from(p.get('stages.0.ls1.gamma')!.toArray())).toEqual(Array(16).fill(Math.fround(1e-5)));
    expect(Array.from(p.get('fc_norm.weight')!.toArray())).toEqual(Array(8).fill(1));
    expect(m.noDecayNames()).toEqual(expect.arrayContaining(['stages.0.ls1.gamma', 'norm_pre.weight', 'fc_norm.weight']));
    expect(() => new duat.ParaFormer({ ...small, pool: 'max' as 'avg' })).toThrow(/pool/);
    expect(() => new duat.ParaFormer({ ...small, eps: 0 })).toThrow(/eps/);
    expect(() => new duat.ParaFormer({ ...small, layerScale: -1 })).toThrow(/layerScale/);
    m.dispose();
  });

  test('a variant survives save and load, training checkpoints included, and branch selection', async () => {
    const m = new duat.ParaFormer({ ...small, imageSize: 28, layerScale: 0.3, preNorm: true, patchBias: false, pool: 'avg', eps: 1e-12 });
    const file = path.join(tmp, 'variant.safetensors');
    duat.save(file, m);
    const back = duat.load(file);
    expect(back.config).toEqual(m.config);
    const x = duat.randn([2, 1, 28, 28], { seed: 1 });
    const logits = (model: duat.ParaFormer) => duat.noGrad(() => duat.tidy(() => Array.from(model.forward(x).toArray())));
    expect(logits(back)).toEqual(logits(m));
    const one = m.selectBranches([1]);
    expect(one.config.layerScale).toBe(0.3);
    const runDir = path.join(tmp, 'run');
    const data = { train: duat.data.loadMnist('train', { dir: path.join(__dirname, 'fixtures', 'mnist-slice'), limit: 64 }) };
    await duat.fit(m, data, { epochs: 1, batchSize: 32, progress: false, runDir });
    const resumed = new duat.ParaFormer(m.config);
    await duat.fit(resumed, data, { epochs: 1, batchSize: 32, progress: false, resume: path.join(runDir, 'checkpoint.safetensors') });
    expect(logits(resumed)).toEqual(logits(m));
    // A checkpoint of another variant does not fit.
    const plain = new duat.ParaFormer({ ...small, imageSize: 28 });
    await expect(duat.fit(plain, data, { epochs: 1, progress: false, resume: path.join(runDir, 'checkpoint.safetensors') })).rejects.toThrow(duat.CheckpointError);
    for (const t of [m, back, x, one, resumed, plain]) t.dispose();
  });
});
