/**
 * Compression by branch selection: selectBranches makes a real Para-Former-m-k that computes the
 * whole model's function without the dropped branches; the rankings; compress() and
 * `duat compress`.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import * as duat from '../lib';

const SLICE = path.join(__dirname, 'fixtures', 'mnist-slice');
const cfg = { patchSize: 7, dim: 16, heads: 2, mlpRatio: 2, seed: 4 };
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-compress-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const logits = (m: duat.ParaFormer, x: duat.Tensor) => duat.noGrad(() => duat.tidy(() => Array.from(m.forward(x).toArray())));

/** A copy of `model` whose branches `dead[s]` have their output projections zeroed: f_b = 0. */
function zeroed(model: duat.ParaFormer, dead: number[][]): duat.ParaFormer {
  const copy = new duat.ParaFormer(model.config);
  duat.tidy(() => {
    const sd = new Map(model.namedParameters());
    for (const [name, p] of model.namedParameters()) {
      const m = /^stages\.(\d+)\.(attn\.proj|mlp\.fc2)\./.exec(name);
      if (!m) continue;
      const mask = Float32Array.from({ length: model.config.branches }, (_, b) => (dead[Number(m[1])].includes(b) ? 0 : 1));
      sd.set(name, p.mul(duat.tensor(mask, [model.config.branches, ...p.shape.slice(1).map(() => 1)])));
    }
    copy.loadStateDict(sd);
  });
  return copy;
}

describe('selectBranches', () => {
  test('keeping every branch in another order computes the same logits (a stage sums its branches)', () => {
    const m = new duat.ParaFormer({ ...cfg, depth: 2, branches: 4 });
    const same = m.selectBranches([[3, 1, 0, 2], [2, 3, 1, 0]]);
    const x = duat.randn([3, 1, 28, 28], { seed: 9 });
    const [a, b] = [logits(m, x), logits(same, x)];
    a.forEach((v, i) => expect(b[i]).toBeCloseTo(v, 4));
    for (const t of [m, same, x]) t.dispose();
  });

  test('a Para-Former-2-2 kept from a 2-4 computes the 2-4 without the dropped branches, exactly', () => {
    const m = new duat.ParaFormer({ ...cfg, depth: 2, branches: 4 });
    m.inputSpec = { mean: [0.5], std: [0.5], classNames: ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'] };
    const small = m.selectBranches([[0, 2], [1, 3]]);
    expect([small.config.depth, small.config.branches]).toEqual([2, 2]);
    expect(small.parameterCount()).toBeLessThan(m.parameterCount());
    expect(small.inputSpec).toEqual(m.inputSpec);
    const ref = zeroed(m, [[1, 3], [0, 2]]);
    const x = duat.randn([3, 1, 28, 28], { seed: 10 });
    const [want, got] = [logits(ref, x), logits(small, x)];
    got.forEach((v, i) => expect(v).toBeCloseTo(want[i], 4));
    // The same indices for every stage may be given once.
    const once = m.selectBranches([1]);
    expect(once.config.branches).toBe(1);
    for (const t of [m, small, ref, x, once]) t.dispose();
  });

  test('bad selections are ArgumentErrors that say what is wrong', () => {
    const m = new duat.ParaFormer({ ...cfg, depth: 2, branches: 3 });
    expect(() => m.selectBranches([0, 3])).toThrow(/stage 0's branch/);
    expect(() => m.selectBranches([1, 1])).toThrow(/stage 0 keeps a branch twice: \[1, 1\]/);
    expect(() => m.selectBranches([[0, 1], [2]])).toThrow(/Expected 2 branches for every stage but stage 1 keeps/);
    expect(() => m.selectBranches([[0], [1], [2]])).toThrow(/one list of branches for each of the 2 stages but received 3/);
    expect(() => m.selectBranches([])).toThrow(duat.ArgumentError);
    m.dispose();
  });
});

describe('ranking and compress', () => {
  const train = duat.data.loadMnist('train', { dir: SLICE, limit: 256 });
  const val = duat.data.loadMnist('test', { dir: SLICE, limit: 200 });
  let model: duat.ParaFormer;
  beforeAll(async () => {
    model = new duat.ParaFormer({ ...cfg, depth: 1, branches: 4 });
    await duat.fit(model, { train }, { epochs: 6, batchSize: 32, lr: 3e-3, warmupSteps: 5, progress: false });
  }, 60000);
  afterAll(() => model.dispose());

  test("'norm' ranks by the output projections' norms: a silenced branch comes last", async () => {
    const silent = zeroed(model, [[2]]);
    const ranking = await duat.rankBranches(silent, undefined, { method: 'norm' });
    expect(ranking[0]).toHaveLength(4);
    expect(ranking[0][3]).toBe(2);
    await expect(duat.rankBranches(silent, undefined, { method: 'greedy' })).rejects.toThrow(/needs a validation set/);
    await expect(duat.rankBranches({} as duat.ParaFormer, undefined)).rejects.toThrow(/Expected a ParaFormer/);
    await expect(duat.rankBranches(silent, undefined, { method: 'best' as 'norm' })).rejects.toThrow(duat.ArgumentError);
    silent.dispose();
  });

  test("'greedy' drops first the branch whose removal leaves the best accuracy, and compress keeps the best", async () => {
    const silent = zeroed(model, [[1]]);
    const ranking = await duat.rankBranches(silent, val, { method: 'greedy', batchSize: 100 });
    expect([...ranking[0]].sort()).toEqual([0, 1, 2, 3]);
    // The first branch dropped (last in the ranking) is the best single removal, measured here
    // independently (ties to the lowest index); the second is the best removal after it.
    const best = async (dead: number[]) => {
      const accs: number[] = [];
      for (let b = 0; b < 4; b++) {
        if (dead.includes(b)) {
          accs.push(-1);
          continue;
        }
        const probe = zeroed(silent, [[...dead, b]]);
        accs.push((await duat.evaluate(probe, val)).accuracy);
        probe.dispose();
      }
      return accs.indexOf(Math.max(...accs));
    };
    const first = await best([]);
    expect(ranking[0][3]).toBe(first);
    expect(ranking[0][2]).toBe(await best([first]));
    const r = await duat.compress(silent, val, 2, { method: 'greedy', batchSize: 100 });
    expect(r.model.config.branches).toBe(2);
    expect(r.kept[0]).toEqual(ranking[0].slice(0, 2).sort((a, b) => a - b));
    expect(r.accuracy).toBe((await duat.evaluate(silent.selectBranches(r.kept), val)).accuracy);
    expect(r.before).toBe((await duat.evaluate(silent, val)).accuracy);
    r.model.dispose();
    silent.dispose();
  }, 60000);

  test('duat compress writes a smaller real Para-Former and reports the accuracies', () => {
    const file = path.join(tmp, 'pf.safetensors');
    duat.save(file, model);
    const cli = path.join(__dirname, '..', 'lib', 'cli.ts');
    const r = spawnSync(process.execPath, ['-r', 'ts-node/register/transpile-only', cli, 'compress', '--model', file, '--keep', '2', '--method', 'norm',
      '--data', SLICE, '--val-limit', '100'], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.model).toBe('Para-Former-1-4 -> 1-2');
    expect(out.out).toBe(path.join(tmp, 'pf-k2.safetensors'));
    expect(out.ratio).toBeGreaterThan(1.2);
    const small = duat.load(out.out);
    expect(small.config.branches).toBe(2);
    expect(out.parameters).toEqual([model.parameterCount(), small.parameterCount()]);
    small.dispose();
  }, 60000);
});

describe('addBranches (expansion)', () => {
  test('new branches start with zero output: the same logits, and they train', async () => {
    const m = new duat.ParaFormer({ ...cfg, depth: 2, branches: 2 });
    m.inputSpec = { mean: [0.1], std: [0.3] };
    const big = m.addBranches(3, { seed: 11 });
    expect([big.config.depth, big.config.branches]).toEqual([2, 5]);
    expect(big.inputSpec).toEqual(m.inputSpec);
    const x = duat.randn([4, 1, 28, 28], { seed: 12 });
    const [a, b] = [logits(m, x), logits(big, x)];
    b.forEach((v, i) => expect(v).toBeCloseTo(a[i], 5));
    // The old branches are rows 0-1 of every stage, unchanged; the new ones are not copies of them.
    const p = new Map(big.namedParameters()), q = new Map(m.namedParameters());
    duat.tidy(() => {
      expect(Array.from(p.get('stages.1.attn.qkv.weight')!.slice(0, 0, 2).contiguous().toArray())).toEqual(Array.from(q.get('stages.1.attn.qkv.weight')!.toArray()));
      expect(Array.from(p.get('stages.1.mlp.fc2.weight')!.slice(0, 2, 5).contiguous().toArray()).every((v) => v === 0)).toBe(true);
      expect(p.get('stages.1.mlp.fc1.weight')!.slice(0, 2, 3).mul(p.get('stages.1.mlp.fc1.weight')!.slice(0, 2, 3)).sum().item()).toBeGreaterThan(0);
    });
    const opt = new duat.optim.AdamW(big.parameters(), { lr: 1e-2 });
    await big.trainStep(x, Int32Array.from([1, 2, 3, 4]), { optimizer: opt });
    duat.tidy(() => expect(Array.from(p.get('stages.1.mlp.fc2.weight')!.slice(0, 2, 5).contiguous().toArray()).some((v) => v !== 0)).toBe(true));
    opt.dispose();
    expect(() => m.addBranches(0)).toThrow(duat.ArgumentError);
    const mean = new duat.ParaFormer({ ...cfg, depth: 1, branches: 2, combine: 'mean' });
    expect(() => mean.addBranches(1)).toThrow(/only for combine 'sum'/);
    for (const t of [m, big, x, mean]) t.dispose();
  });
});
