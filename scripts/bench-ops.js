#!/usr/bin/env node
// npm run bench:ops: builds and runs bench/native/bench_ops (duat against the system OpenBLAS
// in one process) and writes bench/results/cpu-ops.md with the command and the machine.
'use strict';
const { execFileSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.resolve(__dirname, '..');
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

Command: \`npm run bench:ops\` (threads = ${threads}, ${reps} repetitions; median of interleaved runs)

Machine: ${cpu}, ${os.cpus().length} cores, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, ${os.platform()} ${os.release()};
commit ${commit}; ${new Date().toISOString().slice(0, 10)}.

Linear rows: forward \`Y = X W^T + b\` and backward (\`dX = dY W\`, \`dW = dY^T X\`, \`db\`) through duat's
autograd, against the same three products with the system OpenBLAS's \`cblas_sgemm\` (OpenBLAS's
bias work is not done or counted; GFLOP/s count the three products only). Bandwidth rows: bytes
read plus written per second, against a memory copy of the same bytes over the same threads.

${out}
`;
fs.mkdirSync(path.join(root, 'bench', 'results'), { recursive: true });
fs.writeFileSync(path.join(root, 'bench', 'results', 'cpu-ops.md'), doc);
console.log('wrote bench/results/cpu-ops.md');
