#!/usr/bin/env node
// `npm run test:gpu`: the GPU suite. Builds the CUDA parity program (plain CMake, no Node) and
// runs it with compute-sanitizer where present (scripts/gpu-suite.sh), then builds the CUDA addon
// and runs the jest CUDA suite against it with DUAT_REQUIRE_CUDA=1. Without nvcc or without a
// usable GPU it prints why and skips (exit 0); a failing check exits 1.
//   npm run test:gpu [-- --bench]   (--bench also times the latency table into bench/results/gpu-run)
'use strict';
const { execFileSync, spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');
const nvcc = [process.env.CUDACXX, '/usr/local/cuda/bin/nvcc', '/usr/bin/nvcc'].find((p) => p && fs.existsSync(p));
if (!nvcc) {
  console.log('GPU suite skipped: nvcc not found (set CUDACXX)');
  process.exit(0);
}
const run = (cmd, args, env = {}) => spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: { ...process.env, ...env } }).status;
const dir = path.join(root, 'build-cuda');
if (!fs.existsSync(path.join(dir, 'CMakeCache.txt'))) {
  execFileSync('cmake', ['-S', root, '-B', dir, '-DCMAKE_BUILD_TYPE=Release', '-DDUAT_WITH_CUDA=ON', `-DCMAKE_CUDA_COMPILER=${nvcc}`], { stdio: 'inherit' });
}
execFileSync('cmake', ['--build', dir, '--target', 'duat_gpu_parity', '--parallel'], { stdio: 'inherit' });
const parity = path.join(dir, 'duat_gpu_parity');
const probe = spawnSync(parity, ['--no-parity'], { encoding: 'utf8' });
if (probe.status === 2) {
  console.log(`GPU suite skipped: ${probe.stdout.trim()}`);
  process.exit(0);
}
const bench = process.argv.includes('--bench');
let failed = run('bash', [path.join(root, 'scripts', 'gpu-suite.sh'), ...(bench ? ['--bench'] : []), parity]) !== 0;
const addon = path.join(root, 'build-cuda-addon');
execFileSync(process.execPath, [require.resolve('cmake-js/bin/cmake-js'), 'compile', '-O', addon, '--CDDUAT_WITH_CUDA=ON', `--CDCMAKE_CUDA_COMPILER=${nvcc}`, '--log-level', 'error'], { cwd: root, stdio: 'inherit' });
failed = run(process.execPath, [require.resolve('jest/bin/jest'), 'test/cuda.test.ts', 'test/backend.test.ts'], {
  DUAT_BINDING_PATH: path.join(addon, 'Release', 'duat.node'),
  DUAT_REQUIRE_CUDA: '1',
}) !== 0 || failed;
process.exit(failed ? 1 : 0);
