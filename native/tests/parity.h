// parity.h: the device parity checks, written once for any device: every op's forward and the
// gradient of every input on `target` against the CPU on the same fresh random inputs, the
// whole model's logits, every parameter's gradient and two optimizer steps of the training step,
// and the launch count of a forward and of a step, constant in the branch count. gpu_parity.cu runs
// them against the CUDA kernels on a GPU; test_core.cpp runs them here against the test device,
// so the checks themselves are exercised on every machine.
#pragma once
#include <cmath>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "model/model.h"
#include "ops/ops.h"
#include "train/step.h"

namespace duat {
namespace parity {

struct Report {
  int passed = 0, failed = 0;
  bool quiet = false;  // print failures only
  void check(bool ok, const std::string& name, double err, double tol) {
    (ok ? passed : failed)++;
    if (!ok || !quiet) std::printf("%-4s %-78s rel err %.2e (tol %.0e)\n", ok ? "ok" : "FAIL", name.c_str(), err, tol);
  }
};

// Relative tolerance per precision of the products: fp32 differs from the CPU by summation
// order only; TF32 keeps 10 mantissa bits (2^-11 ~ 5e-4 per operand), BF16 7 bits (4e-3).
inline double tolerance(Precision p) { return p == PRECISION_FP32 ? 1e-5 : p == PRECISION_TF32 ? 2e-3 : 2e-2; }

// ||a - b|| / ||b|| over two tensors of one shape (read on the host); infinity for a non-finite a.
inline double rel_error(const Tensor& a, const Tensor& b) {
  const Tensor x = contiguous_data(to_device(a, DEVICE_CPU)), y = contiguous_data(to_device(b, DEVICE_CPU));
  if (x->shape != y->shape) return INFINITY;
  double num = 0, den = 0;
  for (int64_t i = 0; i < x->numel(); i++) {
    const double u = x->f32()[i], v = y->f32()[i];
    if (!std::isfinite(u)) return INFINITY;
    num += (u - v) * (u - v);
    den += v * v;
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

struct OpCase {
  std::string name;
  std::vector<Shape> inputs;
  std::function<Tensor(const std::vector<Tensor>&)> run;
  float lo = -1.0f, hi = 1.0f;  // input range
};

inline Tensor labels_like(const Tensor& logits, std::vector<int32_t> y) {
  Tensor t = empty({static_cast<int64_t>(y.size())}, DTYPE_I32);
  for (size_t i = 0; i < y.size(); i++) t->i32()[i] = y[i];
  return to_device(t, logits->device);
}

// The op table: every op family, views and broadcasting included, and the fused stage ops.
inline std::vector<OpCase> op_cases() {
  using V = const std::vector<Tensor>&;
  return {
      {"add (broadcast)", {{2, 3, 4}, {3, 1}}, [](V x) { return add(x[0], x[1]); }},
      {"sub", {{5, 7}, {5, 7}}, [](V x) { return sub(x[0], x[1]); }},
      {"mul (broadcast)", {{4, 6}, {1, 6}}, [](V x) { return mul(x[0], x[1]); }},
      {"div (broadcast, b away from zero)", {{3, 5}, {5}}, [](V x) { return div(x[0], add_scalar(mul(x[1], x[1]), 0.5f)); }},
      {"scalars", {{300}}, [](V x) { return mul_scalar(add_scalar(x[0], 1.5f), -2.0f); }},
      {"matmul batched of a permuted view", {{3, 2, 4}, {2, 4, 5}}, [](V x) { return matmul(permute(x[0], {1, 0, 2}), x[1]); }},
      {"matmul with a shared right operand", {{2, 33, 40}, {40, 65}}, [](V x) { return matmul(x[0], x[1]); }},
      {"matmul of transposed views", {{70, 30}, {50, 70}}, [](V x) { return matmul(transpose(x[0], 0, 1), transpose(x[1], 0, 1)); }},
      {"linear", {{2, 130, 64}, {96, 64}, {96}}, [](V x) { return linear(x[0], x[1], x[2]); }},
      {"sum and mean over dims", {{4, 300, 6}}, [](V x) { return add(sum(x[0], {0, 2}, false), mean(x[0], {0, 2}, false)); }},
      {"sum of everything", {{1000, 37}}, [](V x) { return sum(x[0], {}, false); }},
      {"slice, concat, contiguous", {{4, 7}, {4, 3}}, [](V x) { return contiguous(transpose(concat({slice(x[0], 1, 1, 6, 2), x[1]}, 1), 0, 1)); }},
      {"gelu", {{4000}}, [](V x) { return gelu(mul_scalar(x[0], 3.0f)); }},
      {"softmax (dim 0)", {{7, 33}}, [](V x) { return softmax(mul_scalar(x[0], 3.0f), 0); }},
      {"log-softmax", {{9, 130}}, [](V x) { return log_softmax(mul_scalar(x[0], 3.0f), -1); }},
      {"layerNorm, affine", {{300, 64}, {64}, {64}}, [](V x) { return layernorm(add_scalar(x[0], 3.0f), x[1], x[2], 1e-6f); }},
      {"layerNorm, C 1024", {{33, 1024}}, [](V x) { return layernorm(x[0], nullptr, nullptr, 1e-6f); }},
      {"layerNorm with a residual", {{3, 100, 48}, {100, 48}}, [](V x) { return layernorm(x[0], nullptr, nullptr, 1e-6f, x[1]); }},
      {"attention, 3 branches, D 64", {{2, 65, 3 * 3 * 128}}, [](V x) { return attention(x[0], 2, 3); }},
      {"attention, D 16, T 50", {{3, 50, 2 * 3 * 64}}, [](V x) { return attention(x[0], 4, 2); }},
      {"attention, D 8, T 17", {{2, 17, 3 * 16}}, [](V x) { return attention(x[0], 2, 1); }},
      {"attention probabilities", {{2, 20, 2 * 3 * 32}}, [](V x) { return attention_probs(x[0], 2, 2); }},
      {"branchLinear: QKV (shared, folded, interleaved)", {{130, 64}, {3, 192, 64}, {3, 192}, {3, 64}, {3, 64}},
       [](V x) { return branch_linear(x[0], x[1], x[2], add_scalar(x[3], 1.0f), x[4], false, true); }},
      {"branchLinear: fc1 (per branch, folded, GELU, interleaved)", {{3, 130, 64}, {3, 128, 64}, {3, 128}, {3, 64}, {3, 64}},
       [](V x) { return branch_linear(x[0], x[1], x[2], add_scalar(x[3], 1.0f), x[4], true, true); }},
      {"branchLinear: proj (strided view input)", {{130, 3 * 64}, {3, 64, 64}, {3, 64}},
       [](V x) { return branch_linear(permute(reshape(x[0], {130, 3, 64}), {1, 0, 2}), x[1], x[2], nullptr, nullptr, false, false); }},
      {"stageSum (split-K sized)", {{65, 192}, {4, 65, 768}, {192, 4 * 768}, {192}, {4, 65, 192}},
       [](V x) { return stage_sum(x[0], x[1], x[2], x[3], x[4], 0.5f); }},
      {"crossEntropy, smoothing 0.1", {{67, 10}},
       [](V x) {
         std::vector<int32_t> y(67);
         for (int i = 0; i < 67; i++) y[i] = (i * 7) % 10;
         return cross_entropy(mul_scalar(x[0], 3.0f), labels_like(x[0], y), 0.1f);
       }},
      {"patchEmbed", {{2, 3, 32, 32}, {48, 3, 4, 4}, {48}}, [](V x) { return patch_embed(x[0], x[1], x[2], 4); }},
      {"dropout", {{5000}}, [](V x) { return dropout(x[0], 0.3f, 77); }},
  };
}

// Runs every op on the CPU and on `target` (inside `precision`) with the same inputs and the same
// incoming gradient; compares the output and every input's gradient.
inline void check_ops(Device target, Precision precision, std::mt19937_64& rng, Report& r) {
  PrecisionScope scope(precision);
  const double tol = tolerance(precision);
  for (const OpCase& c : op_cases()) {
    std::vector<Tensor> cpu, dev;
    for (const Shape& s : c.inputs) {
      Tensor t = rand_uniform(s, rng(), c.lo, c.hi);
      t->requires_grad = true;
      Tensor u = to_device(t, target);
      u->requires_grad = true;
      cpu.push_back(t);
      dev.push_back(u);
    }
    const std::string name = std::string("op ") + c.name + " (" + precision_name(precision) + ")";
    try {
      const Tensor a = c.run(cpu), b = c.run(dev);
      r.check(b->device == target && rel_error(b, a) <= tol, name + ": forward", rel_error(b, a), tol);
      if (!a->requires_grad) continue;  // no gradient (attention probabilities)
      const Tensor g = randn(a->shape, rng(), 0.0f, 1.0f);
      backward(a, g);
      backward(b, to_device(g, target));
      for (size_t i = 0; i < cpu.size(); i++) {
        if (!cpu[i]->grad) continue;
        const double e = dev[i]->grad ? rel_error(dev[i]->grad, cpu[i]->grad) : INFINITY;
        r.check(e <= tol, name + ": gradient of input " + std::to_string(i), e, tol);
      }
    } catch (const std::exception& e) {
      r.check(false, name + ": threw " + e.what(), INFINITY, tol);
    }
  }
}

inline ModelConfig mnist_config(int64_t depth, int64_t branches) {
  ModelConfig c;  // 28 x 28, patch 4, dim 64, 4 heads, M 128
  c.depth = depth, c.branches = branches;
  return c;
}

inline std::vector<Tensor> random_params(const ModelConfig& c, std::mt19937_64& rng) {
  std::vector<Tensor> list;
  const std::vector<std::string> names = model_param_names(c);
  const std::vector<Shape> shapes = model_param_shapes(c);
  for (size_t i = 0; i < names.size(); i++) {
    const bool norm_weight = names[i].find("norm") != std::string::npos && names[i].find("weight") != std::string::npos;
    const float std = names[i].find("bias") != std::string::npos ? 0.05f : (norm_weight ? 0.2f : 0.1f);
    list.push_back(randn(shapes[i], rng(), norm_weight ? 1.0f : 0.0f, std));
  }
  return list;
}

// Fresh copies on `d` (never the tensors themselves, even on their own device).
inline std::vector<Tensor> copies(const std::vector<Tensor>& ts, Device d) {
  std::vector<Tensor> out;
  for (const Tensor& t : ts) {
    out.push_back(empty(t->shape, t->dtype, d));
    copy_into(out.back(), t);
  }
  return out;
}

inline Tensor random_labels(int64_t B, int64_t K, std::mt19937_64& rng) {
  Tensor y = empty({B}, DTYPE_I32);
  for (int64_t i = 0; i < B; i++) y->i32()[i] = static_cast<int32_t>(rng() % K);
  return y;
}

// The model on `target` against the CPU: logits without a graph, and with one every parameter's
// gradient of the loss.
inline void check_model(Device target, Precision precision, const ModelConfig& c, const std::string& name, int64_t B,
                        float smoothing, std::mt19937_64& rng, Report& r) {
  PrecisionScope scope(precision);
  // A model compounds many products: its tolerance is that of one product, times 10.
  const double tol = 10 * tolerance(precision);
  const std::string tag = " (" + std::string(precision_name(precision)) + ")";
  try {
    std::vector<Tensor> cpu = random_params(c, rng), dev = copies(cpu, target);
    const Tensor images = randn({B, c.channels, c.image_size, c.image_size}, rng(), 0.0f, 1.0f);
    const Tensor labels = random_labels(B, c.classes, rng);
    {
      GradMode no_grad(false);
      const Tensor a = model_forward(images, model_params_from_list(c, cpu), c);
      const Tensor b = model_forward(images, model_params_from_list(c, dev), c);
      r.check(rel_error(b, a) <= tol, "model " + name + ": logits" + tag, rel_error(b, a), tol);
    }
    for (Tensor& t : cpu) t->requires_grad = true;
    for (Tensor& t : dev) t->requires_grad = true;
    const Tensor la = cross_entropy(model_forward(images, model_params_from_list(c, cpu), c), labels, smoothing);
    const Tensor lb = cross_entropy(model_forward(images, model_params_from_list(c, dev), c), to_device(labels, target), smoothing);
    r.check(rel_error(lb, la) <= tol, "model " + name + ": loss" + tag, rel_error(lb, la), tol);
    backward(la, nullptr);
    backward(lb, nullptr);
    const std::vector<std::string> names = model_param_names(c);
    double worst = 0;
    std::string worst_name;
    for (size_t i = 0; i < cpu.size(); i++) {
      const double e = dev[i]->grad ? rel_error(dev[i]->grad, cpu[i]->grad) : INFINITY;
      if (!(e <= worst)) worst = e, worst_name = names[i];
    }
    r.check(worst <= tol, "model " + name + ": every parameter's gradient (worst " + worst_name + ")" + tag, worst, tol);
  } catch (const std::exception& e) {
    r.check(false, "model " + name + tag + ": threw " + e.what(), INFINITY, tol);
  }
}

// Two training steps (AdamW, two groups with their own options, smoothing, clipping) on the CPU
// and on `target` from the same parameters: the statistics read back and the parameters after.
// With `rows`, the second step trains 2 of the 3 branches with the first frozen (the optimizer
// by rows, per-row bias corrections, zeroed frozen gradients).
inline void check_training(Device target, Precision precision, std::mt19937_64& rng, Report& r, bool rows = false) {
  const ModelConfig c = mnist_config(2, 3);
  const double tol = 10 * tolerance(precision);
  const std::string tag = std::string(rows ? ", second step with branch 0 frozen and branch 2 inactive" : "") + " (" +
                          std::string(precision_name(precision)) + ")";
  try {
    const std::vector<Tensor> init = random_params(c, rng);
    Model a(c, copies(init, DEVICE_CPU), precision), b(c, copies(init, DEVICE_CPU), precision);
    b.to(target);
    std::vector<int> groups;
    const std::vector<std::string> names = model_param_names(c);
    for (const std::string& n : names) groups.push_back(n.find("bias") != std::string::npos || n.find("norm") != std::string::npos);
    Optimizer oa(OPTIMIZER_ADAMW, a.params(), groups), ob(OPTIMIZER_ADAMW, b.params(), groups);
    GroupOptions g0, g1;
    g0.lr = 2e-3, g0.weight_decay = 0.05;
    g1.lr = 5e-3, g1.beta1 = 0.8, g1.beta2 = 0.99;
    // With eps 1e-8, Adam moves an element by about lr * sign(g) however small g is, so a gradient
    // near zero whose sign the products' rounding flips moves its parameter by 2 lr: on an H200,
    // 2.4e-2 for an fc2 bias in TF32 in 2 of 6 seeds, with every gradient within 1.3e-3. In TF32
    // and BF16 a larger eps makes the update continuous in the gradient at this scale (clipped to
    // norm 0.5, about 1e-3 an element), so the check compares arithmetic, not signs.
    if (precision != PRECISION_FP32) g0.eps = g1.eps = 1e-3;
    StepOptions so;
    so.label_smoothing = 0.1f, so.clip_grad_norm = 0.5f;
    double worst_stat = 0;
    for (int step = 0; step < 2; step++) {
      if (rows && step == 1) a.set_branches(2, 1, false), b.set_branches(2, 1, false);
      const Tensor images = randn({6, 1, 28, 28}, rng(), 0.0f, 1.0f);
      const Tensor labels = random_labels(6, 10, rng);
      const StepResult ra = train_step(a, images, labels, &oa, {g0, g1}, so);
      const StepResult rb = train_step(b, images, labels, &ob, {g0, g1}, so);
      worst_stat = std::max({worst_stat, std::fabs(ra.loss - rb.loss) / std::max(1.0, ra.loss),
                             std::fabs(ra.grad_norm - rb.grad_norm) / ra.grad_norm});
    }
    r.check(worst_stat <= tol, "training step: loss and gradient norm, two AdamW steps" + tag, worst_stat, tol);
    double worst = 0;
    std::string worst_name;
    for (size_t i = 0; i < names.size(); i++) {
      if (names[i].find("attn.qkv.bias") != std::string::npos) continue;  // zero-gradient key bias: Adam's noise
      const double e = rel_error(b.params()[i], a.params()[i]);
      if (!(e <= worst)) worst = e, worst_name = names[i];
    }
    r.check(worst <= tol, "training step: every parameter after two steps (worst " + worst_name + ")" + tag, worst, tol);
  } catch (const std::exception& e) {
    r.check(false, "training step" + tag + ": threw " + e.what(), INFINITY, tol);
  }
}

// Launches of a forward (inference, derived weights cached) and of a training step on `target`
// for 2 and 6 branches: equal (a stage is a fixed number of launches whatever N).
inline void check_launches(Device target, std::mt19937_64& rng, Report& r) {
  auto count = [&](int64_t branches) {
    const ModelConfig c = mnist_config(2, branches);
    Model m(c, copies(random_params(c, rng), target), PRECISION_FP32);
    Optimizer opt(OPTIMIZER_ADAMW, m.params(), std::vector<int>(m.params().size(), 0));
    const Tensor images = randn({2, 1, 28, 28}, rng(), 0.0f, 1.0f), labels = random_labels(2, 10, rng);
    Backend& be = backend(target);
    train_step(m, images, labels, &opt, {GroupOptions{}}, {});  // warm-up
    int64_t t0 = be.launches();
    train_step(m, images, labels, &opt, {GroupOptions{}}, {});
    const int64_t step = be.launches() - t0;
    GradMode no_grad(false);
    m.forward(images);  // derives and caches the folded weights
    t0 = be.launches();
    m.forward(images);
    return std::make_pair(be.launches() - t0, step);
  };
  try {
    const auto two = count(2), six = count(6);
    const bool ok = two == six && two.first > 0;
    (ok ? r.passed : r.failed)++;
    std::printf("%-4s launches of a depth-2 forward: %lld with 2 branches, %lld with 6; of a training step: %lld and %lld\n",
                ok ? "ok" : "FAIL", static_cast<long long>(two.first), static_cast<long long>(six.first),
                static_cast<long long>(two.second), static_cast<long long>(six.second));
  } catch (const std::exception& e) {
    r.check(false, std::string("launch counts: threw ") + e.what(), INFINITY, 0);
  }
}

// A step whose loss is NaN (one poisoned pixel) on `target`: the update kernels read the gate on
// the device and skip, so every parameter is bit for bit as before and no step is counted; then a
// finite step applies. For AdamW and for SGD with momentum.
inline void check_non_finite_skip(Device target, std::mt19937_64& rng, Report& r) {
  for (OptimizerKind kind : {OPTIMIZER_ADAMW, OPTIMIZER_SGD}) {
    const std::string name = std::string("a NaN loss skips the ") + (kind == OPTIMIZER_ADAMW ? "AdamW" : "SGD") +
                             " update on the device; the next finite step applies";
    try {
      const ModelConfig c = mnist_config(1, 2);
      Model m(c, copies(random_params(c, rng), target), PRECISION_FP32);
      const std::vector<Tensor> before = copies(m.params(), DEVICE_CPU);
      Optimizer opt(kind, m.params(), std::vector<int>(m.params().size(), 0));
      GroupOptions g;
      g.lr = 0.05, g.momentum = 0.9;
      const Tensor images = randn({2, 1, 28, 28}, rng(), 0.0f, 1.0f), labels = random_labels(2, 10, rng);
      const Tensor poisoned = copies({images}, DEVICE_CPU)[0];
      poisoned->f32()[17] = NAN;
      const StepResult s = train_step(m, to_device(poisoned, target), labels, &opt, {g}, {});
      double moved = 0;
      for (size_t i = 0; i < before.size(); i++) moved = std::max(moved, rel_error(m.params()[i], before[i]));
      const bool skipped = s.skipped && opt.steps() == 0 && moved == 0;
      const StepResult t = train_step(m, to_device(images, target), labels, &opt, {g}, {});
      double applied = 0;  // the largest change: finite and nonzero
      for (size_t i = 0; i < before.size(); i++) applied = std::max(applied, rel_error(m.params()[i], before[i]));
      r.check(skipped && !t.skipped && opt.steps() == 1 && applied > 0 && std::isfinite(applied), name, moved, 0);
    } catch (const std::exception& e) {
      r.check(false, name + ": threw " + e.what(), INFINITY, 0);
    }
  }
}

// Everything above against `target`, in the given precisions.
inline void check_all(Device target, const std::vector<Precision>& precisions, std::mt19937_64& rng, Report& r,
                      bool quick) {
  for (Precision p : precisions) {
    check_ops(target, p, rng, r);
    check_model(target, p, mnist_config(2, 3), "para-former-2-3 mnist-size, B 3", 3, 0.0f, rng, r);
    ModelConfig mean = mnist_config(2, 3);
    mean.branch_scale = 1.0f / 3.0f;
    check_model(target, p, mean, "para-former-2-3 mean of branches, smoothing 0.1, B 4", 4, 0.1f, rng, r);
    if (!quick) {
      ModelConfig tiny;  // the benchmark's width: 32 x 32 x 3, patch 4, dim 192, 3 heads, M 768
      tiny.image_size = 32, tiny.channels = 3, tiny.dim = 192, tiny.heads = 3, tiny.mlp_hidden = 768, tiny.branches = 4;
      check_model(target, p, tiny, "para-former-1-4 tiny 32x32, B 2", 2, 0.0f, rng, r);
    }
    ModelConfig variant = mnist_config(2, 3);  // the ViT variants, two branches active
    variant.layer_scale = variant.pre_norm = variant.avg_pool = true;
    variant.patch_bias = false;
    variant.active_branches = 2;
    check_model(target, p, variant, "para-former-2-3 LayerScale, pre-norm, average pooling, 2 active, B 3", 3, 0.0f, rng, r);
    check_training(target, p, rng, r);
    check_training(target, p, rng, r, true);
  }
  check_non_finite_skip(target, rng, r);
  check_launches(target, rng, r);
}

}  // namespace parity
}  // namespace duat
