// dist_bindings.cpp: duat.distributed's native half (native/distributed/comm.h): joining the MPI job,
// the job's rank and size, and the collectives JS needs around the training step (checkpoint
// gathers, metric sums). They run on the JS thread and return when every rank has called them.
#include <napi.h>

#include "../distributed/comm.h"
#include "convert.h"
#include "model_bindings.h"

namespace duat {

namespace {

using Info = const Napi::CallbackInfo&;

Napi::Value describe(Napi::Env env, Communicator* c) {
  if (!c) return env.Null();
  Napi::Object o = Napi::Object::New(env);
  o.Set("rank", c->rank());
  o.Set("size", c->size());
  o.Set("transport", c->description());
  return o;
}

Napi::Value js_init(Info info) {
  return guard(info, [&]() -> Napi::Value {
    std::string library;
    if (info.Length() > 0 && !info[0].IsUndefined() && !info[0].IsNull()) {
      DUAT_CHECK(info[0].IsString(), ERROR_ARGUMENT, "Expected a string for the MPI library path");
      library = info[0].As<Napi::String>().Utf8Value();
    }
    return describe(info.Env(), &distributed_init_mpi(library));
  });
}

Napi::Value js_stats(Info info) {
  return guard(info, [&]() -> Napi::Value {
    const CommStats s = require_communicator("distributed.stats").stats();
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("calls", static_cast<double>(s.calls));
    o.Set("bytes", static_cast<double>(s.bytes));
    o.Set("seconds", s.seconds);
    return o;
  });
}

Napi::Value js_info(Info info) {
  return guard(info, [&]() -> Napi::Value { return describe(info.Env(), communicator()); });
}

// allreduce(Float32Array | Float64Array): sums every rank's array into each, in place.
Napi::Value js_allreduce(Info info) {
  return guard(info, [&]() -> Napi::Value {
    Communicator& c = require_communicator("distributed.allreduce");
    DUAT_CHECK(info.Length() > 0 && info[0].IsTypedArray(), ERROR_ARGUMENT, "allreduce: expected a Float32Array or Float64Array");
    Napi::TypedArray a = info[0].As<Napi::TypedArray>();
    if (a.TypedArrayType() == napi_float32_array) {
      Napi::Float32Array f = a.As<Napi::Float32Array>();
      c.allreduce_sum(f.Data(), static_cast<int64_t>(f.ElementLength()));
    } else {
      DUAT_CHECK(a.TypedArrayType() == napi_float64_array, ERROR_ARGUMENT, "allreduce: expected a Float32Array or Float64Array");
      Napi::Float64Array f = a.As<Napi::Float64Array>();
      c.allreduce_sum(f.Data(), static_cast<int64_t>(f.ElementLength()));
    }
    return info[0];
  });
}

// allreduceTensor(tensor): sums a float32 tensor over every rank in place, on its device.
Napi::Value js_allreduce_tensor(Info info) {
  return guard(info, [&]() -> Napi::Value {
    Communicator& c = require_communicator("distributed.allreduce");
    const Tensor t = arg_tensor(info, 0, "tensor");
    check_not_busy(t, "allreduce it");
    allreduce_sum(c, t);
    return info.Env().Undefined();
  });
}

// broadcast(Uint8Array, root): rank root's bytes into every rank's array.
Napi::Value js_broadcast(Info info) {
  return guard(info, [&]() -> Napi::Value {
    Communicator& c = require_communicator("distributed.broadcast");
    DUAT_CHECK(info.Length() > 0 && info[0].IsTypedArray(), ERROR_ARGUMENT, "broadcast: expected a typed array");
    Napi::TypedArray a = info[0].As<Napi::TypedArray>();
    const int root = static_cast<int>(arg_int(info, 1, "root", 0, c.size() - 1));
    c.broadcast(static_cast<uint8_t*>(a.ArrayBuffer().Data()) + a.ByteOffset(), static_cast<int64_t>(a.ByteLength()), root);
    return info[0];
  });
}

Napi::Value js_barrier(Info info) {
  return guard(info, [&]() -> Napi::Value {
    require_communicator("distributed.barrier").barrier();
    return info.Env().Undefined();
  });
}

Napi::Value js_abort(Info info) {
  return guard(info, [&]() -> Napi::Value {
    require_communicator("distributed.abort").abort(static_cast<int>(arg_int(info, 0, "code", 1, 255)));
    return info.Env().Undefined();  // not reached: abort ends the process
  });
}

Napi::Value js_finalize(Info info) {
  return guard(info, [&]() -> Napi::Value {
    distributed_finalize();
    return info.Env().Undefined();
  });
}

Napi::Value js_branch_share(Info info) {
  return guard(info, [&]() -> Napi::Value {
    const int size = static_cast<int>(arg_int(info, 2, "size", 1, 1 << 20));
    const BranchShare s = branch_share(arg_int(info, 0, "branches", 1, 1 << 20),
                                       static_cast<int>(arg_int(info, 1, "rank", 0, size - 1)), size);
    Napi::Object o = Napi::Object::New(info.Env());
    o.Set("offset", static_cast<double>(s.offset));
    o.Set("count", static_cast<double>(s.count));
    return o;
  });
}

}  // namespace

void register_distributed_exports(Napi::Env env, Napi::Object exports) {
  const std::pair<const char*, Napi::Value (*)(Info)> table[] = {
      {"distributedInit", js_init},
      {"distributedInfo", js_info},
      {"distributedStats", js_stats},
      {"distributedAllreduce", js_allreduce},
      {"distributedAllreduceTensor", js_allreduce_tensor},
      {"distributedBroadcast", js_broadcast},
      {"distributedBarrier", js_barrier},
      {"distributedAbort", js_abort},
      {"distributedFinalize", js_finalize},
      {"distributedBranchShare", js_branch_share},
  };
  for (const auto& [name, fn] : table) exports.Set(name, Napi::Function::New(env, fn, name));
}

}  // namespace duat
