// model_bindings.cpp: the exports of the native model object (native/model/model.h) and the
// optimizer (native/train/optimizer.h). Both are created once from JS and held as externals
// owning a shared pointer, so a running worker keeps them alive even if JS drops them. Heavy calls
// (a training step, an evaluation) run in AsyncWorkers: their inputs are converted to plain C++
// on the JS thread, the model's lock is taken there too, Execute() never touches JS values, and
// errors come back as rejections of the class for their code. Bindings convert and dispatch; the
// step itself lives in native/train/step.cpp.
#include <napi.h>

#include <cstring>
#include <memory>

#include "../core/parallel.h"
#include "../model/model.h"
#include "../train/optimizer.h"
#include "../train/step.h"
#include "convert.h"
#include "model_bindings.h"

namespace duat {

namespace {

using Info = const Napi::CallbackInfo&;
using ModelRef = std::shared_ptr<Model>;
using OptimizerRef = std::shared_ptr<Optimizer>;

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
  c.branch_parallel = field_bool(o, "branchParallel", false);
  c.layer_scale = field_bool(o, "layerScale", false);
  c.pre_norm = field_bool(o, "preNorm", false);
  c.patch_bias = field_bool(o, "patchBias", true);
  c.avg_pool = field_bool(o, "avgPool", false);
  DUAT_CHECK(c.eps > 0.0f, ERROR_ARGUMENT, "model config: eps must be positive");
  check_model_config(c);
  return c;
}

Precision arg_precision(Info info, size_t i) {
  return static_cast<Precision>(arg_int(info, i, "precision", PRECISION_FP32, PRECISION_BF16));
}

template <typename T>
std::shared_ptr<T> arg_ref(Info info, size_t i, const char* what) {
  DUAT_CHECK(info.Length() > i && info[i].IsExternal(), ERROR_ARGUMENT,
             std::string("Expected a native ") + what + " for argument " + std::to_string(i));
  return *info[i].As<Napi::External<std::shared_ptr<T>>>().Data();
}

template <typename T>
Napi::Value make_ref(Napi::Env env, std::shared_ptr<T> ref) {
  return Napi::External<std::shared_ptr<T>>::New(env, new std::shared_ptr<T>(std::move(ref)),
                                                 [](Napi::Env, std::shared_ptr<T>* r) { delete r; });
}

// Every group's options, as the JS optimizer holds them (validated there; re-checked here).
std::vector<GroupOptions> arg_groups(Info info, size_t i) {
  Napi::Value v = info.Length() > i ? info[i] : info.Env().Undefined();
  DUAT_CHECK(v.IsArray(), ERROR_ARGUMENT, "Expected an array of group options for argument " + std::to_string(i));
  Napi::Array a = v.As<Napi::Array>();
  std::vector<GroupOptions> out;
  for (uint32_t k = 0; k < a.Length(); k++) {
    Napi::Value e = a.Get(k);
    DUAT_CHECK(e.IsObject(), ERROR_ARGUMENT, "group options " + std::to_string(k) + " is not an object");
    Napi::Object o = e.As<Napi::Object>();
    GroupOptions g;
    g.lr = field_number(o, "lr", g.lr);
    g.weight_decay = field_number(o, "weightDecay", g.weight_decay);
    g.beta1 = field_number(o, "beta1", g.beta1);
    g.beta2 = field_number(o, "beta2", g.beta2);
    g.eps = field_number(o, "eps", g.eps);
    g.momentum = field_number(o, "momentum", g.momentum);
    g.dampening = field_number(o, "dampening", g.dampening);
    g.nesterov = field_bool(o, "nesterov", g.nesterov);
    out.push_back(g);
  }
  return out;
}

// ---- the model --------------------------------------------------------------------------------

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

Napi::Value js_model_create(Info info) {
  return guard(info, [&]() -> Napi::Value {
    auto m = std::make_shared<Model>(arg_config(info, 0), arg_tensor_list(info, 1, "parameters"), arg_precision(info, 2));
    return make_ref(info.Env(), std::move(m));
  });
}

Napi::Value js_model_forward(Info info) {
  return guard(info, [&]() -> Napi::Value {
    return wrap_tensor(info.Env(), arg_ref<Model>(info, 0, "model")->forward(arg_tensor(info, 1, "images")));
  });
}

Napi::Value js_model_attention_maps(Info info) {
  return guard(info, [&]() -> Napi::Value {
    const std::vector<Tensor> maps = arg_ref<Model>(info, 0, "model")->attention_maps(arg_tensor(info, 1, "images"));
    Napi::Array out = Napi::Array::New(info.Env(), maps.size());
    for (size_t k = 0; k < maps.size(); k++) out.Set(static_cast<uint32_t>(k), wrap_tensor(info.Env(), maps[k]));
    return out;
  });
}

Napi::Value js_model_to(Info info) {
  return guard(info, [&]() -> Napi::Value {
    arg_ref<Model>(info, 0, "model")->to(arg_device(info, 1, "device"));
    return info.Env().Undefined();
  });
}

Napi::Value js_model_dispose(Info info) {
  return guard(info, [&]() -> Napi::Value {
    arg_ref<Model>(info, 0, "model")->dispose();
    return info.Env().Undefined();
  });
}

Napi::Value js_model_set_precision(Info info) {
  return guard(info, [&]() -> Napi::Value {
    arg_ref<Model>(info, 0, "model")->set_precision(arg_precision(info, 1));
    return info.Env().Undefined();
  });
}

Napi::Value js_model_set_branches(Info info) {
  return guard(info, [&]() -> Napi::Value {
    arg_ref<Model>(info, 0, "model")->set_branches(arg_int(info, 1, "active", 0, 4096), arg_int(info, 2, "frozen", 0, 4096),
                                                   arg_bool(info, 3, "freezeEmbedding"));
    return info.Env().Undefined();
  });
}

// A worker that reports a duat::Error's code as the rejection's class. Completion may come while
// the environment is being torn down (worker.terminate() during a step): whatever fails then is
// dropped, never thrown out of a callback (that would abort the process).
class DuatWorker : public Napi::AsyncWorker {
 public:
  explicit DuatWorker(Napi::Env env) : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() { return deferred_.Promise(); }

 protected:
  void OnWorkComplete(Napi::Env env, napi_status status) override {
    try {
      Napi::AsyncWorker::OnWorkComplete(env, status);  // OnOK / OnError, then deletes this
    } catch (...) {
      release();  // nothing can be reported any more; the model's lock still goes
    }
  }
  void Execute() override {
    try {
      run_on_engine([this] { run(); });
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
  void OnOK() override {
    release();
    try {
      deferred_.Resolve(result());
    } catch (...) {
    }
  }
  void OnError(const Napi::Error& e) override {
    release();
    try {
      deferred_.Reject(make_js_error(Env(), code_, e.Message()));
    } catch (...) {
    }
  }
  virtual void run() = 0;
  virtual Napi::Value result() = 0;
  virtual void release() {}
  Napi::Promise::Deferred deferred_;
  ErrorCode code_ = ERROR_STATE;
};

class TrainStepWorker : public DuatWorker {
 public:
  TrainStepWorker(Napi::Env env, ModelRef m, OptimizerRef opt, std::vector<GroupOptions> groups, Tensor images,
                  Tensor labels, StepOptions o)
      : DuatWorker(env), m_(std::move(m)), opt_(std::move(opt)), groups_(std::move(groups)), images_(images),
        labels_(labels), o_(o), lock_(std::make_unique<Model::Lock>(*m_, opt_ ? opt_->state_tensors() : std::vector<Tensor>{})) {
    if (opt_) DUAT_CHECK(!opt_->busy.exchange(true), ERROR_STATE, "the optimizer is in the middle of a step; await it first");
  }

 protected:
  void run() override { r_ = train_step(*m_, images_, labels_, opt_.get(), groups_, o_); }
  Napi::Value result() override {
    Napi::Object r = Napi::Object::New(Env());
    r.Set("loss", r_.loss);
    r.Set("gradNorm", r_.grad_norm);
    r.Set("correct", static_cast<double>(r_.correct));
    r.Set("skipped", r_.skipped);
    return r;
  }
  void release() override {
    if (opt_) opt_->busy = false;
    lock_.reset();
  }

 private:
  ModelRef m_;
  OptimizerRef opt_;
  std::vector<GroupOptions> groups_;
  Tensor images_, labels_;
  StepOptions o_;
  std::unique_ptr<Model::Lock> lock_;
  StepResult r_;
};

Napi::Value js_model_train_step_async(Info info) {
  return guard(info, [&]() -> Napi::Value {
    ModelRef m = arg_ref<Model>(info, 0, "model");
    Tensor images = arg_tensor(info, 1, "images"), labels = arg_tensor(info, 2, "labels");
    check_i32(labels, "trainStep", "labels");
    OptimizerRef opt = info.Length() > 3 && info[3].IsExternal() ? arg_ref<Optimizer>(info, 3, "optimizer") : nullptr;
    std::vector<GroupOptions> groups = opt ? arg_groups(info, 4) : std::vector<GroupOptions>{};
    StepOptions o;
    o.label_smoothing = static_cast<float>(arg_number(info, 5, "labelSmoothing"));
    o.clip_grad_norm = static_cast<float>(arg_number(info, 6, "clipGradNorm"));
    o.data_parallel = info.Length() > 7 && arg_bool(info, 7, "dataParallel");
    auto* w = new TrainStepWorker(info.Env(), std::move(m), std::move(opt), std::move(groups), images, labels, o);
    Napi::Promise promise = w->promise();
    w->Queue();
    return promise;
  });
}

class EvalWorker : public DuatWorker {
 public:
  EvalWorker(Napi::Env env, ModelRef m, Tensor images, Tensor labels, bool probabilities)
      : DuatWorker(env), m_(std::move(m)), images_(images), labels_(labels), probabilities_(probabilities),
        lock_(std::make_unique<Model::Lock>(*m_, std::vector<Tensor>{})) {}

 protected:
  void run() override { r_ = evaluate(*m_, images_, labels_, probabilities_); }
  Napi::Value result() override {
    Napi::Object r = Napi::Object::New(Env());
    r.Set("lossSum", r_.loss_sum);
    r.Set("correct", static_cast<double>(r_.correct));
    const size_t n = static_cast<size_t>(r_.predictions->numel());
    Napi::Int32Array preds = Napi::Int32Array::New(Env(), n);
    if (n) std::memcpy(preds.Data(), r_.predictions->i32(), n * 4);
    r.Set("predictions", preds);
    if (r_.probabilities) {
      const size_t k = static_cast<size_t>(r_.probabilities->numel());
      Napi::Float32Array probs = Napi::Float32Array::New(Env(), k);
      if (k) std::memcpy(probs.Data(), r_.probabilities->f32(), k * 4);
      r.Set("probabilities", probs);
    }
    return r;
  }
  void release() override { lock_.reset(); }

 private:
  ModelRef m_;
  Tensor images_, labels_;
  bool probabilities_;
  std::unique_ptr<Model::Lock> lock_;
  EvalResult r_;
};

Napi::Value js_model_evaluate_async(Info info) {
  return guard(info, [&]() -> Napi::Value {
    ModelRef m = arg_ref<Model>(info, 0, "model");
    Tensor images = arg_tensor(info, 1, "images"), labels = arg_tensor_or_null(info, 2, "labels");
    if (labels) check_i32(labels, "evaluate", "labels");
    const bool probabilities = info.Length() > 3 && arg_bool(info, 3, "probabilities");
    auto* w = new EvalWorker(info.Env(), std::move(m), images, labels, probabilities);
    Napi::Promise promise = w->promise();
    w->Queue();
    return promise;
  });
}

// ---- the optimizer -----------------------------------------------------------------------------

Napi::Value js_optimizer_create(Info info) {
  return guard(info, [&]() -> Napi::Value {
    const int64_t kind = arg_int(info, 0, "kind", OPTIMIZER_ADAMW, OPTIMIZER_SGD);
    std::vector<Tensor> params = arg_tensor_list(info, 1, "parameters");
    DUAT_CHECK(info.Length() > 2 && info[2].IsArray() && info[2].As<Napi::Array>().Length() == params.size(), ERROR_ARGUMENT,
               "Expected one group index per parameter");
    Napi::Array a = info[2].As<Napi::Array>();
    std::vector<int> group_of;
    for (uint32_t k = 0; k < a.Length(); k++) {
      Napi::Value e = a.Get(k);
      const double d = e.IsNumber() ? e.As<Napi::Number>().DoubleValue() : -1.0;
      DUAT_CHECK(d >= 0 && d < (1 << 20) && d == static_cast<int>(d), ERROR_ARGUMENT, "group index " + std::to_string(k) + " is not valid");
      group_of.push_back(static_cast<int>(d));
    }
    return make_ref(info.Env(), std::make_shared<Optimizer>(static_cast<OptimizerKind>(kind), std::move(params), group_of));
  });
}

OptimizerRef idle_optimizer(Info info, size_t i) {
  OptimizerRef opt = arg_ref<Optimizer>(info, i, "optimizer");
  DUAT_CHECK(!opt->busy.load(), ERROR_STATE, "the optimizer is in the middle of a training step; await it first");
  for (const Tensor& p : opt->params()) check_not_busy(p, "a parameter of the optimizer");
  return opt;
}

Napi::Value js_optimizer_step(Info info) {
  return guard(info, [&]() -> Napi::Value {
    idle_optimizer(info, 0)->step(arg_groups(info, 1));
    return info.Env().Undefined();
  });
}

Napi::Value js_optimizer_steps(Info info) {
  return guard(info, [&]() -> Napi::Value {
    OptimizerRef opt = arg_ref<Optimizer>(info, 0, "optimizer");
    if (info.Length() > 1 && !info[1].IsUndefined()) {
      DUAT_CHECK(!opt->busy.load(), ERROR_STATE, "the optimizer is in the middle of a training step; await it first");
      opt->set_steps(arg_int(info, 1, "steps", 0, int64_t{1} << 50));
    }
    return Napi::Number::New(info.Env(), static_cast<double>(opt->steps()));
  });
}

Napi::Value js_optimizer_dispose(Info info) {
  return guard(info, [&]() -> Napi::Value {
    idle_optimizer(info, 0)->dispose();
    return info.Env().Undefined();
  });
}

Napi::Value js_optimizer_state(Info info) {
  return guard(info, [&]() -> Napi::Value {
    OptimizerRef opt = idle_optimizer(info, 0);
    const Optimizer::State s = opt->state(static_cast<size_t>(arg_int(info, 1, "index", 0, int64_t{1} << 30)));
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("a", s.a ? wrap_tensor(info.Env(), s.a) : info.Env().Null());
    o.Set("b", s.b ? wrap_tensor(info.Env(), s.b) : info.Env().Null());
    o.Set("step", static_cast<double>(s.step));
    if (s.row_steps.empty()) {
      o.Set("rowSteps", info.Env().Null());
    } else {
      Napi::Array rows = Napi::Array::New(info.Env(), s.row_steps.size());
      for (size_t r = 0; r < s.row_steps.size(); r++) rows.Set(static_cast<uint32_t>(r), static_cast<double>(s.row_steps[r]));
      o.Set("rowSteps", rows);
    }
    return o;
  });
}

Napi::Value js_optimizer_set_state(Info info) {
  return guard(info, [&]() -> Napi::Value {
    OptimizerRef opt = idle_optimizer(info, 0);
    Optimizer::State s;
    s.a = arg_tensor_or_null(info, 2, "state a");
    s.b = arg_tensor_or_null(info, 3, "state b");
    s.step = arg_int(info, 4, "step", 0, int64_t{1} << 50);
    if (info.Length() > 5 && !info[5].IsNull() && !info[5].IsUndefined()) {
      DUAT_CHECK(info[5].IsArray(), ERROR_ARGUMENT, "Expected an array of row step counts (or null) for argument 5");
      Napi::Array rows = info[5].As<Napi::Array>();
      for (uint32_t r = 0; r < rows.Length(); r++) {
        Napi::Value v = rows.Get(r);
        DUAT_CHECK(v.IsNumber(), ERROR_ARGUMENT, "row step count " + std::to_string(r) + " is not a number");
        const double d = v.As<Napi::Number>().DoubleValue();
        DUAT_CHECK(d >= 0 && d <= 1e15 && d == static_cast<double>(static_cast<int64_t>(d)), ERROR_ARGUMENT,
                   "row step count " + std::to_string(r) + " is not a count");
        s.row_steps.push_back(static_cast<int64_t>(d));
      }
    }
    opt->set_state(static_cast<size_t>(arg_int(info, 1, "index", 0, int64_t{1} << 30)), s);
    return info.Env().Undefined();
  });
}

}  // namespace

void register_model_exports(Napi::Env env, Napi::Object exports) {
  const std::pair<const char*, Napi::Value (*)(Info)> table[] = {
      {"modelSpec", js_model_spec},
      {"modelCreate", js_model_create},
      {"modelForward", js_model_forward},
      {"modelAttentionMaps", js_model_attention_maps},
      {"modelTo", js_model_to},
      {"modelSetPrecision", js_model_set_precision},
      {"modelDispose", js_model_dispose},
      {"modelSetBranches", js_model_set_branches},
      {"modelTrainStepAsync", js_model_train_step_async},
      {"modelEvaluateAsync", js_model_evaluate_async},
      {"optimizerCreate", js_optimizer_create},
      {"optimizerStep", js_optimizer_step},
      {"optimizerSteps", js_optimizer_steps},
      {"optimizerState", js_optimizer_state},
      {"optimizerSetState", js_optimizer_set_state},
      {"optimizerDispose", js_optimizer_dispose},
  };
  for (const auto& [name, fn] : table) exports.Set(name, Napi::Function::New(env, fn, name));
}

}  // namespace duat
