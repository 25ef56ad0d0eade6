/**
 * Optimizer base: parameter groups (each may override the options, e.g. weightDecay 0 for
 * norms and biases), zeroGrad, and global-norm gradient clipping. Updates run in native code
 * in place, outside autograd.
 */
import { ArgumentError } from '../errors';
import { native, NativeOptimizerPlan, NativeTensor } from '../native';
import { Tensor } from '../tensor';
import { checkNumber, describe } from '../validate';

/** A group of parameters sharing option overrides. */
export interface ParamGroup<O> {
  params: Tensor[];
  options?: Partial<O>;
}

export abstract class Optimizer<O extends object> {
  readonly groups: { params: Tensor[]; options: O }[];
  /** Number of step() calls so far. */
  stepCount = 0;

  constructor(params: Tensor[] | ParamGroup<O>[], defaults: O) {
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
  }

  /** Drops every parameter's gradient. */
  zeroGrad(): void {
    for (const g of this.groups) for (const p of g.params) p.zeroGrad();
  }

  /** Applies one update from the current gradients (parameters without a gradient are skipped). */
  step(): void {
    this.stepCount++;
    for (const g of this.groups) {
      for (const p of g.params) {
        const grad = native().grad(p.handle);
        if (!grad) continue;
        try {
          this.update(p, grad, g.options);
        } finally {
          native().dispose(grad);  // release the handle now rather than at garbage collection
        }
      }
    }
  }

  /** Sets the learning rate of every group (schedules call this). */
  setLearningRate(lr: number): void {
    for (const g of this.groups) (g.options as { lr?: number }).lr = lr;
  }

  protected abstract update(p: Tensor, grad: NativeTensor, options: O): void;

  /**
   * @internal The next step as a plan for native code (a training step applies it on its worker
   * thread). Counts the step, as step() does. Parameters must all belong to this optimizer.
   */
  abstract nativePlan(params: Tensor[]): NativeOptimizerPlan;

  /** @internal The group options of each parameter, in the order given. */
  protected optionsOf(params: Tensor[]): O[] {
    const byParam = new Map<Tensor, O>();
    for (const g of this.groups) for (const p of g.params) byParam.set(p, g.options);
    return params.map((p, i) => {
      const o = byParam.get(p);
      if (!o) throw new ArgumentError(`parameter ${i} is not managed by this optimizer`);
      return o;
    });
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
    let sq = 0;
    for (const g of grads) sq += native().sumOfSquares(g);
    const norm = Math.sqrt(sq);
    if (norm > maxNorm && norm > 0) {
      const s = maxNorm / (norm + 1e-6);
      for (const g of grads) native().scaleInplace(g, s);
    }
    return norm;
  } finally {
    for (const g of grads) native().dispose(g);
  }
}
