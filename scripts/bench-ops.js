#!/usr/bin/env node
// npm run bench:ops [-- --out FILE]: builds and runs bench/native/bench_ops (duat against the
// system OpenBLAS in one process) and writes bench/results/cpu-ops.md (or FILE) with the command
// and the machine.
'use strict';
const { execFileSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.resolve(__dirname, '..');
const outArg = process.argv.indexOf('--out');
if (outArg >= 0 && !process.argv[outArg + 1]) throw new Error('bench-ops: --out needs a file name');
const outFile = outArg >= 0 ? path.resolve(process.argv[outArg + 1]) : path.join(root, 'bench', 'results', 'cpu-ops.md');
execFileSync('node', [path.join(__dirname, 'build-native-tests.js')], { stdio: 'inherit' });
const threads = process.env.DUAT_BENCH_THREADS || String(os.cpus().length);
const reps = process.env.DUAT_BENCH_REPS || '21';
const out = execFileSync(path.join(root, 'build-native', 'duat_bench_ops'), [threads, reps], { encoding: 'utf8' });
process.stdout.write(out);
let commit = 'unknown';
try {
  commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
} catch {}
const cpu = os.cpus()[0]?.model ?? 'unknown';
const doc = `# CPU op benchmark

Command: \`npm run bench:ops${outArg >= 0 ? ` -- --out ${path.relative(root, outFile)}` : ''}\` (threads = ${threads}, ${reps} repetitions; median of interleaved runs)

Machine: ${cpu}, ${os.cpus().length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${os.platform()} ${os.release()};
commit ${commit}; ${new Date().toISOString().slice(0, 10)}.

Linear rows: forward \`Y = X W^T + b\` and backward (\`dX = dY W\`, \`dW = dY^T X\`, \`db\`) through
duat's autograd, against the same three products with the system OpenBLAS's \`cblas_sgemm\`
(OpenBLAS's bias work is not done or counted; GFLOP/s count the three products only). Product rows:
\`sgemm\` at the shapes and layouts of a training step and of a batch-1 forward (Para-Former-1-4 and
ViT-4 at width 192: 50 tokens, batch 64 = 3200 rows), as a fraction of the float32 peak measured
here (chains of independent FMAs on every thread, \`native/cpu/peak.h\`). The micro-kernel line is
the products' ceiling here: their register tile alone on one thread, its panels in L1 and its C tile
summed into again and again (\`sgemm_micro_gflops\`, \`native/cpu/gemm.h\`), against the one-thread
peak; a product row's shortfall from it is packing, memory and the threads' sharing. Bandwidth rows:
bytes read plus written per second, against a memory copy of the same bytes over the same threads.
Step kernel rows: the rest of a Para-Former-1-4 training step at its shapes; attention in analytic
GFLOP/s (forward two per-head products, backward four; the rebuilt scores are not counted), GELU's
gradient with its bias sums, the bias reductions, LayerNorm's backward with its weight and bias sums
and fc2's stage epilogue (the combine sgemm runs on each finished block) in GB/s against a copy.
Batch-1 row kernel rows: a batch-1 forward's LayerNorm rows on one thread, as the fused products
normalise their input (\`layernorm_rows_cpu\`, with and without the residual added), in
microseconds a call on each instruction set the CPU has. Weights rows: the products of a ViT-12
batch-1 forward pass with one block's packed weights read by all twelve (in L2), with twelve
blocks' on 4 KiB pages (from L3), and with twelve blocks' as the model keeps them (lasting blocks,
on huge pages where the system grants them).

${out}
## Reading this

- **The claim is the fraction of peak.** The system OpenBLAS is held to its AVX2 Haswell kernels
  here (\`OPENBLAS_CORETYPE=Haswell\`, set by the environment), so on a CPU with full-width AVX-512
  it can reach at most about half of the peak: its column is a reference, not a bar. Whole-step
  comparisons against the fastest PyTorch variant are in \`cpu.md\`; where a step's time goes, in
  \`cpu-profile.md\`.
- **Interleaving costs duat some speed.** Each duat run follows an OpenBLAS run and a pause for
  OpenBLAS's spinning threads to park, so duat starts with caches OpenBLAS has filled; run alone
  (\`DUAT_BENCH_NO_BLAS=1\`) the same products measure faster, the small batch-1 ones most.
- **The products' paths** (\`native/cpu/gemm.cpp\`): packed 12 x 32 AVX-512 tiles; a long K over a
  narrow C split over the threads; A^T B with fewer rows than half its columns computed as
  (B^T A)^T, so the large operand is read in place rather than packed; C rows a multiple of 4 KiB
  apart (four branches side by side: 3072 floats) summed in an L1 buffer first, since their rows
  share L1 sets; batch-1 rows cut into tiles of equal height (50 rows: five of 10) with kernels
  that compute only the rows a tile has, and B (the weights, kept K-major for inference) read in
  place.
- **LayerNorm, softmax, GELU** are bound by arithmetic, not memory: GELU's erf is a rational
  function (about 17 FMAs and a division per element) and softmax's exp about 35 vector
  instructions per 16 elements; the step runs GELU inside the fc1 product's epilogue and softmax
  inside attention, so these rows are the kernels alone.
`;
fs.mkdirSync(path.dirname(outFile), { recursive: true });
fs.writeFileSync(`${outFile}.tmp`, doc);  // then renamed: never a half-written results file
fs.renameSync(`${outFile}.tmp`, outFile);
console.log(`wrote ${path.relative(root, outFile)}`);
