// cpu_backend.h: the CPU's Backend (core/backend.h), the reference every other device is
// checked against. Memory comes from the block cache (cpu_backend.cpp); elementwise, reduction
// and row kernels are in cpu_backend.cpp, products, attention, folds and optimizers in cpu_nn.cpp.
// Work is split over the one thread pool (core/parallel.h); matrix products run on sgemm.
#pragma once
#include "../core/backend.h"

namespace duat {

class CpuBackend : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  void* allocate(size_t bytes, size_t* capacity) override;
  void* allocate_lasting(size_t bytes, size_t* capacity) override;
  void release(void* p, size_t capacity) override;
  void upload(void* dst, const void* host, size_t bytes) override;
  void download(void* host, const void* src, size_t bytes) override;
  void copy(void* dst, const void* src, size_t bytes) override;
  void fill(void* dst, int64_t words, uint32_t bits) override;
  void synchronize() override {}
  int64_t launches() const override { return 0; }

  void map(const MapArgs& a) override;
  void reduce(const ReduceArgs& a) override;
  void argmax_rows(const float* x, int32_t* out, int64_t rows, int64_t cols) override;
  void count_correct(const float* logits, const int32_t* labels, float* out, int64_t B, int64_t K) override;
  void softmax_forward(const float* x, float* y, int64_t rows, int64_t cols, bool log) override;
  void gelu_backward_bias(const float* x, const float* dy, float* dx, float* db, int64_t batch, int64_t rows,
                          int64_t cols, bool accumulate) override;
  void softmax_backward(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols, bool log) override;
  void layernorm_forward(const LayerNormArgs& a) override;
  void layernorm_backward(const LayerNormGradArgs& a) override;
  void cross_entropy(const float* logits, const int32_t* labels, float* loss, float* dlogits, int64_t B, int64_t K,
                     float smoothing) override;
  void dropout(const float* x, float* out, int64_t n, float p, uint64_t seed, bool accumulate) override;

  void gemm(const GemmArgs& g) override;
  bool gemm_normalizes_rows() const override { return true; }
  int packed_b_width() const override;
  void pack_b(const float* B, int64_t K, int64_t N, int64_t ldb, float* out) override;
  void gemm_gelu_backward(const GemmArgs& g, const float* pre, float* db) override;
  void attention_forward(const dm::AttnLayout& L, int64_t B, const float* qkv, float* out, float* lse) override;
  bool attention_first_queries() const override { return true; }
  void attention_forward_first(const dm::AttnLayout& L, int64_t B, int64_t queries, const float* qkv, float* out) override;
  void attention_backward(const dm::AttnLayout& L, int64_t B, const float* dout, const float* qkv, const float* out,
                          const float* lse, float* delta, float* dqkv) override;
  void attention_backward_bias(const dm::AttnLayout& L, int64_t B, const float* dout, const float* qkv, const float* out,
                               const float* lse, float* delta, float* dqkv, float* db) override;
  void attention_probs(const dm::AttnLayout& L, int64_t B, const float* qkv, float* probs) override;

  void patchify_forward(const float* images, float* patches, int64_t B, int64_t ch, int64_t S, int64_t P) override;
  void patchify_backward(const float* dpatches, float* dimages, int64_t B, int64_t ch, int64_t S, int64_t P) override;
  void fold_affine_forward(const float* w, const float* b, const float* g, const float* beta, float* wf, float* bf,
                           int64_t N, int64_t O, int64_t C) override;
  void fold_affine_backward(const float* w, const float* g, const float* beta, const float* dwf, const float* dbf,
                            float* dw, float* db, float* dg, float* dbeta, int64_t N, int64_t O, int64_t C) override;

  void adamw(const std::vector<AdamWTensor>& t, const GradScale& s) override;
  void sgd(const std::vector<SgdTensor>& t, const GradScale& s) override;
  void sum_of_squares(const std::vector<std::pair<const float*, int64_t>>& t, float* out) override;
};

// The 2 MiB chunks that lasting blocks (allocate_lasting) are laid in, held now (for tests).
int64_t lasting_chunks_held();

}  // namespace duat
