/**
 * `duat bench`: inference latency (batch 1 and 64) and training throughput of Para-Former-1-n
 * against a serial ViT of depth n, and an m-n grid at equal total layers, for duat and (when a
 * Python with torch is found) the PyTorch reference in bench/reference, each measurement in its
 * own process. Writes JSON, a Markdown table with ratios, and latency against layers as SVG.
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import { SIZES as MODEL_SIZES } from '../nn/ParaFormer';

export interface BenchOptions {
  layers: number[];
  grid: number;
  reps: number;
  threads: number;
  size: 'tiny' | 'mnist';
  out: string;
  python?: string;
}

interface Timing {
  median_ms: number;
  min_ms: number;
  max_ms: number;
}
interface Measurement {
  framework: string;
  infer_b1?: Timing;
  infer_b64?: Timing;
  train_b64?: Timing;
  peak_rss_mb: number;
}
interface Row {
  name: string;
  depth: number;
  branches: number;
  duat: { infer?: Measurement; train?: Measurement };
  torch?: { infer?: Measurement; train?: Measurement };
}

// ViT-Ti's width on 32 x 32 RGB images (the issue's benchmark model), and the MNIST model.
const SIZES = {
  tiny: { ...MODEL_SIZES.tiny, imageSize: 32, patchSize: 4, classes: 10 },
  mnist: { ...MODEL_SIZES.mnist, patchSize: 7 },
};

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

function measureDuat(cfg: object, mode: 'infer' | 'train', o: BenchOptions): Measurement {
  const out = execFileSync(process.execPath, [path.join(__dirname, 'worker.js'), JSON.stringify(cfg), mode, String(o.reps), String(o.threads)], { encoding: 'utf8' });
  return JSON.parse(out.trim().split('\n').pop()!);
}

function measureTorch(py: string, cfg: object, mode: 'infer' | 'train', o: BenchOptions): Measurement {
  const script = path.join(ROOT, 'bench', 'reference', 'paraformer_torch.py');
  const out = execFileSync(py, [script, 'bench', '--config', JSON.stringify(cfg), '--mode', mode, '--reps', String(o.reps), '--threads', String(o.threads)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  return JSON.parse(out.trim().split('\n').pop()!);
}

function configs(o: BenchOptions): { name: string; depth: number; branches: number }[] {
  const list: { name: string; depth: number; branches: number }[] = [];
  for (const n of o.layers) {
    list.push({ name: `Para-Former-1-${n}`, depth: 1, branches: n });
    if (n > 1) list.push({ name: `ViT-${n} (Para-Former-${n}-1)`, depth: n, branches: 1 });
  }
  for (let m = 2; m < o.grid; m++) {
    if (o.grid % m === 0) list.push({ name: `Para-Former-${m}-${o.grid / m}`, depth: m, branches: o.grid / m });
  }
  return list;
}

export function runBench(o: BenchOptions, log: (s: string) => void = () => {}): Row[] {
  const py = findPython(o.python);
  if (!py) log('no Python with torch found (set DUAT_PYTHON); timing duat alone');
  const rows: Row[] = [];
  for (const c of configs(o)) {
    const cfg = { ...SIZES[o.size], depth: c.depth, branches: c.branches };
    const row: Row = { ...c, duat: {} };
    row.duat.infer = measureDuat(cfg, 'infer', o);
    row.duat.train = measureDuat(cfg, 'train', o);
    if (py) row.torch = { infer: measureTorch(py, cfg, 'infer', o), train: measureTorch(py, cfg, 'train', o) };
    rows.push(row);
    log(`${c.name}: duat b1 ${row.duat.infer.infer_b1!.median_ms.toFixed(2)} ms` + (row.torch ? `, torch b1 ${row.torch.infer!.infer_b1!.median_ms.toFixed(2)} ms` : ''));
  }
  return rows;
}

const fmt = (t?: Timing) => (t ? `${t.median_ms.toFixed(2)} (${t.min_ms.toFixed(1)}-${t.max_ms.toFixed(1)})` : '-');
const ratio = (a?: Timing, b?: Timing) => (a && b ? `${(b.median_ms / a.median_ms).toFixed(2)}x` : '-');

export function markdown(rows: Row[], o: BenchOptions, meta: Record<string, string>): string {
  const head = `| model | duat b1 ms | torch b1 ms | speed-up b1 | duat b64 ms | torch b64 ms | speed-up b64 | duat train img/s | torch train img/s | speed-up train | duat train peak MB | torch train peak MB |
|---|---|---|---|---|---|---|---|---|---|---|---|`;
  const ips = (t?: Timing) => (t ? (64000 / t.median_ms).toFixed(0) : '-');
  const body = rows.map((r) => {
    const d = r.duat, t = r.torch;
    return `| ${r.name} | ${fmt(d.infer?.infer_b1)} | ${fmt(t?.infer?.infer_b1)} | ${ratio(d.infer?.infer_b1, t?.infer?.infer_b1)} | ${fmt(d.infer?.infer_b64)} | ${fmt(t?.infer?.infer_b64)} | ${ratio(d.infer?.infer_b64, t?.infer?.infer_b64)} | ${ips(d.train?.train_b64)} | ${ips(t?.train?.train_b64)} | ${ratio(d.train?.train_b64, t?.train?.train_b64)} | ${d.train?.peak_rss_mb.toFixed(0)} | ${t?.train?.peak_rss_mb.toFixed(0) ?? '-'} |`;
  });
  return `# CPU benchmark: Para-Former against serial ViTs, duat against PyTorch

Command: \`${meta.command}\`

Machine: ${meta.machine}; ${o.threads} threads for both frameworks; commit ${meta.commit}; ${meta.date}.
duat ${meta.duatIsa} kernels; ${meta.torch}. Model size '${o.size}' (${JSON.stringify(SIZES[o.size])}).
Each cell: median of ${o.reps} runs after 3 warm-up runs (min-max in brackets), every measurement
in a fresh process; "speed-up" = PyTorch time / duat time; peak MB = the process's maximum
resident set after the training measurement. Latency against layers: [${path.basename(meta.svg)}](${path.basename(meta.svg)}).

${head}
${body.join('\n')}

Cost per branch of one Para-Former stage (duat, batch-64 inference time / n; the stage's branches
share one norm, one QKV product, one attention launch and one fc2 product, so this should fall
as n grows): ${perBranch(rows)}.
`;
}

function perBranch(rows: Row[]): string {
  return rows
    .filter((r) => r.depth === 1 && r.duat.infer?.infer_b64)
    .map((r) => `n = ${r.branches}: ${(r.duat.infer!.infer_b64!.median_ms / r.branches).toFixed(1)} ms`)
    .join(', ');
}

export function latencySvg(rows: Row[]): string {
  const series: { label: string; color: string; dash?: string; pts: [number, number][] }[] = [
    { label: 'duat Para-Former-1-n', color: '#1f77b4', pts: [] },
    { label: 'duat ViT-n (serial)', color: '#ff7f0e', pts: [] },
    { label: 'PyTorch Para-Former-1-n', color: '#1f77b4', dash: '5,4', pts: [] },
    { label: 'PyTorch ViT-n (serial)', color: '#ff7f0e', dash: '5,4', pts: [] },
  ];
  for (const r of rows) {
    const n = r.depth * r.branches;
    const par = r.depth === 1, ser = r.branches === 1;
    const d = r.duat.infer?.infer_b1?.median_ms, t = r.torch?.infer?.infer_b1?.median_ms;
    if (par && d) series[0].pts.push([n, d]);
    if (ser && d) series[1].pts.push([n, d]);
    if (par && t) series[2].pts.push([n, t]);
    if (ser && t) series[3].pts.push([n, t]);
  }
  const W = 640, H = 380, L = 60, R = 200, T = 30, B = 44;
  const maxN = Math.max(...rows.map((r) => r.depth * r.branches)), maxY = Math.max(...series.flatMap((s) => s.pts.map((p) => p[1])), 1e-3);
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

export function writeResults(rows: Row[], o: BenchOptions, command: string): { md: string; json: string; svg: string } {
  fs.mkdirSync(o.out, { recursive: true });
  let commit = 'unknown';
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {}
  const files = { md: path.join(o.out, 'cpu.md'), json: path.join(o.out, 'cpu.json'), svg: path.join(o.out, 'cpu-latency.svg') };
  const meta = {
    command, commit, date: new Date().toISOString().slice(0, 10), svg: files.svg,
    machine: `${os.cpus()[0]?.model ?? 'unknown'}, ${os.cpus().length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${os.platform()}`,
    duatIsa: rows[0]?.duat.infer ? String((rows[0].duat.infer as unknown as { isa?: string }).isa) : '?',
    torch: rows[0]?.torch?.infer?.framework ?? 'PyTorch not run',
  };
  fs.writeFileSync(files.json, JSON.stringify({ meta, options: o, rows }, null, 2));
  fs.writeFileSync(files.md, markdown(rows, o, meta));
  fs.writeFileSync(files.svg, latencySvg(rows));
  return files;
}
