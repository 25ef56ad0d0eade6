// cuda_backend.cu: probes the CUDA runtime and driver; with a device, checks that a kernel
// launches and returns the right values (so `available` means usable, not merely present).
#include <cuda_runtime.h>

#include <string>

#include "cuda_backend.h"

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

const CudaStatus& cuda_status() {
  static const CudaStatus s = [] {
    CudaStatus c;
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

}  // namespace duat
