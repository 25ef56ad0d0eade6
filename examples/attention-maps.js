// DUAT's input-dependent parameters: the attention maps every branch of every stage computes for
// one image, and how much the class token attends to each patch, printed as a grid.
//   node examples/attention-maps.js [image.png]
const path = require('path');
const duat = require('duat');

const model = new duat.ParaFormer({ patchSize: 7, depth: 2, branches: 2, seed: 1 });   // 4 x 4 patches
const file = process.argv[2] ?? path.join(__dirname, 'digit.png');
const pixels = duat.data.prepareImage(duat.data.readImage(file), 1, 28);
const images = duat.tensor(pixels, [1, 1, 28, 28]);
for (const { stage, branch, maps } of model.dynamicParameters(images)) {
  // maps: (1, heads, 17, 17); row 0 is the class token. Average its row over the heads.
  const [, heads, tokens] = maps.shape;
  const a = maps.toArray();
  const row = Array.from({ length: tokens - 1 }, (_, j) => {
    let s = 0;
    for (let h = 0; h < heads; h++) s += a[h * tokens * tokens + 1 + j];
    return s / heads;
  });
  console.log(`stage ${stage}, branch ${branch}: class-token attention per patch`);
  for (let y = 0; y < 4; y++) console.log('  ' + row.slice(4 * y, 4 * y + 4).map((v) => v.toFixed(3)).join(' '));
  maps.dispose();
}
images.dispose();
model.dispose();
