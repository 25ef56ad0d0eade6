#!/usr/bin/env node
// Builds the C++ test program and native benchmark (plain CMake, no Node) into build-native/.
// Used by test/native.test.ts and the benchmark scripts. Incremental: a no-op when up to date.
'use strict';
const { execFileSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const root = path.resolve(__dirname, '..');
const dir = path.join(root, 'build-native');
const generator = (() => {
  try {
    execFileSync('ninja', ['--version'], { stdio: 'ignore' });
    return ['-G', 'Ninja'];
  } catch {
    return [];
  }
})();
if (!fs.existsSync(path.join(dir, 'CMakeCache.txt'))) {
  execFileSync('cmake', ['-S', root, '-B', dir, '-DCMAKE_BUILD_TYPE=Release', ...generator], { stdio: 'inherit' });
}
execFileSync('cmake', ['--build', dir, '--parallel'], { stdio: 'inherit' });
