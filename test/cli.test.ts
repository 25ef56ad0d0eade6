/**
 * The `duat` command as a user meets it: help on every command, the version, unknown flags with a
 * suggestion, progress that shows where stderr is a file, a run folder that a failed start does
 * not leave behind, --resume in the same folder, the final lines, and predict with the model's own
 * normalisation and class names.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import * as duat from '../lib';
import { formatDuration, Progress } from '../lib/train/progress';

const CLI = path.join(__dirname, '..', 'lib', 'cli.ts');
const SLICE = path.join(__dirname, 'fixtures', 'mnist-slice');
const DIGIT = path.join(__dirname, 'fixtures', 'mnist-test-0-seven.png');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-cli-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

/** Runs the CLI with stdout and stderr piped (not a terminal), as CI and log files see it. */
function duatCli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, ['-r', 'ts-node/register/transpile-only', CLI, ...args], { encoding: 'utf8', env: { ...process.env, DUAT_NUM_THREADS: '2' } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const SMALL = ['--data', SLICE, '--limit', '192', '--test-limit', '64', '--batch-size', '32', '--dim', '16', '--heads', '2', '--threads', '2'];

describe('help, version and usage errors', () => {
  test.each(['train', 'eval', 'predict', 'inspect', 'bench', 'info'])('duat %s --help and -h print its usage and exit 0', (cmd) => {
    for (const flag of ['--help', '-h']) {
      const r = duatCli([cmd, flag]);
      expect(r.status).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`^Usage: duat ${cmd}`));
      expect(r.stdout).toMatch(/-h, --help/);
    }
  }, 30000);

  test('train --help shows every flag with its default', () => {
    const r = duatCli(['train', '--help']);
    expect(r.stdout).toMatch(/--epochs <int>\s+passes over the training set \(default: 15\)/);
    expect(r.stdout).toMatch(/--resume <value>/);
    expect(r.stdout).toMatch(/--progress-every <number>[\s\S]*?\(default: 30\)/);
  });

  test('duat alone lists the commands; an unknown command or flag is refused with the closest one (exit 2)', () => {
    const bare = duatCli([]);
    expect(bare.status).toBe(0);
    expect(bare.stdout).toMatch(/Commands:[\s\S]*train[\s\S]*predict/);
    const cmd = duatCli(['trian']);
    expect(cmd.status).toBe(2);
    expect(cmd.stderr).toMatch(/unknown command 'trian'\n\(Did you mean train\?\)/);
    const flag = duatCli(['train', '--epoch', '3']);
    expect(flag.status).toBe(2);
    expect(flag.stderr).toMatch(/unknown option '--epoch'\n\(Did you mean --epochs\?\)/);
    const value = duatCli(['train', '--depth', 'two']);
    expect(value.status).toBe(2);
    expect(value.stderr).toMatch(/'--depth <int>' argument 'two' is invalid\. expected an integer/);
    const missing = duatCli(['eval']);
    expect(missing.status).toBe(2);
    expect(missing.stderr).toMatch(/required option '--model <value>' not specified/);
  }, 30000);
});

describe('a training run', () => {
  const runs = path.join(tmp, 'runs');
  const runDir = path.join(runs, 'small');
  let first: ReturnType<typeof duatCli>;
  beforeAll(() => {
    first = duatCli(['train', ...SMALL, '--epochs', '2', '--runs-dir', runs, '--name', 'small', '--progress-every', '0.01']);
  }, 60000);

  test('without a terminal, progress comes as lines, and each epoch line stands on its own', () => {
    expect(first.status).toBe(0);
    const lines = first.stderr.split('\n');
    const progress = lines.filter((l) => /^step \d+\/12 \(\d+%\) \| epoch [12] \| loss \d+\.\d{4} \| .* left$/.test(l));
    expect(progress.length).toBeGreaterThan(0);
    const epochs = lines.filter((l) => l.includes('train loss'));
    expect(epochs).toHaveLength(2);
    for (const l of epochs) expect(l).toMatch(/^epoch [12]: train loss \d/);
    expect(first.stderr).not.toMatch(/\{epoch\}|\{loss\}|\r/);
  });

  test('the last lines say where the model is and how to use it', () => {
    const model = path.join(runDir, 'model.safetensors');
    expect(first.stderr).toContain(`model saved to ${model} (test accuracy `);
    expect(first.stderr).toContain(`try it: npx duat predict <image.png> --model ${model}`);
    const summary = JSON.parse(first.stdout.trim().split('\n').pop()!);
    expect(summary).toMatchObject({ steps: 12, modelFile: model, runDir });
    for (const f of ['config.json', 'checkpoint.safetensors', 'metrics.jsonl', 'curve.svg', 'model.safetensors', 'summary.json']) {
      expect(fs.existsSync(path.join(runDir, f))).toBe(true);
    }
  });

  test('the saved model carries the training set\'s normalisation and class names', () => {
    const m = duat.load(path.join(runDir, 'model.safetensors'));
    expect(m.inputSpec).toEqual({ mean: [duat.data.MNIST_MEAN], std: [duat.data.MNIST_STD], classNames: ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'] });
    m.dispose();
  });

  test('a name already used is refused, with how to continue it', () => {
    const r = duatCli(['train', ...SMALL, '--runs-dir', runs, '--name', 'small']);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/the run folder .*small exists; continue it with --resume .*small, or choose another --name/);
  }, 30000);

  test('--resume goes on in the same folder with the run\'s model and flags; model flags are refused', () => {
    const before = fs.readdirSync(runs);
    const r = duatCli(['train', '--resume', runDir, '--epochs', '3', '--progress-every', '0']);
    expect(r.status).toBe(0);
    expect(fs.readdirSync(runs)).toEqual(before);  // no new run folder
    expect(r.stderr).toMatch(/\(10,186 parameters\) on mnist-train \(192 train, 64 test\)/);  // its model; its --data and limits, from config.json
    expect(r.stderr).toContain(`(resumed from ${path.join(runDir, 'checkpoint.safetensors')})`);
    expect(JSON.parse(r.stdout.trim().split('\n').pop()!)).toMatchObject({ steps: 18, runDir });
    const epochs = fs.readFileSync(path.join(runDir, 'metrics.jsonl'), 'utf8').split('\n').filter((l) => l.includes('"type":"epoch"'));
    expect(epochs).toHaveLength(3);
    const bad = duatCli(['train', '--resume', runDir, '--depth', '3']);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/--depth cannot be given with --resume: the model comes from the checkpoint/);
  }, 60000);

  test('a run that fails before its first step leaves no folder behind', () => {
    // Train images 28 x 28 but test images 14 x 14: fit() refuses before the first step.
    const data = path.join(tmp, 'mixed');
    fs.mkdirSync(data);
    const idx = (dims: number[], body: Buffer) => {
      const head = Buffer.alloc(4 + 4 * dims.length);
      head[2] = 0x08;
      head[3] = dims.length;
      dims.forEach((d, i) => head.writeUInt32BE(d, 4 + 4 * i));
      return Buffer.concat([head, body]);
    };
    fs.writeFileSync(path.join(data, 'train-images-idx3-ubyte'), idx([8, 28, 28], Buffer.alloc(8 * 784, 7)));
    fs.writeFileSync(path.join(data, 'train-labels-idx1-ubyte'), idx([8], Buffer.from([0, 1, 2, 3, 4, 5, 6, 7])));
    fs.writeFileSync(path.join(data, 't10k-images-idx3-ubyte'), idx([2, 14, 14], Buffer.alloc(2 * 196, 7)));
    fs.writeFileSync(path.join(data, 't10k-labels-idx1-ubyte'), idx([2], Buffer.from([0, 1])));
    const out = path.join(tmp, 'failed-runs');
    const r = duatCli(['train', '--data', data, '--runs-dir', out, '--name', 'doomed', '--batch-size', '4']);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/ArgumentError: the test images are 1 x 14 x 14 but the model expects 1 x 28 x 28/);
    expect(fs.existsSync(path.join(out, 'doomed'))).toBe(false);
  }, 30000);
});

describe('predict uses what the model carries', () => {
  test('class names and normalisation from the file; probabilities that sum to 1', async () => {
    const model = new duat.ParaFormer({ patchSize: 7, dim: 16, heads: 2, depth: 1, branches: 2 });
    const names = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine'];
    model.inputSpec = { mean: [0.5], std: [0.25], classNames: names };
    const file = path.join(tmp, 'named.safetensors');
    duat.save(file, model);
    const pixels = duat.data.prepareImage(duat.data.readImage(DIGIT), 1, 28);
    const [want] = await model.predict(pixels);
    model.dispose();
    const r = duatCli(['predict', DIGIT, '--model', file]);
    expect(r.status).toBe(0);
    const p = JSON.parse(r.stdout);
    expect(p.prediction).toBe(names[p.class]);
    expect(p.class).toBe(want.class);
    expect(p.probability).toBeCloseTo(want.probability, 6);
    expect(p.top).toHaveLength(5);
    for (const t of p.top) expect(t.label).toBe(names[t.class]);
    expect(r.stderr).toBe('');
  }, 30000);

  test('a file saved without an input spec gets MNIST\'s normalisation, with a note', () => {
    const model = new duat.ParaFormer({ patchSize: 7, dim: 16, heads: 2, depth: 1, branches: 1 });
    const file = path.join(tmp, 'bare.safetensors');
    duat.save(file, model);
    model.dispose();
    const r = duatCli(['predict', DIGIT, '--model', file]);
    expect(r.status).toBe(0);
    expect(r.stderr).toMatch(/note: .*bare\.safetensors carries no input normalisation .*using MNIST's/);
    expect(JSON.parse(r.stdout).prediction).toMatch(/^\d$/);
  }, 30000);
});

describe('progress', () => {
  const sink = () => {
    const out: string[] = [];
    return { out, stream: { write: (s: string) => out.push(s) } };
  };

  test('durations read as people write them', () => {
    expect([12, 245, 3725, 0].map(formatDuration)).toEqual(['12 s', '4 min 05 s', '1 h 02 min', '0 s']);
    expect(formatDuration(NaN)).toBe('?');
  });

  test('on a terminal: one line redrawn in place, at most ten times a second, erased by clear()', () => {
    let t = 0;
    const { out, stream } = sink();
    const p = new Progress(stream, 10, 0, { tty: true, every: 0, now: () => t });
    t = 1000;
    p.update({ step: 1, epoch: 0, loss: 2.5 });
    expect(out).toEqual([`\r\x1b[K[##----------------------] step 1/10 (10%) | epoch 1 | loss 2.5000 | 9 s left`]);
    t = 1050;
    p.update({ step: 2, epoch: 0, loss: 2.4 });
    expect(out).toHaveLength(1);  // throttled
    p.clear();
    expect(out[1]).toBe('\r\x1b[K');
    p.update({ step: 3, epoch: 1, loss: 2.3 });  // after a clear the line comes back at once
    expect(out[2]).toMatch(/^\r\x1b\[K\[#+-+\] step 3\/10 \(30%\) \| epoch 2 \| loss 2\.3000 \| /);
    p.stop();
    expect(out[3]).toBe('\r\x1b[K');
  });

  test('elsewhere: a plain line every `every` seconds, none with every = 0, and a resumed run counts from its start', () => {
    let t = 0;
    const { out, stream } = sink();
    const p = new Progress(stream, 100, 40, { tty: false, every: 30, now: () => t });
    for (const [ms, step] of [[10000, 45], [29900, 50], [30000, 55], [45000, 60], [60000, 70]]) {
      t = ms;
      p.update({ step, epoch: 3, loss: 0.5 });
    }
    expect(out).toEqual(['step 55/100 (55%) | epoch 4 | loss 0.5000 | 1 min 30 s left\n', 'step 70/100 (70%) | epoch 4 | loss 0.5000 | 1 min 00 s left\n']);
    p.clear();
    expect(out).toHaveLength(2);  // nothing to erase in a log
    const quiet = sink();
    const q = new Progress(quiet.stream, 10, 0, { tty: false, every: 0, now: () => (t += 100000) });
    q.update({ step: 5, epoch: 0, loss: 1 });
    expect(quiet.out).toEqual([]);
  });

  test('fit on a terminal erases its progress line before onEpoch prints', async () => {
    const isTTY = process.stderr.isTTY;
    const write = process.stderr.write;
    const seen: string[] = [];
    Object.defineProperty(process.stderr, 'isTTY', { value: true, configurable: true });
    process.stderr.write = ((s: string) => seen.push(String(s)) > 0) as typeof process.stderr.write;
    const model = new duat.ParaFormer({ patchSize: 7, dim: 16, heads: 2, depth: 1, branches: 1 });
    try {
      const train = duat.data.loadMnist('train', { dir: SLICE, limit: 64 });
      await duat.fit(model, { train }, { epochs: 2, batchSize: 16, onEpoch: () => void seen.push('EPOCH') });
    } finally {
      process.stderr.write = write;
      Object.defineProperty(process.stderr, 'isTTY', { value: isTTY, configurable: true });
      model.dispose();
    }
    expect(seen.filter((s) => s === 'EPOCH')).toHaveLength(2);
    expect(seen.some((s) => /^\r\x1b\[K\[[#-]+\] step \d+\/8/.test(s))).toBe(true);
    seen.forEach((s, i) => s === 'EPOCH' && expect(seen[i - 1]).toBe('\r\x1b[K'));
  }, 30000);
});
