/** The loader: a clear NativeLoadError listing every path tried, for missing and corrupt binaries. */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import { NativeLoadError } from '../lib/errors';
import { candidatePaths, chooseBinding, loadBinding } from '../lib/native';

describe('native loader', () => {
  test('nothing to load: NativeLoadError lists every path and the fixes', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-load-'));
    const paths = candidatePaths(dir);
    let err: unknown;
    try {
      loadBinding(paths);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(NativeLoadError);
    const e = err as NativeLoadError;
    for (const p of paths) expect(e.message).toContain(p);
    expect(e.message).toMatch(/npm rebuild duat --build-from-source/);
    expect(e.message).toMatch(/DUAT_BINDING_PATH/);
    expect(e.attempts).toHaveLength(paths.length);
  });

  test('a corrupted binary gives NativeLoadError with the loader message, not a crash', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-corrupt-'));
    const bad = path.join(dir, 'duat.node');
    fs.writeFileSync(bad, Buffer.from('\x7fELF this is not a shared object'));
    expect(() => loadBinding([bad])).toThrow(NativeLoadError);
    try {
      loadBinding([bad]);
    } catch (e) {
      expect((e as NativeLoadError).attempts[0].error).toMatch(/invalid ELF header|file too short|not a valid/i);
      expect((e as Error).message).toMatch(/Possible solutions/);
    }
  });

  test('DUAT_BINDING_PATH comes first; DUAT_PREBUILDS_ONLY skips local builds', () => {
    const saved = { ...process.env };
    try {
      process.env.DUAT_BINDING_PATH = '/somewhere/duat.node';
      process.env.DUAT_PREBUILDS_ONLY = '1';
      const paths = candidatePaths('/pkg');
      expect(paths[0]).toBe('/somewhere/duat.node');
      expect(paths.some((p) => p.includes(path.join('build', 'Release')))).toBe(false);
      expect(paths[paths.length - 1]).toBe(path.join('/pkg', 'prebuilds', `${process.platform}-${process.arch}`, 'duat.node'));
    } finally {
      process.env = saved;
    }
  });
});

describe('the package as a user names it', () => {
  test("duat.version is package.json's version, and `duat --version` prints it", () => {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const duat = require('../lib') as typeof import('../lib');
    const pkg = JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'package.json'), 'utf8')) as { version: string; license: string };
    expect(duat.version).toBe(pkg.version);
    expect(duat.version).toMatch(/^\d+\.\d+\.\d+/);
    const cli = path.join(__dirname, '..', 'lib', 'cli.ts');
    for (const flag of ['--version', '-v', 'version']) {
      const out = execFileSync(process.execPath, ['-r', 'ts-node/register/transpile-only', cli, flag], { encoding: 'utf8' });
      expect(out).toBe(`${pkg.version}\n`);
    }
    expect(pkg.license).toBe('MIT');
    expect(fs.readFileSync(path.join(__dirname, '..', 'LICENSE'), 'utf8')).toMatch(/^MIT License\n\nCopyright \(c\) 2026 the duat authors/);
  });

  test('the loader looks for the prebuilt binary of this C library first, then an untagged one', () => {
    const paths = candidatePaths('/pkg');
    const dir = path.join('/pkg', 'prebuilds', `${process.platform}-${process.arch}`);
    const tagged = path.join(dir, 'duat.glibc.node'), plain = path.join(dir, 'duat.node');
    expect(paths.indexOf(tagged)).toBeGreaterThan(-1);  // this machine runs glibc
    expect(paths.indexOf(tagged)).toBe(paths.indexOf(plain) - 1);
  });
});

describe('the optional CUDA package', () => {
  // A package root like an installed duat's, whose own binary is this checkout's build.
  function fakeRoot(cuda?: { version: string; binary?: Buffer }): string {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-root-'));
    fs.writeFileSync(path.join(root, 'package.json'), JSON.stringify({ name: 'duat', version: '0.1.0' }));
    fs.mkdirSync(path.join(root, 'build', 'Release'), { recursive: true });
    fs.symlinkSync(path.join(__dirname, '..', 'build', 'Release', 'duat.node'), path.join(root, 'build', 'Release', 'duat.node'));
    if (cuda) {
      const dir = path.join(root, 'node_modules', '@duat', `${process.platform}-${process.arch}-cuda`);
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify({ name: `@duat/${process.platform}-${process.arch}-cuda`, version: cuda.version }));
      if (cuda.binary) fs.writeFileSync(path.join(dir, 'duat.node'), cuda.binary);
    }
    return root;
  }
  const env = { DUAT_BINDING_PATH: process.env.DUAT_BINDING_PATH, DUAT_CUDA_PACKAGE: process.env.DUAT_CUDA_PACKAGE };
  beforeEach(() => {
    delete process.env.DUAT_BINDING_PATH;
    delete process.env.DUAT_CUDA_PACKAGE;
  });
  afterAll(() => Object.assign(process.env, env));

  test('each reason it is not taken is reported, and duat keeps its own binary', () => {
    const cases: [ReturnType<typeof fakeRoot>, RegExp][] = [
      [fakeRoot(), /^the CUDA package is not installed \(npm install @duat\/linux-x64-cuda: CUDA built in, for an NVIDIA driver 580 or newer\)$/],
      [fakeRoot({ version: '0.0.9', binary: Buffer.from('x') }), /^@duat\/linux-x64-cuda 0\.0\.9 is installed, but duat is 0\.1\.0: install @duat\/linux-x64-cuda@0\.1\.0$/],
      [fakeRoot({ version: '0.1.0', binary: Buffer.from('\x7fELF\x02\x01\x01 corrupted') }), /^@duat\/linux-x64-cuda is installed, but its binary does not load: /],
      [fakeRoot({ version: '0.1.0' }), /^@duat\/linux-x64-cuda is installed, but its binary does not load: not found$/],
    ];
    for (const [root, why] of cases) {
      const chosen = chooseBinding(root);
      expect(chosen.cudaPackageNote).toMatch(why);
      expect(chosen.path).toBe(path.join(root, 'build', 'Release', 'duat.node'));
      fs.rmSync(root, { recursive: true, force: true });
    }
  });

  test('DUAT_CUDA_PACKAGE=0 and DUAT_BINDING_PATH leave it out, with nothing to report', () => {
    const root = fakeRoot({ version: '0.0.1' });
    process.env.DUAT_CUDA_PACKAGE = '0';
    expect(chooseBinding(root).cudaPackageNote).toBe('');
    delete process.env.DUAT_CUDA_PACKAGE;
    process.env.DUAT_BINDING_PATH = path.join(root, 'build', 'Release', 'duat.node');
    expect(chooseBinding(root).cudaPackageNote).toBe('');
    fs.rmSync(root, { recursive: true, force: true });
  });
});
