#!/usr/bin/env node
// `npm run test:gpu`: the GPU suite. Builds the parity program and the GPU benchmark (plain CMake,
// no Node needed to run them) and runs scripts/gpu-suite.sh (parity, then compute-sanitizer);
// then builds the CUDA addon and runs the jest CUDA suite and the op table on the GPU with
// DUAT_REQUIRE_CUDA=1. Without nvcc or a usable GPU it says why and skips (exit 0) unless the
// GPU is required (DUAT_REQUIRE_CUDA=1 or --require): then that is a failure (exit 1).
//   npm run test:gpu [-- --bench] [-- --require]
'use strict';
const { execFileSync, spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');
const required = process.env.DUAT_REQUIRE_CUDA === '1' || process.argv.includes('--require');
const skip = (why) => {
  console.log(`GPU suite ${required ? 'FAILED (a GPU is required)' : 'skipped'}: ${why}`);
  process.exit(required ? 1 : 0);
};
const { findNvcc, nvccCandidates } = require('./find-nvcc');
const nvcc = findNvcc();
if (!nvcc) skip(`nvcc not found (looked for ${nvccCandidates().join(', ')}; set CUDACXX)`);
const run = (cmd, args, env = {}) => spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } }).status;
const dir = path.join(root, 'build-cuda');
if (!fs.existsSync(path.join(dir, 'CMakeCache.txt'))) {
  execFileSync('cmake', ['-S', root, '-B', dir, '-DCMAKE_BUILD_TYPE=Release', '-DDUAT_WITH_CUDA=ON', `-DCMAKE_CUDA_COMPILER=${nvcc}`], { stdio: 'inherit' });
}
execFileSync('cmake', ['--build', dir, '--target', 'duat_gpu_parity', 'duat_gpu_bench', '--parallel'], { stdio: 'inherit' });
const bench = process.argv.includes('--bench');
const suite = run('bash', [path.join(root, 'scripts', 'gpu-suite.sh'), ...(bench ? ['--bench'] : []), dir]);
if (suite === 2) skip('no usable GPU (see the line above)');
let failed = suite !== 0;
const addon = path.join(root, 'build-cuda-addon');
execFileSync(process.execPath, [require.resolve('cmake-js/bin/cmake-js'), 'compile', '-O', addon, '--CDDUAT_WITH_CUDA=ON', `--CDCMAKE_CUDA_COMPILER=${nvcc}`, '--log-level', 'error'], { cwd: root, stdio: 'inherit' });
failed = run(process.execPath, [require.resolve('jest/bin/jest'), 'test/cuda.test.ts', 'test/ops.test.ts', 'test/backend.test.ts'], {
  DUAT_BINDING_PATH: path.join(addon, 'Release', 'duat.node'),
  DUAT_REQUIRE_CUDA: '1',
}) !== 0 || failed;
process.exit(failed ? 1 : 0);
