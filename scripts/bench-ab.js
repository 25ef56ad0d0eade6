#!/usr/bin/env node
// A/B of two (or more) builds of the addon on whole training steps: each run is a fresh process,
// the benchmark's own worker (lib/bench/worker.ts, as `duat bench` runs it: warm-ups, then
// `--steps` timed training steps of the bench's model, width 192, 3 heads, MLP 768, 28 x 28 x 1
// images, patch 4, batch 64, AdamW), loading one build (DUAT_BINDING_PATH). The builds run
// alternately, round after round (their order reversed every other round), so a machine that
// slows down or speeds up weighs on each alike; the result is the median over rounds of each
// build's run medians, and the paired differences round by round.
//
//   node scripts/bench-ab.js --addon before=/tmp/a.node --addon after=build/Release/duat.node \
//     [--model 4,1] [--rounds 16] [--steps 12] [--threads 2] [--precision fp32|bf16] [--mode train|b1|b64]
//     [--out result.md]
//
// --mode b1 (b64) times inference at batch 1 (64) instead of training steps, each run the median
// of --steps forward passes after the worker's warm-ups.
//
// --env NAME:VAR=VALUE sets an environment variable for one build's runs only, so one build can
// be set against itself (--addon amd=build/Release/duat.node --env amd:DUAT_GEMM_TUNING=amd ...).
//
// --model is depth,branches (4,1: ViT-4; 1,4: Para-Former-1-4). Needs dist/ (npm run build:ts).
'use strict';
const { execFileSync } = require('child_process');
const fs = require('fs');
const path = require('path');
const { SIZES, median } = require('../dist/bench/bench');

const WORKER = path.join(__dirname, '..', 'dist', 'bench', 'worker.js');
const BATCH = 64;

function parseArgs(argv) {
  const o = { addons: [], model: '4,1', rounds: 16, steps: 12, threads: 2, precision: 'fp32', mode: 'train', out: null };
  const envs = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i], v = argv[i + 1];
    if (a === '--addon') {
      const eq = v.indexOf('=');
      if (eq <= 0) throw new Error(`--addon expects NAME=PATH but received ${v}`);
      o.addons.push({ name: v.slice(0, eq), file: path.resolve(v.slice(eq + 1)) });
      i++;
    } else if (a === '--env') {
      const m = /^([^:]+):([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(v ?? '');
      if (!m) throw new Error(`--env expects NAME:VAR=VALUE but received ${v}`);
      envs.push({ name: m[1], key: m[2], value: m[3] });
      i++;
    } else if (['--model', '--rounds', '--steps', '--threads', '--precision', '--mode', '--out'].includes(a)) {
      o[a.slice(2)] = ['--model', '--precision', '--mode', '--out'].includes(a) ? v : Number(v);
      i++;
    } else {
      throw new Error(`unknown argument ${a}`);
    }
  }
  if (o.addons.length < 2) throw new Error('give at least two --addon NAME=PATH');
  if (!['fp32', 'bf16'].includes(o.precision)) throw new Error(`--precision expects fp32 or bf16 but received ${o.precision}`);
  if (!['train', 'b1', `b${BATCH}`].includes(o.mode)) throw new Error(`--mode expects train, b1 or b${BATCH} but received ${o.mode}`);
  for (const a of o.addons) {
    if (!fs.existsSync(a.file)) throw new Error(`no addon at ${a.file}`);
    a.env = {};
  }
  for (const e of envs) {
    const a = o.addons.find((x) => x.name === e.name);
    if (!a) throw new Error(`--env names ${e.name}, which no --addon is`);
    a.env[e.key] = e.value;
  }
  const [depth, branches] = o.model.split(',').map(Number);
  if (!(depth >= 1 && branches >= 1)) throw new Error(`--model expects depth,branches but received ${o.model}`);
  Object.assign(o, { depth, branches });
  return o;
}

function main() {
  const o = parseArgs(process.argv.slice(2));
  const job = JSON.stringify({
    config: { ...SIZES['tiny-mnist'], depth: o.depth, branches: o.branches }, mode: o.mode === 'train' ? 'train' : 'infer', reps: o.steps,
    threads: o.threads, batch: BATCH, precision: o.precision,
  });
  const runs = o.addons.map(() => []);
  const DIGITS = o.mode === 'b1' ? 3 : 2;
  for (let r = 0; r < o.rounds; r++) {
    const order = o.addons.map((_, i) => i);
    if (r % 2) order.reverse();
    for (const i of order) {
      const out = execFileSync(process.execPath, [WORKER, job], {
        env: { ...process.env, ...o.addons[i].env, DUAT_BINDING_PATH: o.addons[i].file }, encoding: 'utf8',
      });
      const t = JSON.parse(out.trim().split('\n').pop())[o.mode === 'train' ? `train_b${BATCH}` : `infer_${o.mode}`];
      runs[i].push({ median: t.median_ms, min: t.min_ms });
    }
    process.stderr.write(`round ${r + 1}/${o.rounds}: ${o.addons.map((a, i) => `${a.name} ${runs[i][r].median.toFixed(DIGITS)}`).join(', ')} ms\n`);
  }
  const name = o.branches === 1 ? `ViT-${o.depth}` : `Para-Former-${o.depth}-${o.branches}`;
  const lines = [];
  const what = o.mode === 'train' ? `training steps (batch ${BATCH}` : `inference (batch ${o.mode.slice(1)}`;
  const unit = o.mode === 'train' ? 'step' : 'forward pass';
  lines.push(`${name} ${what}, ${o.threads} threads${o.precision === 'bf16' ? ', bf16 products' : ''}), ms per ${unit}: each cell a fresh process's median of ${o.steps} ${unit === 'step' ? 'steps' : 'forward passes'} after the bench worker's warm-ups.`);
  lines.push('');
  lines.push(`| round | ${o.addons.map((a) => a.name).join(' | ')} |`);
  lines.push(`|---|${o.addons.map(() => '---|').join('')}`);
  for (let r = 0; r < o.rounds; r++) lines.push(`| ${r + 1} | ${runs.map((v) => v[r].median.toFixed(DIGITS)).join(' | ')} |`);
  lines.push(`| median | ${runs.map((v) => median(v.map((x) => x.median)).toFixed(DIGITS)).join(' | ')} |`);
  lines.push(`| median of runs' fastest ${unit === 'step' ? 'steps' : 'passes'} | ${runs.map((v) => median(v.map((x) => x.min)).toFixed(DIGITS)).join(' | ')} |`);
  lines.push('');
  const base = runs[0];
  for (let i = 1; i < runs.length; i++) {
    const d = base.map((b, r) => b.median - runs[i][r].median);  // > 0: faster than the first
    const mean = d.reduce((s, x) => s + x, 0) / d.length;
    const sd = Math.sqrt(d.reduce((s, x) => s + (x - mean) ** 2, 0) / Math.max(1, d.length - 1));
    const half = 2 * sd / Math.sqrt(d.length);  // about a 95% interval for the mean
    const wins = d.filter((x) => x > 0).length;
    const ref = median(base.map((x) => x.median));
    lines.push(`${o.addons[i].name} against ${o.addons[0].name}: faster in ${wins} of ${d.length} rounds; ` +
      `mean paired difference ${mean.toFixed(DIGITS)} ms (${(100 * mean / ref).toFixed(1)}% of a ${unit}), ` +
      `about ±${half.toFixed(DIGITS)} ms at two standard errors.`);
  }
  const text = lines.join('\n') + '\n';
  process.stdout.write(text);
  if (o.out) fs.writeFileSync(o.out, text);
}

main();
