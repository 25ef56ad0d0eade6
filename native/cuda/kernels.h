// kernels.h: the CUDA kernels' launchers, one declaration per kernel family, and the runtime
// they share (the engine's stream, launch counting, error checks). Internal to native/cuda: the
// CUDA Backend (backend.cu) and the parity program call these; ops never do. Every launcher
// takes the contract of the Backend function of the same name (core/backend.h), issues its work
// on the stream, counts its launches and checks them at once: a failure throws duat::Error
// (ERROR_DEVICE; ERROR_OUT_OF_MEMORY when the device is out of memory).
// Files: gemm.cu, attention.cu, norm.cu (LayerNorm, softmax, loss), elementwise.cu (map,
// reduction, patches, dropout, folds), optim.cu, alloc.cu (the caching allocator), probe.cu.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "../core/backend.h"

namespace duat {
namespace cuda {

// ---- runtime (probe.cu) -----------------------------------------------------------------------
// The one stream all of duat's device work is issued on (created on first use, non-blocking), so
// memory freed to the allocator's cache is reused in stream order.
cudaStream_t stream();
// Throws duat::Error naming `what` when e is not cudaSuccess.
void check_cuda(cudaError_t e, const char* what);
// Kernel launches since the process started.
int64_t launch_count();
// Counts a launch and surfaces its configuration error at once (every launcher ends with it).
void launched(const char* what);
int device_sms();
// Tensor-core precisions need sm_80 or newer; older devices compute in fp32 (this says which).
Precision effective_precision(Precision p);

// ---- memory (alloc.cu) --------------------------------------------------------------------------
// A block of at least `bytes` (256-byte aligned) from the caching allocator: freed blocks go back
// to a cache by size class (cudaMalloc and cudaFree synchronise the device) and are reused in
// stream order. Throws ERROR_OUT_OF_MEMORY when the device is out of memory even after the cache
// was returned to the driver.
void* device_alloc(size_t bytes);
void device_free(void* p);
void empty_cache();
// While on, freed blocks are held back instead of cached for reuse, and return to the cache when
// it is turned off: a captured CUDA graph replays into the blocks its capture used, so they must
// stay untouched until the graph is destroyed (bench/native/gpu_bench.cu).
void hold_frees(bool on);
// The size class of a request: 512-byte steps up to 1 MiB, then 1/8 power-of-two steps.
size_t allocation_class(size_t bytes);
struct AllocatorStats {
  size_t in_use = 0, cached = 0, peak = 0;
  int64_t driver_allocs = 0, cache_hits = 0;
};
AllocatorStats allocator_stats();
// The split-K scratch of the matrix product: accumulators and tickets, zero between launches.
struct Workspace {
  float* partials = nullptr;
  int* tickets = nullptr;
  int64_t partial_floats = 0, ticket_count = 0;
};
Workspace& gemm_workspace(int64_t partial_floats, int64_t tickets);

// ---- launchers ----------------------------------------------------------------------------------
void gemm(const GemmArgs& g, Precision p);                                                      // gemm.cu
void attention_forward(const dm::AttnLayout& L, int64_t B, const float* qkv, float* out, float* lse);  // attention.cu
void attention_backward(const dm::AttnLayout& L, int64_t B, const float* dout, const float* qkv, const float* out,
                        const float* lse, float* delta, float* dqkv);
void attention_probs(const dm::AttnLayout& L, int64_t B, const float* qkv, float* probs);
void layernorm_forward(const LayerNormArgs& a);                                                 // norm.cu
void layernorm_backward(const LayerNormGradArgs& a);
void softmax_forward(const float* x, float* y, int64_t rows, int64_t cols, bool log);
void softmax_backward(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols, bool log);
void cross_entropy(const float* logits, const int32_t* labels, float* loss, float* dlogits, int64_t B, int64_t K,
                   float smoothing);
void argmax_rows(const float* x, int32_t* out, int64_t rows, int64_t cols);
void count_correct(const float* logits, const int32_t* labels, float* out, int64_t B, int64_t K);
void map(const MapArgs& m);                                                                     // elementwise.cu
void reduce(const ReduceArgs& r);
void fill(void* dst, int64_t words, uint32_t bits);
void dropout(const float* x, float* out, int64_t n, float p, uint64_t seed, bool accumulate);
void patchify_forward(const float* images, float* patches, int64_t B, int64_t ch, int64_t S, int64_t P);
void patchify_backward(const float* dpatches, float* dimages, int64_t B, int64_t ch, int64_t S, int64_t P);
void fold_affine_forward(const float* w, const float* b, const float* g, const float* beta, float* wf, float* bf,
                         int64_t N, int64_t O, int64_t C);
void fold_affine_backward(const float* w, const float* g, const float* beta, const float* dwf, const float* dbf,
                          float* dw, float* db, float* dg, float* dbeta, int64_t N, int64_t O, int64_t C);
void adamw(const std::vector<AdamWTensor>& t, const GradScale& s);                               // optim.cu
void sgd(const std::vector<SgdTensor>& t, const GradScale& s);
void sum_of_squares(const std::vector<std::pair<const float*, int64_t>>& t, float* out);

}  // namespace cuda
}  // namespace duat
