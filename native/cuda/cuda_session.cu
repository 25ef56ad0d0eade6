// cuda_session.cu: CudaSession over CudaTrainer (see cuda_session.h).
#include "cuda_session.h"

#include <algorithm>
#include <cstring>

#include "../ops/ops.h"
#include "cuda_backend.h"
#include "cuda_model.h"
#include "cuda_train.h"

namespace duat {

namespace {

using cuda::DeviceBuffer;

const float* host_data(const Tensor& t, std::vector<Tensor>* keep) {
  if (!t) return nullptr;
  keep->push_back(contiguous_data(t));
  return keep->back()->f32();
}

class Session : public CudaSession {
 public:
  Session(const ModelConfig& c, cuda::Precision p)
      : config_(c), trainer_(c, zero_params(c), p, cuda::AdamWConfig{}) {}

  void upload(const std::vector<Tensor>& params, const std::vector<Tensor>& m, const std::vector<Tensor>& v) override {
    check_layout(params, m, v);
    std::vector<Tensor> keep;
    std::vector<const float*> hp, hm, hv;
    for (const Tensor& t : params) hp.push_back(host_data(t, &keep));
    for (const Tensor& t : m) hm.push_back(host_data(t, &keep));
    for (const Tensor& t : v) hv.push_back(host_data(t, &keep));
    trainer_.upload(hp, hm, hv);
  }

  void download(const std::vector<Tensor>& params, const std::vector<Tensor>& m, const std::vector<Tensor>& v) override {
    check_layout(params, m, v);
    auto ptrs = [](const std::vector<Tensor>& ts) {
      std::vector<float*> out;
      for (const Tensor& t : ts) {
        check(!t || t->is_contiguous(), ERROR_ARGUMENT, "cuda session: download needs contiguous tensors");
        mark_written(t);
        out.push_back(t ? t->f32() : nullptr);
      }
      return out;
    };
    trainer_.download(ptrs(params), ptrs(m), ptrs(v));
  }

  CudaStepResult step(const Tensor& images, const Tensor& labels, const CudaStepOptions& o) override {
    const int64_t B = stage_batch(images, labels);
    check(static_cast<int64_t>(o.lr.size()) == static_cast<int64_t>(trainer_.param_count()) &&
              o.weight_decay.size() == o.lr.size(),
          ERROR_ARGUMENT, "cuda session: one learning rate and weight decay per parameter");
    CudaStepResult r;
    r.loss = trainer_.forward_backward(images_.get(), labels_, B, nullptr, o.label_smoothing);
    r.correct = count_correct(B, labels);
    r.grad_norm = trainer_.grad_norm(nullptr);
    const float scale = o.clip_grad_norm > 0.0f && r.grad_norm > o.clip_grad_norm
                            ? static_cast<float>(o.clip_grad_norm / (r.grad_norm + 1e-6))
                            : 1.0f;
    trainer_.adamw(o.lr, o.weight_decay, o.beta1, o.beta2, o.eps, o.step, nullptr, scale);
    cuda::check_cuda(cudaStreamSynchronize(nullptr), "training step");
    return r;
  }

  Tensor forward(const Tensor& images) override {
    const int64_t B = stage_batch(images, nullptr);
    const float* logits = trainer_.forward(images_.get(), B, nullptr);
    Tensor out = empty({B, config_.classes});
    cuda::download(logits, out->f32(), static_cast<size_t>(B * config_.classes));
    return out;
  }

  CudaEvalResult evaluate(const Tensor& images, const Tensor& labels) override {
    const Tensor logits = forward(images);
    CudaEvalResult r;
    r.predictions = argmax(logits);
    if (labels) {
      r.loss_sum = *cross_entropy(logits, labels, 0.0f)->f32() * static_cast<double>(logits->shape[0]);
      const Tensor y = contiguous_data(labels);
      for (int64_t i = 0; i < y->numel(); i++) r.correct += r.predictions->i32()[i] == y->i32()[i];
    }
    return r;
  }

 private:
  // Every list holds one float32 tensor per parameter (or is empty for m and v), each of the
  // parameter's size: the copies trust these sizes.
  void check_layout(const std::vector<Tensor>& params, const std::vector<Tensor>& m, const std::vector<Tensor>& v) const {
    const std::vector<Shape> shapes = model_param_shapes(config_);
    const std::vector<std::string> names = model_param_names(config_);
    check(params.size() == shapes.size(), ERROR_SHAPE,
          "cuda session: expected " + std::to_string(shapes.size()) + " parameters, got " + std::to_string(params.size()));
    for (const std::vector<Tensor>* list : {&params, &m, &v}) {
      check(list->empty() || list->size() == shapes.size(), ERROR_SHAPE, "cuda session: one optimizer state per parameter");
      for (size_t i = 0; i < list->size(); i++) {
        const Tensor& t = (*list)[i];
        if (!t) continue;
        check_f32(t, "cuda session", names[i].c_str());
        check(t->numel() == shape_numel(shapes[i]), ERROR_SHAPE,
              "cuda session: '" + names[i] + "' has " + std::to_string(t->numel()) + " values, the model needs " +
                  std::to_string(shape_numel(shapes[i])));
      }
    }
  }

  static std::vector<std::vector<float>> zero_params(const ModelConfig& c) {
    std::vector<std::vector<float>> out;
    for (const Shape& s : model_param_shapes(c)) out.emplace_back(static_cast<size_t>(shape_numel(s)), 0.0f);
    return out;
  }

  // Copies a batch to the device (buffers grown as needed); returns B.
  int64_t stage_batch(const Tensor& images, const Tensor& labels) {
    const ModelConfig& c = config_;
    check_f32(images, "cuda session", "images");
    check(images->dim() == 4 && images->shape[1] == c.channels && images->shape[2] == c.image_size &&
              images->shape[3] == c.image_size,
          ERROR_SHAPE, "model: expected images of shape [B, " + std::to_string(c.channels) + ", " +
                           std::to_string(c.image_size) + ", " + std::to_string(c.image_size) + "] but got " +
                           shape_str(images->shape));
    const int64_t B = images->shape[0];
    check(B >= 1, ERROR_SHAPE, "model: a batch needs at least one image");
    const Tensor x = contiguous_data(images);
    if (images_.size() < static_cast<size_t>(x->numel())) images_ = DeviceBuffer(x->numel());
    cuda::check_cuda(cudaMemcpy(images_.get(), x->f32(), x->numel() * sizeof(float), cudaMemcpyHostToDevice), "images");
    if (labels) {
      check(labels->numel() == B, ERROR_SHAPE,
            "trainStep: " + std::to_string(labels->numel()) + " labels for " + std::to_string(B) + " images");
      const Tensor y = contiguous_data(labels);
      for (int64_t i = 0; i < B; i++)
        check(y->i32()[i] >= 0 && y->i32()[i] < c.classes, ERROR_ARGUMENT,
              "trainStep: label " + std::to_string(y->i32()[i]) + " at " + std::to_string(i) + " is not a class in [0, " +
                  std::to_string(c.classes) + ")");
      if (label_capacity_ < B) {
        cuda::device_free(labels_);
        labels_ = static_cast<int32_t*>(cuda::device_alloc(B * sizeof(int32_t)));
        label_capacity_ = B;
      }
      cuda::check_cuda(cudaMemcpy(labels_, y->i32(), B * sizeof(int32_t), cudaMemcpyHostToDevice), "labels");
    }
    return B;
  }

  // Correct predictions of the logits the last forward left on the device.
  int64_t count_correct(int64_t B, const Tensor& labels) {
    const float* logits = trainer_.forward_logits();
    std::vector<float> host(static_cast<size_t>(B * config_.classes));
    cuda::download(logits, host.data(), host.size());
    const Tensor y = contiguous_data(labels);
    int64_t correct = 0;
    for (int64_t b = 0; b < B; b++) {
      const float* row = host.data() + b * config_.classes;
      correct += std::max_element(row, row + config_.classes) - row == y->i32()[b];
    }
    return correct;
  }

 public:
  ~Session() override { cuda::device_free(labels_); }

 private:
  ModelConfig config_;
  cuda::CudaTrainer trainer_;
  DeviceBuffer images_;
  int32_t* labels_ = nullptr;
  int64_t label_capacity_ = 0;
};

}  // namespace

std::unique_ptr<CudaSession> cuda_session_create(const ModelConfig& config, int precision) {
  check_model_config(config);
  const CudaStatus& s = cuda_status();
  check(s.available, ERROR_DEVICE, "device 'cuda' is not available: " + s.reason);
  check(precision >= 0 && precision <= 2, ERROR_ARGUMENT, "cuda session: precision must be 0 (fp32), 1 (tf32) or 2 (bf16)");
  return std::make_unique<Session>(config, static_cast<cuda::Precision>(precision));
}

}  // namespace duat
