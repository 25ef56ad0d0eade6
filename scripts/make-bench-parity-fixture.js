#!/usr/bin/env node
// Writes test/fixtures/bench-parity/: a small duat Para-Former-2-3 (model.safetensors), input
// images (input.safetensors) and the logits the PyTorch benchmark reference
// (bench/reference/paraformer_torch.py, einsum-batched, and bench_torch.py, per-branch modules) computes for them, so CI checks without torch that the
// benchmark compares the same computation. Needs `npm run build` and a Python with torch.
'use strict';
const { execFileSync } = require('child_process');
const fs = require('fs');
const path = require('path');
const duat = require('../dist');

const dir = path.join(__dirname, '..', 'test', 'fixtures', 'bench-parity');
fs.mkdirSync(dir, { recursive: true });
const model = new duat.ParaFormer({ imageSize: 16, patchSize: 4, channels: 3, classes: 7, dim: 24, heads: 3, depth: 2, branches: 3, mlpRatio: 2, seed: 9 });
// Perturb every parameter so that no part of the model is at its initial zeros or ones.
for (const [, p] of model.namedParameters()) {
  const noise = duat.randn(p.shape, { seed: p.size, std: 0.1 });
  p.copy_(p.add(noise).detach());
  noise.dispose();
}
duat.save(path.join(dir, 'model.safetensors'), model);
duat.saveSafetensors(path.join(dir, 'input.safetensors'), [['images', duat.randn([4, 3, 16, 16], { seed: 3 })]]);
const py = require('../dist/bench/bench').findPython();
if (!py) throw new Error('needs a Python with torch');
const out = execFileSync(py, [path.join(__dirname, '..', 'bench', 'reference', 'paraformer_torch.py'), 'logits',
  '--model', path.join(dir, 'model.safetensors'), '--input', path.join(dir, 'input.safetensors')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
fs.writeFileSync(path.join(dir, 'torch-logits.json'), out.trim().split('\n').pop() + '\n');
// The per-branch modules users write (bench/reference/bench_torch.py), on the same weights.
const eager = execFileSync(py, [path.join(__dirname, '..', 'bench', 'reference', 'bench_torch.py'), 'logits',
  '--model', path.join(dir, 'model.safetensors'), '--input', path.join(dir, 'input.safetensors')], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
fs.writeFileSync(path.join(dir, 'torch-eager-logits.json'), eager.trim().split('\n').pop() + '\n');
console.log(`wrote ${dir}`);
