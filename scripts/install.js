#!/usr/bin/env node
// npm install hook. Does nothing that can fail an install: a prebuilt binary (prebuilds/) is
// used as it is. Building from source happens only when asked (DUAT_BUILD_FROM_SOURCE=1 or
// `npm rebuild duat --build-from-source`; with DUAT_CUDA=1 the CUDA backend is built too, with
// nvcc from CUDACXX or /usr/local/cuda); otherwise, if no binary loads, it says what to do.
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');
if (fs.existsSync(path.join(root, 'lib', 'index.ts'))) process.exit(0);  // a development checkout: `prepare` builds

const fromSource = process.env.DUAT_BUILD_FROM_SOURCE === '1' || process.env.npm_config_build_from_source === 'true';
if (fromSource) {
  const cuda = [];
  if (process.env.DUAT_CUDA === '1') {
    const nvcc = require('./find-nvcc').findNvcc();
    if (!nvcc) {
      process.stderr.write('duat: DUAT_CUDA=1 needs nvcc (CUDA 12 or newer): set CUDACXX or install the CUDA toolkit\n');
      process.exit(1);
    }
    cuda.push('--CDDUAT_WITH_CUDA=ON', `--CDCMAKE_CUDA_COMPILER=${nvcc}`);
  }
  const r = spawnSync(process.execPath, [require.resolve('cmake-js/bin/cmake-js'), 'compile', '--log-level', 'error', ...cuda], { cwd: root, stdio: 'inherit' });
  process.exit(r.status === null ? 1 : r.status);
}
const probe = spawnSync(process.execPath, ['-e', `require(${JSON.stringify(path.join(root, 'dist', 'native.js'))}).loadBinding()`], { encoding: 'utf8' });
if (probe.status !== 0) {
  process.stderr.write(
    `duat: no prebuilt binary loads on ${process.platform}-${process.arch}; duat will throw NativeLoadError when used.\n` +
      '  To build from source (needs cmake and a C++17 compiler): npm rebuild duat --build-from-source\n' +
      '  Or set DUAT_BINDING_PATH to a duat.node built elsewhere.\n',
  );
}
process.exit(0);
