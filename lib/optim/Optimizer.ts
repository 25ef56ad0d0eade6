/**
 * Optimizer base: parameter groups (each may override the options, e.g. weightDecay 0 for
 * norms and biases), zeroGrad, and global-norm gradient clipping. The update itself runs in the
 * one native optimizer (native/train/optimizer.h), the same path whether `step()` is called here
 * after a custom backward or a model's `trainStep` applies it on its worker thread, on every
 * device; its state lives on the parameters' device.
 */
import { ArgumentError } from '../errors';
import { native, NativeGroupOptions, NativeTensor, OptimizerHandle } from '../native';
import { Tensor } from '../tensor';
import { checkNumber, describe } from '../validate';

/** A group of parameters sharing option overrides. */
export interface ParamGroup<O> {
  params: Tensor[];
  options?: Partial<O>;
}

export abstract class Optimizer<O extends object> {
  readonly groups: { params: Tensor[]; options: O }[];
  /** @internal The native optimizer. */
  readonly handle: OptimizerHandle;
  private readonly index = new Map<Tensor, number>();

  protected constructor(kind: 0 | 1, params: Tensor[] | ParamGroup<O>[], defaults: O) {
    if (!Array.isArray(params) || params.length === 0) {
      throw new ArgumentError(`Expected a non-empty array of parameters or parameter groups but received ${describe(params)}`);
    }
    const groups: ParamGroup<O>[] = params[0] instanceof Tensor ? [{ params: params as Tensor[] }] : (params as ParamGroup<O>[]);
    this.groups = groups.map((g, gi) => {
      if (!g || !Array.isArray(g.params)) throw new ArgumentError(`Expected a parameter group for params[${gi}] but received ${describe(g)}`);
      g.params.forEach((p, i) => {
        if (!(p instanceof Tensor)) throw new ArgumentError(`Expected a tensor for params[${gi}][${i}] but received ${describe(p)}`);
      });
      // A group's overrides are checked like the defaults: numbers non-negative, flags boolean.
      for (const [key, value] of Object.entries(g.options ?? {})) {
        const base = (defaults as Record<string, unknown>)[key];
        const name = `params[${gi}].options.${key}`;
        if (base === undefined) throw new ArgumentError(`Unknown option ${name}`);
        if (typeof base === 'number') checkNumber(value, name, 0);
        if (typeof base === 'boolean' && typeof value !== 'boolean') throw new ArgumentError(`Expected boolean for ${name} but received ${describe(value)}`);
      }
      return { params: g.params, options: { ...defaults, ...(g.options ?? {}) } };
    });
    const handles: NativeTensor[] = [];
    const groupOf: number[] = [];
    this.groups.forEach((g, gi) => {
      for (const p of g.params) {
        if (this.index.has(p)) throw new ArgumentError(`a parameter appears twice in the optimizer's groups (group ${gi})`);
        this.index.set(p, handles.length);
        handles.push(p.handle);
        groupOf.push(gi);
      }
    });
    this.handle = native().optimizerCreate(kind, handles, groupOf);
  }

  /** Number of updates applied so far (by step() and by training steps). */
  get stepCount(): number {
    return native().optimizerSteps(this.handle);
  }
  set stepCount(n: number) {
    native().optimizerSteps(this.handle, n);
  }

  /** Drops every parameter's gradient. */
  zeroGrad(): void {
    for (const g of this.groups) for (const p of g.params) p.zeroGrad();
  }

  /** Applies one update from the current gradients (parameters without a gradient are skipped). */
  step(): void {
    native().optimizerStep(this.handle, this.nativeGroups());
  }

  /** Sets the learning rate of every group (schedules call this). */
  setLearningRate(lr: number): void {
    checkNumber(lr, 'lr', 0);
    for (const g of this.groups) (g.options as { lr?: number }).lr = lr;
  }

  /** @internal Every group's options as the native optimizer reads them. */
  abstract nativeGroups(): NativeGroupOptions[];

  /** @internal The index of a parameter in the native optimizer, or -1. */
  indexOf(p: Tensor): number {
    return this.index.get(p) ?? -1;
  }

  /**
   * @internal A parameter's native state: two tensors (or null), its update count, and the update
   * count of each row where it was updated row by row (a model's frozen or inactive branches).
   */
  protected nativeState(p: Tensor): { a: Tensor | null; b: Tensor | null; step: number; rowSteps: number[] | null } | undefined {
    const i = this.indexOf(p);
    if (i < 0) return undefined;
    const s = native().optimizerState(this.handle, i);
    return { a: s.a ? new Tensor(s.a) : null, b: s.b ? new Tensor(s.b) : null, step: s.step, rowSteps: s.rowSteps };
  }

  /** @internal Restores a parameter's native state (copied; the caller keeps its tensors). */
  protected setNativeState(p: Tensor, a: Tensor | null, b: Tensor | null, step: number, rowSteps?: number[] | null): void {
    const i = this.indexOf(p);
    if (i < 0) throw new ArgumentError('the parameter is not managed by this optimizer');
    native().optimizerSetState(this.handle, i, a ? a.handle : null, b ? b.handle : null, checkNumber(step, 'step', 0), rowSteps ?? null);
  }

  /** @internal Each row's update count where `p` has been updated row by row, else null. */
  rowStepsFor(p: Tensor): number[] | null {
    const s = this.nativeState(p);
    if (!s) return null;
    s.a?.dispose();
    s.b?.dispose();
    return s.rowSteps;
  }

  /**
   * Frees the optimizer's state (moments, momentum buffers) and its hold on the parameters; the
   * optimizer cannot be used afterwards (DisposedError).
   */
  dispose(): void {
    native().optimizerDispose(this.handle);
  }
}

/**
 * Scales all gradients so that their global L2 norm is at most maxNorm; returns the norm before
 * clipping.
 */
export function clipGradNorm(params: Tensor[], maxNorm: number): number {
  if (!Array.isArray(params)) throw new ArgumentError(`Expected an array of parameters but received ${describe(params)}`);
  params.forEach((p, i) => {
    if (!(p instanceof Tensor)) throw new ArgumentError(`Expected a tensor for params[${i}] but received ${describe(p)}`);
  });
  checkNumber(maxNorm, 'maxNorm', 0);
  const grads = params.map((p) => native().grad(p.handle)).filter((g) => g !== null);
  try {
    if (grads.length === 0) return 0;
    const norm = Math.sqrt(native().sumOfSquares(grads));
    if (norm > maxNorm && norm > 0) {
      const s = maxNorm / (norm + 1e-6);
      for (const g of grads) native().scaleInplace(g, s);
    }
    return norm;
  } finally {
    for (const g of grads) native().dispose(g);
  }
}
