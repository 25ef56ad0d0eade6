/**
 * Functional ops (`duat.F`): the differentiable building blocks of models. Each runs one native
 * op whose backward is recorded beside its forward.
 */
import { ArgumentError } from './errors';
import { native } from './native';
import { nextSeed, Tensor, tensor } from './tensor';
import { checkBool, checkInt, checkNumber, checkOptions, describe, isInt32Array } from './validate';

function h(t: unknown, name: string) {
  if (!(t instanceof Tensor)) throw new ArgumentError(`Expected a tensor for ${name} but received ${describe(t)}`);
  return t.handle;
}
function hOrNull(t: unknown, name: string) {
  return t === undefined || t === null ? null : h(t, name);
}

/** x (..., in) @ weight(out, in)^T + bias(out). */
export function linear(x: Tensor, weight: Tensor, bias?: Tensor | null): Tensor {
  return new Tensor(native().linear(h(x, 'input'), h(weight, 'weight'), hOrNull(bias, 'bias')));
}

/** (..., M, K) @ (..., K, N). */
export function matmul(a: Tensor, b: Tensor): Tensor {
  return new Tensor(native().matmul(h(a, 'a'), h(b, 'b')));
}

/** GELU, erf form: x * Phi(x). */
export function gelu(x: Tensor): Tensor {
  return new Tensor(native().gelu(h(x, 'x')));
}

/** Softmax along `dim` (default last). */
export function softmax(x: Tensor, dim = -1): Tensor {
  return new Tensor(native().softmax(h(x, 'x'), dim));
}

/** Log-softmax along `dim` (default last). */
export function logSoftmax(x: Tensor, dim = -1): Tensor {
  return new Tensor(native().logSoftmax(h(x, 'x'), dim));
}

/**
 * LayerNorm over the last dimension: (x - mean) / sqrt(var + eps) * weight + bias. With
 * `residual` (R, C) and no affine, it normalises x + residual, where x (..., R, C) holds several
 * row sets sharing the residual (a Para-Former stage's x + a_n of every branch n, in one launch).
 */
export function layerNorm(x: Tensor, weight?: Tensor | null, bias?: Tensor | null, eps = 1e-6, residual?: Tensor | null): Tensor {
  return new Tensor(
    native().layerNorm(h(x, 'x'), hOrNull(weight, 'weight'), hOrNull(bias, 'bias'), checkNumber(eps, 'eps', Number.MIN_VALUE), hOrNull(residual, 'residual')),
  );
}

/** Options of {@link branchLinear}. */
export interface BranchLinearOptions {
  /** A LayerNorm's weight (N, C), folded into the product with `lnBias`; x is then the normalised input without its affine. */
  lnWeight?: Tensor | null;
  /** The LayerNorm's bias (N, C). */
  lnBias?: Tensor | null;
  /** Apply GELU (erf form) to the result. Default false. */
  gelu?: boolean;
  /** Lay the (N, R, O) result out in memory as (R, N*O), branch n at columns n*O. Default false. */
  interleaved?: boolean;
}

/**
 * The linear layers of N branches in one product: y_n = act(x_n W_n'^T + b_n'), with an optional
 * LayerNorm affine folded into W' and b'. x is (R, C) read by every branch or (N, R, C), one input
 * per branch; weight (N, O, C); bias (N, O) or null. Returns (N, R, O).
 */
export function branchLinear(x: Tensor, weight: Tensor, bias?: Tensor | null, options?: BranchLinearOptions): Tensor {
  const o = checkOptions<BranchLinearOptions>(options, 'branchLinear options');
  return new Tensor(
    native().branchLinear(h(x, 'x'), h(weight, 'weight'), hOrNull(bias, 'bias'), hOrNull(o.lnWeight, 'lnWeight'),
      hOrNull(o.lnBias, 'lnBias'), checkBool(o.gelu ?? false, 'gelu'), checkBool(o.interleaved ?? false, 'interleaved')),
  );
}

/**
 * A Para-Former stage's output in one product: x + scale * (sum_n h_n W2_n^T + b2 + sum_n a_n),
 * with x (R, C), h (N, R, M) the branches' MLP activations, w2 (C, N*M) their fc2 weights side by
 * side, b2 (C) their biases summed, a (N, R, C) their attention outputs. Returns (R, C).
 */
export function stageSum(x: Tensor, hidden: Tensor, w2: Tensor, b2: Tensor, a: Tensor, scale = 1): Tensor {
  return new Tensor(native().stageSum(h(x, 'x'), h(hidden, 'hidden'), h(w2, 'w2'), h(b2, 'b2'), h(a, 'a'), checkNumber(scale, 'scale')));
}

/**
 * Multi-head self-attention, one op: qkv (B, T, 3C) laid out [q | k | v] (timm's order) ->
 * softmax(Q K^T / sqrt(D)) V per head, heads concatenated: (B, T, C). With `branches` N, qkv is
 * (B, T, N*3C), branch n's [q | k | v] at columns n*3C.., and the result (B, T, N*C): every
 * branch's attention in the same launch.
 */
export function attention(qkv: Tensor, heads: number, branches = 1): Tensor {
  return new Tensor(native().attention(h(qkv, 'qkv'), checkInt(heads, 'heads', 1, 65536), checkInt(branches, 'branches', 1, 65536)));
}

/**
 * The attention probabilities (B, N*H, T, T) of attention(qkv, heads, branches): DUAT's
 * input-dependent parameters, branch-major.
 */
export function attentionProbs(qkv: Tensor, heads: number, branches = 1): Tensor {
  return new Tensor(native().attentionProbs(h(qkv, 'qkv'), checkInt(heads, 'heads', 1, 65536), checkInt(branches, 'branches', 1, 65536)));
}

/** Options of {@link crossEntropy}. */
export interface CrossEntropyOptions {
  /** Label smoothing in [0, 1): targets become (1 - s) one-hot + s / classes. Default 0. */
  labelSmoothing?: number;
}

/**
 * Mean cross-entropy of logits (B, classes) against class ids.
 * @param labels Int32Array or int32 tensor of B class ids in [0, classes)
 * @throws ArgumentError for a label out of range (naming its index)
 */
export function crossEntropy(logits: Tensor, labels: Int32Array | Tensor, options?: CrossEntropyOptions): Tensor {
  const opts = checkOptions<CrossEntropyOptions>(options, 'crossEntropy options');
  const smoothing = checkNumber(opts.labelSmoothing ?? 0, 'labelSmoothing', 0, 0.999999);
  const lh = h(logits, 'logits');
  if (isInt32Array(labels)) {
    const t = tensor(labels, [labels.length], { device: logits.device });
    try {
      return new Tensor(native().crossEntropy(lh, t.handle, smoothing));
    } finally {
      t.dispose();
    }
  }
  return new Tensor(native().crossEntropy(lh, h(labels, 'labels'), smoothing));
}

/** images (B, ch, S, S) -> (B, (S/P)^2, ch*P*P), patches in row-major grid order. */
export function patchify(images: Tensor, patchSize: number): Tensor {
  return new Tensor(native().patchify(h(images, 'images'), checkInt(patchSize, 'patchSize', 1, 65536)));
}

/** Conv(kernel = stride = P) as patchify + linear: images (B, ch, S, S), weight (C, ch, P, P) -> (B, T, C). */
export function patchEmbed(images: Tensor, weight: Tensor, bias: Tensor | null | undefined, patchSize: number): Tensor {
  return new Tensor(
    native().patchEmbed(h(images, 'images'), h(weight, 'weight'), hOrNull(bias, 'bias'), checkInt(patchSize, 'patchSize', 1, 65536)),
  );
}

/** Options of {@link dropout}. */
export interface DropoutOptions {
  /** Seed of the mask; default from the global generator. */
  seed?: number;
  /** When false, dropout is the identity. Default true. */
  training?: boolean;
}

/** Inverted dropout: zeroes with probability p and scales the rest by 1 / (1 - p). */
export function dropout(x: Tensor, p: number, options?: DropoutOptions): Tensor {
  const opts = checkOptions<DropoutOptions>(options, 'dropout options');
  checkNumber(p, 'p', 0, 0.999999);
  // p = 0 returns a new handle on the same native tensor: the identity, gradient included.
  if (opts.training === false || p === 0) return new Tensor(native().dropout(h(x, 'x'), 0, 0));
  const seed = opts.seed === undefined ? nextSeed() : checkInt(opts.seed, 'seed', 0, 2 ** 53 - 1);
  return new Tensor(native().dropout(h(x, 'x'), p, seed));
}

/** Concatenates tensors along `dim`. */
export function concat(tensors: Tensor[], dim = 0): Tensor {
  if (!Array.isArray(tensors)) throw new ArgumentError(`Expected an array of tensors for tensors but received ${describe(tensors)}`);
  return new Tensor(native().concat(tensors.map((t, i) => h(t, `tensors[${i}]`)), dim));
}
