/**
 * The CUDA build (DUAT_WITH_CUDA=ON, nvcc, CUDA runtime linked statically), as the optional CUDA
 * package ships it (scripts/prebuild-cuda.js; up to date, it is not rebuilt), compiles, and the
 * binary loads on a machine without a GPU or driver, reporting why CUDA is unusable. On a GPU
 * machine the same binary reports the device and a passing kernel self-test. Skipped, with the
 * reason printed, where nvcc is absent.
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import { DeviceError } from '../lib/errors';
import { loadBinding } from '../lib/native';

const root = path.resolve(__dirname, '..');
// eslint-disable-next-line @typescript-eslint/no-require-imports
const nvcc = (require('../scripts/find-nvcc') as { findNvcc(): string | null }).findNvcc();
if (!nvcc) console.log('skipping the CUDA build test: nvcc not found (set CUDACXX)');

(nvcc ? test : test.skip)('the CUDA build compiles with nvcc and loads without a GPU, saying why CUDA is unusable', () => {
  execFileSync(process.execPath, [path.join(root, 'scripts', 'prebuild-cuda.js')], { cwd: root, stdio: 'pipe', env: { ...process.env, CUDACXX: nvcc! } });
  const built = JSON.parse(fs.readFileSync(path.join(root, 'packages', 'linux-x64-cuda', 'BUILD.json'), 'utf8'));
  expect(built.archs).toBe('75-real;80-real;86-real;89-real;90-real;90-virtual');
  expect(built.newestGlibc).toBe('2.34');  // the README's promise for the package
  const b = loadBinding([path.join(root, 'packages', 'linux-x64-cuda', 'duat.node')]);
  const cuda = b.backendInfo().cuda;
  expect(cuda.built).toBe(true);
  expect(cuda.runtimeVersion).toBeGreaterThanOrEqual(12000);
  if (cuda.available) {
    console.log(`CUDA available: ${cuda.device}`);
    expect(cuda.devices).toBeGreaterThanOrEqual(1);
    expect(cuda.reason).toBe('');
  } else {
    console.log(`CUDA built but unusable here, as expected without a GPU: ${cuda.reason}`);
    expect(cuda.reason).toMatch(/cuda|driver|device/i);
  }
  // The CPU engine in the same binary still works.
  const t = b.fromData(new Float32Array([1, 2, 3, 4]), [2, 2]);
  expect(Array.from(b.toArray(b.matmul(t, t)))).toEqual([7, 10, 15, 22]);
  if (!cuda.available) {
    // A request for 'cuda' says why it cannot be served...
    expect(() => b.zeros([2], 0, 'cuda')).toThrow(DeviceError);
    expect(() => b.zeros([2], 0, 'cuda')).toThrow(cuda.reason);
    // ...and the test device serves it in this build too.
    b.setTestDevice(true);
    const u = b.fromData(new Float32Array([1, 2, 3, 4]), [2, 2], 'cuda');
    expect(Array.from(b.toArray(b.matmul(u, u)))).toEqual([7, 10, 15, 22]);
    b.dispose(u);
  }
}, 600000);

test('npm run test:gpu fails when a GPU is required and cannot be used, and skips otherwise', () => {
  const script = path.join(root, 'scripts', 'test-gpu.js');
  const env = { ...process.env, CUDACXX: path.join(os.tmpdir(), 'no-such-nvcc'), DUAT_REQUIRE_CUDA: '' };
  const skipped = spawnSync(process.execPath, [script], { env, encoding: 'utf8' });
  expect(skipped.status).toBe(0);
  expect(skipped.stdout).toMatch(/GPU suite skipped: nvcc not found/);
  const required = spawnSync(process.execPath, [script, '--require'], { env, encoding: 'utf8' });
  expect(required.status).toBe(1);
  expect(required.stdout).toMatch(/FAILED \(a GPU is required\)/);
});
