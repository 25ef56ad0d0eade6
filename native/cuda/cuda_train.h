// cuda_train.h: Para-Former training on the GPU. Parameters live on the device in the layouts
// of DESIGN.md (the same names and shapes as the CPU model), with their gradients and AdamW
// moments. Each step derives the stage's fused weights (LN1's affine folded into QKV, LN2's into
// fc1, the fc2 matrices side by side), runs the forward keeping what backward needs, the
// backward written out by hand from the same kernels, and one multi-tensor AdamW launch.
// Launches per step are constant in the branch count N (and linear in the depth).
#pragma once
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "../model/paraformer.h"
#include "cuda_kernels.h"
#include "cuda_memory.h"

namespace duat {
namespace cuda {

struct AdamWConfig {
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.05f;
};

class CudaTrainer {
 public:
  // params: host copies in model_param_names order. Norms, biases, cls_token and pos_embed take
  // no weight decay (as in lib/train/fit.ts).
  CudaTrainer(const ModelConfig& config, const std::vector<std::vector<float>>& params, Precision precision,
              const AdamWConfig& adamw);
  // logits (B, classes) of device images (B, channels, S, S); the pointer stays valid until
  // the next call. Keeps the activations backward needs.
  const float* forward(const float* images, int64_t B, cudaStream_t s);
  // Forward, loss and backward: gradients of every parameter (written, not accumulated).
  // Returns the mean cross-entropy (synchronises).
  float forward_backward(const float* images, const int32_t* labels, int64_t B, cudaStream_t s, float smoothing = 0.0f);
  // The global L2 norm of the gradients (synchronises).
  double grad_norm(cudaStream_t s);
  // forward_backward, then one AdamW step with learning rate lr (weight decay from the config,
  // none on norms, biases and tokens).
  float step(const float* images, const int32_t* labels, int64_t B, float lr, cudaStream_t s);
  // One AdamW update from the gradients in place, each parameter with its own lr and decay;
  // `step` is the bias-correction step (1 for the first).
  void adamw(const std::vector<float>& lr, const std::vector<float>& weight_decay, float beta1, float beta2, float eps,
             int64_t step, cudaStream_t s, float grad_scale = 1.0f);
  std::vector<std::vector<float>> download_grads() const;
  // Host <-> device copies of parameters and AdamW moments, one pointer per parameter in
  // model_param_names order (each the parameter's size). Synchronous.
  void upload(const std::vector<const float*>& params, const std::vector<const float*>& m,
              const std::vector<const float*>& v);
  void download(const std::vector<float*>& params, const std::vector<float*>& m, const std::vector<float*>& v) const;
  size_t param_count() const { return params_.size(); }
  const ModelConfig& config() const { return config_; }
  // The logits of the last forward (device memory).
  const float* forward_logits() const { return logits_.get(); }

 private:
  struct StageState {
    DeviceBuffer mean1, rstd1, xn, wq, bq, qkv, att, lse, a, mean2, rstd2, u, w1, b1, hpre, h, w2, b2;
  };
  const float* param(int i) const { return params_[i].get(); }
  float* grad(int i) { return grads_[i].get(); }
  int stage_param(int64_t s, int k) const { return static_cast<int>(4 + 12 * s + k); }
  int tail_param(int k) const { return static_cast<int>(4 + 12 * config_.depth + k); }
  void reserve(int64_t B);
  void stage_forward(int64_t s, const float* x, float* y, int64_t B, cudaStream_t st);
  void stage_backward(int64_t s, const float* x, const float* dy, float* dx, int64_t B, cudaStream_t st);

  ModelConfig config_;
  Precision precision_;
  AdamWConfig adamw_;
  std::vector<Shape> shapes_;
  std::vector<DeviceBuffer> params_, grads_, m_, v_;
  std::vector<float> decay_;
  int64_t steps_ = 0;
  int64_t reserved_ = 0;
  std::vector<DeviceBuffer> xs_;  // stage inputs, xs_[depth] the last output
  std::vector<StageState> st_;
  DeviceBuffer xc_, meanh_, rstdh_, yc_, logits_, dlogits_, loss_, dyc_, dxc_, norm_ = DeviceBuffer(1);
  DeviceBuffer dx0_, dx1_, dh_, du_, dv_, da_, datt_, dqkv_, delta_, dxn_, dwq_, dbq_, dw1_, db1_, dw2_, db2_;
};

}  // namespace cuda
}  // namespace duat
