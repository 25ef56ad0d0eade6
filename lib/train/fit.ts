/**
 * Training: fit() runs epochs of training steps (each on a native worker thread, so the event
 * loop stays free), builds the next batch while a step runs, follows a warm-up + cosine
 * schedule, evaluates each epoch, writes metrics (JSON Lines), checkpoints and a training-curve
 * plot, and can be stopped with an AbortSignal and resumed exactly from a checkpoint.
 */
import * as fs from 'fs';
import * as path from 'path';

import * as distributed from '../distributed';
import { ArgumentError, CheckpointError, NumericError } from '../errors';
import { Batches, Dataset } from '../data/dataset';
import { ImageStream, isImageStream } from '../data/stream';
import { loadSafetensors, saveSafetensors } from '../io/safetensors';
import { isBranchOutput, ParaFormer, ParaFormerOptions } from '../nn/ParaFormer';
import { concat } from '../functional';
import { inputMetadata, readInputSpec } from '../io/model';
import { AdamW, SGD } from '../optim/optimizers';
import { Tensor, tensor, tidy, zeros } from '../tensor';
import { checkBool, checkInt, checkNumber, checkOneOf, checkOptions, describe } from '../validate';
import { broadcastParameters, gatherEntries, gatherInto, ParallelMode, shareOptimizerState, sumOverRanks } from './parallel';
import { curveSvg } from './plot';
import { Progress } from './progress';

/** Options of {@link fit}. */
export interface FitOptions {
  /** Passes over the training set. Default 10. */
  epochs?: number;
  /** Default 128. */
  batchSize?: number;
  /** 'adamw' (default) or 'sgd' (momentum 0.9, Nesterov). */
  optimizer?: 'adamw' | 'sgd';
  /** Peak learning rate. Default 1e-3 (AdamW), 0.05 (SGD). */
  lr?: number;
  /** Final learning rate of the cosine schedule. Default lr / 100. */
  minLr?: number;
  /** Linear warm-up steps. Default 200. */
  warmupSteps?: number;
  /** 'cosine' (default) or 'step' (x0.1 at 50% and 75% of training). */
  schedule?: 'cosine' | 'step';
  /** Decoupled weight decay, not applied to norms, biases, the class token or positions. Default 0.05. */
  weightDecay?: number;
  /** Label smoothing. Default 0. */
  labelSmoothing?: number;
  /** Global gradient-norm clipping (0 = off, the default, as in PyTorch). */
  clipGradNorm?: number;
  /** Random shifts of up to this many pixels. Default 0. */
  shift?: number;
  /** Random horizontal flips. Default false. */
  flip?: boolean;
  /** Seed of batch order and augmentation. Default 0. */
  seed?: number;
  /** Stop after this many steps in total (for tests and budgets). */
  maxSteps?: number;
  /** Directory for metrics.jsonl, checkpoint.safetensors, model.safetensors and curve.svg. */
  runDir?: string;
  /** Save a training checkpoint every this many steps (and at each epoch's end). Default: epochs only. */
  checkpointEvery?: number;
  /** A training checkpoint to continue from exactly. */
  resume?: string;
  /** Stops training after the current step; fit() resolves with what it has. */
  signal?: AbortSignal;
  /** Called after every step. */
  onStep?: (m: StepMetrics) => void;
  /** Called after every epoch's evaluation. */
  onEpoch?: (m: EpochMetrics) => void;
  /** Show progress on stderr: a line redrawn in place on a terminal. Default true. */
  progress?: boolean;
  /**
   * Where stderr is not a terminal (a log file, CI): print a progress line every this many
   * seconds (0: none). Default 0; `duat train` uses 30.
   */
  progressEvery?: number;
  /** Evaluation batch size. Default 500. */
  evalBatchSize?: number;
  /** Batches a streamed training set decodes ahead of the step (bounded memory). Default 2. */
  prefetch?: number;
  /**
   * What a step whose loss or gradient norm is NaN or infinite does. Such a step never changes the
   * model (the update is skipped on the device). 'stop' (the default) then throws a
   * {@link NumericError} naming the step; 'skip' goes on with the next batch and counts it in
   * {@link FitResult.skippedSteps}.
   */
  onNan?: 'stop' | 'skip';
  /**
   * Training over the processes of an MPI job (docs/design.md, "Distributed training"; start them
   * with mpirun, every rank calling fit() with the same arguments): 'data' shards every batch over
   * the ranks and sums their gradients; 'branches' gives each rank a share of every stage's
   * branches and the whole batch. Either gives the single-process result (to float32 rounding);
   * rank 0 alone writes files and shows progress, and `model` holds the trained parameters on
   * every rank when fit() returns. 'none' (the default) trains in this process alone.
   */
  parallel?: ParallelMode;
  /**
   * Progressive approximation (the follow-up paper; docs/design.md, "Branches"): every stage
   * starts with its first `start` branches and activates `add` more every `every` epochs (or
   * steps); the branches not yet active cost no compute. Not with parallel 'branches'.
   */
  progressive?: ProgressiveOptions;
}

/** The schedule of progressive training ({@link FitOptions.progressive}). */
export interface ProgressiveOptions {
  /** Branches per stage active from the first step. Default 1. */
  start?: number;
  /** Branches per stage activated at each later phase. Default 1. */
  add?: number;
  /** The length of a phase, in `unit`s. */
  every: number;
  /** 'epochs' (default) or 'steps'. */
  unit?: 'epochs' | 'steps';
  /** Freeze the branches of earlier phases when a phase starts (only the newest train). Default false. */
  freeze?: boolean;
  /**
   * New branches start with zero output (their attention projection and fc2 zeroed at the start
   * of training), so the model's function is unchanged when they join. Default true.
   */
  zeroInit?: boolean;
}

/** The active and frozen branches per stage at a step of a progressive schedule. */
export function progressivePhase(p: Required<ProgressiveOptions>, branches: number, stepsPerEpoch: number, step: number): { phase: number; active: number; frozen: number } {
  const length = p.every * (p.unit === 'epochs' ? stepsPerEpoch : 1);
  const last = Math.ceil((branches - p.start) / p.add);
  const phase = Math.min(Math.floor(step / length), last);
  const activeAt = (k: number) => Math.min(branches, p.start + p.add * k);
  return { phase, active: activeAt(phase), frozen: p.freeze && phase > 0 ? activeAt(phase - 1) : 0 };
}

export interface StepMetrics {
  step: number;
  epoch: number;
  batch: number;
  loss: number;
  accuracy: number;
  lr: number;
  gradNorm: number;
  ms: number;
  /** Milliseconds this step waited for its batch. */
  waitMs: number;
  /** The loss or gradient norm was not finite and the update was skipped. */
  skipped: boolean;
}

export interface EvalResult {
  loss: number;
  accuracy: number;
  count: number;
  /** confusion[true][predicted] */
  confusion: number[][];
}

export interface EpochMetrics {
  epoch: number;
  /** Branches per stage that computed at the epoch's end (progressive training). */
  activeBranches?: number;
  step: number;
  trainLoss: number;
  trainAccuracy: number;
  test?: EvalResult;
  seconds: number;
}

export interface FitResult {
  history: EpochMetrics[];
  steps: number;
  seconds: number;
  aborted: boolean;
  /** Every step's loss, in order (for tests and plots). */
  losses: number[];
  /** Steps whose update was skipped because the loss or gradient norm was not finite (onNan: 'skip'). */
  skippedSteps: number;
  /** Seconds the steps waited for their batch (a streamed data set decoding slower than training). */
  dataWaitSeconds: number;
  test?: EvalResult;
}

/** A data set in memory, or streamed from image files ({@link ImageStream}). */
export type Data = Dataset | ImageStream;

type Batch = { images: Tensor; labels: Tensor };

/**
 * Batches made ahead of the step that will use them: up to `depth` after the one taken, every
 * `stride`-th. In-memory batches are made on this thread (depth 1: while the step runs); a
 * stream's decode on its worker threads.
 */
class Ahead {
  private readonly made = new Map<number, Promise<Batch>>();

  constructor(private readonly batches: Batches, private readonly part: { index: number; count: number } | undefined,
    private readonly depth: number, private readonly stride = 1) {}

  private start(k: number): void {
    if (this.made.has(k) || k >= this.batches.count) return;
    const p = this.batches.load(k, this.part);
    p.catch(() => undefined);  // handled where it is taken; a batch never taken must not crash the process
    this.made.set(k, p);
  }

  /** Batch k (waiting for it where it is still being made). */
  take(k: number): Promise<Batch> {
    this.start(k);
    const p = this.made.get(k)!;
    this.made.delete(k);
    return p;
  }

  /** Starts the batches after k, up to the depth. */
  fill(k: number): void {
    for (let j = 1; j <= this.depth; j++) this.start(k + j * this.stride);
  }

  /** Frees what was made ahead and not taken. */
  async drop(): Promise<void> {
    const pending = [...this.made.values()];
    this.made.clear();
    for (const p of pending) {
      try {
        const b = await p;
        b.images.dispose();
        b.labels.dispose();
      } catch {
        // a batch that failed to load holds nothing
      }
    }
  }
}

/**
 * Evaluation totals over batches first, first + stride, ... of a data set: [lossSum, correct,
 * confusion[true][predicted] row by row].
 */
async function evaluationTotals(model: ParaFormer, data: Data, batchSize: number, first: number, stride: number): Promise<number[]> {
  const batches = new Batches(data, 0, { batchSize, shuffle: false });
  const K = model.config.classes;
  const totals = new Array<number>(2 + K * K).fill(0);
  const ahead = new Ahead(batches, undefined, isImageStream(data) ? 2 : 0, stride);
  try {
    for (let k = first; k < batches.count; k += stride) {
      const { images, labels } = await ahead.take(k);
      ahead.fill(k);
      try {
        const r = await model.evaluate(images, labels);
        totals[0] += r.lossSum;
        totals[1] += r.correct;
        const y = labels.toInt32Array();
        r.predictions.forEach((p, i) => {
          if (y[i] < K && p < K) totals[2 + y[i] * K + p]++;
        });
      } finally {
        images.dispose();
        labels.dispose();
      }
    }
  } catch (e) {
    await ahead.drop();
    throw e;
  }
  return totals;
}

/** The result of evaluation totals; the count is the images evaluated (a stream may skip unreadable files). */
function evalResult(totals: number[], K: number): EvalResult {
  const confusion = Array.from({ length: K }, (_, i) => totals.slice(2 + i * K, 2 + (i + 1) * K));
  const count = confusion.flat().reduce((a, b) => a + b, 0);
  return { loss: totals[0] / count, accuracy: totals[1] / count, count, confusion };
}

/** Evaluates a model on a data set (in memory or streamed), batch by batch on worker threads. */
export async function evaluate(model: ParaFormer, data: Data, batchSize = 500): Promise<EvalResult> {
  return evalResult(await evaluationTotals(model, data, batchSize, 0, 1), model.config.classes);
}

/** fit() options with every default filled in (saved in training checkpoints). */
export interface ResolvedFitOptions {
  epochs: number;
  batchSize: number;
  optimizer: 'adamw' | 'sgd';
  lr: number;
  minLr: number;
  warmupSteps: number;
  schedule: 'cosine' | 'step';
  weightDecay: number;
  labelSmoothing: number;
  clipGradNorm: number;
  shift: number;
  flip: boolean;
  seed: number;
  maxSteps: number;
  checkpointEvery: number;
  evalBatchSize: number;
  onNan: 'stop' | 'skip';
  progressive: Required<ProgressiveOptions> | null;
}

type Resolved = ResolvedFitOptions;

/**
 * Checks fit() options and fills in the defaults, without training: callers that create files
 * before training (the CLI's run folder) check first, so bad options leave nothing behind.
 * @throws ArgumentError naming the first bad option
 */
export function resolveFitOptions(options?: FitOptions): Resolved {
  return resolve(checkOptions<FitOptions>(options, 'fit options'));
}

function resolve(o: Partial<FitOptions>): Resolved {
  const optimizer = checkOneOf(o.optimizer ?? 'adamw', 'optimizer', ['adamw', 'sgd'] as const);
  const lr = checkNumber(o.lr ?? (optimizer === 'adamw' ? 1e-3 : 0.05), 'lr', 0);
  return {
    epochs: checkInt(o.epochs ?? 10, 'epochs', 1, 1e6),
    batchSize: checkInt(o.batchSize ?? 128, 'batchSize', 1, 1 << 20),
    optimizer,
    lr,
    minLr: checkNumber(o.minLr ?? lr / 100, 'minLr', 0),
    warmupSteps: checkInt(o.warmupSteps ?? 200, 'warmupSteps', 0, 1e9),
    schedule: checkOneOf(o.schedule ?? 'cosine', 'schedule', ['cosine', 'step'] as const),
    weightDecay: checkNumber(o.weightDecay ?? 0.05, 'weightDecay', 0),
    labelSmoothing: checkNumber(o.labelSmoothing ?? 0, 'labelSmoothing', 0, 0.999999),
    clipGradNorm: checkNumber(o.clipGradNorm ?? 0, 'clipGradNorm', 0),
    shift: checkInt(o.shift ?? 0, 'shift', 0, 64),
    flip: checkBool(o.flip ?? false, 'flip'),
    seed: checkInt(o.seed ?? 0, 'seed', 0, 2 ** 53 - 1),
    maxSteps: checkInt(o.maxSteps ?? Number.MAX_SAFE_INTEGER, 'maxSteps', 1, Number.MAX_SAFE_INTEGER),
    checkpointEvery: checkInt(o.checkpointEvery ?? 0, 'checkpointEvery', 0, 1e9),
    evalBatchSize: checkInt(o.evalBatchSize ?? 500, 'evalBatchSize', 1, 1 << 20),
    onNan: checkOneOf(o.onNan ?? 'stop', 'onNan', ['stop', 'skip'] as const),
    progressive: o.progressive === undefined || o.progressive === null ? null : resolveProgressive(o.progressive),
  };
}

function resolveProgressive(value: unknown): Required<ProgressiveOptions> {
  const p = checkOptions<ProgressiveOptions>(value, 'progressive');
  return {
    start: checkInt(p.start ?? 1, 'progressive.start', 1, 4096),
    add: checkInt(p.add ?? 1, 'progressive.add', 1, 4096),
    every: checkInt(p.every, 'progressive.every', 1, 1e9),
    unit: checkOneOf(p.unit ?? 'epochs', 'progressive.unit', ['epochs', 'steps'] as const),
    freeze: checkBool(p.freeze ?? false, 'progressive.freeze'),
    zeroInit: checkBool(p.zeroInit ?? true, 'progressive.zeroInit'),
  };
}

/** The learning rate at a step: linear warm-up, then cosine decay or steps at 50% / 75%. */
export function learningRate(step: number, total: number, r: Pick<Resolved, 'lr' | 'minLr' | 'warmupSteps' | 'schedule'>): number {
  if (step < r.warmupSteps) return (r.lr * (step + 1)) / r.warmupSteps;
  const t = Math.min(1, (step - r.warmupSteps) / Math.max(1, total - r.warmupSteps));
  if (r.schedule === 'step') return r.lr * (t < 0.5 ? 1 : t < 0.75 ? 0.1 : 0.01);
  return r.minLr + 0.5 * (r.lr - r.minLr) * (1 + Math.cos(Math.PI * t));
}

/** The optimizer fit() uses, with no weight decay on norms, biases, the class token and positions. */
export function makeOptimizer(model: ParaFormer, r: Pick<Resolved, 'optimizer' | 'lr' | 'weightDecay'>): AdamW | SGD {
  const noDecay = new Set(model.noDecayNames());
  const named = model.namedParameters();
  const decay = named.filter(([n]) => !noDecay.has(n)).map(([, p]) => p);
  const plain = named.filter(([n]) => noDecay.has(n)).map(([, p]) => p);
  const groups = [{ params: decay }, { params: plain, options: { weightDecay: 0 } }].filter((g) => g.params.length > 0);
  return r.optimizer === 'adamw'
    ? new AdamW(groups, { lr: r.lr, weightDecay: r.weightDecay })
    : new SGD(groups, { lr: r.lr, weightDecay: r.weightDecay, momentum: 0.9, nesterov: true });
}

/** The model's parameters and the optimizer's state under their checkpoint names; `owned` are new handles to dispose. */
function stateEntries(model: ParaFormer, opt: AdamW | SGD): { entries: [string, Tensor][]; owned: Tensor[] } {
  const entries: [string, Tensor][] = model.namedParameters();
  const owned: Tensor[] = [];
  for (const [name, p] of model.namedParameters()) {
    if (opt instanceof AdamW) {
      const s = opt.stateFor(p);
      if (s) entries.push([`optimizer.m.${name}`, s.m], [`optimizer.v.${name}`, s.v]), owned.push(s.m, s.v);
    } else {
      const b = opt.bufferFor(p);
      if (b) entries.push([`optimizer.buf.${name}`, b]), owned.push(b);
    }
  }
  return { entries, owned };
}

/**
 * The update count of each row of the parameters updated row by row (frozen or inactive
 * branches), as checkpoint metadata; none where every parameter was updated whole.
 */
function rowStepsMetadata(model: ParaFormer, opt: AdamW | SGD): Record<string, string> {
  const rows: Record<string, number[]> = {};
  for (const [name, p] of model.namedParameters()) {
    const r = opt.rowStepsFor(p);
    if (r) rows[name] = r;
  }
  return Object.keys(rows).length > 0 ? { optimizer_row_steps: JSON.stringify(rows) } : {};
}

/**
 * Saves a training checkpoint: the model, the optimiser's moments, the position and the options.
 * A branch-parallel share gathers the whole model from every rank (so every rank must call it)
 * and rank 0 writes the file a single process would.
 */
export function saveTrainingState(
  file: string,
  model: ParaFormer,
  opt: AdamW | SGD,
  position: { step: number; epoch: number; batch: number },
  options: Resolved,
  losses: number[],
): void {
  const { entries, owned } = stateEntries(model, opt);
  let out = entries;
  try {
    if (model.shard) {
      out = gatherEntries(entries, model.shard);
      owned.push(...out.map(([, t]) => t));
    }
    if (!distributed.isMain()) return;
    const l = tensor(Float32Array.from(losses), [losses.length]);
    owned.push(l);
    const config = model.shard ? { ...model.config, branches: model.shard.total } : model.config;
    saveSafetensors(file, [...out, ['train.losses', l]], {
      format: 'duat-training-state',
      config: JSON.stringify(config),
      ...inputMetadata(model),
      options: JSON.stringify(options),
      position: JSON.stringify(position),
      optimizer_steps: String(opt.stepCount),
      ...rowStepsMetadata(model, opt),
    });
  } finally {
    for (const t of owned) t.dispose();
  }
}

/**
 * Trains `model` on `data.train`, evaluating on `data.test` after each epoch.
 * @example
 * const model = duat.ParaFormer.preset('para-former-2-2');
 * const r = await duat.fit(model, { train: duat.data.loadMnist('train'), test: duat.data.loadMnist('test') }, { epochs: 5 });
 */
export async function fit(model: ParaFormer, data: { train: Data; test?: Data }, options?: FitOptions): Promise<FitResult> {
  if (!(model instanceof ParaFormer)) throw new ArgumentError(`Expected a ParaFormer for model but received ${describe(model)}`);
  const o = checkOptions<FitOptions>(options, 'fit options');
  if (!data || typeof data !== 'object' || !data.train) throw new ArgumentError(`Expected { train, test? } data sets but received ${describe(data)}`);
  let r = resolve(o);
  const every = o.progressEvery === undefined ? 0 : checkNumber(o.progressEvery, 'progressEvery', 0, 1e9);
  const prefetch = checkInt(o.prefetch ?? 2, 'prefetch', 1, 64);
  const showProgress = o.progress === undefined || checkBool(o.progress, 'progress');
  const parallel = checkOneOf(o.parallel ?? 'none', 'parallel', ['none', 'data', 'branches'] as const);
  const { train, test } = data;
  for (const [what, ds] of [['training', train], ['test', test]] as const) {
    if (ds && (ds.channels !== model.config.channels || ds.size !== model.config.imageSize)) {
      throw new ArgumentError(
        `the ${what} images are ${ds.channels} x ${ds.size} x ${ds.size} but the model expects ` +
          `${model.config.channels} x ${model.config.imageSize} x ${model.config.imageSize}`,
      );
    }
  }
  if (model.shard) throw new ArgumentError('Expected a whole model but received a branch-parallel share; fit() shares a model out itself');
  // The model learns the training set's normalisation and class names where it has none, so that
  // files saved from it can be used without knowing how it was trained.
  if (!model.inputSpec && train.mean && train.std) {
    model.inputSpec = { mean: train.mean, std: train.std, ...(train.classNames?.length === model.config.classes ? { classNames: train.classNames } : {}) };
  }
  const job = parallel === 'none' ? undefined : distributed.init();
  const rank = job?.rank ?? 0, ranks = job?.size ?? 1, main = rank === 0;
  if (parallel === 'branches') distributed.branchShare(model.config.branches, rank, ranks);  // refuses too few branches
  let start = { step: 0, epoch: 0, batch: 0 };
  const losses: number[] = [];
  let opt = makeOptimizer(model, r);
  // The model the steps train: `model` itself, or this rank's share of its branches.
  let trained = model;
  try {
    if (o.resume) {
      const st = loadTrainingState(o.resume, model, opt);
      start = st.position;
      r = { ...st.options, maxSteps: r.maxSteps, epochs: o.epochs ?? st.options.epochs, onNan: r.onNan };
      losses.push(...st.losses);
    }
    if (parallel === 'data' && r.batchSize < ranks) {
      throw new ArgumentError(`parallel 'data' needs batchSize (${r.batchSize}) of at least the job's ${ranks} ranks`);
    }
    if (parallel === 'data') broadcastParameters(model);
    if (parallel === 'branches') {
      trained = ParaFormer.shardOf(model, rank, ranks);
      const partOpt = makeOptimizer(trained, r);
      shareOptimizerState(model, opt, trained, partOpt);
      opt.dispose();
      opt = partOpt;
    }
  } catch (e) {
    opt.dispose();
    if (trained !== model) trained.dispose();
    throw e;
  }
  const stepsPerEpoch = Batches.countFor(train.count, r.batchSize);
  const total = Math.min(r.maxSteps, r.epochs * stepsPerEpoch);
  const prog = r.progressive;
  const before = { active: model.activeBranches, frozen: model.frozenBranches, embedding: model.embeddingFrozen };
  if (prog) {
    try {
      checkProgressive(prog, model.config.branches, stepsPerEpoch, r.epochs * stepsPerEpoch, parallel);
      if (before.frozen > prog.start) {
        throw new ArgumentError(`the model's first ${before.frozen} branches are frozen, so progressive.start must be at least ${before.frozen}, not ${prog.start}`);
      }
      if (!o.resume && prog.zeroInit) zeroOutputs(model, prog.start);
    } catch (e) {
      opt.dispose();
      if (trained !== model) trained.dispose();
      throw e;
    }
  }
  const runDir = o.runDir;
  const files = runDir !== undefined && main;
  if (files) fs.mkdirSync(runDir, { recursive: true });
  const metricsFile = files ? path.join(runDir, 'metrics.jsonl') : undefined;
  const log = (rec: object) => metricsFile && fs.appendFileSync(metricsFile, JSON.stringify(rec) + '\n');
  // The schedule's branches at a step (with the model's own frozen ones kept frozen).
  let phase = -1;
  const applyPhase = (at: number) => {
    if (!prog) return;
    const ph = progressivePhase(prog, model.config.branches, stepsPerEpoch, at);
    if (ph.phase === phase) return;
    phase = ph.phase;
    model.setActiveBranches(ph.active).freezeBranches(Math.min(ph.active, Math.max(before.frozen, ph.frozen)), { embedding: before.embedding });
    log({ type: 'phase', step: at, phase: ph.phase, activeBranches: ph.active, frozenBranches: model.frozenBranches });
  };
  const tty = Boolean(process.stderr.isTTY);
  const bar = main && showProgress && (tty || every > 0) ? new Progress(process.stderr, total, start.step, { tty, every }) : undefined;
  const checkpoint = (pos: { step: number; epoch: number; batch: number }) => {
    if (runDir) saveTrainingState(path.join(runDir, 'checkpoint.safetensors'), trained, opt, pos, r, losses);
  };
  const part = parallel === 'data' ? { index: rank, count: ranks } : undefined;

  const history: EpochMetrics[] = [];
  const t0 = Date.now();
  let step = start.step;
  let aborted = false;
  let skippedSteps = 0;
  let dataWait = 0;  // ms the steps waited for their batch
  // Where the next step starts: what a checkpoint saved now records.
  let position = { ...start };
  try {
    for (let epoch = start.epoch; epoch < r.epochs && step < total && !aborted; epoch++) {
      const te = Date.now();
      const batches = new Batches(train, epoch, { batchSize: r.batchSize, seed: r.seed, shift: r.shift, flip: r.flip });
      let lossSum = 0, correct = 0, seen = 0, ran = 0;
      // In-memory batches are built while the previous step runs; a stream's decode `prefetch` ahead.
      const ahead = new Ahead(batches, part, isImageStream(train) ? prefetch : 1);
      for (let k = epoch === start.epoch ? start.batch : 0; k < batches.count && step < total; k++) {
        // Ranks stop together: a signal on any rank stops the job after the same step.
        if (job ? sumOverRanks([o.signal?.aborted ? 1 : 0])[0] > 0 : o.signal?.aborted) {
          aborted = true;
          break;
        }
        const tw = Date.now();
        let cur: Batch;
        try {
          cur = await ahead.take(k);
        } catch (e) {
          await ahead.drop();
          throw e;
        }
        const waitMs = Date.now() - tw;
        dataWait += waitMs;
        applyPhase(step);
        const lr = learningRate(step, total, r);
        opt.setLearningRate(lr);
        const ts = Date.now();
        // A data-parallel step's counts are the whole batch's (every rank's share summed); a stream
        // may have left unreadable files out of a batch.
        const B = part ? batches.rowsOf(k) : cur.labels.shape[0];
        const pending = trained.trainStep(cur.images, cur.labels, {
          optimizer: opt, labelSmoothing: r.labelSmoothing, clipGradNorm: r.clipGradNorm, dataParallel: parallel === 'data',
        });
        // Build (or start decoding) the next batches while this step runs on the worker thread.
        ahead.fill(k);
        let res;
        try {
          res = await pending;
        } catch (e) {
          await ahead.drop();
          throw e;
        } finally {
          cur.images.dispose();
          cur.labels.dispose();
        }
        step++;
        ran++;
        losses.push(res.loss);
        const m: StepMetrics = {
          step, epoch, batch: k, loss: res.loss, accuracy: res.correct / B, lr, gradNorm: res.gradNorm, ms: Date.now() - ts, waitMs, skipped: res.skipped,
        };
        if (res.skipped) {
          skippedSteps++;
          log({ type: 'skipped', ...m, loss: String(res.loss), gradNorm: String(res.gradNorm) });
          if (r.onNan === 'stop') {
            await ahead.drop();
            throw new NumericError(
              `training diverged at step ${step} (epoch ${epoch + 1}, batch ${k}): the loss is ${res.loss} and the gradient norm ` +
                `${res.gradNorm}. The update was skipped, so the model holds the parameters from before this step. ` +
                `Lower the learning rate (${lr}), set clipGradNorm, or pass onNan: 'skip' to go on with the next batch.`,
              step,
            );
          }
        } else {
          lossSum += res.loss * B;
          correct += res.correct;
          seen += B;
        }
        if (step % 10 === 0 || step === total) log({ type: 'step', ...m });
        bar?.update({ step, epoch, loss: res.loss });
        o.onStep?.(m);
        position = k + 1 < batches.count ? { step, epoch, batch: k + 1 } : { step, epoch: epoch + 1, batch: 0 };
        if (r.checkpointEvery && step % r.checkpointEvery === 0) checkpoint(position);
      }
      await ahead.drop();
      if (aborted || ran === 0) break;
      const em: EpochMetrics = {
        epoch, step, ...(prog ? { activeBranches: model.activeBranches } : {}),
        trainLoss: seen ? lossSum / seen : NaN, trainAccuracy: seen ? correct / seen : NaN, seconds: (Date.now() - te) / 1000,
      };
      if (test) em.test = parallel === 'data' ? await evaluateShared(trained, test, r.evalBatchSize, rank, ranks) : await evaluate(trained, test, r.evalBatchSize);
      history.push(em);
      log({ type: 'epoch', ...em, test: em.test && { loss: em.test.loss, accuracy: em.test.accuracy } });
      bar?.clear();  // what onEpoch prints starts on its own line
      o.onEpoch?.(em);
      // At the epoch's end, or mid-epoch where maxSteps ended the run (so a resume with a larger
      // maxSteps goes on with the epoch's next batch).
      checkpoint(position);
    }
    if (trained !== model) gatherInto(model, trained);
  } finally {
    bar?.stop();
    if (prog) model.setActiveBranches(before.active).freezeBranches(before.frozen, { embedding: before.embedding });
    opt.dispose();
    if (trained !== model) trained.dispose();
  }
  const result: FitResult = {
    history, steps: step, seconds: (Date.now() - t0) / 1000, aborted, losses, skippedSteps, dataWaitSeconds: dataWait / 1000,
    test: history[history.length - 1]?.test,
  };
  if (files) {
    fs.writeFileSync(path.join(runDir, 'curve.svg'), curveSvg(losses, history));
    if (result.test) fs.writeFileSync(path.join(runDir, 'confusion.json'), JSON.stringify(result.test.confusion));
  }
  return result;
}

/**
 * Refuses a progressive schedule that does not fit the model or the run's epochs (maxSteps is a
 * budget that may stop a run early, to be resumed, as a signal does).
 */
function checkProgressive(p: Required<ProgressiveOptions>, branches: number, stepsPerEpoch: number, total: number, parallel: ParallelMode): void {
  if (parallel === 'branches') throw new ArgumentError("progressive training cannot be combined with parallel 'branches'");
  if (p.start > branches) throw new ArgumentError(`progressive.start is ${p.start} but the model has ${branches} branches per stage`);
  const last = Math.ceil((branches - p.start) / p.add);
  const at = last * p.every * (p.unit === 'epochs' ? stepsPerEpoch : 1);
  if (last > 0 && at >= total) {
    throw new ArgumentError(
      `the progressive schedule activates the last branches at step ${at} (phase ${last}, every ${p.every} ${p.unit}) ` +
        `but the run has ${total} steps: shorten progressive.every or train longer`,
    );
  }
}

/** Zeroes the output projections of branches [from, N) of every stage: they start with zero output. */
function zeroOutputs(model: ParaFormer, from: number): void {
  const N = model.config.branches;
  if (from >= N) return;
  tidy(() => {
    const sd = new Map<string, Tensor>();
    for (const [name, p] of model.namedParameters()) {
      if (isBranchOutput(name)) sd.set(name, concat([p.slice(0, 0, from), zeros([N - from, ...p.shape.slice(1)], { device: model.device })], 0));
    }
    model.loadStateDict(sd, false);
  });
}

/** evaluate() split over the ranks of a data-parallel job: each takes every `ranks`-th batch; the totals are summed. */
async function evaluateShared(model: ParaFormer, data: Data, batchSize: number, rank: number, ranks: number): Promise<EvalResult> {
  const totals = await evaluationTotals(model, data, batchSize, rank, ranks);
  return evalResult(sumOverRanks(totals), model.config.classes);
}

/** Restores a training checkpoint into `model` and `opt`. @throws CheckpointError when it does not fit */
export function loadTrainingState(file: string, model: ParaFormer, opt: AdamW | SGD): { position: { step: number; epoch: number; batch: number }; options: Resolved; losses: number[] } {
  const { tensors, metadata } = loadSafetensors(file);
  try {
    if (metadata.format !== 'duat-training-state') throw new CheckpointError(`${file}: not a duat training checkpoint (format ${JSON.stringify(metadata.format)})`);
    const object = (key: string): Record<string, unknown> => {
      let v: unknown;
      try {
        v = JSON.parse(metadata[key] ?? '');
      } catch {
        throw new CheckpointError(`${file}: the metadata's ${key} is not JSON`);
      }
      if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new CheckpointError(`${file}: the metadata's ${key} is not an object`);
      return v as Record<string, unknown>;
    };
    const config = object('config');
    const position = object('position');
    for (const k of ['step', 'epoch', 'batch']) {
      const v = position[k];
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new CheckpointError(`${file}: position.${k} is ${JSON.stringify(v)}, not a count`);
    }
    let options: Resolved;
    try {
      options = resolve(object('options') as Partial<FitOptions>);
    } catch (e) {
      throw new CheckpointError(`${file}: the saved training options are not valid: ${(e as Error).message}`);
    }
    const steps = Number(metadata.optimizer_steps ?? 0);
    if (!Number.isSafeInteger(steps) || steps < 0) throw new CheckpointError(`${file}: optimizer_steps is ${JSON.stringify(metadata.optimizer_steps)}, not a count`);
    const losses = tensors.get('train.losses');
    if (losses && (losses.dtype !== 'float32' || losses.shape.length !== 1)) throw new CheckpointError(`${file}: train.losses is not a float32 vector`);
    // Options a checkpoint predates have their defaults.
    let saved: Record<string, unknown>;
    try {
      saved = ParaFormer.resolveConfig(config as ParaFormerOptions);
    } catch (e) {
      throw new CheckpointError(`${file}: the saved model config is not valid: ${(e as Error).message}`);
    }
    for (const [k, v] of Object.entries(model.config)) {
      if (k === 'seed') continue;  // initialisation only: the checkpoint replaces every parameter
      if (saved[k] !== v) throw new CheckpointError(`${file}: the checkpoint's ${k} is ${JSON.stringify(saved[k])} but the model's is ${JSON.stringify(v)}`);
    }
    const input = readInputSpec(file, metadata, model.config);
    // Everything is checked before anything changes: a checkpoint that does not fit leaves the
    // model and the optimizer as they were.
    const params = new Map<string, Tensor>();
    const sameShape = (a: number[], b: number[]) => a.length === b.length && a.every((d, i) => d === b[i]);
    for (const [name, p] of model.namedParameters()) {
      const t = tensors.get(name);
      if (!t) throw new CheckpointError(`${file}: missing parameter '${name}'`);
      if (!sameShape(t.shape, p.shape)) {
        throw new CheckpointError(`${file}: parameter '${name}' has shape [${t.shape.join(', ')}] but the model's is [${p.shape.join(', ')}]`);
      }
      params.set(name, t);
      for (const kind of opt instanceof AdamW ? ['m', 'v'] : ['buf']) {
        const s = tensors.get(`optimizer.${kind}.${name}`);
        if (s && (s.dtype !== 'float32' || !sameShape(s.shape, p.shape))) {
          throw new CheckpointError(
            `${file}: optimizer state 'optimizer.${kind}.${name}' has shape [${s.shape.join(', ')}] but its parameter has [${p.shape.join(', ')}]`,
          );
        }
      }
    }
    const rowSteps = metadata.optimizer_row_steps === undefined ? {} : object('optimizer_row_steps');
    for (const [name, rows] of Object.entries(rowSteps)) {
      const p = params.get(name);
      const ok = p && Array.isArray(rows) && rows.length === p.shape[0] && rows.every((v) => Number.isSafeInteger(v) && (v as number) >= 0 && (v as number) <= steps);
      if (!ok) throw new CheckpointError(`${file}: optimizer_row_steps.${name} is not one update count per row of a parameter`);
    }
    model.loadStateDict(params);
    if (input && !model.inputSpec) model.inputSpec = input;
    opt.stepCount = steps;
    for (const [name, p] of model.namedParameters()) {
      const rows = (rowSteps[name] as number[] | undefined) ?? null;
      if (opt instanceof AdamW) {
        const m = tensors.get(`optimizer.m.${name}`), v = tensors.get(`optimizer.v.${name}`);
        if (m && v) opt.restoreState(p, m, v, opt.stepCount, rows);
      } else {
        const b = tensors.get(`optimizer.buf.${name}`);
        if (b) opt.restoreBuffer(p, b, rows);
      }
    }
    return {
      position: position as { step: number; epoch: number; batch: number },
      options,
      losses: losses ? Array.from(losses.toArray()) : [],
    };
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
}

