// addon.cpp: the export table. Each export converts its arguments (convert.h), calls one op
// and wraps the result; `guard` maps native errors to the JS classes lib/errors.ts registers.
#include <napi.h>

#include <cstring>

#include "../core/autograd.h"
#include "../core/parallel.h"
#include "../core/profile.h"
#include "../cpu/gemm.h"
#include "../cpu/peak.h"
#include "../model/derived.h"
#include "../ops/ops.h"
#include "convert.h"
#include "model_bindings.h"

namespace duat {

namespace {

using Info = const Napi::CallbackInfo&;

Napi::Value js_tensor(Info info, const Tensor& t) { return wrap_tensor(info.Env(), t); }

Napi::Value shape_array(Napi::Env env, const Shape& s) {
  Napi::Array a = Napi::Array::New(env, s.size());
  for (size_t i = 0; i < s.size(); i++) a.Set(static_cast<uint32_t>(i), Napi::Number::New(env, static_cast<double>(s[i])));
  return a;
}

DType arg_dtype(Info info, size_t i) {
  return arg_int(info, i, "dtype", 0, 1) == 0 ? DTYPE_F32 : DTYPE_I32;
}

// ---- creation and inspection ----

Napi::Value register_errors(Info info) {
  return guard(info, [&]() -> Napi::Value {
    if (!info[0].IsArray()) fail(ERROR_ARGUMENT, "registerErrors expects an array of classes");
    Napi::Array a = info[0].As<Napi::Array>();
    AddonData& data = addon_data(info.Env());
    data.error_classes.clear();
    for (uint32_t k = 0; k < a.Length(); k++) {
      Napi::Value v = a.Get(k);
      data.error_classes.emplace_back(v.IsFunction() ? Napi::Persistent(v.As<Napi::Function>()) : Napi::FunctionReference());
    }
    return info.Env().Undefined();
  });
}

Napi::Value from_data(Info info) {
  return guard(info, [&]() -> Napi::Value {
    Shape shape = arg_shape(info, 1, "shape");
    Napi::Value v = info[0];
    const bool f32 = v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_float32_array;
    const bool i32 = v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_int32_array;
    if (!f32 && !i32) fail(ERROR_ARGUMENT, "Expected a Float32Array or Int32Array for data");
    Napi::TypedArray ta = v.As<Napi::TypedArray>();
    if (static_cast<int64_t>(ta.ElementLength()) != shape_numel(shape))
      fail(ERROR_SHAPE, "data has " + std::to_string(ta.ElementLength()) + " elements but shape " + shape_str(shape) +
                            " needs " + std::to_string(shape_numel(shape)));
    const Device device = info.Length() > 2 && !info[2].IsUndefined() ? arg_device(info, 2, "device") : DEVICE_CPU;
    Tensor t = empty(shape, f32 ? DTYPE_F32 : DTYPE_I32, device);
    const uint8_t* src = static_cast<const uint8_t*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    if (ta.ElementLength()) backend(device).upload(t->storage->data, src, ta.ElementLength() * 4);
    return js_tensor(info, t);
  });
}

// An optional device argument (the CPU when absent).
Device opt_device(Info info, size_t i) {
  return info.Length() > i && !info[i].IsUndefined() ? arg_device(info, i, "device") : DEVICE_CPU;
}

Napi::Value js_zeros(Info info) {
  return guard(info, [&]() {
    return js_tensor(info, zeros(arg_shape(info, 0, "shape"), arg_dtype(info, 1), opt_device(info, 2)));
  });
}

Napi::Value js_full(Info info) {
  return guard(info, [&]() {
    return js_tensor(info, full(arg_shape(info, 0, "shape"), static_cast<float>(arg_number(info, 1, "value")),
                                opt_device(info, 2)));
  });
}

Napi::Value js_randn(Info info) {
  return guard(info, [&]() {
    return js_tensor(info, randn(arg_shape(info, 0, "shape"), arg_seed(info, 1, "seed"),
                                 static_cast<float>(arg_number(info, 2, "mean")),
                                 static_cast<float>(arg_number(info, 3, "std")), opt_device(info, 4)));
  });
}

Napi::Value js_rand(Info info) {
  return guard(info, [&]() {
    return js_tensor(info, rand_uniform(arg_shape(info, 0, "shape"), arg_seed(info, 1, "seed"),
                                        static_cast<float>(arg_number(info, 2, "low")),
                                        static_cast<float>(arg_number(info, 3, "high")), opt_device(info, 4)));
  });
}

Napi::Value js_trunc_normal(Info info) {
  return guard(info, [&]() {
    return js_tensor(info, trunc_normal(arg_shape(info, 0, "shape"), arg_seed(info, 1, "seed"),
                                        static_cast<float>(arg_number(info, 2, "mean")),
                                        static_cast<float>(arg_number(info, 3, "std")),
                                        static_cast<float>(arg_number(info, 4, "a")),
                                        static_cast<float>(arg_number(info, 5, "b")), opt_device(info, 6)));
  });
}

Napi::Value js_describe(Info info) {
  return guard(info, [&]() -> Napi::Value {
    Tensor t = arg_tensor_any(info, 0, "tensor");
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("shape", shape_array(info.Env(), t->shape));
    o.Set("dtype", dtype_name(t->dtype));
    o.Set("device", device_name(t->device));
    o.Set("requiresGrad", t->requires_grad);
    o.Set("isLeaf", !t->grad_fn);
    return o;
  });
}

Napi::Value js_to_array(Info info) {
  return guard(info, [&]() -> Napi::Value {
    Tensor t = contiguous_data(to_device(arg_tensor(info, 0, "tensor"), DEVICE_CPU));
    const size_t n = static_cast<size_t>(t->numel());
    Napi::ArrayBuffer buf = Napi::ArrayBuffer::New(info.Env(), n * 4);
    if (n) std::memcpy(buf.Data(), t->ptr(), n * 4);
    if (t->dtype == DTYPE_F32) return Napi::Float32Array::New(info.Env(), n, buf, 0);
    return Napi::Int32Array::New(info.Env(), n, buf, 0);
  });
}

Napi::Value js_item(Info info) {
  return guard(info, [&]() -> Napi::Value {
    Tensor t = arg_tensor(info, 0, "tensor");
    DUAT_CHECK(t->numel() == 1, ERROR_SHAPE, "item: the tensor has " + std::to_string(t->numel()) + " elements, not one");
    t = to_device(t, DEVICE_CPU);
    const double v = t->dtype == DTYPE_F32 ? static_cast<double>(*t->f32()) : static_cast<double>(*t->i32());
    return Napi::Number::New(info.Env(), v);
  });
}

Napi::Value js_grad(Info info) {
  return guard(info, [&]() -> Napi::Value {
    Tensor t = arg_tensor(info, 0, "tensor");
    if (!t->grad) return info.Env().Null();
    return js_tensor(info, t->grad);
  });
}

Napi::Value js_set_requires_grad(Info info) {
  return guard(info, [&]() -> Napi::Value {
    Tensor t = arg_tensor(info, 0, "tensor");
    const bool on = arg_bool(info, 1, "requiresGrad");
    DUAT_CHECK(!t->grad_fn, ERROR_STATE, "requiresGrad can only be set on leaf tensors (this one was computed by an op)");
    DUAT_CHECK(!on || t->dtype == DTYPE_F32, ERROR_DTYPE, "only float32 tensors can require gradients");
    t->requires_grad = on;
    return info.Env().Undefined();
  });
}

Napi::Value js_zero_grad(Info info) {
  return guard(info, [&]() -> Napi::Value {
    arg_tensor(info, 0, "tensor")->grad = nullptr;
    return info.Env().Undefined();
  });
}

Napi::Value js_detach(Info info) {
  return guard(info, [&]() { return js_tensor(info, detach(arg_tensor(info, 0, "tensor"))); });
}

Napi::Value js_clone(Info info) {
  return guard(info, [&]() {
    Tensor t = arg_tensor(info, 0, "tensor");
    Tensor c = empty(t->shape, t->dtype, t->device);
    copy_into(c, t);
    return js_tensor(info, c);
  });
}

Napi::Value js_backward(Info info) {
  return guard(info, [&]() -> Napi::Value {
    backward(arg_tensor(info, 0, "tensor"), arg_tensor_or_null(info, 1, "gradient"));
    return info.Env().Undefined();
  });
}

Napi::Value js_to_device(Info info) {
  return guard(info, [&]() { return js_tensor(info, to(arg_tensor(info, 0, "tensor"), arg_device(info, 1, "device"))); });
}

Napi::Value js_dispose(Info info) {
  return guard(info, [&]() -> Napi::Value {
    Napi::Value v = info[0];
    if (v.IsObject() && v.As<Napi::Object>().InstanceOf(addon_data(info.Env()).tensor_ctor.Value()))
      TensorHandle::Unwrap(v.As<Napi::Object>())->tensor = nullptr;
    return info.Env().Undefined();
  });
}

Napi::Value js_copy_into(Info info) {
  return guard(info, [&]() -> Napi::Value {
    Tensor dst = arg_tensor(info, 0, "destination"), src = arg_tensor(info, 1, "source");
    DUAT_CHECK(!dst->requires_grad || !grad_enabled() || !dst->grad_fn, ERROR_STATE, "copy into a computed tensor");
    copy_into(dst, src);
    return info.Env().Undefined();
  });
}

// ---- ops ----

template <Tensor (*F)(const Tensor&, const Tensor&)>
Napi::Value binary_op(Info info) {
  return guard(info, [&]() { return js_tensor(info, F(arg_tensor(info, 0, "a"), arg_tensor(info, 1, "b"))); });
}

template <Tensor (*F)(const Tensor&)>
Napi::Value unary_op(Info info) {
  return guard(info, [&]() { return js_tensor(info, F(arg_tensor(info, 0, "x"))); });
}

template <Tensor (*F)(const Tensor&, float)>
Napi::Value scalar_op(Info info) {
  return guard(info, [&]() {
    return js_tensor(info, F(arg_tensor(info, 0, "x"), static_cast<float>(arg_number(info, 1, "scalar"))));
  });
}

Napi::Value js_linear(Info info) {
  return guard(info, [&]() {
    return js_tensor(info, linear(arg_tensor(info, 0, "input"), arg_tensor(info, 1, "weight"),
                                  arg_tensor_or_null(info, 2, "bias")));
  });
}

template <Tensor (*F)(const Tensor&, const std::vector<int64_t>&, bool)>
Napi::Value reduce_op(Info info) {
  return guard(info, [&]() {
    return js_tensor(info, F(arg_tensor(info, 0, "x"), arg_int_list(info, 1, "dims", -16, 15), arg_bool(info, 2, "keepDim")));
  });
}

Napi::Value js_reshape(Info info) {
  return guard(info, [&]() {
    return js_tensor(info, reshape(arg_tensor(info, 0, "x"), arg_int_list(info, 1, "shape", -1, int64_t{1} << 40)));
  });
}

Napi::Value js_permute(Info info) {
  return guard(info, [&]() {
    return js_tensor(info, permute(arg_tensor(info, 0, "x"), arg_int_list(info, 1, "dims", -16, 15)));
  });
}

Napi::Value js_transpose(Info info) {
  return guard(info, [&]() {
    return js_tensor(info, transpose(arg_tensor(info, 0, "x"), arg_int(info, 1, "dim0", -16, 15),
                                     arg_int(info, 2, "dim1", -16, 15)));
  });
}

Napi::Value js_slice(Info info) {
  return guard(info, [&]() {
    const int64_t big = int64_t{1} << 50;
    return js_tensor(info, slice(arg_tensor(info, 0, "x"), arg_int(info, 1, "dim", -16, 15),
                                 arg_int(info, 2, "start", -big, big), arg_int(info, 3, "end", -big, big),
                                 arg_int(info, 4, "step", 1, big)));
  });
}

Napi::Value js_concat(Info info) {
  return guard(info, [&]() {
    return js_tensor(info, concat(arg_tensor_list(info, 0, "tensors"), arg_int(info, 1, "dim", -16, 15)));
  });
}

template <Tensor (*F)(const Tensor&, int64_t)>
Napi::Value dim_op(Info info) {
  return guard(info, [&]() { return js_tensor(info, F(arg_tensor(info, 0, "x"), arg_int(info, 1, "dim", -16, 15))); });
}

Napi::Value js_dropout(Info info) {
  return guard(info, [&]() {
    return js_tensor(info, dropout(arg_tensor(info, 0, "x"), static_cast<float>(arg_number(info, 1, "p")),
                                   arg_seed(info, 2, "seed")));
  });
}

Napi::Value js_layernorm(Info info) {
  return guard(info, [&]() {
    return js_tensor(info, layernorm(arg_tensor(info, 0, "x"), arg_tensor_or_null(info, 1, "weight"),
                                     arg_tensor_or_null(info, 2, "bias"), static_cast<float>(arg_number(info, 3, "eps")),
                                     arg_tensor_or_null(info, 4, "residual")));
  });
}

// attention without a link (ops.h): the model's own graph joins it to its QKV product.
Tensor attention_op(const Tensor& qkv, int64_t heads, int64_t branches) { return attention(qkv, heads, branches); }

template <Tensor (*F)(const Tensor&, int64_t, int64_t)>
Napi::Value heads_op(Info info) {
  return guard(info, [&]() {
    const int64_t branches = info.Length() > 2 && !info[2].IsUndefined() ? arg_int(info, 2, "branches", 1, 1 << 16) : 1;
    return js_tensor(info, F(arg_tensor(info, 0, "qkv"), arg_int(info, 1, "heads", 1, 1 << 16), branches));
  });
}

Napi::Value js_branch_linear(Info info) {
  return guard(info, [&]() {
    return js_tensor(info, branch_linear(arg_tensor(info, 0, "input"), arg_tensor(info, 1, "weight"),
                                         arg_tensor_or_null(info, 2, "bias"), arg_tensor_or_null(info, 3, "lnWeight"),
                                         arg_tensor_or_null(info, 4, "lnBias"), arg_bool(info, 5, "gelu"),
                                         arg_bool(info, 6, "interleaved")));
  });
}

Napi::Value js_stage_sum(Info info) {
  return guard(info, [&]() {
    return js_tensor(info, stage_sum(arg_tensor(info, 0, "x"), arg_tensor(info, 1, "h"), arg_tensor(info, 2, "w2"),
                                     arg_tensor(info, 3, "b2"), arg_tensor(info, 4, "a"),
                                     static_cast<float>(arg_number(info, 5, "scale"))));
  });
}

Napi::Value js_cross_entropy(Info info) {
  return guard(info, [&]() {
    return js_tensor(info, cross_entropy(arg_tensor(info, 0, "logits"), arg_tensor(info, 1, "labels"),
                                         static_cast<float>(arg_number(info, 2, "labelSmoothing"))));
  });
}

Napi::Value js_patchify(Info info) {
  return guard(info, [&]() {
    return js_tensor(info, patchify(arg_tensor(info, 0, "images"), arg_int(info, 1, "patchSize", 1, 1 << 16)));
  });
}

Napi::Value js_patch_embed(Info info) {
  return guard(info, [&]() {
    return js_tensor(info, patch_embed(arg_tensor(info, 0, "images"), arg_tensor(info, 1, "weight"),
                                       arg_tensor_or_null(info, 2, "bias"), arg_int(info, 3, "patchSize", 1, 1 << 16)));
  });
}

// ---- gradient statistics ----

Napi::Value js_sum_of_squares(Info info) {
  return guard(info, [&]() -> Napi::Value {
    const Tensor s = to_device(sum_of_squares(arg_tensor_list(info, 0, "tensors")), DEVICE_CPU);
    return Napi::Number::New(info.Env(), static_cast<double>(*s->f32()));
  });
}

Napi::Value js_scale_inplace(Info info) {
  return guard(info, [&]() -> Napi::Value {
    scale_inplace(arg_tensor(info, 0, "tensor"), static_cast<float>(arg_number(info, 1, "scale")));
    return info.Env().Undefined();
  });
}

// ---- runtime ----

Napi::Value js_memory(Info info) {
  return guard(info, [&]() -> Napi::Value {
    MemoryStats m = memory_stats();
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("tensors", static_cast<double>(m.tensors));
    o.Set("bytes", static_cast<double>(m.bytes));
    o.Set("cudaBytes", static_cast<double>(m.cuda_bytes));
    o.Set("peakBytes", static_cast<double>(m.peak_bytes));
    return o;
  });
}

Napi::Value js_reset_peak_memory(Info info) {
  return guard(info, [&]() -> Napi::Value {
    reset_peak_bytes();
    return info.Env().Undefined();
  });
}

Napi::Value js_cache_stats(Info info) {
  return guard(info, [&]() -> Napi::Value {
    CacheStats c = cache_stats();
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("cachedBytes", static_cast<double>(c.cached_bytes));
    o.Set("limitBytes", static_cast<double>(c.limit_bytes));
    o.Set("hits", static_cast<double>(c.hits));
    o.Set("misses", static_cast<double>(c.misses));
    return o;
  });
}

Napi::Value js_empty_cache(Info info) {
  return guard(info, [&]() -> Napi::Value {
    clear_derived_weights();  // their blocks go back to the block cache, then out
    empty_cache();
    return info.Env().Undefined();
  });
}

Napi::Value js_set_cache_limit(Info info) {
  return guard(info, [&]() -> Napi::Value {
    set_cache_limit(arg_int(info, 0, "bytes", CACHE_LIMIT_AUTO, int64_t{1} << 50));  // -1: auto
    return info.Env().Undefined();
  });
}

Napi::Value js_set_grad_enabled(Info info) {
  return guard(info, [&]() -> Napi::Value {
    const bool prev = grad_enabled();
    set_grad_enabled(arg_bool(info, 0, "enabled"));
    return Napi::Boolean::New(info.Env(), prev);
  });
}

Napi::Value js_set_num_threads(Info info) {
  return guard(info, [&]() -> Napi::Value {
    set_num_threads(static_cast<int>(arg_int(info, 0, "threads", 0, 256)));
    return Napi::Number::New(info.Env(), get_num_threads());
  });
}

Napi::Value js_set_cpu_isa(Info info) {
  return guard(info, [&]() -> Napi::Value {
    const CpuIsa prev = cpu_isa_active();
    cpu_isa_set(static_cast<CpuIsa>(arg_int(info, 0, "isa", 0, 2)));
    return Napi::Number::New(info.Env(), prev);
  });
}

// cpuPeak(kind, threads, seconds): GFLOP/s of the chain-of-FMAs microbenchmark, or null when
// this CPU lacks the instructions (peak.h).
Napi::Value js_cpu_peak(Info info) {
  return guard(info, [&]() -> Napi::Value {
    const auto kind = static_cast<PeakKind>(arg_int(info, 0, "kind", 0, 3));
    const int threads = static_cast<int>(arg_int(info, 1, "threads", 0, 256));
    const double seconds = arg_number(info, 2, "seconds");
    if (!peak_supported(kind)) return info.Env().Null();
    return Napi::Number::New(info.Env(), measure_peak_gflops(kind, threads, seconds));
  });
}

Napi::Value js_profile_start(Info info) {
  return guard(info, [&]() -> Napi::Value {
    profile_start();
    return info.Env().Undefined();
  });
}

Napi::Value js_profile_stop(Info info) {
  return guard(info, [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    const ProfileReport r = profile_stop();
    Napi::Object o = Napi::Object::New(env);
    o.Set("seconds", r.seconds);
    o.Set("kernelSeconds", r.process_kernel_seconds);
    o.Set("pageFaults", static_cast<double>(r.process_page_faults));
    Napi::Array families = Napi::Array::New(env, r.families.size());
    for (size_t i = 0; i < r.families.size(); i++) {
      const ProfileEntry& e = r.families[i];
      Napi::Object f = Napi::Object::New(env);
      f.Set("family", e.family);
      f.Set("seconds", e.seconds);
      f.Set("calls", static_cast<double>(e.calls));
      f.Set("flops", e.flops);
      f.Set("pageFaults", static_cast<double>(e.page_faults));
      f.Set("kernelSeconds", e.kernel_seconds);
      f.Set("idleSeconds", e.idle_seconds);
      families.Set(static_cast<uint32_t>(i), f);
    }
    o.Set("families", families);
    Napi::Array calls = Napi::Array::New(env, r.calls.size());
    for (size_t i = 0; i < r.calls.size(); i++) {
      Napi::Object c = Napi::Object::New(env);
      c.Set("label", r.calls[i].label);
      c.Set("family", r.calls[i].family);
      c.Set("seconds", r.calls[i].seconds);
      c.Set("calls", static_cast<double>(r.calls[i].calls));
      c.Set("flops", r.calls[i].flops);
      c.Set("idleSeconds", r.calls[i].idle_seconds);
      calls.Set(static_cast<uint32_t>(i), c);
    }
    o.Set("calls", calls);
    return o;
  });
}

Napi::Value js_backend_info(Info info) {
  return guard(info, [&]() -> Napi::Value {
    Napi::Env env = info.Env();
    Napi::Object cpu = Napi::Object::New(env);
    cpu.Set("isa", cpu_isa_name(cpu_isa_active()));
    cpu.Set("isaBest", cpu_isa_name(cpu_isa_best()));
    cpu.Set("threads", get_num_threads());
    cpu.Set("bf16", cpu_isa_active() == CPU_ISA_AVX512 && cpu_has_bf16());
    cpu.Set("gemmTuning", gemm_tuning_name(gemm_tuning()));
    cpu.Set("amx", cpu_isa_active() == CPU_ISA_AVX512 && cpu_amx_active());
    const CudaInfo cs = cuda_info();
    Napi::Object cuda = Napi::Object::New(env);
    cuda.Set("available", cs.available);
    cuda.Set("built", cs.built);
    cuda.Set("testDevice", cs.test_device);
    cuda.Set("devices", cs.devices);
    cuda.Set("device", cs.device);
    cuda.Set("runtimeVersion", cs.runtime_version);
    cuda.Set("driverVersion", cs.driver_version);
    cuda.Set("reason", cs.reason);
    Napi::Object o = Napi::Object::New(env);
    o.Set("napiVersion", NAPI_VERSION);
    o.Set("cpu", cpu);
    o.Set("cuda", cuda);
    return o;
  });
}

Napi::Value js_set_test_device(Info info) {
  return guard(info, [&]() -> Napi::Value {
    set_test_device(arg_bool(info, 0, "on"));
    return info.Env().Undefined();
  });
}

Napi::Value js_launches(Info info) {
  return guard(info, [&]() -> Napi::Value {
    return Napi::Number::New(info.Env(), static_cast<double>(backend(arg_device(info, 0, "device")).launches()));
  });
}

struct Export {
  const char* name;
  Napi::Value (*fn)(Info);
};

const Export EXPORTS[] = {
    {"registerErrors", register_errors},
    {"fromData", from_data},
    {"zeros", js_zeros},
    {"full", js_full},
    {"randn", js_randn},
    {"rand", js_rand},
    {"truncNormal", js_trunc_normal},
    {"describe", js_describe},
    {"toArray", js_to_array},
    {"item", js_item},
    {"grad", js_grad},
    {"setRequiresGrad", js_set_requires_grad},
    {"zeroGrad", js_zero_grad},
    {"detach", js_detach},
    {"clone", js_clone},
    {"backward", js_backward},
    {"dispose", js_dispose},
    {"toDevice", js_to_device},
    {"copyInto", js_copy_into},
    {"add", binary_op<add>},
    {"sub", binary_op<sub>},
    {"mul", binary_op<mul>},
    {"div", binary_op<div>},
    {"addScalar", scalar_op<add_scalar>},
    {"mulScalar", scalar_op<mul_scalar>},
    {"matmul", binary_op<matmul>},
    {"linear", js_linear},
    {"sum", reduce_op<sum>},
    {"mean", reduce_op<mean>},
    {"argmax", unary_op<argmax>},
    {"reshape", js_reshape},
    {"permute", js_permute},
    {"transpose", js_transpose},
    {"slice", js_slice},
    {"concat", js_concat},
    {"contiguous", unary_op<contiguous>},
    {"gelu", unary_op<gelu>},
    {"softmax", dim_op<softmax>},
    {"logSoftmax", dim_op<log_softmax>},
    {"dropout", js_dropout},
    {"layerNorm", js_layernorm},
    {"attention", heads_op<attention_op>},
    {"attentionProbs", heads_op<attention_probs>},
    {"branchLinear", js_branch_linear},
    {"stageSum", js_stage_sum},
    {"crossEntropy", js_cross_entropy},
    {"patchify", js_patchify},
    {"patchEmbed", js_patch_embed},
    {"sumOfSquares", js_sum_of_squares},
    {"scaleInplace", js_scale_inplace},
    {"memory", js_memory},
    {"resetPeakMemory", js_reset_peak_memory},
    {"cacheStats", js_cache_stats},
    {"emptyCache", js_empty_cache},
    {"setCacheLimit", js_set_cache_limit},
    {"setGradEnabled", js_set_grad_enabled},
    {"setNumThreads", js_set_num_threads},
    {"setCpuIsa", js_set_cpu_isa},
    {"backendInfo", js_backend_info},
    {"cpuPeak", js_cpu_peak},
    {"profileStart", js_profile_start},
    {"profileStop", js_profile_stop},
    {"setTestDevice", js_set_test_device},
    {"launches", js_launches},
};

}  // namespace

Napi::Object init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  data->tensor_ctor = Napi::Persistent(TensorHandle::define(env));
  env.SetInstanceData(data);
  exports.Set("NativeTensor", data->tensor_ctor.Value());
  for (const Export& e : EXPORTS) exports.Set(e.name, Napi::Function::New(env, e.fn, e.name));
  register_model_exports(env, exports);
  register_distributed_exports(env, exports);
  return exports;
}

}  // namespace duat

static Napi::Object duat_init(Napi::Env env, Napi::Object exports) { return duat::init(env, exports); }

NODE_API_MODULE(duat, duat_init)
