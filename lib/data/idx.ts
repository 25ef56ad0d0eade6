/**
 * IDX files (MNIST, Fashion-MNIST): a big-endian header (magic 0x0000 TT NN: type, rank), the
 * dimensions, then the data. Only unsigned bytes (type 0x08) are used by these data sets.
 */

import { readFileOr } from '../io/files';
import { DataError } from '../errors';

export interface IdxArray {
  dims: number[];
  data: Uint8Array;
}

/** Parses an IDX buffer; `file` names it in errors. @throws DataError when truncated or malformed */
export function parseIdx(buf: Uint8Array, file: string): IdxArray {
  if (buf.length < 4) throw new DataError(`${file}: not an IDX file (${buf.length} bytes, shorter than a header)`);
  if (buf[0] !== 0 || buf[1] !== 0) throw new DataError(`${file}: not an IDX file (bad magic ${Array.from(buf.subarray(0, 4)).join(' ')})`);
  if (buf[2] !== 0x08) throw new DataError(`${file}: IDX element type 0x${buf[2].toString(16)} is not supported (only unsigned bytes, 0x08)`);
  const rank = buf[3];
  if (rank < 1 || rank > 4) throw new DataError(`${file}: IDX rank ${rank} is outside [1, 4]`);
  if (buf.length < 4 + 4 * rank) throw new DataError(`${file}: truncated IDX header (${buf.length} bytes)`);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const dims = Array.from({ length: rank }, (_, i) => view.getUint32(4 + 4 * i, false));
  const count = dims.reduce((a, b) => a * b, 1);
  const start = 4 + 4 * rank;
  if (buf.length !== start + count) {
    throw new DataError(
      `${file}: IDX header says [${dims.join(', ')}] (${count} bytes of data) but the file has ${buf.length - start}` +
        (buf.length < start + count ? ' (truncated)' : ' (trailing bytes)'),
    );
  }
  return { dims, data: buf.subarray(start) };
}

/** Reads an IDX file. @throws DataError naming the file */
export function readIdx(file: string): IdxArray {
  const buf = readFileOr(file, DataError);
  return parseIdx(buf, file);
}
