/**
 * The benchmark compares like with like: the PyTorch references (bench/reference/paraformer_torch.py,
 * einsum-batched, and bench_torch.py, the per-branch modules users write) and duat compute the same
 * logits for the same weights, exported through safetensors; and the benchmark's summaries pick
 * and name the fastest reference, and count FLOPs as the profiler does.
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

import * as duat from '../lib';
import { bestTorch, commandLine, findPython, markdown, modelFlops, Row, stat } from '../lib/bench/bench';

/** float32 in both frameworks, different summation orders. */
const PARITY_TOL = 1e-4;
const dir = path.join(__dirname, 'fixtures', 'bench-parity');

function duatLogits(): Float32Array {
  const model = duat.load(path.join(dir, 'model.safetensors'));
  const { tensors } = duat.loadSafetensors(path.join(dir, 'input.safetensors'));
  const logits = duat.noGrad(() => duat.tidy(() => model.forward(tensors.get('images')!).toArray()));
  for (const t of tensors.values()) t.dispose();
  model.dispose();
  return logits;
}

function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0, scale = 1e-12;
  for (let i = 0; i < b.length; i++) scale = Math.max(scale, Math.abs(b[i]));
  for (let i = 0; i < b.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst / scale;
}

test.each(['torch-logits.json', 'torch-eager-logits.json'])('duat matches the logits the PyTorch reference computed for the same safetensors weights (%s, committed)', (file) => {
  const torchLogits: number[] = JSON.parse(fs.readFileSync(path.join(dir, file), 'utf8'));
  expect(torchLogits).toHaveLength(4 * 7);
  expect(relErr(duatLogits(), torchLogits)).toBeLessThan(PARITY_TOL);
});

const py = findPython();
if (!py) console.log('skipping the live PyTorch parity check: no Python with torch (set DUAT_PYTHON)');
(py ? test.each(['paraformer_torch.py', 'bench_torch.py']) : test.skip.each(['paraformer_torch.py', 'bench_torch.py']))('and the reference run live agrees (%s, when a Python with torch is available)', (script) => {
  const out = execFileSync(py!, [path.join(__dirname, '..', 'bench', 'reference', script), 'logits',
    '--model', path.join(dir, 'model.safetensors'), '--input', path.join(dir, 'input.safetensors')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  expect(relErr(duatLogits(), JSON.parse(out.trim().split('\n').pop()!))).toBeLessThan(PARITY_TOL);
}, 120000);

const benchCfg = { dim: 24, heads: 2, mlpRatio: 2, patchSize: 4, imageSize: 16, channels: 1, classes: 5, depth: 2, branches: 3 };

test("the benchmark's FLOP count is what the profiler counts in a real training step", async () => {
  const model = new duat.ParaFormer({ ...benchCfg, seed: 1 });
  const x = duat.randn([8, 1, 16, 16], { seed: 2 });
  const y = Int32Array.from({ length: 8 }, (_, i) => i % 5);
  const opt = new duat.optim.AdamW(model.parameters(), { lr: 1e-3 });
  const { report } = await duat.profile(() => model.trainStep(x, y, { optimizer: opt }));
  const counted = report.families.filter((f) => f.family === 'products' || f.family === 'attention').reduce((s, f) => s + f.flops, 0);
  expect(modelFlops(benchCfg, 8).train).toBe(counted);
  // A recording forward computes every token; a gradient-free one the last stage's class tokens past attention.
  const fwd = await duat.profile(() => duat.tidy(() => void model.forward(x)));
  expect(modelFlops(benchCfg, 8).forward).toBe(fwd.report.families.reduce((s, f) => s + f.flops, 0));
  const inf = await duat.profile(() => duat.noGrad(() => duat.tidy(() => void model.forward(x))));
  expect(modelFlops(benchCfg, 8).inference).toBe(inf.report.families.reduce((s, f) => s + f.flops, 0));
  expect(modelFlops(benchCfg, 8).inference).toBeLessThan(modelFlops(benchCfg, 8).forward);
  x.dispose();
  model.dispose();
});

/** A synthetic run: one measurement per round for each runner, times given in ms. */
function row(times: Record<string, number[]>): Row {
  return {
    name: 'ViT-2', depth: 2, branches: 1, flops: { infer: 1e9, train: 64e9 },
    runs: Object.entries(times).map(([runner, ms]) => ({
      runner, mode: 'train' as const,
      runs: ms.map((t) => ({ framework: runner, variant: runner, peak_rss_mb: 100, train_b64: { median_ms: t, min_ms: t, max_ms: t } })),
    })),
  };
}

test('the summaries take the median of the rounds and compare with the fastest PyTorch variant, named', () => {
  const r = row({ duat: [100, 300, 110], 'duat+bf16': [60, 64, 62], 'torch:eager': [200, 190, 210], 'torch:compile': [150, 400, 160], 'torch:eager+bf16': [90, 95, 99] });
  expect(stat(r.runs[0], 'train_b64')).toEqual({ ms: 110, lo: 100, hi: 300, rounds: 3 });
  expect(bestTorch(r, 'train', 'train_b64', false)).toMatchObject({ variant: 'compile', stat: { ms: 160 } });
  expect(bestTorch(r, 'train', 'train_b64', true)).toMatchObject({ variant: 'eager+bf16', stat: { ms: 95 } });
  const md = markdown({ rows: [r], peak: { threads: 2, fp32: 1000, fp32Avx2: 1000, fp32Avx512: null, bf16: 2000, bf16Avx512: 2000, bf16Amx: null }, notes: ['a note'] },
    { layers: [2], grid: 0, reps: 3, rounds: 3, batch: 64, threads: 2, size: 'tiny-mnist', out: '/tmp', torchVariants: [] },
    { command: 'duat bench', commit: 'abc', date: 'today', svg: 'x.svg', machine: 'm', duatIsa: 'avx512', duatTuning: 'amd', torch: 't', ort: 'o' });
  // 64 GFLOP in 110 ms: 582 GFLOP/s, 58% of a 1000 GFLOP/s peak; compile at 160 ms: 1.45x; bf16
  // in 62 ms: 1032 GFLOP/s, 52% of a 2000 GFLOP/s peak, 160/62 = 2.58x compile, 95/62 = 1.53x.
  expect(md).toContain('| ViT-2 | 64.0 | 582 (213-640) | 582 (58%) | 400 (160-427) compile | 1.45x | 1032 (1000-1067) | 1032 (52%) | 2.58x | 674 (646-711) eager+bf16 | 1.53x |');
  expect(md).toContain('- a note');
});

test('duat bench runs end to end: interleaved rounds, the peak, and the three result files (built CLI)', () => {
  const out = fs.mkdtempSync(path.join(require('os').tmpdir(), 'duat-bench-'));
  try {
    const r = spawnSync(process.execPath, [path.join(__dirname, '..', 'dist', 'cli.js'), 'bench', '--layers', '1', '--size', 'mnist', '--batch', '4',
      '--rounds', '2', '--reps', '1', '--torch-variants', 'eager', '--ort', 'none', '--out', out], { encoding: 'utf8', timeout: 240000 });
    expect(r.stderr).toContain('round 2/2 ViT-1');
    expect(r.status).toBe(0);
    const json = JSON.parse(fs.readFileSync(path.join(out, 'cpu.json'), 'utf8'));
    expect(json.peak.fp32 === null || json.peak.fp32 > 0).toBe(true);
    const duatTrain = json.rows[0].runs.find((x: { runner: string; mode: string }) => x.runner === 'duat' && x.mode === 'train');
    expect(duatTrain.runs).toHaveLength(2);
    expect(duatTrain.runs[0].train_b4.median_ms).toBeGreaterThan(0);
    expect(fs.readFileSync(path.join(out, 'cpu.md'), 'utf8')).toContain('| ViT-1 |');
    expect(fs.readFileSync(path.join(out, 'cpu-latency.svg'), 'utf8')).toContain('<svg');
  } finally {
    fs.rmSync(out, { recursive: true, force: true });
  }
}, 300000);

test('the results name the command as a shell reads it back (an empty --torch-variants quoted)', () => {
  expect(commandLine(['duat', 'bench', '--layers', '4,12', '--torch-variants', '', '--ort', 'none', '--out', '/tmp/x']))
    .toBe("duat bench --layers 4,12 --torch-variants '' --ort none --out /tmp/x");
  expect(commandLine(['--out', "my dir's"])).toBe(`--out 'my dir'\\''s'`);
});

test('duat bench refuses unknown sizes and variants before timing anything', () => {
  for (const bad of [['--size', 'huge'], ['--torch-variants', 'eager,jit'], ['--layers', '0']]) {
    const r = spawnSync(process.execPath, [path.join(__dirname, '..', 'dist', 'cli.js'), 'bench', ...bad, '--ort', 'none'], { encoding: 'utf8' });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain(bad[0]);
  }
});
