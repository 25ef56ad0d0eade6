// The CUDA compiler duat builds with: CUDACXX when it is set (then the only one considered), else
// the toolkit's usual places. Used by the install script (DUAT_CUDA=1), the CUDA package build,
// the GPU suite and their tests.
'use strict';
const fs = require('fs');

/** Where nvcc is looked for, in order. */
function nvccCandidates() {
  return process.env.CUDACXX ? [process.env.CUDACXX] : ['/usr/local/cuda/bin/nvcc', '/usr/bin/nvcc'];
}

/** The first candidate that exists, or null. */
function findNvcc() {
  return nvccCandidates().find((p) => fs.existsSync(p)) ?? null;
}

module.exports = { findNvcc, nvccCandidates };
