// common.cuh: device helpers shared by the kernel files of native/cuda (warp reductions, the
// grid of an elementwise launch). Internal to native/cuda.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "../core/device_math.h"
#include "../core/errors.h"
#include "kernels.h"

namespace duat {
namespace cuda {

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over groups of G consecutive lanes (G a power of two, at most 32).
template <int G>
__device__ __forceinline__ float group_sum(float v) {
  for (int o = G / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Blocks of 256 threads for a grid-stride loop over n elements: enough to fill the device.
inline unsigned elementwise_blocks(int64_t n) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(dm::ceil_div(n, 256), 8LL * device_sms())));
}

// A grid-stride loop index.
#define DUAT_GRID_LOOP(i, n)                                                         \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

}  // namespace cuda
}  // namespace duat
