/**
 * safetensors files: an 8-byte little-endian header length, a JSON header (name -> dtype, shape,
 * data_offsets; `__metadata__` -> string map), then the raw little-endian data. Reading is strict:
 * the header is bounded and has no duplicate names, and the tensors' data tile the data section
 * exactly (no overlap, no gap, no trailing bytes), all checked before any tensor is made. Writes
 * are atomic (files.ts).
 */
import * as fs from 'fs';

import { readFileOr, writeFileAtomic } from './files';
import { CheckpointError } from '../errors';
import { Tensor, tensor } from '../tensor';

/** Bytes per element of the dtypes read; F16 and BF16 are widened to float32 (exactly). */
const DTYPES = { F32: 4, I32: 4, F16: 2, BF16: 2 } as const;

/** IEEE half-precision values (little-endian) as float32. */
function halfToFloat(bytes: Uint8Array): Float32Array {
  const out = new Float32Array(bytes.length / 2);
  for (let i = 0; i < out.length; i++) {
    const h = bytes[2 * i] | (bytes[2 * i + 1] << 8);
    const sign = h & 0x8000 ? -1 : 1, exp = (h >> 10) & 0x1f, frac = h & 0x3ff;
    out[i] = exp === 0 ? sign * frac * 2 ** -24 : exp === 31 ? (frac ? NaN : sign * Infinity) : sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return out;
}

/** bfloat16 values (little-endian): the upper halves of float32s. */
function bfloatToFloat(bytes: Uint8Array): Float32Array {
  const bits = new Uint32Array(bytes.length / 2);
  for (let i = 0; i < bits.length; i++) bits[i] = ((bytes[2 * i] | (bytes[2 * i + 1] << 8)) << 16) >>> 0;
  return new Float32Array(bits.buffer);
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
  /** Each tensor's dtype in the file ('F32', 'I32', 'F16' or 'BF16'). */
  dtypes: Map<string, string>;
}

/**
 * A safetensors file's `__metadata__`, read from its header alone (whatever the file's size);
 * undefined for a file that is not safetensors.
 */
export function safetensorsMetadata(file: string): Record<string, string> | undefined {
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, 'r');
    const len = Buffer.alloc(8);
    if (fs.readSync(fd, len, 0, 8, 0) !== 8) return undefined;
    const n = Number(len.readBigUInt64LE(0));
    if (n < 2 || n > MAX_HEADER_BYTES) return undefined;
    const text = Buffer.alloc(n);
    if (fs.readSync(fd, text, 0, n, 8) !== n) return undefined;
    const meta = (JSON.parse(text.toString('utf8')) as { __metadata__?: unknown }).__metadata__;
    return meta && typeof meta === 'object' && !Array.isArray(meta) ? (meta as Record<string, string>) : {};
  } catch {
    return undefined;
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/** The largest header accepted (the format's own bound). */
const MAX_HEADER_BYTES = 100 * 2 ** 20;

/** The names at the top level of a JSON object, in order, duplicates included (JSON.parse keeps the last). */
function topLevelKeys(json: string): string[] {
  const keys: string[] = [];
  let depth = 0, expectKey = false;
  for (let i = 0; i < json.length; i++) {
    const c = json[i];
    if (c === '"') {
      let j = i + 1;
      while (j < json.length && json[j] !== '"') j += json[j] === '\\' ? 2 : 1;
      if (depth === 1 && expectKey) keys.push(JSON.parse(json.slice(i, j + 1)));
      expectKey = false;
      i = j;
    } else if (c === '{' || c === '[') {
      depth++;
      expectKey = depth === 1 && c === '{';
    } else if (c === '}' || c === ']') {
      depth--;
    } else if (c === ',' && depth === 1) {
      expectKey = true;
    }
  }
  return keys;
}

interface Entry {
  name: string;
  dtype: keyof typeof DTYPES;
  shape: number[];
  begin: number;
  end: number;
}

/**
 * Reads a safetensors file: F32 and I32 tensors, and F16 and BF16 ones widened to float32
 * (`dtypes` says what the file held).
 * @throws CheckpointError naming the file and the problem
 */
export function loadSafetensors(file: string): SafetensorsFile {
  const buf = readFileOr(file, CheckpointError);
  const bad = (what: string) => new CheckpointError(`${file}: not a valid safetensors file (${what})`);
  if (buf.length < 8) throw bad(`${buf.length} bytes, shorter than the header length`);
  const n = Number(buf.readBigUInt64LE(0));
  if (n < 2 || n > MAX_HEADER_BYTES || 8 + n > buf.length) throw bad(`header length ${n} does not fit in ${buf.length} bytes; truncated?`);
  const text = buf.subarray(8, 8 + n).toString('utf8');
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(text);
  } catch (e) {
    throw bad(`header is not JSON: ${(e as Error).message}`);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) throw bad('header is not an object');
  const seen = new Set<string>();
  for (const k of topLevelKeys(text)) {
    if (seen.has(k)) throw bad(`the name '${k}' appears twice in the header`);
    seen.add(k);
  }
  const dataStart = 8 + n, dataLen = buf.length - dataStart;
  const meta = header.__metadata__ ?? {};
  if (meta === null || typeof meta !== 'object' || Array.isArray(meta) || Object.values(meta).some((v) => typeof v !== 'string')) {
    throw bad('__metadata__ is not a map of strings');
  }
  // Every entry checked, then the data tiled exactly, before a tensor is made.
  const entries: Entry[] = [];
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const e = info as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (!e || typeof e !== 'object' || typeof e.dtype !== 'string' || !Object.hasOwn(DTYPES, e.dtype)) {
      throw bad(`tensor '${name}' has dtype ${JSON.stringify(e?.dtype)}; only F32, F16, BF16 and I32 are supported`);
    }
    if (!Array.isArray(e.shape) || e.shape.length > 16 || e.shape.some((d) => !Number.isSafeInteger(d) || d < 0)) {
      throw bad(`tensor '${name}' has an invalid shape`);
    }
    const offsets = Array.isArray(e.data_offsets) ? e.data_offsets : [];
    const [b0, b1] = offsets;
    const count = (e.shape as number[]).reduce((a, b) => a * b, 1);
    if (offsets.length !== 2 || !Number.isSafeInteger(b0) || !Number.isSafeInteger(b1) || b0 < 0 || b1 > dataLen || b1 - b0 !== count * DTYPES[e.dtype as keyof typeof DTYPES]) {
      throw bad(`tensor '${name}' has data offsets [${b0}, ${b1}] that do not fit its shape [${(e.shape as number[]).join(', ')}] in ${dataLen} bytes of data; truncated?`);
    }
    entries.push({ name, dtype: e.dtype as keyof typeof DTYPES, shape: e.shape as number[], begin: b0, end: b1 });
  }
  const order = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let at = 0;
  for (const e of order) {
    if (e.begin < at) throw bad(`tensor '${e.name}' overlaps the data of another tensor`);
    if (e.begin > at) throw bad(`${e.begin - at} bytes before tensor '${e.name}' belong to no tensor`);
    at = e.end;
  }
  if (at !== dataLen) throw bad(`${dataLen - at} trailing bytes after the last tensor`);
  const tensors = new Map<string, Tensor>();
  try {
    for (const e of entries) {
      const copy = new Uint8Array(buf.subarray(dataStart + e.begin, dataStart + e.end));  // aligned copy
      const data = e.dtype === 'F32' ? new Float32Array(copy.buffer) : e.dtype === 'I32' ? new Int32Array(copy.buffer)
        : e.dtype === 'F16' ? halfToFloat(copy) : bfloatToFloat(copy);
      tensors.set(e.name, tensor(data, e.shape));
    }
  } catch (err) {
    for (const t of tensors.values()) t.dispose();
    throw err;
  }
  return { tensors, metadata: meta as Record<string, string>, dtypes: new Map(entries.map((e) => [e.name, e.dtype])) };
}
