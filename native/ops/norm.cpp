// norm.cpp: LayerNorm over the last dimension. Saves mean and rstd (fp32, one per row);
// backward ACCUMULATES into dx, dw, db.
#include <string>

#include "../cpu/kernels.h"
#include "ops.h"

namespace duat {

Tensor layernorm(const Tensor& x, const Tensor& w, const Tensor& b, float eps) {
  check_f32(x, "layerNorm", "the input");
  check(x->dim() >= 1, ERROR_SHAPE, "layerNorm: the input needs at least one dimension");
  check(eps > 0.0f, ERROR_ARGUMENT, "layerNorm: eps must be positive");
  const int64_t C = x->size(-1), rows = C ? x->numel() / C : 0;
  for (const Tensor* t : {&w, &b}) {
    if (!*t) continue;
    check_f32(*t, "layerNorm", t == &w ? "the weight" : "the bias");
    check_same_device(x, *t, "layerNorm");
    check((*t)->dim() == 1 && (*t)->shape[0] == C, ERROR_SHAPE,
          std::string("layerNorm: ") + (t == &w ? "weight" : "bias") + " shape " + shape_str((*t)->shape) +
              " does not match the normalised size " + std::to_string(C));
  }
  const Tensor xc = contiguous_data(x), wc = w ? contiguous_data(w) : nullptr, bc = b ? contiguous_data(b) : nullptr;
  Tensor out = empty(x->shape);
  Tensor mean = empty({rows}), rstd = empty({rows});
  layernorm_forward_cpu(xc->f32(), wc ? wc->f32() : nullptr, bc ? bc->f32() : nullptr, out->f32(), mean->f32(),
                        rstd->f32(), rows, C, eps);
  if (!any_requires_grad({x, w, b})) return out;
  Tensor sx = detach(xc), sw = wc ? detach(wc) : nullptr;
  return record(out, "layernorm", {x, w, b}, [=](const Tensor& dout, Grads& g) {
    layernorm_backward_cpu(sx->f32(), sw ? sw->f32() : nullptr, mean->f32(), rstd->f32(), dout->f32(),
                           g.needs(0) ? g.f32(0) : nullptr, g.needs(1) ? g.f32(1) : nullptr,
                           g.needs(2) ? g.f32(2) : nullptr, rows, C);
  });
}

}  // namespace duat
