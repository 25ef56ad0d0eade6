// patch.cpp: patchify (im2col for non-overlapping patches) and patch embedding.
//   images (B, ch, S, S) -> patches (B, T, ch*P*P), T = (S/P)^2, row-major over the patch grid
// Backward of patchify scatters (col2im) and ACCUMULATES into dimages.
#include <string>

#include "../core/parallel.h"
#include "ops.h"

namespace duat {

Tensor patchify(const Tensor& images, int64_t patch) {
  check_f32(images, "patchify", "images");
  check_dim(images, 4, "patchify", "images (B, channels, S, S)");
  const int64_t B = images->shape[0], ch = images->shape[1], S = images->shape[2];
  check(images->shape[3] == S, ERROR_SHAPE, "patchify: images must be square, got " + shape_str(images->shape));
  check(patch >= 1 && S % patch == 0, ERROR_SHAPE,
        "patchify: patch size " + std::to_string(patch) + " does not divide the image size " + std::to_string(S));
  const int64_t G = S / patch, T = G * G, F = ch * patch * patch;
  const Tensor x = contiguous_data(images);
  Tensor out = empty({B, T, F});
  const float* px = x->f32();
  float* po = out->f32();
  // Each (image, patch row) copies its P-long pixel runs; the same index map serves backward.
  auto each_run = [=](int64_t b, int64_t gy, auto fn) {
    for (int64_t gx = 0; gx < G; gx++)
      for (int64_t c = 0; c < ch; c++)
        for (int64_t py = 0; py < patch; py++) {
          const int64_t src = ((b * ch + c) * S + gy * patch + py) * S + gx * patch;
          const int64_t dst = (b * T + gy * G + gx) * F + (c * patch + py) * patch;
          fn(src, dst);
        }
  };
  parallel_for(B * G, [&](int64_t t) {
    each_run(t / G, t % G, [&](int64_t src, int64_t dst) {
      for (int64_t px_ = 0; px_ < patch; px_++) po[dst + px_] = px[src + px_];
    });
  });
  return record(out, "patchify", {images}, [=](const Tensor& dout, Grads& g) {
    float* dx = g.f32(0);
    const float* pd = dout->f32();
    parallel_for(B * G, [&](int64_t t) {
      each_run(t / G, t % G, [&](int64_t src, int64_t dst) {
        for (int64_t px_ = 0; px_ < patch; px_++) dx[src + px_] += pd[dst + px_];
      });
    });
  });
}

Tensor patch_embed(const Tensor& images, const Tensor& w, const Tensor& b, int64_t patch) {
  check_f32(w, "patchEmbed", "the weight");
  check_dim(w, 4, "patchEmbed", "the weight (C, channels, P, P)");
  check(images->dim() == 4 && w->shape[1] == images->shape[1] && w->shape[2] == patch && w->shape[3] == patch,
        ERROR_SHAPE,
        "patchEmbed: weight " + shape_str(w->shape) + " does not fit images " + shape_str(images->shape) +
            " with patch size " + std::to_string(patch));
  const int64_t C = w->shape[0];
  return linear(patchify(images, patch), reshape(w, {C, -1}), b);
}

}  // namespace duat
