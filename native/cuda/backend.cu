// backend.cu: the CUDA Backend (core/backend.h): memory through the caching allocator and the
// one stream, every kernel through its launcher (kernels.h). Nothing here knows about ops or
// models: a device adds kernels, never a model (docs/design.md, "How a device plugs in").
#include "kernels.h"

namespace duat {

namespace {

class CudaBackend : public Backend {
 public:
  const char* name() const override { return "cuda"; }

  void* allocate(size_t bytes, size_t* capacity) override {
    *capacity = cuda::allocation_class(bytes);
    return cuda::device_alloc(bytes);
  }
  void release(void* p, size_t) override { cuda::device_free(p); }
  void upload(void* dst, const void* host, size_t bytes) override {
    if (bytes) cuda::check_cuda(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, cuda::stream()), "upload");
    // Pageable host memory is staged before the call returns; the caller may free it now.
  }
  void download(void* host, const void* src, size_t bytes) override {
    if (!bytes) return;
    cuda::check_cuda(cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, cuda::stream()), "download");
    synchronize();
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    if (bytes) cuda::check_cuda(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cuda::stream()), "copy");
  }
  void fill(void* dst, int64_t words, uint32_t bits) override { cuda::fill(dst, words, bits); }
  void synchronize() override { cuda::check_cuda(cudaStreamSynchronize(cuda::stream()), "synchronize"); }
  int64_t launches() const override { return cuda::launch_count(); }

  void map(const MapArgs& a) override { cuda::map(a); }
  void reduce(const ReduceArgs& a) override { cuda::reduce(a); }
  void argmax_rows(const float* x, int32_t* out, int64_t rows, int64_t cols) override {
    cuda::argmax_rows(x, out, rows, cols);
  }
  void count_correct(const float* logits, const int32_t* labels, float* out, int64_t B, int64_t K) override {
    cuda::count_correct(logits, labels, out, B, K);
  }
  void softmax_forward(const float* x, float* y, int64_t rows, int64_t cols, bool log) override {
    cuda::softmax_forward(x, y, rows, cols, log);
  }
  void softmax_backward(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols, bool log) override {
    cuda::softmax_backward(y, dy, dx, rows, cols, log);
  }
  void layernorm_forward(const LayerNormArgs& a) override { cuda::layernorm_forward(a); }
  void layernorm_backward(const LayerNormGradArgs& a) override { cuda::layernorm_backward(a); }
  void cross_entropy(const float* logits, const int32_t* labels, float* loss, float* dlogits, int64_t B, int64_t K,
                     float smoothing) override {
    cuda::cross_entropy(logits, labels, loss, dlogits, B, K, smoothing);
  }
  void dropout(const float* x, float* out, int64_t n, float p, uint64_t seed, bool accumulate) override {
    cuda::dropout(x, out, n, p, seed, accumulate);
  }
  void gemm(const GemmArgs& g) override { cuda::gemm(g, matmul_precision()); }
  void attention_forward(const dm::AttnLayout& L, int64_t B, const float* qkv, float* out, float* lse) override {
    cuda::attention_forward(L, B, qkv, out, lse);
  }
  void attention_backward(const dm::AttnLayout& L, int64_t B, const float* dout, const float* qkv, const float* out,
                          const float* lse, float* delta, float* dqkv) override {
    cuda::attention_backward(L, B, dout, qkv, out, lse, delta, dqkv);
  }
  void attention_probs(const dm::AttnLayout& L, int64_t B, const float* qkv, float* probs) override {
    cuda::attention_probs(L, B, qkv, probs);
  }
  void patchify_forward(const float* images, float* patches, int64_t B, int64_t ch, int64_t S, int64_t P) override {
    cuda::patchify_forward(images, patches, B, ch, S, P);
  }
  void patchify_backward(const float* dpatches, float* dimages, int64_t B, int64_t ch, int64_t S, int64_t P) override {
    cuda::patchify_backward(dpatches, dimages, B, ch, S, P);
  }
  void fold_affine_forward(const float* w, const float* b, const float* g, const float* beta, float* wf, float* bf,
                           int64_t N, int64_t O, int64_t C) override {
    cuda::fold_affine_forward(w, b, g, beta, wf, bf, N, O, C);
  }
  void fold_affine_backward(const float* w, const float* g, const float* beta, const float* dwf, const float* dbf,
                            float* dw, float* db, float* dg, float* dbeta, int64_t N, int64_t O, int64_t C) override {
    cuda::fold_affine_backward(w, g, beta, dwf, dbf, dw, db, dg, dbeta, N, O, C);
  }
  void adamw(const std::vector<AdamWTensor>& t, const GradScale& s) override { cuda::adamw(t, s); }
  void sgd(const std::vector<SgdTensor>& t, const GradScale& s) override { cuda::sgd(t, s); }
  void sum_of_squares(const std::vector<std::pair<const float*, int64_t>>& t, float* out) override {
    cuda::sum_of_squares(t, out);
  }
};

}  // namespace

Backend* cuda_backend() {
  if (!cuda_probe().available) return nullptr;
  static CudaBackend* backend = new CudaBackend();  // never destroyed: storages may outlive statics
  return backend;
}

}  // namespace duat
