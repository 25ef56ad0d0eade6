// test_device.cpp: the test device, DEVICE_CUDA served by host memory and the CPU kernels
// (backend.h, set_test_device). It exists so that every CUDA code path but the kernels (device
// dispatch, autograd on device tensors, copies between devices, the model and its step, the
// optimizer, launch counts) runs in the CPU test suite. What it adds to the CPU backend:
//   - its own memory, poisoned with NaN when allocated, so a kernel that reads what nobody wrote
//     shows NaN here as it would show garbage on a GPU;
//   - tensors on it are DEVICE_CUDA, so host code that reads their data without copying them
//     back fails here exactly as it would fault on a GPU (TensorImpl::f32);
//   - every kernel call counts as a launch, as the CUDA backend counts its launches.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "../core/errors.h"
#include "../cpu/cpu_backend.h"

namespace duat {

namespace {

class TestDevice : public CpuBackend {
 public:
  const char* name() const override { return "test device"; }

  void* allocate(size_t bytes, size_t* capacity) override {
    const size_t cap = (bytes + 63) / 64 * 64 + 64;
    void* p = std::aligned_alloc(64, cap);
    if (!p) fail(ERROR_OUT_OF_MEMORY, "out of memory allocating " + std::to_string(bytes) + " bytes on the test device");
    std::memset(p, 0xFF, cap);  // all-ones words: NaN as float
    *capacity = cap;
    return p;
  }
  void release(void* p, size_t) override { std::free(p); }
  int64_t launches() const override { return launches_.load(); }

  // A fill with a non-zero word is a kernel on the GPU; zeros and copies are not (cudaMemsetAsync,
  // cudaMemcpyAsync). An H200 counted the one such fill of a training step that this device
  // missed (107 launches against 106).
  void fill(void* dst, int64_t words, uint32_t bits) override {
    if (words > 0 && bits != 0) count();
    CpuBackend::fill(dst, words, bits);
  }
  void map(const MapArgs& a) override { count(), CpuBackend::map(a); }
  void reduce(const ReduceArgs& a) override { count(), CpuBackend::reduce(a); }
  void gelu_backward_bias(const float* x, const float* dy, float* dx, float* db, int64_t batch, int64_t rows,
                          int64_t cols, bool accumulate) override {
    count(), CpuBackend::gelu_backward_bias(x, dy, dx, db, batch, rows, cols, accumulate);
  }
  void argmax_rows(const float* x, int32_t* out, int64_t rows, int64_t cols) override {
    count(), CpuBackend::argmax_rows(x, out, rows, cols);
  }
  void count_correct(const float* logits, const int32_t* labels, float* out, int64_t B, int64_t K) override {
    count(), CpuBackend::count_correct(logits, labels, out, B, K);
  }
  void softmax_forward(const float* x, float* y, int64_t rows, int64_t cols, bool log) override {
    count(), CpuBackend::softmax_forward(x, y, rows, cols, log);
  }
  void softmax_backward(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols, bool log) override {
    count(), CpuBackend::softmax_backward(y, dy, dx, rows, cols, log);
  }
  void layernorm_forward(const LayerNormArgs& a) override { count(), CpuBackend::layernorm_forward(a); }
  void layernorm_backward(const LayerNormGradArgs& a) override { count(), CpuBackend::layernorm_backward(a); }
  void cross_entropy(const float* logits, const int32_t* labels, float* loss, float* dlogits, int64_t B, int64_t K,
                     float smoothing) override {
    count(), CpuBackend::cross_entropy(logits, labels, loss, dlogits, B, K, smoothing);
  }
  void dropout(const float* x, float* out, int64_t n, float p, uint64_t seed, bool accumulate) override {
    count(), CpuBackend::dropout(x, out, n, p, seed, accumulate);
  }
  void gemm(const GemmArgs& g) override { count(), CpuBackend::gemm(g); }
  // As the CUDA backend: attention for every query (attention_first's fallback runs here).
  bool attention_first_queries() const override { return false; }
  void attention_forward(const dm::AttnLayout& L, int64_t B, const float* qkv, float* out, float* lse) override {
    count(), CpuBackend::attention_forward(L, B, qkv, out, lse);
  }
  void attention_backward(const dm::AttnLayout& L, int64_t B, const float* dout, const float* qkv, const float* out,
                          const float* lse, float* delta, float* dqkv) override {
    launches_ += 2;  // dQ, then dK and dV, as on the GPU
    CpuBackend::attention_backward(L, B, dout, qkv, out, lse, delta, dqkv);
  }
  // As the CUDA backend: the default (the backward, then a reduction).
  void attention_backward_bias(const dm::AttnLayout& L, int64_t B, const float* dout, const float* qkv,
                               const float* out, const float* lse, float* delta, float* dqkv, float* db) override {
    Backend::attention_backward_bias(L, B, dout, qkv, out, lse, delta, dqkv, db);
  }
  void attention_probs(const dm::AttnLayout& L, int64_t B, const float* qkv, float* probs) override {
    count(), CpuBackend::attention_probs(L, B, qkv, probs);
  }
  void patchify_forward(const float* images, float* patches, int64_t B, int64_t ch, int64_t S, int64_t P) override {
    count(), CpuBackend::patchify_forward(images, patches, B, ch, S, P);
  }
  void patchify_backward(const float* dpatches, float* dimages, int64_t B, int64_t ch, int64_t S, int64_t P) override {
    count(), CpuBackend::patchify_backward(dpatches, dimages, B, ch, S, P);
  }
  void fold_affine_forward(const float* w, const float* b, const float* g, const float* beta, float* wf, float* bf,
                           int64_t N, int64_t O, int64_t C) override {
    count(), CpuBackend::fold_affine_forward(w, b, g, beta, wf, bf, N, O, C);
  }
  void fold_affine_backward(const float* w, const float* g, const float* beta, const float* dwf, const float* dbf,
                            float* dw, float* db, float* dg, float* dbeta, int64_t N, int64_t O, int64_t C) override {
    count(), CpuBackend::fold_affine_backward(w, g, beta, dwf, dbf, dw, db, dg, dbeta, N, O, C);
  }
  void adamw(const std::vector<AdamWTensor>& t, const GradScale& s) override { count(), CpuBackend::adamw(t, s); }
  void sgd(const std::vector<SgdTensor>& t, const GradScale& s) override { count(), CpuBackend::sgd(t, s); }
  void sum_of_squares(const std::vector<std::pair<const float*, int64_t>>& t, float* out) override {
    count(), CpuBackend::sum_of_squares(t, out);
  }

 private:
  void count() { launches_.fetch_add(1, std::memory_order_relaxed); }
  std::atomic<int64_t> launches_{0};
};

}  // namespace

Backend& test_device_backend() {
  static TestDevice* device = new TestDevice();  // never destroyed: storages may outlive statics
  return *device;
}

}  // namespace duat
