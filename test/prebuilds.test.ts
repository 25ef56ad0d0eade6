/**
 * The release binaries (scripts/prebuild.js): linux-x64 and linux-arm64, built with zig for glibc
 * 2.28. Read from the files themselves: the ELF machine and every glibc symbol version they need.
 * The x64 one is loaded here and must compute what the development build computes; the arm64 one
 * runs its C++ core tests and a gradient in an arm64 Node under qemu-user where qemu is installed
 * (CI installs it). Packing without binaries, or with one that needs a newer glibc, fails.
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const root = path.join(__dirname, '..');
const script = path.join(root, 'scripts', 'prebuild.js');
// eslint-disable-next-line @typescript-eslint/no-require-imports
const prebuild = require(script) as {
  TARGETS: { name: string; machine: number }[];
  elfInfo(file: string): { machine: number; versions: string[]; maxGlibc: string | null };
  binaryPath(t: { name: string }): string;
};
const hasQemu = spawnSync('sh', ['-c', 'command -v qemu-aarch64'], { encoding: 'utf8' }).stdout.trim() !== '' &&
  fs.existsSync('/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1');

jest.setTimeout(40 * 60 * 1000);

beforeAll(() => {
  // What `npm pack` runs: builds the binaries that are missing or stale, then checks them.
  execFileSync(process.execPath, [script, '--pack'], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
});

test('a lock left by a build that died is taken over at once, and released', () => {
  const lock = path.join(root, 'prebuilds', '.lock');
  fs.mkdirSync(lock);
  // The pid of a process that has exited.
  const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout;
  fs.writeFileSync(path.join(lock, 'pid'), dead);
  const t0 = Date.now();
  execFileSync(process.execPath, [script, '--pack'], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'] });
  expect(Date.now() - t0).toBeLessThan(5 * 60 * 1000);  // not the 30 minutes a live owner gets
  expect(fs.existsSync(lock)).toBe(false);
});

const version = (v: string): number[] => v.split('.').map(Number);
const newerThan228 = (v: string): boolean => {
  const [a, b] = version(v);
  return a > 2 || (a === 2 && b > 28);
};

test.each([['linux-x64', 62], ['linux-arm64', 183]])('%s: the right machine, and no glibc symbol newer than 2.28', (name, machine) => {
  const t = prebuild.TARGETS.find((x) => x.name === name)!;
  const info = prebuild.elfInfo(prebuild.binaryPath(t));
  expect(info.machine).toBe(machine);
  const glibc = info.versions.filter((v) => /^GLIBC_\d/.test(v)).map((v) => v.slice(6));
  expect(glibc.length).toBeGreaterThan(0);  // it does link glibc, and the versions were read
  expect(glibc.filter(newerThan228)).toEqual([]);
  expect(newerThan228(info.maxGlibc!)).toBe(false);
});

test('the symbol reader sees what a host build needs: the development addon, built with this glibc, asks for newer versions', () => {
  const dev = path.join(root, 'build', 'Release', 'duat.node');
  const info = prebuild.elfInfo(dev);
  expect(info.machine).toBe(62);
  expect(newerThan228(info.maxGlibc!)).toBe(true);  // GLIBC_2.34 pthreads at least, on Debian 12
});

test('the x64 release binary loads here and computes what the development build computes', () => {
  const x64 = prebuild.binaryPath(prebuild.TARGETS[0]);
  const probe = `
    const b = require(process.argv[1]);
    const x = b.randn([64, 96], 3, 0, 1), w = b.randn([128, 96], 4, 0, 0.1), bias = b.randn([128], 5, 0, 0.1);
    const h = b.gelu(b.linear(x, w, bias));  // packed GEMM: the widest micro-kernel the CPU has
    const y = b.softmax(b.layerNorm(b.matmul(h, w), null, null, 1e-5), 1);
    console.log(JSON.stringify({ isa: b.backendInfo().cpu.isa, y: Array.from(b.toArray(y)) }));`;
  const run = (binary: string): { isa: string; y: number[] } =>
    JSON.parse(execFileSync(process.execPath, ['-e', probe, binary], { encoding: 'utf8' }).trim());
  const release = run(x64), dev = run(path.join(root, 'build', 'Release', 'duat.node'));
  expect(release.isa).toBe(dev.isa);  // the same kernels chosen (cpuid read the same way)
  expect(release.y.length).toBe(64 * 96);
  let worst = 0;
  for (let i = 0; i < dev.y.length; i++) worst = Math.max(worst, Math.abs(release.y[i] - dev.y[i]));
  expect(worst).toBeLessThan(1e-5);
});

(hasQemu ? test : test.skip)('arm64: the C++ core tests pass under qemu-user, and the addon computes a gradient in an arm64 Node', () => {
  const out = execFileSync(process.execPath, [script, '--check', '--test-arm64'], { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  const tests = /arm64 core tests under qemu: (\d+) passed, (\d+) failed/.exec(out);
  expect(tests).not.toBeNull();
  expect(Number(tests![1])).toBeGreaterThan(200);
  expect(Number(tests![2])).toBe(0);
  const load = /arm64 load under qemu: (\{.*\})/.exec(out);
  if (load) expect(JSON.parse(load[1])).toMatchObject({ arch: 'arm64', isa: 'generic', ok: true });
  else expect(out).toMatch(/arm64 load under qemu: skipped \(could not fetch/);
});
if (!hasQemu) console.log('arm64 tests skipped: qemu-user or the arm64 runtime is not installed (apt-get install qemu-user libc6-arm64-cross libstdc++6-arm64-cross)');

describe('packing cannot ship without fit binaries', () => {
  function copyOf(withNodeModules: boolean): string {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-pack-'));
    for (const f of ['package.json', 'CMakeLists.txt', 'cmake', 'native']) fs.cpSync(path.join(root, f), path.join(dir, f), { recursive: true });
    fs.mkdirSync(path.join(dir, 'scripts'));
    fs.copyFileSync(script, path.join(dir, 'scripts', 'prebuild.js'));
    if (withNodeModules) fs.symlinkSync(path.join(root, 'node_modules'), path.join(dir, 'node_modules'));
    return dir;
  }

  test('no binaries and no zig: prepack fails and says what to do', () => {
    const dir = copyOf(false);
    const env = { ...process.env, DUAT_ZIG: path.join(dir, 'no-such-zig') };
    const r = spawnSync(process.execPath, ['scripts/prebuild.js', '--pack'], { cwd: dir, encoding: 'utf8', env });
    fs.rmSync(dir, { recursive: true, force: true });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/no binary for linux-x64, linux-arm64 matches the sources, and zig is not at hand to build one \(DUAT_ZIG=.*no-such-zig is not a file\)/);
    expect(r.stderr).toMatch(/npm run prebuildify/);
  });

  test('a binary that needs a newer glibc, or is for the wrong machine, fails the check by name', () => {
    const dir = copyOf(false);
    for (const t of prebuild.TARGETS) fs.mkdirSync(path.join(dir, 'prebuilds', t.name), { recursive: true });
    fs.copyFileSync(path.join(root, 'build', 'Release', 'duat.node'), path.join(dir, 'prebuilds', 'linux-x64', 'duat.glibc.node'));
    fs.copyFileSync(prebuild.binaryPath(prebuild.TARGETS[0]), path.join(dir, 'prebuilds', 'linux-arm64', 'duat.glibc.node'));
    const r = spawnSync(process.execPath, ['scripts/prebuild.js', '--check'], { cwd: dir, encoding: 'utf8' });
    fs.rmSync(dir, { recursive: true, force: true });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/prebuilds\/linux-x64\/duat\.glibc\.node needs glibc 2\.(29|[3-9]\d)/);
    expect(r.stderr).toMatch(/prebuilds\/linux-arm64\/duat\.glibc\.node is for ELF machine 62, not 183/);
  });
});
