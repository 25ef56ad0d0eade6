/**
 * Module: the base of every model part. Holds parameters (leaf tensors that require grad) and
 * child modules under names; names join with '.', as in PyTorch, so state dicts match timm's.
 */
import { ArgumentError, ShapeError } from '../errors';
import { keep, Tensor } from '../tensor';
import { describe } from '../validate';

/** A flat map from parameter name to tensor. */
export type StateDict = Map<string, Tensor>;

export abstract class Module {
  private readonly params = new Map<string, Tensor>();
  private readonly children = new Map<string, Module>();
  /** Training mode (dropout on); eval() turns it off. */
  training = true;

  /** Registers a parameter (marks it requiresGrad) and returns it. */
  protected registerParameter(name: string, t: Tensor): Tensor {
    t.requiresGrad = true;
    this.params.set(name, keep(t));  // parameters outlive any tidy() scope they were made in
    return t;
  }

  /** Registers a child module and returns it. */
  protected registerModule<M extends Module>(name: string, m: M): M {
    this.children.set(name, m);
    return m;
  }

  /** Every parameter with its dotted name, children after own parameters, in registration order. */
  namedParameters(prefix = ''): [string, Tensor][] {
    const out: [string, Tensor][] = [];
    for (const [n, p] of this.params) out.push([prefix + n, p]);
    for (const [n, c] of this.children) out.push(...c.namedParameters(`${prefix}${n}.`));
    return out;
  }

  /** Every parameter. */
  parameters(): Tensor[] {
    return this.namedParameters().map(([, p]) => p);
  }

  /** Number of scalar parameters. */
  parameterCount(): number {
    return this.parameters().reduce((n, p) => n + p.size, 0);
  }

  /** Sets training mode on this module and its children. */
  train(on = true): this {
    this.training = on;
    for (const c of this.children.values()) c.train(on);
    return this;
  }

  /** Sets evaluation mode (training = false). */
  eval(): this {
    return this.train(false);
  }

  /** Drops every parameter's gradient. */
  zeroGrad(): void {
    for (const p of this.parameters()) p.zeroGrad();
  }

  /** The parameters by name (the tensors themselves, not copies). */
  stateDict(): StateDict {
    return new Map(this.namedParameters());
  }

  /**
   * Copies values into the parameters. Every parameter must be present with the same shape;
   * unknown names are an error unless `strict` is false.
   * @throws ShapeError naming the first mismatching parameter
   */
  loadStateDict(sd: StateDict | Record<string, Tensor>, strict = true): void {
    if (sd === null || typeof sd !== 'object') {
      throw new ArgumentError(`Expected a state dict (Map or object of tensors) but received ${describe(sd)}`);
    }
    if (typeof strict !== 'boolean') throw new ArgumentError(`Expected boolean for strict but received ${describe(strict)}`);
    const entries: Map<string, unknown> = sd instanceof Map ? sd : new Map(Object.entries(sd));
    const own = new Map(this.namedParameters());
    for (const [name, p] of own) {
      const src = entries.get(name);
      if (!src) {
        if (strict) throw new ShapeError(`loadStateDict: missing parameter '${name}'`);
        continue;
      }
      if (!(src instanceof Tensor)) throw new ArgumentError(`Expected a tensor for '${name}' but received ${describe(src)}`);
      const a = p.shape, b = src.shape;
      if (a.length !== b.length || a.some((d, i) => d !== b[i])) {
        throw new ShapeError(`loadStateDict: parameter '${name}' has shape [${a}] but the state dict has [${b}]`);
      }
    }
    if (strict) {
      for (const name of entries.keys()) {
        if (!own.has(name)) throw new ShapeError(`loadStateDict: unexpected parameter '${name}'`);
      }
    }
    for (const [name, p] of own) {
      const src = entries.get(name);
      if (src) p.copy_(src as Tensor);
    }
  }

  /** Frees every parameter. The module cannot be used afterwards. */
  dispose(): void {
    for (const p of this.parameters()) p.dispose();
  }
}
