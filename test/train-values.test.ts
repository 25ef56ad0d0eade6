/**
 * lib/train by value: what fit() reports and writes (step and epoch metrics against the steps
 * they summarise, metrics.jsonl lines at the documented steps, checkpoint positions, the SGD
 * momentum in checkpoints, NaN handling, nothing left allocated), evaluate() against one batch,
 * every fit option's default and error, every check of loadTrainingState, and the two SVG
 * pictures (training curve, attention maps) against coordinates worked out by hand.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import * as duat from '../lib';
import { loadTrainingState, makeOptimizer, resolveFitOptions } from '../lib/train/fit';
import { attentionSvg } from '../lib/train/inspect';
import { curveSvg } from '../lib/train/plot';

const S = 8;
const tiny = { imageSize: S, patchSize: 4, classes: 3, dim: 8, heads: 2, depth: 1, branches: 2, seed: 2 };

/** `count` images whose label is their brightness (learnable in a few steps). */
function data(count: number, seed = 1, nan = false): duat.data.Dataset {
  const px = S * S;
  const images = new Float32Array(count * px), labels = new Int32Array(count);
  let s = seed;
  const rnd = () => (s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 4294967296;
  for (let i = 0; i < count; i++) {
    labels[i] = i % 3;
    for (let p = 0; p < px; p++) images[i * px + p] = nan ? NaN : rnd() - 0.5 + (labels[i] - 1);
  }
  return { name: 'synthetic', images, labels, count, channels: 1, size: S, classes: 3 };
}

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-train-values-'));
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A checkpoint's position (its tensors freed at once). */
function positionOf(file: string): unknown {
  const { tensors, metadata } = duat.loadSafetensors(file);
  for (const t of tensors.values()) t.dispose();
  return JSON.parse(metadata.position);
}

const readLines = (file: string) => fs.readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);

describe('fit() reports and writes', () => {
  test('steps, epochs, metrics lines, checkpoint positions and the result, each against what it summarises', async () => {
    const runDir = path.join(dir, 'metrics');
    const tensorsBefore = duat.memory().tensors;
    const model = new duat.ParaFormer(tiny);
    const steps: duat.StepMetrics[] = [];
    const positions: unknown[] = [];
    const ckpt = path.join(runDir, 'checkpoint.safetensors');
    // 12 images in batches of 5: 5, 5 and 2 rows; 4 epochs of 3 steps, cut at 11 steps.
    const r = await duat.fit(model, { train: data(12), test: data(7, 2) }, {
      epochs: 4, batchSize: 5, maxSteps: 11, lr: 1e-2, warmupSteps: 2, checkpointEvery: 4, evalBatchSize: 3, runDir, progress: false,
      onStep: (m) => {
        steps.push(m);
        positions.push(fs.existsSync(ckpt) ? positionOf(ckpt) : null);
      },
    });
    expect(r.steps).toBe(11);
    expect(r.aborted).toBe(false);
    expect(r.skippedSteps).toBe(0);
    expect(r.losses).toEqual(steps.map((m) => m.loss));
    expect(steps.map((m) => [m.step, m.epoch, m.batch])).toEqual([
      [1, 0, 0], [2, 0, 1], [3, 0, 2], [4, 1, 0], [5, 1, 1], [6, 1, 2], [7, 2, 0], [8, 2, 1], [9, 2, 2], [10, 3, 0], [11, 3, 1],
    ]);
    for (const m of steps) {
      const rows = m.batch === 2 ? 2 : 5;
      expect(Number.isInteger(Math.round(m.accuracy * rows * 1e6) / 1e6)).toBe(true);
      expect(m.accuracy).toBeGreaterThanOrEqual(0);
      expect(m.accuracy).toBeLessThanOrEqual(1);
      expect(m.ms).toBeGreaterThanOrEqual(0);
      expect(m.ms).toBeLessThan(60_000);
      expect(m.lr).toBe(duat.learningRate(m.step - 1, 11, resolveFitOptions({ lr: 1e-2, warmupSteps: 2 })));
    }
    // What is on disk when each step ends: nothing before the first epoch's end; then the epoch's
    // checkpoint (the next epoch, batch 0), or step 4's and 8's (checkpointEvery), each saying where
    // the next step starts.
    expect(positions.slice(0, 3)).toEqual([null, null, null]);
    expect(positions[3]).toEqual({ step: 3, epoch: 1, batch: 0 });
    expect(positions[4]).toEqual({ step: 4, epoch: 1, batch: 1 });
    expect(positions[6]).toEqual({ step: 6, epoch: 2, batch: 0 });
    expect(positions[8]).toEqual({ step: 8, epoch: 2, batch: 2 });
    // Cut by maxSteps in the middle of epoch 3: the last checkpoint resumes at its next batch.
    expect(positionOf(ckpt)).toEqual({ step: 11, epoch: 3, batch: 2 });
    // Each epoch's training loss and accuracy are its steps' row-weighted means.
    expect(r.history.map((e) => [e.epoch, e.step])).toEqual([[0, 3], [1, 6], [2, 9], [3, 11]]);
    r.history.forEach((e) => {
      const own = steps.filter((m) => m.epoch === e.epoch);
      const rows = own.map((m) => (m.batch === 2 ? 2 : 5));
      const n = rows.reduce((a, b) => a + b, 0);
      expect(e.trainLoss).toBeCloseTo(own.reduce((a, m, i) => a + m.loss * rows[i], 0) / n, 10);
      expect(e.trainAccuracy).toBeCloseTo(own.reduce((a, m, i) => a + m.accuracy * rows[i], 0) / n, 10);
      expect(e.seconds).toBeGreaterThanOrEqual(0);
      expect(e.seconds).toBeLessThan(600);
      expect(e.test!.count).toBe(7);
    });
    expect(r.test).toBe(r.history[3].test);
    expect(r.seconds).toBeGreaterThanOrEqual(0);
    expect(r.seconds).toBeLessThan(600);
    // metrics.jsonl: a step line at every 10th step and at the last, an epoch line per epoch.
    const lines = readLines(path.join(runDir, 'metrics.jsonl'));
    expect(lines.map((l) => [l.type, l.step])).toEqual([
      ['epoch', 3], ['epoch', 6], ['epoch', 9], ['step', 10], ['step', 11], ['epoch', 11],
    ]);
    expect(lines[3]).toMatchObject({ type: 'step', step: 10, epoch: 3, batch: 0, loss: steps[9].loss, lr: steps[9].lr });
    expect(lines[5]).toMatchObject({ type: 'epoch', epoch: 3, trainLoss: r.history[3].trainLoss, test: { loss: r.test!.loss, accuracy: r.test!.accuracy } });
    expect(Object.keys(lines[5].test as object).sort()).toEqual(['accuracy', 'loss']);
    expect(fs.readFileSync(path.join(runDir, 'curve.svg'), 'utf8')).toBe(curveSvg(r.losses, r.history));
    expect(JSON.parse(fs.readFileSync(path.join(runDir, 'confusion.json'), 'utf8'))).toEqual(r.test!.confusion);
    model.dispose();
    expect(duat.memory().tensors).toBeLessThanOrEqual(tensorsBefore);  // nothing of fit's is left (tensors an earlier file left to the GC may go meanwhile)
  });

  test('evaluate(): the mean loss, accuracy and confusion of one big batch, whatever the batch size', async () => {
    const model = new duat.ParaFormer(tiny);
    const set = data(11, 5);
    const images = duat.tensor(set.images, [11, 1, S, S]);
    const one = await model.evaluate(images, set.labels);
    images.dispose();
    for (const batch of [1, 4, 11, 500]) {
      const r = await duat.evaluate(model, set, batch);
      expect(r.count).toBe(11);
      expect(r.loss).toBeCloseTo(one.lossSum / 11, 5);
      expect(r.accuracy).toBeCloseTo(one.correct / 11, 10);
      const confusion = [[0, 0, 0], [0, 0, 0], [0, 0, 0]];
      one.predictions.forEach((p, i) => confusion[set.labels[i]][p]++);
      expect(r.confusion).toEqual(confusion);
    }
    model.dispose();
  });

  test('SGD: its momentum buffers go into checkpoints and come back, so a resumed run is the straight run', async () => {
    const opts: duat.FitOptions = { epochs: 2, batchSize: 4, optimizer: 'sgd', lr: 0.05, warmupSteps: 1, progress: false };
    const straight = new duat.ParaFormer(tiny);
    const full = await duat.fit(straight, { train: data(12) }, opts);
    const runDir = path.join(dir, 'sgd');
    const stop = new AbortController();
    const first = new duat.ParaFormer(tiny);
    await duat.fit(first, { train: data(12) }, { ...opts, runDir, checkpointEvery: 2, signal: stop.signal, onStep: (m) => m.step === 4 && stop.abort() });
    const file = path.join(runDir, 'checkpoint.safetensors');
    const saved = duat.loadSafetensors(file);
    const names = first.namedParameters().map(([n]) => n);
    expect([...saved.tensors.keys()].filter((k) => k.startsWith('optimizer.')).sort()).toEqual(names.map((n) => `optimizer.buf.${n}`).sort());
    for (const t of saved.tensors.values()) t.dispose();
    const resumed = new duat.ParaFormer(tiny);
    const rest = await duat.fit(resumed, { train: data(12) }, { ...opts, resume: file });
    expect(rest.losses).toEqual(full.losses);
    resumed.parameters().forEach((p, i) => expect(p.toArray()).toEqual(straight.parameters()[i].toArray()));
    for (const m of [straight, first, resumed]) m.dispose();
  });

  test('a resume takes the checkpoint options, but the epochs, maxSteps and onNan given now', async () => {
    const runDir = path.join(dir, 'resume-epochs');
    const m = new duat.ParaFormer(tiny);
    await duat.fit(m, { train: data(8) }, { epochs: 1, batchSize: 4, warmupSteps: 0, runDir, progress: false });
    const file = path.join(runDir, 'checkpoint.safetensors');
    const again = await duat.fit(m, { train: data(8) }, { epochs: 3, resume: file, progress: false });
    expect(again.steps).toBe(6);  // batchSize 4 from the checkpoint, 3 epochs from now
    expect(again.history.map((e) => e.epoch)).toEqual([1, 2]);
    const kept = await duat.fit(m, { train: data(8) }, { resume: file, progress: false });
    expect(kept.steps).toBe(2);  // the checkpoint's 1 epoch: nothing left to run
    expect(kept.history).toEqual([]);
    m.dispose();
  });

  test('NaN losses: skipped and counted with onNan skip, a NumericError naming the step and what to do with stop', async () => {
    const runDir = path.join(dir, 'nan');
    const m = new duat.ParaFormer(tiny);
    const before = m.parameters().map((p) => p.toArray());
    const r = await duat.fit(m, { train: data(8, 1, true) }, { epochs: 1, batchSize: 4, onNan: 'skip', runDir, progress: false });
    expect([r.steps, r.skippedSteps]).toEqual([2, 2]);
    expect(r.history[0].trainLoss).toBeNaN();
    expect(r.history[0].trainAccuracy).toBeNaN();
    m.parameters().forEach((p, i) => expect(p.toArray()).toEqual(before[i]));
    const skipped = readLines(path.join(runDir, 'metrics.jsonl')).filter((l) => l.type === 'skipped');
    expect(skipped.map((l) => [l.step, l.loss])).toEqual([[1, 'NaN'], [2, 'NaN']]);
    const err = await duat.fit(m, { train: data(8, 1, true) }, { epochs: 1, batchSize: 4, lr: 0.25, progress: false }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(duat.NumericError);
    expect((err as duat.NumericError).step).toBe(1);
    expect((err as Error).message).toMatch(
      /^training diverged at step 1 \(epoch 1, batch 0\): the loss is NaN and the gradient norm NaN\. The update was skipped, so the model holds the parameters from before this step\. Lower the learning rate \(0\.00125\), set clipGradNorm, or pass onNan: 'skip' to go on with the next batch\.$/,
    );
    m.dispose();
  });

  test('a signal raised before the first step: no step, aborted, nothing left allocated', async () => {
    const m = new duat.ParaFormer(tiny);
    const before = duat.memory().tensors;
    const stop = new AbortController();
    stop.abort();
    const r = await duat.fit(m, { train: data(8) }, { epochs: 2, batchSize: 4, signal: stop.signal, progress: false });
    expect([r.steps, r.aborted, r.history.length]).toEqual([0, true, 0]);
    expect(r.test).toBeUndefined();
    expect(duat.memory().tensors).toBeLessThanOrEqual(before);
    m.dispose();
  });

  test('a step that throws leaves nothing allocated and rejects with the step error', async () => {
    const m = new duat.ParaFormer(tiny);
    const bad = { ...data(8), labels: Int32Array.from({ length: 8 }, () => 7) };  // 3 classes
    const before = duat.memory().tensors;
    await expect(duat.fit(m, { train: bad }, { epochs: 1, batchSize: 4, progress: false })).rejects.toThrow(/label/);
    expect(duat.memory().tensors).toBeLessThanOrEqual(before);
    m.dispose();
  });

  test('what fit() refuses: the model, the data sets, images of another size or channel count', async () => {
    const m = new duat.ParaFormer(tiny);
    await expect(duat.fit({} as duat.ParaFormer, { train: data(4) })).rejects.toThrow(/^Expected a ParaFormer for model but received/);
    for (const d of [null, 5, {}, { train: undefined }]) {
      await expect(duat.fit(m, d as unknown as { train: duat.data.Dataset })).rejects.toThrow(/^Expected \{ train, test\? \} data sets but received/);
    }
    await expect(duat.fit(m, { train: data(4) }, 3 as unknown as duat.FitOptions)).rejects.toThrow(/fit options/);
    await expect(duat.fit(m, { train: { ...data(4), size: 4 } })).rejects.toThrow('the training images are 1 x 4 x 4 but the model expects 1 x 8 x 8');
    await expect(duat.fit(m, { train: { ...data(4), channels: 3 } })).rejects.toThrow('the training images are 3 x 8 x 8 but the model expects 1 x 8 x 8');
    m.dispose();
  });
});

describe('fit options', () => {
  test('every default, and the SGD learning rate', () => {
    expect(resolveFitOptions()).toEqual({
      epochs: 10, batchSize: 128, optimizer: 'adamw', lr: 1e-3, minLr: 1e-5, warmupSteps: 200, schedule: 'cosine', weightDecay: 0.05,
      labelSmoothing: 0, clipGradNorm: 0, shift: 0, flip: false, seed: 0, maxSteps: Number.MAX_SAFE_INTEGER, checkpointEvery: 0, progressive: null,
      evalBatchSize: 500, onNan: 'stop',
    });
    expect(resolveFitOptions({ optimizer: 'sgd' })).toMatchObject({ lr: 0.05, minLr: 0.05 / 100 });
    expect(resolveFitOptions({ optimizer: 'sgd', lr: 0.2 })).toMatchObject({ lr: 0.2, minLr: 0.002 });
    expect(resolveFitOptions({ seed: 2 ** 53 - 1 }).seed).toBe(2 ** 53 - 1);
  });

  test.each([
    ['epochs', 0], ['epochs', 1.5], ['batchSize', 0], ['optimizer', 'adam'], ['lr', -1], ['minLr', -1], ['warmupSteps', -1],
    ['schedule', 'linear'], ['weightDecay', -0.1], ['labelSmoothing', 1], ['clipGradNorm', -1], ['shift', 65], ['flip', 1],
    ['seed', 2 ** 53], ['seed', -1], ['maxSteps', 0], ['checkpointEvery', -1], ['evalBatchSize', 0], ['onNan', 'ignore'],
  ])('%s = %p is refused with its name', (name, value) => {
    expect(() => resolveFitOptions({ [name]: value } as duat.FitOptions)).toThrow(duat.ArgumentError);
    expect(() => resolveFitOptions({ [name]: value } as duat.FitOptions)).toThrow(new RegExp(`\\b${name}\\b`));
  });

  test('options must be an object', () => {
    expect(() => resolveFitOptions(7 as unknown as duat.FitOptions)).toThrow('Expected an options object for fit options but received');
  });

  test('the optimizer: norms, biases, the class token and positions in a group without weight decay', () => {
    const m = new duat.ParaFormer(tiny);
    for (const kind of ['adamw', 'sgd'] as const) {
      const opt = makeOptimizer(m, { optimizer: kind, lr: 0.01, weightDecay: 0.3 });
      expect(opt.groups.map((g) => g.options.weightDecay)).toEqual([0.3, 0]);
      expect(opt.groups.map((g) => g.options.lr)).toEqual([0.01, 0.01]);
      const named = new Map(m.namedParameters().map(([n, p]) => [p, n]));
      expect(opt.groups[1].params.map((p) => named.get(p)).sort()).toEqual(m.noDecayNames().sort());
      expect(opt.groups[0].params.length + opt.groups[1].params.length).toBe(m.parameters().length);
      if (kind === 'sgd') expect(opt.groups[0].options).toMatchObject({ momentum: 0.9, nesterov: true });
      opt.dispose();
    }
    m.dispose();
  });
});

describe('loadTrainingState refuses, naming what is wrong, and changes nothing', () => {
  let file: string, tensors: Map<string, duat.Tensor>, metadata: Record<string, string>;
  beforeAll(async () => {
    const runDir = path.join(dir, 'state');
    const m = new duat.ParaFormer(tiny);
    await duat.fit(m, { train: data(8) }, { epochs: 1, batchSize: 4, runDir, progress: false });
    m.dispose();
    file = path.join(runDir, 'checkpoint.safetensors');
    ({ tensors, metadata } = duat.loadSafetensors(file));
  });
  afterAll(() => {
    for (const t of tensors.values()) t.dispose();
  });

  const expectRefused = (entries: Map<string, duat.Tensor>, meta: Record<string, string>, message: string | RegExp) => {
    const broken = path.join(dir, 'broken.safetensors');
    duat.saveSafetensors(broken, entries, meta);
    const m = new duat.ParaFormer(tiny);
    const opt = makeOptimizer(m, { optimizer: 'adamw', lr: 1e-3, weightDecay: 0.05 });
    const before = m.parameters().map((p) => p.toArray());
    expect(() => loadTrainingState(broken, m, opt)).toThrow(duat.CheckpointError);
    expect(() => loadTrainingState(broken, m, opt)).toThrow(message);
    m.parameters().forEach((p, i) => expect(p.toArray()).toEqual(before[i]));
    expect(opt.stepCount).toBe(0);
    opt.dispose();
    m.dispose();
  };

  test.each([
    [{ format: 'duat-model' }, 'not a duat training checkpoint (format "duat-model")'],
    [{ config: '5' }, "the metadata's config is not an object"],
    [{ position: '"x"' }, "the metadata's position is not an object"],
    [{ options: '[1]' }, "the metadata's options is not an object"],
    [{ position: '{"step":1.5,"epoch":0,"batch":0}' }, 'position.step is 1.5, not a count'],
    [{ position: '{"step":1,"epoch":"0","batch":0}' }, 'position.epoch is "0", not a count'],
    [{ position: '{"step":1,"epoch":0}' }, 'position.batch is undefined, not a count'],
    [{ optimizer_steps: '-1' }, 'optimizer_steps is "-1", not a count'],
  ])('metadata %p', (change, message) => {
    expectRefused(tensors, { ...metadata, ...change }, message);
  });

  test('a config that describes another model', () => {
    const config = JSON.stringify({ ...JSON.parse(metadata.config), classes: 4 });
    expectRefused(tensors, { ...metadata, config }, "the checkpoint's classes is 4 but the model's is 3");
    const seed = JSON.stringify({ ...JSON.parse(metadata.config), seed: 99 });
    const f = path.join(dir, 'seed.safetensors');
    duat.saveSafetensors(f, tensors, { ...metadata, config: seed });
    const m = new duat.ParaFormer(tiny);
    const opt = makeOptimizer(m, { optimizer: 'adamw', lr: 1e-3, weightDecay: 0.05 });
    expect(() => loadTrainingState(f, m, opt)).not.toThrow();  // the seed only made the initial values
    opt.dispose();
    m.dispose();
  });

  test('a zero step count loads; the losses must be a float32 vector', () => {
    const m = new duat.ParaFormer(tiny);
    const opt = makeOptimizer(m, { optimizer: 'adamw', lr: 1e-3, weightDecay: 0.05 });
    const zero = path.join(dir, 'zero.safetensors');
    duat.saveSafetensors(zero, tensors, { ...metadata, optimizer_steps: '0' });
    expect(loadTrainingState(zero, m, opt).position).toEqual({ step: 2, epoch: 1, batch: 0 });
    expect(opt.stepCount).toBe(0);
    opt.dispose();
    m.dispose();
    const losses = tensors.get('train.losses')!;
    for (const bad of [duat.tensor([1, 2], [1, 2]), duat.tensor(Int32Array.of(1, 2), [2])]) {
      expectRefused(new Map([...tensors, ['train.losses', bad]]), metadata, 'train.losses is not a float32 vector');
      bad.dispose();
    }
    expect(losses.shape).toEqual([2]);
  });

  test('a parameter missing or of another shape; optimizer moments of another shape or dtype', () => {
    const without = new Map(tensors);
    without.delete('head.bias');
    expectRefused(without, metadata, "missing parameter 'head.bias'");
    const wide = duat.zeros([4]);
    expectRefused(new Map([...tensors, ['head.bias', wide]]), metadata, "parameter 'head.bias' has shape [4] but the model's is [3]");
    expectRefused(new Map([...tensors, ['optimizer.m.head.bias', wide]]), metadata,
      "optimizer state 'optimizer.m.head.bias' has shape [4] but its parameter has [3]");
    const ints = duat.tensor(Int32Array.of(0, 0, 0), [3]);
    expectRefused(new Map([...tensors, ['optimizer.v.head.bias', ints]]), metadata, "optimizer state 'optimizer.v.head.bias' has shape [3]");
    const flat = duat.zeros([3 * 8]);
    expectRefused(new Map([...tensors, ['head.weight', flat]]), metadata, "parameter 'head.weight' has shape [24] but the model's is [3, 8]");
    for (const t of [wide, ints, flat]) t.dispose();
  });

  test('moments restored only in pairs: a lone m leaves the parameter without state', () => {
    const m = new duat.ParaFormer(tiny);
    const opt = makeOptimizer(m, { optimizer: 'adamw', lr: 1e-3, weightDecay: 0.05 }) as duat.optim.AdamW;
    const lone = new Map(tensors);
    lone.delete('optimizer.v.head.bias');
    const f = path.join(dir, 'lone.safetensors');
    duat.saveSafetensors(f, lone, metadata);
    loadTrainingState(f, m, opt);
    const head = new Map(m.namedParameters()).get('head.bias')!;
    expect(opt.stateFor(head)).toBeUndefined();
    const w = opt.stateFor(new Map(m.namedParameters()).get('head.weight')!)!;
    expect(Array.from(w.m.toArray())).toEqual(Array.from(tensors.get('optimizer.m.head.weight')!.toArray()));
    w.m.dispose();
    w.v.dispose();
    opt.dispose();
    m.dispose();
  });
});

describe('pictures', () => {
  const numbers = (svg: string, re: RegExp) => [...svg.matchAll(re)].map((m) => m.slice(1).map(Number));

  test('the training curve: the EMA of the losses over the plot, NaN steps holding it, test accuracy as points', () => {
    // EMA from the first finite loss: 2, 1.95, 1.95 (the NaN step), 1.9025; the scale is the larger of
    // the first value and those from the 6th on (here index 3, the last): 2.
    const svg = curveSvg([2, 1, NaN, 1], [{ step: 2, test: { accuracy: 0.5 } }, { step: 4 }]);
    const x = (i: number) => 56 + (608 * i) / 3, y = (v: number) => 24 + 296 - (296 * v) / 2;
    const expected = [2, 1.95, 1.95, 1.9025].map((v, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join('');
    expect(svg).toContain(`<path d="${expected}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>`);
    expect(svg).toContain(`<polyline points="${x(1).toFixed(1)},172.0" fill="none" stroke="#d62728" stroke-width="2"/>`);
    expect(svg).toContain(`<circle cx="${x(1).toFixed(1)}" cy="172.0" r="3" fill="#d62728"/>`);
    expect(svg.match(/<circle/g)).toHaveLength(1);
    expect(svg).toContain('step (of 4)</text>');
    // Loss ticks at 0, 0.5, 1, 1.5 and 2 (the scale), accuracy ticks at 0% .. 100%.
    expect(numbers(svg, /<text x="50" y="([\d.]+)" text-anchor="end">([\d.]+)<\/text>/g)).toEqual(
      [0, 0.25, 0.5, 0.75, 1].map((t) => [y(2 * t) + 4, Number((2 * t).toFixed(2))]));
    expect(numbers(svg, /<text x="670" y="([\d.]+)">(\d+)%<\/text>/g)).toEqual([0, 25, 50, 75, 100].map((p) => [24 + 296 - 2.96 * p + 4, p]));
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg" width="720" height="360"')).toBe(true);
  });

  test('the loss scale leaves out the first steps (but not the first) so a high start does not flatten the curve', () => {
    const svg = curveSvg([1, 10, 10, 10, 1, 1, 1], []);
    const ema = [1];
    for (const l of [10, 10, 10, 1, 1, 1]) ema.push(0.95 * ema[ema.length - 1] + 0.05 * l);
    const scale = Math.max(ema[0], ema[5], ema[6]);
    const ys = numbers(svg, /[ML][\d.]+,([\d.]+)/g).map(([v]) => v);
    expect(ys).toEqual(ema.map((v) => Number((24 + 296 - (296 * Math.min(v, scale)) / scale).toFixed(1))));
    expect(ys[3]).toBe(24);  // above the scale: clipped to the top
    expect(svg).not.toContain('<polyline');
    expect(svg).not.toContain('<circle');
    const empty = curveSvg([], []);
    expect(empty).toContain('<path d=""');
    expect(empty).toContain('step (of 0)');
    expect(curveSvg([NaN, NaN], [])).toContain('<path d="M56.0,320.0L664.0,320.0"');
  });

  test('the attention picture: the input in grey levels, the class token attention per stage and branch', () => {
    // 2 x 2 input; maps of 2 heads over 4 patches (T1 = 5); image 1 of the batch is ignored.
    const image = Float32Array.of(0, 1, 2, 3);
    const maps = new Float32Array(2 * 2 * 5 * 5).fill(9);
    const row = (b: number, h: number, values: number[]) => maps.set(values, ((b * 2 + h) * 5) * 5);
    row(0, 0, [0, 0.1, 0.2, 0.3, 0.4]);
    row(0, 1, [0, 0.3, 0.2, 0.5, 0]);
    const t = duat.tensor(maps, [2, 2, 5, 5]);
    const svg = attentionSvg(image, 2, [{ stage: 1, branch: 0, maps: t }], 'title <here>');
    t.dispose();
    // panel = 8, pad = 16: width 16 + 24 * 2, height 40 + (8 + 16 + 14) * 2.
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg" width="64" height="116"')).toBe(true);
    expect(svg).toContain('<text x="16" y="22" font-size="14">title <here></text>');
    const greys = numbers(svg, /<rect x="([\d.]+)" y="([\d.]+)" width="4.00" height="4.00" fill="rgb\((\d+),\d+,\d+\)"/g);
    expect(greys.slice(0, 4)).toEqual([[16, 40, 0], [20, 40, 85], [16, 44, 170], [20, 44, 255]]);
    expect(svg).toContain('<text x="16" y="62">input</text>');
    // Mean over heads of the class token's row: 0.2, 0.2, 0.4, 0.2; scaled by its largest.
    const x0 = 16 + 24, y0 = 40 + 38;
    const cells = numbers(svg, /<rect x="([\d.]+)" y="([\d.]+)" width="4.00" height="4.00" fill="rgb\((\d+),(\d+),(\d+)\)"/g).slice(4);
    expect(cells).toEqual([
      [x0, y0, 128, 40, 128], [x0 + 4, y0, 128, 40, 128], [x0, y0 + 4, 255, 80, 0], [x0 + 4, y0 + 4, 128, 40, 128],
    ]);
    expect(svg).toContain(`<text x="${x0}" y="${y0 + 8 + 14}">stage 2, branch 1</text>`);
  });

  test('a flat input is drawn black; panels go where their stage and branch say', () => {
    const flat = new Float32Array(4).fill(3);
    const mk = () => duat.tensor(new Float32Array(1 * 1 * 5 * 5).fill(0.2), [1, 1, 5, 5]);
    const a = mk(), b = mk();
    const svg = attentionSvg(flat, 2, [{ stage: 0, branch: 0, maps: a }, { stage: 0, branch: 2, maps: b }], 't');
    for (const x of [a, b]) x.dispose();
    expect(svg).toContain('width="112" height="78"');  // 16 + 24 * 4; 40 + 38
    expect(numbers(svg, /fill="rgb\((\d+),(\d+),(\d+)\)"/g).slice(0, 4)).toEqual([[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]]);
    expect(svg).toContain('<text x="88" y="62">stage 1, branch 3</text>');
    expect(svg).toContain('<rect x="88.0" y="40.0" width="4.00" height="4.00" fill="rgb(255,80,0)"/>');
  });
});
