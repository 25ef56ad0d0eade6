#!/usr/bin/env node
// Distributed training on this machine (docs/design.md, "Distributed training"): time per step
// and what the collectives carry, for one process and for `mpirun -np 2` in both modes, one
// thread per process, in interleaved rounds. Prints a markdown table (bench/results/distributed.md
// holds it with its reading) and writes the raw figures to bench/results/distributed.json.
//   node scripts/bench-distributed.js [--rounds 3] [--steps 20] [--out bench/results]
// A child (`--child MODE MODEL`) runs under mpirun (or alone for MODE none) and prints one JSON line.
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.resolve(__dirname, '..');
const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : def;
};

// MNIST-sized models: the CLI's default, a wider stage, and a ViT-Tiny-width Para-Former.
const MODELS = {
  'para-former-2-2': { depth: 2, branches: 2, dim: 64, heads: 4, mlpRatio: 2, patchSize: 7 },
  'para-former-1-4': { depth: 1, branches: 4, dim: 64, heads: 4, mlpRatio: 2, patchSize: 4 },
  'para-former-2-4 (dim 192)': { depth: 2, branches: 4, dim: 192, heads: 3, mlpRatio: 4, patchSize: 4 },
};
const BATCH = 128;

async function child(mode, name, steps, threads) {
  const duat = require(path.join(root, 'dist'));
  duat.setNumThreads(threads);
  const job = mode === 'none' ? null : duat.distributed.init();
  const rank = job ? job.rank : 0, ranks = job ? job.size : 1;
  const whole = new duat.ParaFormer({ ...MODELS[name], imageSize: 28, channels: 1, classes: 10, seed: 1 });
  const model = mode === 'branches' ? duat.ParaFormer.shardOf(whole, rank, ranks) : whole;
  const opt = new duat.optim.AdamW(model.parameters(), { lr: 1e-3 });
  const rows = mode === 'data' ? duat.data.Batches.shardRange(BATCH, rank, ranks) : { start: 0, end: BATCH };
  const B = rows.end - rows.start;
  const x = duat.randn([B, 1, 28, 28], { seed: 2 + rank });
  const y = Int32Array.from({ length: B }, (_, i) => (i + rows.start) % 10);
  const step = () => model.trainStep(x, y, { optimizer: opt, dataParallel: mode === 'data' });
  for (let i = 0; i < 3; i++) await step();
  const before = job ? duat.distributed.stats() : { calls: 0, bytes: 0, seconds: 0 };
  const times = [];
  for (let i = 0; i < steps; i++) {
    const t0 = process.hrtime.bigint();
    await step();
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  const after = job ? duat.distributed.stats() : before;
  times.sort((a, b) => a - b);
  const out = {
    mode, model: name, ranks, params: whole.parameterCount(), localParams: model.parameterCount(),
    msPerStep: times[Math.floor(times.length / 2)],
    callsPerStep: (after.calls - before.calls) / steps,
    bytesPerStep: (after.bytes - before.bytes) / steps,
    commMsPerStep: ((after.seconds - before.seconds) / steps) * 1000,
  };
  // Every rank reports; the parent keeps the slowest rank's time (the step ends when it does).
  process.stdout.write(JSON.stringify({ rank, ...out }) + '\n');
}

function runChild(mode, name, steps, threads = 1) {
  const base = [path.join(__filename), '--child', mode, name, '--steps', String(steps), '--threads', String(threads)];
  const mpiFlags = ['--oversubscribe', '--bind-to', 'core', ...(process.getuid && process.getuid() === 0 ? ['--allow-run-as-root'] : [])];
  const r = mode === 'none'
    ? spawnSync(process.execPath, base, { encoding: 'utf8', cwd: root })
    : spawnSync('mpirun', [...mpiFlags, '-np', '2', process.execPath, ...base], { encoding: 'utf8', cwd: root });
  if (r.status !== 0) throw new Error(`${mode} ${name} failed:\n${r.stderr}`);
  const lines = r.stdout.trim().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  const slowest = lines.reduce((a, b) => (b.msPerStep > a.msPerStep ? b : a));
  return { ...slowest, commMsPerStep: Math.max(...lines.map((l) => l.commMsPerStep)) };
}

function median(v) {
  const s = [...v].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function analytic(name) {
  const m = MODELS[name];
  const T1 = (28 / m.patchSize) ** 2 + 1;
  return {
    // data: every gradient, loss and correct count (float32) + the batch size (float64)
    data: (p) => 4 * (p + 2) + 8,
    // branches: per stage, the (B, T+1, C) partial sum forward and input gradient backward, + the norm
    branches: () => 2 * m.depth * BATCH * T1 * m.dim * 4 + 4,
  };
}

function main() {
  const rounds = Number(opt('--rounds', 3)), steps = Number(opt('--steps', 20));
  const outDir = path.resolve(opt('--out', path.join(root, 'bench', 'results')));
  const results = {};
  for (let round = 0; round < rounds; round++) {
    for (const name of Object.keys(MODELS)) {
      for (const mode of ['none', 'threads2', 'data', 'branches']) {
        const r = mode === 'threads2' ? runChild('none', name, steps, 2) : runChild(mode, name, steps);
        ((results[name] ??= {})[mode] ??= []).push(r);
        process.stderr.write(`round ${round + 1}: ${name} ${mode}: ${r.msPerStep.toFixed(1)} ms/step, ${(r.bytesPerStep / 1e6).toFixed(3)} MB and ${r.commMsPerStep.toFixed(1)} ms in collectives per step\n`);
      }
    }
  }
  const commit = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).stdout.trim();
  const cpu = (os.cpus()[0] || { model: '?' }).model;
  const rows = Object.entries(results).map(([name, byMode]) => {
    const one = median(byMode.none.map((r) => r.msPerStep));
    const cell = (mode) => {
      const rs = byMode[mode];
      const ms = median(rs.map((r) => r.msPerStep));
      return { ms, speedup: one / ms, mb: rs[0].bytesPerStep / 1e6, calls: rs[0].callsPerStep, comm: median(rs.map((r) => r.commMsPerStep)) };
    };
    const d = cell('data'), b = cell('branches'), t2 = cell('threads2');
    const a = analytic(name);
    return { name, params: byMode.none[0].params, one, t2, d, b, dataAnalytic: a.data(byMode.none[0].params) / 1e6, branchAnalytic: a.branches() / 1e6 };
  });
  const table = rows.map((r) =>
    `| ${r.name} | ${r.params.toLocaleString('en-US')} | ${r.one.toFixed(1)} | ${r.t2.ms.toFixed(1)} (${r.t2.speedup.toFixed(2)}x) | ${r.d.ms.toFixed(1)} (${r.d.speedup.toFixed(2)}x) | ` +
    `${r.d.mb.toFixed(3)} (${r.dataAnalytic.toFixed(3)}) in ${r.d.calls} calls, ${r.d.comm.toFixed(1)} ms | ` +
    `${r.b.ms.toFixed(1)} (${r.b.speedup.toFixed(2)}x) | ${r.b.mb.toFixed(3)} (${r.branchAnalytic.toFixed(3)}) in ${r.b.calls} calls, ${r.b.comm.toFixed(1)} ms |`).join('\n');
  const md = `| model | parameters | 1 process ms/step | 1 process, 2 threads ms/step (speed-up) | data, 2 processes ms/step (speed-up) | data: MB per step and rank into allreduce (formula), collective ms | branches, 2 processes ms/step (speed-up) | branches: MB per step and rank (formula), collective ms |
|---|---|---|---|---|---|---|---|
${table}

Command: \`node scripts/bench-distributed.js --rounds ${rounds} --steps ${steps}\` at ${commit}, ${new Date().toISOString().slice(0, 10)};
${cpu}, ${os.cpus().length} cores; Open MPI from Debian (\`mpirun --bind-to core -np 2\`), one thread per process unless the column says 2 threads; global batch
${BATCH} MNIST-sized images (28 x 28 x 1), AdamW. Medians over ${rounds} interleaved rounds of ${steps} timed steps after 3 warm-up
steps; a two-process step is its slower rank's. "collective ms" is the time a rank spends inside MPI calls, waiting for the
other rank included.
`;
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, 'distributed.json'), JSON.stringify({ commit, rounds, steps, results }, null, 1));
  process.stdout.write(md);
}

if (args[0] === '--child') {
  child(args[1], args[2], Number(opt('--steps', 20)), Number(opt('--threads', 1))).catch((e) => {
    process.stderr.write(`${e.stack}\n`);
    process.exitCode = 1;
  });
} else {
  main();
}
