/**
 * Argument checks at the TS edge, all with one message format:
 * `Expected integer in [1, 64] for heads but received 3.5 (number)`.
 * @internal
 */
import { ArgumentError, ShapeError } from './errors';

/** A short description of any value, for error messages. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (typeof value === 'number') return `${value} (number)`;
  if (typeof value === 'string') return `${JSON.stringify(value.length > 40 ? value.slice(0, 40) + '...' : value)} (string)`;
  if (typeof value === 'bigint') return `${value} (bigint)`;
  if (Array.isArray(value)) return `an array of length ${value.length}`;
  if (ArrayBuffer.isView(value)) return `a ${value.constructor.name}`;
  if (typeof value === 'function') return 'a function';
  if (typeof value === 'object') return `an object (${(value as object).constructor?.name ?? 'null prototype'})`;
  return `${String(value)} (${typeof value})`;
}

export function checkInt(value: unknown, name: string, lo: number, hi: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < lo || value > hi) {
    throw new ArgumentError(`Expected integer in [${lo}, ${hi}] for ${name} but received ${describe(value)}`);
  }
  return value;
}

/** A finite number in [lo, hi]: NaN and the infinities are refused (a learning rate of Infinity
 * would turn every parameter into NaN on the first step). */
export function checkNumber(value: unknown, name: string, lo = -Infinity, hi = Infinity): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < lo || value > hi) {
    const range =
      lo === -Infinity && hi === Infinity ? 'finite number' : hi === Infinity ? `finite number >= ${lo}` : `number in [${lo}, ${hi}]`;
    throw new ArgumentError(`Expected ${range} for ${name} but received ${describe(value)}`);
  }
  return value;
}

/** A number that may be infinite (a fill value, a scalar operand), but not NaN. */
export function checkReal(value: unknown, name: string): number {
  if (typeof value !== 'number' || Number.isNaN(value)) throw new ArgumentError(`Expected number for ${name} but received ${describe(value)}`);
  return value;
}

export function checkBool(value: unknown, name: string): boolean {
  if (typeof value !== 'boolean') throw new ArgumentError(`Expected boolean for ${name} but received ${describe(value)}`);
  return value;
}

export function checkOneOf<T extends string>(value: unknown, name: string, allowed: readonly T[]): T {
  if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) {
    throw new ArgumentError(`Expected one of ${allowed.map((a) => `'${a}'`).join(', ')} for ${name} but received ${describe(value)}`);
  }
  return value as T;
}

export function checkOptions<T extends object>(value: unknown, name: string): Partial<T> {
  if (value === undefined) return {};
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new ArgumentError(`Expected an options object for ${name} but received ${describe(value)}`);
  }
  return value as Partial<T>;
}

/** The largest dimension and element count duat accepts in one tensor. */
export const MAX_DIM = 2 ** 40;

export function checkShape(value: unknown, name = 'shape'): number[] {
  if (!Array.isArray(value)) throw new ShapeError(`Expected an array of integers for ${name} but received ${describe(value)}`);
  if (value.length > 16) throw new ShapeError(`Expected at most 16 dimensions for ${name} but received ${value.length}`);
  let numel = 1;
  value.forEach((d: unknown, i) => {
    if (typeof d !== 'number' || !Number.isInteger(d) || d < 0 || d > MAX_DIM) {
      throw new ShapeError(`Expected integer in [0, ${MAX_DIM}] for ${name}[${i}] but received ${describe(d)}`);
    }
    numel *= d;
  });
  if (numel > MAX_DIM) throw new ShapeError(`${name} [${value.join(', ')}] has more than ${MAX_DIM} elements`);
  return value as number[];
}

/** Typed-array checks that hold across realms (vm contexts, jest): `instanceof` does not. */
export function isFloat32Array(x: unknown): x is Float32Array {
  return Object.prototype.toString.call(x) === '[object Float32Array]';
}
export function isInt32Array(x: unknown): x is Int32Array {
  return Object.prototype.toString.call(x) === '[object Int32Array]';
}
