/**
 * Distributed training on MPI (docs/design.md, "Distributed training"): data-parallel and
 * branch-parallel runs under `mpirun` give the single process's losses and parameters, resume
 * from each other's checkpoints, and a killed rank ends the job instead of hanging it. Each run
 * is test/helpers/distributed-worker.js (20 steps of a Para-Former-2-4 on a synthetic set). The
 * MPI runs are skipped, saying why, where `mpirun` is missing; CI installs Open MPI.
 */
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import * as duat from '../lib';
import { makeOptimizer } from '../lib/train/fit';
import { gatherEntries, shareOptimizerState } from '../lib/train/parallel';

const root = path.resolve(__dirname, '..');
const worker = path.join(__dirname, 'helpers', 'distributed-worker.js');
const mpirun = spawnSync('mpirun', ['--version'], { encoding: 'utf8' });
const hasMpi = mpirun.status === 0;
const mpiTest = hasMpi ? test : test.skip;
if (!hasMpi) console.warn('distributed.test.ts: mpirun not found, MPI runs skipped (apt-get install openmpi-bin libopenmpi-dev)');
const MPI_FLAGS = ['--oversubscribe', ...(process.getuid?.() === 0 ? ['--allow-run-as-root'] : [])];

interface Run {
  losses: number[];
  steps: number;
  accuracy: number;
  /** Each epoch's training accuracy (the whole batch's counts, whatever rank reports it). */
  trainAccuracy: number[];
  /** The worker's model width. */
  dim: number;
  params: Record<string, number[]>;
}

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-dist-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

// The environment of a fresh job: without what a job of one started in this process (the last
// tests) leaves in it, which would make a child think it belongs to that job.
function cleanEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(OMPI_|PMIX_|OPAL_|ORTE_)/.test(k)));
}

function run(ranks: number, mode: string, name: string, extra: string[] = []): Run {
  const out = path.join(dir, `${name}.json`);
  const args = [worker, mode, out, ...extra];
  const r = ranks === 0
    ? spawnSync(process.execPath, args, { cwd: root, encoding: 'utf8', timeout: 120_000, env: cleanEnv() })
    : spawnSync('mpirun', [...MPI_FLAGS, '-np', String(ranks), process.execPath, ...args], { cwd: root, encoding: 'utf8', timeout: 120_000, env: cleanEnv() });
  if (r.status !== 0) throw new Error(`${name} exited with ${r.status} ${r.signal ?? ''}:\n${r.stderr}\n${r.stdout}`);
  return JSON.parse(fs.readFileSync(out, 'utf8')) as Run;
}

// The key part of the QKV bias (each branch's bias is [q | k | v], the model's width each) has a
// gradient of exactly zero in exact arithmetic (softmax does not change when every score of a
// query moves by q . b_k), so in floats it is rounding noise, which AdamW divides by its own
// running scale: it walks by up to a fraction of the learning rate a step, differently under
// every summation order. It is held to the walk's size, not to rounding.
const isKeyBias = (name: string, i: number, dim: number) =>
  /attn\.qkv\.bias$/.test(name) && Math.floor((i % (3 * dim)) / dim) === 1;

// float32 sums in another order: the step's values agree to rounding, and 20 steps keep them close.
function expectSameTraining(a: Run, b: Run): void {
  expect(b.steps).toBe(a.steps);
  expect(b.losses).toHaveLength(a.losses.length);
  b.losses.forEach((l, i) => expect(Math.abs(l - a.losses[i])).toBeLessThan(2e-5));
  for (const [name, values] of Object.entries(a.params)) {
    const other = b.params[name];
    expect(other).toHaveLength(values.length);
    let worst = 0, worstKeyBias = 0;
    values.forEach((v, i) => {
      const d = Math.abs(v - other[i]);
      if (isKeyBias(name, i, a.dim)) worstKeyBias = Math.max(worstKeyBias, d);
      else worst = Math.max(worst, d);
    });
    if (worst > 5e-5) throw new Error(`parameter ${name} differs by ${worst}`);
    if (worstKeyBias > 5e-4) throw new Error(`parameter ${name}'s key bias differs by ${worstKeyBias}`);
  }
  expect(b.accuracy).toBeCloseTo(a.accuracy, 6);
  // A resumed run has the epochs it ran: the last ones.
  const last = a.trainAccuracy.slice(a.trainAccuracy.length - b.trainAccuracy.length);
  b.trainAccuracy.forEach((t, i) => expect(t).toBeCloseTo(last[i], 6));
}

let single: Run;
const reference = () => (single ??= run(0, 'none', 'single'));

describe('without a job', () => {
  test('the binary does not link MPI: it loads and trains where none is installed', () => {
    const needed = spawnSync('readelf', ['-d', path.join(root, 'build', 'Release', 'duat.node')], { encoding: 'utf8' });
    if (needed.status === 0) expect(needed.stdout).not.toMatch(/libmpi/);
    expect(reference().steps).toBe(20);
    // The loss moves: the runs below compare training, not a model standing still.
    expect(Math.min(...single.losses.slice(10))).toBeLessThan(single.losses[0] - 0.3);
    expect(single.accuracy).toBeGreaterThan(0.9);
  });

  // In a child process: this one may have joined a job of one already (the last tests; mutation
  // testing runs the file again in the same process).
  test('rank and size describe a job of one; collectives and parallel steps say a job is needed', () => {
    const script = `process.env.TS_NODE_PROJECT = ${JSON.stringify(path.join(root, 'tsconfig.json'))};
      require('ts-node/register/transpile-only');
      const duat = require(${JSON.stringify(path.join(root, 'lib'))});
      const caught = (f) => { try { f(); return 'no error'; } catch (e) { return e.name + ': ' + e.message; } };
      const m = new duat.ParaFormer({ imageSize: 8, patchSize: 4, dim: 8, heads: 2, depth: 1, branches: 2 });
      const x = duat.randn([2, 1, 8, 8], { seed: 1 });
      m.trainStep(x, Int32Array.of(0, 1), { dataParallel: true }).catch((e) => e.name + ': ' + e.message).then((step) => {
        console.log(JSON.stringify({
          info: duat.distributed.info(), rank: duat.distributed.rank(), size: duat.distributed.size(), main: duat.distributed.isMain(),
          allreduce: caught(() => duat.distributed.allreduce(new Float32Array(2))), barrier: caught(() => duat.distributed.barrier()),
          stats: caught(() => duat.distributed.stats()), step,
        }));
      });`;
    const r = spawnSync(process.execPath, ['-e', script], { cwd: root, encoding: 'utf8', env: cleanEnv() });
    const out = JSON.parse(r.stdout);
    expect(out).toMatchObject({ info: null, rank: 0, size: 1, main: true });
    for (const k of ['allreduce', 'barrier', 'stats', 'step']) expect(out[k]).toMatch(/^DistributedError: .*needs a distributed job: call duat.distributed.init\(\) first/);
  });

  test('argument checks that hold with or without a job', async () => {
    expect(() => duat.distributed.allreduce([1, 2] as unknown as Float32Array)).toThrow(duat.ArgumentError);
    const m = new duat.ParaFormer({ imageSize: 8, patchSize: 4, dim: 8, heads: 2, depth: 1, branches: 2 });
    const x = duat.randn([2, 1, 8, 8], { seed: 1 });
    await expect(m.trainStep(x, Int32Array.of(0, 1), { dataParallel: 1 as unknown as boolean })).rejects.toThrow(/dataParallel/);
    x.dispose();
    m.dispose();
  });

  test('branch shares: contiguous, the first ranks one more, never empty', () => {
    expect([0, 1, 2].map((r) => duat.distributed.branchShare(4, r, 3))).toEqual([
      { offset: 0, count: 2 }, { offset: 2, count: 1 }, { offset: 3, count: 1 },
    ]);
    expect(duat.distributed.branchShare(6, 1, 2)).toEqual({ offset: 3, count: 3 });
    expect(() => duat.distributed.branchShare(2, 0, 3)).toThrow(/2 branches per stage cannot be split over 3 ranks/);
  });

  test('without an MPI library, asking for a parallel mode says what to install', () => {
    const script = `process.env.TS_NODE_PROJECT = ${JSON.stringify(path.join(root, 'tsconfig.json'))};
      require('ts-node/register/transpile-only');
      const duat = require(${JSON.stringify(path.join(root, 'lib'))});
      try { duat.distributed.init(); } catch (e) { console.log(e.name + ': ' + e.message); }`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { ...cleanEnv(), DUAT_MPI_LIBRARY: '/nonexistent/libmpi.so' } });
    expect(r.stdout).toMatch(/^DistributedError: distributed training needs MPI, and none could be loaded \(\/nonexistent\/libmpi.so: .*\): install Open MPI \(Debian and Ubuntu: apt-get install openmpi-bin libopenmpi-dev\)/);
  });
});

describe('under mpirun', () => {
  mpiTest('data parallel on 2 ranks trains as one process on the whole batch', () => {
    expectSameTraining(reference(), run(2, 'data', 'data2'));
  });

  mpiTest('data parallel on 3 ranks (shards of 5, 5 and 6 rows; 0, 0 and 1 in the last batch) trains as one process', () => {
    expectSameTraining(reference(), run(3, 'data', 'data3'));
  });

  mpiTest('branch parallel on 2 ranks (2 + 2 branches) trains as one process', () => {
    expectSameTraining(reference(), run(2, 'branches', 'branches2'));
  });

  mpiTest('branch parallel on 3 ranks (2 + 1 + 1 branches) trains as one process', () => {
    expectSameTraining(reference(), run(3, 'branches', 'branches3'));
  });

  mpiTest('a data-parallel checkpoint resumes branch-parallel, and the result is the single run', () => {
    const runDir = path.join(dir, 'resume');
    const first = run(2, 'data', 'first', ['--run-dir', runDir, '--abort-at', '10']);
    expect(first.steps).toBe(10);
    const ckpt = path.join(runDir, 'checkpoint.safetensors');
    expect(JSON.parse(duat.loadSafetensors(ckpt).metadata.position)).toEqual({ step: 10, epoch: 2, batch: 0 });
    expectSameTraining(reference(), run(2, 'branches', 'resumed', ['--run-dir', runDir, '--resume', ckpt]));
    // Rank 0 alone writes: one metrics line per 10 steps and per epoch, not one per rank.
    const lines = fs.readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.filter((l) => l.type === 'step').map((l) => l.step)).toEqual([10, 20]);
  });

  mpiTest('a rank killed mid-training ends the job within seconds, and the last checkpoint loads', async () => {
    const runDir = path.join(dir, 'killed');
    const pids = path.join(dir, 'pids');
    fs.mkdirSync(pids);
    const job = spawn('mpirun', [...MPI_FLAGS, '-np', '2', process.execPath, worker, 'data', path.join(dir, 'never.json'),
      '--run-dir', runDir, '--epochs', '100000', '--pid-dir', pids], { cwd: root, stdio: 'ignore', env: cleanEnv() });
    const ended = new Promise<number | null>((resolve) => job.on('exit', (code) => resolve(code)));
    const ckpt = path.join(runDir, 'checkpoint.safetensors');
    const deadline = Date.now() + 60_000;
    while (!(fs.existsSync(ckpt) && fs.existsSync(path.join(pids, '1.pid'))) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(fs.existsSync(ckpt)).toBe(true);
    const killedAt = Date.now();
    process.kill(Number(fs.readFileSync(path.join(pids, '1.pid'), 'utf8')), 'SIGKILL');
    const timer = setTimeout(() => job.kill('SIGKILL'), 30_000);
    const code = await ended;
    clearTimeout(timer);
    expect(Date.now() - killedAt).toBeLessThan(30_000);
    expect(code).not.toBe(0);
    const model = duat.load(ckpt);
    expect(model.config.branches).toBe(4);
    model.dispose();
  }, 120_000);

  mpiTest('more ranks than branches: a typed error on every rank and a failed job, not a hang', () => {
    const r = spawnSync('mpirun', [...MPI_FLAGS, '-np', '5', process.execPath, worker, 'branches', path.join(dir, 'five.json')],
      { cwd: root, encoding: 'utf8', timeout: 60_000, env: cleanEnv() });
    expect(r.status).not.toBe(0);
    expect(r.signal).toBeNull();
    expect(r.stderr).toMatch(/ArgumentError: branch-parallel training: 4 branches per stage cannot be split over 5 ranks/);
  });
});

// The last tests of this file join a job of one in this process (Open MPI's singleton start), as a
// script run without mpirun does: every parallel path of fit() then runs here, where a change to
// it is seen (mutation testing runs in this process), and must give the plain run's result.
describe('a job of one, in this process', () => {
  const data = (count: number, seed: number): duat.data.Dataset => {
    const S = 8, px = S * S;
    const images = new Float32Array(count * px), labels = new Int32Array(count);
    let s = seed;
    const rnd = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 4294967296;
    for (let i = 0; i < count; i++) {
      labels[i] = i % 3;
      for (let p = 0; p < px; p++) images[i * px + p] = rnd() - 0.5 + (labels[i] - 1);
    }
    return { name: 'synthetic', images, labels, count, channels: 1, size: S, classes: 3 };
  };
  const makeOpt = (m: duat.ParaFormer, kind: 'adamw' | 'sgd') => makeOptimizer(m, { optimizer: kind, lr: 0.01, weightDecay: 0.1 });
  const make = () => new duat.ParaFormer({ imageSize: 8, patchSize: 4, classes: 3, dim: 16, heads: 2, depth: 2, branches: 3, combine: 'mean', seed: 4 });
  const train = async (parallel: 'none' | 'data' | 'branches', extra: duat.FitOptions = {}) => {
    const model = make();
    const r = await duat.fit(model, { train: data(40, 1), test: data(21, 2) }, {
      epochs: 2, batchSize: 8, warmupSteps: 2, lr: 3e-3, shift: 1, clipGradNorm: 0.5, evalBatchSize: 4, progress: false, parallel, ...extra,
    });
    const params = model.namedParameters().map(([n, p]) => [n, Array.from(p.toArray())] as const);
    model.dispose();
    return { r, params };
  };

  test('data and branches give the plain run: losses, parameters, evaluation; files as one process writes them', async () => {
    const plain = await train('none');
    const job = duat.distributed.init();
    expect(job).toEqual({ rank: 0, size: 1, transport: expect.stringMatching(/^Open MPI v\d/) });
    expect(duat.distributed.init()).toEqual(job);
    expect(duat.distributed.info()).toEqual(job);
    const before = duat.distributed.stats();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-one-'));
    try {
      const data1 = await train('data', { runDir: path.join(dir, 'data'), checkpointEvery: 3 });
      const calls = duat.distributed.stats().calls - before.calls;
      // Per step: the stop check, the batch size and the gradient bucket; per epoch: the evaluation sums.
      expect(calls).toBeGreaterThanOrEqual(3 * 10);
      expect(data1.r.losses).toEqual(plain.r.losses);
      expect(data1.params).toEqual(plain.params);
      expect(data1.r.test).toEqual(plain.r.test);
      const branches = await train('branches', { runDir: path.join(dir, 'branches'), checkpointEvery: 3 });
      branches.r.losses.forEach((l, i) => expect(Math.abs(l - plain.r.losses[i])).toBeLessThan(1e-5));
      branches.params.forEach(([name, v], i) => {
        expect(name).toBe(plain.params[i][0]);
        v.forEach((x, j) => expect(Math.abs(x - plain.params[i][1][j])).toBeLessThan(1e-5));
      });
      expect(branches.r.test!.accuracy).toBeCloseTo(plain.r.test!.accuracy, 6);
      expect(branches.r.test!.confusion).toEqual(plain.r.test!.confusion);
      // The branch-parallel checkpoint is the whole model's, with the optimizer state, as 'data' writes it.
      const a = duat.loadSafetensors(path.join(dir, 'data', 'checkpoint.safetensors'));
      const b = duat.loadSafetensors(path.join(dir, 'branches', 'checkpoint.safetensors'));
      expect([...b.tensors.keys()].sort()).toEqual([...a.tensors.keys()].sort());
      expect(JSON.parse(b.metadata.config)).toEqual(JSON.parse(a.metadata.config));
      expect(JSON.parse(b.metadata.config).branches).toBe(3);
      for (const [name, t] of a.tensors) {
        expect(b.tensors.get(name)!.shape).toEqual(t.shape);
        const x = t.toArray(), y = b.tensors.get(name)!.toArray();
        let worst = 0;
        x.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - y[i]))));
        if (worst > 1e-4) throw new Error(`${name} differs by ${worst}`);
      }
      for (const f of [a, b]) for (const t of f.tensors.values()) t.dispose();
      // And it resumes: from step 9 of 10, in branch mode, to the plain run's end.
      const resumed = await train('branches', { resume: path.join(dir, 'data', 'checkpoint.safetensors'), runDir: path.join(dir, 'data') });
      expect(resumed.r.steps).toBe(10);
      resumed.params.forEach(([, v], i) => v.forEach((x, j) => expect(Math.abs(x - plain.params[i][1][j])).toBeLessThan(1e-5)));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test("rank 1's share of 2: the right branches, its optimizer state cut from the whole, gathered back into place", async () => {
    duat.distributed.init();
    const model = make();  // 3 branches: rank 0 holds 2, rank 1 the last one
    const share = duat.ParaFormer.shardOf(model, 1, 2);
    expect(share.shard).toEqual({ offset: 2, total: 3 });
    expect(share.config.branches).toBe(1);
    const whole = new Map(model.namedParameters());
    for (const [name, p] of share.namedParameters()) {
      const w = whole.get(name)!;
      const expected = name.startsWith('stages.') ? w.slice(0, 2, 3).contiguous() : w;
      expect(p.shape).toEqual(expected.shape);
      expect(Array.from(p.toArray())).toEqual(Array.from(expected.toArray()));
      if (expected !== w) expected.dispose();
    }
    for (const kind of ['adamw', 'sgd'] as const) {
      const opt = makeOpt(model, kind);
      await model.trainStep(duat.randn([4, 1, 8, 8], { seed: 9 }), Int32Array.of(0, 1, 2, 0), { optimizer: opt });
      const partOpt = makeOpt(share, kind);
      shareOptimizerState(model, opt, share, partOpt);
      expect(partOpt.stepCount).toBe(1);
      for (const [name, p] of share.namedParameters()) {
        const w = whole.get(name)!;
        const full = kind === 'adamw' ? (opt as duat.optim.AdamW).stateFor(w)!.m : (opt as duat.optim.SGD).bufferFor(w)!;
        const mine = kind === 'adamw' ? (partOpt as duat.optim.AdamW).stateFor(p)!.m : (partOpt as duat.optim.SGD).bufferFor(p)!;
        const cut = name.startsWith('stages.') ? full.slice(0, 2, 3).contiguous() : full;
        expect(Array.from(mine.toArray())).toEqual(Array.from(cut.toArray()));
        for (const t of new Set([full, mine, cut])) t.dispose();
      }
      expect(() => shareOptimizerState(model, opt, share, makeOpt(share, kind === 'adamw' ? 'sgd' : 'adamw'))).toThrow(/different kinds/);
      opt.dispose();
      partOpt.dispose();
    }
    // In a job of one the other ranks' shares are missing: zeros where they go, this share in place.
    const entries = share.namedParameters().filter(([n]) => n === 'stages.0.norm1.weight' || n === 'head.bias');
    const extra = duat.ones([1, 16]);
    const gathered = gatherEntries([...entries, ['optimizer.m.stages.0.norm1.weight', extra], ['optimizer.v.head.bias', entries[1][1]]], share.shard!);
    expect(gathered.map(([n, t]) => [n, t.shape])).toEqual([
      ['stages.0.norm1.weight', [3, 16]], ['head.bias', [3]], ['optimizer.m.stages.0.norm1.weight', [3, 16]], ['optimizer.v.head.bias', [3]],
    ]);
    const norm = gathered[0][1].toArray();
    expect(Array.from(norm.subarray(0, 32))).toEqual(new Array(32).fill(0));
    expect(Array.from(norm.subarray(32))).toEqual(Array.from(entries[0][1].toArray()));
    expect(Array.from(gathered[2][1].toArray())).toEqual([...new Array(32).fill(0), ...new Array(16).fill(1)]);
    expect(Array.from(gathered[1][1].toArray())).toEqual(Array.from(entries[1][1].toArray()));
    expect(gathered[1][1]).not.toBe(entries[1][1]);  // a copy the caller disposes
    for (const [, t] of gathered) t.dispose();
    for (const t of [extra, share, model]) t.dispose();
  });

  test('a signal stops a parallel run after the same step on every rank', async () => {
    duat.distributed.init();
    const stop = new AbortController();
    const model = make();
    const r = await duat.fit(model, { train: data(40, 1) }, { epochs: 2, batchSize: 8, parallel: 'data', progress: false, signal: stop.signal, onStep: (m) => m.step === 3 && stop.abort() });
    expect([r.steps, r.aborted]).toEqual([3, true]);
    model.dispose();
  });

  test('the collectives on a job of one; shares and parallel options refused with what is wrong', async () => {
    duat.distributed.init();
    expect(Array.from(duat.distributed.allreduce(Float32Array.of(1.5, -2)))).toEqual([1.5, -2]);
    const t = duat.tensor([1, 2, 3], [3]);
    expect(duat.distributed.allreduce(t)).toBe(t);
    expect(Array.from(t.toArray())).toEqual([1, 2, 3]);
    t.dispose();
    const bytes = Uint8Array.of(7, 8);
    expect(duat.distributed.broadcast(bytes)).toBe(bytes);
    expect(() => duat.distributed.broadcast(bytes, 1)).toThrow(/root/);
    expect(() => duat.distributed.broadcast([1] as unknown as Uint8Array)).toThrow(duat.ArgumentError);
    expect(() => duat.distributed.barrier()).not.toThrow();
    expect(() => duat.distributed.init({ library: 5 as unknown as string })).toThrow(/Expected a path for library/);
    const model = make();
    const share = duat.ParaFormer.shardOf(model, 0, 1);
    expect(share.shard).toEqual({ offset: 0, total: 3 });
    expect(share.config.branches).toBe(3);
    expect(() => duat.ParaFormer.shardOf(share, 0, 1)).toThrow(/received a branch-parallel share/);
    await expect(duat.fit(share, { train: data(8, 1) }, { parallel: 'branches', progress: false })).rejects.toThrow(/fit\(\) shares a model out itself/);
    await expect(duat.fit(model, { train: data(8, 1) }, { parallel: 'both' as 'data' })).rejects.toThrow(/parallel/);
    // The share computes what the model computes (one rank: every branch, summed through the job).
    const x = duat.randn([2, 1, 8, 8], { seed: 3 });
    const a = duat.noGrad(() => model.forward(x)), b = duat.noGrad(() => share.forward(x));
    const av = a.toArray(), bv = b.toArray();
    av.forEach((v, i) => expect(Math.abs(v - bv[i])).toBeLessThan(1e-5));
    for (const z of [x, a, b, share, model]) z.dispose();
  });
});
