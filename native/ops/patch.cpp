// patch.cpp: patchify (im2col for non-overlapping patches) and patch embedding.
//   images (B, ch, S, S) -> patches (B, T, ch*P*P), T = (S/P)^2, row-major over the patch grid
// Backward of patchify scatters (col2im) and ACCUMULATES into dimages.
#include <string>

#include "ops.h"

namespace duat {

Tensor patchify(const Tensor& images, int64_t patch) {
  check_f32(images, "patchify", "images");
  check_dim(images, 4, "patchify", "images (B, channels, S, S)");
  const int64_t B = images->shape[0], ch = images->shape[1], S = images->shape[2];
  DUAT_CHECK(images->shape[3] == S, ERROR_SHAPE, "patchify: images must be square, got " + shape_str(images->shape));
  DUAT_CHECK(patch >= 1 && S % patch == 0, ERROR_SHAPE,
             "patchify: patch size " + std::to_string(patch) + " does not divide the image size " + std::to_string(S));
  const int64_t G = S / patch, T = G * G, F = ch * patch * patch;
  const Tensor x = contiguous_data(images);
  Tensor out = empty({B, T, F}, DTYPE_F32, images->device);
  if (out->numel()) backend(images->device).patchify_forward(x->ptr_f32(), out->ptr_f32(), B, ch, S, patch);
  return record(out, "patchify", {images}, [=](const Tensor& dout, Grads& g) {
    const Tensor dx = g.contiguous_slot(0);
    if (dout->numel()) backend(dout->device).patchify_backward(dout->ptr_f32(), dx->ptr_f32(), B, ch, S, patch);
  });
}

Tensor patch_embed(const Tensor& images, const Tensor& w, const Tensor& b, int64_t patch) {
  check_f32(w, "patchEmbed", "the weight");
  check_dim(w, 4, "patchEmbed", "the weight (C, channels, P, P)");
  DUAT_CHECK(images->dim() == 4 && w->shape[1] == images->shape[1] && w->shape[2] == patch && w->shape[3] == patch,
             ERROR_SHAPE,
             "patchEmbed: weight " + shape_str(w->shape) + " does not fit images " + shape_str(images->shape) +
                 " with patch size " + std::to_string(patch));
  const int64_t C = w->shape[0];
  return linear(patchify(images, patch), reshape(w, {C, -1}), b);
}

}  // namespace duat
