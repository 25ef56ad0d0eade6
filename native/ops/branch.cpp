// branch.cpp: the Para-Former stage's fused ops (ops.h; docs/design.md, "The fused stage"). All N
// branches of a stage in one (batched) product each, whatever N:
//   branch_linear  y_n = act(x_n W'_n^T + b'_n), LayerNorm affines folded into W' and b'
//   stage_sum      y = x + scale * (sum_n h_n W2_n^T + b2 + sum_n a_n), one product of inner size N*M
// Layouts: x (R, C) shared or (N, R, C) per branch; y (N, R, O), in memory either (R, N*O)
// ("interleaved": branch n at columns n*O) or (N, R, O). Backward ACCUMULATES into every input's
// gradient; the products write straight into the gradient buffers, which are laid out like their
// inputs (autograd.h), so interleaved gradients need no copies either.
#include <array>
#include <string>
#include <utility>

#include "matrix.h"
#include "ops.h"

namespace duat {

namespace {

// The floats between the rows of an interleaved (R, N*O) activation: N*O, and for the MLP's hidden
// activations on the CPU, where that is a multiple of 4 KiB, PAD_FLOATS more (padded rows: only
// products read them; attention reads QKV as a plain (B, T, N*3C)). The products tile 12 rows at a time;
// rows a multiple of 4 KiB apart all fall on the same L1 sets, and 1 KiB more spreads them over
// four groups of them. Para-Former-1-12's fc1 and stage products (3200 x 9216 at 4-byte floats,
// rows 36 KiB apart), 3-5% faster in all; its weight gradients, which read the rows in place,
// were 5% slower with rows padded by 64 bytes and as fast with 1 KiB.
constexpr int64_t PAD_FLOATS = 256;
int64_t interleaved_row_stride(int64_t N, int64_t O, Device dev, bool hidden) {
  const int64_t w = N * O;
  return hidden && dev == DEVICE_CPU && (w * 4) % 4096 == 0 ? w + PAD_FLOATS : w;
}

// A (N, R, O) tensor laid out as (R, N*O), its rows interleaved_row_stride apart.
Tensor empty_interleaved(int64_t N, int64_t R, int64_t O, Device dev, bool hidden = false) {
  const int64_t ld = interleaved_row_stride(N, O, dev, hidden);
  const Tensor base = empty({R, ld}, DTYPE_F32, dev);
  return make_view(base, {N, R, O}, {O, ld, 1}, 0);
}

// Laid out as (R, N*O), rows N*O or more apart (padded).
bool is_interleaved(const Tensor& t) {
  const int64_t N = t->shape[0], R = t->shape[1], O = t->shape[2];
  return (O == 1 || t->strides[2] == 1) && (R == 1 || t->strides[1] >= N * O) && (N == 1 || t->strides[0] == O);
}

// The row stride of an interleaved tensor (any value where it has one row).
int64_t row_stride(const Tensor& t) { return t->shape[1] == 1 ? t->shape[0] * t->shape[2] : t->strides[1]; }

// The blocks of rows an (N, R, O) activation is stored as, {batch, rows, cols}: {1, R, N*O}
// interleaved without padding, {N, R, O} contiguous; {0, 0, 0} when it is neither.
std::array<int64_t, 3> row_blocks(const Tensor& t) {
  if (is_interleaved(t) && row_stride(t) == t->shape[0] * t->shape[2]) return {1, t->shape[1], t->shape[0] * t->shape[2]};
  if (t->is_contiguous()) return {t->shape[0], t->shape[1], t->shape[2]};
  return {0, 0, 0};
}

// Laid out exactly like out.
Tensor empty_like_output(const Tensor& out) {
  if (!is_interleaved(out) || out->is_contiguous()) return empty_like(out);
  const int64_t N = out->shape[0], R = out->shape[1], O = out->shape[2];
  return make_view(empty({R, row_stride(out)}, DTYPE_F32, out->device), {N, R, O}, out->strides, 0);
}

void check_branch_param(const Tensor& t, const Tensor& x, const Shape& shape, const char* op, const char* name) {
  check_f32(t, op, name);
  check_same_device(x, t, op);
  DUAT_CHECK(t->shape == shape, ERROR_SHAPE,
             std::string(op) + ": " + name + " has shape " + shape_str(t->shape) + " but needs " + shape_str(shape));
}

// Runs fn(buffer) on input i's gradient for a kernel that writes every element: the fresh
// contiguous buffer itself, or a temporary added in afterwards; a temporary when the gradient is
// not wanted but the kernel writes it anyway (null `shape` means the kernel needs no buffer).
struct WriteTarget {
  Tensor buffer;
  bool add_after = false;
};
WriteTarget write_target(Grads& g, size_t i, const Shape& shape, Device dev) {
  if (!g.needs(i)) return {shape.empty() ? nullptr : empty(shape, DTYPE_F32, dev), false};
  bool fresh = false;
  Tensor& slot = g.contiguous_slot_for_write(i, &fresh);
  if (fresh) return {slot, false};
  return {empty(shape, DTYPE_F32, dev), true};
}

// Points g at `packed` (pack_weight's (groups, panels, K, width)) when it is the packing of g's B
// for this product (`groups` products of g.N columns, K = g.K) in panels the device reads.
void use_packed(GemmArgs& g, const Tensor& packed, int64_t groups, Device dev) {
  if (!packed || packed->device != dev || packed->dim() != 4) return;
  const int width = backend(dev).packed_b_width();
  if (width == 0 || packed->shape[3] != width) return;
  const int64_t panels = (g.N + width - 1) / width;
  DUAT_CHECK(packed->shape[0] == groups && packed->shape[1] == panels && packed->shape[2] == g.K && packed->is_contiguous(),
             ERROR_SHAPE, "packed weight " + shape_str(packed->shape) + " is not the packing of a " + std::to_string(g.K) +
                              " x " + std::to_string(g.N) + " weight in " + std::to_string(groups) + " group(s)");
  g.b_packed = packed->ptr_f32(), g.b_packed_width = width;
  g.b_packed_stride = g.K * width, g.b_packed_batch = panels * g.K * width;
}
}  // namespace

Tensor pack_weight(const Tensor& w, int64_t groups) {
  const char* op = "packWeight";
  check_f32(w, op, "the weight");
  check_dim(w, 2, op, "the weight (n, K)");
  const int64_t n = w->shape[0], K = w->shape[1];
  DUAT_CHECK(groups >= 1 && n % groups == 0, ERROR_ARGUMENT,
             std::string(op) + ": " + std::to_string(groups) + " groups do not divide " + std::to_string(n) + " columns");
  DUAT_CHECK((w->strides[0] == 1 || n == 1) && (w->strides[1] >= n || K == 1), ERROR_ARGUMENT,
             std::string(op) + ": the weight " + shape_str(w->shape) + " is not K-major (strides (1, >= n))");
  Backend& be = backend(w->device);
  const int width = be.packed_b_width();
  if (width == 0) return nullptr;
  const int64_t cols = n / groups, panels = (cols + width - 1) / width, ld = K == 1 ? n : w->strides[1];
  const Tensor out = empty_lasting({groups, panels, K, width}, w->device);
  for (int64_t g = 0; g < groups; g++)
    be.pack_b(w->ptr_f32() + g * cols, K, cols, ld, out->ptr_f32() + g * panels * K * width);
  return out;
}

namespace {

// The LayerNorm (no affine, an optional residual) that branch_linear_normed's product applies to
// its input's rows.
struct InputNorm {
  float eps;
  Tensor resid;  // (R, C) or null
};

// branch_linear, with `norm` (no gradient recorded) its input's rows normalised by the product.
Tensor linear_of_branches(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& ln_w, const Tensor& ln_b,
                          bool gelu, bool interleaved, const std::shared_ptr<GeluLink>& link, const Tensor& packed,
                          const InputNorm* norm) {
  const char* op = norm ? "branchLinearNormed" : "branchLinear";
  check_f32(w, op, "the weight");
  check_dim(w, 3, op, "the weight (N, O, C)");
  const int64_t N = w->shape[0], O = w->shape[1], C = w->shape[2];
  check_f32(x, op, "the input");
  check_same_device(x, w, op);
  const bool shared = x->dim() == 2;
  DUAT_CHECK((shared && x->shape[1] == C) || (x->dim() == 3 && x->shape[0] == N && x->shape[2] == C), ERROR_SHAPE,
             std::string(op) + ": input shape " + shape_str(x->shape) + " is neither (R, " + std::to_string(C) + ") nor (" +
                 std::to_string(N) + ", R, " + std::to_string(C) + ")");
  if (b) check_branch_param(b, x, {N, O}, op, "the bias");
  DUAT_CHECK(!ln_w == !ln_b, ERROR_ARGUMENT, std::string(op) + ": the folded LayerNorm needs both its weight and its bias");
  if (ln_w) {
    check_branch_param(ln_w, x, {N, C}, op, "the LayerNorm weight");
    check_branch_param(ln_b, x, {N, C}, op, "the LayerNorm bias");
  }
  const Device dev = x->device;
  Backend& be = backend(dev);
  const int64_t R = shared ? x->shape[0] : x->shape[1];
  Mat mx;
  Tensor rx = x;
  // (Rows normalised in the product are read contiguous, apart.)
  if (!(shared ? as_rows(x, &mx) : as_mat(x, &mx)) || (norm && ((mx.s_c != 1 && C > 1) || (mx.s_r < C && R > 1)))) {
    rx = contiguous_data(x);
    shared ? as_rows(rx, &mx) : as_mat(rx, &mx);
  }
  const bool grad = any_requires_grad({x, w, b, ln_w, ln_b});
  DUAT_CHECK(!norm || !grad, ERROR_STATE, std::string(op) + ": normalised rows are for inference only");
  Tensor norm_resid;
  if (norm && norm->resid) {
    check_f32(norm->resid, op, "the residual");
    check_same_device(x, norm->resid, op);
    DUAT_CHECK(norm->resid->dim() == 2 && norm->resid->shape[0] == R && norm->resid->shape[1] == C, ERROR_SHAPE,
               std::string(op) + ": residual shape " + shape_str(norm->resid->shape) + " is not (" + std::to_string(R) +
                   ", " + std::to_string(C) + ")");
    norm_resid = contiguous_data(norm->resid);
  }
  // Without a graph or a fold the product reads the weight through its strides (the inference
  // cache keeps it K-major, paraformer.cpp), where one product of all branches side by side can
  // (branch n's rows follow branch n-1's); otherwise it is made contiguous.
  const bool strided = !grad && !ln_w && (!(shared && interleaved) || w->strides[0] == O * w->strides[1]);
  const Tensor wc = strided ? w : contiguous_data(w), bc = b ? contiguous_data(b) : nullptr;
  const Tensor gc = ln_w ? contiguous_data(ln_w) : nullptr, betac = ln_b ? contiguous_data(ln_b) : nullptr;
  Tensor wf = wc, bf = bc;
  if (ln_w) {
    wf = empty({N, O, C}, DTYPE_F32, dev);
    bf = empty({N, O}, DTYPE_F32, dev);
    be.fold_affine_forward(wc->ptr_f32(), bc ? bc->ptr_f32() : nullptr, gc->ptr_f32(), betac->ptr_f32(), wf->ptr_f32(),
                           bf->ptr_f32(), N, O, C);
  }
  const Tensor out = interleaved ? empty_interleaved(N, R, O, dev, gelu) : empty({N, R, O}, DTYPE_F32, dev);
  const Tensor pre = gelu && grad ? empty_like_output(out) : nullptr;
  GemmArgs g;
  g.K = gemm_dim(C, op);
  g.A = mx.p, g.a_m = mx.s_r, g.a_k = mx.s_c;
  g.B = wf->ptr_f32(), g.b_n = wf->strides[1], g.b_k = wf->strides[2];
  g.C = out->ptr_f32();
  g.bias = bf ? bf->ptr_f32() : nullptr;
  if (shared && interleaved) {  // one product of width N*O
    g.M = gemm_dim(R, op), g.N = gemm_dim(N * O, op);
    g.c_m = row_stride(out);
  } else {  // batched over the branches
    g.M = gemm_dim(R, op), g.N = gemm_dim(O, op), g.batch = gemm_dim(N, op);
    g.a_batch = shared ? 0 : mx.s_z, g.b_batch = wf->strides[0];
    g.c_m = out->strides[1], g.c_batch = out->strides[0];
    g.bias_batch = O;
  }
  if (gelu) g.epilogue = EPILOGUE_GELU, g.aux = pre ? pre->ptr_f32() : nullptr;
  if (strided) use_packed(g, packed, g.batch, dev);
  if (norm) {
    g.norm_a = true, g.norm_eps = norm->eps;
    if (norm_resid) g.norm_resid = norm_resid->ptr_f32(), g.norm_resid_m = C, g.norm_resid_rows = R;
  }
  be.gemm(g);
  if (!grad) return out;
  if (link && pre) link->pre = pre;

  const Tensor sx = detach(rx), sw = detach(wc), sg = gc ? detach(gc) : nullptr, sbeta = betac ? detach(betac) : nullptr;
  const Tensor swf = detach(wf), spre = pre;
  const bool folded = static_cast<bool>(ln_w), has_bias = static_cast<bool>(b);
  return record(out, "branch_linear", {x, w, b, ln_w, ln_b}, [=](const Tensor& dout, Grads& grads) {
    Backend& be = backend(dev);
    // With the bias gradient from the linked stage_sum (whose backward, run first, took the
    // pre-activation), dout is already the gradient before the GELU.
    const Tensor linked_db = link ? std::exchange(link->db, nullptr) : nullptr;
    const bool act_grad = gelu && !linked_db;
    // The gradient before the activation, laid out like the output (over dout itself when the
    // walk lets it go: the largest buffer of a stage's backward is not needed twice).
    Tensor dpre = act_grad ? grads.reusable(dout) : dout;
    const bool want_w = grads.needs(1) || (folded && (grads.needs(3) || grads.needs(4)));
    const bool want_b = grads.needs(2) || (folded && (grads.needs(3) || grads.needs(4)));
    // db'_n(o) = sum_r dpre_n(r, o): with GELU, computed with its gradient in one pass (into a
    // contiguous db; reduced from dpre into any other). dout, and so dpre, come laid out like the
    // output (the walk makes them so, autograd.cpp), and the pre-activation was made like it.
    Tensor dbf;  // the folded bias's gradient (handed over by the link, or made below)
    if (folded && (want_w || want_b)) dbf = linked_db ? linked_db : empty({N, O}, DTYPE_F32, dev);
    // (Padded rows, or a gradient that reached the output in another layout, take the separate
    // passes, which read any strides.)
    const auto blocks = spre ? row_blocks(spre) : std::array<int64_t, 3>{};
    const bool fuse = act_grad && want_b && blocks[0] > 0 && row_blocks(dout) == blocks && row_blocks(dpre) == blocks;
    const bool bias_done = fuse || linked_db;  // the bias gradient made with the GELU's, or handed over
    auto bias_sum = [&](const Tensor& db, bool acc) {
      if (fuse && db->is_contiguous()) {
        be.gelu_backward_bias(spre->ptr_f32(), dout->ptr_f32(), dpre->ptr_f32(), db->ptr_f32(), blocks[0], blocks[1],
                              blocks[2], acc);
        return;
      }
      if (fuse) launch_map(MAP_GELU_GRAD, dpre, spre, dout);
      launch_reduce(make_view(db, {N, 1, O}, {db->strides[0], 0, db->strides[1]}, db->offset), dpre, 1.0f, acc);
    };
    if (fuse) {
      if (folded) {
        bias_sum(dbf, false);
      } else {
        grads.into(2, bias_sum);
      }
    } else if (act_grad) {
      launch_map(MAP_GELU_GRAD, dpre, spre, dout);
    } else if (linked_db && !folded && grads.needs(2)) {
      grads.pass(2, linked_db);
    }
    if (grads.needs(0)) {
      if (shared) {
        // dx(r, c) = sum over (n, o) of dpre_n(r, o) W'_n(o, c): one product of inner size N*O.
        if (!is_interleaved(dpre)) {
          const Tensor t = empty_interleaved(N, R, O, dev, gelu);
          copy_into(t, dpre);
          dpre = t;
        }
        GemmArgs d;
        d.M = g.M, d.N = gemm_dim(C, op), d.K = gemm_dim(N * O, op);
        d.A = dpre->ptr_f32(), d.a_m = row_stride(dpre), d.a_k = 1;
        d.B = swf->ptr_f32(), d.b_n = 1, d.b_k = C;
        gemm_into_grad(grads, 0, d, true, dev);
      } else {
        // dx_n = dpre_n W'_n, batched over the branches.
        GemmArgs d;
        d.M = g.M, d.N = gemm_dim(C, op), d.K = gemm_dim(O, op), d.batch = gemm_dim(N, op);
        d.A = dpre->ptr_f32(), d.a_m = dpre->strides[1], d.a_k = 1, d.a_batch = dpre->strides[0];
        d.B = swf->ptr_f32(), d.b_n = 1, d.b_k = C, d.b_batch = O * C;
        gemm_into_grad(grads, 0, d, false, dev);
      }
    }
    if (!want_w && !want_b) return;
    // dW'_n(o, c) = sum_r dpre_n(r, o) x_n(r, c), batched; db'_n(o) = sum_r dpre_n(r, o).
    Mat sxm;
    shared ? as_rows(sx, &sxm) : as_mat(sx, &sxm);
    GemmArgs d;
    d.M = gemm_dim(O, op), d.N = gemm_dim(C, op), d.K = g.M, d.batch = gemm_dim(N, op);
    d.A = dpre->ptr_f32(), d.a_m = 1, d.a_k = dpre->strides[1], d.a_batch = dpre->strides[0];
    d.B = sxm.p, d.b_n = sxm.s_c, d.b_k = sxm.s_r, d.b_batch = shared ? 0 : sxm.s_z;
    if (!folded) {
      if (grads.needs(1)) gemm_into_grad(grads, 1, d, false, dev);
      if (grads.needs(2) && !bias_done) grads.into(2, bias_sum);
      return;
    }
    const Tensor dwf = empty({N, O, C}, DTYPE_F32, dev);
    d.C = dwf->ptr_f32(), d.c_m = C, d.c_batch = O * C;
    be.gemm(d);
    if (!bias_done) bias_sum(dbf, false);
    // Through the fold: every output written, into fresh gradient buffers or temporaries.
    WriteTarget tw = write_target(grads, 1, {N, O, C}, dev), tb = write_target(grads, 2, has_bias ? Shape{N, O} : Shape{}, dev);
    WriteTarget tg = write_target(grads, 3, {N, C}, dev), tbeta = write_target(grads, 4, {N, C}, dev);
    be.fold_affine_backward(sw->ptr_f32(), sg->ptr_f32(), sbeta->ptr_f32(), dwf->ptr_f32(), dbf->ptr_f32(),
                            tw.buffer->ptr_f32(), tb.buffer ? tb.buffer->ptr_f32() : nullptr, tg.buffer->ptr_f32(),
                            tbeta.buffer->ptr_f32(), N, O, C);
    for (auto [i, t] : {std::pair<size_t, WriteTarget*>{1, &tw}, {2, &tb}, {3, &tg}, {4, &tbeta}})
      if (t->add_after) grads.add(i, t->buffer);
  });
}

}  // namespace

Tensor branch_linear(const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& ln_w, const Tensor& ln_b,
                     bool gelu, bool interleaved, const std::shared_ptr<GeluLink>& link, const Tensor& packed) {
  return linear_of_branches(x, w, b, ln_w, ln_b, gelu, interleaved, link, packed, nullptr);
}

Tensor branch_linear_normed(const Tensor& x, const Tensor& resid, float eps, const Tensor& w, const Tensor& b, bool gelu,
                            bool interleaved, const Tensor& packed) {
  check_f32(x, "branchLinearNormed", "the input");
  DUAT_CHECK(eps > 0.0f, ERROR_ARGUMENT, "branchLinearNormed: eps must be positive");
  if (any_requires_grad({x, resid, w, b}) || !backend(x->device).gemm_normalizes_rows())
    return branch_linear(layernorm(x, nullptr, nullptr, eps, resid), w, b, nullptr, nullptr, gelu, interleaved, nullptr,
                         packed);
  const InputNorm norm{eps, resid};
  return linear_of_branches(x, w, b, nullptr, nullptr, gelu, interleaved, nullptr, packed, &norm);
}

std::vector<Tensor> fold_affine(const Tensor& w, const Tensor& b, const Tensor& ln_w, const Tensor& ln_b) {
  const int64_t N = w->shape[0], O = w->shape[1], C = w->shape[2];
  const Device dev = w->device;
  const Tensor wc = contiguous_data(w), bc = b ? contiguous_data(b) : nullptr;
  const Tensor gc = contiguous_data(ln_w), betac = contiguous_data(ln_b);
  Tensor wf = empty({N, O, C}, DTYPE_F32, dev), bf = empty({N, O}, DTYPE_F32, dev);
  backend(dev).fold_affine_forward(wc->ptr_f32(), bc ? bc->ptr_f32() : nullptr, gc->ptr_f32(), betac->ptr_f32(),
                                   wf->ptr_f32(), bf->ptr_f32(), N, O, C);
  return {wf, bf};
}

Tensor stage_sum(const Tensor& x, const Tensor& h, const Tensor& w2, const Tensor& b2, const Tensor& a, float scale,
                 const std::shared_ptr<GeluLink>& link, const Tensor& packed) {
  const char* op = "stageSum";
  check_f32(x, op, "the stage input");
  check_dim(x, 2, op, "the stage input (R, C)");
  const int64_t R = x->shape[0], C = x->shape[1];
  check_f32(h, op, "the MLP activations");
  check_dim(h, 3, op, "the MLP activations (N, R, M)");
  const int64_t N = h->shape[0], M = h->shape[2];
  DUAT_CHECK(h->shape[1] == R, ERROR_SHAPE, std::string(op) + ": MLP activations " + shape_str(h->shape) + " do not have " +
                                           std::to_string(R) + " rows");
  check_branch_param(w2, x, {C, N * M}, op, "the concatenated fc2 weight");
  check_branch_param(b2, x, {C}, op, "the summed fc2 bias");
  check_branch_param(a, x, {N, R, C}, op, "the attention outputs");
  check_same_device(x, h, op);
  const Device dev = x->device;
  const Tensor xc = contiguous_data(x), ac = contiguous_data(a), bc = contiguous_data(b2);
  Tensor hc = h;
  if (!is_interleaved(h)) {
    hc = empty_interleaved(N, R, M, dev, true);
    copy_into(hc, h);
  }
  Tensor out = empty({R, C}, DTYPE_F32, dev);
  GemmArgs g;
  g.M = gemm_dim(R, op), g.N = gemm_dim(C, op), g.K = gemm_dim(N * M, op);
  g.A = hc->ptr_f32(), g.a_m = row_stride(hc), g.a_k = 1;
  g.B = w2->ptr_f32(), g.b_n = w2->strides[0], g.b_k = w2->strides[1];
  g.C = out->ptr_f32(), g.c_m = C;
  g.bias = bc->ptr_f32();
  g.epilogue = EPILOGUE_STAGE, g.resid = xc->ptr_f32(), g.extra = ac->ptr_f32(), g.nsum = gemm_dim(N, op);
  g.extra_batch = R * C, g.scale = scale;
  const bool grad = any_requires_grad({x, h, w2, b2, a});
  if (!grad) use_packed(g, packed, 1, dev);
  backend(dev).gemm(g);
  if (!grad) return out;
  const Tensor sh = detach(hc), sw = detach(w2);
  return record(out, "stage_sum", {x, h, w2, b2, a}, [=](const Tensor& dy, Grads& grads) {
    Backend& be = backend(dev);
    if (grads.needs(0)) grads.pass(0, dy);
    if (grads.needs(1)) {
      // dh(r, j) = scale * sum_c dy(r, c) w2(c, j), written in h's (interleaved) layout.
      GemmArgs d;
      d.M = g.M, d.N = g.K, d.K = g.N, d.alpha = scale;
      d.A = dy->ptr_f32(), d.a_m = C, d.a_k = 1;
      d.B = sw->ptr_f32(), d.b_n = sw->strides[1], d.b_k = sw->strides[0];
      const Tensor pre = link ? std::exchange(link->pre, nullptr) : nullptr;
      if (!grads.has(1)) {
        // h's first gradient, made here laid out like h and handed over (autograd's own buffer
        // for padded rows would be contiguous). The linked GELU's gradient goes into the
        // product's epilogue where the pre-activation is laid out like it.
        const Tensor dh = empty_like_output(sh);
        d.C = dh->ptr_f32(), d.c_m = row_stride(dh);
        if (pre && same_layout(pre, dh)) {
          const Tensor db = empty({N, M}, DTYPE_F32, dev);
          be.gemm_gelu_backward(d, pre->ptr_f32(), db->ptr_f32());
          link->db = db;
        } else {
          be.gemm(d);
        }
        grads.pass(1, dh);
      } else {
        // Added to the gradient h has: in the product where that is interleaved.
        bool fresh = false;
        Tensor& slot = grads.slot_for_write(1, &fresh);
        const bool direct = is_interleaved(slot);
        const Tensor target = direct ? slot : empty_like_output(sh);
        d.C = target->ptr_f32(), d.c_m = row_stride(target);
        d.beta = direct ? 1.0f : 0.0f;
        be.gemm(d);
        if (!direct) add_into(slot, target);
      }
    }
    if (grads.needs(2)) {
      // dw2(c, j) = scale * sum_r dy(r, c) h(r, j)
      GemmArgs d;
      d.M = g.N, d.N = g.K, d.K = g.M, d.alpha = scale;
      d.A = dy->ptr_f32(), d.a_m = 1, d.a_k = C;
      d.B = sh->ptr_f32(), d.b_n = 1, d.b_k = row_stride(sh);
      gemm_into_grad(grads, 2, d, false, dev);
    }
    if (grads.needs(3)) {
      grads.into(3, [&](const Tensor& db, bool acc) {
        launch_reduce(make_view(db, {1, C}, {0, db->strides[0]}, db->offset), dy, scale, acc);
      });
    }
    if (grads.needs(4)) {
      // Every branch's attention output reaches y directly: da_n = scale * dy.
      grads.into(4, [&](const Tensor& da, bool acc) { launch_map(MAP_MUL_SCALAR, da, dy, nullptr, scale, acc); });
    }
  });
}

}  // namespace duat
