/**
 * Tensors: a thin typed handle over a native tensor. Every op runs in native code and records
 * its own backward there; this file only converts arguments and tracks lifetimes (tidy).
 */
import { inspect } from 'util';

import { ArgumentError, DeviceError, DisposedError, DTypeError, ShapeError } from './errors';
import { native, NativeTensor } from './native';
import { checkBool, checkInt, checkNumber, checkOptions, checkReal, checkShape, describe, isFloat32Array, isInt32Array } from './validate';

/** Element types. */
export type DType = 'float32' | 'int32';
/** Where a tensor lives. */
export type Device = 'cpu' | 'cuda';
/** Data a tensor can be made from. */
export type TensorData = Float32Array | Int32Array | number[] | number;

/** `Symbol.dispose` where the runtime has it, a registered symbol otherwise. */
export const disposeSymbol: symbol =
  (Symbol as unknown as { dispose?: symbol }).dispose ?? Symbol.for('nodejs.dispose');

// ---- lifetimes ----

const scopes: Set<Tensor>[] = [];

function track(t: Tensor): void {
  const top = scopes[scopes.length - 1];
  if (top) top.add(t);
}

function collect(value: unknown, out: Set<Tensor>, depth = 0): void {
  if (depth > 4 || value === null || typeof value !== 'object') return;
  if (value instanceof Tensor) {
    out.add(value);
  } else if (Array.isArray(value)) {
    for (const v of value) collect(v, out, depth + 1);
  } else if (Object.getPrototypeOf(value) === Object.prototype) {
    for (const v of Object.values(value)) collect(v, out, depth + 1);
  }
}

/**
 * Runs `fn` and disposes every tensor created inside it, except those it returns (a tensor, or
 * tensors inside a returned array or plain object), which move to the enclosing scope. When `fn`
 * throws, every tensor it created is disposed.
 * `fn` must be synchronous.
 * @example
 * const loss = duat.tidy(() => F.crossEntropy(model.forward(x), y)); // temporaries freed
 */
export function tidy<T>(fn: () => T): T {
  if (typeof fn !== 'function') throw new ArgumentError(`Expected a function for tidy but received ${describe(fn)}`);
  const scope = new Set<Tensor>();
  scopes.push(scope);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    for (const t of scope) t.dispose();  // a throwing fn leaks nothing
    throw e;
  } finally {
    scopes.pop();
  }
  if (result instanceof Promise) {
    for (const t of scope) t.dispose();
    throw new ArgumentError('tidy() takes a synchronous function; it returned a Promise');
  }
  const kept = new Set<Tensor>();
  collect(result, kept);
  for (const t of scope) {
    if (kept.has(t)) track(t);
    else t.dispose();
  }
  return result;
}

/** Exempts `t` from the enclosing tidy() scopes; returns it. */
export function keep<T extends Tensor>(t: T): T {
  for (const s of scopes) s.delete(t);
  return t;
}

/** Runs `fn` with gradient recording off (inference, optimiser updates). */
export function noGrad<T>(fn: () => T): T {
  if (typeof fn !== 'function') throw new ArgumentError(`Expected a function for noGrad but received ${describe(fn)}`);
  const prev = native().setGradEnabled(false);
  try {
    return fn();
  } finally {
    native().setGradEnabled(prev);
  }
}

/**
 * Live native tensors (views and graph internals included) and their bytes, of which on CUDA, and
 * the most bytes live at once since {@link resetPeakMemory} (or the start).
 */
export function memory(): { tensors: number; bytes: number; cudaBytes: number; peakBytes: number } {
  return native().memory();
}

/** Starts a new peak for `memory().peakBytes` from the bytes live now. */
export function resetPeakMemory(): void {
  native().resetPeakMemory();
}

/**
 * 'cpu' or 'cuda' for a device option ('auto': CUDA when usable).
 * @throws DeviceError for 'cuda' where it is unusable, saying why (backendInfo().cuda.reason)
 * @internal
 */
export function resolveDevice(device: unknown): Device {
  if (device === undefined || device === 'cpu') return 'cpu';
  if (device !== 'cuda' && device !== 'auto') {
    throw new ArgumentError(`Expected one of 'cpu', 'cuda', 'auto' for device but received ${describe(device)}`);
  }
  const cuda = native().backendInfo().cuda;
  if (device === 'auto') return cuda.available ? 'cuda' : 'cpu';
  if (!cuda.available) throw new DeviceError(`device 'cuda' is not available: ${cuda.reason}`);
  return 'cuda';
}

// ---- the tensor ----

function asHandle(x: unknown, name: string): NativeTensor {
  if (!(x instanceof Tensor)) throw new ArgumentError(`Expected a tensor for ${name} but received ${describe(x)}`);
  return x.handle;
}

/** An n-dimensional array of float32 or int32 values with optional gradient tracking. */
export class Tensor {
  private h: NativeTensor | null;
  private cachedShape: number[] | undefined;

  /** @internal Wraps a native handle; use the factory functions instead. */
  constructor(handle: NativeTensor) {
    this.h = handle;
    track(this);
  }

  /** @internal The native handle; throws DisposedError after dispose(). */
  get handle(): NativeTensor {
    if (this.h === null) throw new DisposedError('This tensor has been disposed');
    return this.h;
  }

  /** The size of each dimension. */
  get shape(): number[] {
    if (!this.cachedShape) this.cachedShape = native().describe(this.handle).shape;
    return this.cachedShape.slice();
  }
  /** Number of dimensions. */
  get rank(): number {
    return this.shape.length;
  }
  /** Number of elements. */
  get size(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }
  get dtype(): DType {
    return native().describe(this.handle).dtype;
  }
  get device(): Device {
    return native().describe(this.handle).device;
  }
  /** Whether gradients flow to this tensor. Settable on leaves (parameters). */
  get requiresGrad(): boolean {
    return native().describe(this.handle).requiresGrad;
  }
  set requiresGrad(on: boolean) {
    native().setRequiresGrad(this.handle, checkBool(on, 'requiresGrad'));
  }
  /** True for tensors not computed by an op (inputs, parameters). */
  get isLeaf(): boolean {
    return native().describe(this.handle).isLeaf;
  }
  /** The accumulated gradient of a leaf after backward(), or null. */
  get grad(): Tensor | null {
    const g = native().grad(this.handle);
    return g ? new Tensor(g) : null;
  }
  /** Whether dispose() has been called. */
  get isDisposed(): boolean {
    return this.h === null;
  }

  /** A copy of the data as float32 (int32 values are converted). */
  toArray(): Float32Array {
    const a = native().toArray(this.handle);
    return isFloat32Array(a) ? a : Float32Array.from(a);
  }
  /** A copy of an int32 tensor's data. @throws DTypeError for a float32 tensor */
  toInt32Array(): Int32Array {
    const a = native().toArray(this.handle);
    if (!isInt32Array(a)) throw new DTypeError('toInt32Array: the tensor is float32; use toArray()');
    return a;
  }
  /** The value of a one-element tensor. */
  item(): number {
    return native().item(this.handle);
  }
  /** The data as nested arrays (for printing and small tests). */
  toNested(): unknown {
    const flat = Array.from(this.toArray());
    const shape = this.shape;
    const build = (d: number, off: number): unknown => {
      if (d === shape.length) return flat[off];
      const stride = shape.slice(d + 1).reduce((a, b) => a * b, 1);
      return Array.from({ length: shape[d] }, (_, i) => build(d + 1, off + i * stride));
    };
    return build(0, 0);
  }

  /**
   * Backpropagates from this tensor: accumulates d(this)/d(leaf) into every leaf's `.grad`, then
   * frees the graph. A tensor with more than one element needs `grad`, the gradient flowing in.
   * @throws StateError when nothing requires grad or the graph was already freed
   */
  backward(grad?: Tensor): void {
    native().backward(this.handle, grad === undefined ? null : asHandle(grad, 'grad'));
  }
  /** Drops the gradient (sets `.grad` to null). */
  zeroGrad(): void {
    native().zeroGrad(this.handle);
  }
  /** The same data without gradient history. */
  detach(): Tensor {
    return new Tensor(native().detach(this.handle));
  }
  /** A contiguous copy without gradient history. */
  clone(): Tensor {
    return new Tensor(native().clone(this.handle));
  }
  /**
   * The same values on `device` ('cpu', 'cuda' or 'auto'): this tensor's data when it already
   * lives there, else a copy. Differentiable: the gradient flows back to this tensor's device.
   * @throws DeviceError for 'cuda' where CUDA is unusable
   */
  to(device: Device | 'auto'): Tensor {
    return new Tensor(native().toDevice(this.handle, resolveDevice(device)));
  }
  /** Copies `src` (same shape and dtype, any device) into this tensor in place, outside autograd. */
  copy_(src: Tensor): this {
    native().copyInto(this.handle, asHandle(src, 'src'));
    return this;
  }

  /** Frees this handle's reference to the native tensor (idempotent). */
  dispose(): void {
    if (this.h !== null) {
      native().dispose(this.h);
      this.h = null;
    }
  }
  [Symbol.toPrimitive](hint: string): string | number {
    if (hint === 'number' && !this.isDisposed && this.size === 1) return this.item();
    return this.toString();
  }
  toString(): string {
    if (this.h === null) return 'Tensor(disposed)';
    return `Tensor(shape=[${this.shape.join(', ')}], dtype=${this.dtype}, device=${this.device}${this.requiresGrad ? ', requiresGrad' : ''})`;
  }

  /**
   * What console.log and util.inspect show: the description and the first and last values (all
   * of them up to 8). Tensors of more than a million elements show none (toArray() reads them).
   */
  [inspect.custom](): string {
    if (this.h === null || this.size > 1e6) return this.toString();
    let values: Float32Array | Int32Array;
    try {
      values = this.toArray();
    } catch (e) {
      return `${this.toString()} (values unavailable: ${(e as Error).message})`;
    }
    const show = (v: number) => (this.dtype === 'int32' ? String(v) : Number(v.toPrecision(5)).toString());
    const n = values.length;
    const list = n <= 8
      ? Array.from(values, show).join(', ')
      : `${Array.from(values.subarray(0, 4), show).join(', ')}, ..., ${Array.from(values.subarray(n - 3), show).join(', ')}`;
    return `${this.toString()} [${list}]${n > 8 ? ` (${n} values)` : ''}`;
  }

  // ---- arithmetic (broadcasting) ----
  add(other: Tensor | number): Tensor {
    return binary('add', 'addScalar', this, other, 1);
  }
  sub(other: Tensor | number): Tensor {
    return binary('sub', 'addScalar', this, other, -1);
  }
  mul(other: Tensor | number): Tensor {
    return binary('mul', 'mulScalar', this, other, 1);
  }
  div(other: Tensor | number): Tensor {
    return binary('div', 'mulScalar', this, other, -1);
  }
  neg(): Tensor {
    return this.mul(-1);
  }
  /** (..., M, K) @ (..., K, N), batched; a 2-D right operand is shared by the batch. */
  matmul(other: Tensor): Tensor {
    return new Tensor(native().matmul(this.handle, asHandle(other, 'other')));
  }

  // ---- reductions ----
  /** Sum over `dims` (all when omitted). */
  sum(dims?: number | number[], keepDim = false): Tensor {
    return new Tensor(native().sum(this.handle, dimList(dims), checkBool(keepDim, 'keepDim')));
  }
  /** Mean over `dims` (all when omitted). */
  mean(dims?: number | number[], keepDim = false): Tensor {
    return new Tensor(native().mean(this.handle, dimList(dims), checkBool(keepDim, 'keepDim')));
  }
  /** Index of the largest value along the last dimension (int32). */
  argmax(): Tensor {
    return new Tensor(native().argmax(this.handle));
  }

  // ---- shape ----
  /** A view with a new shape (one entry may be -1); copies only when the layout requires. */
  reshape(...shape: number[] | [number[]]): Tensor {
    const s = Array.isArray(shape[0]) ? shape[0] : (shape as number[]);
    return new Tensor(native().reshape(this.handle, s));
  }
  permute(...dims: number[] | [number[]]): Tensor {
    const d = Array.isArray(dims[0]) ? dims[0] : (dims as number[]);
    return new Tensor(native().permute(this.handle, d));
  }
  transpose(dim0 = -2, dim1 = -1): Tensor {
    return new Tensor(native().transpose(this.handle, dim0, dim1));
  }
  /** Elements start..end-1 (step) along `dim`, as a view; negative indices count from the end. */
  slice(dim: number, start: number, end?: number, step = 1): Tensor {
    return new Tensor(native().slice(this.handle, dim, start, end ?? 2 ** 50, step));
  }
  contiguous(): Tensor {
    return new Tensor(native().contiguous(this.handle));
  }

  // ---- activations ----
  gelu(): Tensor {
    return new Tensor(native().gelu(this.handle));
  }
  softmax(dim = -1): Tensor {
    return new Tensor(native().softmax(this.handle, dim));
  }
  logSoftmax(dim = -1): Tensor {
    return new Tensor(native().logSoftmax(this.handle, dim));
  }

  [key: symbol]: unknown;
}

(Tensor.prototype as unknown as Record<symbol, unknown>)[disposeSymbol] = function (this: Tensor) {
  this.dispose();
};

function dimList(dims: number | number[] | undefined): number[] {
  if (dims === undefined) return [];
  return typeof dims === 'number' ? [dims] : dims;
}

type BinaryName = 'add' | 'sub' | 'mul' | 'div';
function binary(op: BinaryName, scalarOp: 'addScalar' | 'mulScalar', a: Tensor, b: Tensor | number, sign: 1 | -1): Tensor {
  if (typeof b === 'number') {
    checkReal(b, 'the scalar operand');
    const s = scalarOp === 'mulScalar' && sign === -1 ? 1 / b : sign * b;
    return new Tensor(native()[scalarOp](a.handle, s));
  }
  return new Tensor(native()[op](a.handle, asHandle(b, 'the second operand')));
}

// ---- factories ----

/** Options for tensor factories. */
export interface TensorOptions {
  /** Track gradients for this leaf. Default false. float32 only. */
  requiresGrad?: boolean;
  /** 'cpu' (default), 'cuda' (a DeviceError saying why where it is unusable) or 'auto' (CUDA when usable). */
  device?: Device | 'auto';
  /** Element type; inferred from a typed array, else 'float32'. */
  dtype?: DType;
}

function finish(t: Tensor, opts: Partial<TensorOptions>): Tensor {
  if (opts.requiresGrad !== undefined) {
    try {
      t.requiresGrad = checkBool(opts.requiresGrad, 'requiresGrad');
    } catch (e) {
      t.dispose();
      throw e;
    }
  }
  return t;
}

/**
 * A tensor from data. A typed array is copied; its type gives the dtype (Float32Array: float32,
 * Int32Array: int32). Plain numbers are float32 unless `dtype: 'int32'`.
 * @throws ShapeError when the data length does not match the shape
 * @example
 * const x = duat.tensor([1, 2, 3, 4], [2, 2], { requiresGrad: true });
 */
export function tensor(data: TensorData, shape?: number[], options?: TensorOptions): Tensor {
  const opts = checkOptions<TensorOptions>(options, 'tensor options');
  let values: Float32Array | Int32Array;
  if (isFloat32Array(data) || isInt32Array(data)) {
    values = data;
    if (opts.dtype !== undefined && opts.dtype !== (isFloat32Array(data) ? 'float32' : 'int32')) {
      throw new DTypeError(`dtype '${String(opts.dtype)}' does not match the ${data.constructor.name} given as data`);
    }
  } else if (typeof data === 'number' || Array.isArray(data)) {
    const arr = typeof data === 'number' ? [data] : data;
    const dtype = opts.dtype ?? 'float32';
    if (dtype !== 'float32' && dtype !== 'int32') {
      throw new ArgumentError(`Expected one of 'float32', 'int32' for dtype but received ${describe(dtype)}`);
    }
    arr.forEach((v: unknown, i) => {
      if (typeof v !== 'number') throw new ArgumentError(`Expected number for data[${i}] but received ${describe(v)}`);
      if (dtype === 'int32' && (!Number.isInteger(v) || v < -(2 ** 31) || v >= 2 ** 31)) {
        throw new ArgumentError(`Expected int32 for data[${i}] but received ${describe(v)}`);
      }
    });
    values = dtype === 'int32' ? Int32Array.from(arr) : Float32Array.from(arr);
  } else {
    throw new ArgumentError(`Expected a Float32Array, Int32Array, number array or number for data but received ${describe(data)}`);
  }
  const s = shape === undefined ? (typeof data === 'number' ? [] : [values.length]) : checkShape(shape);
  const numel = s.reduce((a, b) => a * b, 1);
  if (numel !== values.length) {
    throw new ShapeError(`data has ${values.length} elements but shape [${s.join(', ')}] needs ${numel}`);
  }
  return finish(new Tensor(native().fromData(values, s, resolveDevice(opts.device))), opts);
}

/** A tensor of zeros. */
export function zeros(shape: number[], options?: TensorOptions): Tensor {
  const opts = checkOptions<TensorOptions>(options, 'zeros options');
  const dtype = opts.dtype ?? 'float32';
  if (dtype !== 'float32' && dtype !== 'int32') throw new ArgumentError(`Expected one of 'float32', 'int32' for dtype but received ${describe(dtype)}`);
  return finish(new Tensor(native().zeros(checkShape(shape), dtype === 'float32' ? 0 : 1, resolveDevice(opts.device))), opts);
}

/** A float32 tensor filled with `value`. */
export function full(shape: number[], value: number, options?: TensorOptions): Tensor {
  const opts = checkOptions<TensorOptions>(options, 'full options');
  return finish(new Tensor(native().full(checkShape(shape), checkReal(value, 'value'), resolveDevice(opts.device))), opts);
}

/** A float32 tensor of ones. */
export function ones(shape: number[], options?: TensorOptions): Tensor {
  return full(shape, 1, options);
}

// ---- seeded randomness ----

let seedState = 0x2545f491;

/** Sets the seed that random factories use when no `seed` option is given. */
export function manualSeed(seed: number): void {
  seedState = checkInt(seed, 'seed', 0, 2 ** 53 - 1) % 2 ** 32;
}

/** The next seed from the global generator (mulberry32), for ops that take a seed. */
export function nextSeed(): number {
  seedState = (seedState + 0x6d2b79f5) >>> 0;
  let z = seedState;
  z = Math.imul(z ^ (z >>> 15), z | 1);
  z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
  return ((z ^ (z >>> 14)) >>> 0) * 2 ** 21 + (Math.imul(z, 0x9e3779b1) >>> 11);
}

/** Options for random factories. */
export interface RandomOptions extends TensorOptions {
  /** Integer seed in [0, 2^53); the same seed gives the same values on every machine. Default: the global generator (manualSeed). */
  seed?: number;
}

function seedOf(opts: Partial<RandomOptions>): number {
  return opts.seed === undefined ? nextSeed() : checkInt(opts.seed, 'seed', 0, 2 ** 53 - 1);
}

/** Normal(mean, std) samples. */
export function randn(shape: number[], options?: RandomOptions & { mean?: number; std?: number }): Tensor {
  const opts = checkOptions<RandomOptions & { mean?: number; std?: number }>(options, 'randn options');
  const t = native().randn(checkShape(shape), seedOf(opts), checkNumber(opts.mean ?? 0, 'mean'), checkNumber(opts.std ?? 1, 'std', 0),
    resolveDevice(opts.device));
  return finish(new Tensor(t), opts);
}

/** Uniform samples in [low, high). */
export function rand(shape: number[], options?: RandomOptions & { low?: number; high?: number }): Tensor {
  const opts = checkOptions<RandomOptions & { low?: number; high?: number }>(options, 'rand options');
  const t = native().rand(checkShape(shape), seedOf(opts), checkNumber(opts.low ?? 0, 'low'), checkNumber(opts.high ?? 1, 'high'),
    resolveDevice(opts.device));
  return finish(new Tensor(t), opts);
}

/** Normal(mean, std) samples restricted to [a, b] (timm's trunc_normal_; defaults std 1, a -2, b 2). */
export function truncNormal(
  shape: number[],
  options?: RandomOptions & { mean?: number; std?: number; a?: number; b?: number },
): Tensor {
  const opts = checkOptions<RandomOptions & { mean?: number; std?: number; a?: number; b?: number }>(options, 'truncNormal options');
  const t = native().truncNormal(
    checkShape(shape),
    seedOf(opts),
    checkNumber(opts.mean ?? 0, 'mean'),
    checkNumber(opts.std ?? 1, 'std', 0),
    checkNumber(opts.a ?? -2, 'a'),
    checkNumber(opts.b ?? 2, 'b'),
    resolveDevice(opts.device),
  );
  return finish(new Tensor(t), opts);
}
