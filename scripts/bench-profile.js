#!/usr/bin/env node
// `npm run bench:profile`: where a step's time goes, by op family (duat.profile), for
// Para-Former-1-4 and ViT-4 (ViT-Ti width on 28 x 28 x 1 images, patch 4), training and inference
// at batch 64 and batch 1, on 2 threads, against the machine's measured FMA peak. Writes
// bench/results/cpu-profile.md and .json.
//   node scripts/bench-profile.js [--steps 10] [--threads 2] [--layers 4] [--precision fp32|bf16] [--out bench/results]
// (--layers n: Para-Former-1-n and ViT-n; a comma-separated list profiles each in turn; --precision
// bf16: the models' bf16 products, shares of the bf16 peak)
'use strict';
const { execFileSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');
const duat = require('../dist');
const { modelFlops, SIZES } = require('../dist/bench/bench');

// The peak a case's share is of: its precision's (bf16: the instructions its products run on).
const peakOf = (peak) => (PRECISION === 'bf16' && peak.bf16 !== null ? peak.bf16 : peak.fp32);

function arg(name, def) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
}
const steps = Number(arg('steps', 10)), threads = Number(arg('threads', 2)), out = arg('out', path.join(__dirname, '..', 'bench', 'results'));
const PRECISION = arg('precision', 'fp32');
if (!['fp32', 'bf16'].includes(PRECISION)) throw new Error(`--precision: fp32 or bf16, got '${PRECISION}'`);
const SIZE = SIZES['tiny-mnist'];  // duat bench's model
// Warm-up runs first: the first steps fault in the block cache's memory and the products' scratch
// (native/cpu/gemm.cpp), which the profile would count as the steady state's.
const WARMUPS = 6;
const LAYERS = String(arg('layers', '4')).split(',').map(Number);
if (LAYERS.some((n) => !Number.isInteger(n) || n < 1)) throw new Error(`--layers: positive integers, got '${arg('layers')}'`);
const MODELS = LAYERS.flatMap((n) => [[`Para-Former-1-${n}`, 1, n], [`ViT-${n}`, n, 1]]);
const FAMILIES = ['products', 'attention', 'norms', 'gelu', 'softmax', 'elementwise', 'copies', 'allocation', 'optimizer'];

async function profileCase(model, mode, batch) {
  const x = duat.randn([batch, 1, 28, 28], { seed: 1 });
  const y = Int32Array.from({ length: batch }, (_, i) => i % 10);
  const opt = new duat.optim.AdamW(model.parameters(), { lr: 1e-4 });
  const once = mode === 'train'
    ? () => model.trainStep(x, y, { optimizer: opt })
    : () => duat.noGrad(() => duat.tidy(() => void model.forward(x).toArray()));
  for (let i = 0; i < WARMUPS; i++) await once();
  const { report } = await duat.profile(async () => {
    for (let i = 0; i < steps; i++) await once();
  });
  x.dispose();
  return report;
}

async function main() {
  duat.setNumThreads(threads);
  const peak = duat.cpuPeak({ threads, seconds: 1 });
  const cases = [];
  for (const [name, depth, branches] of MODELS) {
    const cfg = { ...SIZE, depth, branches };
    const model = new duat.ParaFormer({ ...cfg, seed: 0, precision: PRECISION });
    for (const [mode, batch] of [['train', 64], ['infer', 64], ['train', 1], ['infer', 1]]) {
      const report = await profileCase(model, mode, batch);
      const f = modelFlops(cfg, batch);
      const flops = mode === 'train' ? f.train : f.inference;
      cases.push({ name, mode, batch, flops, report });
      process.stderr.write(`${name} ${mode} b${batch}: ${(1000 * report.seconds / steps).toFixed(2)} ms/step\n`);
    }
    model.dispose();
  }
  let commit = 'unknown';
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {}
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(path.join(out, 'cpu-profile.json'), JSON.stringify({ commit, steps, threads, peak, cases }, null, 2));
  fs.writeFileSync(path.join(out, 'cpu-profile.md'), markdown(cases, peak, commit));
  process.stdout.write(JSON.stringify({ md: path.join(out, 'cpu-profile.md') }) + '\n');
}

function markdown(cases, peak, commit) {
  const perStep = (s) => (1000 * s) / steps;
  const head = `| case | ms/step | GFLOP/s (of peak) | ${FAMILIES.join(' | ')} | outside kernels | threads idle in kernels | page faults/step | kernel ms/step |\n|${'---|'.repeat(FAMILIES.length + 7)}`;
  const rows = cases.map((c) => {
    const r = c.report, fam = new Map(r.families.map((f) => [f.family, f]));
    const gf = c.flops / (r.seconds / steps) / 1e9;
    const cell = (s) => `${perStep(s).toFixed(s * 1000 / steps < 1 ? 2 : 1)} (${((100 * s) / r.seconds).toFixed(0)}%)`;
    const idle = r.families.reduce((t, f) => t + f.idleSeconds, 0);
    const idleCell = `${perStep(idle).toFixed(2)} (${((100 * idle) / (threads * r.seconds)).toFixed(1)}%)`;
    return `| ${c.name} ${c.mode} b${c.batch} | ${perStep(r.seconds).toFixed(2)} | ${gf.toFixed(0)} (${((100 * gf) / peakOf(peak)).toFixed(0)}%) | ${FAMILIES.map((n) => cell(fam.get(n).seconds)).join(' | ')} | ${cell(r.outsideSeconds)} | ${idleCell} | ${(r.pageFaults / steps).toFixed(0)} | ${perStep(r.kernelSeconds).toFixed(2)} |`;
  });
  const shapes = cases.filter((c) => c.batch === 64 && c.mode === 'train').map((c) => {
    const lines = c.report.products.slice(0, 12).map((p) => `| ${p.shape} | ${perStep(p.seconds).toFixed(2)} | ${p.calls / steps} | ${p.gflops.toFixed(0)} (${((100 * p.gflops) / peakOf(peak)).toFixed(0)}%) | ${perStep(p.idleSeconds).toFixed(2)} |`);
    const fam = new Map(c.report.families.map((f) => [f.family, f]));
    const others = c.report.calls.filter((k) => k.family !== 'products').slice(0, 12)
      .map((k) => `| ${k.label} | ${k.family} | ${perStep(k.seconds).toFixed(2)} | ${k.calls / steps} | ${perStep(k.idleSeconds).toFixed(2)} |`);
    return `### ${c.name}, training at batch 64\n\nProducts ${fam.get('products').gflops.toFixed(0)} GFLOP/s, attention ${fam.get('attention').gflops.toFixed(0)} GFLOP/s.\n\n| product (M x N x K) | ms/step | calls/step | GFLOP/s (of peak) | threads idle ms/step |\n|---|---|---|---|---|\n${lines.join('\n')}\n\n| other call | family | ms/step | calls/step | threads idle ms/step |\n|---|---|---|---|---|\n${others.join('\n')}\n`;
  });
  return `# Where the CPU step's time goes

Command: \`npm run bench:profile${[LAYERS.join(',') === '4' ? '' : ` --layers ${LAYERS.join(',')}`, PRECISION === 'fp32' ? '' : ` --precision ${PRECISION}`].join('').replace(/^ /, ' -- ')}\` (scripts/bench-profile.js), ${steps} steps after ${WARMUPS} warm-ups, ${threads} threads;
commit ${commit}; ${new Date().toISOString().slice(0, 10)}; ${os.cpus()[0]?.model ?? 'unknown CPU'}; ${duat.backendInfo().cpu.gemmTuning} product tuning.
Model: ViT-Ti width (192, 3 heads, MLP 768) on 28 x 28 x 1 images, patch 4 (50 tokens); AdamW.
Measured peak (\`duat.cpuPeak()\`): float32 ${peak.fp32.toFixed(0)} GFLOP/s, bf16 ${peak.bf16 === null ? 'n/a' : peak.bf16.toFixed(0)} GFLOP/s on ${peak.threads} threads${PRECISION === 'bf16' ? ` (${duat.backendInfo().cpu.amx ? 'AMX tiles' : 'vdpbf16ps'}). Precision: bf16 products; shares are of the bf16 peak.` : '.'}

Each family cell: ms per step (share of the step). Families are the CPU backend's calls
(\`duat.profile\`, native/core/profile.h): products include their fused bias, GELU and stage
epilogues; attention is the fused kernel with its per-head products; "outside kernels" is
everything else: building the graph, autograd, the bindings and JavaScript, and the profiler's own
reading of the clock around every call and of the process's counters around every call but the
allocations (two system calls, a few microseconds: it counts where a step makes many small calls,
as ViT's does). Page faults and kernel time are the whole process's (the kernel zeroing fresh pages
shows there, in the call that first writes the memory). "Threads idle in
kernels": the thread time the pool left unused inside the calls, summed over its threads (a
thread waiting for another's last tasks of a parallel region, or for the calling thread's serial
work), ms per step and share of the step's thread time (${threads} x its wall time); outside
kernels the other threads wait too.

${head}
${rows.join('\n')}

${shapes.join('\n')}`;
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
