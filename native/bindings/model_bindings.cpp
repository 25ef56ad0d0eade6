// model_bindings.cpp: the Para-Former model's exports. Heavy calls (a training step, an
// evaluation) run in AsyncWorkers: their inputs are converted to plain C++ (tensor pointers,
// numbers) on the JS thread, Execute() never touches JS values, and errors come back as
// rejections of the class for their code.
#include <napi.h>

#include <cmath>
#include <cstring>

#include "../core/autograd.h"
#include "../cuda/cuda_session.h"
#include "../model/paraformer.h"
#include "../ops/ops.h"
#include "convert.h"
#include "model_bindings.h"

namespace duat {

namespace {

using Info = const Napi::CallbackInfo&;

ModelConfig arg_config(Info info, size_t i) {
  Napi::Object o = arg_object(info, i, "config");
  ModelConfig c;
  const int64_t big = int64_t{1} << 20;
  c.image_size = field_int(o, "imageSize", 1, big, c.image_size);
  c.patch_size = field_int(o, "patchSize", 1, big, c.patch_size);
  c.channels = field_int(o, "channels", 1, big, c.channels);
  c.classes = field_int(o, "classes", 1, big, c.classes);
  c.dim = field_int(o, "dim", 1, big, c.dim);
  c.heads = field_int(o, "heads", 1, big, c.heads);
  c.depth = field_int(o, "depth", 1, 4096, c.depth);
  c.branches = field_int(o, "branches", 1, 4096, c.branches);
  c.mlp_hidden = field_int(o, "mlpHidden", 1, big, c.mlp_hidden);
  c.eps = static_cast<float>(field_number(o, "eps", c.eps));
  c.branch_scale = static_cast<float>(field_number(o, "branchScale", c.branch_scale));
  check_model_config(c);
  return c;
}

Napi::Value js_model_spec(Info info) {
  return guard(info, [&]() -> Napi::Value {
    const ModelConfig c = arg_config(info, 0);
    const auto names = model_param_names(c);
    const auto shapes = model_param_shapes(c);
    Napi::Array out = Napi::Array::New(info.Env(), names.size());
    for (size_t k = 0; k < names.size(); k++) {
      Napi::Object e = Napi::Object::New(info.Env());
      e.Set("name", names[k]);
      Napi::Array s = Napi::Array::New(info.Env(), shapes[k].size());
      for (size_t d = 0; d < shapes[k].size(); d++) s.Set(static_cast<uint32_t>(d), static_cast<double>(shapes[k][d]));
      e.Set("shape", s);
      out.Set(static_cast<uint32_t>(k), e);
    }
    return out;
  });
}

Napi::Value js_model_forward(Info info) {
  return guard(info, [&]() -> Napi::Value {
    const ModelConfig c = arg_config(info, 0);
    const ModelParams p = model_params_from_list(c, arg_tensor_list(info, 1, "parameters"));
    return wrap_tensor(info.Env(), model_forward(arg_tensor(info, 2, "images"), p, c));
  });
}

Napi::Value js_model_attention_maps(Info info) {
  return guard(info, [&]() -> Napi::Value {
    const ModelConfig c = arg_config(info, 0);
    const ModelParams p = model_params_from_list(c, arg_tensor_list(info, 1, "parameters"));
    const std::vector<Tensor> maps = model_attention_maps(arg_tensor(info, 2, "images"), p, c);
    Napi::Array out = Napi::Array::New(info.Env(), maps.size());
    for (size_t k = 0; k < maps.size(); k++) out.Set(static_cast<uint32_t>(k), wrap_tensor(info.Env(), maps[k]));
    return out;
  });
}

// A worker that reports a duat::Error's code as the rejection's class.
class DuatWorker : public Napi::AsyncWorker {
 public:
  explicit DuatWorker(Napi::Env env) : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      run();
    } catch (const Error& e) {
      code_ = e.code();
      SetError(e.what());
    } catch (const std::bad_alloc&) {
      code_ = ERROR_OUT_OF_MEMORY;
      SetError("out of memory");
    } catch (const std::exception& e) {
      code_ = ERROR_STATE;
      SetError(std::string("internal error: ") + e.what());
    }
  }
  void OnError(const Napi::Error& e) override {
    deferred_.Reject(make_js_error(Env(), code_, e.Message()));
  }
  virtual void run() = 0;
  Napi::Promise::Deferred deferred_;
  ErrorCode code_ = ERROR_STATE;
};

struct OptimizerPlan {
  enum Kind { OPT_NONE, OPT_ADAMW, OPT_SGD } kind = OPT_NONE;
  std::vector<Tensor> state_a, state_b;  // AdamW: m, v; SGD: momentum buffers (may be null)
  std::vector<float> lr, weight_decay;   // per parameter (groups)
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, momentum = 0.0f, dampening = 0.0f;
  bool nesterov = false, first_step = false;
  int64_t step = 1;
};

std::vector<float> float_list(const Napi::Object& o, const char* name, size_t n) {
  Napi::Value v = field(o, name);
  if (!v.IsArray() || v.As<Napi::Array>().Length() != n)
    fail(ERROR_ARGUMENT, std::string("optimizer plan: expected ") + std::to_string(n) + " numbers for " + name);
  std::vector<float> out;
  Napi::Array a = v.As<Napi::Array>();
  for (uint32_t k = 0; k < n; k++) {
    Napi::Value e = a.Get(k);
    if (!e.IsNumber()) fail(ERROR_ARGUMENT, std::string("optimizer plan: ") + name + "[" + std::to_string(k) + "] is not a number");
    out.push_back(e.As<Napi::Number>().FloatValue());
  }
  return out;
}

std::vector<Tensor> tensor_list_field(Info info, const Napi::Object& o, const char* name, size_t n) {
  Napi::Value v = field(o, name);
  if (!v.IsArray() || v.As<Napi::Array>().Length() != n)
    fail(ERROR_ARGUMENT, std::string("optimizer plan: expected ") + std::to_string(n) + " tensors for " + name);
  std::vector<Tensor> out;
  Napi::Array a = v.As<Napi::Array>();
  AddonData& data = addon_data(info.Env());
  for (uint32_t k = 0; k < n; k++) {
    Napi::Value e = a.Get(k);
    if (e.IsNull() || e.IsUndefined()) {
      out.push_back(nullptr);
      continue;
    }
    if (!e.IsObject() || !e.As<Napi::Object>().InstanceOf(data.tensor_ctor.Value()))
      fail(ERROR_ARGUMENT, std::string("optimizer plan: ") + name + "[" + std::to_string(k) + "] is not a tensor");
    Tensor t = TensorHandle::Unwrap(e.As<Napi::Object>())->tensor;
    if (!t) fail(ERROR_DISPOSED, std::string("optimizer plan: ") + name + "[" + std::to_string(k) + "] was disposed");
    out.push_back(t);
  }
  return out;
}

OptimizerPlan arg_plan(Info info, size_t i, size_t n_params) {
  OptimizerPlan plan;
  Napi::Value v = info.Length() > i ? info[i] : info.Env().Undefined();
  if (v.IsUndefined() || v.IsNull()) return plan;
  Napi::Object o = arg_object(info, i, "optimizer plan");
  Napi::Value kind = field(o, "kind");
  const std::string k = kind.IsString() ? kind.As<Napi::String>().Utf8Value() : "";
  if (k == "adamw") {
    plan.kind = OptimizerPlan::OPT_ADAMW;
  } else if (k == "sgd") {
    plan.kind = OptimizerPlan::OPT_SGD;
  } else {
    fail(ERROR_ARGUMENT, "optimizer plan: kind must be 'adamw' or 'sgd'");
  }
  plan.lr = float_list(o, "lr", n_params);
  plan.weight_decay = float_list(o, "weightDecay", n_params);
  plan.state_a = tensor_list_field(info, o, "stateA", n_params);
  plan.state_b = tensor_list_field(info, o, "stateB", n_params);
  plan.beta1 = static_cast<float>(field_number(o, "beta1", plan.beta1));
  plan.beta2 = static_cast<float>(field_number(o, "beta2", plan.beta2));
  plan.eps = static_cast<float>(field_number(o, "eps", plan.eps));
  plan.momentum = static_cast<float>(field_number(o, "momentum", plan.momentum));
  plan.dampening = static_cast<float>(field_number(o, "dampening", plan.dampening));
  plan.nesterov = field_bool(o, "nesterov", false);
  plan.first_step = field_bool(o, "firstStep", false);
  plan.step = field_int(o, "step", 1, int64_t{1} << 50, 1);
  return plan;
}

// forward, loss, backward, optional clipping and the optimiser update: one training step.
class TrainStepWorker : public DuatWorker {
 public:
  TrainStepWorker(Napi::Env env, ModelConfig c, std::vector<Tensor> params, Tensor images, Tensor labels,
                  float smoothing, float clip, OptimizerPlan plan)
      : DuatWorker(env), c_(c), params_(std::move(params)), images_(images), labels_(labels), smoothing_(smoothing),
        clip_(clip), plan_(std::move(plan)) {}

 protected:
  void run() override {
    GradMode with_grad(true);  // whatever an earlier job on this pool thread left behind
    const ModelParams p = model_params_from_list(c_, params_);
    for (const Tensor& t : params_) t->grad = nullptr;
    Tensor logits = model_forward(images_, p, c_);
    Tensor loss = cross_entropy(logits, labels_, smoothing_);
    loss_ = *loss->f32();
    // Accuracy of this batch, from the logits already computed.
    Tensor pred = argmax(logits);
    const int32_t* pr = pred->i32();
    const Tensor y = contiguous_data(labels_);
    for (int64_t i = 0; i < y->numel(); i++) correct_ += pr[i] == y->i32()[i];
    backward(loss, nullptr);
    double sq = 0.0;
    for (const Tensor& t : params_)
      if (t->grad) sq += sum_of_squares(t->grad);
    grad_norm_ = std::sqrt(sq);
    if (clip_ > 0.0f && grad_norm_ > clip_) {
      const float s = static_cast<float>(clip_ / (grad_norm_ + 1e-6));
      for (const Tensor& t : params_)
        if (t->grad) scale_inplace(t->grad, s);
    }
    if (plan_.kind == OptimizerPlan::OPT_NONE) return;
    for (size_t k = 0; k < params_.size(); k++) {
      const Tensor& t = params_[k];
      if (!t->grad) continue;
      if (plan_.kind == OptimizerPlan::OPT_ADAMW) {
        adamw_update(t, t->grad, plan_.state_a[k], plan_.state_b[k], plan_.lr[k], plan_.beta1, plan_.beta2, plan_.eps,
                     plan_.weight_decay[k], plan_.step);
      } else {
        sgd_update(t, t->grad, plan_.state_a[k], plan_.lr[k], plan_.momentum, plan_.dampening, plan_.weight_decay[k],
                   plan_.nesterov, plan_.first_step);
      }
      t->grad = nullptr;
    }
  }
  void OnOK() override {
    Napi::Object r = Napi::Object::New(Env());
    r.Set("loss", loss_);
    r.Set("gradNorm", grad_norm_);
    r.Set("correct", static_cast<double>(correct_));
    deferred_.Resolve(r);
  }

 private:
  ModelConfig c_;
  std::vector<Tensor> params_;
  Tensor images_, labels_;
  float smoothing_, clip_;
  OptimizerPlan plan_;
  double loss_ = 0.0, grad_norm_ = 0.0;
  int64_t correct_ = 0;
};

Napi::Value js_train_step_async(Info info) {
  return guard(info, [&]() -> Napi::Value {
    const ModelConfig c = arg_config(info, 0);
    std::vector<Tensor> params = arg_tensor_list(info, 1, "parameters");
    model_params_from_list(c, params);  // shapes checked now, on the JS thread
    Tensor images = arg_tensor(info, 2, "images"), labels = arg_tensor(info, 3, "labels");
    check_i32(labels, "trainStep", "labels");
    const float smoothing = static_cast<float>(arg_number(info, 4, "labelSmoothing"));
    const float clip = static_cast<float>(arg_number(info, 5, "clipGradNorm"));
    OptimizerPlan plan = arg_plan(info, 6, params.size());
    auto* w = new TrainStepWorker(info.Env(), c, std::move(params), images, labels, smoothing, clip, std::move(plan));
    Napi::Promise promise = w->promise();
    w->Queue();
    return promise;
  });
}

// Logits-free evaluation of one batch: loss sum, number correct and the predictions.
class EvalWorker : public DuatWorker {
 public:
  EvalWorker(Napi::Env env, ModelConfig c, std::vector<Tensor> params, Tensor images, Tensor labels)
      : DuatWorker(env), c_(c), params_(std::move(params)), images_(images), labels_(labels) {}

 protected:
  void run() override {
    GradMode no_grad(false);
    const ModelParams p = model_params_from_list(c_, params_);
    Tensor logits = model_forward(images_, p, c_);
    pred_ = argmax(logits);
    if (labels_) {
      loss_ = *cross_entropy(logits, labels_, 0.0f)->f32() * static_cast<double>(logits->shape[0]);
      const Tensor y = contiguous_data(labels_);
      for (int64_t i = 0; i < y->numel(); i++) correct_ += pred_->i32()[i] == y->i32()[i];
    }
  }
  void OnOK() override {
    Napi::Object r = Napi::Object::New(Env());
    r.Set("lossSum", loss_);
    r.Set("correct", static_cast<double>(correct_));
    const size_t n = static_cast<size_t>(pred_->numel());
    Napi::Int32Array preds = Napi::Int32Array::New(Env(), n);
    if (n) std::memcpy(preds.Data(), pred_->i32(), n * 4);
    r.Set("predictions", preds);
    deferred_.Resolve(r);
  }

 private:
  ModelConfig c_;
  std::vector<Tensor> params_;
  Tensor images_, labels_, pred_;
  double loss_ = 0.0;
  int64_t correct_ = 0;
};

Napi::Value js_evaluate_async(Info info) {
  return guard(info, [&]() -> Napi::Value {
    const ModelConfig c = arg_config(info, 0);
    std::vector<Tensor> params = arg_tensor_list(info, 1, "parameters");
    model_params_from_list(c, params);
    Tensor images = arg_tensor(info, 2, "images"), labels = arg_tensor_or_null(info, 3, "labels");
    if (labels) check_i32(labels, "evaluate", "labels");
    auto* w = new EvalWorker(info.Env(), c, std::move(params), images, labels);
    Napi::Promise promise = w->promise();
    w->Queue();
    return promise;
  });
}


// ---- GPU sessions (native/cuda/cuda_session.h) ------------------------------------------------------
// A session is a JS External owning a shared pointer, so a running worker keeps it alive even if
// the model drops it meanwhile.
using SessionRef = std::shared_ptr<CudaSession>;

SessionRef arg_session(Info info, size_t i) {
  check(info.Length() > i && info[i].IsExternal(), ERROR_ARGUMENT, "Expected a CUDA session for argument " + std::to_string(i));
  return *info[i].As<Napi::External<SessionRef>>().Data();
}

// A list of tensors, or an empty list for null/undefined.
std::vector<Tensor> arg_tensor_list_or_empty(Info info, size_t i, const char* name) {
  if (info.Length() <= i || info[i].IsNull() || info[i].IsUndefined()) return {};
  return arg_tensor_list(info, i, name);
}

Napi::Value js_cuda_session_create(Info info) {
  return guard(info, [&]() -> Napi::Value {
    const ModelConfig c = arg_config(info, 0);
    const int64_t precision = static_cast<int64_t>(arg_number(info, 1, "precision"));
    auto* ref = new SessionRef(cuda_session_create(c, static_cast<int>(precision)));
    return Napi::External<SessionRef>::New(info.Env(), ref, [](Napi::Env, SessionRef* r) { delete r; });
  });
}

Napi::Value js_cuda_session_upload(Info info) {
  return guard(info, [&]() -> Napi::Value {
    arg_session(info, 0)->upload(arg_tensor_list(info, 1, "parameters"), arg_tensor_list_or_empty(info, 2, "m"),
                                 arg_tensor_list_or_empty(info, 3, "v"));
    return info.Env().Undefined();
  });
}

Napi::Value js_cuda_session_download(Info info) {
  return guard(info, [&]() -> Napi::Value {
    arg_session(info, 0)->download(arg_tensor_list(info, 1, "parameters"), arg_tensor_list_or_empty(info, 2, "m"),
                                   arg_tensor_list_or_empty(info, 3, "v"));
    return info.Env().Undefined();
  });
}

Napi::Value js_cuda_session_forward(Info info) {
  return guard(info, [&]() -> Napi::Value {
    return wrap_tensor(info.Env(), arg_session(info, 0)->forward(arg_tensor(info, 1, "images")));
  });
}

class CudaStepWorker : public DuatWorker {
 public:
  CudaStepWorker(Napi::Env env, SessionRef s, Tensor images, Tensor labels, CudaStepOptions o)
      : DuatWorker(env), s_(std::move(s)), images_(images), labels_(labels), o_(std::move(o)) {}

 protected:
  void run() override { r_ = s_->step(images_, labels_, o_); }
  void OnOK() override {
    Napi::Object r = Napi::Object::New(Env());
    r.Set("loss", r_.loss);
    r.Set("gradNorm", r_.grad_norm);
    r.Set("correct", static_cast<double>(r_.correct));
    deferred_.Resolve(r);
  }

 private:
  SessionRef s_;
  Tensor images_, labels_;
  CudaStepOptions o_;
  CudaStepResult r_;
};

Napi::Value js_cuda_session_step_async(Info info) {
  return guard(info, [&]() -> Napi::Value {
    SessionRef s = arg_session(info, 0);
    Tensor images = arg_tensor(info, 1, "images"), labels = arg_tensor(info, 2, "labels");
    check_i32(labels, "trainStep", "labels");
    const size_t n = static_cast<size_t>(arg_number(info, 4, "parameter count"));
    const float smoothing = static_cast<float>(arg_number(info, 5, "labelSmoothing"));
    const float clip = static_cast<float>(arg_number(info, 6, "clipGradNorm"));
    OptimizerPlan plan = arg_plan(info, 3, n);
    check(plan.kind == OptimizerPlan::OPT_ADAMW, ERROR_DEVICE, "trainStep on CUDA supports the AdamW optimizer only");
    CudaStepOptions o;
    o.lr = plan.lr, o.weight_decay = plan.weight_decay;
    o.beta1 = plan.beta1, o.beta2 = plan.beta2, o.eps = plan.eps, o.step = plan.step;
    o.label_smoothing = smoothing, o.clip_grad_norm = clip;
    auto* w = new CudaStepWorker(info.Env(), std::move(s), images, labels, std::move(o));
    Napi::Promise promise = w->promise();
    w->Queue();
    return promise;
  });
}

class CudaEvalWorker : public DuatWorker {
 public:
  CudaEvalWorker(Napi::Env env, SessionRef s, Tensor images, Tensor labels)
      : DuatWorker(env), s_(std::move(s)), images_(images), labels_(labels) {}

 protected:
  void run() override { r_ = s_->evaluate(images_, labels_); }
  void OnOK() override {
    Napi::Object r = Napi::Object::New(Env());
    r.Set("lossSum", r_.loss_sum);
    r.Set("correct", static_cast<double>(r_.correct));
    const size_t n = static_cast<size_t>(r_.predictions->numel());
    Napi::Int32Array preds = Napi::Int32Array::New(Env(), n);
    if (n) std::memcpy(preds.Data(), r_.predictions->i32(), n * 4);
    r.Set("predictions", preds);
    deferred_.Resolve(r);
  }

 private:
  SessionRef s_;
  Tensor images_, labels_;
  CudaEvalResult r_;
};

Napi::Value js_cuda_session_evaluate_async(Info info) {
  return guard(info, [&]() -> Napi::Value {
    SessionRef s = arg_session(info, 0);
    Tensor images = arg_tensor(info, 1, "images"), labels = arg_tensor_or_null(info, 2, "labels");
    if (labels) check_i32(labels, "evaluate", "labels");
    auto* w = new CudaEvalWorker(info.Env(), std::move(s), images, labels);
    Napi::Promise promise = w->promise();
    w->Queue();
    return promise;
  });
}

}  // namespace

void register_model_exports(Napi::Env env, Napi::Object exports) {
  exports.Set("modelSpec", Napi::Function::New(env, js_model_spec, "modelSpec"));
  exports.Set("modelForward", Napi::Function::New(env, js_model_forward, "modelForward"));
  exports.Set("modelAttentionMaps", Napi::Function::New(env, js_model_attention_maps, "modelAttentionMaps"));
  exports.Set("trainStepAsync", Napi::Function::New(env, js_train_step_async, "trainStepAsync"));
  exports.Set("evaluateAsync", Napi::Function::New(env, js_evaluate_async, "evaluateAsync"));
  exports.Set("cudaSessionCreate", Napi::Function::New(env, js_cuda_session_create, "cudaSessionCreate"));
  exports.Set("cudaSessionUpload", Napi::Function::New(env, js_cuda_session_upload, "cudaSessionUpload"));
  exports.Set("cudaSessionDownload", Napi::Function::New(env, js_cuda_session_download, "cudaSessionDownload"));
  exports.Set("cudaSessionForward", Napi::Function::New(env, js_cuda_session_forward, "cudaSessionForward"));
  exports.Set("cudaSessionStepAsync", Napi::Function::New(env, js_cuda_session_step_async, "cudaSessionStepAsync"));
  exports.Set("cudaSessionEvaluateAsync",
              Napi::Function::New(env, js_cuda_session_evaluate_async, "cudaSessionEvaluateAsync"));
}

}  // namespace duat
