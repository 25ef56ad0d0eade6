// convert.cpp: the binding's argument checks and the error guard's JS side.
#include "convert.h"

#include <cmath>

namespace duat {

namespace {
constexpr int64_t MAX_DIM = int64_t{1} << 40;      // per dimension
constexpr int64_t MAX_NUMEL = int64_t{1} << 40;    // elements in one tensor
constexpr size_t MAX_RANK = 16;

std::string describe(const Napi::Value& v) {
  if (v.IsUndefined()) return "undefined";
  if (v.IsNull()) return "null";
  if (v.IsNumber()) return std::to_string(v.As<Napi::Number>().DoubleValue()) + " (number)";
  if (v.IsBoolean()) return "a boolean";
  if (v.IsString()) return "a string";
  if (v.IsArray()) return "an array";
  if (v.IsTypedArray()) return "a typed array";
  if (v.IsFunction()) return "a function";
  return "an object";
}

Napi::Value arg(const Napi::CallbackInfo& info, size_t i) { return i < info.Length() ? info[i] : info.Env().Undefined(); }
}  // namespace

AddonData& addon_data(Napi::Env env) { return *env.GetInstanceData<AddonData>(); }

Napi::Function TensorHandle::define(Napi::Env env) { return DefineClass(env, "NativeTensor", {}); }

Napi::Object wrap_tensor(Napi::Env env, const Tensor& t) {
  Napi::Object obj = addon_data(env).tensor_ctor.New({});
  TensorHandle::Unwrap(obj)->tensor = t;
  return obj;
}

Napi::Value make_js_error(Napi::Env env, ErrorCode code, const std::string& message) {
  AddonData& data = addon_data(env);
  const size_t c = static_cast<size_t>(code);
  if (c < data.error_classes.size() && !data.error_classes[c].IsEmpty()) {
    return data.error_classes[c].New({Napi::String::New(env, message)});
  }
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::Number::New(env, code));
  return err.Value();
}

void throw_js(Napi::Env env, ErrorCode code, const std::string& message) {
  throw Napi::Error(env, make_js_error(env, code, message));
}

Napi::Value field(const Napi::Object& o, const char* name) { return o.Has(name) ? o.Get(name) : o.Env().Undefined(); }

int64_t field_int(const Napi::Object& o, const char* name, int64_t lo, int64_t hi, int64_t fallback) {
  Napi::Value v = field(o, name);
  if (v.IsUndefined()) return fallback;
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!(d >= static_cast<double>(lo) && d <= static_cast<double>(hi)) || std::floor(d) != d)
    fail(ERROR_ARGUMENT, std::string("Expected integer in [") + std::to_string(lo) + ", " + std::to_string(hi) +
                             "] for " + name + " but received " + describe(v));
  return static_cast<int64_t>(d);
}

double field_number(const Napi::Object& o, const char* name, double fallback) {
  Napi::Value v = field(o, name);
  if (v.IsUndefined()) return fallback;
  if (!v.IsNumber() || std::isnan(v.As<Napi::Number>().DoubleValue()))
    fail(ERROR_ARGUMENT, std::string("Expected number for ") + name + " but received " + describe(v));
  return v.As<Napi::Number>().DoubleValue();
}

bool field_bool(const Napi::Object& o, const char* name, bool fallback) {
  Napi::Value v = field(o, name);
  if (v.IsUndefined()) return fallback;
  if (!v.IsBoolean()) fail(ERROR_ARGUMENT, std::string("Expected boolean for ") + name + " but received " + describe(v));
  return v.As<Napi::Boolean>().Value();
}

Napi::Object arg_object(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = arg(info, i);
  if (!v.IsObject() || v.IsArray()) fail(ERROR_ARGUMENT, std::string("Expected an object for ") + name + " but received " + describe(v));
  return v.As<Napi::Object>();
}

Tensor arg_tensor_or_null(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = arg(info, i);
  if (v.IsNull() || v.IsUndefined()) return nullptr;
  return arg_tensor(info, i, name);
}

void check_not_busy(const Tensor& t, const std::string& what) {
  if (t->storage->busy.load() > 0)
    fail(ERROR_STATE, "The tensor passed as " + what +
                          " belongs to a model in the middle of a training step; await the step before using it");
}

Tensor arg_tensor_any(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = arg(info, i);
  AddonData& data = addon_data(info.Env());
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(data.tensor_ctor.Value()))
    fail(ERROR_ARGUMENT, std::string("Expected a tensor for ") + name + " but received " + describe(v));
  Tensor t = TensorHandle::Unwrap(v.As<Napi::Object>())->tensor;
  if (!t) fail(ERROR_DISPOSED, std::string("The tensor passed as ") + name + " has been disposed");
  return t;
}

Tensor arg_tensor(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Tensor t = arg_tensor_any(info, i, name);
  check_not_busy(t, name);
  return t;
}

std::vector<Tensor> arg_tensor_list(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = arg(info, i);
  if (!v.IsArray()) fail(ERROR_ARGUMENT, std::string("Expected an array of tensors for ") + name + " but received " + describe(v));
  Napi::Array a = v.As<Napi::Array>();
  std::vector<Tensor> out;
  AddonData& data = addon_data(info.Env());
  for (uint32_t k = 0; k < a.Length(); k++) {
    Napi::Value e = a.Get(k);
    const std::string what = std::string(name) + "[" + std::to_string(k) + "]";
    if (!e.IsObject() || !e.As<Napi::Object>().InstanceOf(data.tensor_ctor.Value()))
      fail(ERROR_ARGUMENT, "Expected a tensor for " + what + " but received " + describe(e));
    Tensor t = TensorHandle::Unwrap(e.As<Napi::Object>())->tensor;
    if (!t) fail(ERROR_DISPOSED, "The tensor passed as " + what + " has been disposed");
    check_not_busy(t, what);
    out.push_back(t);
  }
  return out;
}

double arg_number(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = arg(info, i);
  if (!v.IsNumber() || std::isnan(v.As<Napi::Number>().DoubleValue()))
    fail(ERROR_ARGUMENT, std::string("Expected number for ") + name + " but received " + describe(v));
  return v.As<Napi::Number>().DoubleValue();
}

int64_t arg_int(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t lo, int64_t hi) {
  Napi::Value v = arg(info, i);
  const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
  if (!(d >= static_cast<double>(lo) && d <= static_cast<double>(hi)) || std::floor(d) != d)
    fail(ERROR_ARGUMENT, std::string("Expected integer in [") + std::to_string(lo) + ", " + std::to_string(hi) +
                             "] for " + name + " but received " + describe(v));
  return static_cast<int64_t>(d);
}

bool arg_bool(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = arg(info, i);
  if (!v.IsBoolean()) fail(ERROR_ARGUMENT, std::string("Expected boolean for ") + name + " but received " + describe(v));
  return v.As<Napi::Boolean>().Value();
}

std::vector<int64_t> arg_int_list(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t lo, int64_t hi) {
  Napi::Value v = arg(info, i);
  if (!v.IsArray()) fail(ERROR_ARGUMENT, std::string("Expected an array of integers for ") + name + " but received " + describe(v));
  Napi::Array a = v.As<Napi::Array>();
  if (a.Length() > MAX_RANK) fail(ERROR_SHAPE, std::string(name) + " has more than 16 entries");
  std::vector<int64_t> out;
  for (uint32_t k = 0; k < a.Length(); k++) {
    Napi::Value e = a.Get(k);
    const double d = e.IsNumber() ? e.As<Napi::Number>().DoubleValue() : NAN;
    if (!(d >= static_cast<double>(lo) && d <= static_cast<double>(hi)) || std::floor(d) != d)
      fail(ERROR_SHAPE, std::string("Expected integer in [") + std::to_string(lo) + ", " + std::to_string(hi) + "] for " +
                            name + "[" + std::to_string(k) + "] but received " + describe(e));
    out.push_back(static_cast<int64_t>(d));
  }
  return out;
}

Shape arg_shape(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Shape s = arg_int_list(info, i, name, 0, MAX_DIM);
  int64_t n = 1;
  for (int64_t d : s) {
    if (d > 0 && n > MAX_NUMEL / d) fail(ERROR_SHAPE, std::string(name) + " " + shape_str(s) + " has too many elements");
    n *= d;
  }
  return s;
}

Device arg_device(const Napi::CallbackInfo& info, size_t i, const char* name) {
  Napi::Value v = arg(info, i);
  const std::string d = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  if (d == "cpu") return DEVICE_CPU;
  if (d == "cuda") return DEVICE_CUDA;
  fail(ERROR_ARGUMENT, std::string("Expected 'cpu' or 'cuda' for ") + name + " but received " + describe(v));
}

uint64_t arg_seed(const Napi::CallbackInfo& info, size_t i, const char* name) {
  return static_cast<uint64_t>(arg_int(info, i, name, 0, (int64_t{1} << 53) - 1));
}

}  // namespace duat
