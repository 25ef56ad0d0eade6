// model.h: the native model object, created once per JS ParaFormer: its configuration, its
// parameters (the very tensors JS holds) and the precision of its products. A model is one
// resource with one lock: a training step in flight holds it (Model::Lock) and marks every
// parameter's storage busy, so any JS call that would read or write them meanwhile is refused
// with ERROR_STATE by the binding (convert.cpp), and no second step can start.
#pragma once
#include <atomic>
#include <vector>

#include "paraformer.h"

namespace duat {

class Model {
 public:
  // params in model_param_names order, leaf tensors on one device; they are marked as requiring
  // gradients.
  Model(const ModelConfig& config, std::vector<Tensor> params, Precision precision);
  const ModelConfig& config() const { return config_; }
  const std::vector<Tensor>& params() const { return params_; }
  // The same tensors as params(), by their place in the model (built and checked once: the
  // parameters are these tensors for the model's life, moved in place by to()).
  const ModelParams& structured() const { return structured_; }
  Device device() const { return params_.empty() ? DEVICE_CPU : params_[0]->device; }
  Precision precision() const { return precision_; }
  void set_precision(Precision p);

  // Progressive training and expansion (docs/design.md, "Branches"): each stage computes only its
  // first `active` branches (0: all) and optimizers update only branches [frozen, active) of the
  // stacked parameters; the embedding (patch embedding, class token, positions) is updated unless
  // `freeze_embedding`; the final norm and the head always are.
  void set_branches(int64_t active, int64_t frozen, bool freeze_embedding);
  int64_t frozen_branches() const { return frozen_; }

  // images -> logits, recording the graph when grad mode is on (custom training loops).
  Tensor forward(const Tensor& images) const;
  std::vector<Tensor> attention_maps(const Tensor& images) const;
  // Moves every parameter (and its gradient) to `device` in place.
  void to(Device device);

  // Releases the parameters (the JS model was disposed); every later call is ERROR_DISPOSED.
  void dispose();
  // ERROR_STATE while a step holds the model, ERROR_DISPOSED after dispose().
  void check_idle(const char* what) const;

  // Held by a training step (or evaluation) from the moment it is queued until it settles:
  // acquiring fails with ERROR_STATE when another holds the model; `extra` (the optimizer's
  // state) is marked busy with the parameters.
  class Lock {
   public:
    Lock(Model& model, std::vector<Tensor> extra);
    ~Lock();
    Lock(const Lock&) = delete;
    Lock& operator=(const Lock&) = delete;

   private:
    Model& model_;
    std::vector<std::shared_ptr<Storage>> storages_;
  };

 private:
  ModelConfig config_;
  std::vector<Tensor> params_;
  ModelParams structured_;
  Precision precision_;
  int64_t frozen_ = 0;
  std::atomic<bool> busy_{false};
};

}  // namespace duat
