/**
 * The reproducers of the hardening audit that concern files, paths and diverging training: each
 * one crashed, hung, allocated gigabytes or passed silently before, and must now give a typed
 * error (or a skipped step) and leave nothing behind.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import * as duat from '../lib';
import { native } from '../lib/native';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'duat-hard-'));
const CLI = path.join(__dirname, '..', 'dist', 'cli.js');
const SLICE = path.join(__dirname, 'fixtures', 'mnist-slice');
const MB = 2 ** 20;

/** A safetensors file from a header (object or raw JSON text) and a data section. */
function safetensorsBytes(header: object | string, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  return Buffer.concat([len, h, data]);
}

function writeFile(dir: string, name: string, bytes: Buffer): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, bytes);
  return f;
}

/** Runs `fn`, which must throw `kind`; returns the most native bytes live at once meanwhile. */
function peakWhileRefused(fn: () => unknown, kind: new (...a: never[]) => Error, message?: RegExp): number {
  duat.resetPeakMemory();
  const before = duat.memory().bytes;
  expect(fn).toThrow(kind);
  if (message) expect(fn).toThrow(message);
  return duat.memory().peakBytes - before;
}

describe('file paths and kinds', () => {
  test('numbers are not file paths (they were read as file descriptors: 0 blocked on stdin)', () => {
    const calls: [string, () => unknown][] = [
      ['loadSafetensors', () => duat.loadSafetensors(0 as unknown as string)],
      ['load', () => duat.load(0 as unknown as string)],
      ['loadViT', () => duat.loadViT(0 as unknown as string)],
      ['readIdx', () => duat.data.readIdx(0 as unknown as string)],
      ['readImage', () => duat.data.readImage(0 as unknown as string)],
      ['loadCifarBinary', () => duat.data.loadCifarBinary([0 as unknown as string])],
      ['saveSafetensors', () => duat.saveSafetensors(1 as unknown as string, [])],
    ];
    for (const [name, call] of calls) {
      expect(call).toThrow(duat.ArgumentError);
      expect(call).toThrow(/Expected a file path \(a non-empty string\) for file but received 0|received 1/);
      void name;
    }
    expect(() => duat.data.loadCifarBinary([])).toThrow(duat.ArgumentError);
  });

  test('only regular files are read: /dev/zero and folders are refused before any byte is read', () => {
    const dir = tmp();
    expect(() => duat.load('/dev/zero')).toThrow(duat.CheckpointError);
    expect(() => duat.load('/dev/zero')).toThrow(/\/dev\/zero: not a regular file/);
    expect(() => duat.loadSafetensors(dir)).toThrow(/not a regular file/);
    expect(() => duat.data.readIdx('/dev/zero')).toThrow(duat.DataError);
    expect(() => duat.data.readImage('/dev/zero')).toThrow(duat.DataError);
    expect(() => duat.data.loadCifarBinary(['/dev/zero'])).toThrow(/not a regular file/);
    expect(() => duat.load(path.join(dir, 'missing.safetensors'))).toThrow(/cannot read/);
  });
});

describe('safetensors strictness', () => {
  const f32 = (...v: number[]) => Buffer.from(Float32Array.from(v).buffer);

  test('a well-formed file loads (the control for the cases below)', () => {
    const dir = tmp();
    const f = writeFile(dir, 'ok.safetensors', safetensorsBytes({
      a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
      b: { dtype: 'F32', shape: [1], data_offsets: [8, 12] },
      __metadata__: { k: 'v' },
    }, f32(1, 2, 3)));
    const { tensors, metadata } = duat.loadSafetensors(f);
    expect(Array.from(tensors.get('a')!.toArray())).toEqual([1, 2]);
    expect(Array.from(tensors.get('b')!.toArray())).toEqual([3]);
    expect(metadata).toEqual({ k: 'v' });
    for (const t of tensors.values()) t.dispose();
  });

  const cases: [string, object | string, Buffer, RegExp][] = [
    ['duplicate names (JSON.parse keeps the last one)',
      '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
      f32(1, 2), /the name 'a' appears twice/],
    ['overlapping tensors (aliased weights)',
      { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } },
      f32(1, 2, 3), /overlaps the data of another tensor/],
    ['the same bytes for two tensors',
      { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } },
      f32(1, 2), /overlaps/],
    ['a gap between tensors (shifted weights)',
      { a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, b: { dtype: 'F32', shape: [1], data_offsets: [8, 12] } },
      f32(1, 2, 3), /4 bytes before tensor 'b' belong to no tensor/],
    ['trailing bytes',
      { a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } },
      f32(1, 2), /4 trailing bytes after the last tensor/],
    ['a dtype that is an Object.prototype name',
      { a: { dtype: 'toString', shape: [1], data_offsets: [0, 4] } },
      f32(1), /dtype "toString"/],
    ['a header length past the end of the file', '{}', Buffer.alloc(0), /./],
    ['metadata that is not a map of strings',
      { __metadata__: { k: 3 } }, Buffer.alloc(0), /__metadata__ is not a map of strings/],
  ];
  test.each(cases)('%s is refused with CheckpointError', (_, header, data, message) => {
    const dir = tmp();
    let bytes = safetensorsBytes(header, data);
    if (_.startsWith('a header length')) bytes.writeBigUInt64LE(1000n, 0);
    if (_.startsWith('a header length')) bytes = bytes.subarray(0, 20);
    const f = writeFile(dir, 'bad.safetensors', bytes);
    const live = duat.memory().tensors;
    expect(() => duat.loadSafetensors(f)).toThrow(duat.CheckpointError);
    expect(() => duat.loadSafetensors(f)).toThrow(message);
    expect(duat.memory().tensors).toBe(live);
  });

  test('a header longer than 100 MiB is refused from its length alone', () => {
    const dir = tmp();
    const bytes = Buffer.alloc(16);
    bytes.writeBigUInt64LE(BigInt(200 * MB), 0);
    expect(() => duat.loadSafetensors(writeFile(dir, 'h.safetensors', bytes))).toThrow(/header length 209715200 does not fit/);
  });
});

describe('a file cannot make the process allocate more than it holds', () => {
  test('duat.load: a 200-byte file describing a 50 GB model is refused before any allocation', () => {
    const dir = tmp();
    const config = { imageSize: 224, patchSize: 16, channels: 3, classes: 1000, dim: 16384, heads: 128, mlpRatio: 4, depth: 64, branches: 4, combine: 'sum', seed: 0 };
    const f = writeFile(dir, 'huge.safetensors', safetensorsBytes({ __metadata__: { format: 'duat-model', config: JSON.stringify(config) } }));
    expect(fs.statSync(f).size).toBeLessThan(400);
    const peak = peakWhileRefused(() => duat.load(f), duat.CheckpointError, /missing parameter '/);
    expect(peak).toBeLessThan(64 * MB);
  });

  test('duat.load: tensors the config does not describe, or of the wrong shape, are refused', () => {
    const dir = tmp();
    const m = new duat.ParaFormer({ imageSize: 28, patchSize: 7, channels: 1, classes: 10, dim: 16, heads: 2, depth: 1, branches: 2 });
    const ok = path.join(dir, 'ok.safetensors');
    duat.save(ok, m);
    const { tensors, metadata } = duat.loadSafetensors(ok);
    const extra = duat.zeros([3]);
    duat.saveSafetensors(path.join(dir, 'extra.safetensors'), [...tensors, ['surprise', extra]], metadata);
    expect(() => duat.load(path.join(dir, 'extra.safetensors'))).toThrow(/unexpected tensor 'surprise'/);
    const cfg = JSON.parse(metadata.config);
    duat.saveSafetensors(path.join(dir, 'wide.safetensors'), tensors, { ...metadata, config: JSON.stringify({ ...cfg, dim: 32 }) });
    expect(() => duat.load(path.join(dir, 'wide.safetensors'))).toThrow(/has shape \[.*\] but the config needs/);
    const back = duat.load(ok);
    expect(back.parameterCount()).toBe(m.parameterCount());
    for (const t of [...tensors.values(), extra]) t.dispose();
    back.dispose();
    m.dispose();
  });

  test('loadViT: a small file of empty tensors that claims ViT-Huge sizes is refused before the model is made', () => {
    const dir = tmp();
    const C = 4096, M = 16384;
    const header: Record<string, object> = {};
    const add = (name: string, shape: number[]) => (header[name] = { dtype: 'F32', shape, data_offsets: [0, 0] });
    add('patch_embed.proj.weight', [C, 3, 16, 0]);
    add('patch_embed.proj.bias', [0]);
    add('cls_token', [1, 1, 0]);
    add('pos_embed', [1, 197, 0]);
    add('norm.weight', [0]);
    add('norm.bias', [0]);
    add('head.weight', [1000, 0]);
    add('head.bias', [0]);
    for (let i = 0; i < 32; i++) {
      for (const k of ['norm1.weight', 'norm1.bias', 'attn.proj.bias', 'norm2.weight', 'norm2.bias', 'mlp.fc2.bias', 'attn.qkv.bias', 'mlp.fc1.bias']) add(`blocks.${i}.${k}`, [0]);
      add(`blocks.${i}.attn.qkv.weight`, [3 * C, 0]);
      add(`blocks.${i}.attn.proj.weight`, [C, 0]);
      add(`blocks.${i}.mlp.fc1.weight`, [M, 0]);
      add(`blocks.${i}.mlp.fc2.weight`, [C, 0]);
    }
    const f = writeFile(dir, 'vit.safetensors', safetensorsBytes(header));
    expect(fs.statSync(f).size).toBeLessThan(64 * 1024);
    const peak = peakWhileRefused(() => duat.loadViT(f), duat.CheckpointError, /has shape \[.*\] but a ViT of width 4096 needs/);
    expect(peak).toBeLessThan(64 * MB);
  });
});

test('loadViT leaves no tensor alive, whether it succeeds or fails (it left its per-block views to the GC)', () => {
  const dir = tmp();
  const m = new duat.ParaFormer({ imageSize: 28, patchSize: 7, channels: 1, classes: 10, dim: 16, heads: 2, depth: 2, branches: 2 });
  const file = path.join(dir, 'vit.safetensors');
  duat.tidy(() => {
    const entries: [string, duat.Tensor][] = [];
    for (const [n, p] of m.namedParameters()) {
      const g = /^stages\.(\d+)\.(.*)$/.exec(n);
      if (!g) entries.push([n, p]);
      else for (let b = 0; b < 2; b++) entries.push([`blocks.${Number(g[1]) * 2 + b}.${g[2]}`, p.slice(0, b, b + 1).reshape(p.shape.slice(1)).contiguous()]);
    }
    duat.saveSafetensors(file, entries);
  });
  m.dispose();
  const live = duat.memory().tensors;
  duat.loadViT(file, { depth: 2, branches: 2, heads: 2 }).dispose();
  duat.loadViT(file, { depth: 1, branches: 4, heads: 2, imageSize: 56 }).dispose();  // restacked, pos_embed interpolated
  expect(() => duat.loadViT(file, { depth: 2, branches: 2, heads: 2, classes: 0 })).toThrow(duat.ArgumentError);
  expect(duat.memory().tensors).toBe(live);
});

describe('images are checked before decoding', () => {
  /** A PNG signature and IHDR declaring width x height (no image data: decoding would fail). */
  function pngHeader(width: number, height: number): Buffer {
    const b = Buffer.alloc(33);
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]).copy(b, 0);
    b.writeUInt32BE(13, 8);
    b.write('IHDR', 12, 'latin1');
    b.writeUInt32BE(width, 16);
    b.writeUInt32BE(height, 20);
    b[24] = 8;  // bit depth
    b[25] = 6;  // RGBA
    return b;
  }

  test('the declared size is read from PNG and JPEG headers', () => {
    expect(duat.data.imageSize(pngHeader(640, 480))).toEqual({ width: 640, height: 480 });
    // SOI, an APP0 segment of 16 bytes, then SOF0: height 300, width 500.
    const jpeg = Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, ...new Array(14).fill(0), 0xff, 0xc0, 0x00, 0x11, 0x08, 0x01, 0x2c, 0x01, 0xf4, 0x03]);
    expect(duat.data.imageSize(jpeg)).toEqual({ width: 500, height: 300 });
    expect(duat.data.imageSize(Buffer.from('not an image'))).toBeNull();
    // The committed fixture is 28 x 28.
    expect(duat.data.imageSize(fs.readFileSync(path.join(__dirname, 'fixtures', 'mnist-test-0-seven.png')))).toEqual({ width: 28, height: 28 });
  });

  test('a PNG of width 0 is refused (it loaded as NaN inputs)', () => {
    const f = writeFile(tmp(), 'empty.png', pngHeader(0, 28));
    expect(() => duat.data.readImage(f)).toThrow(duat.DataError);
    expect(() => duat.data.readImage(f)).toThrow(/the image is empty \(0 x 28 pixels\)/);
  });

  test('a small file declaring 100,000 x 100,000 pixels, or one very long side, is refused before decoding; maxPixels and maxSide set the bounds', () => {
    const dir = tmp();
    const f = writeFile(dir, 'huge.png', pngHeader(100000, 100000));
    expect(() => duat.data.readImage(f)).toThrow(/100000 x 100000 pixels is more than the 1048576 allowed/);
    // Found by the fuzzer: 5 x 100,000 is few pixels, but pngjs's per-row state cost 64 MB for it.
    const tall = writeFile(dir, 'tall.png', pngHeader(5, 100000));
    expect(() => duat.data.readImage(tall)).toThrow(/5 x 100000 pixels has a side longer than the 8192 allowed/);
    const seven = path.join(__dirname, 'fixtures', 'mnist-test-0-seven.png');
    expect(() => duat.data.readImage(seven, { maxPixels: 28 * 28 - 1 })).toThrow(/28 x 28 pixels is more than the 783 allowed/);
    expect(duat.data.readImage(seven, { maxPixels: 28 * 28 }).width).toBe(28);
    expect(() => duat.data.readImage(seven, { maxPixels: 0 })).toThrow(duat.ArgumentError);
  });
});

describe('atomic saves', () => {
  test('temporary files that killed saves left beside the target are removed by the next save; a live writer\'s are kept', () => {
    const dir = tmp();
    const target = path.join(dir, 'model.safetensors');
    const dead = path.join(dir, '.model.safetensors.999999999.1700000000000.tmp');
    const alive = path.join(dir, `.model.safetensors.${process.ppid}.1700000000000.tmp`);
    const other = path.join(dir, '.other.safetensors.999999999.1700000000000.tmp');
    for (const f of [dead, alive, other]) fs.writeFileSync(f, 'partial');
    const t = duat.ones([2]);
    duat.saveSafetensors(target, [['x', t]]);
    t.dispose();
    expect(fs.existsSync(dead)).toBe(false);
    expect(fs.existsSync(alive)).toBe(true);
    expect(fs.existsSync(other)).toBe(true);  // another target's: not ours to judge
    expect(fs.readdirSync(dir).sort()).toEqual(['.model.safetensors.' + process.ppid + '.1700000000000.tmp', '.other.safetensors.999999999.1700000000000.tmp', 'model.safetensors'].sort());
  });
});

describe('non-finite values', () => {
  test('Infinity and NaN are refused for learning rates and other hyperparameters', () => {
    const m = new duat.ParaFormer({ imageSize: 28, patchSize: 7, channels: 1, classes: 10, dim: 16, heads: 2 });
    for (const lr of [Infinity, -Infinity, NaN]) {
      expect(() => new duat.optim.AdamW(m.parameters(), { lr })).toThrow(duat.ArgumentError);
      expect(() => new duat.optim.SGD(m.parameters(), { lr })).toThrow(duat.ArgumentError);
      expect(() => duat.resolveFitOptions({ lr })).toThrow(/for lr but received/);
    }
    expect(() => duat.resolveFitOptions({ clipGradNorm: Infinity })).toThrow(/Expected finite number >= 0 for clipGradNorm/);
    expect(() => duat.resolveFitOptions({ onNan: 'ignore' as 'skip' })).toThrow(/Expected one of 'stop', 'skip' for onNan/);
    const opt = new duat.optim.AdamW(m.parameters());
    expect(() => opt.setLearningRate(Infinity)).toThrow(duat.ArgumentError);
    opt.dispose();
    // Fill values and scalar operands may be infinite (masks): only NaN is refused there.
    const t = duat.full([1], -Infinity);
    expect(t.toArray()[0]).toBe(-Infinity);
    t.dispose();
    m.dispose();
  });

  const cfg = { imageSize: 28, patchSize: 7, channels: 1, classes: 10, dim: 16, heads: 2, depth: 1, branches: 2, seed: 4 };
  const good = () => duat.randn([4, 1, 28, 28], { seed: 9 });
  const labels = Int32Array.from([1, 2, 3, 4]);

  async function skippedStepLeavesNoTrace(device: 'cpu' | 'cuda', kind: 'adamw' | 'sgd') {
    const make = () => {
      const model = new duat.ParaFormer({ ...cfg, device });
      const opt = kind === 'adamw'
        ? new duat.optim.AdamW(model.parameters(), { lr: 1e-2 })
        : new duat.optim.SGD(model.parameters(), { lr: 1e-2, momentum: 0.9 });
      return { model, opt };
    };
    const a = make(), b = make();
    const before = a.model.namedParameters().map(([n, p]) => [n, p.toArray()] as const);
    // A poisoned batch: one NaN pixel makes the loss NaN.
    const poison = duat.tidy(() => {
      const x = good().toArray();
      x[100] = NaN;
      return duat.keep(duat.tensor(x, [4, 1, 28, 28], { device }));
    });
    const r = await a.model.trainStep(poison, labels, { optimizer: a.opt });
    expect(r.skipped).toBe(true);
    expect(Number.isNaN(r.loss)).toBe(true);
    expect(a.opt.stepCount).toBe(0);
    a.model.namedParameters().forEach(([n, p], i) => {
      expect(n).toBe(before[i][0]);
      expect(p.toArray()).toEqual(before[i][1]);
    });
    // The next good step is exactly the first step of a model that never saw the poison: no
    // moment, momentum buffer or bias-correction count survived the skipped step.
    const x = duat.tidy(() => duat.keep(good().to(device)));
    const ra = await a.model.trainStep(x, labels, { optimizer: a.opt });
    const rb = await b.model.trainStep(x, labels, { optimizer: b.opt });
    expect(ra.skipped).toBe(false);
    expect(ra.loss).toBe(rb.loss);
    expect(a.opt.stepCount).toBe(1);
    const pb = b.model.parameters();
    a.model.parameters().forEach((p, i) => expect(p.toArray()).toEqual(pb[i].toArray()));
    for (const t of [poison, x]) t.dispose();
    for (const s of [a, b]) {
      s.opt.dispose();
      s.model.dispose();
    }
  }

  test.each([['adamw'], ['sgd']] as const)('a NaN loss skips the %s update on the CPU: parameters, state and counters untouched', (kind) =>
    skippedStepLeavesNoTrace('cpu', kind));

  test.each([['adamw'], ['sgd']] as const)("a NaN loss skips the %s update on device 'cuda' (the update kernels read the gate on the device)", async (kind) => {
    const real = duat.backendInfo().cuda.available;
    if (!real) native().setTestDevice(true);
    try {
      await skippedStepLeavesNoTrace('cuda', kind);
    } finally {
      if (!real) native().setTestDevice(false);
    }
  });

  test("fit stops with NumericError naming the step (onNan 'stop', the default), or skips the batch with onNan 'skip'", async () => {
    const train = duat.data.loadMnist('train', { dir: SLICE, limit: 64 });
    const model = new duat.ParaFormer({ ...cfg });
    // A learning rate far too large: the first update makes the weights ~1e29 and the next forward overflows.
    const o = { epochs: 3, batchSize: 16, lr: 1e30, warmupSteps: 0, progress: false, optimizer: 'sgd' as const };
    const runDir = tmp();
    let err: unknown;
    try {
      await duat.fit(model, { train }, { ...o, runDir });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(duat.NumericError);
    const step = (err as duat.NumericError).step;
    expect(step).toBeGreaterThanOrEqual(1);
    expect((err as Error).message).toMatch(new RegExp(`training diverged at step ${step} \\(epoch \\d, batch \\d+\\): the loss is \\S+ and the gradient norm`));
    const skippedRecord = fs.readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l)).find((r) => r.type === 'skipped');
    expect(skippedRecord.step).toBe(step);
    // Every parameter is finite: the diverged update was never applied.
    for (const p of model.parameters()) expect(p.toArray().every(Number.isFinite)).toBe(true);
    model.dispose();

    const again = new duat.ParaFormer({ ...cfg });
    const r = await duat.fit(again, { train }, { ...o, onNan: 'skip' });
    expect(r.steps).toBe(12);
    expect(r.skippedSteps).toBeGreaterThan(0);
    expect(r.losses.filter((l) => !Number.isFinite(l)).length).toBeLessThanOrEqual(r.skippedSteps);
    for (const p of again.parameters()) expect(p.toArray().every(Number.isFinite)).toBe(true);
    again.dispose();
  });
});

describe('the duat command creates nothing it should not', () => {
  const run = (args: string[]) => spawnSync(process.execPath, [CLI, 'train', ...args], { encoding: 'utf8', env: { ...process.env, DUAT_TEST_DEVICE: '' } });

  test('--name cannot leave the runs folder; bad options fail before the run folder exists', () => {
    const root = tmp();
    const runs = path.join(root, 'runs');
    const base = ['--data', SLICE, '--runs-dir', runs, '--max-steps', '1', '--limit', '32', '--test-limit', '16', '--dim', '16', '--heads', '2'];
    for (const name of ['../..', '../escape', '/abs', '.hidden', 'a/b', 'x'.repeat(129)]) {
      const r = run([...base, '--name', name]);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/ArgumentError: Expected a run name/);
    }
    for (const bad of [['--lr', 'Infinity'], ['--lr', 'NaN'], ['--warmup-steps', '-1'], ['--optimizer', 'adam'], ['--on-nan', 'ignore'], ['--label-smoothing', '1.5']]) {
      const r = run([...base, '--name', 'bad', ...bad]);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/ArgumentError/);
    }
    expect(fs.existsSync(runs)).toBe(false);
    expect(fs.readdirSync(root)).toEqual([]);
  });

  test('a diverging run exits nonzero with NumericError; --on-nan skip finishes and counts the skipped steps', () => {
    const runs = path.join(tmp(), 'runs');
    const base = ['--data', SLICE, '--runs-dir', runs, '--max-steps', '4', '--limit', '64', '--test-limit', '16', '--dim', '16', '--heads', '2',
      '--batch-size', '16', '--lr', '1e30', '--warmup-steps', '0', '--optimizer', 'sgd', '--epochs', '1'];
    const stop = run([...base, '--name', 'stop']);
    expect(stop.status).toBe(1);
    expect(stop.stderr).toMatch(/NumericError: training diverged at step \d/);
    const skip = run([...base, '--name', 'skip', '--on-nan', 'skip']);
    expect(skip.status).toBe(0);
    const summary = JSON.parse(skip.stdout.trim().split('\n').pop()!);
    expect(summary.steps).toBe(4);
    expect(summary.skippedSteps).toBeGreaterThan(0);
  });
});
