/**
 * npm install as a user meets it (scripts/consumer-test.js): the packed tarball with its prebuilt
 * binary, installed with scripts disabled, used from CommonJS, ESM and type-checked TypeScript
 * with no compiler on PATH; a corrupted binary gives NativeLoadError with possible solutions.
 */
import { execFileSync } from 'child_process';
import * as path from 'path';

test('pack, install without scripts or compilers, and run CommonJS, ESM and TypeScript consumers', () => {
  const out = execFileSync(process.execPath, [path.join(__dirname, '..', 'scripts', 'consumer-test.js')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  const summary = JSON.parse(out.trim().split('\n').pop()!);
  for (const c of ['cjs.cjs', 'esm.mjs', 'ts.ts']) expect(summary.consumers[c].ok).toBe(true);
  expect(summary.consumers['esm.mjs'].losses).toEqual(summary.consumers['cjs.cjs'].losses);
  console.log(`tarball ${(summary.tarballBytes / 1024).toFixed(0)} kB, unpacked ${(summary.unpackedBytes / 1024).toFixed(0)} kB, install ${summary.installSeconds.toFixed(1)} s`);
  // The optional CUDA package: how to get it when missing; where nvcc could build it, installed
  // without scripts, loaded, and (without a GPU) the reason duat kept its CPU binary.
  const cuda = summary.consumers.cudaPackage;
  expect(cuda.without).toMatch(/the CUDA package is not installed \(npm install @duat\/linux-x64-cuda/);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const nvcc = (require('../scripts/find-nvcc') as { findNvcc(): string | null }).findNvcc() !== null;
  if (nvcc) {
    expect(cuda.withPackage).toMatch(/@duat\/linux-x64-cuda is installed, but CUDA is unusable: .*driver|^CUDA on /);
    console.log(`CUDA package: ${(cuda.tarballBytes / 2 ** 20).toFixed(1)} MB tarball, installed in ${cuda.installSeconds.toFixed(1)} s; ${cuda.withPackage}`);
  } else {
    console.log('CUDA package not built: nvcc not found (set CUDACXX)');
  }
}, 600000);
