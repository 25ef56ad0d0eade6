// cuda_session.h: a model's training and inference state on the GPU, as the Node bindings see
// it. Plain C++ (no CUDA types), so the bindings compile without nvcc; a build without CUDA
// links cuda_stubs.cpp, whose cuda_session_create throws ERROR_DEVICE.
//
// The host tensors stay the model's parameters as the API shows them; the session holds device
// copies of the parameters and AdamW moments. upload() and download() move both ways (the caller
// decides when: the TS model syncs lazily, see lib/nn/ParaFormer.ts).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "../model/paraformer.h"

namespace duat {

struct CudaStepOptions {
  std::vector<float> lr, weight_decay;  // per parameter (optimizer groups)
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  int64_t step = 1;  // AdamW's bias-correction step
  float label_smoothing = 0.0f;
  float clip_grad_norm = 0.0f;  // 0: off
};

struct CudaStepResult {
  double loss = 0.0;
  double grad_norm = 0.0;  // before clipping
  int64_t correct = 0;
};

struct CudaEvalResult {
  double loss_sum = 0.0;  // when labels were given
  int64_t correct = 0;
  Tensor predictions;  // int32 (B)
};

class CudaSession {
 public:
  virtual ~CudaSession() = default;
  // Host -> device. m and v may be empty (moments left as they are: zero in a new session).
  virtual void upload(const std::vector<Tensor>& params, const std::vector<Tensor>& m, const std::vector<Tensor>& v) = 0;
  // Device -> host, into the given tensors (contiguous float32 of the parameters' shapes).
  virtual void download(const std::vector<Tensor>& params, const std::vector<Tensor>& m,
                        const std::vector<Tensor>& v) = 0;
  // Forward, cross-entropy, backward and AdamW on the device; images (B, ch, S, S) float32 and
  // labels (B) int32 on the host.
  virtual CudaStepResult step(const Tensor& images, const Tensor& labels, const CudaStepOptions& o) = 0;
  // Logits (B, classes) on the host.
  virtual Tensor forward(const Tensor& images) = 0;
  virtual CudaEvalResult evaluate(const Tensor& images, const Tensor& labels) = 0;
};

// precision: 0 fp32, 1 tf32, 2 bf16 (tensor cores need sm_80; older devices use fp32).
std::unique_ptr<CudaSession> cuda_session_create(const ModelConfig& config, int precision);

}  // namespace duat
