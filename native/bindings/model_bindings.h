// model_bindings.h: adds the Para-Former model's and duat.distributed's exports to the addon's
// export object.
#pragma once
#include <napi.h>

namespace duat {
void register_model_exports(Napi::Env env, Napi::Object exports);
// dist_bindings.cpp: duat.distributed.
void register_distributed_exports(Napi::Env env, Napi::Object exports);
}
