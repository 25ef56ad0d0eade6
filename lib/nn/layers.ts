/**
 * Basic layers: Linear, LayerNorm. Initialisation follows timm's ViT: weights from a truncated
 * normal with std 0.02, biases zero, LayerNorm weight one.
 */
import * as F from '../functional';
import { ones, Tensor, truncNormal, zeros } from '../tensor';
import { checkInt, checkNumber, checkOptions } from '../validate';
import { Module } from './Module';

/** Options of {@link Linear}. */
export interface LinearOptions {
  /** Add a learned bias. Default true. */
  bias?: boolean;
  /** Seed of the weight init; default from the global generator. */
  seed?: number;
}

/** y = x W^T + b with W (out, in). */
export class Linear extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;
  constructor(readonly inFeatures: number, readonly outFeatures: number, options?: LinearOptions) {
    super();
    const opts = checkOptions<LinearOptions>(options, 'Linear options');
    checkInt(inFeatures, 'inFeatures', 1, 2 ** 24);
    checkInt(outFeatures, 'outFeatures', 1, 2 ** 24);
    this.weight = this.registerParameter('weight', truncNormal([outFeatures, inFeatures], { std: 0.02, a: -0.04, b: 0.04, seed: opts.seed }));
    this.bias = opts.bias === false ? null : this.registerParameter('bias', zeros([outFeatures]));
  }
  forward(x: Tensor): Tensor {
    return F.linear(x, this.weight, this.bias);
  }
}

/** LayerNorm over the last dimension, with learned weight and bias. */
export class LayerNorm extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor;
  constructor(readonly dim: number, readonly eps = 1e-6) {
    super();
    checkInt(dim, 'dim', 1, 2 ** 24);
    checkNumber(eps, 'eps', Number.MIN_VALUE);
    this.weight = this.registerParameter('weight', ones([dim]));
    this.bias = this.registerParameter('bias', zeros([dim]));
  }
  forward(x: Tensor): Tensor {
    return F.layerNorm(x, this.weight, this.bias, this.eps);
  }
}
