/** Reading a file whose failure is reported with the caller's typed error, naming the file. */
import * as fs from 'fs';

export function readFileOr(file: string, error: new (message: string) => Error): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new error(`${file}: cannot read (${(e as Error).message})`);
  }
}
