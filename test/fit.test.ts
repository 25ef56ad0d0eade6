/**
 * Training end to end: a small committed MNIST slice trains to a stated bound; an interrupted
 * and resumed run repeats the uninterrupted one's losses exactly; training steps leave the
 * event loop free (an HTTP server in the same process keeps answering).
 */
import * as fs from 'fs';
import * as http from 'http';
import * as os from 'os';
import * as path from 'path';

import * as duat from '../lib';
import { loadTrainingState, makeOptimizer } from '../lib/train/fit';

const SLICE = path.join(__dirname, 'fixtures', 'mnist-slice');
const small = { imageSize: 28, patchSize: 7, dim: 32, heads: 2, depth: 1, branches: 2, seed: 1 };

// The bound: 40 epochs of this run reached 80.0% here (12 s on 2 cores); 75% leaves room for
// another thread count's summation order.
test('Para-Former-1-2 learns the committed 1,000-image MNIST slice: test accuracy at least 75% on 500 held-out digits', async () => {
  const train = duat.data.loadMnist('train', { dir: SLICE });
  const test = duat.data.loadMnist('test', { dir: SLICE });
  const model = new duat.ParaFormer({ ...small, dim: 64 });
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-fit-'));
  const epochs: number[] = [];
  const r = await duat.fit(model, { train, test }, { epochs: 40, batchSize: 50, lr: 3e-3, warmupSteps: 50, seed: 1, runDir, progress: false, onEpoch: (e) => epochs.push(e.test!.accuracy) });
  expect(r.test!.accuracy).toBeGreaterThanOrEqual(0.75);
  expect(r.history).toHaveLength(40);
  expect(r.losses[r.losses.length - 1]).toBeLessThan(r.losses[0]);
  // The run folder holds metrics, a checkpoint, the curve and the confusion matrix.
  for (const f of ['metrics.jsonl', 'checkpoint.safetensors', 'curve.svg', 'confusion.json']) expect(fs.existsSync(path.join(runDir, f))).toBe(true);
  const lines = fs.readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  expect(lines.filter((l) => l.type === 'epoch')).toHaveLength(40);
  const confusion: number[][] = JSON.parse(fs.readFileSync(path.join(runDir, 'confusion.json'), 'utf8'));
  expect(confusion.flat().reduce((a, b) => a + b, 0)).toBe(500);
  expect(fs.readFileSync(path.join(runDir, 'curve.svg'), 'utf8')).toMatch(/^<svg/);
  model.dispose();
}, 120000);

test('an interrupted run resumed from its checkpoint repeats the uninterrupted losses exactly', async () => {
  const train = duat.data.loadMnist('train', { dir: SLICE, limit: 400 });
  const opts = { epochs: 2, batchSize: 50, lr: 2e-3, warmupSteps: 5, seed: 3, shift: 2, progress: false };
  const straight = new duat.ParaFormer(small);
  const full = await duat.fit(straight, { train }, opts);
  expect(full.losses).toHaveLength(16);

  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-resume-'));
  const first = new duat.ParaFormer(small);
  const stop = new AbortController();
  const part = await duat.fit(first, { train }, { ...opts, runDir, checkpointEvery: 5, signal: stop.signal, onStep: (m) => m.step === 11 && stop.abort() });
  expect(part.aborted).toBe(true);
  expect(part.losses).toHaveLength(11);

  // A fresh process would start from a fresh model: the checkpoint at step 10 restores everything.
  const resumed = new duat.ParaFormer({ ...small, seed: 99 });
  const rest = await duat.fit(resumed, { train }, { ...opts, resume: path.join(runDir, 'checkpoint.safetensors') });
  expect(rest.losses).toEqual(full.losses);
  const a = new Map(straight.namedParameters());
  for (const [n, p] of resumed.namedParameters()) expect(p.toArray()).toEqual(a.get(n)!.toArray());
  for (const m of [straight, first, resumed]) m.dispose();
}, 120000);

test('a checkpoint that does not fit the model gives CheckpointError', async () => {
  const train = duat.data.loadMnist('train', { dir: SLICE, limit: 100 });
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-ckpt-'));
  const m = new duat.ParaFormer(small);
  await duat.fit(m, { train }, { epochs: 1, batchSize: 50, runDir, progress: false });
  const other = new duat.ParaFormer({ ...small, dim: 16 });
  await expect(duat.fit(other, { train }, { resume: path.join(runDir, 'checkpoint.safetensors'), progress: false })).rejects.toThrow(
    /checkpoint's dim is 32 but the model's is 16/,
  );
  m.dispose();
  other.dispose();
});

test('a checkpoint whose optimizer moments have the wrong shape is refused before anything changes', async () => {
  const train = duat.data.loadMnist('train', { dir: SLICE, limit: 100 });
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-ckpt-'));
  const m = new duat.ParaFormer(small);
  await duat.fit(m, { train }, { epochs: 1, batchSize: 50, runDir, progress: false });
  const file = path.join(runDir, 'checkpoint.safetensors');
  // Give one parameter's first moment a wrong shape: the audit saw such a file load, and the next
  // step fail after updating 10 of 32 parameters.
  const { tensors, metadata } = duat.loadSafetensors(file);
  const name = 'optimizer.m.stages.0.mlp.fc1.weight';
  const bad = duat.zeros([3, 3]);
  tensors.set(name, bad);
  const broken = path.join(runDir, 'broken.safetensors');
  duat.saveSafetensors(broken, tensors, metadata);
  const fresh = new duat.ParaFormer(small);
  const opt = makeOptimizer(fresh, { optimizer: 'adamw', lr: 1e-3, weightDecay: 0.05 });
  const before = fresh.parameters().map((p) => p.toArray());
  expect(() => loadTrainingState(broken, fresh, opt)).toThrow(/optimizer state 'optimizer\.m\.stages\.0\.mlp\.fc1\.weight' has shape \[3, 3\]/);
  fresh.parameters().forEach((p, i) => expect(p.toArray()).toEqual(before[i]));
  expect(opt.stepCount).toBe(0);
  for (const t of [...tensors.values(), bad]) t.dispose();
  for (const d of [opt, m, fresh]) d.dispose();
});

test('a checkpoint with malformed metadata (null config, negative position, bad options or step count) gives CheckpointError and changes nothing', async () => {
  const train = duat.data.loadMnist('train', { dir: SLICE, limit: 100 });
  const runDir = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-ckpt-'));
  const m = new duat.ParaFormer(small);
  await duat.fit(m, { train }, { epochs: 1, batchSize: 50, runDir, progress: false });
  const file = path.join(runDir, 'checkpoint.safetensors');
  const { tensors, metadata } = duat.loadSafetensors(file);
  const fresh = new duat.ParaFormer(small);
  const opt = makeOptimizer(fresh, { optimizer: 'adamw', lr: 1e-3, weightDecay: 0.05 });
  const before = fresh.parameters().map((p) => p.toArray());
  const cases: [Record<string, string>, RegExp][] = [
    [{ config: 'null' }, /the metadata's config is not an object/],
    [{ config: '{' }, /the metadata's config is not JSON/],
    [{ position: '{"step":-1,"epoch":0,"batch":0}' }, /position\.step is -1, not a count/],
    [{ position: '[]' }, /the metadata's position is not an object/],
    [{ options: '{"lr":"fast"}' }, /the saved training options are not valid: Expected finite number >= 0 for lr/],
    [{ optimizer_steps: '1.5' }, /optimizer_steps is "1.5", not a count/],
  ];
  for (const [change, message] of cases) {
    const broken = path.join(runDir, 'broken.safetensors');
    duat.saveSafetensors(broken, tensors, { ...metadata, ...change });
    expect(() => loadTrainingState(broken, fresh, opt)).toThrow(duat.CheckpointError);
    expect(() => loadTrainingState(broken, fresh, opt)).toThrow(message);
  }
  fresh.parameters().forEach((p, i) => expect(p.toArray()).toEqual(before[i]));
  expect(opt.stepCount).toBe(0);
  // The untouched checkpoint still loads, into the same model and optimizer.
  const st = loadTrainingState(file, fresh, opt);
  expect(st.position).toEqual({ step: 2, epoch: 1, batch: 0 });
  expect(opt.stepCount).toBe(2);
  for (const t of tensors.values()) t.dispose();
  for (const d of [opt, m, fresh]) d.dispose();
});

test('an HTTP server in the same process keeps answering while a training step runs', async () => {
  const server = http.createServer((_, res) => res.end('ok'));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  const model = new duat.ParaFormer({ ...small, patchSize: 4, dim: 64, heads: 4, branches: 4 });
  const x = duat.randn([512, 1, 28, 28], { seed: 1 });
  const y = Int32Array.from({ length: 512 }, (_, i) => i % 10);
  let inFlight = true, answeredDuring = 0;
  const get = () => new Promise<void>((resolve) => http.get({ host: '127.0.0.1', port, path: '/' }, (res) => {
    res.resume();
    res.on('end', () => {
      if (inFlight) answeredDuring++;
      resolve();
    });
  }));
  const poll = (async () => {
    while (inFlight) await get();
  })();
  // One large step (hundreds of milliseconds of native work on a worker thread).
  await model.trainStep(x, y);
  inFlight = false;
  await poll;
  server.close();
  x.dispose();
  model.dispose();
  // Had the step blocked the event loop, no request could have completed while it ran.
  expect(answeredDuring).toBeGreaterThanOrEqual(3);
}, 60000);
