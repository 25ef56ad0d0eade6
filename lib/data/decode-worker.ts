/**
 * The decoding thread of streamed image data sets (stream.ts): reads, decodes, crops, resizes,
 * flips and normalises the images of a job, and sends them back as one transferable float32
 * array. A file that cannot be read or decoded is reported by index and message, never thrown.
 */
import { parentPort } from 'worker_threads';

import { Rng } from './rng';
import { CropBox, Image, prepareImage, readImage } from './images';

/** One job: images `files` into rows of a (n, channels, size, size) array. */
export interface DecodeJob {
  id: number;
  files: string[];
  channels: number;
  size: number;
  mean: number[];
  std: number[];
  /** Training augmentation (random resized crop, horizontal flip) from this seed; else resize and centre crop. */
  augment: boolean;
  seed: number;
  /** Scale range of the random crop's area, and the centre crop's share of the shorter side. */
  scale: [number, number];
  cropPct: number;
}

export interface DecodeResult {
  id: number;
  data: Float32Array;
  /** Index in the job and message of each file that failed. */
  failed: [number, string][];
}

/** timm's RandomResizedCrop box: area in `scale` of the image's, aspect ratio in [3/4, 4/3] (log-uniform). */
function randomCrop(img: Image, scale: [number, number], rng: Rng): CropBox {
  const area = img.width * img.height;
  for (let attempt = 0; attempt < 10; attempt++) {
    const target = area * (scale[0] + (scale[1] - scale[0]) * rng.next());
    const ratio = Math.exp(Math.log(3 / 4) + (Math.log(4 / 3) - Math.log(3 / 4)) * rng.next());
    const w = Math.round(Math.sqrt(target * ratio)), h = Math.round(Math.sqrt(target / ratio));
    if (w > 0 && h > 0 && w <= img.width && h <= img.height) {
      return { x: rng.int(img.width - w + 1), y: rng.int(img.height - h + 1), w, h };
    }
  }
  return centreCrop(img, 1);  // as timm falls back: the central crop
}

/** The centre square of `pct` of the shorter side (evaluation: resize then centre crop). */
function centreCrop(img: Image, pct: number): CropBox {
  const side = Math.max(1, Math.round(Math.min(img.width, img.height) * pct));
  return { x: Math.floor((img.width - side) / 2), y: Math.floor((img.height - side) / 2), w: side, h: side };
}

export function decodeJob(job: DecodeJob): DecodeResult {
  const { channels: C, size: S } = job;
  const px = C * S * S;
  const data = new Float32Array(job.files.length * px);
  const failed: [number, string][] = [];
  const rng = new Rng(job.seed >>> 0);
  job.files.forEach((file, i) => {
    const flip = job.augment && rng.next() < 0.5;
    let img: Image;
    try {
      img = readImage(file);
    } catch (e) {
      failed.push([i, (e as Error).message]);
      return;
    }
    const crop = job.augment ? randomCrop(img, job.scale, rng) : centreCrop(img, job.cropPct);
    const v = prepareImage(img, C, S, { crop, flip });
    for (let c = 0, plane = S * S; c < C; c++) {
      const mean = job.mean[job.mean.length === 1 ? 0 : c], std = job.std[job.std.length === 1 ? 0 : c];
      for (let j = c * plane; j < (c + 1) * plane; j++) data[i * px + j] = (v[j] - mean) / std;
    }
    // Never a silent NaN input: a decoder that gave non-finite values fails the file.
    if (!data.subarray(i * px, (i + 1) * px).every(Number.isFinite)) failed.push([i, `${file}: decoding gave values that are not finite numbers`]);
  });
  return { id: job.id, data, failed };
}

parentPort?.on('message', (job: DecodeJob) => {
  let result: DecodeResult;
  try {
    result = decodeJob(job);
  } catch (e) {
    result = { id: job.id, data: new Float32Array(0), failed: job.files.map((_, i) => [i, (e as Error).message]) };
  }
  parentPort!.postMessage(result, [result.data.buffer as ArrayBuffer]);
});
