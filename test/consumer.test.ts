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
}, 600000);
