// paraformer.cpp: the Para-Former forward as a composition of ops (see paraformer.h).
// Shapes: B batch, T1 = T + 1 tokens, C width, N branches, M MLP width, H heads.
#include "paraformer.h"

#include <string>

#include "../core/autograd.h"
#include "../ops/ops.h"

namespace duat {

namespace {

// x (B, T1, C) -> (BT1, C) and the stage input of the MLP part; returns the stage output.
Tensor branch_qkv(const Tensor& normed, const StageParams& p, const ModelConfig& c) {
  const int64_t N = c.branches, C = c.dim;
  // LN1_b(x) W_b^T + bias_b = norm(x) (W_b diag g_b)^T + (W_b beta_b + bias_b): one product.
  Tensor w = mul(p.qkv_w, reshape(p.norm1_w, {N, 1, C}));                                   // (N, 3C, C)
  Tensor b = add(reshape(matmul(p.qkv_w, reshape(p.norm1_b, {N, C, 1})), {N, 3 * C}), p.qkv_b);  // (N, 3C)
  return linear(normed, reshape(w, {N * 3 * C, C}), reshape(b, {N * 3 * C}));             // (BT1, N*3C)
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

Tensor stage_forward(const Tensor& x, const StageParams& p, const ModelConfig& c) {
  const int64_t B = x->shape[0], T1 = x->shape[1], C = c.dim, N = c.branches, M = c.mlp_hidden, BT = B * T1;
  const Tensor xf = reshape(x, {BT, C});
  // Attention of every branch: shared norm, one QKV product, one attention op.
  const Tensor qkv = branch_qkv(layernorm(xf, nullptr, nullptr, c.eps), p, c);            // (BT, N*3C)
  const Tensor att = attention(reshape(qkv, {B, T1, N * 3 * C}), c.heads, N);              // (B, T1, N*C)
  const Tensor att_n = permute(reshape(att, {BT, N, C}), {1, 0, 2});                       // (N, BT, C) view
  const Tensor a = add(matmul(att_n, transpose(p.proj_w, 1, 2)), reshape(p.proj_b, {N, 1, C}));  // (N, BT, C)
  // MLP of every branch on x + a_b, LN2's affine folded into fc1.
  const Tensor u = layernorm(add(a, xf), nullptr, nullptr, c.eps);                          // (N, BT, C)
  const Tensor w1 = mul(p.fc1_w, reshape(p.norm2_w, {N, 1, C}));                           // (N, M, C)
  const Tensor b1 = add(reshape(matmul(p.fc1_w, reshape(p.norm2_b, {N, C, 1})), {N, 1, M}), reshape(p.fc1_b, {N, 1, M}));
  const Tensor h = gelu(add(matmul(u, transpose(w1, 1, 2)), b1));                         // (N, BT, M)
  // sum_b fc2_b(h_b) = [h_1 .. h_N] @ [W2_1 .. W2_N]^T: one product of inner size N*M.
  const Tensor hcat = reshape(permute(h, {1, 0, 2}), {BT, N * M});
  const Tensor w2 = reshape(permute(p.fc2_w, {1, 0, 2}), {C, N * M});
  const Tensor mlp = linear(hcat, w2, sum(p.fc2_b, {0}, false));                          // (BT, C)
  Tensor branches = add(sum(a, {0}, false), mlp);
  if (c.branch_scale != 1.0f) branches = mul_scalar(branches, c.branch_scale);
  return reshape(add(xf, branches), {B, T1, C});
}

namespace {

Tensor embed(const Tensor& images, const ModelParams& p, const ModelConfig& c) {
  check(images->dim() == 4 && images->shape[1] == c.channels && images->shape[2] == c.image_size &&
            images->shape[3] == c.image_size,
        ERROR_SHAPE,
        "model: expected images of shape [B, " + std::to_string(c.channels) + ", " + std::to_string(c.image_size) + ", " +
            std::to_string(c.image_size) + "] but got " + shape_str(images->shape));
  const int64_t B = images->shape[0];
  const Tensor x = patch_embed(images, p.patch_w, p.patch_b, c.patch_size);  // (B, T, C)
  const Tensor cls = add(zeros({B, 1, c.dim}), p.cls_token);                  // (B, 1, C)
  return add(concat({cls, x}, 1), p.pos_embed);                             // (B, T1, C)
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
    const Tensor qkv = branch_qkv(layernorm(reshape(x, {BT, c.dim}), nullptr, nullptr, c.eps), s, c);
    maps.push_back(attention_probs(reshape(qkv, {B, T1, c.branches * 3 * c.dim}), c.heads, c.branches));
    x = stage_forward(x, s, c);
  }
  return maps;
}

}  // namespace duat
