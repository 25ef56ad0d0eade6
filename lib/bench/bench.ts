/**
 * `duat bench`: duat against the fastest reference a user would pick, per row.
 *
 * Rows: Para-Former-1-n against the serial ViT of depth n (and, with `grid`, the m-n grid at
 * equal total layers). Each measurement runs in its own process (so peak memory is its own), and
 * the runs are interleaved over `rounds`: round r times every runner of every row before round
 * r + 1 starts, so a slow spell of a shared machine lands on all of them. Reported: the median
 * of the rounds' medians, and the spread between rounds.
 *
 * References: PyTorch as users write it (bench/reference/bench_torch.py: per-branch modules
 * with SDPA, timm's block for the serial rows), einsum-batched, torch.compile, and autocast bf16;
 * onnxruntime-node for inference (the eager model exported to ONNX). The fastest PyTorch variant
 * of each row is the one compared with, and named. The machine's FMA peak is measured in the same
 * invocation, and training is reported as achieved GFLOP/s and a fraction of it.
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import { backendInfo, cpuPeak, setNumThreads } from '../index';
import { SIZES as MODEL_SIZES } from '../nn/ParaFormer';
import { PEAK_ALONGSIDE_SECONDS, Timing, WARMUP_RUNS, WARMUP_SECONDS, WorkerJob } from './timing';

export interface BenchOptions {
  layers: number[];
  grid: number;
  reps: number;
  rounds: number;
  batch: number;
  threads: number;
  size: keyof typeof SIZES;
  out: string;
  python?: string;
  /** PyTorch variants to time: eager, einsum, compile, each optionally +bf16 (autocast). */
  torchVariants: string[];
  /** Where onnxruntime-node lives ('' to look in node_modules and bench/.ort; 'none' to skip). */
  ort?: string;
}

export interface Measurement {
  framework: string;
  variant: string;
  peak_rss_mb: number;
  [key: string]: unknown;
}

/** One runner's measurements of one row, a run per round. */
interface Runs {
  runner: string;  // 'duat', 'torch:<variant>', 'onnxruntime'
  mode: 'infer' | 'train';
  runs: Measurement[];
}

export interface Row {
  name: string;
  depth: number;
  branches: number;
  flops: { infer: number; train: number };  // analytic (modelFlops: inference, train), per image at batch 1 and per step at `batch`
  runs: Runs[];
}

// ViT-Ti's width: on 28 x 28 MNIST-shaped images with 4 x 4 patches (the issue's benchmark
// model, 50 tokens), on 32 x 32 RGB images, and the small default MNIST model.
export const SIZES = {
  'tiny-mnist': { ...MODEL_SIZES.tiny, imageSize: 28, patchSize: 4, channels: 1, classes: 10 },
  tiny: { ...MODEL_SIZES.tiny, imageSize: 32, patchSize: 4, classes: 10 },
  mnist: { ...MODEL_SIZES.mnist, patchSize: 7 },
};
export const BENCH_SIZES = Object.keys(SIZES);

const ROOT = path.resolve(__dirname, '..', '..');

/** A Python that imports torch: $DUAT_PYTHON, the repo's .venv, or python3. */
export function findPython(explicit?: string): string | undefined {
  for (const p of [explicit, process.env.DUAT_PYTHON, path.join(ROOT, '.venv', 'bin', 'python'), 'python3']) {
    if (!p) continue;
    const r = spawnSync(p, ['-c', 'import torch'], { stdio: 'ignore' });
    if (r.status === 0) return p;
  }
  return undefined;
}

/** onnxruntime-node's entry: the explicit path, then node_modules, then bench/.ort (see the README). */
export function findOrt(explicit?: string): string | undefined {
  if (explicit === 'none') return undefined;
  try {
    return require.resolve(explicit || 'onnxruntime-node', { paths: [ROOT, path.join(ROOT, 'bench', '.ort')] });
  } catch {
    return undefined;
  }
}

/** The shape of a benchmarked model. */
export interface Config {
  dim: number;
  heads: number;
  mlpRatio: number;
  patchSize: number;
  imageSize: number;
  channels: number;
  classes: number;
  depth: number;
  branches: number;
}

/**
 * Analytic floating-point operations: every product of the model (patch embedding, q/k/v,
 * projection, MLP, head) and attention's QK^T and PV, for `batch` images. Training adds the
 * backward products: dX and dW of every layer (dW only for the patch embedding). `inference`: what
 * duat's gradient-free forward computes, whose last stage runs attention for the class token's
 * query and its projection and MLP for that token alone (native/model/paraformer.h, model_forward);
 * `forward` counts every token.
 */
export function modelFlops(c: Config, batch: number): { forward: number; inference: number; train: number } {
  const tokens = (c.imageSize / c.patchSize) ** 2, T = tokens + 1, hidden = c.dim * c.mlpRatio;
  const perToken = (rows: number, count: number) => [
    { rows, inF: c.dim, outF: c.dim, count, needsDx: true },
    { rows, inF: c.dim, outF: hidden, count, needsDx: true },
    { rows, inF: hidden, outF: c.dim, count, needsDx: true },
  ];
  const shared = [
    { rows: batch * tokens, inF: c.channels * c.patchSize ** 2, outF: c.dim, count: 1, needsDx: false },
    { rows: batch * T, inF: c.dim, outF: 3 * c.dim, count: c.depth * c.branches, needsDx: true },
    { rows: batch, inF: c.dim, outF: c.classes, count: 1, needsDx: true },
  ];
  type Linear = (typeof shared)[number];
  // Each layer's forward product, `times(layer)` over (training: dX and dW, or dW alone, besides).
  const sum = (ls: Linear[], times = (_: Linear) => 1) => ls.reduce((s, l) => s + 2 * l.rows * l.inF * l.outF * l.count * times(l), 0);
  const every = [...shared, ...perToken(batch * T, c.depth * c.branches)];
  const train = sum(every, (l) => (l.needsDx ? 3 : 2));
  const inference = sum([...shared, ...perToken(batch * T, (c.depth - 1) * c.branches), ...perToken(batch, c.branches)]);
  // QK^T and PV of a stage for `queries` queries a head (inference: the last stage's class token).
  const att = (queries: number) => 4 * batch * c.branches * c.heads * T * queries * (c.dim / c.heads);
  const attention = c.depth * att(T);
  return { forward: sum(every) + attention, inference: inference + (c.depth - 1) * att(T) + att(1), train: train + 3 * attention };
}

function runJson(cmd: string, args: string[]): Measurement {
  const out = execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 24 });
  return JSON.parse(out.trim().split('\n').pop()!);
}

function configs(o: BenchOptions): { name: string; depth: number; branches: number }[] {
  const list: { name: string; depth: number; branches: number }[] = [];
  for (const n of o.layers) {
    if (n > 1) list.push({ name: `Para-Former-1-${n}`, depth: 1, branches: n });
    list.push({ name: `ViT-${n}`, depth: n, branches: 1 });
  }
  for (let m = 2; m < o.grid; m++) {
    if (o.grid % m === 0) list.push({ name: `Para-Former-${m}-${o.grid / m}`, depth: m, branches: o.grid / m });
  }
  return list;
}

interface Runner {
  runner: string;
  mode: 'infer' | 'train';
  run: (cfg: Config, row: Row) => Measurement;
}

export interface BenchRun {
  rows: Row[];
  peak: ReturnType<typeof cpuPeak>;
  python?: string;
  ort?: string;
  notes: string[];
}

export function runBench(o: BenchOptions, log: (s: string) => void = () => {}): BenchRun {
  const py = findPython(o.python);
  const ortEntry = findOrt(o.ort);
  const notes: string[] = [];
  if (!py) notes.push('no Python with torch found (set DUAT_PYTHON): PyTorch not timed');
  if (!ortEntry) notes.push('onnxruntime-node not found (npm install --prefix bench/.ort --ignore-scripts onnxruntime-node): ONNX Runtime not timed');
  notes.forEach(log);
  setNumThreads(o.threads);
  const peak = cpuPeak({ threads: o.threads, seconds: 1 });
  log(`peak: ${JSON.stringify(peak)}`);
  const job = (cfg: Config, mode: 'infer' | 'train', extra: Partial<WorkerJob> = {}): string =>
    JSON.stringify({ config: cfg, mode, reps: o.reps, threads: o.threads, batch: o.batch, ...extra });
  const script = path.join(ROOT, 'bench', 'reference', 'bench_torch.py');
  const onnxDir = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-bench-'));
  const onnxFile = (row: Row) => path.join(onnxDir, `${row.depth}-${row.branches}.onnx`);

  const runners: Runner[] = [];
  const duatBf16 = backendInfo().cpu.bf16;
  if (!duatBf16) notes.push('this CPU has no AVX512_BF16 (or its AVX-512 kernels are off): duat bf16 not timed');
  for (const mode of ['infer', 'train'] as const) {
    runners.push({ runner: 'duat', mode, run: (cfg) => runJson(process.execPath, [path.join(__dirname, 'worker.js'), job(cfg, mode, { precision: 'fp32' })]) });
    if (duatBf16) {
      runners.push({ runner: 'duat+bf16', mode, run: (cfg) => runJson(process.execPath, [path.join(__dirname, 'worker.js'), job(cfg, mode, { precision: 'bf16' })]) });
    }
    for (const v of py ? o.torchVariants : []) {
      runners.push({
        runner: `torch:${v}`, mode,
        run: (cfg) => runJson(py!, [script, 'bench', '--config', JSON.stringify(cfg), '--variant', v, '--mode', mode,
          '--batch', String(o.batch), '--reps', String(o.reps), '--threads', String(o.threads)]),
      });
    }
  }
  if (py && ortEntry) {
    runners.push({
      runner: 'onnxruntime', mode: 'infer',
      run: (cfg, row) => {
        if (!fs.existsSync(onnxFile(row))) runJson(py, [script, 'onnx', '--config', JSON.stringify(cfg), '--out', onnxFile(row)]);
        return runJson(process.execPath, [path.join(__dirname, 'ort-worker.js'), job(cfg, 'infer', { onnx: onnxFile(row), ort: ortEntry })]);
      },
    });
  }

  const rows: Row[] = configs(o).map((c) => {
    const cfg = { ...SIZES[o.size], depth: c.depth, branches: c.branches };
    const f1 = modelFlops(cfg, 1), fb = modelFlops(cfg, o.batch);
    return { ...c, flops: { infer: f1.inference, train: fb.train }, runs: runners.map((r) => ({ runner: r.runner, mode: r.mode, runs: [] })) };
  });
  try {
    for (let round = 0; round < o.rounds; round++) {
      for (const row of rows) {
        const cfg = { ...SIZES[o.size], depth: row.depth, branches: row.branches };
        runners.forEach((r, i) => {
          try {
            row.runs[i].runs.push(r.run(cfg, row));
          } catch (e) {
            const msg = `${row.name} ${r.runner} ${r.mode}: failed (${String((e as { stderr?: string }).stderr ?? e).trim().split('\n').pop()})`;
            if (round === 0) notes.push(msg);
            log(msg);
          }
        });
        log(`round ${round + 1}/${o.rounds} ${row.name}: ${summaryLine(row, o)}`);
      }
    }
  } finally {
    fs.rmSync(onnxDir, { recursive: true, force: true });
  }
  return { rows, peak, python: py, ort: ortEntry, notes };
}

// ---------------------------------------------------------------- summaries

/** Median over rounds of one timing key (e.g. 'train_b64'), with the rounds' spread. */
export interface Stat {
  ms: number;
  lo: number;
  hi: number;
  rounds: number;
}

export function median(v: number[]): number {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

export function stat(runs: Runs | undefined, key: string): Stat | undefined {
  const v = (runs?.runs ?? []).map((m) => (m[key] as Timing | undefined)?.median_ms).filter((x): x is number => typeof x === 'number');
  if (!v.length) return undefined;
  return { ms: median(v), lo: Math.min(...v), hi: Math.max(...v), rounds: v.length };
}

/** Median over rounds of each round's achieved fraction of the peak measured alongside its steps
 * (analytic FLOPs over the round's median step time, over the median of its peaks). */
export function alongside(runs: Runs | undefined, key: string, flops: number): number | undefined {
  const v = (runs?.runs ?? []).flatMap((m) => {
    const t = (m[key] as Timing | undefined)?.median_ms, p = m.peak_alongside;
    return typeof t === 'number' && typeof p === 'number' && p > 0 ? [flops / (t / 1000) / 1e9 / p] : [];
  });
  return v.length ? median(v) : undefined;
}

function peakMb(runs: Runs | undefined): number | undefined {
  const v = (runs?.runs ?? []).map((m) => m.peak_rss_mb);
  return v.length ? median(v) : undefined;
}

function find(row: Row, runner: string, mode: 'infer' | 'train'): Runs | undefined {
  return row.runs.find((r) => r.runner === runner && r.mode === mode && r.runs.length);
}

/** The fastest PyTorch variant of a row for one timing key, among fp32 or bf16 variants. */
export function bestTorch(row: Row, mode: 'infer' | 'train', key: string, bf16: boolean): { variant: string; stat: Stat; runs: Runs } | undefined {
  let best: { variant: string; stat: Stat; runs: Runs } | undefined;
  for (const r of row.runs) {
    if (r.mode !== mode || !r.runner.startsWith('torch:') || r.runner.endsWith('+bf16') !== bf16) continue;
    const s = stat(r, key);
    if (s && (!best || s.ms < best.stat.ms)) best = { variant: r.runner.slice(6), stat: s, runs: r };
  }
  return best;
}

function summaryLine(row: Row, o: BenchOptions): string {
  const t = stat(find(row, 'duat', 'train'), `train_b${o.batch}`);
  const b1 = stat(find(row, 'duat', 'infer'), 'infer_b1');
  const tt = bestTorch(row, 'train', `train_b${o.batch}`, false);
  const ort = stat(find(row, 'onnxruntime', 'infer'), 'infer_b1');
  return `duat train ${t ? t.ms.toFixed(1) : '-'} ms, b1 ${b1 ? b1.ms.toFixed(2) : '-'} ms; torch train ${tt ? `${tt.stat.ms.toFixed(1)} (${tt.variant})` : '-'}; ort b1 ${ort ? ort.ms.toFixed(2) : '-'}`;
}

const ms = (s?: Stat, digits = 2) => (s ? `${s.ms.toFixed(digits)} (${s.lo.toFixed(digits)}-${s.hi.toFixed(digits)})` : '-');
const ips = (s: Stat | undefined, batch: number) => (s ? `${((1000 * batch) / s.ms).toFixed(0)} (${((1000 * batch) / s.hi).toFixed(0)}-${((1000 * batch) / s.lo).toFixed(0)})` : '-');
const ratio = (ours?: Stat, theirs?: Stat) => (ours && theirs ? `${(theirs.ms / ours.ms).toFixed(2)}x` : '-');

export function markdown(run: BenchRun, o: BenchOptions, meta: Record<string, string>): string {
  const B = o.batch, key = `train_b${B}`, pk = run.peak;
  const trainRows = run.rows.map((r) => {
    const d = find(r, 'duat', 'train'), s = stat(d, key), h = stat(find(r, 'duat+bf16', 'train'), key);
    const t32 = bestTorch(r, 'train', key, false), t16 = bestTorch(r, 'train', key, true);
    const eff = (t: Stat | undefined, peak: number | null, runs: Runs | undefined) => {
      const gf = t ? r.flops.train / (t.ms / 1000) / 1e9 : undefined;
      const along = alongside(runs, key, r.flops.train);
      return gf && peak ? `${gf.toFixed(0)} (${((100 * gf) / peak).toFixed(0)}%${along === undefined ? '' : `; ${(100 * along).toFixed(0)}% alongside`})` : '-';
    };
    return `| ${r.name} | ${(r.flops.train / 1e9).toFixed(1)} | ${ips(s, B)} | ${eff(s, pk.fp32, d)} | ${t32 ? `${ips(t32.stat, B)} ${t32.variant}` : '-'} | ${ratio(s, t32?.stat)} | ${ips(h, B)} | ${eff(h, pk.bf16, find(r, 'duat+bf16', 'train'))} | ${ratio(h, t32?.stat)} | ${t16 ? `${ips(t16.stat, B)} ${t16.variant}` : '-'} | ${ratio(h, t16?.stat)} | ${peakMb(d)?.toFixed(0) ?? '-'} | ${t32 ? peakMb(t32.runs)!.toFixed(0) : '-'} |`;
  });
  const inferRows = run.rows.map((r) => {
    const d = find(r, 'duat', 'infer'), ort = find(r, 'onnxruntime', 'infer'), eager = find(r, 'torch:eager', 'infer');
    const d1 = stat(d, 'infer_b1'), dB = stat(d, `infer_b${B}`), o1 = stat(ort, 'infer_b1'), oB = stat(ort, `infer_b${B}`);
    const e1 = stat(eager, 'infer_b1'), t1 = bestTorch(r, 'infer', 'infer_b1', false), tB = bestTorch(r, 'infer', `infer_b${B}`, false);
    return `| ${r.name} | ${ms(d1)} | ${ms(o1)} | ${ratio(d1, o1)} | ${ms(e1)} | ${ratio(d1, e1)} | ${t1 ? `${ms(t1.stat)} ${t1.variant}` : '-'} | ${ms(dB, 1)} | ${ms(oB, 1)} | ${ratio(dB, oB)} | ${tB ? `${ms(tB.stat, 1)} ${tB.variant}` : '-'} | ${ratio(dB, tB?.stat)} |`;
  });
  const variants = run.rows.flatMap((r) =>
    r.runs.filter((x) => x.runs.length).map((x) => {
      const t = stat(x, key), b1 = stat(x, 'infer_b1'), bB = stat(x, `infer_b${B}`);
      return `| ${r.name} | ${x.runner} | ${x.mode} | ${x.mode === 'train' ? ips(t, B) : `${ms(b1)} / ${ms(bB, 1)}`} | ${peakMb(x)!.toFixed(0)} |`;
    }));
  const fmtPeak = (v: number | null) => (v === null ? 'n/a' : v.toFixed(0));
  return `# CPU benchmark: duat against PyTorch and ONNX Runtime

Command: \`${meta.command}\`

Machine: ${meta.machine}; ${o.threads} threads for every framework; commit ${meta.commit}; ${meta.date}.
duat ${meta.duatIsa} kernels (${meta.duatTuning} product tuning); ${meta.torch}; ${meta.ort}. Model: width ${SIZES[o.size].dim}, ${SIZES[o.size].heads} heads,
MLP ${SIZES[o.size].dim * SIZES[o.size].mlpRatio}, ${SIZES[o.size].imageSize} x ${SIZES[o.size].imageSize} x ${SIZES[o.size].channels} images, patch ${SIZES[o.size].patchSize}
(size '${o.size}'), batch ${B}, AdamW.

**Measured peak** (chains of independent FMAs on ${pk.threads} threads, \`duat.cpuPeak()\`): float32
${fmtPeak(pk.fp32)} GFLOP/s (AVX2 ${fmtPeak(pk.fp32Avx2)}, AVX-512 ${fmtPeak(pk.fp32Avx512)}), bf16 ${fmtPeak(pk.bf16)} GFLOP/s (vdpbf16ps ${fmtPeak(pk.bf16Avx512)}, AMX tiles ${fmtPeak(pk.bf16Amx)}: duat's bf16 products run on AMX tiles where the CPU has them).

Every measurement runs in a fresh process: ${o.reps} timed runs after ${WARMUP_RUNS} warm-ups and at least ${WARMUP_SECONDS} s of them, its median taken.
The ${o.rounds} rounds are interleaved (each round times every runner of every row before the next
starts); a cell is the median of the rounds' medians, the spread between rounds in brackets.
PyTorch variants (bench/reference/bench_torch.py): **eager** (one module per branch, nn.Linear, SDPA,
branches summed in a loop; the serial ViT rows are timm's block), **einsum** (a stage's branches
batched), **compile** (torch.compile of eager), and each **+bf16** (CPU autocast). Every comparison
is against the fastest variant of that row, named in the cell. ONNX Runtime runs the eager model
exported to ONNX (opset 17), CPU execution provider, all graph optimisations. Inference, every
runner: the last stage computes the class token alone past attention's keys and values (duat's
gradient-free forward; the PyTorch references in eval mode, and so the exported model). Speed-up = their
time / duat's time. GFLOP/s: analytic FLOPs (products and attention) over duat's step time, and
the fraction of the measured peak of that precision; "alongside": the fraction of the same peak
measured in the worker after each timed step (${PEAK_ALONGSIDE_SECONDS * 1000} ms of FMA chains; the median of a round's
peaks, then the median over rounds), which a busy neighbour slows as it slows the steps. duat bf16: \`precision: 'bf16'\` (bf16
products with float32 sums, on AMX tiles where the CPU has them, else AVX512_BF16; float32 weights, gradients and optimizer state).

## Training (batch ${B}, images/s)

| model | GFLOP/step | duat fp32 | duat fp32 GFLOP/s (of fp32 peak) | PyTorch fp32, fastest | speed-up | duat bf16 | duat bf16 GFLOP/s (of bf16 peak) | duat bf16 / PyTorch fp32 | PyTorch autocast bf16, fastest | duat bf16 / PyTorch bf16 | duat peak MB | PyTorch peak MB |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
${trainRows.join('\n')}

## Inference (ms)

| model | duat b1 | ONNX Runtime b1 | speed-up | PyTorch eager b1 | speed-up | PyTorch fastest b1 | duat b${B} | ONNX Runtime b${B} | speed-up | PyTorch fastest b${B} | speed-up |
|---|---|---|---|---|---|---|---|---|---|---|---|
${inferRows.join('\n')}

Latency against layers: [${path.basename(meta.svg)}](${path.basename(meta.svg)}).

## Every runner

| model | runner | mode | train img/s, or b1 / b${B} ms | peak MB |
|---|---|---|---|---|
${variants.join('\n')}
${run.notes.length ? `\nNotes from the run:\n${run.notes.map((n) => `- ${n}`).join('\n')}\n` : ''}`;
}

export function latencySvg(run: BenchRun): string {
  const series: { label: string; color: string; dash?: string; runner: string; par: boolean; pts: [number, number][] }[] = [
    { label: 'duat Para-Former-1-n', color: '#1f77b4', runner: 'duat', par: true, pts: [] },
    { label: 'duat ViT-n (serial)', color: '#ff7f0e', runner: 'duat', par: false, pts: [] },
    { label: 'ONNX Runtime Para-Former-1-n', color: '#1f77b4', dash: '5,4', runner: 'onnxruntime', par: true, pts: [] },
    { label: 'ONNX Runtime ViT-n', color: '#ff7f0e', dash: '5,4', runner: 'onnxruntime', par: false, pts: [] },
    { label: 'PyTorch eager Para-Former-1-n', color: '#1f77b4', dash: '1,3', runner: 'torch:eager', par: true, pts: [] },
    { label: 'PyTorch eager ViT-n', color: '#ff7f0e', dash: '1,3', runner: 'torch:eager', par: false, pts: [] },
  ];
  for (const r of run.rows) {
    const n = r.depth * r.branches;
    for (const s of series) {
      if (n > 1 && (r.depth === 1) !== s.par) continue;  // one layer belongs to both
      const v = stat(find(r, s.runner, 'infer'), 'infer_b1');
      if (v) s.pts.push([n, v.ms]);
    }
  }
  const W = 680, H = 380, L = 60, R = 240, T = 30, B = 44;
  const maxN = Math.max(...run.rows.map((r) => r.depth * r.branches)), maxY = Math.max(...series.flatMap((s) => s.pts.map((p) => p[1])), 1e-3);
  const x = (n: number) => L + ((W - L - R) * (n - 1)) / Math.max(1, maxN - 1), y = (v: number) => T + (H - T - B) * (1 - v / maxY);
  const lines = series.filter((s) => s.pts.length).map((s, i) => {
    const pts = s.pts.sort((a, b) => a[0] - b[0]).map(([n, v]) => `${x(n).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    return `<polyline points="${pts}" fill="none" stroke="${s.color}" stroke-width="2"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''}/>` +
      `<text x="${W - R + 10}" y="${T + 16 * i + 10}" fill="${s.color}">${s.label}</text>`;
  });
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((t) => `<text x="${L - 6}" y="${y(t * maxY) + 4}" text-anchor="end">${(t * maxY).toFixed(1)}</text>`);
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">
<rect width="${W}" height="${H}" fill="white"/><rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="none" stroke="#999"/>
<text x="${L}" y="18" font-size="13">Batch-1 inference latency (ms) against number of layers, CPU</text>
${ticks.join('\n')}
<text x="${(L + W - R) / 2}" y="${H - 10}" text-anchor="middle">layers (n)</text>
${lines.join('\n')}
</svg>
`;
}

/** A command line as a shell reads it back: empty arguments and ones with other characters quoted. */
export function commandLine(args: string[]): string {
  return args.map((a) => (/^[\w./,=:@%+-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}

export function writeResults(run: BenchRun, o: BenchOptions, command: string): { md: string; json: string; svg: string } {
  fs.mkdirSync(o.out, { recursive: true });
  let commit = 'unknown';
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {}
  const files = { md: path.join(o.out, 'cpu.md'), json: path.join(o.out, 'cpu.json'), svg: path.join(o.out, 'cpu-latency.svg') };
  const first = (runner: string) => run.rows.flatMap((r) => r.runs).find((x) => x.runner.startsWith(runner) && x.runs.length)?.runs[0];
  const meta = {
    command, commit, date: new Date().toISOString().slice(0, 10), svg: files.svg,
    machine: `${os.cpus()[0]?.model ?? 'unknown'}, ${os.cpus().length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${os.platform()}`,
    duatIsa: String(first('duat')?.isa ?? '?'),
    duatTuning: String(first('duat')?.gemm_tuning ?? '?'),
    torch: first('torch:')?.framework ?? 'PyTorch not run',
    ort: first('onnxruntime')?.framework ?? 'ONNX Runtime not run',
  };
  fs.writeFileSync(files.json, JSON.stringify({ meta, options: o, peak: run.peak, notes: run.notes, rows: run.rows }, null, 2));
  fs.writeFileSync(files.md, markdown(run, o, meta));
  fs.writeFileSync(files.svg, latencySvg(run));
  return files;
}
