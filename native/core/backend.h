// backend.h: what a device provides. Ops (native/ops) hold every shape rule, forward and backward
// once; for the work itself they call the Backend of their inputs' device. A device adds a
// Backend (kernels and memory), never a model or an op (docs/design.md, "How a device plugs in").
//
// Contract of every kernel below: pointers address memory of this backend's device, float32
// unless named otherwise; kernels trust their arguments (ops validated shapes and devices).
// "accumulate" means out += result; otherwise out = result, and out may hold garbage before.
// Calls are ordered as issued (one stream per device); host-visible results come back only
// through download(), which waits for the work before it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "device_math.h"

namespace duat {

enum Device : int { DEVICE_CPU = 0, DEVICE_CUDA = 1 };

// Matrix products on tensor cores: float32 operands rounded to TF32 or BF16, accumulation in
// float32. Backends without such units compute in float32 whatever is asked.
enum Precision : int { PRECISION_FP32 = 0, PRECISION_TF32 = 1, PRECISION_BF16 = 2 };
const char* precision_name(Precision p);
// The precision of products issued by this thread (default fp32); PrecisionScope sets it.
Precision matmul_precision();
class PrecisionScope {
 public:
  explicit PrecisionScope(Precision p);
  ~PrecisionScope();
  PrecisionScope(const PrecisionScope&) = delete;
  PrecisionScope& operator=(const PrecisionScope&) = delete;

 private:
  Precision prev_;
};

constexpr int MAX_DIMS = 16;  // tensors of more dimensions are refused at the edges

// ---- elementwise: out[i] (+)= f(a[i], b[i]) over a shape, each operand with its own strides ----
enum MapOp : int {
  MAP_COPY = 0,        // a (4-byte words of any dtype when not accumulating)
  MAP_ADD,             // a + b
  MAP_SUB,             // a - b
  MAP_MUL,             // a * b
  MAP_DIV,             // a / b
  MAP_ADD_SCALAR,      // a + scalar
  MAP_MUL_SCALAR,      // a * scalar
  MAP_GELU,            // gelu(a)
  MAP_GELU_GRAD,       // b * gelu'(a): a is the input, b the incoming gradient
};
struct MapArgs {
  MapOp op = MAP_COPY;
  int nd = 0;                     // after coalescing; 0 means one element
  int64_t shape[MAX_DIMS] = {};
  void* out = nullptr;
  int64_t out_strides[MAX_DIMS] = {};
  const void* a = nullptr;
  int64_t a_strides[MAX_DIMS] = {};
  const void* b = nullptr;        // binary ops only
  int64_t b_strides[MAX_DIMS] = {};
  float scalar = 0.0f;
  bool accumulate = false;
};

// ---- reduction: out[o(i)] (+)= scale * sum of in[i] over the elements i that share o(i) ----
// out_strides are 0 on reduced dimensions; accumulation in at least float32 (fp64 on the CPU).
struct ReduceArgs {
  int nd = 0;
  int64_t shape[MAX_DIMS] = {};
  const float* in = nullptr;
  int64_t in_strides[MAX_DIMS] = {};
  float* out = nullptr;
  int64_t out_strides[MAX_DIMS] = {};
  float scale = 1.0f;
  bool accumulate = false;
};

// ---- matrix product (strided, batched, fused epilogues) ----
// For every batch index z < batch:
//   C(m, n) = epilogue(alpha * sum_k A(m, k) B(n, k) + bias(n)) [+ beta * C(m, n) before]
// with A(m, k) = A[z*a_batch + m*a_m + k*a_k], B(n, k) = B[z*b_batch + n*b_n + k*b_k] and
// C(m, n) at C[z*c_batch + m*c_m + n]. Any layout (A or A^T, B or B^T) is a choice of strides,
// so forward and backward products share one kernel.
enum Epilogue : int {
  EPILOGUE_NONE = 0,
  EPILOGUE_GELU = 1,   // C = gelu(v); pre-activation v written to `aux` (laid out like C) when non-null
  EPILOGUE_STAGE = 2,  // C = resid(m, n) + scale * (v + sum_{j<nsum} extra[j*extra_batch + m*c_m + n])
};
struct GemmArgs {
  int M = 0, N = 0, K = 0, batch = 1;
  const float* A = nullptr;
  int64_t a_m = 0, a_k = 1, a_batch = 0;
  const float* B = nullptr;
  int64_t b_n = 0, b_k = 1, b_batch = 0;
  float* C = nullptr;
  int64_t c_m = 0, c_batch = 0;
  const float* bias = nullptr;  // bias[z*bias_batch + n]
  int64_t bias_batch = 0;
  float alpha = 1.0f, beta = 0.0f;
  Epilogue epilogue = EPILOGUE_NONE;
  float* aux = nullptr;          // GELU: pre-activation
  const float* resid = nullptr;  // STAGE: resid(m, n) at resid[m*c_m + n]
  const float* extra = nullptr;  // STAGE: nsum tensors laid out like C, extra_batch apart
  int nsum = 0;
  int64_t extra_batch = 0;
  float scale = 1.0f;
  // B also packed ahead (Backend::pack_b: panels b_packed_width wide, b_packed_stride floats
  // apart, b_packed_batch apart from batch item to item), read instead of B where the device's
  // products read panels of that width; B itself everywhere else. Null: none.
  const float* b_packed = nullptr;
  int64_t b_packed_stride = 0, b_packed_batch = 0;
  int b_packed_width = 0;
  // A's rows normalised as the product reads them, where Backend::gemm_normalizes_rows() (inference:
  // the LayerNorm before a product, fused into it): A(m, k) is taken as LayerNorm without affine
  // (LayerNormArgs, eps norm_eps) of A's row m plus norm_resid's row m % norm_resid_rows (rows
  // norm_resid_m apart; optional, the same for every batch item). A's rows contiguous (a_k = 1).
  bool norm_a = false;
  float norm_eps = 1e-6f;
  const float* norm_resid = nullptr;
  int64_t norm_resid_m = 0, norm_resid_rows = 0;
};

// ---- LayerNorm over rows of C ----
// y[r] = norm(x[r] + resid[r % resid_rows]) * gamma + beta; resid, gamma, beta optional;
// mean and rstd (rows) written when non-null (biased variance, eps inside the root).
struct LayerNormArgs {
  const float* x = nullptr;
  const float* resid = nullptr;
  int64_t resid_rows = 0;
  const float* gamma = nullptr;
  const float* beta = nullptr;
  float* y = nullptr;
  float* mean = nullptr;
  float* rstd = nullptr;
  int64_t rows = 0, C = 0;
  float eps = 1e-6f;
};
// Backward of the same row: dx (+)= (accumulate), dgamma and dbeta always accumulate (each may be
// null). With a residual input, no dgamma or dbeta; its gradient dresid (optional) is dx summed over
// the row sets (row r of set s is row s * resid_rows + r), the sets in order in fp64, rounded once
// to fp32 and then written (or added: resid_accumulate), as reduce sums; in the same pass as dx.
// rows > 0 (the op zeroes a residual's gradient itself when there are none).
struct LayerNormGradArgs {
  const float* dy = nullptr;
  const float* x = nullptr;
  const float* resid = nullptr;
  int64_t resid_rows = 0;
  const float* mean = nullptr;
  const float* rstd = nullptr;
  const float* gamma = nullptr;
  float* dx = nullptr;
  float* dgamma = nullptr;
  float* dbeta = nullptr;
  float* dresid = nullptr;
  int64_t rows = 0, C = 0;
  bool accumulate = false;
  bool resid_accumulate = false;
};

// ---- optimizer updates: many tensors in one call, each with its own options ----
// `sumsq` (a scalar on the device: the update never waits for the host) is the squared gradient
// norm. With max_norm > 0, gradients are multiplied by min(1, max_norm / (sqrt(*sumsq) + 1e-6))
// first (clipping); with skip_non_finite, a non-finite *sumsq skips the whole update: parameters
// and state stay as they were.
struct GradScale {
  const float* sumsq = nullptr;
  float max_norm = 0.0f;
  bool skip_non_finite = false;
};
// Every scalar of an update is computed once on the host in double (as PyTorch does), so the
// kernels do per-element arithmetic only.
struct AdamWTensor {
  float* param;
  const float* grad;
  float* m;
  float* v;
  int64_t n;
  float beta1, one_minus_beta1, beta2, one_minus_beta2, eps;
  float decay;         // 1 - lr * weight_decay
  float step_size;     // lr / (1 - beta1^t)
  float inv_sqrt_bc2;  // 1 / sqrt(1 - beta2^t)
};
struct SgdTensor {
  float* param;
  const float* grad;
  float* buf;  // momentum buffer, null when momentum is 0
  int64_t n;
  float lr, weight_decay, momentum, dampening;
  bool nesterov, first;  // first: the buffer starts as the gradient (PyTorch)
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // ---- memory ----
  // A block of at least `bytes` (64-byte aligned or better); *capacity is what was reserved,
  // handed back to release(). Throws ERROR_OUT_OF_MEMORY.
  virtual void* allocate(size_t bytes, size_t* capacity) = 0;
  virtual void release(void* p, size_t capacity) = 0;
  // The same, for memory kept long and read whole again and again (the packed inference weights):
  // a backend may place it where such reads are cheapest. Handed back to release() alike.
  virtual void* allocate_lasting(size_t bytes, size_t* capacity) { return allocate(bytes, capacity); }
  virtual void upload(void* dst, const void* host, size_t bytes) = 0;    // host -> device
  virtual void download(void* host, const void* src, size_t bytes) = 0;  // device -> host, waits
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;       // within the device
  virtual void fill(void* dst, int64_t words, uint32_t bits) = 0;        // 4-byte words
  virtual void synchronize() = 0;
  // Kernel launches issued so far (memory operations excluded): constant-in-N checks count them.
  virtual int64_t launches() const = 0;

  // ---- elementwise and reductions ----
  virtual void map(const MapArgs& a) = 0;
  virtual void reduce(const ReduceArgs& a) = 0;
  // GELU's backward with its bias gradient, over `batch` contiguous blocks of rows x cols:
  // dx = dy * gelu'(x) (written; dx may be dy) and db[b, c] (+)= sum over rows of dx[b, r, c].
  // This default is the map and the reduction; a backend may fuse them into one pass.
  virtual void gelu_backward_bias(const float* x, const float* dy, float* dx, float* db, int64_t batch,
                                  int64_t rows, int64_t cols, bool accumulate);
  // out[r] = index of the largest of x[r, 0..cols) (NaN counts as largest), int32.
  virtual void argmax_rows(const float* x, int32_t* out, int64_t rows, int64_t cols) = 0;
  // *out (float, written) = number of rows whose largest logit is the label's.
  virtual void count_correct(const float* logits, const int32_t* labels, float* out, int64_t B, int64_t K) = 0;
  // Over rows of `cols`: y = softmax(x) or log_softmax(x) (max subtracted first).
  virtual void softmax_forward(const float* x, float* y, int64_t rows, int64_t cols, bool log) = 0;
  // dx += y * (dy - sum(dy * y))  or, for log, dx += dy - exp(y) * sum(dy).
  virtual void softmax_backward(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols, bool log) = 0;
  virtual void layernorm_forward(const LayerNormArgs& a) = 0;
  virtual void layernorm_backward(const LayerNormGradArgs& a) = 0;
  // Mean cross-entropy of logits (B, K) against labels with label smoothing s (target
  // (1 - s) one-hot + s / K): *loss written; dlogits (B, K) = (softmax - target) / B written when
  // non-null. A label outside [0, K) makes the loss NaN and its row's gradient zero.
  virtual void cross_entropy(const float* logits, const int32_t* labels, float* loss, float* dlogits, int64_t B,
                             int64_t K, float smoothing) = 0;
  // out (+)= x * keep(i) / (1 - p), keep(i) = uniform_at(seed, i, 0) >= p.
  virtual void dropout(const float* x, float* out, int64_t n, float p, uint64_t seed, bool accumulate) = 0;

  // ---- products and attention ----
  virtual void gemm(const GemmArgs& g) = 0;  // in matmul_precision()
  // Whether gemm takes GemmArgs::norm_a (else the caller runs layernorm_forward first).
  virtual bool gemm_normalizes_rows() const { return false; }
  // Weights packed once for many products (inference): the width of the panels the device's
  // products read (0: none; B is read as it is), and the packing itself: out holds ceil(N / w)
  // panels of w = packed_b_width() columns of the row-major B (K x N, rows ldb apart), each K rows
  // of w floats (zeros past N).
  virtual int packed_b_width() const { return 0; }
  virtual void pack_b(const float* B, int64_t K, int64_t N, int64_t ldb, float* out);
  // The gradient before a GELU from the product that makes the gradient after it: the product g
  // (batch 1, beta 0, no bias, no epilogue; C's rows c_m >= N apart) gives dy, and C = dy * gelu'(pre)
  // (pre laid out like C) is written with db[n] = sum over m of C(m, n). This default is the
  // product and gelu_backward_bias; a backend may apply the GELU to each finished block of the
  // product while it is still in cache.
  virtual void gemm_gelu_backward(const GemmArgs& g, const float* pre, float* db);
  // qkv (B, T, N*3C) -> out (B, T, N*C) for every (b, n, h) (dm::AttnLayout); lse (B, N, H, T)
  // written when non-null (training keeps it: backward recomputes the probabilities from it).
  virtual void attention_forward(const dm::AttnLayout& L, int64_t B, const float* qkv, float* out, float* lse) = 0;
  // The first `queries` rows of attention_forward's out alone, out (B, queries, N*C) (inference of
  // the class token: every key and value, one query), no statistics; where
  // attention_first_queries() says the device has it (else attention_first in ops.h computes
  // every row and keeps the first). This default refuses.
  virtual bool attention_first_queries() const { return false; }
  virtual void attention_forward_first(const dm::AttnLayout& L, int64_t B, int64_t queries, const float* qkv, float* out);
  // dqkv (B, T, N*3C) written from dout, qkv, out and lse; delta is scratch of (B, N, H, T).
  virtual void attention_backward(const dm::AttnLayout& L, int64_t B, const float* dout, const float* qkv,
                                  const float* out, const float* lse, float* delta, float* dqkv) = 0;
  // attention_backward, and db (N*3C) = the sums of dqkv's columns over its B*T rows: the QKV
  // bias's gradient (ops.h, GeluLink). This default: the backward, then a reduction; a backend may
  // sum each head's gradient while it is still in cache.
  virtual void attention_backward_bias(const dm::AttnLayout& L, int64_t B, const float* dout, const float* qkv,
                                       const float* out, const float* lse, float* delta, float* dqkv, float* db);
  // probs (B, N*H, T, T) = softmax(Q K^T / sqrt(D)) of every (b, n, h).
  virtual void attention_probs(const dm::AttnLayout& L, int64_t B, const float* qkv, float* probs) = 0;

  // ---- images and the branch folds ----
  // images (B, ch, S, S) -> patches (B, T, ch*P*P) (dm::patch_pixel's order); backward adds back.
  virtual void patchify_forward(const float* images, float* patches, int64_t B, int64_t ch, int64_t S, int64_t P) = 0;
  virtual void patchify_backward(const float* dpatches, float* dimages, int64_t B, int64_t ch, int64_t S,
                                 int64_t P) = 0;
  // A LayerNorm affine folded into the linear layer after it, per branch n:
  //   wf[n] = w[n] diag(g[n]), bf[n] = w[n] beta[n] + b[n]    w (N, O, C), b (N, O) or null, g, beta (N, C)
  virtual void fold_affine_forward(const float* w, const float* b, const float* g, const float* beta, float* wf,
                                   float* bf, int64_t N, int64_t O, int64_t C) = 0;
  // Its backward, every output written: dw = dwf diag(g) + dbf beta^T, db = dbf (when non-null),
  // dg = sum_o dwf * w, dbeta = sum_o dbf[o] w[o].
  virtual void fold_affine_backward(const float* w, const float* g, const float* beta, const float* dwf,
                                    const float* dbf, float* dw, float* db, float* dg, float* dbeta, int64_t N,
                                    int64_t O, int64_t C) = 0;

  // ---- optimizers ----
  virtual void adamw(const std::vector<AdamWTensor>& t, const GradScale& s) = 0;
  virtual void sgd(const std::vector<SgdTensor>& t, const GradScale& s) = 0;
  // *out (written) = sum of squares of every element of every tensor.
  virtual void sum_of_squares(const std::vector<std::pair<const float*, int64_t>>& t, float* out) = 0;
};

// The backends, each defined in its own folder: native/cpu, native/cuda (null in a build without
// nvcc and where CUDA is unusable), native/testdev.
Backend& cpu_backend();
Backend* cuda_backend();
Backend& test_device_backend();

// The backend serving a device. For DEVICE_CUDA: the test device while it is switched on, else
// the CUDA backend, else a DeviceError that says why CUDA is unusable.
Backend& backend(Device device);
const char* device_name(Device device);

// What DEVICE_CUDA is served by.
struct CudaInfo {
  bool built = false;      // compiled with nvcc
  bool available = false;  // a usable device (or the test device)
  bool test_device = false;
  int devices = 0;
  int runtime_version = 0, driver_version = 0;
  std::string device;  // name and compute capability, or the test device's description
  std::string reason;  // why CUDA is unusable (empty when available)
};
CudaInfo cuda_info();
// What the CUDA runtime itself reports, probed once (native/cuda/probe.cu, or the stubs).
const CudaInfo& cuda_probe();

// The test device: DEVICE_CUDA served by host memory and the CPU kernels, so the CPU test suite
// runs every CUDA code path but the kernels themselves (docs/design.md, "Testing without a GPU").
// Its memory is poisoned with NaN when allocated, host access to it is refused like real device
// memory, and it counts launches. Switching needs no CUDA storage alive (ERROR_STATE otherwise).
void set_test_device(bool on);
bool test_device_enabled();
// Bytes of live storage on DEVICE_CUDA (either kind): switching is refused while it is non-zero.
int64_t cuda_live_bytes();

}  // namespace duat
