// gpu_parity.cu: the CUDA backend against the CPU on a GPU, without Node (`npm run test:gpu`
// builds and runs it; scripts/gpu-suite.sh adds compute-sanitizer). Two parts:
//   1. the kernels that carry the model's arithmetic (the matrix product in every layout,
//      epilogue, split-K and precision; LayerNorm; attention) against float64 references;
//   2. the device checks of tests/parity.h: every op's forward and every input's gradient on CUDA
//      against the CPU, the whole model's logits and gradients, two training steps, and the
//      launches of a forward and of a step constant in the branch count, in fp32, TF32 and BF16.
// Inputs are fresh random numbers each run (the seed is printed; --seed repeats a run); kernel
// outputs are poisoned with NaN before every launch, so an element a kernel forgets to write
// fails, and NaN never passes.
//
//   duat_gpu_parity [--quick] [--seed S] [--test-device]
// --test-device runs part 2 against the test device (host memory, CPU kernels) where no GPU is
// present: a check of the checks. Exit status: 0 when every check passed, 1 when one failed, 2 when
// no GPU is usable (and --test-device was not given).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cuda/kernels.h"
#include "tests/parity.h"

using namespace duat;
using namespace duat::cuda;

namespace {

std::mt19937_64 rng;
parity::Report g_report;

// An owning device buffer of floats for the kernel checks.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(size_t n) : p_(static_cast<float*>(device_alloc(std::max<size_t>(n, 1) * sizeof(float)))) {}
  ~DeviceBuffer() { device_free(p_); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_) { o.p_ = nullptr; }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  float* get() const { return p_; }

 private:
  float* p_;
};

DeviceBuffer upload(const float* host, size_t n) {
  DeviceBuffer d(n);
  check_cuda(cudaMemcpyAsync(d.get(), host, n * sizeof(float), cudaMemcpyHostToDevice, stream()), "upload");
  return d;
}

std::vector<float> random_vector(size_t n, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

DeviceBuffer poisoned(size_t n) {
  DeviceBuffer d(n);
  check_cuda(cudaMemsetAsync(d.get(), 0xFF, n * sizeof(float), stream()), "poison");  // all-ones bits: NaN
  return d;
}

std::vector<float> fetch(const DeviceBuffer& d, size_t n) {
  std::vector<float> h(n);
  check_cuda(cudaMemcpyAsync(h.data(), d.get(), n * sizeof(float), cudaMemcpyDeviceToHost, stream()), "fetch");
  check_cuda(cudaStreamSynchronize(stream()), "kernel");
  return h;
}

// ||out - ref|| / ||ref||; infinity when out holds a NaN or an infinity.
double rel_error(const std::vector<float>& out, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < out.size(); i++) {
    if (!std::isfinite(out[i])) return INFINITY;
    num += (out[i] - ref[i]) * (out[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

void report(const std::string& name, Precision p, double err, double tol) {
  g_report.check(err <= tol, "kernel " + name + " (" + precision_name(p) + ")", err, tol);
}

// One product against float64: fp32 differs by summation order (1e-5), TF32 and BF16 by their
// operand rounding.
double tolerance(Precision p) { return p == PRECISION_FP32 ? 1e-5 : p == PRECISION_TF32 ? 1e-3 : 1e-2; }

// Runs one check; an exception (a failed launch, say) fails it and the run goes on.
template <typename F>
void guarded(const std::string& what, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    g_report.check(false, what + ": threw " + e.what(), INFINITY, 0);
    cudaGetLastError();
  }
}

// ---- matrix product ---------------------------------------------------------------------------
struct GemmCase {
  std::string name;
  int M, N, K, batch;
  bool a_trans, b_trans;  // a_trans: A stored (K, M); b_trans: B stored (K, N) (the NN product)
  Epilogue epilogue;
  bool bias;
  float alpha, beta;
  int nsum;
};

void check_gemm(const GemmCase& c, Precision p) {
  const int64_t M = c.M, N = c.N, K = c.K, Z = c.batch;
  std::vector<float> A = random_vector(Z * M * K), B = random_vector(Z * N * K), bias = random_vector(Z * N);
  std::vector<float> C0 = random_vector(Z * M * N), resid = random_vector(M * N), extra = random_vector(std::max(1, c.nsum) * M * N);
  DeviceBuffer dA = upload(A.data(), A.size()), dB = upload(B.data(), B.size()), dbias = upload(bias.data(), bias.size());
  DeviceBuffer dresid = upload(resid.data(), resid.size()), dextra = upload(extra.data(), extra.size());
  DeviceBuffer dC = c.beta != 0.0f ? upload(C0.data(), C0.size()) : poisoned(C0.size());
  DeviceBuffer daux = poisoned(C0.size());
  GemmArgs g;
  g.M = c.M, g.N = c.N, g.K = c.K, g.batch = c.batch;
  g.A = dA.get(), g.a_batch = M * K;
  if (c.a_trans) g.a_m = 1, g.a_k = M; else g.a_m = K, g.a_k = 1;
  g.B = dB.get(), g.b_batch = N * K;
  if (c.b_trans) g.b_n = 1, g.b_k = N; else g.b_n = K, g.b_k = 1;
  g.C = dC.get(), g.c_m = N, g.c_batch = M * N;
  if (c.bias) g.bias = dbias.get(), g.bias_batch = N;
  g.alpha = c.alpha, g.beta = c.beta, g.epilogue = c.epilogue;
  if (c.epilogue == EPILOGUE_GELU) g.aux = daux.get();
  if (c.epilogue == EPILOGUE_STAGE) g.resid = dresid.get(), g.extra = dextra.get(), g.nsum = c.nsum, g.extra_batch = M * N, g.scale = 0.5f;
  gemm(g, p);
  const std::vector<float> out = fetch(dC, C0.size());
  std::vector<double> ref(C0.size()), pre(C0.size());
  for (int64_t z = 0; z < Z; z++)
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) {
        double acc = 0;
        for (int64_t k = 0; k < K; k++) {
          const double a = c.a_trans ? A[z * M * K + k * M + m] : A[z * M * K + m * K + k];
          const double b = c.b_trans ? B[z * N * K + k * N + n] : B[z * N * K + n * K + k];
          acc += a * b;
        }
        double v = c.alpha * acc + (c.bias ? bias[z * N + n] : 0.0);
        const int64_t at = z * M * N + m * N + n;
        pre[at] = v;
        if (c.epilogue == EPILOGUE_GELU) v = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
        if (c.epilogue == EPILOGUE_STAGE) {
          double s = 0;
          for (int j = 0; j < c.nsum; j++) s += extra[j * M * N + m * N + n];
          v = resid[m * N + n] + 0.5 * (v + s);
        }
        ref[at] = v + c.beta * C0[at];
      }
  report("gemm " + c.name, p, rel_error(out, ref), tolerance(effective_precision(p)));
  if (c.epilogue == EPILOGUE_GELU) report("gemm " + c.name + " (pre-activation)", p, rel_error(fetch(daux, C0.size()), pre), tolerance(effective_precision(p)));
}

// ---- LayerNorm --------------------------------------------------------------------------------
void check_layernorm(int64_t rows, int64_t C, int64_t resid_rows, bool affine) {
  std::vector<float> x = random_vector(rows * C), r = random_vector(resid_rows * C), g = random_vector(C), b = random_vector(C);
  for (float& v : x) v += 3.0f;  // a mean far from zero
  for (float& v : g) v += 1.0f;
  DeviceBuffer dx = upload(x.data(), x.size()), dr = upload(r.data(), r.size()), dg = upload(g.data(), C), db = upload(b.data(), C);
  DeviceBuffer dy = poisoned(rows * C), dmean = poisoned(rows), drstd = poisoned(rows);
  LayerNormArgs la;
  la.x = dx.get(), la.resid = resid_rows ? dr.get() : nullptr, la.resid_rows = resid_rows;
  la.gamma = affine ? dg.get() : nullptr, la.beta = affine ? db.get() : nullptr;
  la.y = dy.get(), la.mean = dmean.get(), la.rstd = drstd.get(), la.rows = rows, la.C = C, la.eps = 1e-6f;
  layernorm_forward(la);
  std::vector<double> ref(rows * C), ref_mean(rows), ref_rstd(rows);
  std::vector<double> in(rows * C);
  for (int64_t i = 0; i < rows; i++) {
    double mu = 0, var = 0;
    for (int64_t c = 0; c < C; c++) {
      in[i * C + c] = x[i * C + c] + (resid_rows ? r[(i % resid_rows) * C + c] : 0.0);
      mu += in[i * C + c];
    }
    mu /= C;
    for (int64_t c = 0; c < C; c++) var += (in[i * C + c] - mu) * (in[i * C + c] - mu);
    const double rs = 1.0 / std::sqrt(var / C + 1e-6);
    for (int64_t c = 0; c < C; c++) ref[i * C + c] = (in[i * C + c] - mu) * rs * (affine ? g[c] : 1.0) + (affine ? b[c] : 0.0);
    ref_mean[i] = mu;
    ref_rstd[i] = rs;
  }
  const std::string name = "layerNorm forward rows " + std::to_string(rows) + " C " + std::to_string(C) +
                           (resid_rows ? " + residual" : "") + (affine ? " affine" : "");
  report(name, PRECISION_FP32, rel_error(fetch(dy, rows * C), ref), 1e-5);
  report(name + " (mean, rstd)", PRECISION_FP32,
         std::max(rel_error(fetch(dmean, rows), ref_mean), rel_error(fetch(drstd, rows), ref_rstd)), 1e-5);

  // Backward: dx, and dgamma, dbeta without a residual; with one, dx and the residual's gradient
  // (dx summed over the row sets), both added to what their buffers held.
  std::vector<float> gy = random_vector(rows * C), dx0 = random_vector(rows * C), dr0 = random_vector(resid_rows * C);
  DeviceBuffer dgy = upload(gy.data(), gy.size()), ddx = resid_rows ? upload(dx0.data(), dx0.size()) : poisoned(rows * C),
               ddr = upload(dr0.data(), dr0.size()), ddg = upload(std::vector<float>(C, 0.0f).data(), C),
               ddb = upload(std::vector<float>(C, 0.0f).data(), C);
  LayerNormGradArgs lg;
  lg.dy = dgy.get(), lg.x = dx.get(), lg.mean = dmean.get(), lg.rstd = drstd.get(), lg.gamma = affine ? dg.get() : nullptr;
  lg.dx = ddx.get(), lg.rows = rows, lg.C = C;
  if (resid_rows) {
    lg.resid = dr.get(), lg.resid_rows = resid_rows, lg.dresid = ddr.get();
    lg.accumulate = lg.resid_accumulate = true;
  } else {
    lg.dgamma = ddg.get(), lg.dbeta = ddb.get();
  }
  layernorm_backward(lg);
  std::vector<double> rdx(rows * C), rdg(C, 0.0), rdb(C, 0.0), rdr(dr0.begin(), dr0.end());
  for (int64_t i = 0; i < rows; i++) {
    double mg = 0, mgx = 0;
    std::vector<double> xh(C), gg(C);
    for (int64_t c = 0; c < C; c++) {
      xh[c] = (in[i * C + c] - ref_mean[i]) * ref_rstd[i];
      gg[c] = gy[i * C + c] * (affine ? g[c] : 1.0);
      mg += gg[c];
      mgx += gg[c] * xh[c];
      rdg[c] += gy[i * C + c] * xh[c];
      rdb[c] += gy[i * C + c];
    }
    mg /= C;
    mgx /= C;
    for (int64_t c = 0; c < C; c++) {
      const double d = ref_rstd[i] * (gg[c] - mg - xh[c] * mgx);
      rdx[i * C + c] = d + (resid_rows ? dx0[i * C + c] : 0.0);
      if (resid_rows) rdr[(i % resid_rows) * C + c] += d;
    }
  }
  report("layerNorm backward dx C " + std::to_string(C) + (resid_rows ? " + residual" : ""), PRECISION_FP32,
         rel_error(fetch(ddx, rows * C), rdx), 1e-5);
  if (resid_rows) {
    report("layerNorm backward residual's gradient C " + std::to_string(C), PRECISION_FP32,
           rel_error(fetch(ddr, resid_rows * C), rdr), 1e-5);
    return;
  }
  report("layerNorm backward dgamma, dbeta C " + std::to_string(C), PRECISION_FP32,
         std::max(rel_error(fetch(ddg, C), rdg), rel_error(fetch(ddb, C), rdb)), 1e-5);
}

// ---- attention --------------------------------------------------------------------------------
void check_attention(int64_t B, int64_t T, int64_t N, int64_t H, int64_t D) {
  const int64_t C = H * D;
  const dm::AttnLayout L{T, C, N, H, D};
  std::vector<float> qkv = random_vector(B * T * N * 3 * C), gout = random_vector(B * T * N * C);
  DeviceBuffer dqkv = upload(qkv.data(), qkv.size()), dout = poisoned(B * T * N * C), dlse = poisoned(B * N * H * T);
  attention_forward(L, B, dqkv.get(), dout.get(), dlse.get());
  std::vector<double> out(B * T * N * C), lse(B * N * H * T), dref(qkv.size(), 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(D));
  for (int64_t b = 0; b < B; b++)
    for (int64_t n = 0; n < N; n++)
      for (int64_t h = 0; h < H; h++) {
        const float* q = qkv.data() + L.q_offset(b, n, h);
        const float* k = qkv.data() + L.k_offset(b, n, h);
        const float* v = qkv.data() + L.v_offset(b, n, h);
        const int64_t ld = L.ld_in(), ldo = L.ld_out();
        std::vector<double> P(T * T), dP(T * T);
        for (int64_t i = 0; i < T; i++) {
          double mx = -INFINITY;
          for (int64_t j = 0; j < T; j++) {
            double s = 0;
            for (int64_t d = 0; d < D; d++) s += static_cast<double>(q[i * ld + d]) * k[j * ld + d];
            P[i * T + j] = s * scale;
            mx = std::max(mx, s * scale);
          }
          double sum = 0;
          for (int64_t j = 0; j < T; j++) sum += std::exp(P[i * T + j] - mx);
          lse[L.stat_offset(b, n, h) + i] = mx + std::log(sum);
          for (int64_t j = 0; j < T; j++) P[i * T + j] = std::exp(P[i * T + j] - mx) / sum;
          for (int64_t d = 0; d < D; d++) {
            double o = 0;
            for (int64_t j = 0; j < T; j++) o += P[i * T + j] * v[j * ld + d];
            out[L.out_offset(b, n, h) + i * ldo + d] = o;
          }
        }
        // Backward: dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(dP P)), dQ = dS K s, dK = dS^T Q s.
        const float* go = gout.data() + L.out_offset(b, n, h);
        for (int64_t i = 0; i < T; i++) {
          double delta = 0;
          for (int64_t j = 0; j < T; j++) {
            double dp = 0;
            for (int64_t d = 0; d < D; d++) dp += static_cast<double>(go[i * ldo + d]) * v[j * ld + d];
            dP[i * T + j] = dp;
            delta += dp * P[i * T + j];
          }
          for (int64_t j = 0; j < T; j++) {
            const double ds = P[i * T + j] * (dP[i * T + j] - delta) * scale;
            for (int64_t d = 0; d < D; d++) {
              dref[L.q_offset(b, n, h) + i * ld + d] += ds * k[j * ld + d];
              dref[L.k_offset(b, n, h) + j * ld + d] += ds * q[i * ld + d];
              dref[L.v_offset(b, n, h) + j * ld + d] += P[i * T + j] * go[i * ldo + d];
            }
          }
        }
      }
  const std::string shape = "B " + std::to_string(B) + " T " + std::to_string(T) + " N " + std::to_string(N) + " H " +
                            std::to_string(H) + " D " + std::to_string(D);
  const std::vector<float> got = fetch(dout, out.size());
  report("attention forward " + shape, PRECISION_FP32, rel_error(got, out), 1e-5);
  report("attention forward log-sum-exp " + shape, PRECISION_FP32, rel_error(fetch(dlse, lse.size()), lse), 1e-5);
  DeviceBuffer dgout = upload(gout.data(), gout.size()), ddelta = poisoned(B * N * H * T), ddqkv = poisoned(qkv.size());
  attention_backward(L, B, dgout.get(), dqkv.get(), dout.get(), dlse.get(), ddelta.get(), ddqkv.get());
  report("attention backward " + shape, PRECISION_FP32, rel_error(fetch(ddqkv, qkv.size()), dref), 1e-5);
}


void run_kernel_checks(bool quick) {
  const std::vector<Precision> precisions = {PRECISION_FP32, PRECISION_TF32, PRECISION_BF16};
  const std::vector<GemmCase> cases = {
      {"NT 65x576x192 + bias (QKV)", 65, 576, 192, 1, false, false, EPILOGUE_NONE, true, 1.0f, 0.0f, 0},
      {"NN 130x96x70, alpha 0.5, beta 1 (dx)", 130, 96, 70, 1, false, true, EPILOGUE_NONE, false, 0.5f, 1.0f, 0},
      {"TN 192x64x1000 split-K (dweight)", 192, 64, 1000, 1, true, false, EPILOGUE_NONE, false, 1.0f, 0.0f, 0},
      {"batched x3 NT 77x100x48 + bias, GELU", 77, 100, 48, 3, false, false, EPILOGUE_GELU, true, 1.0f, 0.0f, 0},
      {"NT 65x192x3072 split-K, stage epilogue (fc2)", 65, 192, 3072, 1, false, false, EPILOGUE_STAGE, true, 1.0f, 0.0f, 4},
      {"NT 1x10x7 + bias (tiny)", 1, 10, 7, 1, false, false, EPILOGUE_NONE, true, 1.0f, 0.0f, 0},
      {"NT 520x768x192 + bias (fc1, batch 8)", 520, 768, 192, 1, false, false, EPILOGUE_NONE, true, 1.0f, 0.0f, 0},
  };
  for (Precision p : precisions)
    for (const GemmCase& c : cases) guarded("gemm " + c.name, [&] { check_gemm(c, p); });
  guarded("layerNorm", [&] { check_layernorm(300, 64, 0, true); });
  guarded("layerNorm", [&] { check_layernorm(301, 192, 0, false); });
  guarded("layerNorm", [&] { check_layernorm(300, 100, 100, false); });
  guarded("layerNorm", [&] { check_layernorm(400, 192, 100, false); });
  guarded("layerNorm", [&] { check_layernorm(129, 1024, 0, true); });
  guarded("layerNorm", [&] { check_layernorm(64, 7, 0, true); });
  guarded("attention", [&] { check_attention(2, 65, 3, 3, 64); });
  guarded("attention", [&] { check_attention(3, 50, 2, 4, 16); });
  guarded("attention", [&] { check_attention(1, 33, 1, 2, 32); });
  guarded("attention", [&] { check_attention(2, 17, 2, 1, 8); });
  // Head sizes the kernels are not built for run padded to the next one up.
  guarded("attention", [&] { check_attention(2, 19, 2, 3, 2); });
  guarded("attention", [&] { check_attention(1, 40, 1, 2, 12); });
  guarded("attention", [&] { check_attention(2, 65, 1, 3, 48); });
  if (!quick) {
    guarded("attention", [&] { check_attention(1, 70, 1, 2, 128); });
    guarded("attention", [&] { check_attention(1, 50, 2, 2, 80); });
    guarded("attention", [&] { check_attention(1, 9, 1, 1, 1); });
  }
  // Past 128 the shared tiles would not fit: a typed refusal, before any launch.
  bool refused = false;
  try {
    attention_forward(dm::AttnLayout{4, 129, 1, 1, 129}, 1, nullptr, nullptr, nullptr);
  } catch (const Error& e) {
    refused = e.code() == ERROR_DEVICE;
  } catch (const std::exception&) {
  }
  g_report.check(refused, "kernel attention refuses head size 129 with a device error", refused ? 0 : INFINITY, 0);
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, use_test_device = false;
  uint64_t seed = std::random_device{}();
  for (int i = 1; i < argc; i++) {
    const std::string a = argv[i];
    if (a == "--quick") quick = true;
    else if (a == "--test-device") use_test_device = true;
    else if (a == "--seed" && i + 1 < argc) seed = std::stoull(argv[++i]);
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  const CudaInfo& st = cuda_probe();
  if (!st.available && !use_test_device) {
    std::printf("CUDA unusable, GPU parity skipped: %s\n", st.reason.c_str());
    return 2;
  }
  rng.seed(seed);
  try {
    if (st.available) {
      std::printf("device %s, CUDA runtime %d, driver %d, seed %llu\n", st.device.c_str(), st.runtime_version,
                  st.driver_version, static_cast<unsigned long long>(seed));
      run_kernel_checks(quick);
    } else {
      std::printf("no GPU (%s): the device checks run against the test device, seed %llu\n", st.reason.c_str(),
                  static_cast<unsigned long long>(seed));
      set_test_device(true);
    }
    parity::check_all(DEVICE_CUDA, {PRECISION_FP32, PRECISION_TF32, PRECISION_BF16}, rng, g_report, quick);
    if (st.available) {
      const AllocatorStats a = allocator_stats();
      std::printf("allocator: %lld driver allocations, %lld cache hits, peak %.1f MB\n",
                  static_cast<long long>(a.driver_allocs), static_cast<long long>(a.cache_hits), a.peak / 1e6);
    }
  } catch (const std::exception& e) {
    std::printf("FAIL %s\n", e.what());
    return 1;
  }
  std::printf("%d passed, %d failed\n", g_report.passed, g_report.failed);
  return g_report.failed == 0 ? 0 : 1;
}
