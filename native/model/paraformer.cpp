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

// A stacked weight (N, O, C) as the same tensor over (C, N, O) memory: K-major, so that a
// product reads op(B) row-major in place, and one of all N branches side by side (width N*O)
// too. Inference only (branch_linear takes it while no gradient is recorded), and on the CPU:
// the CUDA products tile either layout alike.
Tensor k_major(const Tensor& w) {
  if (w->device != DEVICE_CPU) return w;
  return permute(contiguous(permute(w, {2, 0, 1})), {1, 2, 0});
}

// A K-major stacked weight (N, O, C) packed for the CPU products branch_linear makes of it: one of
// width N*O (`single`: a shared, interleaved input), else one per branch. Null elsewhere.
Tensor packed_branches(const Tensor& w, bool single) {
  if (w->device != DEVICE_CPU) return nullptr;
  const int64_t N = w->shape[0], O = w->shape[1], C = w->shape[2];
  return pack_weight(permute(reshape(permute(w, {2, 0, 1}), {C, N * O}), {1, 0}), single ? 1 : N);  // (N*O, C), K-major
}

// The stacked weights with LN's affine folded in, K-major, and packed (packed_branches), from the
// inference cache: {W', b', packed W'}.
std::vector<Tensor> folded_k_major(DerivedKind kind, const Tensor& w, const Tensor& b, const Tensor& gamma,
                                   const Tensor& beta, bool single) {
  return derived(kind, {w, b, gamma, beta}, [&] {
    std::vector<Tensor> f = fold_affine(w, b, gamma, beta);
    f[0] = k_major(f[0]);
    f.push_back(packed_branches(f[0], single));
    return f;
  });
}

// The QKV product of every branch on LN1(x), x (BT, C): (N, BT, 3C), laid out (BT, N*3C) for
// attention. LN1's affine is folded into the weights: inside the graph while training, from the
// cache for inference (where the product normalises x's rows itself, branch_linear_normed).
Tensor branch_qkv(const Tensor& x, const StageParams& p, float eps, const std::shared_ptr<GeluLink>& link = nullptr) {
  if (grad_enabled())
    return branch_linear(layernorm(x, nullptr, nullptr, eps), p.qkv_w, p.qkv_b, p.norm1_w, p.norm1_b, false, true, link);
  const std::vector<Tensor> f = folded_k_major(DERIVED_QKV, p.qkv_w, p.qkv_b, p.norm1_w, p.norm1_b, true);
  return branch_linear_normed(x, nullptr, eps, f[0], f[1], false, true, f[2]);
}

// LayerScale folded into a branch output's projection: gamma (N, C) scales the rows of its
// weights (N, C, K) and its biases (N, C), so gamma * (W x + b) costs no pass of its own. Inside
// the graph while training, from the cache for inference; the projection itself without gamma.
std::pair<Tensor, Tensor> layer_scaled(const Tensor& w, const Tensor& b, const Tensor& gamma, DerivedKind kind) {
  if (!gamma) return {w, b};
  const std::vector<Tensor> f = derived(kind, {w, b, gamma}, [&] {
    return std::vector<Tensor>{mul(w, reshape(gamma, {gamma->shape[0], gamma->shape[1], 1})), mul(b, gamma)};
  });
  return {f[0], f[1]};
}

}  // namespace

void check_model_config(const ModelConfig& c) {
  auto positive = [](int64_t v, const char* name) {
    DUAT_CHECK(v >= 1, ERROR_ARGUMENT, std::string("model config: ") + name + " must be at least 1, got " + std::to_string(v));
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
  DUAT_CHECK(c.image_size % c.patch_size == 0, ERROR_ARGUMENT,
             "model config: patchSize " + std::to_string(c.patch_size) + " does not divide imageSize " + std::to_string(c.image_size));
  DUAT_CHECK(c.dim % c.heads == 0, ERROR_ARGUMENT,
             "model config: heads " + std::to_string(c.heads) + " do not divide dim " + std::to_string(c.dim));
}

namespace {

// The kinds of a stage's parameters, in name order, with their fields.
struct StageKind {
  const char* name;
  Tensor StageParams::*field;
};
std::vector<StageKind> stage_kinds(const ModelConfig& c) {
  std::vector<StageKind> k = {
      {"norm1.weight", &StageParams::norm1_w},  {"norm1.bias", &StageParams::norm1_b},
      {"attn.qkv.weight", &StageParams::qkv_w}, {"attn.qkv.bias", &StageParams::qkv_b},
      {"attn.proj.weight", &StageParams::proj_w}, {"attn.proj.bias", &StageParams::proj_b},
      {"norm2.weight", &StageParams::norm2_w},  {"norm2.bias", &StageParams::norm2_b},
      {"mlp.fc1.weight", &StageParams::fc1_w},  {"mlp.fc1.bias", &StageParams::fc1_b},
      {"mlp.fc2.weight", &StageParams::fc2_w},  {"mlp.fc2.bias", &StageParams::fc2_b}};
  if (c.layer_scale) {
    k.push_back({"ls1.gamma", &StageParams::ls1});
    k.push_back({"ls2.gamma", &StageParams::ls2});
  }
  return k;
}

// The parameters outside the stages, in name order: before the stages, then after.
struct SharedKind {
  const char* name;
  Tensor ModelParams::*field;
};
std::vector<SharedKind> leading_kinds(const ModelConfig& c) {
  std::vector<SharedKind> k = {{"patch_embed.proj.weight", &ModelParams::patch_w}};
  if (c.patch_bias) k.push_back({"patch_embed.proj.bias", &ModelParams::patch_b});
  k.push_back({"cls_token", &ModelParams::cls_token});
  k.push_back({"pos_embed", &ModelParams::pos_embed});
  if (c.pre_norm) {
    k.push_back({"norm_pre.weight", &ModelParams::norm_pre_w});
    k.push_back({"norm_pre.bias", &ModelParams::norm_pre_b});
  }
  return k;
}
std::vector<SharedKind> trailing_kinds(const ModelConfig& c) {
  if (c.avg_pool) return {{"fc_norm.weight", &ModelParams::norm_w}, {"fc_norm.bias", &ModelParams::norm_b},
                          {"head.weight", &ModelParams::head_w},   {"head.bias", &ModelParams::head_b}};
  return {{"norm.weight", &ModelParams::norm_w}, {"norm.bias", &ModelParams::norm_b},
          {"head.weight", &ModelParams::head_w}, {"head.bias", &ModelParams::head_b}};
}

}  // namespace

std::vector<std::string> model_param_names(const ModelConfig& c) {
  std::vector<std::string> n;
  for (const SharedKind& k : leading_kinds(c)) n.push_back(k.name);
  for (int64_t s = 0; s < c.depth; s++)
    for (const StageKind& k : stage_kinds(c)) n.push_back("stages." + std::to_string(s) + "." + k.name);
  for (const SharedKind& k : trailing_kinds(c)) n.push_back(k.name);
  return n;
}

IndexRange model_branch_params(const ModelConfig& c) {
  const size_t first = leading_kinds(c).size();
  return {first, first + stage_kinds(c).size() * static_cast<size_t>(c.depth)};
}

std::vector<Shape> model_param_shapes(const ModelConfig& c) {
  const int64_t C = c.dim, N = c.branches, M = c.mlp_hidden, P = c.patch_size;
  std::vector<Shape> s = {{C, c.channels, P, P}};
  if (c.patch_bias) s.push_back({C});
  s.push_back({1, 1, C});
  s.push_back({1, c.tokens(), C});
  if (c.pre_norm) s.insert(s.end(), {{C}, {C}});
  for (int64_t i = 0; i < c.depth; i++) {
    const std::vector<Shape> stage = {{N, C}, {N, C}, {N, 3 * C, C}, {N, 3 * C}, {N, C, C}, {N, C},
                                      {N, C}, {N, C}, {N, M, C},     {N, M},     {N, C, M}, {N, C}};
    s.insert(s.end(), stage.begin(), stage.end());
    if (c.layer_scale) s.insert(s.end(), {{N, C}, {N, C}});
  }
  const std::vector<Shape> tail = {{C}, {C}, {c.classes, C}, {c.classes}};
  s.insert(s.end(), tail.begin(), tail.end());
  return s;
}

ModelParams model_params_from_list(const ModelConfig& c, const std::vector<Tensor>& list) {
  check_model_config(c);
  const std::vector<std::string> names = model_param_names(c);
  const std::vector<Shape> shapes = model_param_shapes(c);
  DUAT_CHECK(list.size() == names.size(), ERROR_SHAPE,
             "model: expected " + std::to_string(names.size()) + " parameters for depth " + std::to_string(c.depth) +
                 ", got " + std::to_string(list.size()));
  for (size_t i = 0; i < list.size(); i++) {
    check_f32(list[i], "model", names[i].c_str());
    DUAT_CHECK(list[i]->device == list[0]->device, ERROR_DEVICE,
               "model: parameter '" + names[i] + "' is on " + device_name(list[i]->device) + " but '" + names[0] + "' on " +
                   device_name(list[0]->device) + "; move the whole model with to()");
    DUAT_CHECK(list[i]->shape == shapes[i], ERROR_SHAPE,
               "model: parameter '" + names[i] + "' has shape " + shape_str(list[i]->shape) + " but the config needs " +
                   shape_str(shapes[i]));
  }
  ModelParams p;
  size_t k = 0;
  for (const SharedKind& kind : leading_kinds(c)) p.*kind.field = list[k++];
  for (int64_t s = 0; s < c.depth; s++) {
    StageParams st;
    for (const StageKind& kind : stage_kinds(c)) st.*kind.field = list[k++];
    p.stages.push_back(st);
  }
  for (const SharedKind& kind : trailing_kinds(c)) p.*kind.field = list[k++];
  return p;
}

std::vector<Tensor> model_param_list(const ModelParams& p) {
  std::vector<Tensor> l = {p.patch_w};
  for (const Tensor& t : {p.patch_b, p.cls_token, p.pos_embed, p.norm_pre_w, p.norm_pre_b})
    if (t) l.push_back(t);
  for (const StageParams& s : p.stages)
    for (const Tensor& t : {s.norm1_w, s.norm1_b, s.qkv_w, s.qkv_b, s.proj_w, s.proj_b, s.norm2_w, s.norm2_b, s.fc1_w,
                            s.fc1_b, s.fc2_w, s.fc2_b, s.ls1, s.ls2})
      if (t) l.push_back(t);
  for (const Tensor& t : {p.norm_w, p.norm_b, p.head_w, p.head_b}) l.push_back(t);
  return l;
}

Device model_device(const ModelParams& p) { return p.patch_w->device; }

Tensor stage_forward(const Tensor& x_in, const StageParams& p, const ModelConfig& c, bool class_token_only) {
  const int64_t B = x_in->shape[0], T1 = x_in->shape[1], C = c.dim, N = c.branches, M = c.mlp_hidden, BT = B * T1;
  DUAT_CHECK(!(class_token_only && c.branch_parallel), ERROR_ARGUMENT,
             "stage_forward: the class token alone is not computed branch-parallel");
  // Branch-parallel: every rank's branches read the same input, whose gradient is summed over
  // the ranks in backward; their partial sums are summed in forward, and every rank adds the
  // residual to the whole sum.
  Communicator* comm = c.branch_parallel ? &require_communicator("a branch-parallel forward") : nullptr;
  const Tensor x = comm ? branch_input(x_in, *comm) : x_in;
  const Tensor xf = reshape(x, {BT, C});
  // Attention of every branch: shared norm, one QKV product, one attention op (qkv's one
  // consumer: the QKV bias's gradient comes out of its backward, ops.h, GeluLink).
  const auto qkv_link = grad_enabled() ? std::make_shared<GeluLink>() : nullptr;
  const Tensor qkv = branch_qkv(xf, p, c.eps, qkv_link);                                       // (N, BT, 3C)
  // Past attention's keys and values every row is its token's own: the class token's query and
  // rows alone where only they are wanted (R rows: B, else BT).
  const Tensor qkv_b = reshape(permute(qkv, {1, 0, 2}), {B, T1, N * 3 * C});
  const Tensor att_r = class_token_only ? attention_first(qkv_b, c.heads, N, 1)  // (B, 1, N*C)
                                        : attention(qkv_b, c.heads, N, qkv_link);  // (B, T1, N*C)
  const int64_t R = class_token_only ? B : BT;
  const Tensor x_r = class_token_only ? reshape(contiguous(slice(x, 1, 0, 1, 1)), {B, C}) : xf;  // (R, C)
  const Tensor att_n = permute(reshape(att_r, {R, N, C}), {1, 0, 2});                             // (N, R, C) view
  std::pair<Tensor, Tensor> proj = layer_scaled(p.proj_w, p.proj_b, p.ls1, DERIVED_LS1);
  Tensor proj_packed;
  if (!grad_enabled() && proj.first->device == DEVICE_CPU) {  // (a cached value must never be its source)
    const std::vector<Tensor> k = derived(DERIVED_PROJ, {proj.first}, [&] {
      const Tensor w = k_major(proj.first);
      return std::vector<Tensor>{w, packed_branches(w, false)};
    });
    proj.first = k[0], proj_packed = k[1];
  }
  const Tensor a = branch_linear(att_n, proj.first, proj.second, nullptr, nullptr, false, false, nullptr,
                                 proj_packed);  // (N, R, C)
  // The MLP of every branch on LN2(x + a_b), LN2's affine folded into fc1 (for inference, fc1's
  // product normalises the rows itself).
  Tensor h;  // (N, R, M)
  // fc1's GELU joined to the stage sum, h's one consumer: its gradient comes out of the sum's
  // product (ops.h, GeluLink).
  const auto link = grad_enabled() ? std::make_shared<GeluLink>() : nullptr;
  if (link) {
    const Tensor u = layernorm(a, nullptr, nullptr, c.eps, x_r);  // (N, R, C)
    h = branch_linear(u, p.fc1_w, p.fc1_b, p.norm2_w, p.norm2_b, true, true, link);
  } else {
    const std::vector<Tensor> f = folded_k_major(DERIVED_FC1, p.fc1_w, p.fc1_b, p.norm2_w, p.norm2_b, false);
    h = branch_linear_normed(a, x_r, c.eps, f[0], f[1], true, true, f[2]);
  }
  // sum_b fc2_b(h_b) = [h_1 .. h_N] @ [W2_1 .. W2_N]^T: one product of inner size N*M, with the
  // branch biases summed and both residuals (x, and every a_b) in its epilogue. For inference the
  // concatenated weight is kept K-major ((N*M, C) memory), and packed.
  const std::pair<Tensor, Tensor> fc2 = layer_scaled(p.fc2_w, p.fc2_b, p.ls2, DERIVED_LS2);
  const Tensor &fc2_w = fc2.first, &fc2_b = fc2.second;
  const std::vector<Tensor> w2 = derived(DERIVED_FC2, {fc2_w, fc2_b}, [&] {
    const bool cpu_cache = !grad_enabled() && fc2_w->device == DEVICE_CPU;
    const Tensor w = cpu_cache ? permute(reshape(contiguous(permute(fc2_w, {0, 2, 1})), {N * M, C}), {1, 0})
                               : reshape(contiguous(permute(fc2_w, {1, 0, 2})), {C, N * M});
    return std::vector<Tensor>{w, sum(fc2_b, {0}, false), cpu_cache ? pack_weight(w, 1) : nullptr};
  });
  const Tensor resid = comm ? zeros({BT, C}, DTYPE_F32, x->device) : x_r;
  const Tensor y = stage_sum(resid, h, w2[0], w2[1], a, c.branch_scale, link, w2[2]);
  if (!comm) return reshape(y, {B, class_token_only ? 1 : T1, C});
  return add(x_in, reshape(branch_reduce(y, *comm), {B, T1, C}));
}

namespace {

Tensor embed(const Tensor& images, const ModelParams& p, const ModelConfig& c) {
  DUAT_CHECK(images->dim() == 4 && images->shape[1] == c.channels && images->shape[2] == c.image_size &&
                 images->shape[3] == c.image_size,
             ERROR_SHAPE,
             "model: expected images of shape [B, " + std::to_string(c.channels) + ", " + std::to_string(c.image_size) + ", " +
                 std::to_string(c.image_size) + "] but got " + shape_str(images->shape));
  const int64_t B = images->shape[0];
  const Device dev = model_device(p);
  const Tensor x = patch_embed(to(images, dev), p.patch_w, p.patch_b, c.patch_size);  // (B, T, C)
  const Tensor cls = add(zeros({B, 1, c.dim}, DTYPE_F32, dev), p.cls_token);           // (B, 1, C)
  const Tensor embedded = add(concat({cls, x}, 1), p.pos_embed);                        // (B, T1, C)
  return p.norm_pre_w ? layernorm(embedded, p.norm_pre_w, p.norm_pre_b, c.eps) : embedded;
}

// The stage's first c.active_branches branches as a stage of that many (views of the stacked
// parameters, so gradients reach their rows), or the stage itself.
std::pair<StageParams, ModelConfig> active_stage(const StageParams& p, const ModelConfig& c) {
  const int64_t k = c.active_branches;
  if (k <= 0 || k >= c.branches) return {p, c};
  StageParams v;
  Tensor StageParams::*const fields[] = {&StageParams::norm1_w, &StageParams::norm1_b, &StageParams::qkv_w,
                                         &StageParams::qkv_b,   &StageParams::proj_w,  &StageParams::proj_b,
                                         &StageParams::norm2_w, &StageParams::norm2_b, &StageParams::fc1_w,
                                         &StageParams::fc1_b,   &StageParams::fc2_w,   &StageParams::fc2_b};
  for (auto f : fields) v.*f = slice(p.*f, 0, 0, k, 1);
  if (p.ls1) v.ls1 = slice(p.ls1, 0, 0, k, 1), v.ls2 = slice(p.ls2, 0, 0, k, 1);
  ModelConfig ck = c;
  ck.branches = k;
  if (c.branch_scale != 1.0f) ck.branch_scale = 1.0f / static_cast<float>(k);  // 'mean' over the active ones
  return {v, ck};
}

}  // namespace

Tensor model_forward(const Tensor& images, const ModelParams& p, const ModelConfig& c) {
  Tensor x = embed(images, p, c);
  // The logits read the class token alone (or the mean of every token): without a gradient to
  // carry back through the others, the last stage computes that token's row only.
  const bool class_token_only = !grad_enabled() && !c.avg_pool && !c.branch_parallel;
  for (size_t i = 0; i < p.stages.size(); i++) {
    const std::pair<StageParams, ModelConfig> active = active_stage(p.stages[i], c);
    x = stage_forward(x, active.first, active.second, class_token_only && i + 1 == p.stages.size());
  }
  const int64_t B = x->shape[0];
  // The class token, or the mean of the patch tokens (fc_norm then takes norm's place).
  const Tensor pooled = c.avg_pool ? mean(slice(x, 1, 1, x->shape[1], 1), {1}, false) : reshape(slice(x, 1, 0, 1, 1), {B, c.dim});
  return linear(layernorm(pooled, p.norm_w, p.norm_b, c.eps), p.head_w, p.head_b);
}

std::vector<Tensor> model_attention_maps(const Tensor& images, const ModelParams& p, const ModelConfig& c) {
  GradMode no_grad(false);
  std::vector<Tensor> maps;
  Tensor x = embed(images, p, c);
  const int64_t B = x->shape[0], T1 = x->shape[1], BT = B * T1;
  for (const StageParams& full : p.stages) {
    const std::pair<StageParams, ModelConfig> active = active_stage(full, c);
    const StageParams& s = active.first;
    const ModelConfig& sc = active.second;
    const Tensor qkv = branch_qkv(reshape(x, {BT, c.dim}), s, c.eps);
    maps.push_back(attention_probs(reshape(permute(qkv, {1, 0, 2}), {B, T1, sc.branches * 3 * c.dim}), c.heads,
                                   sc.branches));
    x = stage_forward(x, s, sc);
  }
  return maps;
}

}  // namespace duat
