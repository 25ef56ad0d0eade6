#!/usr/bin/env node
// Compression by branch selection, measured: trains a Para-Former-m-n on MNIST (or loads one),
// ranks each stage's branches by 'norm' and by 'greedy' (validation: the last 5,000 training
// images, which the model trains without), and for every k from n down to 1 reports test
// accuracy, parameters, file size and batch-64 forward time of the Para-Former-m-k kept; then the
// largest compression within 0.5 points of the whole model's accuracy. Writes
// docs/results-compress.md and .json.
//   npm run build:ts && node scripts/bench-compress.js [--depth 1] [--branches 8] [--epochs 10] [--model file]
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');

const duat = require('../dist');

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
};
const depth = Number(arg('depth', 1)), branches = Number(arg('branches', 8)), epochs = Number(arg('epochs', 10));
const VAL = 5000;

function forwardMs(model) {
  const x = duat.randn([64, 1, 28, 28], { seed: 1 });
  const run = () => duat.noGrad(() => duat.tidy(() => model.forward(x).toArray()));
  for (let i = 0; i < 3; i++) run();
  const times = [];
  for (let i = 0; i < 31; i++) {
    const t0 = process.hrtime.bigint();
    run();
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  x.dispose();
  return times.sort((a, b) => a - b)[15];
}

async function main() {
  duat.setNumThreads(2);
  const all = duat.data.loadMnist('train');
  const per = 784, cut = all.count - VAL;
  const train = { ...all, name: 'mnist-train (first 55,000)', images: all.images.slice(0, cut * per), labels: all.labels.slice(0, cut), count: cut };
  const val = { ...all, name: 'mnist-train (last 5,000)', images: all.images.slice(cut * per), labels: all.labels.slice(cut), count: VAL };
  const test = duat.data.loadMnist('test');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-bench-compress-'));
  let model, trainSeconds = null;
  if (arg('model')) {
    model = duat.load(arg('model'));
  } else {
    model = new duat.ParaFormer({ depth, branches, patchSize: 7, dim: 64, heads: 4, mlpRatio: 2 });
    const r = await duat.fit(model, { train }, { epochs, batchSize: 128, lr: 2e-3, warmupSteps: 300, shift: 2, progress: false });
    trainSeconds = r.seconds;
  }
  const { depth: m, branches: n } = model.config;
  const whole = path.join(dir, 'whole.safetensors');
  duat.save(whole, model);
  const full = (await duat.evaluate(model, test)).accuracy;
  const rows = [];
  for (const method of ['norm', 'greedy']) {
    const t0 = Date.now();
    const ranking = await duat.rankBranches(model, val, { method });
    const rankSeconds = (Date.now() - t0) / 1000;
    for (let k = n; k >= 1; k--) {
      const kept = ranking.map((r) => r.slice(0, k).sort((a, b) => a - b));
      const small = model.selectBranches(kept);
      const file = path.join(dir, `${method}-${k}.safetensors`);
      duat.save(file, small);
      rows.push({
        method, k, kept, rankSeconds, test: (await duat.evaluate(small, test)).accuracy, validation: (await duat.evaluate(small, val)).accuracy,
        parameters: small.parameterCount(), bytes: fs.statSync(file).size, wholeMs: forwardMs(model), forwardMs: forwardMs(small),
      });
      small.dispose();
      process.stderr.write(`${method} k=${k}: test ${(100 * rows[rows.length - 1].test).toFixed(2)}%\n`);
    }
  }
  const wholeBytes = fs.statSync(whole).size;
  const pct = (v) => `${(100 * v).toFixed(2)}%`;
  const lines = [
    `# Compression by branch selection: Para-Former-${m}-${n} on MNIST`,
    '',
    `Command: \`node scripts/bench-compress.js --depth ${m} --branches ${n} --epochs ${epochs}\` (${new Date().toISOString().slice(0, 10)}, ` +
      `${os.cpus().length} cores, 2 threads).`,
    `The model: Para-Former-${m}-${n} (dim 64, 4 heads, MLP 128, patch 7), trained ${trainSeconds === null ? '(loaded)' : `${epochs} epochs on the first 55,000 training images (${trainSeconds.toFixed(0)} s)`};`,
    `test accuracy ${pct(full)} on the 10,000 test images. Branches are ranked on the last 5,000 training images (validation),`,
    'which training did not see; the test set is only reported. Each row is a real Para-Former with k branches per stage',
    '(`model.selectBranches`), saved and timed at batch 64 (median of 31 forwards; the speed-up is against the whole',
    'model timed just before it).',
    '',
    '| ranking | k | kept | test accuracy | change | validation | parameters | file | compression | forward (ms) | speed-up |',
    '|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of rows) {
    lines.push(`| ${r.method} | ${r.k} | ${JSON.stringify(r.kept).replace(/,/g, ', ')} | ${pct(r.test)} | ${((r.test - full) * 100).toFixed(2)} | ${pct(r.validation)} | ` +
      `${r.parameters.toLocaleString('en-US')} | ${(r.bytes / 1024).toFixed(0)} kB | ${(wholeBytes / r.bytes).toFixed(2)}x | ${r.forwardMs.toFixed(2)} | ${(r.wholeMs / r.forwardMs).toFixed(2)}x |`);
  }
  lines.push('', `Ranking time: norm ${rows.find((r) => r.method === 'norm').rankSeconds.toFixed(2)} s, greedy ${rows.find((r) => r.method === 'greedy').rankSeconds.toFixed(1)} s.`);
  for (const method of ['norm', 'greedy']) {
    const ok = rows.filter((r) => r.method === method && r.test >= full - 0.005).sort((a, b) => a.k - b.k)[0];
    lines.push(`Within 0.5 points of the whole model (${method}): k = ${ok.k}, ${(wholeBytes / ok.bytes).toFixed(2)}x smaller file, ${(ok.wholeMs / ok.forwardMs).toFixed(2)}x faster forward, ${pct(ok.test)}.`);
  }
  const out = path.join(__dirname, '..', 'docs', 'results-compress.md');
  const md = fs.existsSync(out) ? fs.readFileSync(out, 'utf8') : '';
  const keep = md.includes('\n<!-- reading -->\n') ? md.split('\n<!-- reading -->\n')[1] : undefined;
  fs.writeFileSync(out, lines.join('\n') + '\n' + (keep ? `\n<!-- reading -->\n${keep}` : ''));
  fs.writeFileSync(out.replace(/\.md$/, '.json'), JSON.stringify({ depth: m, branches: n, epochs, full, wholeBytes, rows }, null, 2) + '\n');
  process.stdout.write(lines.join('\n') + '\n');
  model.dispose();
  fs.rmSync(dir, { recursive: true, force: true });
}

main().catch((e) => {
  process.stderr.write(`${e.stack}\n`);
  process.exitCode = 1;
});
