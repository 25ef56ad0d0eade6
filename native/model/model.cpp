// model.cpp: the native model object and its lock (model.h).
#include "model.h"

#include <string>

#include "../core/autograd.h"

namespace duat {

Model::Model(const ModelConfig& config, std::vector<Tensor> params, Precision precision)
    : config_(config),
      params_(std::move(params)),
      structured_(model_params_from_list(config_, params_)),  // every shape and the one device checked
      precision_(precision) {
  for (const Tensor& t : params_) {
    DUAT_CHECK(!t->grad_fn, ERROR_ARGUMENT, "model: a parameter must be a leaf tensor, not the result of an op");
    t->requires_grad = true;
  }
}

void Model::set_precision(Precision p) {
  check_idle("change its precision");
  precision_ = p;
}

void Model::set_branches(int64_t active, int64_t frozen, bool freeze_embedding) {
  check_idle("change its active or frozen branches");
  const int64_t N = config_.branches;
  DUAT_CHECK(active >= 0 && active <= N, ERROR_ARGUMENT,
             "model: active branches must be 0 (all) to " + std::to_string(N) + ", got " + std::to_string(active));
  const int64_t k = active == 0 ? N : active;
  DUAT_CHECK(frozen >= 0 && frozen <= k, ERROR_ARGUMENT,
             "model: frozen branches must be 0 to the " + std::to_string(k) + " active ones, got " + std::to_string(frozen));
  DUAT_CHECK(!config_.branch_parallel || (k == N && frozen == 0), ERROR_ARGUMENT,
             "model: a branch-parallel share trains all its branches");
  config_.active_branches = k == N ? 0 : k;
  frozen_ = frozen;
  const IndexRange stacked = model_branch_params(config_);
  for (size_t i = 0; i < params_.size(); i++) {
    Tensor& p = params_[i];
    if (stacked.contains(i)) {
      p->update_begin = frozen, p->update_end = k;
    } else {
      p->update_begin = 0, p->update_end = freeze_embedding && i < stacked.first ? 0 : -1;
    }
  }
}

void Model::check_idle(const char* what) const {
  DUAT_CHECK(!params_.empty(), ERROR_DISPOSED, "the model has been disposed");
  DUAT_CHECK(!busy_.load(), ERROR_STATE,
             std::string("the model is in the middle of a training step; await it before you ") + what);
}

void Model::dispose() {
  check_idle("dispose it");
  params_.clear();
  structured_ = ModelParams();
}

Tensor Model::forward(const Tensor& images) const {
  check_idle("use it");
  PrecisionScope scope(precision_);
  return model_forward(images, structured(), config_);
}

std::vector<Tensor> Model::attention_maps(const Tensor& images) const {
  check_idle("use it");
  PrecisionScope scope(precision_);
  return model_attention_maps(images, structured(), config_);
}

void Model::to(Device device) {
  check_idle("move it");
  backend(device);  // a DeviceError that says why, before anything moves
  for (const Tensor& t : params_) move_storage(t, device);
}

Model::Lock::Lock(Model& model, std::vector<Tensor> extra) : model_(model) {
  DUAT_CHECK(!model.params_.empty(), ERROR_DISPOSED, "the model has been disposed");
  DUAT_CHECK(!model.busy_.exchange(true), ERROR_STATE,
             "the model is in the middle of a training step; await it before starting another");
  for (const std::vector<Tensor>* list : {&model.params_, &extra})
    for (const Tensor& t : *list) {
      t->storage->busy.fetch_add(1);
      storages_.push_back(t->storage);
    }
}

Model::Lock::~Lock() {
  for (const auto& s : storages_) s->busy.fetch_sub(1);
  model_.busy_.store(false);
}

}  // namespace duat
