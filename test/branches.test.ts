/**
 * What the papers do with branches beyond running them: active branches (progressive training),
 * frozen branches (expansion for continual learning), the row-by-row optimizer update they need,
 * fit()'s progressive schedule, data.select, and the CLI's expand / --init / --progressive.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import * as duat from '../lib';

const SLICE = path.join(__dirname, 'fixtures', 'mnist-slice');
const CLI = path.join(__dirname, '..', 'lib', 'cli.ts');
const cfg = { patchSize: 7, dim: 16, heads: 2, mlpRatio: 2, seed: 4 };
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-branches-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const logits = (m: duat.ParaFormer, x: duat.Tensor) => duat.noGrad(() => duat.tidy(() => Array.from(m.forward(x).toArray())));
const values = (m: duat.ParaFormer) => new Map(m.namedParameters().map(([n, p]) => [n, Float32Array.from(p.toArray() as Float32Array)]));
const param = (m: duat.ParaFormer, name: string) => m.namedParameters().find(([n]) => n === name)![1];
/** The largest change of rows [from, to) of a branch-stacked parameter. */
function moved(before: Float32Array, after: Float32Array, branches: number, from: number, to: number): number {
  const per = before.length / branches;
  let d = 0;
  for (let i = from * per; i < to * per; i++) d = Math.max(d, Math.abs(after[i] - before[i]));
  return d;
}
const batch = (seed: number, n = 6) => ({
  x: duat.randn([n, 1, 28, 28], { seed }),
  y: duat.tensor(Int32Array.from({ length: n }, (_, i) => (i * 7 + seed) % 10), [n]),
});
const slice = () => ({ train: duat.data.loadMnist('train', { dir: SLICE }), test: duat.data.loadMnist('test', { dir: SLICE }) });

describe('active branches', () => {
  test.each(['sum', 'mean'] as const)("a model using its first k branches computes selectBranches of them (combine '%s')", (combine) => {
    const m = new duat.ParaFormer({ ...cfg, depth: 2, branches: 4, combine });
    const x = duat.randn([3, 1, 28, 28], { seed: 2 });
    for (const k of [1, 3]) {
      const small = m.selectBranches(Array.from({ length: k }, (_, b) => b));
      m.setActiveBranches(k);
      expect(m.activeBranches).toBe(k);
      const [want, got] = [logits(small, x), logits(m, x)];
      got.forEach((v, i) => expect(v).toBeCloseTo(want[i], 5));
      small.dispose();
    }
    m.setActiveBranches(4);
    const all = logits(m, x);
    m.setActiveBranches(2);
    m.setActiveBranches(4);  // the inference cache tells the full stage from its first k
    expect(logits(m, x)).toEqual(all);
    m.dispose();
    x.dispose();
  });

  test('inactive branches get no gradient and no update, weight decay and momentum included', async () => {
    const m = new duat.ParaFormer({ ...cfg, depth: 1, branches: 3 });
    const opt = new duat.optim.AdamW(m.parameters(), { lr: 0.01, weightDecay: 0.5 });
    const { x, y } = batch(1);
    await m.trainStep(x, y, { optimizer: opt });  // every branch has moments now
    m.setActiveBranches(2);
    const before = values(m);
    await m.trainStep(x, y);
    const g = param(m, 'stages.0.mlp.fc1.weight').grad!.toArray() as Float32Array;
    expect(moved(new Float32Array(g.length), g, 3, 2, 3)).toBe(0);
    expect(moved(new Float32Array(g.length), g, 3, 0, 2)).toBeGreaterThan(0);
    m.zeroGrad();
    await m.trainStep(x, y, { optimizer: opt });
    const after = values(m);
    for (const [name, b] of before) {
      if (!name.startsWith('stages.')) continue;
      expect(moved(b, after.get(name)!, 3, 2, 3)).toBe(0);
    }
    expect(moved(before.get('stages.0.attn.qkv.weight')!, after.get('stages.0.attn.qkv.weight')!, 3, 0, 2)).toBeGreaterThan(0);
    opt.dispose();
    m.dispose();
  });

  test('a branch that joins late takes Adam first steps of its own (its own bias correction)', async () => {
    const lr = 1e-3;
    const m = new duat.ParaFormer({ ...cfg, depth: 1, branches: 2 });
    const opt = new duat.optim.AdamW(m.parameters(), { lr, weightDecay: 0 });
    const { x, y } = batch(3);
    m.setActiveBranches(1);
    for (let i = 0; i < 3; i++) await m.trainStep(x, y, { optimizer: opt });
    m.setActiveBranches(2);
    const name = 'stages.0.mlp.fc1.weight';
    await m.trainStep(x, y);  // the gradient the next update will use
    const g = Float32Array.from(param(m, name).grad!.toArray() as Float32Array);
    m.zeroGrad();
    const before = Float32Array.from(param(m, name).toArray() as Float32Array);
    await m.trainStep(x, y, { optimizer: opt });
    const after = param(m, name).toArray() as Float32Array;
    // Adam's first update is lr * g / (|g| + eps) per element: lr * sign(g) where |g| >> eps.
    // With the stacked parameter's count (4) it would be 0.64 lr.
    const per = g.length / 2;
    let checked = 0;
    for (let i = per; i < g.length; i++) {
      if (Math.abs(g[i]) < 1e-4) continue;
      expect(Math.abs(after[i] - before[i]) / lr).toBeCloseTo(1, 3);
      checked++;
    }
    expect(checked).toBeGreaterThan(100);
    const steps = opt.rowStepsFor(param(m, name));
    expect(steps).toEqual([4, 1]);
    for (const t of [opt, m, x, y]) t.dispose();
  });

  test('bad counts are refused', () => {
    const m = new duat.ParaFormer({ ...cfg, depth: 1, branches: 3 });
    expect(() => m.setActiveBranches(0)).toThrow(duat.ArgumentError);
    expect(() => m.setActiveBranches(4)).toThrow(/count/);
    m.freezeBranches(2);
    expect(() => m.setActiveBranches(1)).toThrow(/2 frozen branches/);
    expect(() => m.freezeBranches(4)).toThrow(duat.ArgumentError);
    expect(() => m.freezeBranches(1, { embedding: 'yes' as unknown as boolean })).toThrow(/embedding/);
    m.dispose();
  });
});

describe('frozen branches', () => {
  test.each(['adamw', 'sgd'] as const)("frozen branches' weights do not move (%s with weight decay); the others, the norm and the head do", async (kind) => {
    const m = new duat.ParaFormer({ ...cfg, depth: 2, branches: 3 });
    const opt = kind === 'adamw'
      ? new duat.optim.AdamW(m.parameters(), { lr: 0.01, weightDecay: 0.1 })
      : new duat.optim.SGD(m.parameters(), { lr: 0.05, weightDecay: 0.1, momentum: 0.9 });
    const { x, y } = batch(4);
    await m.trainStep(x, y, { optimizer: opt });  // state for every branch first
    m.freezeBranches(2);
    const before = values(m);
    for (let i = 0; i < 3; i++) await m.trainStep(x, y, { optimizer: opt });
    const after = values(m);
    for (const [name, b] of before) {
      const a = after.get(name)!;
      if (name.startsWith('stages.')) {
        expect(moved(b, a, 3, 0, 2)).toBe(0);
        if (name.endsWith('weight') && !name.includes('norm')) expect(moved(b, a, 3, 2, 3)).toBeGreaterThan(0);
      } else if (name === 'head.weight' || name === 'patch_embed.proj.weight') {
        expect(moved(b, a, 1, 0, 1)).toBeGreaterThan(0);
      }
    }
    // Unfrozen, they train again.
    m.freezeBranches(0);
    await m.trainStep(x, y, { optimizer: opt });
    expect(moved(after.get('stages.0.attn.qkv.weight')!, values(m).get('stages.0.attn.qkv.weight')!, 3, 0, 2)).toBeGreaterThan(0);
    for (const t of [opt, m, x, y]) t.dispose();
  });

  test("frozen branches' gradients are zero and do not count in the gradient norm", async () => {
    const m = new duat.ParaFormer({ ...cfg, depth: 1, branches: 2 });
    const { x, y } = batch(5);
    const full = await m.trainStep(x, y);
    const g0 = Float32Array.from(param(m, 'stages.0.attn.proj.weight').grad!.toArray() as Float32Array);
    m.zeroGrad();
    m.freezeBranches(1);
    const part = await m.trainStep(x, y);
    const g1 = param(m, 'stages.0.attn.proj.weight').grad!.toArray() as Float32Array;
    expect(moved(new Float32Array(g1.length), g1, 2, 0, 1)).toBe(0);
    expect(Array.from(g1.slice(g1.length / 2))).toEqual(Array.from(g0.slice(g0.length / 2)));
    expect(part.gradNorm).toBeLessThan(full.gradNorm);
    expect(part.loss).toBe(full.loss);
    for (const t of [m, x, y]) t.dispose();
  });

  test('with the embedding frozen, the patch embedding, class token and positions stay; the head trains', async () => {
    const m = new duat.ParaFormer({ ...cfg, depth: 1, branches: 2 });
    const opt = new duat.optim.AdamW(m.parameters(), { lr: 0.01 });
    m.freezeBranches(1, { embedding: true });
    expect(m.embeddingFrozen).toBe(true);
    const before = values(m);
    const { x, y } = batch(6);
    await m.trainStep(x, y, { optimizer: opt });
    const after = values(m);
    for (const n of ['patch_embed.proj.weight', 'patch_embed.proj.bias', 'cls_token', 'pos_embed']) expect(after.get(n)).toEqual(before.get(n));
    expect(after.get('head.weight')).not.toEqual(before.get('head.weight'));
    for (const t of [opt, m, x, y]) t.dispose();
  });

  test('addBranches with freezeExisting: logits unchanged when added; training moves only the new branches', async () => {
    const m = new duat.ParaFormer({ ...cfg, depth: 2, branches: 2 });
    const big = m.addBranches(2, { freezeExisting: true });
    expect([big.config.branches, big.frozenBranches]).toEqual([4, 2]);
    const x = duat.randn([3, 1, 28, 28], { seed: 7 });
    const [a, b] = [logits(m, x), logits(big, x)];
    b.forEach((v, i) => expect(v).toBeCloseTo(a[i], 5));
    const before = values(big);
    await duat.fit(big, { train: duat.data.loadMnist('train', { dir: SLICE, limit: 64 }) }, { epochs: 1, batchSize: 32, progress: false, warmupSteps: 1 });
    const after = values(big);
    expect(moved(before.get('stages.1.mlp.fc1.weight')!, after.get('stages.1.mlp.fc1.weight')!, 4, 0, 2)).toBe(0);
    expect(moved(before.get('stages.1.mlp.fc2.weight')!, after.get('stages.1.mlp.fc2.weight')!, 4, 2, 4)).toBeGreaterThan(0);
    expect(() => m.addBranches(1, { freezeExisting: 1 as unknown as boolean })).toThrow(/freezeExisting/);
    for (const t of [m, big, x]) t.dispose();
  });
});

describe('progressive training', () => {
  const opts: duat.FitOptions = { epochs: 2, batchSize: 50, progress: false, warmupSteps: 2 };

  test('every branch active from the start equals ordinary training, step for step', async () => {
    const data = slice();
    const [a, b] = [new duat.ParaFormer({ ...cfg, depth: 2, branches: 3 }), new duat.ParaFormer({ ...cfg, depth: 2, branches: 3 })];
    const ra = await duat.fit(a, data, opts);
    const rb = await duat.fit(b, data, { ...opts, progressive: { start: 3, every: 1 } });
    expect(rb.losses).toEqual(ra.losses);
    expect(values(b)).toEqual(values(a));
    a.dispose();
    b.dispose();
  });

  test('branches join on the schedule: zero output until then, untouched while inactive, earlier ones frozen with freeze', async () => {
    const data = slice();
    const m = new duat.ParaFormer({ ...cfg, depth: 1, branches: 3 });
    const init = values(m);
    const seen: number[] = [];
    const runDir = path.join(tmp, 'prog');
    const steps = duat.data.Batches.countFor(data.train.count, 50);
    const snapshots: Map<string, Float32Array>[] = [];
    const r = await duat.fit(m, data, {
      ...opts, epochs: 4, runDir, progressive: { start: 1, add: 1, every: 1, freeze: true },
      onStep: (s) => {
        seen.push(m.activeBranches);
        if (s.step % steps === 0) snapshots.push(values(m));  // the end of each epoch
      },
    });
    expect(seen).toEqual([...Array(steps).fill(1), ...Array(steps).fill(2), ...Array(2 * steps).fill(3)]);
    expect(r.history.map((h) => h.activeBranches)).toEqual([1, 2, 3, 3]);
    expect([m.activeBranches, m.frozenBranches]).toEqual([3, 0]);  // as before fit
    // After epoch 1: branch 2's output projection still zero, its other weights as initialised.
    const e1 = snapshots[0];
    expect(moved(new Float32Array(e1.get('stages.0.mlp.fc2.weight')!.length), e1.get('stages.0.mlp.fc2.weight')!, 3, 1, 3)).toBe(0);
    expect(moved(init.get('stages.0.mlp.fc1.weight')!, e1.get('stages.0.mlp.fc1.weight')!, 3, 1, 3)).toBe(0);
    // Epoch 3 trains only branch 2: branches 0 and 1 as after epoch 2.
    const [e2, e3] = [snapshots[1], snapshots[2]];
    expect(moved(e2.get('stages.0.attn.qkv.weight')!, e3.get('stages.0.attn.qkv.weight')!, 3, 0, 2)).toBe(0);
    expect(moved(e2.get('stages.0.attn.qkv.weight')!, e3.get('stages.0.attn.qkv.weight')!, 3, 2, 3)).toBeGreaterThan(0);
    const phases = fs.readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').split('\n').filter((l) => l.includes('"phase"')).map((l) => JSON.parse(l));
    expect(phases.map((p) => [p.step, p.activeBranches, p.frozenBranches])).toEqual([[0, 1, 0], [steps, 2, 1], [2 * steps, 3, 2]]);
    m.dispose();
  });

  test('a run stopped mid-schedule and resumed from its checkpoint equals the uninterrupted run', async () => {
    const data = slice();
    const o: duat.FitOptions = { ...opts, epochs: 3, progressive: { start: 1, every: 1 } };
    const whole = new duat.ParaFormer({ ...cfg, depth: 1, branches: 3 });
    const rw = await duat.fit(whole, data, o);
    const runDir = path.join(tmp, 'resume');
    const first = new duat.ParaFormer({ ...cfg, depth: 1, branches: 3 });
    const steps = duat.data.Batches.countFor(data.train.count, 50);
    const stop = new AbortController();
    await duat.fit(first, data, { ...o, runDir, checkpointEvery: 1, signal: stop.signal, onStep: (s) => void (s.step === steps + 2 && stop.abort()) });
    expect(fs.readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8')).toMatch(/"activeBranches":2/);
    const second = new duat.ParaFormer({ ...cfg, depth: 1, branches: 3, seed: 99 });
    const rs = await duat.fit(second, data, { ...o, resume: path.join(runDir, 'checkpoint.safetensors') });
    expect(rs.losses).toEqual(rw.losses);
    expect(values(second)).toEqual(values(whole));
    for (const t of [whole, first, second]) t.dispose();
  });

  test('schedules that do not fit are refused before anything trains', async () => {
    const data = slice();
    const m = new duat.ParaFormer({ ...cfg, depth: 1, branches: 3 });
    const before = values(m);
    await expect(duat.fit(m, data, { ...opts, progressive: { every: 1 } })).rejects.toThrow(/activates the last branches at step .* but the run has/);
    await expect(duat.fit(m, data, { ...opts, progressive: { start: 4, every: 1 } })).rejects.toThrow(/start is 4 but the model has 3/);
    await expect(duat.fit(m, data, { ...opts, progressive: { every: 0 } })).rejects.toThrow(duat.ArgumentError);
    await expect(duat.fit(m, data, { ...opts, progressive: { every: 1, unit: 'hours' as 'steps' } })).rejects.toThrow(/unit/);
    await expect(duat.fit(m, data, { ...opts, progressive: { every: 1, zeroInit: 'no' as unknown as boolean } })).rejects.toThrow(/zeroInit/);
    m.freezeBranches(2);
    await expect(duat.fit(m, data, { ...opts, epochs: 4, progressive: { start: 1, every: 1 } })).rejects.toThrow(/first 2 branches are frozen, so progressive.start must be at least 2/);
    expect(values(m)).toEqual(before);
    m.dispose();
  });

  test('progressivePhase: phases, the last one held, and freeze', () => {
    const p = { start: 2, add: 2, every: 3, unit: 'steps' as const, freeze: true, zeroInit: true };
    expect([0, 2, 3, 5, 6, 100].map((s) => duat.progressivePhase(p, 5, 10, s))).toEqual([
      { phase: 0, active: 2, frozen: 0 }, { phase: 0, active: 2, frozen: 0 }, { phase: 1, active: 4, frozen: 2 },
      { phase: 1, active: 4, frozen: 2 }, { phase: 2, active: 5, frozen: 4 }, { phase: 2, active: 5, frozen: 4 },
    ]);
  });
});

describe('data.select', () => {
  test('keeps the classes asked for, and a stratified fraction of each, deterministically', () => {
    const ds = duat.data.loadMnist('train', { dir: SLICE });
    const low = duat.data.select(ds, { classes: [0, 1, 2, 3, 4] });
    expect(Array.from(low.labels).every((l) => l < 5)).toBe(true);
    expect(low.count).toBe(Array.from(ds.labels).filter((l) => l < 5).length);
    expect(low.classes).toBe(10);
    const per = 28 * 28;
    const first = Array.from(ds.labels).findIndex((l) => l < 5);
    expect(Array.from(low.images.subarray(0, per))).toEqual(Array.from(ds.images.subarray(first * per, (first + 1) * per)));
    const tenth = duat.data.select(ds, { fraction: 0.1, seed: 3 });
    const count = (d: duat.data.Dataset, c: number) => Array.from(d.labels).filter((l) => l === c).length;
    for (let c = 0; c < 10; c++) expect(count(tenth, c)).toBe(Math.max(1, Math.round(count(ds, c) * 0.1)));
    expect(duat.data.select(ds, { fraction: 0.1, seed: 3 }).labels).toEqual(tenth.labels);
    expect(() => duat.data.select(ds, { classes: [10] })).toThrow(duat.ArgumentError);
    expect(() => duat.data.select(ds, { classes: [] })).toThrow(/non-empty/);
    expect(() => duat.data.select(ds, { fraction: 0 })).toThrow(/fraction/);
  });
});

describe('CLI: expand, --init, --freeze-branches, --progressive, --classes', () => {
  const run = (args: string[]) => spawnSync(process.execPath, ['-r', require.resolve('ts-node/register/transpile-only'), CLI, ...args], {
    cwd: tmp, encoding: 'utf8', env: { ...process.env, DUAT_NUM_THREADS: '2', TS_NODE_PROJECT: path.join(__dirname, '..', 'tsconfig.json') },
  });
  const small = ['--depth', '1', '--branches', '2', '--dim', '16', '--heads', '2', '--epochs', '1', '--warmup-steps', '2', '--data', SLICE, '--progress-every', '0'];

  test('train on digits 0-4, expand, fine-tune the new branches on 5-9 with the old ones frozen', () => {
    const a = run(['train', ...small, '--classes', '0-4', '--name', 'low']);
    expect(a.stderr).not.toMatch(/Error/);
    expect(a.status).toBe(0);
    const first = path.join(tmp, 'runs', 'low', 'model.safetensors');
    const e = run(['expand', '--model', first, '--add', '2']);
    expect(e.status).toBe(0);
    const expanded = JSON.parse(e.stdout);
    expect(expanded.model).toBe('Para-Former-1-2 -> 1-4');
    const b = run(['train', '--init', expanded.out, '--freeze-branches', '2', '--classes', '5-9', '--epochs', '1', '--warmup-steps', '2', '--data', SLICE, '--progress-every', '0', '--name', 'high']);
    expect(b.status).toBe(0);
    const before = duat.load(expanded.out), after = duat.load(path.join(tmp, 'runs', 'high', 'model.safetensors'));
    const [w0, w1] = [values(before).get('stages.0.mlp.fc1.weight')!, values(after).get('stages.0.mlp.fc1.weight')!];
    expect(moved(w0, w1, 4, 0, 2)).toBe(0);
    expect(moved(w0, w1, 4, 2, 4)).toBeGreaterThan(0);
    before.dispose();
    after.dispose();
  });

  test('--progressive trains with a schedule; bad combinations are usage errors that leave no run folder', () => {
    const p = run(['train', ...small, '--branches', '3', '--epochs', '3', '--progressive', '1', '--progressive-freeze', '--name', 'prog']);
    expect(p.status).toBe(0);
    const phases = fs.readFileSync(path.join(tmp, 'runs', 'prog', 'metrics.jsonl'), 'utf8').split('\n').filter((l) => l.includes('"phase"'));
    expect(phases.map((l) => JSON.parse(l).activeBranches)).toEqual([1, 2, 3]);
    const long = run(['train', ...small, '--branches', '3', '--progressive', '1', '--name', 'long']);
    expect(long.status).toBe(1);
    expect(long.stderr).toMatch(/progressive schedule/);
    expect(fs.existsSync(path.join(tmp, 'runs', 'long'))).toBe(false);
    expect(run(['train', ...small, '--add-branches', '1', '--name', 'x']).stderr).toMatch(/--add-branches needs --init/);
    expect(run(['train', ...small, '--classes', '4-1', '--name', 'y']).stderr).toMatch(/--classes/);
    const init = run(['train', '--init', path.join(tmp, 'runs', 'low', 'model.safetensors'), '--depth', '2', '--name', 'z', '--data', SLICE]);
    expect(init.stderr).toMatch(/--depth cannot be given with --init/);
  });
});
