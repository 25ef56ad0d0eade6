#!/usr/bin/env node
// Builds the optional CUDA package, @duat/linux-x64-cuda (packages/linux-x64-cuda/): the addon
// compiled with nvcc and g++, the CUDA runtime linked statically, code for sm_75, 80, 86, 89, 90
// and PTX, so that users need a driver but no toolkit. The C++ runtime is linked dynamically
// (DUAT_STATIC_CXX_RUNTIME=OFF), which keeps the glibc it needs at 2.34. packages/linux-x64-cuda/
// BUILD.json records the sources' hash and the architectures: an up-to-date binary is kept.
//   node scripts/prebuild-cuda.js [--archs "75-real;...;90-virtual"] [--pack DIR]
// --pack writes the package's tarball into DIR and prints its path as the last line.
'use strict';
const { execFileSync, spawnSync } = require('child_process');
const fs = require('fs');
const path = require('path');

const { findNvcc } = require('./find-nvcc');
const { elfInfo, sourcesHash, withLock } = require('./prebuild');

const root = path.resolve(__dirname, '..');
const pkgDir = path.join(root, 'packages', 'linux-x64-cuda');
const binary = path.join(pkgDir, 'duat.node');
const record = path.join(pkgDir, 'BUILD.json');
const ARCHS = '75-real;80-real;86-real;89-real;90-real;90-virtual';

function fail(message) {
  process.stderr.write(`prebuild-cuda: ${message}\n`);
  process.exit(1);
}


function main() {
  const args = process.argv.slice(2);
  const value = (flag) => {
    const i = args.indexOf(flag);
    return i < 0 ? undefined : args[i + 1] ?? fail(`${flag} needs a value`);
  };
  for (let i = 0; i < args.length; i++) {
    if (!['--archs', '--pack'].includes(args[i])) fail(`unknown flag ${args[i]} (--archs LIST, --pack DIR)`);
    i++;
  }
  const archs = value('--archs') ?? ARCHS;
  const nvcc = findNvcc() ?? fail('needs nvcc (CUDA 12 or newer): set CUDACXX or install the CUDA toolkit');
  const version = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).version;
  if (JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8')).version !== version) {
    fail(`packages/linux-x64-cuda/package.json's version is not duat's ${version}`);
  }
  withLock(() => {
    const hash = sourcesHash();
    let old = {};
    try {
      old = JSON.parse(fs.readFileSync(record, 'utf8'));
    } catch {
      // first build
    }
    if (fs.existsSync(binary) && old.sources === hash && old.archs === archs && old.version === version) return;
    process.stderr.write(`prebuild-cuda: building with ${nvcc} for ${archs}\n`);
    const out = path.join(root, 'build-cuda-package');
    const r = spawnSync(process.execPath, [require.resolve('cmake-js/bin/cmake-js', { paths: [root] }), 'compile', '-O', out, '--log-level', 'error',
      '--CDDUAT_WITH_CUDA=ON', `--CDCMAKE_CUDA_COMPILER=${nvcc}`, `--CDCMAKE_CUDA_ARCHITECTURES=${archs}`, '--CDDUAT_STATIC_CXX_RUNTIME=OFF'], { cwd: root, stdio: 'inherit' });
    if (r.status !== 0) fail(`the CUDA build failed (exit ${r.status})`);
    fs.copyFileSync(path.join(out, 'Release', 'duat.node'), binary + '.tmp');
    fs.renameSync(binary + '.tmp', binary);
    const cuda = execFileSync(nvcc, ['--version'], { encoding: 'utf8' }).match(/release (\d+\.\d+)/)?.[1] ?? 'unknown';
    const info = elfInfo(binary);
    const glibcxx = info.versions.filter((v) => /^GLIBCXX_\d/.test(v)).sort((a, b) => a.localeCompare(b, undefined, { numeric: true })).pop() ?? null;
    fs.writeFileSync(record, JSON.stringify({ version, sources: hash, archs, cuda, newestGlibc: info.maxGlibc, newestGlibcxx: glibcxx }, null, 2) + '\n');
  }, path.join(pkgDir, '.lock'));
  const built = JSON.parse(fs.readFileSync(record, 'utf8'));
  process.stderr.write(`prebuild-cuda: ${path.relative(root, binary)}, ${(fs.statSync(binary).size / 2 ** 20).toFixed(1)} MB, CUDA ${built.cuda}, ` +
    `newest glibc symbol ${built.newestGlibc}, libstdc++ ${built.newestGlibcxx}\n`);
  const dest = value('--pack');
  if (dest) {
    fs.mkdirSync(dest, { recursive: true });
    const npm = process.env.npm_execpath ? [process.execPath, process.env.npm_execpath] : ['npm'];
    const packed = JSON.parse(execFileSync(npm[0], [...npm.slice(1), 'pack', '--json', '--pack-destination', path.resolve(dest)], { cwd: pkgDir, encoding: 'utf8' }))[0];
    process.stdout.write(path.join(path.resolve(dest), packed.filename) + '\n');
  }
}

main();
