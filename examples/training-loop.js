// A training loop written out by hand: batches, trainStep with AdamW, a learning-rate warm-up,
// and the model's own evaluate, on a synthetic task (is the image's left half brighter than its
// right?), so it needs no data set.
//   node examples/training-loop.js
const duat = require('duat');

function synthetic(count, seed) {
  const images = new Float32Array(count * 16 * 16), labels = new Int32Array(count);
  let s = seed;
  const rand = () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648);
  for (let i = 0; i < count; i++) {
    labels[i] = rand() < 0.5 ? 0 : 1;
    for (let y = 0; y < 16; y++)
      for (let x = 0; x < 16; x++) images[i * 256 + y * 16 + x] = rand() + (labels[i] === (x < 8 ? 1 : 0) ? 0.5 : 0);
  }
  return { images, labels };
}

async function main() {
  const model = new duat.ParaFormer({ imageSize: 16, patchSize: 4, classes: 2, depth: 1, branches: 4, dim: 32, heads: 2 });   // Para-Former-1-4
  const opt = new duat.optim.AdamW(model.parameters(), { lr: 3e-3, weightDecay: 0.05 });
  const train = synthetic(1024, 1), test = synthetic(256, 2);
  const B = 64;
  for (let epoch = 0, step = 0; epoch < 8; epoch++) {
    for (let k = 0; k + B <= 1024; k += B, step++) {
      opt.setLearningRate(3e-3 * Math.min(1, (step + 1) / 10));   // warm-up over 10 steps
      const images = duat.tensor(train.images.slice(k * 256, (k + B) * 256), [B, 1, 16, 16]);
      const r = await model.trainStep(images, train.labels.slice(k, k + B), { optimizer: opt, clipGradNorm: 1 });
      images.dispose();
      if (step % 32 === 0) console.log(`step ${step}: loss ${r.loss.toFixed(4)}`);
    }
  }
  const images = duat.tensor(test.images, [256, 1, 16, 16]);
  const { correct } = await model.evaluate(images, test.labels);
  images.dispose();
  console.log(`held-out accuracy: ${((100 * correct) / 256).toFixed(1)}%`);
  opt.dispose();
  model.dispose();
}

main();
