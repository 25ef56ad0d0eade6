/**
 * Streamed image data sets: the files of a folder (or a list) are listed up front, and each batch
 * is read, decoded, augmented and normalised on demand by a pool of worker threads, so memory
 * stays bounded whatever the collection's size and the event loop stays free. fit() and evaluate()
 * take a stream wherever they take a Dataset, and keep a bounded queue of batches decoding ahead
 * of the step that will use them.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Worker } from 'worker_threads';

import { ArgumentError, DataError } from '../errors';
import { checkBool, checkInt, checkNumber, checkOneOf, checkOptions, describe } from '../validate';
import type { DecodeJob, DecodeResult } from './decode-worker';
import { perChannel } from './images';
import { pickPerClass, Rng } from './rng';

/** Options of {@link imageFolder} and {@link imageList}. */
export interface ImageStreamOptions {
  /** Side of the square images the model reads. */
  size: number;
  /** 1 (luminance) or 3 (RGB). Default 3. */
  channels?: number;
  /** Per-channel normalisation of pixels in [0, 1] (one value, or one per channel). Default 0.5, 0.5. */
  mean?: number | number[];
  std?: number | number[];
  /**
   * Training augmentation: a random resized crop (area in `scale` of the image's, aspect ratio in
   * [3/4, 4/3]) and a horizontal flip, drawn from the batch's seed. Without it (the default),
   * images are resized and centre-cropped: the centre `cropPct` of the shorter side.
   */
  augment?: boolean;
  /** Area range of the random crop. Default [0.08, 1] (timm's). */
  scale?: [number, number];
  /** Share of the shorter side the evaluation crop keeps. Default 0.875 (224 of 256). */
  cropPct?: number;
  /** Decoding threads. Default: the CPU count, at most 4. */
  workers?: number;
  /**
   * A file that cannot be read or decoded: 'throw' (default) a DataError naming it; 'skip' it,
   * leaving its batch one image short, counted in {@link ImageStream.stats}.
   */
  onBadFile?: 'throw' | 'skip';
  /** The data set's name. Default: the folder's. */
  name?: string;
}

/** A file and its class. */
export interface LabelledFile {
  file: string;
  label: number;
}

/** What a stream has done so far. */
export interface StreamStats {
  decoded: number;
  skipped: number;
  /** The files skipped and why (the first 100). */
  skippedFiles: { file: string; reason: string }[];
  /** Seconds the worker threads spent decoding (summed over threads). */
  seconds: number;
}

const IMAGE = /\.(png|jpe?g)$/i;

/** The decoding threads of one stream, started on first use. */
class DecoderPool {
  private workers: Worker[] = [];
  private busy: number[] = [];
  private next = 0;
  private pending = new Map<number, { worker: number; resolve: (r: DecodeResult) => void; reject: (e: Error) => void }>();
  private ids = 0;

  constructor(private readonly size: number) {}

  private start(): void {
    // The compiled worker next to this file; under ts-node / ts-jest, the TypeScript one.
    const ts = path.extname(__filename) === '.ts';
    const file = path.join(__dirname, `decode-worker${ts ? '.ts' : '.js'}`);
    const execArgv = ts ? ['-r', require.resolve('ts-node/register/transpile-only')] : [];
    const env = ts ? { ...process.env, TS_NODE_PROJECT: path.join(__dirname, '..', '..', 'tsconfig.json') } : process.env;
    for (let i = 0; i < this.size; i++) {
      const w = new Worker(file, { execArgv, env });
      w.unref();  // an idle thread never keeps the process alive
      w.on('message', (r: DecodeResult) => this.settle(r.id, (p) => p.resolve(r)));
      w.on('error', (e) => {
        for (const id of [...this.pending.keys()]) this.settle(id, (p) => p.reject(new DataError(`a decoding thread failed: ${e.message}`)));
      });
      this.workers.push(w);
      this.busy.push(0);
    }
  }

  /** Ends job `id` with `how`; a thread with no job left stops holding the process open. */
  private settle(id: number, how: (p: { resolve: (r: DecodeResult) => void; reject: (e: Error) => void }) => void): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if (--this.busy[p.worker] === 0) this.workers[p.worker]?.unref();
    how(p);
  }

  run(job: Omit<DecodeJob, 'id'>): Promise<DecodeResult> {
    if (this.workers.length === 0) this.start();
    const id = ++this.ids, worker = this.next++ % this.workers.length;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { worker, resolve, reject });
      if (this.busy[worker]++ === 0) this.workers[worker].ref();  // busy: the process waits for the answer
      this.workers[worker].postMessage({ ...job, id });
    });
  }

  async close(): Promise<void> {
    for (const id of [...this.pending.keys()]) this.settle(id, (p) => p.reject(new DataError('the stream was closed')));
    const ws = this.workers;
    this.workers = [];
    this.busy = [];
    await Promise.all(ws.map((w) => w.terminate()));
  }
}

/**
 * Images decoded on demand, with their labels known up front. fit() and evaluate() read its
 * batches through {@link load}; call {@link close} when done (idle threads never keep the
 * process alive).
 */
export class ImageStream {
  readonly name: string;
  readonly count: number;
  readonly channels: number;
  readonly size: number;
  readonly classes: number;
  readonly classNames: string[];
  readonly labels: Int32Array;
  readonly mean: number[];
  readonly std: number[];
  readonly augment: boolean;
  private readonly files: string[];
  private readonly o: Required<Omit<ImageStreamOptions, 'name' | 'mean' | 'std'>>;
  private readonly pool: DecoderPool;
  private readonly counts: StreamStats = { decoded: 0, skipped: 0, skippedFiles: [], seconds: 0 };

  /** @internal Use {@link imageFolder} or {@link imageList}. */
  constructor(files: LabelledFile[], classNames: string[], options: ImageStreamOptions, pool?: DecoderPool) {
    const o = checkOptions<ImageStreamOptions>(options, 'image stream options');
    const channels = checkInt(o.channels ?? 3, 'channels', 1, 3);
    if (channels === 2) throw new ArgumentError('Expected 1 or 3 channels but received 2');
    const scale = o.scale ?? [0.08, 1];
    if (!Array.isArray(scale) || scale.length !== 2 || !(scale[0] > 0 && scale[0] <= scale[1] && scale[1] <= 1)) {
      throw new ArgumentError(`Expected scale to be [low, high] with 0 < low <= high <= 1 but received ${describe(scale)}`);
    }
    this.o = {
      size: checkInt(o.size, 'size', 1, 8192), channels, augment: checkBool(o.augment ?? false, 'augment'), scale,
      cropPct: checkNumber(o.cropPct ?? 0.875, 'cropPct', 0.01, 1),
      workers: checkInt(o.workers ?? Math.min(4, Math.max(1, os.cpus().length)), 'workers', 1, 64),
      onBadFile: checkOneOf(o.onBadFile ?? 'throw', 'onBadFile', ['throw', 'skip'] as const),
    };
    this.mean = perChannel(o.mean, 'mean', channels, false);
    this.std = perChannel(o.std, 'std', channels, true);
    if (files.length === 0) throw new DataError(`${o.name ?? 'the image list'}: no images`);
    files.forEach(({ file, label }) => {
      if (!Number.isInteger(label) || label < 0 || label >= classNames.length) throw new ArgumentError(`${file}: label ${JSON.stringify(label)} is not a class in [0, ${classNames.length})`);
    });
    this.files = files.map((f) => f.file);
    this.labels = Int32Array.from(files, (f) => f.label);
    this.classNames = classNames;
    this.classes = classNames.length;
    this.name = o.name ?? 'images';
    this.count = files.length;
    this.channels = channels;
    this.size = this.o.size;
    this.augment = this.o.augment;
    this.pool = pool ?? new DecoderPool(this.o.workers);
  }

  /**
   * Images `rows` (indices into this stream) as (n, channels, size, size) float32, augmented from
   * `seed` when the stream augments, and their labels; rows whose files are skipped are left out.
   * @throws DataError naming a file that cannot be read or decoded (onBadFile 'throw')
   */
  async load(rows: ArrayLike<number>, seed: number): Promise<{ images: Float32Array; labels: Int32Array }> {
    const n = rows.length, px = this.channels * this.size * this.size;
    const parts = Math.min(n, this.o.workers);
    const jobs: Promise<DecodeResult>[] = [];
    const t0 = Date.now();
    for (let p = 0; p < parts; p++) {
      const lo = Math.floor((p * n) / parts), hi = Math.floor(((p + 1) * n) / parts);
      const files = Array.from({ length: hi - lo }, (_, i) => this.files[rows[lo + i]]);
      jobs.push(this.pool.run({
        files, channels: this.channels, size: this.size, mean: this.mean, std: this.std, augment: this.augment,
        seed: (seed * 2654435761 + p * 40503 + 7) >>> 0, scale: this.o.scale, cropPct: this.o.cropPct,
      }));
    }
    const results = await Promise.all(jobs);
    this.counts.seconds += ((Date.now() - t0) / 1000) * parts;
    const bad = new Set<number>();
    results.forEach((r, p) => {
      const lo = Math.floor((p * n) / parts);
      for (const [i, reason] of r.failed) {
        const file = this.files[rows[lo + i]];
        if (this.o.onBadFile === 'throw') throw new DataError(`${reason.startsWith(file) ? '' : `${file}: `}${reason}`);
        bad.add(lo + i);
        this.counts.skipped++;
        if (this.counts.skippedFiles.length < 100) this.counts.skippedFiles.push({ file, reason });
      }
    });
    const kept = n - bad.size;
    const images = new Float32Array(kept * px), labels = new Int32Array(kept);
    let k = 0;
    results.forEach((r, p) => {
      const lo = Math.floor((p * n) / parts), hi = Math.floor(((p + 1) * n) / parts);
      for (let i = lo; i < hi; i++) {
        if (bad.has(i)) continue;
        images.set(r.data.subarray((i - lo) * px, (i - lo + 1) * px), k * px);
        labels[k++] = this.labels[rows[i]];
      }
    });
    this.counts.decoded += kept;
    return { images, labels };
  }

  /** Images decoded and skipped so far, and the decoding threads' time. */
  stats(): StreamStats {
    return { ...this.counts, skippedFiles: [...this.counts.skippedFiles] };
  }

  /**
   * Two streams over this one's files, class by class (each class's files shuffled from `seed`,
   * `fraction` of them to `test`); `test` never augments. They share this stream's threads.
   */
  split(fraction: number, seed = 0): { train: ImageStream; test: ImageStream } {
    if (typeof fraction !== 'number' || !(fraction > 0 && fraction < 1)) throw new ArgumentError(`Expected a fraction in (0, 1) but received ${describe(fraction)}`);
    const rng = new Rng(checkInt(seed, 'seed', 0, 2 ** 32 - 1));
    const classes = Array.from({ length: this.classes }, (_, c) => c);
    const held = new Set(pickPerClass(this.labels, classes, (n) => Math.round(n * fraction), rng));
    const part = (keep: (i: number) => boolean, augment: boolean, name: string) => new ImageStream(
      this.entries().filter((_, i) => keep(i)), this.classNames,
      { ...this.o, mean: this.mean, std: this.std, augment, name: `${this.name} (${name})` }, this.pool,
    );
    return { train: part((i) => !held.has(i), this.augment, 'train split'), test: part((i) => held.has(i), false, `${+(fraction * 100).toFixed(2)}% held out`) };
  }

  /** The same files read another way (for example the evaluation transform of a training stream); shares the threads. */
  with(options: Partial<Pick<ImageStreamOptions, 'augment' | 'cropPct' | 'scale'>>): ImageStream {
    return new ImageStream(this.entries(), this.classNames,
      { ...this.o, mean: this.mean, std: this.std, name: this.name, ...options }, this.pool);
  }

  private entries(): LabelledFile[] {
    return this.files.map((file, i) => ({ file, label: this.labels[i] }));
  }

  /** Stops the decoding threads (of every stream sharing them); pending loads are rejected. */
  close(): Promise<void> {
    return this.pool.close();
  }
}

/** Whether a data set is streamed. */
export function isImageStream(data: unknown): data is ImageStream {
  return data instanceof ImageStream;
}

/**
 * A folder with one subfolder per class (sorted names are the class ids) of PNG and JPEG files,
 * streamed: listed here without blocking the event loop, decoded batch by batch on worker
 * threads. Nothing is decoded until a batch is asked for.
 * @throws DataError for a folder that cannot be read, has no class subfolders, or a class without images
 */
export async function imageFolder(dir: string, options: ImageStreamOptions): Promise<ImageStream> {
  let classNames: string[];
  try {
    classNames = (await fs.promises.readdir(dir, { withFileTypes: true })).filter((d) => d.isDirectory()).map((d) => d.name).sort();
  } catch (e) {
    throw new DataError(`${dir}: cannot read the folder (${(e as Error).message})`);
  }
  if (classNames.length === 0) throw new DataError(`${dir}: no class subfolders (expected one folder of images per class)`);
  const files: LabelledFile[] = [];
  for (const [label, c] of classNames.entries()) {
    const names = (await fs.promises.readdir(path.join(dir, c))).filter((f) => IMAGE.test(f)).sort();
    if (names.length === 0) throw new DataError(`${path.join(dir, c)}: the class '${c}' has no .png or .jpg images`);
    for (const f of names) files.push({ file: path.join(dir, c, f), label });
  }
  return new ImageStream(files, classNames, { name: path.basename(path.resolve(dir)), ...options });
}

/**
 * A list of image files with their labels, streamed as {@link imageFolder} is.
 * @throws ArgumentError for a label outside the class names
 */
export function imageList(files: LabelledFile[], classNames: string[], options: ImageStreamOptions): ImageStream {
  if (!Array.isArray(files)) throw new ArgumentError(`Expected an array of { file, label } but received ${describe(files)}`);
  if (!Array.isArray(classNames) || classNames.length === 0) throw new ArgumentError(`Expected class names but received ${describe(classNames)}`);
  files.forEach((f, i) => {
    if (!f || typeof f.file !== 'string') throw new ArgumentError(`Expected { file, label } for files[${i}] but received ${describe(f)}`);
  });
  return new ImageStream(files, classNames, options);
}
