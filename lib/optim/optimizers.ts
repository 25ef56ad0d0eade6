/** SGD (momentum, Nesterov) and AdamW (decoupled weight decay), as PyTorch defines them. */
import { native, NativeOptimizerPlan, NativeTensor } from '../native';
import { keep, Tensor } from '../tensor';
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
 * AdamW: Adam with decoupled weight decay.
 * @example
 * const opt = new duat.optim.AdamW(model.parameters(), { lr: 1e-3 });
 * loss.backward(); opt.step(); opt.zeroGrad();
 */
export class AdamW extends Optimizer<AdamWOptions> {
  private readonly state = new Map<Tensor, { m: Tensor; v: Tensor; step: number }>();

  private stateOf(p: Tensor): { m: Tensor; v: Tensor; step: number } {
    let s = this.state.get(p);
    if (!s) {
      const shape = p.shape;
      // Optimiser state outlives any tidy() scope the step runs in.
      s = { m: keep(new Tensor(native().zeros(shape, 0))), v: keep(new Tensor(native().zeros(shape, 0))), step: 0 };
      this.state.set(p, s);
    }
    return s;
  }

  nativePlan(params: Tensor[]): NativeOptimizerPlan {
    this.stepCount++;
    const opts = this.optionsOf(params);
    const states = params.map((p) => this.stateOf(p));
    for (const s of states) s.step = this.stepCount;
    return {
      kind: 'adamw',
      lr: opts.map((o) => o.lr),
      weightDecay: opts.map((o) => o.weightDecay),
      stateA: states.map((s) => s.m.handle),
      stateB: states.map((s) => s.v.handle),
      beta1: opts[0]?.betas[0] ?? 0.9,
      beta2: opts[0]?.betas[1] ?? 0.999,
      eps: opts[0]?.eps ?? 1e-8,
      step: this.stepCount,
    };
  }

  constructor(params: Tensor[] | ParamGroup<AdamWOptions>[], options?: Partial<AdamWOptions>) {
    const o = checkOptions<AdamWOptions>(options, 'AdamW options');
    const betas = o.betas ?? [0.9, 0.999];
    super(params, {
      lr: checkNumber(o.lr ?? 1e-3, 'lr', 0),
      betas: [checkNumber(betas[0], 'betas[0]', 0, 0.999999), checkNumber(betas[1], 'betas[1]', 0, 0.999999)],
      eps: checkNumber(o.eps ?? 1e-8, 'eps', 0),
      weightDecay: checkNumber(o.weightDecay ?? 0.01, 'weightDecay', 0),
    });
  }

  protected update(p: Tensor, grad: NativeTensor, o: AdamWOptions): void {
    const s = this.stateOf(p);
    s.step++;
    native().adamwUpdate(p.handle, grad, s.m.handle, s.v.handle, o.lr, o.betas[0], o.betas[1], o.eps, o.weightDecay, s.step);
  }

  /** Restores a parameter's moments (from a checkpoint); the optimizer takes ownership. */
  restoreState(p: Tensor, m: Tensor, v: Tensor, step: number): void {
    const old = this.state.get(p);
    old?.m.dispose();
    old?.v.dispose();
    this.state.set(p, { m, v, step });
  }

  /** The moments of every parameter (for checkpoints). */
  stateFor(p: Tensor): { m: Tensor; v: Tensor; step: number } | undefined {
    return this.state.get(p);
  }

  /** Frees the moment tensors. */
  dispose(): void {
    for (const s of this.state.values()) {
      s.m.dispose();
      s.v.dispose();
    }
    this.state.clear();
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
  private readonly buffers = new Map<Tensor, Tensor>();

  constructor(params: Tensor[] | ParamGroup<SGDOptions>[], options?: Partial<SGDOptions>) {
    const o = checkOptions<SGDOptions>(options, 'SGD options');
    super(params, {
      lr: checkNumber(o.lr ?? 0.01, 'lr', 0),
      momentum: checkNumber(o.momentum ?? 0, 'momentum', 0),
      dampening: checkNumber(o.dampening ?? 0, 'dampening', 0, 1),
      weightDecay: checkNumber(o.weightDecay ?? 0, 'weightDecay', 0),
      nesterov: checkBool(o.nesterov ?? false, 'nesterov'),
    });
  }

  nativePlan(params: Tensor[]): NativeOptimizerPlan {
    this.stepCount++;
    const opts = this.optionsOf(params);
    const first = this.stepCount === 1;
    const bufs = params.map((p, i) => {
      if (opts[i].momentum === 0) return null;
      let b = this.buffers.get(p);
      if (!b) {
        b = keep(new Tensor(native().zeros(p.shape, 0)));
        this.buffers.set(p, b);
      }
      return b.handle;
    });
    const o = opts[0];
    return {
      kind: 'sgd',
      lr: opts.map((x) => x.lr),
      weightDecay: opts.map((x) => x.weightDecay),
      stateA: bufs,
      stateB: bufs.map(() => null),
      momentum: o?.momentum ?? 0,
      dampening: o?.dampening ?? 0,
      nesterov: o?.nesterov ?? false,
      firstStep: first,
      step: this.stepCount,
    };
  }

  protected update(p: Tensor, grad: NativeTensor, o: SGDOptions): void {
    let buf = this.buffers.get(p);
    const first = buf === undefined;
    if (o.momentum !== 0 && !buf) {
      buf = keep(new Tensor(native().zeros(p.shape, 0)));
      this.buffers.set(p, buf);
    }
    native().sgdUpdate(p.handle, grad, o.momentum !== 0 && buf ? buf.handle : null, o.lr, o.momentum, o.dampening, o.weightDecay, o.nesterov, first);
  }

  /** A parameter's momentum buffer (for checkpoints). */
  bufferFor(p: Tensor): Tensor | undefined {
    return this.buffers.get(p);
  }

  /** Restores a parameter's momentum buffer; the optimizer takes ownership. */
  restoreBuffer(p: Tensor, buf: Tensor): void {
    this.buffers.get(p)?.dispose();
    this.buffers.set(p, buf);
  }

  dispose(): void {
    for (const b of this.buffers.values()) b.dispose();
    this.buffers.clear();
  }
}
