// norm.cpp: LayerNorm over the last dimension, optionally of x + a residual shared by several
// row sets. Saves mean and rstd (fp32, one per row); backward ACCUMULATES into dx, dw, db and
// into the residual's gradient (dx summed over the row sets, by the backend in the same pass).
#include <string>

#include "ops.h"

namespace duat {

Tensor layernorm(const Tensor& x, const Tensor& w, const Tensor& b, float eps, const Tensor& resid) {
  check_f32(x, "layerNorm", "the input");
  DUAT_CHECK(x->dim() >= 1, ERROR_SHAPE, "layerNorm: the input needs at least one dimension");
  DUAT_CHECK(eps > 0.0f, ERROR_ARGUMENT, "layerNorm: eps must be positive");
  const int64_t C = x->size(-1), rows = C ? x->numel() / C : 0;
  for (const Tensor* t : {&w, &b}) {
    if (!*t) continue;
    check_f32(*t, "layerNorm", t == &w ? "the weight" : "the bias");
    check_same_device(x, *t, "layerNorm");
    DUAT_CHECK((*t)->dim() == 1 && (*t)->shape[0] == C, ERROR_SHAPE,
               std::string("layerNorm: ") + (t == &w ? "weight" : "bias") + " shape " + shape_str((*t)->shape) +
                   " does not match the normalised size " + std::to_string(C));
  }
  int64_t R = 0;
  if (resid) {
    check_f32(resid, "layerNorm", "the residual");
    check_same_device(x, resid, "layerNorm");
    DUAT_CHECK(!w && !b, ERROR_ARGUMENT, "layerNorm: a residual input excludes the affine weight and bias");
    R = resid->dim() == 2 ? resid->shape[0] : 0;
    DUAT_CHECK(resid->dim() == 2 && resid->shape[1] == C && (R > 0 ? rows % R == 0 : rows == 0), ERROR_SHAPE,
               "layerNorm: residual shape " + shape_str(resid->shape) + " does not divide the rows of " + shape_str(x->shape));
  }
  const Device dev = x->device;
  const Tensor xc = contiguous_data(x), wc = w ? contiguous_data(w) : nullptr, bc = b ? contiguous_data(b) : nullptr;
  const Tensor rc = resid ? contiguous_data(resid) : nullptr;
  Tensor out = empty(x->shape, DTYPE_F32, dev);
  const bool grad = any_requires_grad({x, w, b, resid});
  Tensor mean = grad ? empty({rows}, DTYPE_F32, dev) : nullptr, rstd = grad ? empty({rows}, DTYPE_F32, dev) : nullptr;
  LayerNormArgs a;
  a.x = xc->ptr_f32(), a.resid = rc ? rc->ptr_f32() : nullptr, a.resid_rows = R;
  a.gamma = wc ? wc->ptr_f32() : nullptr, a.beta = bc ? bc->ptr_f32() : nullptr;
  a.y = out->ptr_f32(), a.mean = grad ? mean->ptr_f32() : nullptr, a.rstd = grad ? rstd->ptr_f32() : nullptr;
  a.rows = rows, a.C = C, a.eps = eps;
  if (rows) backend(dev).layernorm_forward(a);
  if (!grad) return out;
  const Tensor sx = detach(xc), sw = wc ? detach(wc) : nullptr, sr = rc ? detach(rc) : nullptr;
  return record(out, "layernorm", {x, w, b, resid}, [=](const Tensor& dout, Grads& g) {
    LayerNormGradArgs d;
    d.dy = dout->ptr_f32(), d.x = sx->ptr_f32(), d.resid = sr ? sr->ptr_f32() : nullptr, d.resid_rows = R;
    d.mean = mean->ptr_f32(), d.rstd = rstd->ptr_f32(), d.gamma = sw ? sw->ptr_f32() : nullptr;
    d.rows = rows, d.C = C;
    if (g.needs(1)) d.dgamma = g.contiguous_slot(1)->ptr_f32();
    if (g.needs(2)) d.dbeta = g.contiguous_slot(2)->ptr_f32();
    // dx straight into x's gradient; the residual's (dx summed over the row sets) into its own,
    // in the same pass. No rows: the residual's gradient is zero.
    if (!rows) {
      if (g.needs(3)) g.slot(3);
      return;
    }
    bool fresh = false;
    if (g.needs(0)) {
      d.dx = g.contiguous_slot_for_write(0, &fresh)->ptr_f32();
      d.accumulate = !fresh;
    }
    if (g.needs(3)) {
      d.dresid = g.contiguous_slot_for_write(3, &fresh)->ptr_f32();
      d.resid_accumulate = !fresh;
    }
    backend(dev).layernorm_backward(d);
  });
}

}  // namespace duat
