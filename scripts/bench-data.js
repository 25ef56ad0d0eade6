#!/usr/bin/env node
// Streamed image folders, measured (bench/results/data.md): makes a folder of 5,000 JPEG images
// of 224 x 224 (10 classes of coloured shapes on noise, made here, kept in the temp folder for
// later runs), then
//   - decodes batches of 32 with the training transform on 2 threads, nothing else running:
//     images per second;
//   - fine-tunes a ViT-Tiny-sized Para-Former-3-4 (width 192, 3 heads, MLP 768, 16 x 16 patches)
//     on the stream for --steps steps of --batch images: step time, the share of it spent waiting for
//     data, images decoded per second, the process's peak RSS (VmHWM, worker threads included),
//     and the longest the event loop went without turning.
//   npm run build:ts && node scripts/bench-data.js [--images 5000] [--steps 40] [--batch 16] [--out bench/results]
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const jpeg = require('jpeg-js');

const duat = require('../dist');

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
};
const IMAGES = Number(arg('images', 5000)), STEPS = Number(arg('steps', 40)), SIZE = 224, BATCH = Number(arg('batch', 16));
const say = (s) => process.stderr.write(s + '\n');

function makeFolder(dir) {
  const marker = path.join(dir, `.complete-${IMAGES}`);
  if (fs.existsSync(marker)) return;
  fs.rmSync(dir, { recursive: true, force: true });
  let s = 1;
  const rnd = () => (s = (s * 16807) % 2147483647) / 2147483647;
  const t0 = Date.now();
  for (let i = 0; i < IMAGES; i++) {
    const cls = i % 10, w = SIZE, h = SIZE;
    const data = Buffer.alloc(w * h * 4);
    const cx = w * (0.3 + 0.4 * rnd()), cy = h * (0.3 + 0.4 * rnd()), r = w * (0.12 + 0.1 * rnd());
    const hue = [cls * 25, 255 - cls * 20, (cls * 71) % 256];
    for (let y = 0; y < h; y++)
      for (let x = 0; x < w; x++) {
        const dx = x - cx, dy = y - cy;
        const inside = cls < 5 ? dx * dx + dy * dy < r * r : Math.abs(dx) + Math.abs(dy) < r * (1 + (cls - 5) * 0.1);
        const k = (y * w + x) * 4, noise = 40 * rnd();
        for (let c = 0; c < 3; c++) data[k + c] = inside ? hue[c] : noise + 30 * c;
        data[k + 3] = 255;
      }
    const folder = path.join(dir, `class-${cls}`);
    fs.mkdirSync(folder, { recursive: true });
    fs.writeFileSync(path.join(folder, `${String(i).padStart(5, '0')}.jpg`), jpeg.encode({ data, width: w, height: h }, 85).data);
  }
  fs.writeFileSync(marker, '');
  say(`made ${IMAGES} JPEGs in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
}

/** The longest gap between turns of the event loop while `fn` runs (a 10 ms interval timer). */
async function loopGap(fn) {
  let last = Date.now(), worst = 0;
  const iv = setInterval(() => {
    const now = Date.now();
    worst = Math.max(worst, now - last);
    last = now;
  }, 10);
  try {
    const value = await fn();
    return { value, gap: Math.max(worst, Date.now() - last) };
  } finally {
    clearInterval(iv);
  }
}

const vmHWM = () => Number(/VmHWM:\s+(\d+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))[1]) * 1024;

async function main() {
  duat.setNumThreads(2);
  const dir = path.join(os.tmpdir(), 'duat-bench-data');
  makeFolder(dir);
  // The model's own peak first: two steps on one in-memory batch of random images (the process's
  // peak only grows, so what the stream adds shows after).
  const modelOf = () => new duat.ParaFormer({ imageSize: SIZE, patchSize: 16, channels: 3, classes: 10, dim: 192, heads: 3, mlpRatio: 4, depth: 3, branches: 4 });
  {
    const m = modelOf();
    const px = 3 * SIZE * SIZE, images = new Float32Array(BATCH * px);
    for (let i = 0; i < images.length; i++) images[i] = Math.sin(i);
    const mem = { name: 'random', images, labels: Int32Array.from({ length: BATCH }, (_, i) => i % 10), count: BATCH, channels: 3, size: SIZE, classes: 10 };
    await duat.fit(m, { train: mem }, { epochs: 2, batchSize: BATCH, warmupSteps: 1, progress: false });
    m.dispose();
  }
  const rssBefore = vmHWM();
  const listing = await loopGap(() => duat.data.imageFolder(dir, { size: SIZE, channels: 3, augment: true, workers: 2, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }));
  const stream = listing.value;
  say(`listed ${stream.count} files; the event loop's longest gap ${listing.gap} ms`);
  // Decoding alone.
  const t0 = Date.now();
  const decodeBatches = 16;
  for (let k = 0; k < decodeBatches; k++) await stream.load(Array.from({ length: BATCH }, (_, i) => (k * BATCH + i) % stream.count), k);
  const decodeRate = (decodeBatches * BATCH) / ((Date.now() - t0) / 1000);
  say(`decoding alone: ${decodeRate.toFixed(0)} images/s on 2 threads`);
  const model = modelOf();
  const decodedBefore = stream.stats().decoded;
  const steps = [];
  const run = await loopGap(() => duat.fit(model, { train: stream }, {
    epochs: 1, maxSteps: STEPS, batchSize: BATCH, warmupSteps: 5, progress: false, prefetch: 2, onStep: (m) => steps.push(m),
  }));
  const r = run.value;
  const waited = steps.reduce((a, m) => a + m.waitMs, 0) / 1000, later = steps.slice(1).reduce((a, m) => a + m.waitMs, 0) / 1000;
  const stepSeconds = steps.reduce((a, m) => a + m.ms, 0) / 1000;
  const decodedDuring = stream.stats().decoded - decodedBefore;
  const peak = vmHWM();
  await stream.close();
  const row = {
    images: stream.count, size: SIZE, batch: BATCH, steps: r.steps, seconds: r.seconds, stepSeconds,
    waitSeconds: waited, waitAfterFirst: later, waitShare: waited / r.seconds, waitShareAfterFirst: later / (r.seconds - steps[0].waitMs / 1000 - steps[0].ms / 1000),
    decodeRateAlone: decodeRate, decodeRateTraining: decodedDuring / r.seconds, peakRss: peak, rssBeforeStream: rssBefore,
    eagerBytes: stream.count * 3 * SIZE * SIZE * 4, loopGapListing: listing.gap, loopGapTraining: run.gap,
    parameters: model.parameterCount(), cpu: os.cpus()[0].model, node: process.version, duat: duat.version, date: new Date().toISOString().slice(0, 10),
  };
  model.dispose();
  const out = arg('out', path.join(__dirname, '..', 'bench', 'results'));
  fs.writeFileSync(path.join(out, 'data.json'), JSON.stringify(row, null, 1));
  const mb = (b) => (b / 2 ** 20).toFixed(0);
  const md = [
    '# Streamed image folders: memory, decoding and the data wait',
    '',
    `\`node scripts/bench-data.js --images ${IMAGES} --steps ${STEPS} --batch ${BATCH}\` on ${row.cpu} (2 threads), Node ${row.node}, duat ${row.duat}, ${row.date}.`,
    '',
    `A folder of ${row.images.toLocaleString('en-US')} JPEG images of ${SIZE} x ${SIZE} in 10 class folders (made by the script), read by`,
    '`duat.data.imageFolder` (random resized crop and flip, ImageNet normalisation, 2 decoding threads) while a',
    `ViT-Tiny-sized Para-Former-3-4 (${row.parameters.toLocaleString('en-US')} parameters, 16 x 16 patches) trains on it, batch ${BATCH}, 2 compute threads, prefetch 2.`,
    '',
    '| measure | value |',
    '|---|---|',
    `| peak RSS of the process (VmHWM, threads included) | ${mb(row.peakRss)} MB |`,
    `| peak RSS training the same model on one in-memory batch, before the stream | ${mb(row.rssBeforeStream)} MB |`,
    `| the same images decoded up front as float32 | ${mb(row.eagerBytes)} MB |`,
    `| decoding alone, 2 threads | ${row.decodeRateAlone.toFixed(0)} images/s |`,
    `| decoded while training | ${row.decodeRateTraining.toFixed(1)} images/s (what ${row.steps} steps used) |`,
    `| training | ${row.steps} steps in ${row.seconds.toFixed(1)} s, ${(row.stepSeconds / row.steps).toFixed(2)} s a step |`,
    `| waiting for data, every step | ${row.waitSeconds.toFixed(2)} s, ${(100 * row.waitShare).toFixed(1)}% of the run |`,
    `| waiting for data after the first batch | ${row.waitAfterFirst.toFixed(2)} s, ${(100 * row.waitShareAfterFirst).toFixed(1)}% of those steps |`,
    `| longest event-loop gap: listing / training | ${row.loopGapListing} ms / ${row.loopGapTraining} ms |`,
    '',
    'The first batch is waited for in full (nothing decodes before training starts); after it, batches decode on the worker',
    'threads while the native step runs, two ahead. The compute and decoding threads share the same 2 cores, so decoding',
    'lengthens steps somewhat even where the wait is near zero.',
    '',
  ].join('\n');
  fs.writeFileSync(path.join(out, 'data.md'), md);
  process.stdout.write(JSON.stringify(row) + '\n');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
