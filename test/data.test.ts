/** Data files and checkpoints: good files load; truncated or corrupted ones give typed errors naming the file. */
import { execFileSync, spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import * as duat from '../lib';

const SLICE = path.join(__dirname, 'fixtures', 'mnist-slice');
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'duat-data-'));

describe('IDX and MNIST', () => {
  test('the committed slice and the full MNIST load with the right shapes', () => {
    const s = duat.data.loadMnist('train', { dir: SLICE });
    expect([s.count, s.channels, s.size, s.classes]).toEqual([1000, 1, 28, 10]);
    expect(s.images.length).toBe(1000 * 784);
    const full = duat.data.loadMnist('test');
    expect(full.count).toBe(10000);
    expect(Array.from(full.labels.subarray(0, 5))).toEqual([7, 2, 1, 0, 4]);  // MNIST's first test labels
  });

  const cases: [string, (b: Buffer) => Buffer, RegExp][] = [
    ['truncated data', (b) => b.subarray(0, b.length - 100), /IDX header says \[1000, 28, 28\] .* \(truncated\)/],
    ['a truncated header', (b) => b.subarray(0, 10), /truncated IDX header/],
    ['bad magic', (b) => Buffer.concat([Buffer.from([1, 2, 3, 4]), b.subarray(4)]), /not an IDX file \(bad magic 1 2 3 4\)/],
    ['float elements', (b) => { const c = Buffer.from(b); c[2] = 0x0d; return c; }, /element type 0xd is not supported/],
    ['trailing bytes', (b) => Buffer.concat([b, Buffer.alloc(3)]), /\(trailing bytes\)/],
  ];
  test.each(cases)('%s gives DataError naming the file', (_, mutate, msg) => {
    const dir = tmp();
    for (const f of fs.readdirSync(SLICE)) fs.copyFileSync(path.join(SLICE, f), path.join(dir, f));
    const file = path.join(dir, 'train-images-idx3-ubyte');
    fs.writeFileSync(file, mutate(fs.readFileSync(file)));
    expect(() => duat.data.loadMnist('train', { dir })).toThrow(duat.DataError);
    expect(() => duat.data.loadMnist('train', { dir })).toThrow(new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: `));
    expect(() => duat.data.loadMnist('train', { dir })).toThrow(msg);
  });

  test('mismatched image and label counts, and a missing file', () => {
    const dir = tmp();
    for (const f of fs.readdirSync(SLICE)) fs.copyFileSync(path.join(SLICE, f), path.join(dir, f));
    fs.copyFileSync(path.join(SLICE, 't10k-labels-idx1-ubyte'), path.join(dir, 'train-labels-idx1-ubyte'));
    expect(() => duat.data.loadMnist('train', { dir })).toThrow(/500 labels for 1000 images/);
    expect(() => duat.data.loadMnist('test', { dir: path.join(dir, 'nope') })).toThrow(/cannot read/);
  });

  test('CIFAR binary: records decode per channel; a partial record is an error', () => {
    const dir = tmp();
    const rec = Buffer.alloc(2 * 3073);
    rec[0] = 3;
    rec[1] = 255;  // first red pixel of record 0
    rec[3073] = 9;
    const f = path.join(dir, 'data_batch_1.bin');
    fs.writeFileSync(f, rec);
    const d = duat.data.loadCifarBinary([f]);
    expect([d.count, d.channels, d.size]).toEqual([2, 3, 32]);
    expect(Array.from(d.labels)).toEqual([3, 9]);
    expect(d.images[0]).toBeCloseTo((1 - 0.4914) / 0.247, 4);
    fs.writeFileSync(f, rec.subarray(0, 5000));
    expect(() => duat.data.loadCifarBinary([f])).toThrow(/5000 bytes is not a whole number of 3073-byte CIFAR records/);
  });

  test('batches are a seeded shuffle; shift augmentation moves pixels; any batch can be rebuilt alone', () => {
    const s = duat.data.loadMnist('train', { dir: SLICE });
    const a = new duat.data.Batches(s, 3, { batchSize: 100, seed: 7, shift: 2 });
    const b = new duat.data.Batches(s, 3, { batchSize: 100, seed: 7, shift: 2 });
    duat.tidy(() => {
      expect(a.batch(4).images.toArray()).toEqual(b.batch(4).images.toArray());
      expect(a.batch(4).labels.toInt32Array()).toEqual(b.batch(4).labels.toInt32Array());
      const c = new duat.data.Batches(s, 4, { batchSize: 100, seed: 7 });
      expect(Array.from(c.batch(0).labels.toInt32Array())).not.toEqual(Array.from(a.batch(0).labels.toInt32Array()));
    });
  });
});

describe('safetensors checkpoints', () => {
  const model = () => new duat.ParaFormer({ dim: 8, heads: 2, depth: 1, branches: 2, seed: 1 });

  test('save and load round-trip a model exactly', () => {
    const dir = tmp();
    const m = model();
    duat.save(path.join(dir, 'm.safetensors'), m);
    const back = duat.load(path.join(dir, 'm.safetensors'));
    expect(back.config).toEqual(m.config);
    const theirs = new Map(back.namedParameters());
    for (const [n, p] of m.namedParameters()) expect(theirs.get(n)!.toArray()).toEqual(p.toArray());
    m.dispose();
    back.dispose();
  });

  const corruptions: [string, (b: Buffer) => Buffer, RegExp][] = [
    ['a truncated file', (b) => b.subarray(0, b.length - 10), /do not fit its shape .* truncated\?/],
    ['a short file', (b) => b.subarray(0, 5), /shorter than the header length/],
    ['a header length past the end', (b) => { const c = Buffer.from(b); c.writeBigUInt64LE(10n ** 12n, 0); return c; }, /header length \d+ does not fit/],
    ['a broken JSON header', (b) => { const c = Buffer.from(b); c[8] = 0x78; return c; }, /header is not JSON/],
  ];
  test.each(corruptions)('%s gives CheckpointError naming the file', (_, mutate, msg) => {
    const dir = tmp();
    const f = path.join(dir, 'm.safetensors');
    const m = model();
    duat.save(f, m);
    m.dispose();
    fs.writeFileSync(f, mutate(fs.readFileSync(f)));
    expect(() => duat.load(f)).toThrow(duat.CheckpointError);
    expect(() => duat.load(f)).toThrow(msg);
    expect(() => duat.load(f)).toThrow(f);
  });

  test('a checkpoint whose shapes do not match the model names the parameter', () => {
    const dir = tmp();
    const f = path.join(dir, 'm.safetensors');
    const m = model();
    const sd = m.namedParameters().map(([n, p]): [string, duat.Tensor] => [n, n === 'head.weight' ? duat.zeros([3, 8]) : p]);
    duat.saveSafetensors(f, sd, { format: 'duat-model', config: JSON.stringify(m.config) });
    expect(() => duat.load(f)).toThrow(duat.CheckpointError);
    expect(() => duat.load(f)).toThrow(/parameter 'head.weight' has shape \[3, 8\] but the config needs \[10, 8\]/);
    m.dispose();
  });

  test('a save killed mid-write leaves the previous file intact (temporary file, then rename)', async () => {
    const dir = tmp();
    const f = path.join(dir, 'big.safetensors');
    const before = duat.tensor(Float32Array.from([1, 2, 3]), [3]);
    duat.saveSafetensors(f, [['x', before]]);
    const original = fs.readFileSync(f);
    // A child process starts writing a 400 MB file over it and is killed part-way.
    const lib = path.join(__dirname, '..', 'lib');
    const script = `require('ts-node/register/transpile-only');` +
      `const d=require(${JSON.stringify(lib)});const t=d.zeros([100000000]);` +
      `process.send('go');d.saveSafetensors(${JSON.stringify(f)},[['x',t]]);`;
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
    await new Promise<void>((resolve) => child.on('message', () => resolve()));
    await new Promise((r) => setTimeout(r, 150));
    child.kill('SIGKILL');
    await new Promise((r) => child.on('exit', r));
    expect(fs.readFileSync(f)).toEqual(original);
    const { tensors } = duat.loadSafetensors(f);
    expect(Array.from(tensors.get('x')!.toArray())).toEqual([1, 2, 3]);
    before.dispose();
  }, 60000);
});

test('the duat command: --help lists every flag with its default; bad flags are errors', () => {
  const cli = path.join(__dirname, '..', 'lib', 'cli.ts');
  const run = (args: string[]) => execFileSync(process.execPath, ['-r', 'ts-node/register/transpile-only', cli, ...args], { encoding: 'utf8', stdio: 'pipe' });
  const h = run(['train', '--help']);
  for (const flag of ['--depth', '--branches', '--dim', '--epochs', '--lr', '--resume']) expect(h).toContain(flag);
  expect(h).toMatch(/--branches <int>\s+n: parallel branches per stage \(default: \d+\)/);
  expect(() => run(['train', '--bogus', '1'])).toThrow(/unknown option '--bogus'/);
  expect(() => run(['train', '--depth', 'x'])).toThrow(/'--depth <int>' argument 'x' is invalid\. expected an integer/);
  expect(JSON.parse(run(['info'])).cpu.threads).toBeGreaterThanOrEqual(1);
});

test("duat train --device cuda trains through the CUDA path (the test device where no GPU is present)", () => {
  const cli = path.join(__dirname, '..', 'lib', 'cli.ts');
  const dir = tmp();
  const r = spawnSync(process.execPath, ['-r', 'ts-node/register/transpile-only', cli, 'train', '--device', 'cuda',
    '--data', SLICE, '--epochs', '1', '--max-steps', '4', '--batch-size', '16', '--dim', '16', '--heads', '2',
    '--runs-dir', dir, '--name', 'gpu'], { encoding: 'utf8', env: { ...process.env, DUAT_TEST_DEVICE: '1' } });
  expect(r.status).toBe(0);
  expect(r.stderr).toMatch(/CUDA on test device/);
  expect(JSON.parse(r.stdout).steps).toBe(4);
  const model = duat.load(path.join(dir, 'gpu', 'model.safetensors'));
  expect(model.config.dim).toBe(16);
  model.dispose();
}, 60000);

describe('images', () => {
  const digit = path.join(__dirname, 'fixtures', 'mnist-test-0-seven.png');

  test('a PNG decodes, converts to grey and resizes; a folder of class subfolders becomes a data set', () => {
    const img = duat.data.readImage(digit);
    expect([img.width, img.height, img.channels]).toEqual([28, 28, 3]);
    const grey = duat.data.prepareImage(img, 1, 28);
    const mnist = duat.data.loadMnist('test', { dir: SLICE });
    // Same pixels as the IDX file, up to the PNG's 8-bit rounding of the normalisation.
    for (let i = 0; i < 784; i++) expect(Math.abs((grey[i] - duat.data.MNIST_MEAN) / duat.data.MNIST_STD - mnist.images[i])).toBeLessThan(1e-3);
    expect(duat.data.prepareImage(img, 1, 14)).toHaveLength(196);
    const dir = tmp();
    for (const c of ['cats', 'dogs']) {
      fs.mkdirSync(path.join(dir, c));
      fs.copyFileSync(digit, path.join(dir, c, 'a.png'));
    }
    fs.writeFileSync(path.join(dir, 'dogs', 'notes.txt'), 'ignored');
    const ds = duat.data.loadImageFolder(dir, { size: 16, channels: 3 });
    expect([ds.count, ds.classes, ds.channels, ds.size]).toEqual([2, 2, 3, 16]);
    expect(ds.classNames).toEqual(['cats', 'dogs']);
    expect(Array.from(ds.labels)).toEqual([0, 1]);
  });

  test('a file that is not an image, or a truncated PNG, gives DataError naming it', () => {
    const dir = tmp();
    const bad = path.join(dir, 'x.png');
    fs.writeFileSync(bad, 'hello');
    expect(() => duat.data.readImage(bad)).toThrow(/x\.png: cannot decode the image \(not a PNG or JPEG file\)/);
    fs.writeFileSync(bad, fs.readFileSync(digit).subarray(0, 60));
    expect(() => duat.data.readImage(bad)).toThrow(duat.DataError);
    expect(() => duat.data.loadImageFolder(path.join(dir, 'none'), { size: 8 })).toThrow(/cannot read the folder/);
  });

  test('duat predict and duat inspect on a saved model', () => {
    const dir = tmp();
    const model = new duat.ParaFormer({ patchSize: 7, dim: 16, heads: 2, depth: 2, branches: 2 });
    const file = path.join(dir, 'model.safetensors');
    duat.save(file, model);
    model.dispose();
    const cli = path.join(__dirname, '..', 'lib', 'cli.ts');
    const run = (args: string[]) => execFileSync(process.execPath, ['-r', 'ts-node/register/transpile-only', cli, ...args], { encoding: 'utf8', stdio: 'pipe' });
    const p = JSON.parse(run(['predict', digit, '--model', file]));
    expect(p.top).toHaveLength(5);
    expect(p.top.reduce((s: number, t: { probability: number }) => s + t.probability, 0)).toBeLessThanOrEqual(1.0001);
    const out = path.join(dir, 'att.svg');
    run(['inspect', digit, '--model', file, '--out', out]);
    const svg = fs.readFileSync(out, 'utf8');
    expect(svg).toMatch(/^<svg/);
    expect((svg.match(/stage \d, branch \d/g) ?? []).length).toBe(4);
    expect(() => run(['predict', digit, '--model', path.join(dir, 'missing.safetensors')])).toThrow(/CheckpointError: .*missing\.safetensors: cannot read/);
  }, 60000);
});
