/** The loader: a clear NativeLoadError listing every path tried, for missing and corrupt binaries. */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import { NativeLoadError } from '../lib/errors';
import { candidatePaths, loadBinding } from '../lib/native';

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
