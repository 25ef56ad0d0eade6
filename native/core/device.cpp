// device.cpp: which Backend serves which device, the matmul precision of this thread, and the
// switch of the test device (backend.h).
#include <atomic>
#include <mutex>

#include "backend.h"
#include "errors.h"
#include "profile.h"

namespace duat {

namespace {
thread_local Precision t_precision = PRECISION_FP32;
std::atomic<bool> g_test_device{false};
std::mutex g_switch;
}  // namespace

const char* precision_name(Precision p) {
  switch (p) {
    case PRECISION_TF32: return "tf32";
    case PRECISION_BF16: return "bf16";
    default: return "fp32";
  }
}

Precision matmul_precision() { return t_precision; }
PrecisionScope::PrecisionScope(Precision p) : prev_(t_precision) { t_precision = p; }
PrecisionScope::~PrecisionScope() { t_precision = prev_; }

const char* device_name(Device device) { return device == DEVICE_CPU ? "cpu" : "cuda"; }

namespace {
// gelu_backward_bias as a map and a reduction, over (batch, rows, cols) blocks whose rows are `ld`
// floats apart (x, dy and dx alike; ld >= cols).
void gelu_backward_bias_passes(Backend& be, const float* x, const float* dy, float* dx, float* db, int64_t batch,
                               int64_t rows, int64_t cols, int64_t ld, bool accumulate) {
  const int64_t shape[3] = {batch, rows, cols}, in_s[3] = {rows * ld, ld, 1}, out_s[3] = {cols, 0, 1};
  MapArgs m;
  m.op = MAP_GELU_GRAD;
  m.nd = 3;
  m.out = dx, m.a = x, m.b = dy;
  ReduceArgs r;
  r.nd = 3;
  for (int d = 0; d < 3; d++) {
    m.shape[d] = r.shape[d] = shape[d];
    m.out_strides[d] = m.a_strides[d] = m.b_strides[d] = r.in_strides[d] = in_s[d];
    r.out_strides[d] = out_s[d];
  }
  if (ld == cols) {  // one run
    m.nd = 1;
    m.shape[0] = batch * rows * cols;
    m.out_strides[0] = m.a_strides[0] = m.b_strides[0] = 1;
  }
  be.map(m);
  r.in = dx, r.out = db, r.accumulate = accumulate;
  be.reduce(r);
}
}  // namespace

void Backend::gelu_backward_bias(const float* x, const float* dy, float* dx, float* db, int64_t batch, int64_t rows,
                                 int64_t cols, bool accumulate) {
  gelu_backward_bias_passes(*this, x, dy, dx, db, batch, rows, cols, cols, accumulate);
}

void Backend::attention_forward_first(const dm::AttnLayout&, int64_t, int64_t, const float*, float*) {
  throw Error(ERROR_DEVICE, std::string(name()) + " computes attention for every query (attention_first_queries() is false)");
}

void Backend::pack_b(const float*, int64_t, int64_t, int64_t, float*) {
  throw Error(ERROR_DEVICE, std::string(name()) + " products read weights as they are (packed_b_width() is 0)");
}

void Backend::gemm_gelu_backward(const GemmArgs& g, const float* pre, float* db) {
  gemm(g);
  if (g.c_m == g.N) return gelu_backward_bias(pre, g.C, g.C, db, 1, g.M, g.N, false);
  gelu_backward_bias_passes(*this, pre, g.C, g.C, db, 1, g.M, g.N, g.c_m, false);  // rows padded
}

void Backend::attention_backward_bias(const dm::AttnLayout& L, int64_t B, const float* dout, const float* qkv,
                                      const float* out, const float* lse, float* delta, float* dqkv, float* db) {
  attention_backward(L, B, dout, qkv, out, lse, delta, dqkv);
  ReduceArgs r;
  r.nd = 2;
  r.shape[0] = B * L.T, r.shape[1] = L.ld_in();
  r.in = dqkv, r.in_strides[0] = L.ld_in(), r.in_strides[1] = 1;
  r.out = db, r.out_strides[0] = 0, r.out_strides[1] = 1;
  reduce(r);
}

Backend& backend(Device device) {
  if (device == DEVICE_CPU) return profiling() ? profiling_backend(cpu_backend()) : cpu_backend();
  if (g_test_device.load(std::memory_order_acquire)) return test_device_backend();
  Backend* cuda = cuda_backend();
  if (!cuda) fail(ERROR_DEVICE, "device 'cuda' is not available: " + cuda_probe().reason);
  return *cuda;
}

CudaInfo cuda_info() {
  CudaInfo info = cuda_probe();
  if (g_test_device.load()) {
    info.available = true;
    info.test_device = true;
    info.device = "test device (host memory, CPU kernels): every CUDA code path but the kernels";
    info.reason = "";
  }
  return info;
}

bool test_device_enabled() { return g_test_device.load(); }

void set_test_device(bool on) {
  std::lock_guard<std::mutex> lock(g_switch);
  if (on == g_test_device.load()) return;
  DUAT_CHECK(cuda_live_bytes() == 0, ERROR_STATE,
             "the test device can be switched only while no tensor lives on 'cuda' (" + std::to_string(cuda_live_bytes()) +
                 " bytes do)");
  g_test_device.store(on, std::memory_order_release);
}

}  // namespace duat
