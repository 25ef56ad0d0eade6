/**
 * Reading and writing files safely: every loader reads through readFileOr, every writer through
 * writeFileAtomic. A path must be a string (a number would be read as a file descriptor: 0 blocks
 * on stdin), only regular files are read (not /dev/zero, FIFOs or folders), and a file larger than
 * the caller's bound is refused before a byte of it is read.
 */
import * as fs from 'fs';
import * as path from 'path';

import { ArgumentError } from '../errors';
import { describe } from '../validate';

/** Files larger than this are refused unless the caller allows more (16 GiB). */
export const MAX_FILE_BYTES = 16 * 2 ** 30;

/** A file path argument: a non-empty string. @throws ArgumentError otherwise */
export function checkPath(file: unknown, name = 'file'): string {
  if (typeof file !== 'string' || file.length === 0 || file.includes('\0')) {
    throw new ArgumentError(`Expected a file path (a non-empty string) for ${name} but received ${describe(file)}`);
  }
  return file;
}

/**
 * Reads a regular file of at most `maxBytes`; any failure is reported with the caller's typed
 * error, naming the file.
 */
export function readFileOr(file: string, error: new (message: string) => Error, maxBytes = MAX_FILE_BYTES): Buffer {
  checkPath(file);
  let stat: fs.Stats;
  try {
    stat = fs.statSync(file);
  } catch (e) {
    throw new error(`${file}: cannot read (${(e as Error).message})`);
  }
  if (!stat.isFile()) throw new error(`${file}: not a regular file`);
  if (stat.size > maxBytes) throw new error(`${file}: ${stat.size} bytes, more than the ${maxBytes} allowed`);
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new error(`${file}: cannot read (${(e as Error).message})`);
  }
}

// A temporary file of writeFileAtomic: `.<name>.<pid>.<time>.tmp` beside the target.
function tempPattern(base: string): RegExp {
  return new RegExp(`^\\.${base.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\.(\\d+)\\.\\d+\\.tmp$`);
}

function processAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Writes `data` to `file` atomically: a temporary file in the same directory, fsync, then rename,
 * so a crash mid-write leaves the old file (or none), never half a file. Temporary files that
 * killed writers left beside the same target are removed first.
 */
export function writeFileAtomic(file: string, data: Uint8Array | Buffer[]): void {
  checkPath(file);
  const dir = path.dirname(path.resolve(file));
  const base = path.basename(file);
  fs.mkdirSync(dir, { recursive: true });
  const stale = tempPattern(base);
  for (const entry of fs.readdirSync(dir)) {
    const m = stale.exec(entry);
    if (m && !processAlive(Number(m[1]))) fs.rmSync(path.join(dir, entry), { force: true });
  }
  const tmp = path.join(dir, `.${base}.${process.pid}.${Date.now()}.tmp`);
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
