// probe.cu: the CUDA runtime as duat finds it: probes the runtime and driver and, with a device,
// checks that a kernel launches and returns the right values (so `available` means usable, not
// merely present); the engine's stream, launch counting and error checks (kernels.h).
#include <cuda_runtime.h>

#include <atomic>
#include <string>

#include "../core/errors.h"
#include "kernels.h"

namespace duat {

namespace {

// y[i] = a * i + b: a self-test whose every element is known.
__global__ void selftest_kernel(float* y, int n, float a, float b) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * static_cast<float>(i) + b;
}

std::string error_text(cudaError_t e) { return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e); }

std::string self_test() {
  constexpr int N = 1000;
  float* d = nullptr;
  cudaError_t e = cudaMalloc(&d, N * sizeof(float));
  if (e != cudaSuccess) return "cudaMalloc failed (" + error_text(e) + ")";
  selftest_kernel<<<(N + 255) / 256, 256>>>(d, N, 2.0f, 1.0f);
  e = cudaGetLastError();
  float host[N];
  if (e == cudaSuccess) e = cudaMemcpy(host, d, sizeof(host), cudaMemcpyDeviceToHost);
  cudaFree(d);
  if (e != cudaSuccess) return "the self-test kernel failed (" + error_text(e) + ")";
  for (int i = 0; i < N; i++)
    if (host[i] != 2.0f * i + 1.0f) return "the self-test kernel returned wrong values";
  return "";
}

}  // namespace

const CudaInfo& cuda_probe() {
  static const CudaInfo s = [] {
    CudaInfo c;
    c.built = true;
    cudaRuntimeGetVersion(&c.runtime_version);
    cudaDriverGetVersion(&c.driver_version);
    const cudaError_t e = cudaGetDeviceCount(&c.devices);
    if (e != cudaSuccess) {
      c.devices = 0;
      c.reason = "no usable CUDA device: " + error_text(e) +
                 (c.driver_version == 0 ? " (no NVIDIA driver found)" : "");
      cudaGetLastError();  // clear the sticky error
      return c;
    }
    if (c.devices == 0) {
      c.reason = "the CUDA driver reports no devices";
      return c;
    }
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, 0) == cudaSuccess)
      c.device = std::string(p.name) + " (sm_" + std::to_string(p.major) + std::to_string(p.minor) + ")";
    c.reason = self_test();
    c.available = c.reason.empty();
    return c;
  }();
  return s;
}

namespace cuda {

namespace {
std::atomic<int64_t> g_launches{0};

int device_major() {
  static const int major = [] {
    int dev = 0, m = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&m, cudaDevAttrComputeCapabilityMajor, dev);
    return m;
  }();
  return major;
}
}  // namespace

cudaStream_t stream() {
  static const cudaStream_t s = [] {
    cudaStream_t created = nullptr;
    check_cuda(cudaStreamCreateWithFlags(&created, cudaStreamNonBlocking), "creating the stream");
    return created;
  }();
  return s;
}

void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess)
    fail(e == cudaErrorMemoryAllocation ? ERROR_OUT_OF_MEMORY : ERROR_DEVICE,
         std::string("CUDA error in ") + what + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

int64_t launch_count() { return g_launches.load(std::memory_order_relaxed); }

void launched(const char* what) {
  g_launches.fetch_add(1, std::memory_order_relaxed);
  check_cuda(cudaGetLastError(), what);
}

int device_sms() {
  static const int sms = [] {
    int dev = 0, n = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    return n > 0 ? n : 1;
  }();
  return sms;
}

Precision effective_precision(Precision p) { return device_major() >= 8 ? p : PRECISION_FP32; }

}  // namespace cuda
}  // namespace duat
