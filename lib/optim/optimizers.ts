/** SGD (momentum, Nesterov) and AdamW (decoupled weight decay), as PyTorch defines them. */
import { NativeGroupOptions } from '../native';
import { Tensor } from '../tensor';
import { checkBool, checkNumber, checkOptions } from '../validate';
import { Optimizer, ParamGroup } from './Optimizer';

/** Options of {@link AdamW}. */
export interface AdamWOptions {
  /** Learning rate. Default 1e-3. */
  lr: number;
  /** Coefficients of the moment averages. Default [0.9, 0.999]. */
  betas: [number, number];
  /** Added to the denominator. Default 1e-8. */
  eps: number;
  /** Decoupled weight decay. Default 0.01. */
  weightDecay: number;
}

/**
 * AdamW: Adam with decoupled weight decay, bias-corrected per parameter (PyTorch's formula).
 * @example
 * const opt = new duat.optim.AdamW(model.parameters(), { lr: 1e-3 });
 * loss.backward(); opt.step(); opt.zeroGrad();
 */
export class AdamW extends Optimizer<AdamWOptions> {
  constructor(params: Tensor[] | ParamGroup<AdamWOptions>[], options?: Partial<AdamWOptions>) {
    const o = checkOptions<AdamWOptions>(options, 'AdamW options');
    const betas = o.betas ?? [0.9, 0.999];
    super(0, params, {
      lr: checkNumber(o.lr ?? 1e-3, 'lr', 0),
      betas: [checkNumber(betas[0], 'betas[0]', 0, 0.999999), checkNumber(betas[1], 'betas[1]', 0, 0.999999)],
      eps: checkNumber(o.eps ?? 1e-8, 'eps', 0),
      weightDecay: checkNumber(o.weightDecay ?? 0.01, 'weightDecay', 0),
    });
  }

  /** @internal */
  nativeGroups(): NativeGroupOptions[] {
    return this.groups.map(({ options: o }) => ({ lr: o.lr, weightDecay: o.weightDecay, beta1: o.betas[0], beta2: o.betas[1], eps: o.eps }));
  }

  /**
   * A parameter's moments and its update count (for checkpoints); undefined before its first
   * update. The tensors are the optimizer's own: read them, do not write them.
   */
  stateFor(p: Tensor): { m: Tensor; v: Tensor; step: number } | undefined {
    const s = this.nativeState(p);
    return s && s.a && s.b ? { m: s.a, v: s.b, step: s.step } : undefined;
  }

  /**
   * Restores a parameter's moments (from a checkpoint): copied to the parameter's device.
   * `rowSteps`: each row's update count, for a parameter updated row by row (frozen or inactive
   * branches).
   */
  restoreState(p: Tensor, m: Tensor, v: Tensor, step: number, rowSteps?: number[] | null): void {
    this.setNativeState(p, m, v, step, rowSteps);
  }
}

/** Options of {@link SGD}. */
export interface SGDOptions {
  lr: number;
  /** Default 0. */
  momentum: number;
  /** Default 0. */
  dampening: number;
  /** L2 penalty added to the gradient. Default 0. */
  weightDecay: number;
  /** Nesterov momentum. Default false. */
  nesterov: boolean;
}

/** Stochastic gradient descent with optional (Nesterov) momentum. */
export class SGD extends Optimizer<SGDOptions> {
  constructor(params: Tensor[] | ParamGroup<SGDOptions>[], options?: Partial<SGDOptions>) {
    const o = checkOptions<SGDOptions>(options, 'SGD options');
    super(1, params, {
      lr: checkNumber(o.lr ?? 0.01, 'lr', 0),
      momentum: checkNumber(o.momentum ?? 0, 'momentum', 0),
      dampening: checkNumber(o.dampening ?? 0, 'dampening', 0, 1),
      weightDecay: checkNumber(o.weightDecay ?? 0, 'weightDecay', 0),
      nesterov: checkBool(o.nesterov ?? false, 'nesterov'),
    });
  }

  /** @internal */
  nativeGroups(): NativeGroupOptions[] {
    return this.groups.map(({ options: o }) => ({
      lr: o.lr,
      weightDecay: o.weightDecay,
      momentum: o.momentum,
      dampening: o.dampening,
      nesterov: o.nesterov,
    }));
  }

  /** A parameter's momentum buffer (for checkpoints); undefined before it exists. */
  bufferFor(p: Tensor): Tensor | undefined {
    return this.nativeState(p)?.a ?? undefined;
  }

  /** Restores a parameter's momentum buffer: copied to the parameter's device (`rowSteps` as for AdamW). */
  restoreBuffer(p: Tensor, buf: Tensor, rowSteps?: number[] | null): void {
    this.setNativeState(p, buf, null, 1, rowSteps);
  }
}
