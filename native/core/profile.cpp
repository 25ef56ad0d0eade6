// profile.cpp: the timing wrapper around the CPU backend (profile.h).
#include "profile.h"

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <utility>

#include "backend.h"
#include "parallel.h"

namespace duat {

namespace {

std::atomic<bool> g_on{false};

struct Usage {
  int64_t faults, kernel_us;
};
Usage usage() {
  rusage r{};
  getrusage(RUSAGE_SELF, &r);
  return {static_cast<int64_t>(r.ru_minflt), static_cast<int64_t>(r.ru_stime.tv_sec) * 1000000 + r.ru_stime.tv_usec};
}

// The totals of one kind of call (its label); the families' totals are their sums.
struct CallTotals {
  ProfileFamily family = PROFILE_PRODUCTS;
  double seconds = 0, flops = 0, idle_seconds = 0;
  int64_t calls = 0, faults = 0, kernel_us = 0;
};
std::mutex g_calls_mutex;
std::map<std::string, CallTotals> g_calls;

std::string shape_label(const GemmArgs& g) {
  std::string s = std::to_string(g.M) + "x" + std::to_string(g.N) + "x" + std::to_string(g.K);
  if (g.batch > 1) s += " (x" + std::to_string(g.batch) + ")";
  if (g.a_k != 1) s += " A^T";  // A read down its columns
  if (g.b_k != 1) s += " B";    // B(n, k) read across n: op(B) row-major
  if (g.norm_a) s += " norm+";  // A's rows normalised first (a LayerNorm fused in)
  if (g.epilogue == EPILOGUE_GELU) s += " +gelu";
  if (g.epilogue == EPILOGUE_STAGE) s += " +stage";
  return s;
}

std::chrono::steady_clock::time_point g_started;
Usage g_usage_started{};
thread_local int t_depth = 0;

// Times one backend call; nested calls (a backend calling itself) count once, in the outermost.
// `counters`: whether the process's page faults and kernel time are read around it (two system
// calls, ~3 us each on a VM); allocation calls go without: a cached allocation costs less than
// one, a step makes hundreds, and memory they hand out faults where it is first written, in the
// call that writes it.
class Scope {
 public:
  // Storages made while profiling keep the wrapper as their owner and are released through it
  // later: such calls, after profile_stop, cost nothing and count nowhere.
  Scope(ProfileFamily f, double flops, std::string label, bool counters = true)
      : family_(f),
        flops_(flops),
        label_(std::move(label)),
        on_(profiling()),
        outer_(on_ && t_depth++ == 0),
        counters_(counters) {
    if (outer_) {
      if (counters_) u0_ = usage();
      pool0_ = pool_use();
      t0_ = std::chrono::steady_clock::now();
    }
  }
  ~Scope() {
    if (!on_) return;
    t_depth--;
    if (!outer_) return;
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    const PoolUse pool1 = pool_use();
    const double idle = (get_num_threads() - 1) * dt +
                        static_cast<double>((pool1.wall_ns - pool0_.wall_ns) - (pool1.busy_ns - pool0_.busy_ns)) / 1e9;
    const Usage u1 = counters_ ? usage() : u0_;
    std::lock_guard<std::mutex> lock(g_calls_mutex);
    CallTotals& c = g_calls[label_];
    c.family = family_;
    c.seconds += dt;
    c.calls++;
    c.flops += flops_;
    c.idle_seconds += idle;
    c.faults += u1.faults - u0_.faults;
    c.kernel_us += u1.kernel_us - u0_.kernel_us;
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  ProfileFamily family_;
  double flops_;
  std::string label_;
  bool on_;
  bool outer_;
  bool counters_;
  Usage u0_{};
  PoolUse pool0_{};
  std::chrono::steady_clock::time_point t0_;
};

ProfileFamily map_family(MapOp op) {
  switch (op) {
    case MAP_COPY: return PROFILE_COPIES;
    case MAP_GELU:
    case MAP_GELU_GRAD: return PROFILE_GELU;
    default: return PROFILE_ELEMENTWISE;
  }
}

std::string dims(int nd, const int64_t* shape) {
  std::string s;
  for (int i = 0; i < nd; i++) s += (i ? "x" : "") + std::to_string(shape[i]);
  return nd ? s : "1";
}

std::string map_label(const MapArgs& a) {
  static const char* const NAMES[] = {"copy", "add", "sub", "mul", "div", "add_scalar", "mul_scalar", "gelu", "gelu_grad"};
  const int op = static_cast<int>(a.op);
  return std::string("map ") + (op >= 0 && op <= MAP_GELU_GRAD ? NAMES[op] : "?") + (a.accumulate ? "+=" : "") + " " +
         dims(a.nd, a.shape);
}

std::string reduce_label(const ReduceArgs& a) {
  std::string kept;
  for (int i = 0; i < a.nd; i++) kept += (i ? "x" : "") + std::to_string(a.out_strides[i] == 0 ? 1 : a.shape[i]);
  return "reduce " + dims(a.nd, a.shape) + " -> " + kept;
}

double attention_flops(const dm::AttnLayout& L, int64_t B, int64_t queries) {
  return 4.0 * static_cast<double>(B * L.N * L.H) * static_cast<double>(queries * L.T * L.D);  // QK^T and PV
}
double attention_flops(const dm::AttnLayout& L, int64_t B) { return attention_flops(L, B, L.T); }

class ProfilingBackend final : public Backend {
 public:
  explicit ProfilingBackend(Backend& inner) : in_(inner) {}
  const char* name() const override { return in_.name(); }

  void* allocate(size_t bytes, size_t* capacity) override {
    Scope s(PROFILE_ALLOCATION, 0, "allocate", false);
    return in_.allocate(bytes, capacity);
  }
  void* allocate_lasting(size_t bytes, size_t* capacity) override {
    Scope s(PROFILE_ALLOCATION, 0, "allocate", false);
    return in_.allocate_lasting(bytes, capacity);
  }
  void release(void* p, size_t capacity) override {
    Scope s(PROFILE_ALLOCATION, 0, "release", false);
    in_.release(p, capacity);
  }
  void upload(void* dst, const void* host, size_t bytes) override {
    Scope s(PROFILE_COPIES, 0, "upload");
    in_.upload(dst, host, bytes);
  }
  void download(void* host, const void* src, size_t bytes) override {
    Scope s(PROFILE_COPIES, 0, "download");
    in_.download(host, src, bytes);
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    Scope s(PROFILE_COPIES, 0, "copy");
    in_.copy(dst, src, bytes);
  }
  void fill(void* dst, int64_t words, uint32_t bits) override {
    Scope s(PROFILE_COPIES, 0, "fill");
    in_.fill(dst, words, bits);
  }
  void synchronize() override { in_.synchronize(); }
  int64_t launches() const override { return in_.launches(); }

  void map(const MapArgs& a) override {
    Scope s(map_family(a.op), 0, map_label(a));
    in_.map(a);
  }
  void reduce(const ReduceArgs& a) override {
    Scope s(PROFILE_ELEMENTWISE, 0, reduce_label(a));
    in_.reduce(a);
  }
  void gelu_backward_bias(const float* x, const float* dy, float* dx, float* db, int64_t batch, int64_t rows,
                          int64_t cols, bool accumulate) override {
    Scope s(PROFILE_GELU, 0,
            "gelu_backward_bias " + std::to_string(batch) + "x" + std::to_string(rows) + "x" + std::to_string(cols));
    in_.gelu_backward_bias(x, dy, dx, db, batch, rows, cols, accumulate);
  }
  void argmax_rows(const float* x, int32_t* out, int64_t rows, int64_t cols) override {
    Scope s(PROFILE_ELEMENTWISE, 0, "argmax_rows");
    in_.argmax_rows(x, out, rows, cols);
  }
  void count_correct(const float* logits, const int32_t* labels, float* out, int64_t B, int64_t K) override {
    Scope s(PROFILE_ELEMENTWISE, 0, "count_correct");
    in_.count_correct(logits, labels, out, B, K);
  }
  void softmax_forward(const float* x, float* y, int64_t rows, int64_t cols, bool log) override {
    Scope s(PROFILE_SOFTMAX, 0, "softmax_forward");
    in_.softmax_forward(x, y, rows, cols, log);
  }
  void softmax_backward(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols, bool log) override {
    Scope s(PROFILE_SOFTMAX, 0, "softmax_backward");
    in_.softmax_backward(y, dy, dx, rows, cols, log);
  }
  void layernorm_forward(const LayerNormArgs& a) override {
    Scope s(PROFILE_NORMS, 0, "layernorm_forward");
    in_.layernorm_forward(a);
  }
  void layernorm_backward(const LayerNormGradArgs& a) override {
    Scope s(PROFILE_NORMS, 0, "layernorm_backward");
    in_.layernorm_backward(a);
  }
  void cross_entropy(const float* logits, const int32_t* labels, float* loss, float* dlogits, int64_t B, int64_t K,
                     float smoothing) override {
    Scope s(PROFILE_SOFTMAX, 0, "cross_entropy");
    in_.cross_entropy(logits, labels, loss, dlogits, B, K, smoothing);
  }
  void dropout(const float* x, float* out, int64_t n, float p, uint64_t seed, bool accumulate) override {
    Scope s(PROFILE_ELEMENTWISE, 0, "dropout");
    in_.dropout(x, out, n, p, seed, accumulate);
  }
  void gemm(const GemmArgs& g) override {
    Scope s(PROFILE_PRODUCTS, 2.0 * g.M * static_cast<double>(g.N) * g.K * g.batch, shape_label(g));
    in_.gemm(g);
  }
  bool gemm_normalizes_rows() const override { return in_.gemm_normalizes_rows(); }
  int packed_b_width() const override { return in_.packed_b_width(); }
  void pack_b(const float* B, int64_t K, int64_t N, int64_t ldb, float* out) override {
    Scope s(PROFILE_COPIES, 0, "pack_b");
    in_.pack_b(B, K, N, ldb, out);
  }
  void gemm_gelu_backward(const GemmArgs& g, const float* pre, float* db) override {
    Scope s(PROFILE_PRODUCTS, 2.0 * g.M * static_cast<double>(g.N) * g.K * g.batch, shape_label(g) + " +gelu'");
    in_.gemm_gelu_backward(g, pre, db);
  }
  void attention_forward(const dm::AttnLayout& L, int64_t B, const float* qkv, float* out, float* lse) override {
    Scope s(PROFILE_ATTENTION, attention_flops(L, B), "attention_forward");
    in_.attention_forward(L, B, qkv, out, lse);
  }
  bool attention_first_queries() const override { return in_.attention_first_queries(); }
  void attention_forward_first(const dm::AttnLayout& L, int64_t B, int64_t queries, const float* qkv, float* out) override {
    Scope s(PROFILE_ATTENTION, attention_flops(L, B, queries), "attention_forward_first");
    in_.attention_forward_first(L, B, queries, qkv, out);
  }
  void attention_backward(const dm::AttnLayout& L, int64_t B, const float* dout, const float* qkv, const float* out,
                          const float* lse, float* delta, float* dqkv) override {
    // dV, dP, dQ, dK (the recomputed scores are not counted)
    Scope s(PROFILE_ATTENTION, 2 * attention_flops(L, B), "attention_backward");
    in_.attention_backward(L, B, dout, qkv, out, lse, delta, dqkv);
  }
  void attention_backward_bias(const dm::AttnLayout& L, int64_t B, const float* dout, const float* qkv,
                               const float* out, const float* lse, float* delta, float* dqkv, float* db) override {
    Scope s(PROFILE_ATTENTION, 2 * attention_flops(L, B), "attention_backward");
    in_.attention_backward_bias(L, B, dout, qkv, out, lse, delta, dqkv, db);
  }
  void attention_probs(const dm::AttnLayout& L, int64_t B, const float* qkv, float* probs) override {
    Scope s(PROFILE_ATTENTION, attention_flops(L, B) / 2, "attention_probs");
    in_.attention_probs(L, B, qkv, probs);
  }
  void patchify_forward(const float* images, float* patches, int64_t B, int64_t ch, int64_t S, int64_t P) override {
    Scope s(PROFILE_COPIES, 0, "patchify_forward");
    in_.patchify_forward(images, patches, B, ch, S, P);
  }
  void patchify_backward(const float* dpatches, float* dimages, int64_t B, int64_t ch, int64_t S, int64_t P) override {
    Scope s(PROFILE_COPIES, 0, "patchify_backward");
    in_.patchify_backward(dpatches, dimages, B, ch, S, P);
  }
  void fold_affine_forward(const float* w, const float* b, const float* g, const float* beta, float* wf, float* bf,
                           int64_t N, int64_t O, int64_t C) override {
    Scope s(PROFILE_ELEMENTWISE, 0, "fold_affine_forward");
    in_.fold_affine_forward(w, b, g, beta, wf, bf, N, O, C);
  }
  void fold_affine_backward(const float* w, const float* g, const float* beta, const float* dwf, const float* dbf,
                            float* dw, float* db, float* dg, float* dbeta, int64_t N, int64_t O, int64_t C) override {
    Scope s(PROFILE_ELEMENTWISE, 0, "fold_affine_backward");
    in_.fold_affine_backward(w, g, beta, dwf, dbf, dw, db, dg, dbeta, N, O, C);
  }
  void adamw(const std::vector<AdamWTensor>& t, const GradScale& g) override {
    Scope s(PROFILE_OPTIMIZER, 0, "adamw");
    in_.adamw(t, g);
  }
  void sgd(const std::vector<SgdTensor>& t, const GradScale& g) override {
    Scope s(PROFILE_OPTIMIZER, 0, "sgd");
    in_.sgd(t, g);
  }
  void sum_of_squares(const std::vector<std::pair<const float*, int64_t>>& t, float* out) override {
    Scope s(PROFILE_OPTIMIZER, 0, "sum_of_squares");
    in_.sum_of_squares(t, out);
  }

 private:
  Backend& in_;
};

}  // namespace

const char* profile_family_name(ProfileFamily f) {
  static const char* const NAMES[PROFILE_FAMILIES] = {"products", "attention", "norms", "gelu", "softmax",
                                                       "elementwise", "copies", "allocation", "optimizer"};
  return f >= 0 && f < PROFILE_FAMILIES ? NAMES[f] : "?";
}

Backend& profiling_backend(Backend& inner) {
  static ProfilingBackend* wrapper = new ProfilingBackend(inner);  // never destroyed: storages keep it as owner
  return *wrapper;
}

bool profiling() { return g_on.load(std::memory_order_relaxed); }

void profile_start() {
  {
    std::lock_guard<std::mutex> lock(g_calls_mutex);
    g_calls.clear();
  }
  g_usage_started = usage();
  g_started = std::chrono::steady_clock::now();
  pool_use_counting(true);
  g_on.store(true);
}

ProfileReport profile_stop() {
  g_on.store(false);
  pool_use_counting(false);
  ProfileReport r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - g_started).count();
  const Usage u = usage();
  r.process_page_faults = u.faults - g_usage_started.faults;
  r.process_kernel_seconds = static_cast<double>(u.kernel_us - g_usage_started.kernel_us) / 1e6;
  for (int f = 0; f < PROFILE_FAMILIES; f++) r.families.push_back({profile_family_name(static_cast<ProfileFamily>(f))});
  std::lock_guard<std::mutex> lock(g_calls_mutex);
  for (const auto& [label, c] : g_calls) {
    r.calls.push_back({label, profile_family_name(c.family), c.seconds, c.calls, c.flops, c.idle_seconds});
    ProfileEntry& e = r.families[c.family];
    e.seconds += c.seconds;
    e.calls += c.calls;
    e.flops += c.flops;
    e.page_faults += c.faults;
    e.kernel_seconds += static_cast<double>(c.kernel_us) / 1e6;
    e.idle_seconds += c.idle_seconds;
  }
  std::sort(r.calls.begin(), r.calls.end(), [](const ProfileCall& a, const ProfileCall& b) { return a.seconds > b.seconds; });
  return r;
}

}  // namespace duat
