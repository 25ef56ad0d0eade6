// optim.cu: the optimizer updates over many tensors per launch (the table of tensors travels as
// the kernel's parameter, 32 per launch; grid.y picks the tensor) and the sum of squares behind
// gradient clipping. Per-element math: dm::adamw_element, dm::sgd_element, dm::clip_factor
// (core/device_math.h). The clipping factor and the non-finite skip are read from the device: no
// host round trip.
#include <algorithm>

#include "common.cuh"

namespace duat {
namespace cuda {

namespace {

constexpr int MAX_TENSORS = 32;

template <typename Entry>
struct Batch {
  Entry t[MAX_TENSORS];
  int count = 0;
  GradScale scale;
};

__global__ void adamw_kernel(const Batch<AdamWTensor> batch) {
  if (dm::update_skipped(batch.scale.sumsq, batch.scale.skip_non_finite)) return;
  const AdamWTensor& t = batch.t[blockIdx.y];
  const float gs = dm::grad_factor(batch.scale.sumsq, batch.scale.max_norm);
  DUAT_GRID_LOOP(i, t.n)
  t.param[i] = dm::adamw_element(t.param[i], t.grad[i] * gs, t.m + i, t.v + i, t.beta1, t.one_minus_beta1, t.beta2,
                                 t.one_minus_beta2, t.eps, t.decay, t.step_size, t.inv_sqrt_bc2);
}

__global__ void sgd_kernel(const Batch<SgdTensor> batch) {
  if (dm::update_skipped(batch.scale.sumsq, batch.scale.skip_non_finite)) return;
  const SgdTensor& t = batch.t[blockIdx.y];
  const float gs = dm::grad_factor(batch.scale.sumsq, batch.scale.max_norm);
  DUAT_GRID_LOOP(i, t.n)
  t.param[i] = dm::sgd_element(t.param[i], t.grad[i] * gs, t.buf ? t.buf + i : nullptr, t.lr, t.weight_decay,
                               t.momentum, t.dampening, t.nesterov, t.first);
}

struct SquaresEntry {
  const float* p;
  int64_t n;
};

// A block's partial sum goes to *out with one atomic.
__global__ void sum_of_squares_kernel(const Batch<SquaresEntry> batch, float* out) {
  __shared__ float partial[8];
  const SquaresEntry& t = batch.t[blockIdx.y];
  float acc = 0.0f;
  DUAT_GRID_LOOP(i, t.n) acc = fmaf(t.p[i], t.p[i], acc);
  acc = warp_sum(acc);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); w++) total += partial[w];
    atomicAdd(out, total);
  }
}

// Launches `kernel` over the tensors, MAX_TENSORS at a time; the grid's x covers the largest.
template <typename Entry, typename K, typename... Extra>
void launch_batches(const std::vector<Entry>& ts, const GradScale& s, K kernel, const char* what, Extra... extra) {
  for (size_t first = 0; first < ts.size(); first += MAX_TENSORS) {
    Batch<Entry> b;
    b.count = static_cast<int>(std::min<size_t>(MAX_TENSORS, ts.size() - first));
    b.scale = s;
    int64_t largest = 1;
    for (int i = 0; i < b.count; i++) {
      b.t[i] = ts[first + i];
      largest = std::max(largest, b.t[i].n);
    }
    const dim3 grid(std::min<unsigned>(elementwise_blocks(largest), 64u), static_cast<unsigned>(b.count));
    kernel<<<grid, 256, 0, stream()>>>(b, extra...);
    launched(what);
  }
}

}  // namespace

void adamw(const std::vector<AdamWTensor>& t, const GradScale& s) { launch_batches(t, s, adamw_kernel, "adamw"); }

void sgd(const std::vector<SgdTensor>& t, const GradScale& s) { launch_batches(t, s, sgd_kernel, "sgd"); }

void sum_of_squares(const std::vector<std::pair<const float*, int64_t>>& t, float* out) {
  check_cuda(cudaMemsetAsync(out, 0, sizeof(float), stream()), "sum of squares (clear)");
  std::vector<SquaresEntry> entries;
  for (const auto& [p, n] : t) entries.push_back({p, n});
  launch_batches(entries, GradScale{}, sum_of_squares_kernel, "sum of squares", out);
}

}  // namespace cuda
}  // namespace duat
