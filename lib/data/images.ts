/**
 * Image files (PNG, JPEG) for prediction and folder data sets, decoded with pngjs and jpeg-js
 * (pure JavaScript), converted to the model's channels and resized (bilinear) to its size.
 */
import * as fs from 'fs';
import * as path from 'path';

import { readFileOr } from '../io/files';
import { ArgumentError, DataError } from '../errors';
import { checkInt } from '../validate';
import type { Dataset } from './dataset';

/** A decoded image: values in [0, 1], channel-major (channels, height, width). */
export interface Image {
  width: number;
  height: number;
  channels: number;
  data: Float32Array;
}

/**
 * Images with more pixels than this, or a side longer than MAX_SIDE, are refused before decoding
 * unless a caller allows more. 2^20 = 1024 x 1024: the decoders in use (pngjs, jpeg-js) take 40-60
 * bytes a pixel at their peak (16-bit PNG, JPEG planes and blocks, then three float32 channels),
 * so a small file that declares the most allowed costs the process at most about 60 MB before its
 * data can be found corrupt.
 */
export const MAX_PIXELS = 2 ** 20;
/** The longest side accepted by default (pngjs keeps per-row state: a 2 x 10^6 image costs 200 MB). */
export const MAX_SIDE = 2 ** 13;

/** Options of {@link readImage}. */
export interface ReadImageOptions {
  /** Refuse images with more pixels than this, before decoding them. Default MAX_PIXELS. */
  maxPixels?: number;
  /** Refuse images with a longer side than this, before decoding them. Default MAX_SIDE. */
  maxSide?: number;
}

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/**
 * The width and height a PNG or JPEG file declares, read from its header without decoding (so
 * a small file that declares a huge image is refused before it costs memory); null when not found.
 */
export function imageSize(buf: Buffer): { width: number; height: number } | null {
  if (buf.length >= 24 && buf.subarray(0, 8).equals(PNG_SIGNATURE) && buf.toString('latin1', 12, 16) === 'IHDR') {
    return { width: buf.readUInt32BE(16), height: buf.readUInt32BE(20) };
  }
  if (buf.length >= 4 && buf[0] === 0xff && buf[1] === 0xd8) {
    // Walk the markers to the first start-of-frame (SOF0..SOF15 but DHT, JPG and DAC).
    for (let at = 2; at + 9 <= buf.length; ) {
      if (buf[at] !== 0xff) return null;
      const marker = buf[at + 1];
      if (marker === 0xff) {
        at++;
        continue;
      }
      if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
        return { height: buf.readUInt16BE(at + 5), width: buf.readUInt16BE(at + 7) };
      }
      at += 2 + buf.readUInt16BE(at + 2);
    }
  }
  return null;
}

/**
 * Decodes a PNG or JPEG file to RGB in [0, 1]. The declared size is checked before decoding.
 * @throws DataError naming the file: unreadable, not an image, empty, larger than `maxPixels`,
 *   or not decodable
 */
export function readImage(file: string, options?: ReadImageOptions): Image {
  return decodeImage(readFileOr(file, DataError), file, options);
}

/**
 * Decodes a PNG or JPEG held in memory (an upload, say) to RGB in [0, 1], with the checks of
 * {@link readImage}; `file` names it in errors.
 * @throws DataError naming `file`: not an image, empty, too large, or not decodable
 */
export function decodeImage(buf: Buffer, file: string, options?: ReadImageOptions): Image {
  const maxPixels = checkInt(options?.maxPixels ?? MAX_PIXELS, 'maxPixels', 1, 2 ** 31);
  const maxSide = checkInt(options?.maxSide ?? MAX_SIDE, 'maxSide', 1, 2 ** 31);
  const declared = imageSize(buf);
  if (declared && (declared.width === 0 || declared.height === 0)) {
    throw new DataError(`${file}: the image is empty (${declared.width} x ${declared.height} pixels)`);
  }
  if (declared && declared.width * declared.height > maxPixels) {
    throw new DataError(`${file}: ${declared.width} x ${declared.height} pixels is more than the ${maxPixels} allowed (raise maxPixels to read it)`);
  }
  if (declared && Math.max(declared.width, declared.height) > maxSide) {
    throw new DataError(`${file}: ${declared.width} x ${declared.height} pixels has a side longer than the ${maxSide} allowed (raise maxSide to read it)`);
  }
  let width: number, height: number, rgba: Uint8Array;
  try {
    if (buf.subarray(0, 8).equals(PNG_SIGNATURE)) {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const { PNG } = require('pngjs') as typeof import('pngjs');
      const png = PNG.sync.read(buf);
      ({ width, height } = png);
      rgba = png.data;
    } else if (buf[0] === 0xff && buf[1] === 0xd8) {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const jpeg = require('jpeg-js') as { decode(b: Buffer, o: object): { width: number; height: number; data: Uint8Array } };
      const img = jpeg.decode(buf, { useTArray: true, maxResolutionInMP: maxPixels / 1e6, maxMemoryUsageInMB: Math.max(64, (64 * maxPixels) / 2 ** 20) });
      ({ width, height } = img);
      rgba = img.data;
    } else {
      throw new Error('not a PNG or JPEG file');
    }
  } catch (e) {
    throw new DataError(`${file}: cannot decode the image (${(e as Error).message})`);
  }
  if (width < 1 || height < 1 || width * height > maxPixels || Math.max(width, height) > maxSide) {
    throw new DataError(`${file}: decoded to ${width} x ${height} pixels, which is empty or more than the ${maxPixels} allowed`);
  }
  const data = new Float32Array(3 * width * height);
  for (let i = 0; i < width * height; i++)
    for (let c = 0; c < 3; c++) data[c * width * height + i] = rgba[4 * i + c] / 255;
  return { width, height, channels: 3, data };
}

/** A region of an image in its own pixels: left, top, width, height. */
export interface CropBox {
  x: number;
  y: number;
  w: number;
  h: number;
}

/**
 * Converts to `channels` (1: luminance; 3: RGB) and resizes bilinearly to size x size: the whole
 * image, or the `crop` box of it; `flip` mirrors it left to right.
 */
export function prepareImage(img: Image, channels: number, size: number, options: { invert?: boolean; crop?: CropBox; flip?: boolean } = {}): Float32Array {
  const { width: W, height: H } = img;
  const box = options.crop ?? { x: 0, y: 0, w: W, h: H };
  const src = channels === 1 && img.channels === 3
    ? Float32Array.from({ length: W * H }, (_, i) => 0.299 * img.data[i] + 0.587 * img.data[W * H + i] + 0.114 * img.data[2 * W * H + i])
    : img.data;
  const out = new Float32Array(channels * size * size);
  for (let c = 0; c < channels; c++)
    for (let y = 0; y < size; y++)
      for (let x = 0; x < size; x++) {
        const xs = options.flip ? size - 1 - x : x;
        const fy = Math.max(0, box.y + ((y + 0.5) * box.h) / size - 0.5), fx = Math.max(0, box.x + ((xs + 0.5) * box.w) / size - 0.5);
        const y0 = Math.min(H - 1, Math.floor(fy)), x0 = Math.min(W - 1, Math.floor(fx));
        const y1 = Math.min(H - 1, y0 + 1), x1 = Math.min(W - 1, x0 + 1), wy = fy - y0, wx = fx - x0;
        const at = (yy: number, xx: number) => src[(c * H + yy) * W + xx];
        const v = (1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x1)) + wy * ((1 - wx) * at(y1, x0) + wx * at(y1, x1));
        out[(c * size + y) * size + x] = options.invert ? 1 - v : v;
      }
  return out;
}

/**
 * A normalisation value given as one number or one per channel (default 0.5), checked: finite,
 * and positive where `positive` (a std).
 * @throws ArgumentError saying what it must be
 */
export function perChannel(v: unknown, name: string, channels: number, positive: boolean): number[] {
  const list = Array.isArray(v) ? v : [v ?? 0.5];
  if (![1, channels].includes(list.length) || !list.every((x) => typeof x === 'number' && Number.isFinite(x) && (!positive || x > 0))) {
    throw new ArgumentError(`Expected ${name} to be one${positive ? ' positive' : ''} number or ${channels} but received ${JSON.stringify(v)}`);
  }
  return list as number[];
}

/**
 * A folder with one subfolder per class (sorted names give the class ids) of PNG / JPEG images,
 * resized to `size` and normalised with `mean` / `std` (one value, or one per channel).
 */
export function loadImageFolder(dir: string, options: { size: number; channels?: number; mean?: number | number[]; std?: number | number[] }): Dataset & { classNames: string[] } {
  const channels = options.channels ?? 3, size = options.size;
  const means = perChannel(options.mean, 'mean', channels, false), stds = perChannel(options.std, 'std', channels, true);
  const mean = (c: number) => means[means.length === 1 ? 0 : c], std = (c: number) => stds[stds.length === 1 ? 0 : c];
  let classNames: string[];
  try {
    classNames = fs.readdirSync(dir, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name).sort();
  } catch (e) {
    throw new DataError(`${dir}: cannot read the folder (${(e as Error).message})`);
  }
  if (classNames.length === 0) throw new DataError(`${dir}: no class subfolders`);
  const files: [string, number][] = [];
  classNames.forEach((c, k) => {
    for (const f of fs.readdirSync(path.join(dir, c)).sort())
      if (/\.(png|jpe?g)$/i.test(f)) files.push([path.join(dir, c, f), k]);
  });
  if (files.length === 0) throw new DataError(`${dir}: no .png or .jpg images in the class subfolders`);
  const px = channels * size * size;
  const images = new Float32Array(files.length * px);
  const labels = new Int32Array(files.length);
  files.forEach(([f, k], i) => {
    const v = prepareImage(readImage(f), channels, size);
    for (let c = 0, plane = size * size; c < channels; c++)
      for (let j = c * plane; j < (c + 1) * plane; j++) images[i * px + j] = (v[j] - mean(c)) / std(c);
    labels[i] = k;
  });
  return {
    name: path.basename(dir), images, labels, count: files.length, channels, size, classes: classNames.length, classNames,
    mean: means, std: stds,
  };
}
