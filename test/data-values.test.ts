/**
 * lib/data by value: every reader against bytes written here by hand (IDX headers, CIFAR records,
 * PNG and JPEG headers, image folders), every error message with the numbers it must carry, the
 * batch order and augmentation against the documented draws (so a resumed run repeats them), and
 * the bilinear resize against a hand-computed case. Written against the survivors of the first
 * mutation run of lib/data (docs/reliability.md).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PNG } from 'pngjs';

import * as duat from '../lib';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-data-values-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function idx(dims: number[], data: number[] | Uint8Array, type = 0x08): Buffer {
  const head = Buffer.alloc(4 + 4 * dims.length);
  head[2] = type;
  head[3] = dims.length;
  dims.forEach((d, i) => head.writeUInt32BE(d, 4 + 4 * i));
  return Buffer.concat([head, Buffer.from(data)]);
}

function write(name: string, bytes: Buffer): string {
  const f = path.join(tmp, name);
  fs.mkdirSync(path.dirname(f), { recursive: true });
  fs.writeFileSync(f, bytes);
  return f;
}

describe('IDX', () => {
  test.each([
    [Buffer.from([0, 0, 8]), /f: not an IDX file \(3 bytes, shorter than a header\)/],
    [Buffer.from([0, 1, 8, 1, 0, 0, 0, 0]), /f: not an IDX file \(bad magic 0 1 8 1\)/],
    [Buffer.from([1, 0, 8, 1, 0, 0, 0, 0]), /f: not an IDX file \(bad magic 1 0 8 1\)/],
    [Buffer.from([0, 0, 0x0d, 1, 0, 0, 0, 0]), /IDX element type 0xd is not supported/],
    [Buffer.from([0, 0, 8, 0]), /f: IDX rank 0 is outside \[1, 4\]/],
    [Buffer.from([0, 0, 8, 5]), /f: IDX rank 5 is outside \[1, 4\]/],
    [Buffer.from([0, 0, 8, 1]), /f: truncated IDX header \(4 bytes\)/],
    [Buffer.from([0, 0, 8, 2, 0, 0, 0, 1, 0, 0, 0]), /f: truncated IDX header \(11 bytes\)/],
    [idx([2, 3], [1, 2, 3, 4, 5]), /f: IDX header says \[2, 3\] \(6 bytes of data\) but the file has 5 \(truncated\)/],
    [idx([2, 3], [1, 2, 3, 4, 5, 6, 7]), /f: IDX header says \[2, 3\] \(6 bytes of data\) but the file has 7 \(trailing bytes\)/],
  ])('malformed header %#: the error names the file and the numbers', (buf, message) => {
    expect(() => duat.data.parseIdx(buf, 'f')).toThrow(duat.DataError);
    expect(() => duat.data.parseIdx(buf, 'f')).toThrow(message);
  });

  test('ranks 1 and 4 and empty dimensions parse, with the data after the header', () => {
    expect(duat.data.parseIdx(idx([3], [7, 8, 9]), 'f')).toEqual({ dims: [3], data: new Uint8Array([7, 8, 9]) });
    const r4 = duat.data.parseIdx(idx([1, 2, 1, 2], [1, 2, 3, 4]), 'f');
    expect(r4.dims).toEqual([1, 2, 1, 2]);
    expect(Array.from(r4.data)).toEqual([1, 2, 3, 4]);
    expect(duat.data.parseIdx(idx([0], []), 'f').dims).toEqual([0]);  // exactly a header: no data
  });
});

describe('IDX data sets', () => {
  const images = write('imgs', idx([3, 2, 2], [0, 255, 51, 102, 10, 20, 30, 40, 5, 6, 7, 8]));
  const labels = write('labels', idx([3], [12, 0, 4]));

  test('pixels are (raw / 255 - mean) / std with the defaults or the options; labels, classes, name, limit', () => {
    const d = duat.data.loadIdxDataset(images, labels);
    expect(d).toMatchObject({ name: 'imgs', count: 3, channels: 1, size: 2, classes: 13 });
    expect(Array.from(d.labels)).toEqual([12, 0, 4]);
    expect(d.images[1]).toBeCloseTo((1 - 0.1307) / 0.3081, 5);
    expect(d.images[2]).toBeCloseTo((0.2 - 0.1307) / 0.3081, 5);
    const o = duat.data.loadIdxDataset(images, labels, { name: 'mine', limit: 2, mean: 0.5, std: 0.25 });
    expect(o).toMatchObject({ name: 'mine', count: 2, classes: 13 });
    expect(o.images.length).toBe(8);
    expect(Array.from(o.images.subarray(0, 4))).toEqual([-2, 2, Math.fround(-1.2), Math.fround(-0.4)].map((v) => expect.closeTo(v, 5)));
    // Fewer than 10 labels seen still gives 10 classes.
    expect(duat.data.loadIdxDataset(images, write('small-labels', idx([3], [1, 0, 2]))).classes).toBe(10);
  });

  test.each([
    [() => write('rank2', idx([2, 2], [1, 2, 3, 4])), labels, /rank2: expected square images \[N, S, S\] but the IDX dims are \[2, 2\]/],
    [() => write('oblong', idx([1, 2, 3], [1, 2, 3, 4, 5, 6])), labels, /oblong: expected square images \[N, S, S\] but the IDX dims are \[1, 2, 3\]/],
    [() => images, write('labels2d', idx([3, 1], [1, 2, 3])), /labels2d: expected labels \[N\] but the IDX dims are \[3, 1\]/],
    [() => images, write('labels4', idx([4], [1, 2, 3, 4])), /labels4: 4 labels for 3 images in .*imgs/],
  ])('shapes that do not fit %#', (imagesFile, labelsFile, message) => {
    expect(() => duat.data.loadIdxDataset(imagesFile(), labelsFile)).toThrow(message);
  });
});

describe('CIFAR binary', () => {
  /** Records whose pixel p of channel c holds (p + 3 c + r) % 256, r the record's index. */
  function records(n: number, labelBytes: 1 | 2, label: (r: number) => number): Buffer {
    const b = Buffer.alloc(n * (labelBytes + 3072));
    for (let r = 0; r < n; r++) {
      const off = r * (labelBytes + 3072);
      if (labelBytes === 2) b[off] = 99;  // the coarse label, not used
      b[off + labelBytes - 1] = label(r);
      for (let c = 0; c < 3; c++) for (let p = 0; p < 1024; p++) b[off + labelBytes + c * 1024 + p] = (p + 3 * c + r) % 256;
    }
    return b;
  }

  test('planes, labels, normalisation per channel, classes and name, across files', () => {
    const f1 = write('c1.bin', records(2, 1, (r) => 3 + r)), f2 = write('c2.bin', records(1, 1, () => 12));
    const d = duat.data.loadCifarBinary([f1, f2]);
    expect(d).toMatchObject({ name: 'cifar', count: 3, channels: 3, size: 32, classes: 13 });
    expect(Array.from(d.labels)).toEqual([3, 4, 12]);
    const mean = [0.4914, 0.4822, 0.4465], std = [0.247, 0.2435, 0.2616];
    for (const [i, r] of [[0, 0], [1, 1], [2, 0]])
      for (const c of [0, 1, 2])
        for (const p of [0, 1, 31, 32, 1023]) {
          expect(d.images[i * 3072 + c * 1024 + p]).toBeCloseTo((((p + 3 * c + r) % 256) / 255 - mean[c]) / std[c], 5);
        }
    const own = duat.data.loadCifarBinary([f2], { name: 'mine', mean: [0, 0.5, 1], std: [1, 0.5, 2] });
    expect(own.name).toBe('mine');
    expect(own.images[1024 + 5]).toBeCloseTo(((5 + 3) / 255 - 0.5) / 0.5, 5);
    expect(own.images[2048 + 5]).toBeCloseTo(((5 + 6) / 255 - 1) / 2, 5);
    expect(duat.data.loadCifarBinary([write('few.bin', records(1, 1, () => 2))]).classes).toBe(10);
  });

  test('CIFAR-100: the fine label (second byte), 100 classes', () => {
    const d = duat.data.loadCifarBinary([write('c100.bin', records(2, 2, (r) => 7 + r))], { labelBytes: 2 });
    expect(Array.from(d.labels)).toEqual([7, 8]);
    expect(d.classes).toBe(100);
    expect(d.images[1]).toBeCloseTo((1 / 255 - 0.4914) / 0.247, 5);
  });

  test('errors: no files, and files that are not whole records (with the record size)', () => {
    expect(() => duat.data.loadCifarBinary([])).toThrow(/Expected a non-empty array of CIFAR batch files/);
    expect(() => duat.data.loadCifarBinary('x' as unknown as string[])).toThrow(duat.ArgumentError);
    const bad = write('bad.bin', Buffer.alloc(3072));
    expect(() => duat.data.loadCifarBinary([bad])).toThrow(/bad\.bin: 3072 bytes is not a whole number of 3073-byte CIFAR records/);
    expect(() => duat.data.loadCifarBinary([bad], { labelBytes: 2 })).toThrow(/3074-byte CIFAR records/);
    expect(() => duat.data.loadCifarBinary([write('empty.bin', Buffer.alloc(0))])).toThrow(/0 bytes is not a whole number/);
  });
});

describe('batches against the documented draws', () => {
  const S = 5, count = 12;
  function ramp(channels: number): duat.data.Dataset {
    const px = channels * S * S;
    const images = Float32Array.from({ length: count * px }, (_, i) => 1 + i);
    return { name: 'ramp', images, labels: Int32Array.from({ length: count }, (_, i) => i), count, channels, size: S, classes: 12 };
  }

  /** The order of an epoch: Fisher-Yates from Rng((seed * 1000003 + epoch * 7919 + 1) >>> 0). */
  function order(seed: number, epoch: number): number[] {
    const o = Array.from({ length: count }, (_, i) => i);
    const rng = new duat.data.Rng((seed * 1000003 + epoch * 7919 + 1) >>> 0);
    for (let i = count - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      [o[i], o[j]] = [o[j], o[i]];
    }
    return o;
  }

  test.each([[1], [3]])('shuffle, shift and flip are exactly the draws of (seed, epoch, batch), %i channel(s)', (channels) => {
    const seed = 7, epoch = 3, shift = 2, batchSize = 5;
    const data = ramp(channels);
    const batches = new duat.data.Batches(data, epoch, { batchSize, seed, shift, flip: true });
    const ord = order(seed, epoch);
    const background = channels === 1 ? Math.fround(-duat.data.MNIST_MEAN / duat.data.MNIST_STD) : 0;
    const px = channels * S * S;
    let moved = 0, mirrored = 0;
    for (let k = 0; k < batches.count; k++) {
      const { images, labels } = batches.batch(k);
      const x = images.toArray(), y = labels.toInt32Array();
      images.dispose();
      labels.dispose();
      const rng = new duat.data.Rng((seed * 2654435761 + epoch * 40503 + k * 97 + 12345) >>> 0);
      for (let b = 0; b < y.length; b++) {
        const src = ord[k * batchSize + b];
        expect(y[b]).toBe(src);
        const dx = rng.int(2 * shift + 1) - shift, dy = rng.int(2 * shift + 1) - shift, mirror = rng.next() < 0.5;
        if (dx || dy) moved++;
        if (mirror) mirrored++;
        for (let c = 0; c < channels; c++)
          for (let yy = 0; yy < S; yy++)
            for (let xx = 0; xx < S; xx++) {
              const sy = yy + dy, sx0 = xx + dx, sx = mirror ? S - 1 - sx0 : sx0;
              const inside = sy >= 0 && sy < S && sx >= 0 && sx < S;
              expect(x[b * px + (c * S + yy) * S + xx]).toBe(inside ? 1 + src * px + (c * S + sy) * S + sx : background);
            }
      }
    }
    expect(moved).toBeGreaterThan(6);
    expect(mirrored).toBeGreaterThan(2);
    expect(mirrored).toBeLessThan(10);
  });

  test('without shuffling the order is the data order; without augmentation images are copied as they are', () => {
    const data = ramp(1);
    const { images, labels } = new duat.data.Batches(data, 4, { batchSize: count, shuffle: false }).batch(0);
    expect(Array.from(labels.toInt32Array())).toEqual(Array.from({ length: count }, (_, i) => i));
    expect(Array.from(images.toArray())).toEqual(Array.from(data.images));
    images.dispose();
    labels.dispose();
  });

  test('defaults: batches of 128, the last one kept; batch indices outside the epoch are refused with the range', () => {
    const big = { ...ramp(1), count: 300, images: new Float32Array(300 * S * S), labels: new Int32Array(300) };
    const b = new duat.data.Batches(big, 0);
    expect([b.batchSize, b.count]).toEqual([128, 3]);
    expect(duat.data.Batches.countFor(300, 128)).toBe(3);
    expect(duat.data.Batches.countFor(300, 128, false)).toBe(2);
    expect(b.batch(2).images.shape).toEqual([44, 1, S, S]);
    expect(() => b.batch(3)).toThrow(/batch 3 is outside \[0, 3\)/);
    expect(() => b.batch(-1)).toThrow(/batch -1 is outside \[0, 3\)/);
    expect(() => new duat.data.Batches(big, 0, 5 as unknown as object)).toThrow(/batch options/);
    expect(() => new duat.data.Batches(big, 0, { batchSize: 0 })).toThrow(/batchSize/);
    expect(() => new duat.data.Batches(big, 0, { seed: -1 })).toThrow(/seed/);
    expect(() => new duat.data.Batches(big, 0, { seed: 2 ** 53 })).toThrow(/seed/);
    expect(new duat.data.Batches(big, 0, { seed: 2 ** 53 - 1 }).count).toBe(3);
  });

  test.each([[2], [3], [5]])('data-parallel shards of %i ranks: consecutive rows whose images, labels and draws make up the whole batch', (ranks) => {
    const batches = new duat.data.Batches(ramp(1), 2, { batchSize: 7, seed: 3, shift: 2, flip: true });
    expect([batches.rowsOf(0), batches.rowsOf(1)]).toEqual([7, 5]);
    expect(() => batches.rowsOf(2)).toThrow(/batch 2 is outside \[0, 2\)/);
    for (let k = 0; k < batches.count; k++) {
      const whole = batches.batch(k);
      const x = whole.images.toArray(), y = whole.labels.toInt32Array();
      whole.images.dispose();
      whole.labels.dispose();
      const rows = batches.rowsOf(k), px = S * S;
      let next = 0;
      for (let r = 0; r < ranks; r++) {
        const { start, end } = duat.data.Batches.shardRange(rows, r, ranks);
        expect([start, end]).toEqual([Math.floor((r * rows) / ranks), Math.floor(((r + 1) * rows) / ranks)]);
        expect(start).toBe(next);
        next = end;
        const part = batches.batch(k, { index: r, count: ranks });
        expect(part.labels.shape).toEqual([end - start]);
        expect(Array.from(part.labels.toInt32Array())).toEqual(Array.from(y.subarray(start, end)));
        expect(Array.from(part.images.toArray())).toEqual(Array.from(x.subarray(start * px, end * px)));
        part.images.dispose();
        part.labels.dispose();
      }
      expect(next).toBe(rows);
    }
  });
});

describe('image headers, decoding, resizing and folders', () => {
  function png(width: number, height: number, rgba: number[]): Buffer {
    const p = new PNG({ width, height });
    p.data = Buffer.from(rgba);
    return PNG.sync.write(p);
  }

  /** A JPEG's markers up to its frame header: SOI, an APP0 segment, fill bytes, a DHT, then SOFn. */
  function jpegHeader(sof: number, height: number, width: number, extra: number[] = []): Buffer {
    const app0 = [0xff, 0xe0, 0x00, 0x04, 0x4a, 0x46];
    const dht = [0xff, 0xc4, 0x00, 0x03, 0x00];
    const frame = [0xff, sof, 0x00, 0x0b, 0x08, height >> 8, height & 255, width >> 8, width & 255, 0x01, 0x01, 0x11, 0x00];
    return Buffer.from([0xff, 0xd8, ...app0, 0xff, ...extra, ...dht, ...frame]);
  }

  test('imageSize reads PNG IHDR and the first JPEG frame header, skipping fill bytes, DHT, JPG and DAC', () => {
    expect(duat.data.imageSize(png(3, 2, new Array(24).fill(0)))).toEqual({ width: 3, height: 2 });
    for (const sof of [0xc0, 0xc1, 0xc2, 0xcf]) expect(duat.data.imageSize(jpegHeader(sof, 300, 500))).toEqual({ width: 500, height: 300 });
    // 0xC4 (DHT), 0xC8 (JPG) and 0xCC (DAC) are not frames: the walk goes on to the real one.
    const skipping = Buffer.concat([jpegHeader(0xc8, 1, 1).subarray(0, 2), Buffer.from([0xff, 0xcc, 0x00, 0x04, 0, 0, 0xff, 0xc8, 0x00, 0x04, 0, 0]), jpegHeader(0xc0, 7, 9).subarray(2)]);
    expect(duat.data.imageSize(skipping)).toEqual({ width: 9, height: 7 });
    expect(duat.data.imageSize(Buffer.from([0xff, 0xd8, 0x12, 0x34, 0, 0, 0, 0, 0, 0, 0]))).toBeNull();  // not a marker
    expect(duat.data.imageSize(Buffer.from([0xff, 0xd8, 0xff]))).toBeNull();
    expect(duat.data.imageSize(Buffer.from('not an image at all, just text'))).toBeNull();
    const notIhdr = png(3, 2, new Array(24).fill(0));
    notIhdr.write('ABCD', 12, 'latin1');
    expect(duat.data.imageSize(notIhdr)).toBeNull();
    expect(duat.data.imageSize(png(3, 2, new Array(24).fill(0)).subarray(0, 23))).toBeNull();
  });

  test('readImage: RGB planes in [0, 1] from a PNG, channel-major; alpha dropped', () => {
    const f = write('img/two.png', png(2, 1, [255, 0, 51, 10, 0, 102, 255, 200]));
    const img = duat.data.readImage(f);
    expect(img).toMatchObject({ width: 2, height: 1, channels: 3 });
    expect(Array.from(img.data)).toEqual([1, 0, 0, 102 / 255, 51 / 255, 1].map((v) => expect.closeTo(v, 6)));
  });

  test('readImage refuses from the header, with the sizes and the limit in the message', () => {
    const wide = write('img/wide.png', png(40, 2, new Array(320).fill(9)));
    expect(() => duat.data.readImage(wide, { maxPixels: 79 })).toThrow(/wide\.png: 40 x 2 pixels is more than the 79 allowed \(raise maxPixels/);
    expect(duat.data.readImage(wide, { maxPixels: 80 }).width).toBe(40);
    expect(() => duat.data.readImage(wide, { maxSide: 39 })).toThrow(/40 x 2 pixels has a side longer than the 39 allowed \(raise maxSide/);
    expect(duat.data.readImage(wide, { maxSide: 40 }).height).toBe(2);
    const tall = write('img/tall.png', png(2, 40, new Array(320).fill(9)));
    expect(() => duat.data.readImage(tall, { maxSide: 39 })).toThrow(/2 x 40 pixels has a side longer than the 39/);
    const empty = png(2, 1, [0, 0, 0, 0, 0, 0, 0, 0]);
    empty.writeUInt32BE(0, 16);
    expect(() => duat.data.readImage(write('img/empty.png', empty))).toThrow(/empty\.png: the image is empty \(0 x 1 pixels\)/);
    const emptyH = png(2, 1, [0, 0, 0, 0, 0, 0, 0, 0]);
    emptyH.writeUInt32BE(0, 20);
    expect(() => duat.data.readImage(write('img/emptyh.png', emptyH))).toThrow(/the image is empty \(2 x 0 pixels\)/);
    expect(() => duat.data.readImage(write('img/text.png', Buffer.from('hello')))).toThrow(/text\.png: cannot decode the image \(not a PNG or JPEG file\)/);
    expect(() => duat.data.readImage(wide, { maxPixels: 0 })).toThrow(/maxPixels/);
    expect(() => duat.data.readImage(wide, { maxSide: 0 })).toThrow(/maxSide/);
    // A JPEG whose header declares too much is refused before decoding.
    expect(() => duat.data.readImage(write('img/big.jpg', jpegHeader(0xc0, 2000, 2000)))).toThrow(/2000 x 2000 pixels is more than the 1048576 allowed/);
  });

  test('prepareImage: bilinear with half-pixel centres (a linear image stays linear), luminance, invert', () => {
    // Source a(y, x) = 2y + x on 2 x 2; output 4 x 4 samples positions p = [0, 0.25, 0.75, 1] (clamped at the edges).
    const img = { width: 2, height: 2, channels: 1, data: Float32Array.from([0, 1, 2, 3]) };
    const out = duat.data.prepareImage(img, 1, 4);
    const p = [0, 0.25, 0.75, 1];
    for (let y = 0; y < 4; y++) for (let x = 0; x < 4; x++) expect(out[y * 4 + x]).toBeCloseTo(2 * p[y] + p[x], 6);
    // Down to 1 x 1: the centre, the mean of the four.
    expect(duat.data.prepareImage(img, 1, 1)[0]).toBeCloseTo(1.5, 6);
    const inv = duat.data.prepareImage(img, 1, 4, { invert: true });
    expect(inv[5]).toBeCloseTo(1 - 0.75, 6);
    // RGB to grey: 0.299 R + 0.587 G + 0.114 B.
    const rgb = { width: 1, height: 1, channels: 3, data: Float32Array.from([0.2, 0.4, 0.6]) };
    expect(duat.data.prepareImage(rgb, 1, 1)[0]).toBeCloseTo(0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6, 6);
    expect(Array.from(duat.data.prepareImage(rgb, 3, 2))).toEqual([0.2, 0.2, 0.2, 0.2, 0.4, 0.4, 0.4, 0.4, 0.6, 0.6, 0.6, 0.6].map((v) => expect.closeTo(v, 6)));
    // Two channels of a 3 x 1 image resized along x only.
    const two = { width: 3, height: 1, channels: 2, data: Float32Array.from([0, 3, 6, 10, 10, 10]) };
    expect(Array.from(duat.data.prepareImage(two, 2, 3))).toEqual([0, 3, 6, 0, 3, 6, 0, 3, 6, 10, 10, 10, 10, 10, 10, 10, 10, 10].map((v) => expect.closeTo(v, 5)));
  });

  test('loadImageFolder: sorted class folders, only .png/.jpg/.jpeg files, resized and normalised', () => {
    const dir = path.join(tmp, 'folder');
    write('folder/zebra/a.png', png(1, 1, [255, 255, 255, 255]));
    write('folder/apple/b.PNG', png(1, 1, [0, 0, 0, 255]));
    write('folder/apple/c.png', png(1, 1, [255, 0, 0, 255]));
    write('folder/apple/notes.txt', Buffer.from('not an image'));
    write('folder/stray.png', png(1, 1, [9, 9, 9, 255]));  // a file at the top is not a class
    const d = duat.data.loadImageFolder(dir, { size: 2 });
    expect(d).toMatchObject({ name: 'folder', count: 3, channels: 3, size: 2, classes: 2, classNames: ['apple', 'zebra'] });
    expect(Array.from(d.labels)).toEqual([0, 0, 1]);
    expect(d.images.length).toBe(3 * 12);
    expect(Array.from(d.images.subarray(0, 12))).toEqual(new Array(12).fill(-1));  // black: (0 - 0.5) / 0.5
    expect(Array.from(d.images.subarray(12, 24))).toEqual([1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1]);  // red
    expect(Array.from(d.images.subarray(24, 36))).toEqual(new Array(12).fill(1));
    const grey = duat.data.loadImageFolder(dir, { size: 1, channels: 1, mean: 0.25, std: 2 });
    expect(grey.images.length).toBe(3);
    expect(grey.images[1]).toBeCloseTo((0.299 - 0.25) / 2, 5);
    fs.mkdirSync(path.join(tmp, 'nothing'));
    expect(() => duat.data.loadImageFolder(path.join(tmp, 'nothing'), { size: 2 })).toThrow(/nothing: no class subfolders/);
    write('noimages/cls/readme.md', Buffer.from('#'));
    expect(() => duat.data.loadImageFolder(path.join(tmp, 'noimages'), { size: 2 })).toThrow(/noimages: no \.png or \.jpg images in the class subfolders/);
    expect(() => duat.data.loadImageFolder(path.join(tmp, 'missing'), { size: 2 })).toThrow(/missing: cannot read the folder/);
  });
});
