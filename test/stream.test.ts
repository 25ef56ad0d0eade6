/**
 * Streamed image data sets (lib/data/stream.ts): listing, decoding on worker threads, the
 * evaluation and training transforms, bad files (typed errors naming them, or counted skips),
 * and fit()/evaluate() on a stream.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as jpeg from 'jpeg-js';
import { PNG } from 'pngjs';

import * as duat from '../lib';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-stream-'));
const streams: duat.data.ImageStream[] = [];
afterAll(async () => {
  for (const s of streams) await s.close();
  fs.rmSync(tmp, { recursive: true, force: true });
});
const open = async (dir: string, o: duat.data.ImageStreamOptions) => {
  const s = await duat.data.imageFolder(dir, o);
  streams.push(s);
  return s;
};

/** `n` images per class of a bright disc (class 0) or square (class 1), w x h, as PNG or JPEG. */
function collection(dir: string, n: number, w: number, h: number, kind: 'png' | 'jpg'): void {
  let s = 11;
  const rnd = () => (s = (s * 16807) % 2147483647) / 2147483647;
  ['disc', 'square'].forEach((cls) => {
    fs.mkdirSync(path.join(dir, cls), { recursive: true });
    for (let i = 0; i < n; i++) {
      const data = Buffer.alloc(w * h * 4);
      const cx = w * (0.3 + 0.4 * rnd()), cy = h * (0.3 + 0.4 * rnd()), r = Math.min(w, h) * 0.2;
      for (let y = 0; y < h; y++)
        for (let x = 0; x < w; x++) {
          const inside = cls === 'disc' ? (x - cx) ** 2 + (y - cy) ** 2 < r * r : Math.abs(x - cx) < r && Math.abs(y - cy) < r;
          const k = (y * w + x) * 4;
          data[k] = inside ? 240 : 30;
          data[k + 1] = inside ? 200 : 60 + 40 * rnd();
          data[k + 2] = 90;
          data[k + 3] = 255;
        }
      const file = path.join(dir, cls, `${i}.${kind}`);
      if (kind === 'jpg') fs.writeFileSync(file, jpeg.encode({ data, width: w, height: h }, 90).data);
      else {
        const png = new PNG({ width: w, height: h });
        data.copy(png.data);
        fs.writeFileSync(file, PNG.sync.write(png));
      }
    }
  });
}

describe('imageFolder', () => {
  const dir = path.join(tmp, 'pngs');
  beforeAll(() => collection(dir, 6, 20, 20, 'png'));

  test('lists the classes and files; the evaluation transform of square images is loadImageFolder\'s', async () => {
    const s = await open(dir, { size: 10, channels: 3, mean: [0.1, 0.2, 0.3], std: [0.5, 1, 2], cropPct: 1 });
    expect([s.count, s.classes, s.classNames, s.channels, s.size]).toEqual([12, 2, ['disc', 'square'], 3, 10]);
    expect(Array.from(s.labels)).toEqual([...Array(6).fill(0), ...Array(6).fill(1)]);
    const eager = duat.data.loadImageFolder(dir, { size: 10, channels: 3, mean: [0.1, 0.2, 0.3], std: [0.5, 1, 2] });
    const r = await s.load([3, 7, 0], 1);
    const px = 3 * 10 * 10;
    expect(Array.from(r.labels)).toEqual([0, 1, 0]);
    expect(Array.from(r.images.subarray(px, 2 * px))).toEqual(Array.from(eager.images.subarray(7 * px, 8 * px)));
    expect(s.stats().decoded).toBe(3);
  });

  test('the training transform: the same seed gives the same batch, another seed another; crops differ from the whole image', async () => {
    const s = await open(dir, { size: 8, channels: 1, augment: true, workers: 2 });
    const [a, b, c] = [await s.load([0, 1, 2, 3], 5), await s.load([0, 1, 2, 3], 5), await s.load([0, 1, 2, 3], 6)];
    expect(Array.from(a.images)).toEqual(Array.from(b.images));
    expect(Array.from(a.images)).not.toEqual(Array.from(c.images));
    const whole = await s.with({ augment: false, cropPct: 1 }).load([0, 1, 2, 3], 5);
    expect(Array.from(a.images)).not.toEqual(Array.from(whole.images));
    expect(a.images.every(Number.isFinite)).toBe(true);
  });

  test('decoding runs on worker threads: the event loop turns while a batch decodes', async () => {
    const big = path.join(tmp, 'big');
    collection(big, 8, 160, 120, 'jpg');
    const s = await open(big, { size: 96, channels: 3, augment: true, workers: 2 });
    let turns = 0, running = true;
    const spin = () => {
      turns++;
      if (running) setImmediate(spin);
    };
    setImmediate(spin);
    const r = await s.load(Array.from({ length: 16 }, (_, i) => i), 3);
    running = false;
    expect(r.labels.length).toBe(16);
    expect(turns).toBeGreaterThan(1);
  });

  test('fit and evaluate read a stream; its batches decode ahead; the data wait is reported', async () => {
    const s = await open(dir, { size: 14, channels: 1, augment: true, workers: 2 });
    const { train, test } = s.split(0.25, 3);
    expect([train.count, test.count, test.augment]).toEqual([8, 4, false]);
    const model = new duat.ParaFormer({ imageSize: 14, patchSize: 7, channels: 1, classes: 2, dim: 8, heads: 2, depth: 1, branches: 2 });
    const r = await duat.fit(model, { train, test }, { epochs: 2, batchSize: 3, warmupSteps: 1, progress: false, prefetch: 3 });
    expect(r.steps).toBe(6);
    expect(r.test?.count).toBe(4);
    expect(r.dataWaitSeconds).toBeGreaterThanOrEqual(0);
    expect(model.inputSpec).toEqual({ mean: [0.5], std: [0.5], classNames: ['disc', 'square'] });
    expect((await duat.evaluate(model, test)).count).toBe(4);
    model.dispose();
  });
});

describe('bad input', () => {
  const dir = path.join(tmp, 'bad');
  beforeAll(() => {
    collection(dir, 3, 12, 12, 'png');
    const good = fs.readFileSync(path.join(dir, 'disc', '0.png'));
    fs.writeFileSync(path.join(dir, 'disc', 'truncated.png'), good.subarray(0, good.length >> 1));
    fs.writeFileSync(path.join(dir, 'square', 'empty.jpg'), Buffer.alloc(0));
    fs.writeFileSync(path.join(dir, 'square', 'text.jpg'), 'not an image');
  });

  test('a file that cannot be decoded is a DataError naming it', async () => {
    const s = await open(dir, { size: 8 });
    const truncated = 3;  // disc/truncated.png sorts after 0.png-2.png
    await expect(s.load([truncated], 0)).rejects.toThrow(duat.DataError);
    await expect(s.load([truncated], 0)).rejects.toThrow(/truncated\.png/);
    await expect(s.load([Array.from(s.labels).lastIndexOf(1)], 0)).rejects.toThrow(/text\.jpg/);
  });

  test("onBadFile 'skip' leaves them out of their batch and counts them", async () => {
    const s = await open(dir, { size: 8, onBadFile: 'skip' });
    const all = Array.from({ length: s.count }, (_, i) => i);
    const r = await s.load(all, 0);
    expect(r.labels.length).toBe(6);
    const st = s.stats();
    expect(st.skipped).toBe(3);
    expect(st.skippedFiles.map((f) => path.basename(f.file)).sort()).toEqual(['empty.jpg', 'text.jpg', 'truncated.png']);
    await expect(s.load([all[all.length - 1]], 0)).resolves.toMatchObject({ labels: new Int32Array(0) });
    const model = new duat.ParaFormer({ imageSize: 8, patchSize: 4, channels: 3, classes: 2, dim: 8, heads: 2, depth: 1, branches: 1 });
    const e = await duat.evaluate(model, s);
    expect(e.count).toBe(6);
    model.dispose();
  });

  test('folders without class subfolders, classes without images, and bad options', async () => {
    fs.mkdirSync(path.join(tmp, 'flat'));
    fs.writeFileSync(path.join(tmp, 'flat', 'a.png'), '');
    await expect(duat.data.imageFolder(path.join(tmp, 'flat'), { size: 8 })).rejects.toThrow(/no class subfolders/);
    fs.mkdirSync(path.join(tmp, 'holes', 'a'), { recursive: true });
    fs.mkdirSync(path.join(tmp, 'holes', 'b'), { recursive: true });
    fs.writeFileSync(path.join(tmp, 'holes', 'a', 'x.png'), '');
    await expect(duat.data.imageFolder(path.join(tmp, 'holes'), { size: 8 })).rejects.toThrow(/the class 'b' has no \.png or \.jpg images/);
    await expect(duat.data.imageFolder(path.join(tmp, 'nowhere'), { size: 8 })).rejects.toThrow(duat.DataError);
    await expect(duat.data.imageFolder(dir, { size: 8, channels: 2 })).rejects.toThrow(/1 or 3 channels/);
    await expect(duat.data.imageFolder(dir, { size: 8, std: [0] })).rejects.toThrow(/std/);
    await expect(duat.data.imageFolder(dir, { size: 8, scale: [0.5, 0.2] })).rejects.toThrow(/scale/);
    expect(() => duat.data.imageList([{ file: 'a.png', label: 2 }], ['x', 'y'], { size: 8 })).toThrow(/label 2 is not a class/);
    expect(() => duat.data.imageList([{ file: 'a.png', label: 0.5 }], ['x', 'y'], { size: 8 })).toThrow(/label 0.5/);
  });
});
