// paraformer.cpp: the Para-Former forward as a composition of ops (see paraformer.h).
// Shapes: B batch, T1 = T + 1 tokens, C width, N branches, M MLP width, H heads.
#include "paraformer.h"

#include <string>

#include "../core/autograd.h"
#include "../distributed/comm.h"
#include "../ops/ops.h"
#include "derived.h"

namespace duat {

namespace {

// The QKV product of every branch: (N, BT, 3C), laid out (BT, N*3C) for attention. LN1's affine
// is folded into the weights: inside the graph while training, from the cache for inference.
Tensor branch_qkv(const Tensor& normed, const StageParams& p) {
  if (grad_enabled()) return branch_linear(normed, p.qkv_w, p.qkv_b, p.norm1_w, p.norm1_b, false, true);
  const std::vector<Tensor> f = derived(DERIVED_QKV, {p.qkv_w, p.qkv_b, p.norm1_w, p.norm1_b},
                                        [&] { return fold_affine(p.qkv_w, p.qkv_b, p.norm1_w, p.norm1_b); });
  return branch_linear(normed, f[0], f[1], nullptr, nullptr, false, true);
}

}  // namespace

void check_model_config(const ModelConfig& c) {
  auto positive = [](int64_t v, const char* name) {
    check(v >= 1, ERROR_ARGUMENT, std::string("model config: ") + name + " must be at least 1, got " + std::to_string(v));
  };
  positive(c.image_size, "imageSize");
  positive(c.patch_size, "patchSize");
  positive(c.channels, "channels");
  positive(c.classes, "classes");
  positive(c.dim, "dim");
  positive(c.heads, "heads");
  positive(c.depth, "depth");
  positive(c.branches, "branches");
  positive(c.mlp_hidden, "mlp hidden size");
  check(c.image_size % c.patch_size == 0, ERROR_ARGUMENT,
        "model config: patchSize " + std::to_string(c.patch_size) + " does not divide imageSize " + std::to_string(c.image_size));
  check(c.dim % c.heads == 0, ERROR_ARGUMENT,
        "model config: heads " + std::to_string(c.heads) + " do not divide dim " + std::to_string(c.dim));
}

std::vector<std::string> model_param_names(const ModelConfig& c) {
  std::vector<std::string> n = {"patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed"};
  for (int64_t s = 0; s < c.depth; s++) {
    const std::string pre = "stages." + std::to_string(s) + ".";
    for (const char* k : {"norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
                          "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                          "mlp.fc2.weight", "mlp.fc2.bias"})
      n.push_back(pre + k);
  }
  for (const char* k : {"norm.weight", "norm.bias", "head.weight", "head.bias"}) n.push_back(k);
  return n;
}

// model_param_names: 4 parameters before the stages, 12 per stage.
IndexRange model_branch_params(const ModelConfig& c) { return {4, 4 + 12 * static_cast<size_t>(c.depth)}; }

std::vector<Shape> model_param_shapes(const ModelConfig& c) {
  const int64_t C = c.dim, N = c.branches, M = c.mlp_hidden, P = c.patch_size;
  std::vector<Shape> s = {{C, c.channels, P, P}, {C}, {1, 1, C}, {1, c.tokens(), C}};
  for (int64_t i = 0; i < c.depth; i++) {
    const std::vector<Shape> stage = {{N, C}, {N, C}, {N, 3 * C, C}, {N, 3 * C}, {N, C, C}, {N, C},
                                      {N, C}, {N, C}, {N, M, C},     {N, M},     {N, C, M}, {N, C}};
    s.insert(s.end(), stage.begin(), stage.end());
  }
  const std::vector<Shape> tail = {{C}, {C}, {c.classes, C}, {c.classes}};
  s.insert(s.end(), tail.begin(), tail.end());
  return s;
}

ModelParams model_params_from_list(const ModelConfig& c, const std::vector<Tensor>& list) {
  check_model_config(c);
  const std::vector<std::string> names = model_param_names(c);
  const std::vector<Shape> shapes = model_param_shapes(c);
  check(list.size() == names.size(), ERROR_SHAPE,
        "model: expected " + std::to_string(names.size()) + " parameters for depth " + std::to_string(c.depth) +
            ", got " + std::to_string(list.size()));
  for (size_t i = 0; i < list.size(); i++) {
    check_f32(list[i], "model", names[i].c_str());
    check(list[i]->device == list[0]->device, ERROR_DEVICE,
          "model: parameter '" + names[i] + "' is on " + device_name(list[i]->device) + " but '" + names[0] + "' on " +
              device_name(list[0]->device) + "; move the whole model with to()");
    check(list[i]->shape == shapes[i], ERROR_SHAPE,
          "model: parameter '" + names[i] + "' has shape " + shape_str(list[i]->shape) + " but the config needs " +
              shape_str(shapes[i]));
  }
  ModelParams p;
  size_t k = 0;
  p.patch_w = list[k++];
  p.patch_b = list[k++];
  p.cls_token = list[k++];
  p.pos_embed = list[k++];
  for (int64_t s = 0; s < c.depth; s++) {
    StageParams st;
    for (Tensor* t : {&st.norm1_w, &st.norm1_b, &st.qkv_w, &st.qkv_b, &st.proj_w, &st.proj_b, &st.norm2_w,
                      &st.norm2_b, &st.fc1_w, &st.fc1_b, &st.fc2_w, &st.fc2_b})
      *t = list[k++];
    p.stages.push_back(st);
  }
  p.norm_w = list[k++];
  p.norm_b = list[k++];
  p.head_w = list[k++];
  p.head_b = list[k++];
  return p;
}

std::vector<Tensor> model_param_list(const ModelParams& p) {
  std::vector<Tensor> l = {p.patch_w, p.patch_b, p.cls_token, p.pos_embed};
  for (const StageParams& s : p.stages)
    for (const Tensor& t : {s.norm1_w, s.norm1_b, s.qkv_w, s.qkv_b, s.proj_w, s.proj_b, s.norm2_w, s.norm2_b, s.fc1_w,
                            s.fc1_b, s.fc2_w, s.fc2_b})
      l.push_back(t);
  for (const Tensor& t : {p.norm_w, p.norm_b, p.head_w, p.head_b}) l.push_back(t);
  return l;
}

Device model_device(const ModelParams& p) { return p.patch_w->device; }

Tensor stage_forward(const Tensor& x_in, const StageParams& p, const ModelConfig& c) {
  const int64_t B = x_in->shape[0], T1 = x_in->shape[1], C = c.dim, N = c.branches, M = c.mlp_hidden, BT = B * T1;
  // Branch-parallel: every rank's branches read the same input, whose gradient is summed over
  // the ranks in backward; their partial sums are summed in forward, and every rank adds the
  // residual to the whole sum.
  Communicator* comm = c.branch_parallel ? &require_communicator("a branch-parallel forward") : nullptr;
  const Tensor x = comm ? branch_input(x_in, *comm) : x_in;
  const Tensor xf = reshape(x, {BT, C});
  const Tensor resid = comm ? zeros({BT, C}, DTYPE_F32, x->device) : xf;
  // Attention of every branch: shared norm, one QKV product, one attention op.
  const Tensor qkv = branch_qkv(layernorm(xf, nullptr, nullptr, c.eps), p);                    // (N, BT, 3C)
  const Tensor att = attention(reshape(permute(qkv, {1, 0, 2}), {B, T1, N * 3 * C}), c.heads, N);  // (B, T1, N*C)
  const Tensor att_n = permute(reshape(att, {BT, N, C}), {1, 0, 2});                            // (N, BT, C) view
  const Tensor a = branch_linear(att_n, p.proj_w, p.proj_b, nullptr, nullptr, false, false);     // (N, BT, C)
  // The MLP of every branch on LN2(x + a_b), LN2's affine folded into fc1.
  const Tensor u = layernorm(a, nullptr, nullptr, c.eps, xf);                                    // (N, BT, C)
  Tensor h;                                                                                      // (N, BT, M)
  if (grad_enabled()) {
    h = branch_linear(u, p.fc1_w, p.fc1_b, p.norm2_w, p.norm2_b, true, true);
  } else {
    const std::vector<Tensor> f = derived(DERIVED_FC1, {p.fc1_w, p.fc1_b, p.norm2_w, p.norm2_b},
                                          [&] { return fold_affine(p.fc1_w, p.fc1_b, p.norm2_w, p.norm2_b); });
    h = branch_linear(u, f[0], f[1], nullptr, nullptr, true, true);
  }
  // sum_b fc2_b(h_b) = [h_1 .. h_N] @ [W2_1 .. W2_N]^T: one product of inner size N*M, with the
  // branch biases summed and both residuals (x, and every a_b) in its epilogue.
  const std::vector<Tensor> w2 = derived(DERIVED_FC2, {p.fc2_w, p.fc2_b}, [&] {
    return std::vector<Tensor>{reshape(contiguous(permute(p.fc2_w, {1, 0, 2})), {C, N * M}), sum(p.fc2_b, {0}, false)};
  });
  const Tensor y = stage_sum(resid, h, w2[0], w2[1], a, c.branch_scale);
  if (!comm) return reshape(y, {B, T1, C});
  return add(x_in, reshape(branch_reduce(y, *comm), {B, T1, C}));
}

namespace {

Tensor embed(const Tensor& images, const ModelParams& p, const ModelConfig& c) {
  check(images->dim() == 4 && images->shape[1] == c.channels && images->shape[2] == c.image_size &&
            images->shape[3] == c.image_size,
        ERROR_SHAPE,
        "model: expected images of shape [B, " + std::to_string(c.channels) + ", " + std::to_string(c.image_size) + ", " +
            std::to_string(c.image_size) + "] but got " + shape_str(images->shape));
  const int64_t B = images->shape[0];
  const Device dev = model_device(p);
  const Tensor x = patch_embed(to(images, dev), p.patch_w, p.patch_b, c.patch_size);  // (B, T, C)
  const Tensor cls = add(zeros({B, 1, c.dim}, DTYPE_F32, dev), p.cls_token);           // (B, 1, C)
  return add(concat({cls, x}, 1), p.pos_embed);                                       // (B, T1, C)
}

}  // namespace

Tensor model_forward(const Tensor& images, const ModelParams& p, const ModelConfig& c) {
  Tensor x = embed(images, p, c);
  for (const StageParams& s : p.stages) x = stage_forward(x, s, c);
  const int64_t B = x->shape[0];
  const Tensor cls = reshape(slice(x, 1, 0, 1, 1), {B, c.dim});
  return linear(layernorm(cls, p.norm_w, p.norm_b, c.eps), p.head_w, p.head_b);
}

std::vector<Tensor> model_attention_maps(const Tensor& images, const ModelParams& p, const ModelConfig& c) {
  GradMode no_grad(false);
  std::vector<Tensor> maps;
  Tensor x = embed(images, p, c);
  const int64_t B = x->shape[0], T1 = x->shape[1], BT = B * T1;
  for (const StageParams& s : p.stages) {
    const Tensor qkv = branch_qkv(layernorm(reshape(x, {BT, c.dim}), nullptr, nullptr, c.eps), s);
    maps.push_back(attention_probs(reshape(permute(qkv, {1, 0, 2}), {B, T1, c.branches * 3 * c.dim}), c.heads,
                                   c.branches));
    x = stage_forward(x, s, c);
  }
  return maps;
}

}  // namespace duat
