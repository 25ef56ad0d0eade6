/**
 * The CUDA build (DUAT_WITH_CUDA=ON, nvcc, CUDA runtime linked statically) compiles, and the
 * binary loads on a machine without a GPU or driver, reporting why CUDA is unusable. On a GPU
 * machine the same binary reports the device and a passing kernel self-test. Skipped, with the
 * reason printed, where nvcc is absent.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import { loadBinding } from '../lib/native';

const root = path.resolve(__dirname, '..');
const nvcc = [process.env.CUDACXX, '/usr/local/cuda/bin/nvcc', '/usr/bin/nvcc'].find((p): p is string => !!p && fs.existsSync(p));
if (!nvcc) console.log('skipping the CUDA build test: nvcc not found (set CUDACXX)');

(nvcc ? test : test.skip)('the CUDA build compiles with nvcc and loads without a GPU, saying why CUDA is unusable', () => {
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-cuda-'));
  execFileSync(process.execPath, [require.resolve('cmake-js/bin/cmake-js'), 'compile', '-O', out, '--CDDUAT_WITH_CUDA=ON', `--CDCMAKE_CUDA_COMPILER=${nvcc}`, '--log-level', 'error'], { cwd: root, stdio: 'pipe' });
  const b = loadBinding([path.join(out, 'Release', 'duat.node')]);
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
  fs.rmSync(out, { recursive: true, force: true });
}, 600000);
