/**
 * ParaFormer: Para-Former-m-n, m stages of n parallel branches (docs/design.md, "The model"), and
 * the ViT it becomes with n = 1. The forward, backward and training step run in native code;
 * this class holds the parameters under their timm names, stacked over branches, and the native
 * model object that uses them.
 */
import { branchShare } from '../distributed';
import { ArgumentError, StateError } from '../errors';
import { ModelHandle, native, NativeModelConfig } from '../native';
import { concat } from '../functional';
import { Optimizer } from '../optim/Optimizer';
import { full, ones, rand, resolveDevice, Tensor, tensor, tidy, truncNormal, zeros } from '../tensor';
import { checkBool, checkInt, checkNumber, checkOneOf, checkOptions, describe, isFloat32Array, isInt32Array } from '../validate';
import { Module } from './Module';

/** Options of {@link ParaFormer}. Defaults: a small MNIST Para-Former-1-4. */
export interface ParaFormerOptions {
  /** Side of the square input images. Default 28. */
  imageSize?: number;
  /** Side of a patch; must divide imageSize. Default 4. */
  patchSize?: number;
  /** Image channels. Default 1. */
  channels?: number;
  /** Output classes. Default 10. */
  classes?: number;
  /** Token width C. Default 64. */
  dim?: number;
  /** Attention heads per branch; must divide dim. Default 4. */
  heads?: number;
  /** m: stages in series. Default 1. */
  depth?: number;
  /** n: parallel branches per stage (1 makes a ViT block). Default 4. */
  branches?: number;
  /** MLP width as a multiple of dim. Default 2. */
  mlpRatio?: number;
  /** How a stage combines its branches: 'sum' (default, docs/design.md) or 'mean' (1/n scaled). */
  combine?: 'sum' | 'mean';
  /**
   * LayerScale (DeiT-III, DINOv2): each branch's attention and MLP outputs scaled per channel by
   * learned gammas (`ls1.gamma`, `ls2.gamma`) that start at this value; 0 (the default): none.
   */
  layerScale?: number;
  /** A LayerNorm (`norm_pre`) after the embedding, as in CLIP image towers. Default false. */
  preNorm?: boolean;
  /** A bias in the patch embedding. Default true. */
  patchBias?: boolean;
  /**
   * What the head reads: 'token' (default), the class token through `norm`; 'avg', the mean of
   * the patch tokens through `fc_norm` (timm's global_pool 'avg').
   */
  pool?: 'token' | 'avg';
  /** LayerNorm epsilon. Default 1e-6 (timm); Hugging Face ViTs use 1e-12. */
  eps?: number;
  /** 'cpu' (default), 'cuda' or 'auto' (CUDA when a usable GPU is present). */
  device?: 'cpu' | 'cuda' | 'auto';
  /**
   * Matrix products: on CUDA 'tf32' (default, tensor cores), 'bf16' or 'fp32' (plain float32); on
   * the CPU 'bf16' uses AVX512_BF16 products with float32 sums where the CPU has them, the others
   * float32 (see {@link ParaFormer.setPrecision}).
   */
  precision?: 'fp32' | 'tf32' | 'bf16';
  /** Seed of the initialisation. Default 0. */
  seed?: number;
}

/** The resolved configuration (saved in checkpoints): every option, defaults filled in. */
export type ParaFormerConfig = Required<Omit<ParaFormerOptions, 'device' | 'precision'>>;

/**
 * What turns a picture into the model's input and its outputs into answers. fit() takes it from
 * the training set when the model has none; `duat.save` and training checkpoints keep it;
 * {@link ParaFormer.predict} and `duat predict` use it.
 */
export interface InputSpec {
  /** Per-channel mean of pixel values scaled to [0, 1]; one value serves every channel. */
  mean: number[];
  /** Per-channel standard deviation, likewise; every value positive. */
  std: number[];
  /** A name per class, in class order. */
  classNames?: string[];
}

/**
 * Checks an input spec against a model config; returns a copy.
 * @throws ArgumentError naming the field that does not fit
 */
export function checkInputSpec(value: unknown, config: ParaFormerConfig, name = 'inputSpec'): InputSpec {
  const o = checkOptions<InputSpec>(value, name);
  const values = (v: unknown, field: string, positive: boolean): number[] => {
    const ok = Array.isArray(v) && (v.length === 1 || v.length === config.channels) &&
      v.every((x) => typeof x === 'number' && Number.isFinite(x) && (!positive || x > 0));
    if (!ok) {
      throw new ArgumentError(`Expected ${name}.${field} to be 1 or ${config.channels} finite${positive ? ' positive' : ''} numbers but received ${describe(v)}`);
    }
    return [...(v as number[])];
  };
  const spec: InputSpec = { mean: values(o.mean, 'mean', false), std: values(o.std, 'std', true) };
  if (o.classNames !== undefined) {
    const names = o.classNames as unknown;
    if (!Array.isArray(names) || names.length !== config.classes || !names.every((s) => typeof s === 'string')) {
      throw new ArgumentError(`Expected ${name}.classNames to be ${config.classes} strings (one per class) but received ${describe(names)}`);
    }
    spec.classNames = [...names];
  }
  return spec;
}

/** One image's answer from {@link ParaFormer.predict}. */
export interface Prediction {
  /** The most probable class. */
  class: number;
  /** Its name (the class number as a string where the model has no names). */
  label: string;
  /** Its probability. */
  probability: number;
  /** Every class's probability (softmax of the logits), in class order. */
  probabilities: Float32Array;
}

/** Named sizes for presets: `mnist` (small, for 28 x 28 digits), ViT `tiny` and `small`. */
export const SIZES = {
  mnist: { dim: 64, heads: 4, mlpRatio: 2, patchSize: 4, imageSize: 28, channels: 1, classes: 10 },
  tiny: { dim: 192, heads: 3, mlpRatio: 4, patchSize: 16, imageSize: 224, channels: 3, classes: 1000 },
  small: { dim: 384, heads: 6, mlpRatio: 4, patchSize: 16, imageSize: 224, channels: 3, classes: 1000 },
} as const;

/** The name of a preset size: 'mnist', 'tiny' or 'small'. */
export type SizeName = keyof typeof SIZES;

/** Result of one training step. */
export interface StepResult {
  loss: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
  /** Correct predictions in the batch. */
  correct: number;
  /** The loss or the gradient norm was not finite (NaN or infinite), so the optimizer left the
   * parameters, its state and its step count as they were. Without an optimizer the gradients are
   * left in `.grad` as computed. */
  skipped: boolean;
}

/** Options of {@link ParaFormer.trainStep}. */
export interface TrainStepOptions {
  /** Updates the parameters on the worker thread after backward. Without one, the step computes
   * the loss and gradients and leaves the gradients in each parameter's `.grad`. */
  optimizer?: Optimizer<object>;
  /** Label smoothing in [0, 1). Default 0. */
  labelSmoothing?: number;
  /** Clip the global gradient norm to this (0 = off). Default 0. */
  clipGradNorm?: number;
  /**
   * Data-parallel training (docs/design.md, "Distributed training"): this batch is this rank's
   * shard of a global batch; the step sums every rank's gradients, loss and correct count,
   * weighted by shard size, so the result and the update are those of the whole batch on every
   * rank. A collective: every rank of the job (`duat.distributed.init()`) calls it. Default false.
   */
  dataParallel?: boolean;
}

/** @internal Where a branch-parallel share sits in the whole model: its first branch and the whole model's count. */
export interface BranchShard {
  offset: number;
  total: number;
}

/** @internal Whether a parameter is stacked over a stage's branches (leading dimension N). */
export function isBranchParameter(name: string): boolean {
  return name.startsWith('stages.');
}

/**
 * @internal Whether a parameter is one of a branch's two output projections (attn.proj, mlp.fc2;
 * weight and bias): zeroing a branch's rows of these makes f_b = 0 (docs/design.md).
 */
export function isBranchOutput(name: string): boolean {
  return /^stages\.\d+\.(attn\.proj|mlp\.fc2)\./.test(name);
}

/** The most probable `k` classes of a prediction, with their names where the model has them. */
export function topClasses(p: Prediction, k: number, classNames?: string[]): { class: number; label: string; probability: number }[] {
  return Array.from(p.probabilities, (probability, c) => ({ class: c, label: classNames?.[c] ?? String(c), probability }))
    .sort((a, b) => b.probability - a.probability)
    .slice(0, k);
}

/** DUAT's input-dependent parameters of one branch: its attention maps for an input. */
export interface BranchAttention {
  stage: number;
  branch: number;
  /** (B, heads, T+1, T+1), token 0 is the class token. */
  maps: Tensor;
}

function resolve(options: ParaFormerOptions | undefined): ParaFormerConfig {
  const o = checkOptions<ParaFormerOptions>(options, 'ParaFormer options');
  const big = 1 << 20;
  const c: ParaFormerConfig = {
    imageSize: checkInt(o.imageSize ?? 28, 'imageSize', 1, big),
    patchSize: checkInt(o.patchSize ?? 4, 'patchSize', 1, big),
    channels: checkInt(o.channels ?? 1, 'channels', 1, 4096),
    classes: checkInt(o.classes ?? 10, 'classes', 1, big),
    dim: checkInt(o.dim ?? 64, 'dim', 1, 65536),
    heads: checkInt(o.heads ?? 4, 'heads', 1, 4096),
    depth: checkInt(o.depth ?? 1, 'depth', 1, 4096),
    branches: checkInt(o.branches ?? 4, 'branches', 1, 4096),
    mlpRatio: checkNumber(o.mlpRatio ?? 2, 'mlpRatio', 1 / 64, 64),
    combine: checkOneOf(o.combine ?? 'sum', 'combine', ['sum', 'mean'] as const),
    layerScale: checkNumber(o.layerScale ?? 0, 'layerScale', 0, 1e6),
    preNorm: checkBool(o.preNorm ?? false, 'preNorm'),
    patchBias: checkBool(o.patchBias ?? true, 'patchBias'),
    pool: checkOneOf(o.pool ?? 'token', 'pool', ['token', 'avg'] as const),
    eps: checkNumber(o.eps ?? 1e-6, 'eps', 1e-30, 1),
    seed: checkInt(o.seed ?? 0, 'seed', 0, 2 ** 53 - 1),
  };
  if (c.imageSize % c.patchSize !== 0) {
    throw new ArgumentError(`Expected patchSize to divide imageSize (${c.imageSize}) but received ${describe(c.patchSize)}`);
  }
  if (c.dim % c.heads !== 0) throw new ArgumentError(`Expected heads to divide dim (${c.dim}) but received ${describe(c.heads)}`);
  if (!Number.isInteger(c.dim * c.mlpRatio)) {
    throw new ArgumentError(`Expected mlpRatio to make an integer MLP width from dim ${c.dim} but received ${describe(c.mlpRatio)}`);
  }
  return c;
}

const PRECISIONS = { fp32: 0, tf32: 1, bf16: 2 } as const;

/**
 * Para-Former-m-n: `depth` (m) stages, each summing `branches` (n) Transformer branches that all
 * read the stage's input, so a stage's branches run together. One native model object serves
 * every device: the parameters live on the model's device and every op, the autograd graph and
 * the training step run there.
 * @example
 * const model = new duat.ParaFormer({ depth: 1, branches: 4 });   // Para-Former-1-4 for MNIST
 * const logits = model.forward(images);                          // (B, 10)
 */
export class ParaFormer extends Module {
  readonly config: ParaFormerConfig;
  /** @internal Set on one rank's share of a branch-parallel model ({@link ParaFormer.shardOf}). */
  readonly shard?: BranchShard;
  private readonly model: ModelHandle;
  private busy = false;
  private spec?: InputSpec;
  private branchState = { active: 0, frozen: 0, embedding: false };

  constructor(options?: ParaFormerOptions, shard?: BranchShard) {
    super();
    this.config = resolve(options);
    this.shard = shard;
    const device = resolveDevice(options?.device);
    const precision = checkOneOf(options?.precision ?? 'tf32', 'precision', ['fp32', 'tf32', 'bf16'] as const);
    const spec = native().modelSpec(this.nativeConfig());
    let seed = this.config.seed * 1000;
    for (const { name, shape } of spec) this.registerParameter(name, name.endsWith('.gamma') ? full(shape, this.config.layerScale) : initFor(name, shape, seed++));
    this.model = native().modelCreate(this.nativeConfig(), this.parameters().map((p) => p.handle), PRECISIONS[precision]);
    if (device !== 'cpu') native().modelTo(this.model, device);
  }

  /**
   * A named preset: `'para-former-m-n'` or `'vit-m'` (n = 1), with a size from {@link SIZES}.
   * @example duat.ParaFormer.preset('para-former-2-3', 'mnist')
   */
  static preset(name: string, size: SizeName = 'mnist', overrides: ParaFormerOptions = {}): ParaFormer {
    const m = /^para-former-(\d+)-(\d+)$/.exec(String(name)) ?? /^vit-(\d+)()$/.exec(String(name));
    if (!m) throw new ArgumentError(`Expected a preset like 'para-former-2-3' or 'vit-6' for name but received ${describe(name)}`);
    checkOneOf(size, 'size', Object.keys(SIZES) as SizeName[]);
    return new ParaFormer({ ...SIZES[size], depth: Number(m[1]), branches: m[2] ? Number(m[2]) : 1, ...overrides });
  }

  /**
   * @internal The name and shape of every parameter the options describe, computed without
   * making the model (file loaders check a file against it before allocating anything).
   * @throws ArgumentError for options that describe no valid model
   */
  static parameterSpec(options: ParaFormerOptions): { name: string; shape: number[] }[] {
    const c = resolve(options);
    return native().modelSpec(nativeConfigOf(c));
  }

  /**
   * @internal The config the options resolve to, without making the model.
   * @throws ArgumentError for options that describe no valid model
   */
  static resolveConfig(options: ParaFormerOptions): ParaFormerConfig {
    return resolve(options);
  }

  /**
   * @internal One rank's share of `full` for branch-parallel training: the branches
   * {@link branchShare} gives `rank` of `size`, copied from `full`, in a model whose stages sum
   * their branches over the job's ranks (so its forward and training step are collectives).
   */
  static shardOf(full: ParaFormer, rank: number, size: number): ParaFormer {
    if (full.shard) throw new ArgumentError('Expected a whole model to share out but received a branch-parallel share');
    const { offset, count } = branchShare(full.config.branches, rank, size);
    const part = new ParaFormer({ ...full.config, branches: count, device: full.device }, { offset, total: full.config.branches });
    part.spec = full.spec;
    const views = new Map<string, Tensor>();
    for (const [name, p] of full.namedParameters()) views.set(name, isBranchParameter(name) ? p.slice(0, offset, offset + count) : p);
    try {
      part.loadStateDict(views);
    } finally {
      for (const [name, t] of views) if (isBranchParameter(name)) t.dispose();
    }
    return part;
  }

  /** The MLP width M. */
  get mlpHidden(): number {
    return Math.round(this.config.dim * this.config.mlpRatio);
  }

  /** @internal */
  nativeConfig(): NativeModelConfig {
    return nativeConfigOf(this.config, this.shard);
  }

  private checkIdle(what: string): void {
    if (this.busy) throw new StateError(`The model is in the middle of a training step; await it before you ${what}`);
  }

  /** Where the model's parameters live and its work runs: 'cpu' or 'cuda'. */
  get device(): 'cpu' | 'cuda' {
    return this.parameters()[0].device;
  }

  /**
   * Moves the parameters to `device` ('cpu', 'cuda' or 'auto'), in place: tensors taken from
   * namedParameters() before the move follow it. An optimizer's state follows at its next step.
   * @throws DeviceError when CUDA is asked for and unusable (saying why)
   * @throws StateError while a training step is in flight
   */
  to(device: 'cpu' | 'cuda' | 'auto'): this {
    const place = resolveDevice(device);
    this.checkIdle('move it');
    native().modelTo(this.model, place);
    return this;
  }

  /**
   * Sets the precision of matrix products: on CUDA 'tf32', 'bf16' or 'fp32'; on the CPU 'bf16'
   * rounds the operands of the large products to bf16 and sums in float32 where the CPU has
   * AVX512_BF16 (`backendInfo().cpu.bf16`), with float32 weights, gradients and optimizer state;
   * 'tf32' and 'fp32' compute in float32 there.
   */
  setPrecision(precision: 'fp32' | 'tf32' | 'bf16'): this {
    this.checkIdle('change its precision');
    native().modelSetPrecision(this.model, PRECISIONS[checkOneOf(precision, 'precision', ['fp32', 'tf32', 'bf16'] as const)]);
    return this;
  }

  /**
   * Branches of every stage that compute: all of them unless {@link setActiveBranches} said
   * fewer (progressive training).
   */
  get activeBranches(): number {
    return this.branchState.active || this.config.branches;
  }

  /** Leading branches of every stage that optimizers leave as they are ({@link freezeBranches}). */
  get frozenBranches(): number {
    return this.branchState.frozen;
  }

  /** Whether optimizers leave the embedding (patch embedding, class token, positions) as it is. */
  get embeddingFrozen(): boolean {
    return this.branchState.embedding;
  }

  /**
   * Makes every stage compute only its first `count` branches (all of them: the model's
   * `branches`): the others cost nothing, get no gradient and are not updated, and the model's
   * function is that of {@link selectBranches} of the first `count`. fit()'s progressive schedule
   * sets it step by step (docs/design.md, "Branches").
   * @throws ArgumentError for a count out of range or below the frozen branches
   */
  setActiveBranches(count: number): this {
    const k = checkInt(count, 'count', 1, this.config.branches);
    if (k < this.branchState.frozen) throw new ArgumentError(`Expected at least the ${this.branchState.frozen} frozen branches to stay active but received ${k}`);
    return this.applyBranchState({ ...this.branchState, active: k === this.config.branches ? 0 : k });
  }

  /**
   * Freezes the first `count` branches of every stage (0 unfreezes): optimizers, in fit() and in
   * {@link trainStep} or `opt.step()`, leave their parameters and state as they are, and their
   * gradients do not count in the gradient norm; the other branches, the final norm and the head
   * train. With `embedding: true` the patch embedding, class token and positions are frozen too.
   * Continual learning ({@link addBranches} with `freezeExisting`) and progressive training use it.
   * @throws ArgumentError for a count above the active branches
   */
  freezeBranches(count: number, options?: { embedding?: boolean }): this {
    const o = checkOptions<{ embedding?: boolean }>(options, 'freezeBranches options');
    const n = checkInt(count, 'count', 0, this.activeBranches);
    return this.applyBranchState({ ...this.branchState, frozen: n, embedding: checkBool(o.embedding ?? false, 'embedding') });
  }

  private applyBranchState(state: { active: number; frozen: number; embedding: boolean }): this {
    this.checkIdle('change its active or frozen branches');
    if (this.shard && (state.active !== 0 || state.frozen !== 0)) throw new ArgumentError('a branch-parallel share trains all its branches');
    native().modelSetBranches(this.model, state.active, state.frozen, state.embedding);
    this.branchState = state;
    return this;
  }

  override dispose(): void {
    if (!this.busy) native().modelDispose(this.model);
    super.dispose();
  }

  /**
   * images (B, channels, S, S) -> logits (B, classes), on the model's device (images elsewhere are
   * copied there). Records the graph unless called under noGrad, on every device, so
   * `loss.backward()` and a custom training loop work on CUDA as on the CPU. Under noGrad a model
   * pooled by its class token computes its last stage for that token alone past attention's keys
   * and values (the same logits, for a fraction of the work: docs/design.md).
   */
  forward(images: Tensor): Tensor {
    if (!(images instanceof Tensor)) throw new ArgumentError(`Expected a tensor for images but received ${describe(images)}`);
    this.checkIdle('use it');
    return new Tensor(native().modelForward(this.model, images.handle));
  }

  /**
   * DUAT's input-dependent parameters: every stage's and branch's attention maps for `images`.
   */
  dynamicParameters(images: Tensor): BranchAttention[] {
    if (!(images instanceof Tensor)) throw new ArgumentError(`Expected a tensor for images but received ${describe(images)}`);
    this.checkIdle('use it');
    const maps = native().modelAttentionMaps(this.model, images.handle).map((h) => new Tensor(h));
    const H = this.config.heads;
    const out: BranchAttention[] = [];
    maps.forEach((all, stage) => {
      for (let branch = 0; branch < this.config.branches; branch++) {
        out.push({ stage, branch, maps: all.slice(1, branch * H, (branch + 1) * H).contiguous() });
      }
      all.dispose();
    });
    return out;
  }

  /**
   * One training step on a worker thread (the event loop stays free), on the model's device:
   * forward, cross-entropy, backward, optional clipping, and the optimiser's update (the same
   * native update as `optimizer.step()`, every group option honoured). Without an optimizer the
   * gradients stay in each parameter's `.grad`. Until the returned Promise settles the model is
   * locked: using it, or any of its parameters, throws a StateError.
   */
  async trainStep(images: Tensor, labels: Tensor | Int32Array, options?: TrainStepOptions): Promise<StepResult> {
    const o = checkOptions<TrainStepOptions>(options, 'trainStep options');
    if (!(images instanceof Tensor)) throw new ArgumentError(`Expected a tensor for images but received ${describe(images)}`);
    if (o.optimizer !== undefined && !(o.optimizer instanceof Optimizer)) {
      throw new ArgumentError(`Expected an optimizer for optimizer but received ${describe(o.optimizer)}`);
    }
    const smoothing = checkNumber(o.labelSmoothing ?? 0, 'labelSmoothing', 0, 0.999999);
    const clip = checkNumber(o.clipGradNorm ?? 0, 'clipGradNorm', 0);
    const dataParallel = checkBool(o.dataParallel ?? false, 'dataParallel');
    if (o.optimizer) {
      const own = new Set(this.parameters());
      o.optimizer.groups.forEach((g, gi) => g.params.forEach((p, i) => {
        if (!own.has(p)) throw new ArgumentError(`optimizer parameter params[${gi}][${i}] is not a parameter of this model`);
      }));
    }
    this.checkIdle('start another step');
    const y = isInt32Array(labels) ? tensor(labels, [labels.length]) : labels;
    if (!(y instanceof Tensor)) throw new ArgumentError(`Expected an Int32Array or tensor for labels but received ${describe(labels)}`);
    const site = new Error('trainStep called here');
    const settle = () => {
      if (isInt32Array(labels)) y.dispose();
    };
    let pending;
    try {
      pending = native().modelTrainStepAsync(this.model, images.handle, y.handle, o.optimizer?.handle ?? null,
        o.optimizer?.nativeGroups() ?? null, smoothing, clip, dataParallel);
    } catch (e) {
      settle();
      throw e;
    }
    this.busy = true;
    try {
      return await pending;
    } catch (e) {
      if (e instanceof Error && site.stack) e.stack = `${e.stack}\n    --- async ---\n${site.stack.split('\n').slice(1).join('\n')}`;
      throw e;
    } finally {
      this.busy = false;
      settle();
    }
  }

  /** Evaluates a batch on a worker thread: summed loss (when labels are given), correct count, predictions. */
  async evaluate(images: Tensor, labels?: Tensor | Int32Array): Promise<{ lossSum: number; correct: number; predictions: Int32Array }> {
    if (!(images instanceof Tensor)) throw new ArgumentError(`Expected a tensor for images but received ${describe(images)}`);
    const { lossSum, correct, predictions } = await this.evaluateOnWorker(images, labels, false);
    return { lossSum, correct, predictions };
  }

  /**
   * The input spec saved with the model (normalisation and class names), or undefined. Setting it
   * checks it against the config.
   */
  get inputSpec(): InputSpec | undefined {
    return this.spec && { ...this.spec, mean: [...this.spec.mean], std: [...this.spec.std], ...(this.spec.classNames ? { classNames: [...this.spec.classNames] } : {}) };
  }

  set inputSpec(value: InputSpec | undefined) {
    this.spec = value === undefined ? undefined : checkInputSpec(value, this.config);
  }

  /**
   * Classifies images on a worker thread (the event loop stays free): pixel values in [0, 1],
   * (N, channels, size, size) or one image of (channels, size, size), as a Float32Array or a tensor,
   * normalised with the model's {@link inputSpec} (as is where it has none, or with
   * `normalized: true`). Returns each image's class, name and probabilities.
   * @example
   * const [p] = await model.predict(pixels);   // { class: 7, label: '7', probability: 0.99, probabilities }
   * @throws ArgumentError when the images do not have the model's channels and size
   */
  async predict(images: Float32Array | Tensor, options?: { normalized?: boolean }): Promise<Prediction[]> {
    const o = checkOptions<{ normalized?: boolean }>(options, 'predict options');
    const normalized = o.normalized === undefined ? false : checkBool(o.normalized, 'normalized');
    const { channels: C, imageSize: S, classes: K } = this.config;
    const per = C * S * S;
    let data: Float32Array;
    if (images instanceof Tensor) {
      const s = images.shape;
      const ok = images.dtype === 'float32' && (s.length === 3 || s.length === 4) && s[s.length - 3] === C && s[s.length - 2] === S && s[s.length - 1] === S;
      if (!ok) throw new ArgumentError(`Expected float32 images of shape (N, ${C}, ${S}, ${S}) or (${C}, ${S}, ${S}) but received ${describe(images)}`);
      data = images.toArray() as Float32Array;
    } else if (isFloat32Array(images) && images.length > 0 && images.length % per === 0) {
      data = images;
    } else {
      throw new ArgumentError(`Expected a Float32Array of N x ${C} x ${S} x ${S} pixel values (N >= 1) but received ${describe(images)}`);
    }
    const N = data.length / per;
    if (!normalized) data = this.normalize(data);
    const x = tensor(data, [N, C, S, S], { device: this.device });
    let r;
    try {
      r = await this.evaluateOnWorker(x, undefined, true);
    } finally {
      x.dispose();
    }
    const probs = r.probabilities as Float32Array;
    return Array.from({ length: N }, (_, i) => {
      const k = r.predictions[i];
      return { class: k, label: this.spec?.classNames?.[k] ?? String(k), probability: probs[i * K + k], probabilities: probs.slice(i * K, (i + 1) * K) };
    });
  }

  /**
   * A Para-Former-m-k with the branches `keep` names: the same indices in every stage (number[])
   * or per stage (number[][], each of the same length k). With combine 'sum' it computes this
   * model's function without the dropped branches' terms; with 'mean' it averages the k kept
   * ones. The input spec goes with it; this model is left as it is. duat.compress ranks branches.
   * @throws ArgumentError for indices out of range, repeated, or of different counts per stage
   */
  selectBranches(keep: number[] | number[][]): ParaFormer {
    const { depth, branches } = this.config;
    if (!Array.isArray(keep) || keep.length === 0) throw new ArgumentError(`Expected branch indices (one list, or one per stage) but received ${describe(keep)}`);
    const perStage: number[][] = keep.every((k) => Array.isArray(k)) ? (keep as number[][]) : Array.from({ length: depth }, () => keep as number[]);
    if (perStage.length !== depth) throw new ArgumentError(`Expected one list of branches for each of the ${depth} stages but received ${perStage.length}`);
    const k = perStage[0].length;
    perStage.forEach((list, s) => {
      if (!Array.isArray(list) || list.length !== k || k === 0) throw new ArgumentError(`Expected ${k || 'at least one'} branches for every stage but stage ${s} keeps ${describe(list)}`);
      list.forEach((b) => checkInt(b, `stage ${s}'s branch`, 0, branches - 1));
      if (new Set(list).size !== k) throw new ArgumentError(`stage ${s} keeps a branch twice: [${list.join(', ')}]`);
    });
    this.checkIdle('select its branches');
    return this.withBranches(k, (name, p) => concat(perStage[Number(name.split('.')[1])].map((b) => p.slice(0, b, b + 1)), 0));
  }

  /**
   * A Para-Former-m-(n+count): this model's branches and `count` new ones in every stage, for
   * continual learning (the follow-up paper's expansion). A new branch starts with zero output
   * (its attention projection and fc2 zeroed; the rest initialised as a fresh model's, from
   * `seed`), so the new model computes this one's function until it trains. With
   * `freezeExisting` the new model's first n branches are frozen ({@link freezeBranches}): the
   * new ones, the embedding, the final norm and the head train. Only for combine 'sum': with 'mean' the 1/n
   * would change. This model is left as it is.
   * @throws ArgumentError for a count out of range or combine 'mean'
   */
  addBranches(count: number, options?: { seed?: number; freezeExisting?: boolean }): ParaFormer {
    const n = checkInt(count, 'count', 1, 4096 - this.config.branches);
    const o = checkOptions<{ seed?: number; freezeExisting?: boolean }>(options, 'addBranches options');
    const freeze = checkBool(o.freezeExisting ?? false, 'freezeExisting');
    if (this.config.combine !== 'sum') throw new ArgumentError("addBranches keeps the model's function only for combine 'sum' (with 'mean' every branch's share would change)");
    this.checkIdle('add branches to it');
    const N = this.config.branches;
    const seed = o.seed === undefined ? this.config.seed + 1 : checkInt(o.seed, 'seed', 0, 2 ** 53 - 1);
    const fresh = new ParaFormer({ ...this.config, branches: n, seed, device: this.device });
    try {
      const added = new Map(fresh.namedParameters());
      const out = this.withBranches(N + n, (name, p) => {
        const extra = added.get(name)!;
        return concat([p, isBranchOutput(name) ? zeros(extra.shape, { device: this.device }) : extra], 0);
      });
      return freeze ? out.freezeBranches(N) : out;
    } finally {
      fresh.dispose();
    }
  }

  /**
   * A copy of this model with a fresh head for `classes` classes (fine-tuning on another task):
   * every other parameter copied, the head initialised as a new model's (from the config's seed).
   * The input spec goes with it without class names. This model is left as it is.
   * @throws ArgumentError for a class count out of range
   */
  withClasses(classes: number): ParaFormer {
    const k = checkInt(classes, 'classes', 1, 1 << 20);
    this.checkIdle('copy it');
    const out = new ParaFormer({ ...this.config, classes: k, device: this.device });
    try {
      out.loadStateDict(new Map(this.namedParameters().filter(([n]) => !n.startsWith('head.'))), false);
    } catch (e) {
      out.dispose();
      throw e;
    }
    if (this.spec) out.spec = { mean: this.spec.mean, std: this.spec.std };
    return out;
  }

  /**
   * This model's config with `count` branches, its shared parameters and input spec, and each
   * branch-stacked parameter made by `rows` from this model's (inside a tidy).
   */
  private withBranches(count: number, rows: (name: string, p: Tensor) => Tensor): ParaFormer {
    const out = new ParaFormer({ ...this.config, branches: count, device: this.device });
    try {
      tidy(() => {
        const sd = new Map(this.namedParameters());
        for (const [name, p] of sd) if (isBranchParameter(name)) sd.set(name, rows(name, p));
        out.loadStateDict(sd);
      });
    } catch (e) {
      out.dispose();
      throw e;
    }
    out.spec = this.spec;
    return out;
  }

  /**
   * Pixel values in [0, 1] of images (N, channels, size, size) normalised with the model's
   * {@link inputSpec}: (v - mean[c]) / std[c]; a copy as is where the model has none.
   */
  normalize(pixels: Float32Array): Float32Array {
    const spec = this.spec;
    if (!spec) return pixels.slice();
    const { channels: C, imageSize: S } = this.config;
    const out = new Float32Array(pixels.length), plane = S * S;
    for (let start = 0, c = 0; start < pixels.length; start += plane, c = (c + 1) % C) {
      const mean = spec.mean[spec.mean.length === 1 ? 0 : c], std = spec.std[spec.std.length === 1 ? 0 : c];
      for (let i = start; i < start + plane; i++) out[i] = (pixels[i] - mean) / std;
    }
    return out;
  }

  private async evaluateOnWorker(images: Tensor, labels: Tensor | Int32Array | undefined, probabilities: boolean) {
    this.checkIdle(probabilities ? 'predict with it' : 'evaluate it');
    const y = isInt32Array(labels) ? tensor(labels, [labels.length]) : labels;
    const settle = () => {
      if (isInt32Array(labels) && y) y.dispose();
    };
    let pending;
    try {
      pending = native().modelEvaluateAsync(this.model, images.handle, y ? y.handle : null, probabilities);
    } catch (e) {
      settle();
      throw e;
    }
    this.busy = true;
    try {
      return await pending;
    } finally {
      this.busy = false;
      settle();
    }
  }

  /** Parameter names that take no weight decay: norms, biases, LayerScale gammas, the class token and positions. */
  noDecayNames(): string[] {
    return this.namedParameters()
      .map(([n]) => n)
      .filter((n) => n.endsWith('.bias') || n.includes('norm') || n.endsWith('.gamma') || n === 'cls_token' || n === 'pos_embed');
  }
}

function nativeConfigOf(c: ParaFormerConfig, shard?: BranchShard): NativeModelConfig {
  return {
    imageSize: c.imageSize,
    patchSize: c.patchSize,
    channels: c.channels,
    classes: c.classes,
    dim: c.dim,
    heads: c.heads,
    depth: c.depth,
    branches: c.branches,
    mlpHidden: Math.round(c.dim * c.mlpRatio),
    eps: c.eps,
    branchScale: c.combine === 'mean' ? 1 / (shard?.total ?? c.branches) : 1,
    branchParallel: shard !== undefined,
    layerScale: c.layerScale > 0,
    preNorm: c.preNorm,
    patchBias: c.patchBias,
    avgPool: c.pool === 'avg',
  };
}

/**
 * timm's ViT initialisation: linear weights from a truncated normal (std 0.02), zero biases, unit
 * norms; the patch embedding keeps PyTorch's Conv2d default, U(+-1/sqrt(fan_in)) for weight and bias.
 */
let patchFanIn = 1;  // the weight's fan-in, set before its bias is made (spec order)

function initFor(name: string, shape: number[], seed: number): Tensor {
  if (/(^|\.)(norm1|norm2|norm|norm_pre|fc_norm)\.weight$/.test(name)) return ones(shape);
  if (name.startsWith('patch_embed.')) {
    const fanIn = name.endsWith('.weight') ? shape.slice(1).reduce((a, b) => a * b, 1) : patchFanIn;
    const bound = 1 / Math.sqrt(fanIn);
    if (name.endsWith('.weight')) patchFanIn = fanIn;
    return rand(shape, { low: -bound, high: bound, seed });
  }
  if (name.endsWith('.bias')) return zeros(shape);
  if (name === 'cls_token') return truncNormal(shape, { std: 1e-6, a: -2e-6, b: 2e-6, seed });
  return truncNormal(shape, { std: 0.02, a: -0.04, b: 0.04, seed });
}
