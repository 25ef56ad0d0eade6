/**
 * The benchmark compares like with like: the PyTorch reference (bench/reference/paraformer_torch.py)
 * and duat compute the same logits for the same weights, exported through safetensors.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

import * as duat from '../lib';
import { findPython } from '../lib/bench/bench';

/** float32 in both frameworks, different summation orders. */
const PARITY_TOL = 1e-4;
const dir = path.join(__dirname, 'fixtures', 'bench-parity');

function duatLogits(): Float32Array {
  const model = duat.load(path.join(dir, 'model.safetensors'));
  const { tensors } = duat.loadSafetensors(path.join(dir, 'input.safetensors'));
  const logits = duat.noGrad(() => duat.tidy(() => model.forward(tensors.get('images')!).toArray()));
  for (const t of tensors.values()) t.dispose();
  model.dispose();
  return logits;
}

function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0, scale = 1e-12;
  for (let i = 0; i < b.length; i++) scale = Math.max(scale, Math.abs(b[i]));
  for (let i = 0; i < b.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst / scale;
}

test('duat matches the logits the PyTorch reference computed for the same safetensors weights (committed)', () => {
  const torchLogits: number[] = JSON.parse(fs.readFileSync(path.join(dir, 'torch-logits.json'), 'utf8'));
  expect(torchLogits).toHaveLength(4 * 7);
  expect(relErr(duatLogits(), torchLogits)).toBeLessThan(PARITY_TOL);
});

const py = findPython();
if (!py) console.log('skipping the live PyTorch parity check: no Python with torch (set DUAT_PYTHON)');
(py ? test : test.skip)('and the reference run live agrees (when a Python with torch is available)', () => {
  const out = execFileSync(py!, [path.join(__dirname, '..', 'bench', 'reference', 'paraformer_torch.py'), 'logits',
    '--model', path.join(dir, 'model.safetensors'), '--input', path.join(dir, 'input.safetensors')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  expect(relErr(duatLogits(), JSON.parse(out.trim().split('\n').pop()!))).toBeLessThan(PARITY_TOL);
}, 120000);
