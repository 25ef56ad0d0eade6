/**
 * safetensors files: an 8-byte little-endian header length, a JSON header (name -> dtype, shape,
 * data_offsets; `__metadata__` -> string map), then the raw little-endian data. Writes are
 * atomic: a temporary file in the same directory, fsync, then rename.
 */
import * as fs from 'fs';
import * as path from 'path';

import { readFileOr } from './files';
import { CheckpointError } from '../errors';
import { Tensor, tensor } from '../tensor';

const DTYPES = { F32: 4, I32: 4 } as const;

/** Writes `data` to `file` atomically: a crash mid-write leaves the old file (or none), never half a file. */
export function writeFileAtomic(file: string, data: Uint8Array | Buffer[]): void {
  const dir = path.dirname(path.resolve(file));
  fs.mkdirSync(dir, { recursive: true });
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${Date.now()}.tmp`);
  const fd = fs.openSync(tmp, 'w');
  try {
    for (const chunk of Array.isArray(data) ? data : [data]) fs.writeSync(fd, chunk);
    fs.fsyncSync(fd);
  } catch (e) {
    fs.closeSync(fd);
    fs.rmSync(tmp, { force: true });
    throw e;
  }
  fs.closeSync(fd);
  fs.renameSync(tmp, file);
}

/** Serialises tensors (and string metadata) to safetensors bytes. */
export function encodeSafetensors(tensors: Map<string, Tensor> | [string, Tensor][], metadata: Record<string, string> = {}): Buffer[] {
  const entries = tensors instanceof Map ? [...tensors] : tensors;
  const header: Record<string, unknown> = { __metadata__: metadata };
  const blobs: Buffer[] = [];
  let offset = 0;
  for (const [name, t] of entries) {
    const dtype = t.dtype === 'float32' ? 'F32' : 'I32';
    const data = dtype === 'F32' ? t.toArray() : t.toInt32Array();
    const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    header[name] = { dtype, shape: t.shape, data_offsets: [offset, offset + bytes.length] };
    blobs.push(bytes);
    offset += bytes.length;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);  // align the data to 8 bytes
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  return [len, Buffer.from(json), ...blobs];
}

/** Saves tensors to a safetensors file, atomically. */
export function saveSafetensors(file: string, tensors: Map<string, Tensor> | [string, Tensor][], metadata: Record<string, string> = {}): void {
  writeFileAtomic(file, encodeSafetensors(tensors, metadata));
}

/** A parsed safetensors file: tensors by name (in file order) and the metadata. */
export interface SafetensorsFile {
  tensors: Map<string, Tensor>;
  metadata: Record<string, string>;
}

/** Reads a safetensors file. F32 and I32 only. @throws CheckpointError naming the file and the problem */
export function loadSafetensors(file: string): SafetensorsFile {
  const buf = readFileOr(file, CheckpointError);
  const bad = (what: string) => new CheckpointError(`${file}: not a valid safetensors file (${what})`);
  if (buf.length < 8) throw bad(`${buf.length} bytes, shorter than the header length`);
  const n = Number(buf.readBigUInt64LE(0));
  if (n < 2 || 8 + n > buf.length) throw bad(`header length ${n} does not fit in ${buf.length} bytes; truncated?`);
  let header: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] } | Record<string, string>>;
  try {
    header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  } catch (e) {
    throw bad(`header is not JSON: ${(e as Error).message}`);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) throw bad('header is not an object');
  const dataStart = 8 + n, dataLen = buf.length - dataStart;
  const tensors = new Map<string, Tensor>();
  const metadata = (header.__metadata__ ?? {}) as Record<string, string>;
  try {
    for (const [name, info] of Object.entries(header)) {
      if (name === '__metadata__') continue;
      const e = info as { dtype: string; shape: number[]; data_offsets: [number, number] };
      if (!e || !(e.dtype in DTYPES)) throw bad(`tensor '${name}' has dtype ${JSON.stringify(e?.dtype)}; only F32 and I32 are supported`);
      if (!Array.isArray(e.shape) || e.shape.some((d) => !Number.isInteger(d) || d < 0)) throw bad(`tensor '${name}' has an invalid shape`);
      const [b0, b1] = e.data_offsets ?? [];
      const count = e.shape.reduce((a, b) => a * b, 1);
      if (!Number.isInteger(b0) || !Number.isInteger(b1) || b0 < 0 || b1 > dataLen || b1 - b0 !== count * 4) {
        throw bad(`tensor '${name}' has data offsets [${b0}, ${b1}] that do not fit its shape [${e.shape}] in ${dataLen} bytes of data; truncated?`);
      }
      const bytes = buf.subarray(dataStart + b0, dataStart + b1);
      const copy = new Uint8Array(bytes);  // aligned copy
      const data = e.dtype === 'F32' ? new Float32Array(copy.buffer) : new Int32Array(copy.buffer);
      tensors.set(name, tensor(data, e.shape));
    }
  } catch (err) {
    for (const t of tensors.values()) t.dispose();
    throw err;
  }
  return { tensors, metadata };
}
