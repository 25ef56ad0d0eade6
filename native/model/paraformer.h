// paraformer.h: the Para-Former model (docs/design.md, "The model"), the one definition for
// every device: its parameters live on one device and every op runs there.
//   stage(x) = x + s * sum_{b=1..N} f_b(x),  f_b(x) = a_b + MLP_b(LN2_b(x + a_b)),
//   a_b = Attn_b(LN1_b(x)), s = 1 (sum, default) or 1/N (mean)
// All N branches of a stage run together, in a fixed number of kernel launches whatever N: one
// shared norm, one QKV product of width N*3C (LN1's affine folded in), attention over
// (batch, branch, head) in one op, the projections as one batched product, LN2 of every branch
// with the residual in one op, fc1 + GELU as one batched product (LN2's affine folded in), and
// the branch sum of the MLPs with both residuals as ONE product of inner size N*M (ops/branch.cpp).
// Built from ops, so autograd records every step and backward needs no code of its own here.
#pragma once
#include <string>
#include <vector>

#include "../core/tensor.h"

namespace duat {

struct ModelConfig {
  int64_t image_size = 28, patch_size = 4, channels = 1, classes = 10;
  int64_t dim = 64, heads = 4, depth = 1, branches = 4, mlp_hidden = 128;
  float eps = 1e-6f;
  float branch_scale = 1.0f;  // 1: sum of branches (default); 1/N: mean
  // ViT variants (docs/design.md, "ViT variants"), for pretrained checkpoints: LayerScale on each
  // branch's two outputs (ls1, ls2), a LayerNorm after the embedding (norm_pre), a patch
  // embedding without bias, and global average pooling of the patch tokens into fc_norm instead
  // of the class token into norm.
  bool layer_scale = false, pre_norm = false, patch_bias = true, avg_pool = false;
  // Branch-parallel training: this model holds one rank's share of every stage's branches
  // (`branches` of them) and each stage sums its branches over the ranks of the process's
  // communicator (branch_input / branch_reduce), then adds the residual. branch_scale is then
  // 1/N of the whole model's N for 'mean'.
  bool branch_parallel = false;
  // Progressive training and expansion (docs/design.md, "Branches"): only each stage's first
  // `active_branches` branches compute (0: all); the others cost nothing and get no gradient.
  int64_t active_branches = 0;
  int64_t tokens() const { return (image_size / patch_size) * (image_size / patch_size) + 1; }
};

// Parameters of one stage, stacked over branches (leading dimension N).
struct StageParams {
  Tensor norm1_w, norm1_b;  // (N, C)
  Tensor qkv_w, qkv_b;      // (N, 3C, C), (N, 3C)
  Tensor proj_w, proj_b;    // (N, C, C), (N, C)
  Tensor norm2_w, norm2_b;  // (N, C)
  Tensor fc1_w, fc1_b;      // (N, M, C), (N, M)
  Tensor fc2_w, fc2_b;      // (N, C, M), (N, C)
  Tensor ls1, ls2;          // (N, C) LayerScale, or null
};

struct ModelParams {
  Tensor patch_w, patch_b;  // (C, channels, P, P), (C) or null
  Tensor cls_token, pos_embed;  // (1, 1, C), (1, T+1, C)
  Tensor norm_pre_w, norm_pre_b;  // (C), or null
  std::vector<StageParams> stages;
  Tensor norm_w, norm_b;  // (C): norm, or fc_norm with avg_pool
  Tensor head_w, head_b;  // (classes, C), (classes)
};

// The parameter names in the order of `model_param_list` (safetensors / timm names).
std::vector<std::string> model_param_names(const ModelConfig& c);
// The positions in that order of the parameters stacked over a stage's branches ("stages.*"):
// [first, end).
struct IndexRange {
  size_t first, end;
  bool contains(size_t i) const { return i >= first && i < end; }
};
IndexRange model_branch_params(const ModelConfig& c);
// The expected shape of every parameter, in the same order.
std::vector<Shape> model_param_shapes(const ModelConfig& c);
// Builds the structure from a flat list in name order, checking every shape (ERROR_SHAPE names
// the first parameter that does not fit) and that all live on one device (ERROR_DEVICE).
ModelParams model_params_from_list(const ModelConfig& c, const std::vector<Tensor>& list);
std::vector<Tensor> model_param_list(const ModelParams& p);
void check_model_config(const ModelConfig& c);
// The device the parameters live on.
Device model_device(const ModelParams& p);

// x (B, T1, C) -> the stage's output; with c.branch_parallel a collective over every rank.
// class_token_only: the output of the class token alone, (B, 1, C): every token's keys and values,
// the class token's query (attention_first), and the projection, MLP and sum of its row only; the
// same values as that row of the whole output. Without a gradient only; not with c.branch_parallel.
Tensor stage_forward(const Tensor& x, const StageParams& p, const ModelConfig& c, bool class_token_only = false);
// images (B, channels, S, S), on any device (copied to the parameters' device, differentiably)
// -> logits (B, classes) on the parameters' device. Without a gradient, a model pooled by its class
// token computes its last stage for that token alone past attention (stage_forward's
// class_token_only): the other tokens' last outputs reach no logit.
Tensor model_forward(const Tensor& images, const ModelParams& p, const ModelConfig& c);
// Every stage's attention probabilities for `images`, each (B, N*H, T+1, T+1); no gradient.
std::vector<Tensor> model_attention_maps(const Tensor& images, const ModelParams& p, const ModelConfig& c);

}  // namespace duat
