/**
 * What a saved model carries for inference (its input normalisation and class names) and
 * model.predict(): checked against the model's own forward on fresh random pixels, through save,
 * load and training checkpoints, and with bad input.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import * as duat from '../lib';
import { saveSafetensors } from '../lib/io/safetensors';

const SLICE = path.join(__dirname, 'fixtures', 'mnist-slice');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-inference-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const small = (o: duat.ParaFormerOptions = {}) => new duat.ParaFormer({ imageSize: 8, patchSize: 4, channels: 3, classes: 4, dim: 16, heads: 2, depth: 1, branches: 2, ...o });

function randomPixels(n: number, seed: number): Float32Array {
  let s = seed;
  return Float32Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648));
}

/** softmax(forward(x)) computed the plain way, on the calling thread. */
function reference(model: duat.ParaFormer, normalized: Float32Array, n: number): Float32Array {
  const { channels: C, imageSize: S } = model.config;
  return duat.noGrad(() => duat.tidy(() => model.forward(duat.tensor(normalized, [n, C, S, S])).softmax().toArray() as Float32Array));
}

describe('the input spec', () => {
  test('a model has none until given one; the setter checks it against the config', () => {
    const m = small();
    expect(m.inputSpec).toBeUndefined();
    m.inputSpec = { mean: [0.5, 0.4, 0.3], std: [0.2], classNames: ['a', 'b', 'c', 'd'] };
    expect(m.inputSpec).toEqual({ mean: [0.5, 0.4, 0.3], std: [0.2], classNames: ['a', 'b', 'c', 'd'] });
    const got = m.inputSpec!;
    got.mean[0] = 9;  // a copy: changing it changes nothing
    expect(m.inputSpec!.mean[0]).toBe(0.5);
    expect(() => (m.inputSpec = { mean: [0.5, 0.5], std: [1] })).toThrow(/Expected inputSpec\.mean to be 1 or 3 finite numbers but received/);
    expect(() => (m.inputSpec = { mean: [0.5], std: [0] })).toThrow(/inputSpec\.std to be 1 or 3 finite positive numbers/);
    expect(() => (m.inputSpec = { mean: [NaN], std: [1] })).toThrow(duat.ArgumentError);
    expect(() => (m.inputSpec = { mean: [0], std: [1], classNames: ['a', 'b'] })).toThrow(/inputSpec\.classNames to be 4 strings \(one per class\)/);
    expect(m.inputSpec!.mean).toEqual([0.5, 0.4, 0.3]);  // a refused spec leaves the old one
    m.inputSpec = undefined;
    expect(m.inputSpec).toBeUndefined();
    m.dispose();
  });

  test('save and load keep it; a file with a bad one is a CheckpointError', () => {
    const m = small();
    m.inputSpec = { mean: [0.1, 0.2, 0.3], std: [0.5, 0.6, 0.7], classNames: ['cat', 'dog', 'fox', 'owl'] };
    const file = path.join(tmp, 'spec.safetensors');
    duat.save(file, m);
    const back = duat.load(file);
    expect(back.inputSpec).toEqual(m.inputSpec);
    back.dispose();
    const bad = path.join(tmp, 'bad-spec.safetensors');
    saveSafetensors(bad, m.namedParameters(), { format: 'duat-model', config: JSON.stringify(m.config), input: JSON.stringify({ mean: [1], std: [-1] }) });
    expect(() => duat.load(bad)).toThrow(/bad-spec\.safetensors: the saved input spec is not valid: Expected input\.std/);
    saveSafetensors(bad, m.namedParameters(), { format: 'duat-model', config: JSON.stringify(m.config), input: '{not json' });
    expect(() => duat.load(bad)).toThrow(duat.CheckpointError);
    m.dispose();
  });

  test("fit gives a model the training set's spec; its training checkpoint keeps it; a model's own spec wins", async () => {
    const train = duat.data.loadMnist('train', { dir: SLICE, limit: 32 });
    const model = new duat.ParaFormer({ patchSize: 7, dim: 16, heads: 2, depth: 1, branches: 1 });
    const runDir = path.join(tmp, 'fit-spec');
    await duat.fit(model, { train }, { epochs: 1, batchSize: 16, runDir, progress: false });
    const digits = ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'];
    expect(model.inputSpec).toEqual({ mean: [duat.data.MNIST_MEAN], std: [duat.data.MNIST_STD], classNames: digits });
    const resumed = new duat.ParaFormer({ patchSize: 7, dim: 16, heads: 2, depth: 1, branches: 1 });
    await duat.fit(resumed, { train: { ...train, mean: undefined, std: undefined } }, { epochs: 2, batchSize: 16, resume: path.join(runDir, 'checkpoint.safetensors'), progress: false });
    expect(resumed.inputSpec).toEqual(model.inputSpec);  // from the checkpoint
    const own = new duat.ParaFormer({ patchSize: 7, dim: 16, heads: 2, depth: 1, branches: 1 });
    own.inputSpec = { mean: [0], std: [1] };
    await duat.fit(own, { train }, { epochs: 1, batchSize: 16, maxSteps: 1, progress: false });
    expect(own.inputSpec).toEqual({ mean: [0], std: [1] });
    for (const m of [model, resumed, own]) m.dispose();
  }, 30000);

  test('data sets say how they were normalised', () => {
    const mnist = duat.data.loadMnist('test', { dir: SLICE, limit: 4 });
    expect([mnist.mean, mnist.std, mnist.classNames?.length]).toEqual([[duat.data.MNIST_MEAN], [duat.data.MNIST_STD], 10]);
    expect(duat.data.CIFAR10_NAMES).toHaveLength(10);
  });
});

describe('model.predict', () => {
  test('equals the softmax of the forward over normalised pixels, for a Float32Array, a tensor and one image', async () => {
    const m = small({ seed: 3 });
    m.inputSpec = { mean: [0.5, 0.4, 0.3], std: [0.25, 0.2, 0.3], classNames: ['a', 'b', 'c', 'd'] };
    const n = 5, per = 3 * 8 * 8;
    const pixels = randomPixels(n * per, 11);
    const norm = new Float32Array(pixels.length);
    for (let i = 0; i < pixels.length; i++) {
      const c = Math.floor(i / 64) % 3;
      norm[i] = (pixels[i] - [0.5, 0.4, 0.3][c]) / [0.25, 0.2, 0.3][c];
    }
    const want = reference(m, norm, n);
    const got = await m.predict(pixels);
    expect(got).toHaveLength(n);
    for (let i = 0; i < n; i++) {
      const row = Array.from(want.subarray(i * 4, i * 4 + 4));
      const best = row.indexOf(Math.max(...row));
      expect(got[i].class).toBe(best);
      expect(got[i].label).toBe(['a', 'b', 'c', 'd'][best]);
      expect(got[i].probability).toBeCloseTo(row[best], 6);
      Array.from(got[i].probabilities).forEach((p, k) => expect(p).toBeCloseTo(row[k], 6));
    }
    const t = duat.tensor(pixels, [n, 3, 8, 8]);
    const fromTensor = await m.predict(t);
    t.dispose();
    expect(fromTensor.map((p) => p.class)).toEqual(got.map((p) => p.class));
    const one = await m.predict(pixels.slice(per, 2 * per));
    expect(one).toHaveLength(1);
    expect(one[0].probability).toBeCloseTo(got[1].probability, 6);
    // normalized: true takes the values as they are.
    const raw = await m.predict(norm, { normalized: true });
    expect(raw.map((p) => p.class)).toEqual(got.map((p) => p.class));
    m.dispose();
  });

  test('without a spec the pixels go in as they are, and labels are class numbers', async () => {
    const m = small({ seed: 4 });
    const pixels = randomPixels(2 * 192, 5);
    const want = reference(m, pixels, 2);
    const got = await m.predict(pixels);
    expect(got[0].label).toBe(String(got[0].class));
    expect(got[1].probability).toBeCloseTo(Math.max(...Array.from(want.subarray(4, 8))), 6);
    m.dispose();
  });

  test('bad input is an ArgumentError that says what was expected; a busy model is a StateError', async () => {
    const m = small();
    await expect(m.predict(new Float32Array(100))).rejects.toThrow(/Expected a Float32Array of N x 3 x 8 x 8 pixel values \(N >= 1\)/);
    await expect(m.predict(new Float32Array(0))).rejects.toThrow(duat.ArgumentError);
    await expect(m.predict([1, 2, 3] as unknown as Float32Array)).rejects.toThrow(duat.ArgumentError);
    const wrong = duat.zeros([1, 1, 8, 8]);
    await expect(m.predict(wrong)).rejects.toThrow(/Expected float32 images of shape \(N, 3, 8, 8\) or \(3, 8, 8\)/);
    wrong.dispose();
    await expect(m.predict(new Float32Array(192), { normalized: 'yes' as unknown as boolean })).rejects.toThrow(duat.ArgumentError);
    const pending = m.predict(randomPixels(192 * 64, 2));
    await expect(m.predict(new Float32Array(192))).rejects.toThrow(duat.StateError);
    await pending;
    m.dispose();
  });
});

describe('a tensor as console.log shows it', () => {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { inspect } = require('util') as typeof import('util');

  test('shape, dtype, device, requiresGrad and its values (first four and last three past eight)', () => {
    const small = duat.tensor([1, 2.5, -3, 4, 5, 6], [2, 3]);
    expect(inspect(small)).toBe('Tensor(shape=[2, 3], dtype=float32, device=cpu) [1, 2.5, -3, 4, 5, 6]');
    const long = duat.tensor(Float32Array.from({ length: 20 }, (_, i) => i / 3), [4, 5]);
    expect(inspect(long)).toBe('Tensor(shape=[4, 5], dtype=float32, device=cpu) [0, 0.33333, 0.66667, 1, ..., 5.6667, 6, 6.3333] (20 values)');
    const ints = duat.tensor(new Int32Array([7, -1]), [2]);
    expect(inspect({ ints })).toBe('{ ints: Tensor(shape=[2], dtype=int32, device=cpu) [7, -1] }');
    const leaf = duat.zeros([1]);
    leaf.requiresGrad = true;
    expect(String(leaf)).toBe('Tensor(shape=[1], dtype=float32, device=cpu, requiresGrad)');
    for (const t of [small, long, ints, leaf]) t.dispose();
    expect(inspect(small)).toBe('Tensor(disposed)');
  });
});
