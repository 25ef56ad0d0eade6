// paraformer.cpp: the Para-Former forward as a composition of ops (see paraformer.h).
// Shapes: B batch, T1 = T + 1 tokens, C width, N branches, M MLP width, H heads.
#include "paraformer.h"

#include <functional>
#include <mutex>
#include <string>
#include <unordered_map>

#include "../core/autograd.h"
#include "../ops/ops.h"

namespace duat {

namespace {

// Weights derived from parameters (the LN folds, the fc2 concatenation) are recomputed on every
// forward that records a graph (training: the parameters change every step and the derivation
// is part of the graph). Without a graph (inference) they are derived once per version of their
// sources and kept here: an entry is used only while every source storage is alive and at the
// version (Storage::version, bumped by every in-place write) it was derived from.
enum DerivedKind { DERIVED_QKV, DERIVED_FC1, DERIVED_FC2 };

struct DerivedEntry {
  std::vector<std::weak_ptr<Storage>> sources;
  std::vector<uint64_t> versions;
  std::vector<int64_t> offsets;
  std::vector<Tensor> values;
};

struct DerivedCache {
  std::mutex mu;
  std::unordered_map<std::string, DerivedEntry> entries;
};

DerivedCache& derived_cache() {
  static DerivedCache* c = new DerivedCache();  // never destroyed: tensors may outlive statics
  return *c;
}

std::vector<Tensor> derived(DerivedKind kind, const std::vector<Tensor>& sources,
                            const std::function<std::vector<Tensor>()>& derive) {
  if (grad_enabled()) return derive();
  std::string key = std::to_string(kind);
  for (const Tensor& t : sources)
    key += ":" + std::to_string(reinterpret_cast<uintptr_t>(t->storage.get())) + "+" + std::to_string(t->offset);
  DerivedCache& c = derived_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  auto it = c.entries.find(key);
  if (it != c.entries.end()) {
    const DerivedEntry& e = it->second;
    bool current = true;
    for (size_t i = 0; i < sources.size() && current; i++)
      current = e.sources[i].lock() == sources[i]->storage &&
                e.versions[i] == sources[i]->storage->version.load(std::memory_order_relaxed) &&
                e.offsets[i] == sources[i]->offset;
    if (current) return e.values;
  }
  if (c.entries.size() >= 256)  // drop entries whose sources are gone
    for (auto i = c.entries.begin(); i != c.entries.end();)
      i = i->second.sources[0].expired() ? c.entries.erase(i) : std::next(i);
  DerivedEntry e;
  for (const Tensor& t : sources) {
    e.sources.push_back(t->storage);
    e.versions.push_back(t->storage->version.load(std::memory_order_relaxed));
    e.offsets.push_back(t->offset);
  }
  e.values = derive();
  c.entries[key] = e;
  return e.values;
}

// x (B, T1, C) -> (BT1, C) and the stage input of the MLP part; returns the stage output.
Tensor branch_qkv(const Tensor& normed, const StageParams& p, const ModelConfig& c) {
  const int64_t N = c.branches, C = c.dim;
  // LN1_b(x) W_b^T + bias_b = norm(x) (W_b diag g_b)^T + (W_b beta_b + bias_b): one product.
  const std::vector<Tensor> wb = derived(DERIVED_QKV, {p.qkv_w, p.qkv_b, p.norm1_w, p.norm1_b}, [&] {
    Tensor w = mul(p.qkv_w, reshape(p.norm1_w, {N, 1, C}));                                        // (N, 3C, C)
    Tensor b = add(reshape(matmul(p.qkv_w, reshape(p.norm1_b, {N, C, 1})), {N, 3 * C}), p.qkv_b);  // (N, 3C)
    return std::vector<Tensor>{reshape(w, {N * 3 * C, C}), reshape(b, {N * 3 * C})};
  });
  return linear(normed, wb[0], wb[1]);  // (BT1, N*3C)
}

}  // namespace

void clear_derived_weights() {
  DerivedCache& c = derived_cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.entries.clear();
}

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
  const std::vector<Tensor> wb1 = derived(DERIVED_FC1, {p.fc1_w, p.fc1_b, p.norm2_w, p.norm2_b}, [&] {
    Tensor w = mul(p.fc1_w, reshape(p.norm2_w, {N, 1, C}));  // (N, M, C)
    Tensor b = add(reshape(matmul(p.fc1_w, reshape(p.norm2_b, {N, C, 1})), {N, 1, M}), reshape(p.fc1_b, {N, 1, M}));
    return std::vector<Tensor>{transpose(w, 1, 2), b};
  });
  const Tensor h = gelu(add(matmul(u, wb1[0]), wb1[1]));  // (N, BT, M)
  // sum_b fc2_b(h_b) = [h_1 .. h_N] @ [W2_1 .. W2_N]^T: one product of inner size N*M.
  const Tensor hcat = reshape(permute(h, {1, 0, 2}), {BT, N * M});
  const std::vector<Tensor> wb2 = derived(DERIVED_FC2, {p.fc2_w, p.fc2_b}, [&] {
    return std::vector<Tensor>{reshape(permute(p.fc2_w, {1, 0, 2}), {C, N * M}), sum(p.fc2_b, {0}, false)};
  });
  const Tensor mlp = linear(hcat, wb2[0], wb2[1]);  // (BT, C)
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
