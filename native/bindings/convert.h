// convert.h: argument conversion for the binding. Everything a kernel will trust (shapes,
// lengths, live handles, dtypes) is re-checked here; failures throw duat::Error, which the
// guard turns into the JS class for its code.
#pragma once
#include <napi.h>

#include <string>
#include <vector>

#include "../core/tensor.h"

namespace duat {

class TensorHandle : public Napi::ObjectWrap<TensorHandle> {
 public:
  static Napi::Function define(Napi::Env env);
  explicit TensorHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<TensorHandle>(info) {}
  Tensor tensor;  // null once disposed
};

struct AddonData {
  Napi::FunctionReference tensor_ctor;
  std::vector<Napi::FunctionReference> error_classes;  // indexed by ErrorCode
};

AddonData& addon_data(Napi::Env env);
Napi::Object wrap_tensor(Napi::Env env, const Tensor& t);

// A live tensor that no training step holds (ERROR_STATE otherwise: the model's lock).
Tensor arg_tensor(const Napi::CallbackInfo& info, size_t i, const char* name);
// A live tensor, held by a step or not: for calls that touch neither data nor gradient.
Tensor arg_tensor_any(const Napi::CallbackInfo& info, size_t i, const char* name);
void check_not_busy(const Tensor& t, const std::string& what);
Device arg_device(const Napi::CallbackInfo& info, size_t i, const char* name);
Tensor arg_tensor_or_null(const Napi::CallbackInfo& info, size_t i, const char* name);
std::vector<Tensor> arg_tensor_list(const Napi::CallbackInfo& info, size_t i, const char* name);
double arg_number(const Napi::CallbackInfo& info, size_t i, const char* name);
int64_t arg_int(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t lo, int64_t hi);
bool arg_bool(const Napi::CallbackInfo& info, size_t i, const char* name);
std::vector<int64_t> arg_int_list(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t lo, int64_t hi);
Shape arg_shape(const Napi::CallbackInfo& info, size_t i, const char* name);
uint64_t arg_seed(const Napi::CallbackInfo& info, size_t i, const char* name);

// Runs fn and converts any C++ exception into a thrown JS error of the mapped class.
template <typename F>
Napi::Value guard(const Napi::CallbackInfo& info, F fn);

void throw_js(Napi::Env env, ErrorCode code, const std::string& message);
// The JS error object for a code (the registered class), for Promise rejections.
Napi::Value make_js_error(Napi::Env env, ErrorCode code, const std::string& message);
// An optional field of an options object: its value, or undefined when absent.
Napi::Value field(const Napi::Object& o, const char* name);
int64_t field_int(const Napi::Object& o, const char* name, int64_t lo, int64_t hi, int64_t fallback);
double field_number(const Napi::Object& o, const char* name, double fallback);
bool field_bool(const Napi::Object& o, const char* name, bool fallback);
Napi::Object arg_object(const Napi::CallbackInfo& info, size_t i, const char* name);

template <typename F>
Napi::Value guard(const Napi::CallbackInfo& info, F fn) {
  try {
    return fn();
  } catch (const Napi::Error&) {
    throw;
  } catch (const Error& e) {
    throw_js(info.Env(), e.code(), e.what());
  } catch (const std::bad_alloc&) {
    throw_js(info.Env(), ERROR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    throw_js(info.Env(), ERROR_STATE, std::string("internal error: ") + e.what());
  }
  return info.Env().Undefined();
}

}  // namespace duat
