// One rank of a distributed training run for test/distributed.test.ts (also run alone, without
// mpirun, as the single-process reference). A small Para-Former-2-4 on a synthetic data set whose
// label is the images' brightness, so that the loss falls: 65 images, batch 16 (the last batch of
// an epoch has 1 row, so a data-parallel rank gets none), 4 epochs = 20 steps, with shifts, label
// smoothing and clipping switched on so every path of the step is compared.
//   node distributed-worker.js MODE OUT [--abort-at N] [--resume FILE] [--run-dir DIR] [--epochs N]
//     [--pid-dir DIR] [--lib DIR]
// --pid-dir: each rank writes its process id to DIR/RANK.pid once it has joined the job.
// MODE: none | data | branches. Rank 0 writes OUT (JSON: losses, steps, parameters, test accuracy).
'use strict';
const path = require('path');
const fs = require('fs');

const [mode, out, ...rest] = process.argv.slice(2);
const flag = (name) => {
  const i = rest.indexOf(name);
  return i >= 0 ? rest[i + 1] : undefined;
};
const lib = flag('--lib');
if (!lib) {
  process.env.TS_NODE_PROJECT = path.join(__dirname, '..', '..', 'tsconfig.json');
  require('ts-node/register/transpile-only');
}
const duat = require(lib ?? path.join(__dirname, '..', '..', 'lib'));

function dataset(count, seed) {
  const S = 8, px = S * S;
  const images = new Float32Array(count * px);
  const labels = new Int32Array(count);
  let s = seed;
  const rnd = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) / 4294967296);
  for (let i = 0; i < count; i++) {
    labels[i] = i % 3;
    for (let p = 0; p < px; p++) images[i * px + p] = rnd() - 0.5 + (labels[i] - 1);
  }
  return { name: 'synthetic', images, labels, count, channels: 1, size: S, classes: 3 };
}

(async () => {
  duat.setNumThreads(1);
  const pidDir = flag('--pid-dir');
  if (pidDir && mode !== 'none') fs.writeFileSync(path.join(pidDir, `${duat.distributed.init().rank}.pid`), String(process.pid));
  const model = new duat.ParaFormer({ imageSize: 8, patchSize: 4, channels: 1, classes: 3, dim: 16, heads: 2, depth: 2, branches: 4, seed: 3 });
  const controller = new AbortController();
  const abortAt = Number(flag('--abort-at') ?? 0);
  const r = await duat.fit(model, { train: dataset(65, 1), test: dataset(30, 2) }, {
    epochs: Number(flag('--epochs') ?? 4), batchSize: 16, lr: 1e-2, warmupSteps: 4, shift: 1, labelSmoothing: 0.1, clipGradNorm: 0.5, seed: 5,
    evalBatchSize: 7, progress: false, parallel: mode, resume: flag('--resume'), runDir: flag('--run-dir'),
    checkpointEvery: flag('--run-dir') ? 5 : 0, signal: controller.signal,
    onStep: (m) => {
      if (m.step === abortAt) controller.abort();
    },
  });
  if (duat.distributed.rank() === 0) {
    const params = Object.fromEntries(model.namedParameters().map(([n, p]) => [n, Array.from(p.toArray())]));
    fs.writeFileSync(out, JSON.stringify({ losses: r.losses, steps: r.steps, accuracy: r.test?.accuracy, trainAccuracy: r.history.map((h) => h.trainAccuracy), confusion: r.test?.confusion, dim: model.config.dim, params }));
  }
})().catch((e) => {
  process.stderr.write(`${e.name}: ${e.message}\n`);
  process.exitCode = 1;
});
