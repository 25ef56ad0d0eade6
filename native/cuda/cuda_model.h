// cuda_model.h: Para-Former inference on the GPU. The CPU parameters (native/model) are uploaded
// and folded once on the device, by the kernels training uses every step: LN1's affine into one
// QKV matrix of width N*3C, LN2's affine into fc1, the N fc2 matrices side by side as one
// (C, N*M) matrix with the bias sum. A stage is then
// seven launches whatever the branch count N:
//   shared LayerNorm -> QKV product -> attention over (b, n, h) -> branch-batched projection ->
//   LayerNorm of x + a_n (all branches) -> branch-batched fc1 with GELU -> fc2 over N*M with
//   the stage sum x + s * (mlp + sum_n a_n) in its epilogue.
#pragma once
#include <cuda_runtime.h>

#include <vector>

#include "../model/paraformer.h"
#include "cuda_kernels.h"
#include "cuda_memory.h"

namespace duat {
namespace cuda {

// Called after every launch of a forward with the launch's name (profiling; see gpu_parity).
struct LaunchTracer {
  virtual ~LaunchTracer() = default;
  virtual void mark(const char* what, cudaStream_t s) = 0;
};

class CudaModel {
 public:
  CudaModel(const ModelConfig& config, const ModelParams& params, Precision precision);
  // images (B, channels, S, S) and logits (B, classes), both device pointers. Asynchronous on s.
  void forward(const float* images, int64_t B, float* logits, cudaStream_t s);
  // Kernel launches of one forward: 2 + 7 * depth, independent of the branch count.
  int64_t launches_per_forward() const { return 2 + 7 * config_.depth; }
  const ModelConfig& config() const { return config_; }
  void set_tracer(LaunchTracer* t) { tracer_ = t; }

 private:
  struct Stage {
    DeviceBuffer qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b;
  };
  void reserve(int64_t B);
  void stage_forward(const Stage& st, const float* x, float* y, int64_t B, cudaStream_t s);

  void mark(const char* what, cudaStream_t s) {
    if (tracer_) tracer_->mark(what, s);
  }

  ModelConfig config_;
  LaunchTracer* tracer_ = nullptr;
  Precision precision_;
  DeviceBuffer patch_w_, patch_b_, cls_, pos_, norm_w_, norm_b_, head_w_, head_b_;
  std::vector<Stage> stages_;
  int64_t reserved_batch_ = 0;
  DeviceBuffer x0_, x1_, xn_, qkv_, att_, a_, u_, h_;
};

}  // namespace cuda
}  // namespace duat
