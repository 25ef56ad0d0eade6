// gpu_parity.cu: every CUDA kernel against a CPU reference, then the forward latency of
// Para-Former-1-n against a serial ViT of depth n. Runs without Node (`npm run test:gpu` builds
// and runs it). Inputs are fresh random numbers each run (the seed is printed; --seed repeats a
// run); outputs are poisoned with NaN before every launch, so an element a kernel forgets to
// write fails, and NaN never passes.
//
//   duat_gpu_parity [--quick] [--seed S] [--bench] [--profile] [--precision fp32|tf32|bf16]
//                   [--reps R] [--max-n N] [--out results.md] [--no-parity] [--batch B]
//                   [--bench-train] [--train-mnist IDX_DIR [--epochs E] [--batch-size B] [--lr LR] [--depth m] [--branches n]]
// Exit status: 0 when every check passed, 1 when one failed, 2 when no GPU is usable.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_kernels.h"
#include "cuda/cuda_memory.h"
#include "cuda/cuda_model.h"
#include "cuda/cuda_train.h"
#include "cuda/device_math.h"
#include "model/paraformer.h"
#include "ops/ops.h"

using namespace duat;
using namespace duat::cuda;

namespace {

std::mt19937_64 rng;

std::vector<float> random_vector(size_t n, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

DeviceBuffer poisoned(size_t n) {
  DeviceBuffer d(n);
  check_cuda(cudaMemset(d.get(), 0xFF, n * sizeof(float)), "poison");  // all-ones bits: NaN
  return d;
}

std::vector<float> fetch(const DeviceBuffer& d, size_t n) {
  check_cuda(cudaDeviceSynchronize(), "kernel");
  std::vector<float> h(n);
  download(d.get(), h.data(), n);
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

int g_passed = 0, g_failed = 0;

// Runs one check; an exception (a failed launch, say) fails it and the run goes on.
template <typename F>
void guarded(const std::string& what, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    g_failed++;
    std::printf("FAIL %s: %s\n", what.c_str(), e.what());
    cudaGetLastError();
  }
}

void report(const std::string& name, Precision p, double err, double tol) {
  const bool ok = err <= tol;  // false for NaN
  (ok ? g_passed : g_failed)++;
  std::printf("%-4s %-58s %-5s rel err %.2e (tol %.0e)\n", ok ? "ok" : "FAIL", name.c_str(), precision_name(p), err, tol);
}

double tolerance(Precision p) { return p == PRECISION_FP32 ? 1e-5 : p == PRECISION_TF32 ? 1e-3 : 1e-2; }

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
  gemm(g, p, nullptr);
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
  layernorm_forward(dx.get(), resid_rows ? dr.get() : nullptr, resid_rows, affine ? dg.get() : nullptr,
                    affine ? db.get() : nullptr, dy.get(), dmean.get(), drstd.get(), rows, C, 1e-6f, nullptr);
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

  // Backward of the plain (no residual) case: dx, dgamma, dbeta.
  if (resid_rows) return;
  std::vector<float> gy = random_vector(rows * C);
  DeviceBuffer dgy = upload(gy.data(), gy.size()), ddx = poisoned(rows * C), ddg = upload(std::vector<float>(C, 0.0f).data(), C),
               ddb = upload(std::vector<float>(C, 0.0f).data(), C);
  layernorm_backward(dgy.get(), dx.get(), nullptr, 0, dmean.get(), drstd.get(), affine ? dg.get() : nullptr, ddx.get(),
                     ddg.get(), ddb.get(), rows, C, false, nullptr);
  std::vector<double> rdx(rows * C), rdg(C, 0.0), rdb(C, 0.0);
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
    for (int64_t c = 0; c < C; c++) rdx[i * C + c] = ref_rstd[i] * (gg[c] - mg - xh[c] * mgx);
  }
  report("layerNorm backward dx C " + std::to_string(C), PRECISION_FP32, rel_error(fetch(ddx, rows * C), rdx), 1e-5);
  report("layerNorm backward dgamma, dbeta C " + std::to_string(C), PRECISION_FP32,
         std::max(rel_error(fetch(ddg, C), rdg), rel_error(fetch(ddb, C), rdb)), 1e-5);
}

// ---- attention --------------------------------------------------------------------------------
void check_attention(int64_t B, int64_t T, int64_t N, int64_t H, int64_t D) {
  const int64_t C = H * D;
  const dm::AttnLayout L{T, C, N, H, D};
  std::vector<float> qkv = random_vector(B * T * N * 3 * C), gout = random_vector(B * T * N * C);
  DeviceBuffer dqkv = upload(qkv.data(), qkv.size()), dout = poisoned(B * T * N * C), dlse = poisoned(B * N * H * T);
  attention_forward(dqkv.get(), dout.get(), dlse.get(), B, T, N, H, D, nullptr);
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
  attention_backward(dgout.get(), dqkv.get(), dout.get(), dlse.get(), ddelta.get(), ddqkv.get(), B, T, N, H, D, nullptr);
  report("attention backward " + shape, PRECISION_FP32, rel_error(fetch(ddqkv, qkv.size()), dref), 1e-5);
}

// ---- small kernels ------------------------------------------------------------------------------
void check_small_kernels() {
  {
    const int64_t n = 100003;
    std::vector<float> dy = random_vector(n), x = random_vector(n, 2.0f);
    DeviceBuffer ddy = upload(dy.data(), n), dx = upload(x.data(), n), out = poisoned(n);
    gelu_backward(ddy.get(), dx.get(), out.get(), n, nullptr);
    std::vector<double> ref(n);
    for (int64_t i = 0; i < n; i++) {
      const double v = x[i];
      ref[i] = dy[i] * (0.5 * (1 + std::erf(v / std::sqrt(2.0))) + v * std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI));
    }
    report("gelu backward n 100003", PRECISION_FP32, rel_error(fetch(out, n), ref), 1e-5);
  }
  {
    const int64_t rows = 4161, cols = 197;
    std::vector<float> x = random_vector(rows * cols);
    DeviceBuffer dx = upload(x.data(), x.size()), out = poisoned(cols);
    sum_rows(dx.get(), out.get(), 1, rows, cols, 0, false, nullptr);
    std::vector<double> ref(cols, 0.0);
    for (int64_t r = 0; r < rows; r++)
      for (int64_t c = 0; c < cols; c++) ref[c] += x[r * cols + c];
    report("sum over rows 4161 x 197", PRECISION_FP32, rel_error(fetch(out, cols), ref), 1e-5);
  }
  {
    const int64_t B = 67, K = 10;
    std::vector<float> z = random_vector(B * K, 3.0f);
    std::vector<int32_t> y(B);
    for (int64_t i = 0; i < B; i++) y[i] = static_cast<int32_t>(rng() % K);
    DeviceBuffer dz = upload(z.data(), z.size()), loss = poisoned(1), dlog = poisoned(B * K);
    int32_t* dy = static_cast<int32_t*>(device_alloc(B * sizeof(int32_t)));
    check_cuda(cudaMemcpy(dy, y.data(), B * sizeof(int32_t), cudaMemcpyHostToDevice), "labels");
    const float eps_ls = 0.1f;
    cross_entropy(dz.get(), dy, loss.get(), dlog.get(), B, K, eps_ls, nullptr);
    std::vector<double> rl(1, 0.0), rd(B * K);
    for (int64_t i = 0; i < B; i++) {
      double mx = -INFINITY, s = 0;
      for (int64_t c = 0; c < K; c++) mx = std::max(mx, static_cast<double>(z[i * K + c]));
      double zs = 0;
      for (int64_t c = 0; c < K; c++) s += std::exp(z[i * K + c] - mx), zs += z[i * K + c];
      const double lse = mx + std::log(s);
      rl[0] += ((1 - eps_ls) * (lse - z[i * K + y[i]]) + eps_ls * (lse - zs / K)) / B;
      for (int64_t c = 0; c < K; c++)
        rd[i * K + c] = (std::exp(z[i * K + c] - mx) / s - ((c == y[i]) * (1 - eps_ls) + eps_ls / K)) / B;
    }
    report("cross entropy loss B 67 K 10, smoothing 0.1", PRECISION_FP32, rel_error(fetch(loss, 1), rl), 1e-5);
    report("cross entropy dlogits B 67 K 10, smoothing 0.1", PRECISION_FP32, rel_error(fetch(dlog, B * K), rd), 1e-5);
    device_free(dy);
  }
  {
    std::vector<float> a = random_vector(5000), b = random_vector(33);
    DeviceBuffer da = upload(a.data(), a.size()), db = upload(b.data(), b.size()), out = poisoned(1);
    sum_of_squares({{da.get(), 5000}, {db.get(), 33}}, out.get(), nullptr);
    std::vector<double> ref(1, 0.0);
    for (float v : a) ref[0] += double(v) * v;
    for (float v : b) ref[0] += double(v) * v;
    report("sum of squares over 2 tensors", PRECISION_FP32, rel_error(fetch(out, 1), ref), 1e-5);
  }
  {
    // Three tensors of different sizes in one launch, two steps.
    std::vector<int64_t> sizes = {1000, 37, 70001};
    std::vector<std::vector<float>> p, g, m, v;
    std::vector<DeviceBuffer> dp, dg, dm_, dv;
    std::vector<AdamWTensor> table;
    for (size_t i = 0; i < sizes.size(); i++) {
      p.push_back(random_vector(sizes[i]));
      g.push_back(random_vector(sizes[i]));
      m.push_back(random_vector(sizes[i], 0.1f));
      v.push_back(random_vector(sizes[i], 0.1f));
      for (float& x : v.back()) x = std::fabs(x);
      dp.push_back(upload(p[i].data(), sizes[i]));
      dg.push_back(upload(g[i].data(), sizes[i]));
      dm_.push_back(upload(m[i].data(), sizes[i]));
      dv.push_back(upload(v[i].data(), sizes[i]));
      table.push_back({dp[i].get(), dg[i].get(), dm_[i].get(), dv[i].get(), sizes[i], i == 2 ? 2e-2f : 1e-2f,
                       i == 1 ? 0.0f : 0.05f});
    }
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    for (int step = 3; step <= 4; step++) adamw_multi(table, b1, b2, eps, step, 0.5f, nullptr);
    double worst = 0;
    for (size_t i = 0; i < sizes.size(); i++) {
      std::vector<double> ref(sizes[i]);
      for (int64_t j = 0; j < sizes[i]; j++) {
        double pp = p[i][j], mm = m[i][j], vv = v[i][j];
        const double lr = i == 2 ? 2e-2 : 1e-2;
        for (int step = 3; step <= 4; step++) {
          const double wd = i == 1 ? 0.0 : 0.05;
          const double gs = 0.5 * g[i][j];  // grad_scale
          mm = b1 * mm + (1 - b1) * gs;
          vv = b2 * vv + (1 - b2) * gs * gs;
          const double bc1 = 1 - std::pow(static_cast<double>(b1), step), bc2 = 1 - std::pow(static_cast<double>(b2), step);
          pp = pp * (1 - lr * wd) - lr / bc1 * mm / (std::sqrt(vv) / std::sqrt(bc2) + eps);
        }
        ref[j] = pp;
      }
      worst = std::max(worst, rel_error(fetch(dp[i], sizes[i]), ref));
    }
    report("adamw, 3 tensors (own lr, decay), gradients x0.5, one launch, 2 steps", PRECISION_FP32, worst, 1e-5);
  }
}

// ---- the model --------------------------------------------------------------------------------
ModelConfig tiny_config(int64_t depth, int64_t branches) {
  ModelConfig c;
  c.image_size = 32, c.patch_size = 4, c.channels = 3, c.classes = 10;
  c.dim = 192, c.heads = 3, c.mlp_hidden = 768, c.depth = depth, c.branches = branches;
  return c;
}

ModelParams random_params(const ModelConfig& c, uint64_t seed) {
  std::vector<Tensor> list;
  const std::vector<std::string> names = model_param_names(c);
  const std::vector<Shape> shapes = model_param_shapes(c);
  for (size_t i = 0; i < names.size(); i++) {
    const std::string& n = names[i];
    const bool norm_weight = n.find("norm") != std::string::npos && n.find("weight") != std::string::npos;
    const float std = n.find("bias") != std::string::npos ? 0.05f : (norm_weight ? 0.2f : 0.1f);
    list.push_back(randn(shapes[i], seed + i, norm_weight ? 1.0f : 0.0f, std));
  }
  return model_params_from_list(c, list);
}

void check_model(const ModelConfig& c, const std::string& name, Precision p, int64_t B) {
  GradMode no_grad(false);
  const ModelParams params = random_params(c, rng());
  const Tensor images = randn({B, c.channels, c.image_size, c.image_size}, rng(), 0.0f, 1.0f);
  const Tensor ref = model_forward(images, params, c);
  CudaModel model(c, params, p);
  DeviceBuffer dimg = upload(images->f32(), images->numel()), dlogits = poisoned(B * c.classes);
  const int64_t before = launch_count();
  model.forward(dimg.get(), B, dlogits.get(), nullptr);
  const int64_t launches = launch_count() - before;
  const std::vector<float> got = fetch(dlogits, B * c.classes);
  std::vector<double> r(ref->f32(), ref->f32() + ref->numel());
  // The model compounds many products; its tolerances are those of one product, times 10.
  report("model " + name + " logits (" + std::to_string(launches) + " launches)", p, rel_error(got, r),
         10 * tolerance(effective_precision(p)));
  if (launches != model.launches_per_forward()) {
    g_failed++;
    std::printf("FAIL launches per forward: %lld, expected %lld\n", static_cast<long long>(launches),
                static_cast<long long>(model.launches_per_forward()));
  }
}


// ---- training: every parameter's gradient against the CPU autograd ---------------------------------
std::vector<std::vector<float>> host_params(const ModelParams& p) {
  std::vector<std::vector<float>> out;
  for (const Tensor& t : model_param_list(p)) out.emplace_back(t->f32(), t->f32() + t->numel());
  return out;
}

int64_t check_training(const ModelConfig& c, const std::string& name, Precision p, int64_t B, float smoothing = 0.0f) {
  const ModelParams params = random_params(c, rng());
  const Tensor images = randn({B, c.channels, c.image_size, c.image_size}, rng(), 0.0f, 1.0f);
  const Tensor labels = empty({B}, DTYPE_I32);
  for (int64_t i = 0; i < B; i++) labels->i32()[i] = static_cast<int32_t>(rng() % c.classes);
  // CPU reference: autograd through the op graph.
  std::vector<Tensor> leaves = model_param_list(params);
  for (Tensor& t : leaves) t->requires_grad = true;
  const Tensor loss = cross_entropy(model_forward(images, model_params_from_list(c, leaves), c), labels, smoothing);
  backward(loss, nullptr);
  // GPU.
  CudaTrainer trainer(c, host_params(params), p, AdamWConfig{});
  DeviceBuffer dimg = upload(images->f32(), images->numel());
  int32_t* dlabels = static_cast<int32_t*>(device_alloc(B * sizeof(int32_t)));
  check_cuda(cudaMemcpy(dlabels, labels->i32(), B * sizeof(int32_t), cudaMemcpyHostToDevice), "labels");
  trainer.forward_backward(dimg.get(), dlabels, B, nullptr, smoothing);  // warm-up (workspaces), then measured
  const int64_t before = launch_count();
  const float gpu_loss = trainer.forward_backward(dimg.get(), dlabels, B, nullptr, smoothing);
  const int64_t launches = launch_count() - before;
  device_free(dlabels);
  const double tol = 10 * tolerance(effective_precision(p));
  report("training " + name + " loss", p, rel_error({gpu_loss}, {static_cast<double>(loss->f32()[0])}), tol);
  const std::vector<std::vector<float>> grads = trainer.download_grads();
  const std::vector<std::string> names = model_param_names(c);
  double worst = 0;
  std::string worst_name;
  for (size_t i = 0; i < grads.size(); i++) {
    const Tensor& g = leaves[i]->grad;
    std::vector<double> ref(grads[i].size(), 0.0);
    if (g) {
      const Tensor gc = g->is_contiguous() ? g : contiguous(g);
      for (size_t k = 0; k < ref.size(); k++) ref[k] = gc->f32()[k];
    }
    const double e = rel_error(grads[i], ref);
    if (!(e <= worst)) worst = e, worst_name = names[i];
  }
  report("training " + name + " gradients (" + std::to_string(launches) + " launches; worst " + worst_name + ")", p,
         worst, tol);
  return launches;
}

void run_parity(bool quick) {
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
  guarded("layerNorm", [&] { check_layernorm(129, 1024, 0, true); });
  guarded("layerNorm", [&] { check_layernorm(64, 7, 0, true); });
  guarded("attention", [&] { check_attention(2, 65, 3, 3, 64); });
  guarded("attention", [&] { check_attention(3, 50, 2, 4, 16); });
  guarded("attention", [&] { check_attention(1, 33, 1, 2, 32); });
  guarded("attention", [&] { check_attention(2, 17, 2, 1, 8); });
  if (!quick) guarded("attention", [&] { check_attention(1, 70, 1, 2, 128); });
  guarded("small kernels", [&] { check_small_kernels(); });
  ModelConfig mnist;
  mnist.depth = 2, mnist.branches = 3;  // 28 x 28, patch 4, dim 64, 4 heads, M 128
  ModelConfig mean_cfg = mnist;
  mean_cfg.branch_scale = 1.0f / 3.0f;
  for (Precision p : precisions) {
    guarded("model", [&] { check_model(mnist, "para-former-2-3 mnist-size, B 3", p, 3); });
    guarded("model", [&] { check_model(mean_cfg, "para-former-2-3 mean of branches, B 2", p, 2); });
    if (!quick) guarded("model", [&] { check_model(tiny_config(1, 4), "para-former-1-4 tiny 32x32, B 2", p, 2); });
  }
  for (Precision p : precisions) {
    guarded("training", [&] { check_training(mnist, "para-former-2-3 mnist-size, B 4", p, 4); });
    guarded("training", [&] { check_training(mean_cfg, "para-former-2-3 mean, smoothing 0.1, B 3", p, 3, 0.1f); });
  }
  guarded("training launches", [&] {
    ModelConfig one = mnist, many = mnist;
    one.branches = 1, many.branches = 6;
    const int64_t a = check_training(one, "para-former-2-1, B 2", PRECISION_FP32, 2);
    const int64_t b = check_training(many, "para-former-2-6, B 2", PRECISION_FP32, 2);
    (a == b ? g_passed : g_failed)++;
    std::printf("%-4s launches per training step: %lld with 1 branch, %lld with 6\n", a == b ? "ok" : "FAIL",
                static_cast<long long>(a), static_cast<long long>(b));
  });
}

// ---- benchmark ----------------------------------------------------------------------------------
struct Timing {
  double eager_ms, graph_ms;
  int64_t launches;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

Timing time_forward(const ModelConfig& c, int64_t B, Precision p, int reps) {
  GradMode no_grad(false);
  CudaModel model(c, random_params(c, rng()), p);
  // Several input sets in rotation, so repeated runs do not all hit one cached buffer.
  constexpr int SETS = 4;
  std::vector<DeviceBuffer> imgs;
  for (int i = 0; i < SETS; i++) {
    const std::vector<float> h = random_vector(B * c.channels * c.image_size * c.image_size);
    imgs.push_back(upload(h.data(), h.size()));
  }
  DeviceBuffer logits(B * c.classes);
  cudaStream_t s;
  check_cuda(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "stream");
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  Timing t{};
  for (int i = 0; i < 10; i++) model.forward(imgs[i % SETS].get(), B, logits.get(), s);  // warm-up
  check_cuda(cudaStreamSynchronize(s), "warm-up");
  const int64_t before = launch_count();
  model.forward(imgs[0].get(), B, logits.get(), s);
  t.launches = launch_count() - before;
  // Median of `reps` runs of `launch`, timed with events on the stream.
  auto timed = [&](const std::function<void(int)>& launch, const char* what) {
    std::vector<double> ms;
    for (int i = 0; i < reps; i++) {
      cudaEventRecord(e0, s);
      launch(i);
      cudaEventRecord(e1, s);
      check_cuda(cudaEventSynchronize(e1), what);
      float v = 0;
      cudaEventElapsedTime(&v, e0, e1);
      ms.push_back(v);
    }
    return median(ms);
  };
  t.eager_ms = timed([&](int i) { model.forward(imgs[i % SETS].get(), B, logits.get(), s); }, "eager forward");
  // The same forward captured once as a CUDA graph and replayed (no launch gaps).
  std::vector<cudaGraphExec_t> execs(SETS);
  for (int i = 0; i < SETS; i++) {
    cudaGraph_t graph;
    check_cuda(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed), "capture");
    model.forward(imgs[i].get(), B, logits.get(), s);
    check_cuda(cudaStreamEndCapture(s, &graph), "capture end");
    check_cuda(cudaGraphInstantiate(&execs[i], graph, 0), "graph instantiate");
    cudaGraphDestroy(graph);
  }
  for (int i = 0; i < 5; i++) cudaGraphLaunch(execs[i % SETS], s);
  t.graph_ms = timed([&](int i) { cudaGraphLaunch(execs[i % SETS], s); }, "graph forward");
  for (cudaGraphExec_t e : execs) cudaGraphExecDestroy(e);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaStreamDestroy(s);
  return t;
}

std::string run_bench(Precision p, int reps, int max_n) {
  std::string md;
  char line[512];
  const std::vector<int64_t> batches = {1, 8, 64};
  std::snprintf(line, sizeof line,
                "Forward latency (ms, median of %d) of Para-Former-1-n and a serial ViT of depth n (Para-Former-n-1),\n"
                "tiny width (dim 192, 3 heads, MLP 768), 32x32x3 inputs, patch 4 (65 tokens), %s products.\n"
                "'eager': one launch after another from the host; 'graph': the same launches replayed as a CUDA graph.\n\n",
                reps, precision_name(effective_precision(p)));
  md += line;
  md += "| n | launches PF-1-n | launches ViT-n |";
  for (int64_t b : batches)
    for (const char* m : {"PF-1-n", "ViT-n"}) {
      std::snprintf(line, sizeof line, " %s b%lld eager | %s b%lld graph |", m, static_cast<long long>(b), m,
                    static_cast<long long>(b));
      md += line;
    }
  md += "\n|---|---|---|";
  for (size_t i = 0; i < batches.size() * 4; i++) md += "---|";
  md += "\n";
  std::vector<std::vector<Timing>> pf(max_n + 1), vit(max_n + 1);
  for (int n = 1; n <= max_n; n++) {
    for (int64_t b : batches) {
      pf[n].push_back(time_forward(tiny_config(1, n), b, p, reps));
      vit[n].push_back(time_forward(tiny_config(n, 1), b, p, reps));
    }
    std::snprintf(line, sizeof line, "| %d | %lld | %lld |", n, static_cast<long long>(pf[n][0].launches),
                  static_cast<long long>(vit[n][0].launches));
    md += line;
    for (size_t i = 0; i < batches.size(); i++) {
      std::snprintf(line, sizeof line, " %.3f | %.3f | %.3f | %.3f |", pf[n][i].eager_ms, pf[n][i].graph_ms,
                    vit[n][i].eager_ms, vit[n][i].graph_ms);
      md += line;
    }
    md += "\n";
    std::fprintf(stderr, "bench n=%d done\n", n);
  }
  // Ratios to n = 1 at the largest n measured and at 12 (when measured).
  std::vector<int> ns = {max_n};
  if (max_n > 12) ns.insert(ns.begin(), 12);
  if (max_n > 1) {
    md += "\nRatios to n = 1 (eager):\n\n| batch |";
    for (int n : ns) {
      std::snprintf(line, sizeof line, " PF-1-%d / PF-1-1 | ViT-%d / ViT-1 |", n, n);
      md += line;
    }
    md += "\n|---|";
    for (size_t k = 0; k < ns.size(); k++) md += "---|---|";
    md += "\n";
    for (size_t i = 0; i < batches.size(); i++) {
      std::snprintf(line, sizeof line, "| %lld |", static_cast<long long>(batches[i]));
      md += line;
      for (int n : ns) {
        std::snprintf(line, sizeof line, " %.2fx | %.2fx |", pf[n][i].eager_ms / pf[1][i].eager_ms,
                      vit[n][i].eager_ms / vit[1][i].eager_ms);
        md += line;
      }
      md += "\n";
    }
  }
  return md;
}

// ---- MNIST training on the GPU, the recipe of `duat train` (lib/cli.ts, lib/train/fit.ts) -------
struct Idx {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;
};

Idx read_idx(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw std::runtime_error("cannot open " + path);
  unsigned char head[4];
  Idx idx;
  if (std::fread(head, 1, 4, f) != 4 || head[0] != 0 || head[1] != 0 || head[2] != 8) {
    std::fclose(f);
    throw std::runtime_error(path + " is not an IDX file of unsigned bytes");
  }
  int64_t n = 1;
  for (int i = 0; i < head[3]; i++) {
    unsigned char d[4];
    if (std::fread(d, 1, 4, f) != 4) break;
    idx.dims.push_back((int64_t(d[0]) << 24) | (d[1] << 16) | (d[2] << 8) | d[3]);
    n *= idx.dims.back();
  }
  idx.data.resize(n);
  const size_t got = std::fread(idx.data.data(), 1, n, f);
  std::fclose(f);
  if (static_cast<int64_t>(got) != n) throw std::runtime_error(path + " is truncated");
  return idx;
}

// timm's initialisation, as lib/nn/ParaFormer.ts draws it (same distributions, not the same draws).
std::vector<std::vector<float>> init_params(const ModelConfig& c, uint64_t seed) {
  std::mt19937_64 g(seed);
  const std::vector<std::string> names = model_param_names(c);
  const std::vector<Shape> shapes = model_param_shapes(c);
  std::vector<std::vector<float>> out;
  const float bound = 1.0f / std::sqrt(static_cast<float>(c.channels * c.patch_size * c.patch_size));
  for (size_t i = 0; i < names.size(); i++) {
    const std::string& n = names[i];
    std::vector<float> v(shape_numel(shapes[i]), 0.0f);
    auto trunc = [&](float std, float lim) {
      std::normal_distribution<float> d(0.0f, std);
      for (float& x : v) do x = d(g); while (std::fabs(x) > lim);
    };
    if (n.find("norm") != std::string::npos && n.find("weight") != std::string::npos) std::fill(v.begin(), v.end(), 1.0f);
    else if (n.rfind("patch_embed.", 0) == 0) {
      std::uniform_real_distribution<float> d(-bound, bound);
      for (float& x : v) x = d(g);
    } else if (n.size() > 5 && n.compare(n.size() - 5, 5, ".bias") == 0) {
    } else if (n == "cls_token") trunc(1e-6f, 2e-6f);
    else trunc(0.02f, 0.04f);
    out.push_back(std::move(v));
  }
  return out;
}

int run_mnist(const std::string& dir, int epochs, int batch, float lr, Precision p, uint64_t seed, int branches, int depth) {
  const Idx xtr = read_idx(dir + "/train-images-idx3-ubyte"), ytr = read_idx(dir + "/train-labels-idx1-ubyte");
  const Idx xte = read_idx(dir + "/t10k-images-idx3-ubyte"), yte = read_idx(dir + "/t10k-labels-idx1-ubyte");
  const int64_t ntr = ytr.dims[0], nte = yte.dims[0], S = 28, px = S * S;
  const float mean = 0.1307f, std = 0.3081f, background = -mean / std;
  ModelConfig c;  // the CLI's default: para-former-2-2, mnist size, patch 7
  c.image_size = 28, c.patch_size = 7, c.channels = 1, c.classes = 10, c.dim = 64, c.heads = 4, c.mlp_hidden = 128;
  c.depth = depth, c.branches = branches;
  CudaTrainer trainer(c, init_params(c, seed), p, AdamWConfig{});
  const int warmup = 300;
  const int64_t per_epoch = dm::ceil_div(ntr, batch), total = per_epoch * epochs;
  const float min_lr = lr / 100;
  std::mt19937_64 g(seed + 1);
  std::vector<int64_t> order(ntr);
  std::vector<float> images(batch * px);
  std::vector<int32_t> labels(batch);
  DeviceBuffer dimg(std::max<int64_t>(batch, 1000) * px);
  int32_t* dlab = static_cast<int32_t*>(device_alloc(batch * sizeof(int32_t)));
  std::printf("MNIST on %s: para-former-%d-%d (dim 64, 4 heads, MLP 128, patch 7), %d epochs, batch %d, AdamW lr %g "
              "(warm-up %d, cosine to %g), weight decay 0.05, shift 2, %s products, seed %llu\n",
              cuda_status().device.c_str(), depth, branches, epochs, batch, lr, warmup, min_lr,
              precision_name(effective_precision(p)), static_cast<unsigned long long>(seed));
  const auto start = std::chrono::steady_clock::now();
  int64_t step = 0;
  double best = 0, last = 0;
  for (int e = 0; e < epochs; e++) {
    for (int64_t i = 0; i < ntr; i++) order[i] = i;
    std::shuffle(order.begin(), order.end(), g);
    double loss_sum = 0;
    for (int64_t k = 0; k < per_epoch; k++) {
      const int64_t lo = k * batch, B = std::min<int64_t>(batch, ntr - lo);
      std::uniform_int_distribution<int> shift(-2, 2);
      for (int64_t b = 0; b < B; b++) {
        const int64_t src = order[lo + b];
        labels[b] = ytr.data[src];
        const int dx = shift(g), dy = shift(g);
        for (int y = 0; y < S; y++)
          for (int x = 0; x < S; x++) {
            const int sy = y + dy, sx = x + dx;
            images[b * px + y * S + x] = sy >= 0 && sy < S && sx >= 0 && sx < S
                                             ? (xtr.data[src * px + sy * S + sx] / 255.0f - mean) / std
                                             : background;
          }
      }
      check_cuda(cudaMemcpy(dimg.get(), images.data(), B * px * sizeof(float), cudaMemcpyHostToDevice), "batch");
      check_cuda(cudaMemcpy(dlab, labels.data(), B * sizeof(int32_t), cudaMemcpyHostToDevice), "labels");
      float rate;
      if (step < warmup) rate = lr * (step + 1) / warmup;
      else {
        const double t = std::min(1.0, double(step - warmup) / std::max<int64_t>(1, total - warmup));
        rate = static_cast<float>(min_lr + 0.5 * (lr - min_lr) * (1 + std::cos(M_PI * t)));
      }
      loss_sum += trainer.step(dimg.get(), dlab, B, rate, nullptr);
      step++;
    }
    // Test accuracy, 1000 images per forward.
    int64_t correct = 0;
    std::vector<float> timg(1000 * px), logits(1000 * 10);
    for (int64_t lo = 0; lo < nte; lo += 1000) {
      const int64_t B = std::min<int64_t>(1000, nte - lo);
      for (int64_t i = 0; i < B * px; i++) timg[i] = (xte.data[lo * px + i] / 255.0f - mean) / std;
      check_cuda(cudaMemcpy(dimg.get(), timg.data(), B * px * sizeof(float), cudaMemcpyHostToDevice), "test batch");
      const float* out = trainer.forward(dimg.get(), B, nullptr);
      check_cuda(cudaMemcpy(logits.data(), out, B * 10 * sizeof(float), cudaMemcpyDeviceToHost), "logits");
      for (int64_t b = 0; b < B; b++)
        correct += std::max_element(&logits[b * 10], &logits[b * 10] + 10) - &logits[b * 10] == yte.data[lo + b];
    }
    last = 100.0 * correct / nte;
    best = std::max(best, last);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("epoch %2d  loss %.4f  test accuracy %.2f%%  %.1f s\n", e + 1, loss_sum / per_epoch, last, secs);
    std::fflush(stdout);
  }
  device_free(dlab);
  std::printf("final test accuracy %.2f%% (best %.2f%%)\n", last, best);
  return 0;
}

// Training throughput: a full step (forward, backward, AdamW) of Para-Former-1-n and the serial
// ViT of depth n at one batch size, tiny width, images per second from the median step time.
std::string run_train_bench(Precision p, int reps, int64_t B) {
  std::string md = "Training step (forward, backward, AdamW) at batch " + std::to_string(B) + ", tiny width, 32x32x3, " +
                   precision_name(effective_precision(p)) + " products; median of " + std::to_string(reps) +
                   " steps (ms) and images/s.\n\n| n | PF-1-n ms | PF-1-n img/s | ViT-n ms | ViT-n img/s | launches PF-1-n | launches ViT-n |\n|---|---|---|---|---|---|---|\n";
  for (int n : {1, 2, 4, 8, 12}) {
    double ms[2];
    int64_t launches[2];
    for (int k = 0; k < 2; k++) {
      const ModelConfig c = k == 0 ? tiny_config(1, n) : tiny_config(n, 1);
      CudaTrainer trainer(c, init_params(c, rng()), p, AdamWConfig{});
      const std::vector<float> h = random_vector(B * c.channels * c.image_size * c.image_size);
      DeviceBuffer img = upload(h.data(), h.size());
      std::vector<int32_t> y(B);
      for (int64_t i = 0; i < B; i++) y[i] = static_cast<int32_t>(rng() % c.classes);
      int32_t* dy = static_cast<int32_t*>(device_alloc(B * sizeof(int32_t)));
      check_cuda(cudaMemcpy(dy, y.data(), B * sizeof(int32_t), cudaMemcpyHostToDevice), "labels");
      for (int i = 0; i < 5; i++) trainer.step(img.get(), dy, B, 1e-4f, nullptr);
      const int64_t before = launch_count();
      trainer.step(img.get(), dy, B, 1e-4f, nullptr);
      launches[k] = launch_count() - before;
      std::vector<double> t;
      for (int i = 0; i < reps; i++) {
        const auto t0 = std::chrono::steady_clock::now();
        trainer.step(img.get(), dy, B, 1e-4f, nullptr);  // ends with a synchronising loss read
        t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
      ms[k] = median(t);
      device_free(dy);
    }
    char line[256];
    std::snprintf(line, sizeof line, "| %d | %.3f | %.0f | %.3f | %.0f | %lld | %lld |\n", n, ms[0], 1e3 * B / ms[0], ms[1],
                  1e3 * B / ms[1], static_cast<long long>(launches[0]), static_cast<long long>(launches[1]));
    md += line;
  }
  return md;
}

// Where one forward's time goes: an event after every launch, medians over `reps` forwards.
struct EventTracer : LaunchTracer {
  std::vector<std::pair<std::string, cudaEvent_t>> marks;
  size_t next = 0;
  void mark(const char* what, cudaStream_t s) override {
    if (next == marks.size()) {
      cudaEvent_t e;
      cudaEventCreate(&e);
      marks.push_back({what, e});
    }
    cudaEventRecord(marks[next++].second, s);
  }
};

std::string run_profile(const ModelConfig& c, const std::string& name, int64_t B, Precision p, int reps) {
  GradMode no_grad(false);
  CudaModel model(c, random_params(c, rng()), p);
  const std::vector<float> h = random_vector(B * c.channels * c.image_size * c.image_size);
  DeviceBuffer img = upload(h.data(), h.size()), logits(B * c.classes);
  for (int i = 0; i < 10; i++) model.forward(img.get(), B, logits.get(), nullptr);
  EventTracer tracer;
  model.set_tracer(&tracer);
  cudaEvent_t start;
  cudaEventCreate(&start);
  std::vector<std::vector<double>> per_launch;
  for (int r = 0; r < reps; r++) {
    tracer.next = 0;
    cudaEventRecord(start, nullptr);
    model.forward(img.get(), B, logits.get(), nullptr);
    check_cuda(cudaDeviceSynchronize(), "profile");
    per_launch.resize(tracer.marks.size());
    cudaEvent_t prev = start;
    for (size_t i = 0; i < tracer.marks.size(); i++) {
      float ms = 0;
      cudaEventElapsedTime(&ms, prev, tracer.marks[i].second);
      per_launch[i].push_back(ms);
      prev = tracer.marks[i].second;
    }
  }
  std::string out = "profile " + name + " batch " + std::to_string(B) + " (" + precision_name(effective_precision(p)) +
                    "), microseconds per launch (median; first stage):";
  double total = 0;
  for (size_t i = 0; i < per_launch.size(); i++) {
    const double us = 1e3 * median(per_launch[i]);
    total += us;
    if (i < 8 || i + 1 == per_launch.size()) out += " " + tracer.marks[i].first + " " + std::to_string(static_cast<int>(us + 0.5));
  }
  out += "; total " + std::to_string(static_cast<int>(total + 0.5)) + "\n";
  for (auto& m : tracer.marks) cudaEventDestroy(m.second);
  cudaEventDestroy(start);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false, bench = false, profile = false, parity = true, bench_train = false;
  std::vector<int64_t> profile_batches = {1, 64};
  uint64_t seed = std::random_device{}();
  Precision precision = PRECISION_TF32;
  int reps = 50, max_n = 16;
  const char* out_path = nullptr;
  std::string mnist_dir;
  int epochs = 15, batch = 128, branches = 2, depth = 2;
  float lr = 2e-3f;
  for (int i = 1; i < argc; i++) {
    const std::string a = argv[i];
    if (a == "--quick") quick = true;
    else if (a == "--bench") bench = true;
    else if (a == "--profile") profile = true;
    else if (a == "--no-parity") parity = false;
    else if (a == "--bench-train") bench_train = true;
    else if (a == "--train-mnist" && i + 1 < argc) mnist_dir = argv[++i];
    else if (a == "--epochs" && i + 1 < argc) epochs = std::stoi(argv[++i]);
    else if (a == "--batch-size" && i + 1 < argc) batch = std::stoi(argv[++i]);
    else if (a == "--lr" && i + 1 < argc) lr = std::stof(argv[++i]);
    else if (a == "--branches" && i + 1 < argc) branches = std::stoi(argv[++i]);
    else if (a == "--depth" && i + 1 < argc) depth = std::stoi(argv[++i]);
    else if (a == "--batch" && i + 1 < argc) profile_batches = {std::stoll(argv[++i])};
    else if (a == "--seed" && i + 1 < argc) seed = std::stoull(argv[++i]);
    else if (a == "--reps" && i + 1 < argc) reps = std::stoi(argv[++i]);
    else if (a == "--max-n" && i + 1 < argc) max_n = std::stoi(argv[++i]);
    else if (a == "--out" && i + 1 < argc) out_path = argv[++i];
    else if (a == "--precision" && i + 1 < argc) {
      const std::string p = argv[++i];
      precision = p == "fp32" ? PRECISION_FP32 : p == "bf16" ? PRECISION_BF16 : PRECISION_TF32;
    } else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  const CudaStatus& st = cuda_status();
  if (!st.available) {
    std::printf("CUDA unusable, GPU parity skipped: %s\n", st.reason.c_str());
    return 2;
  }
  std::printf("device %s, CUDA runtime %d, driver %d, seed %llu\n", st.device.c_str(), st.runtime_version,
              st.driver_version, static_cast<unsigned long long>(seed));
  rng.seed(seed);
  try {
    if (parity) run_parity(quick);
    const AllocatorStats a = allocator_stats();
    std::printf("allocator: %lld driver allocations, %lld cache hits, peak %.1f MB\n",
                static_cast<long long>(a.driver_allocs), static_cast<long long>(a.cache_hits), a.peak / 1e6);
    std::printf("%d passed, %d failed\n", g_passed, g_failed);
    if (bench_train) {
      const std::string md = run_train_bench(precision, reps, 64);
      std::printf("\n%s", md.c_str());
      if (out_path) {
        FILE* f = std::fopen(out_path, "w");
        if (f) {
          std::fprintf(f, "device %s\n\n%s", st.device.c_str(), md.c_str());
          std::fclose(f);
        }
      }
    }
    if (!mnist_dir.empty()) run_mnist(mnist_dir, epochs, batch, lr, precision, seed, branches, depth);
    if (profile)
      for (int64_t b : profile_batches)
        for (int n : {1, 12}) std::printf("%s", run_profile(tiny_config(1, n), "para-former-1-" + std::to_string(n), b, precision, reps).c_str());
    if (bench) {
      const std::string md = run_bench(precision, reps, max_n);
      std::printf("\n%s", md.c_str());
      if (out_path) {
        FILE* f = std::fopen(out_path, "w");
        if (f) {
          std::fprintf(f, "device %s, CUDA runtime %d, driver %d\n\n%s", st.device.c_str(), st.runtime_version,
                       st.driver_version, md.c_str());
          std::fclose(f);
        }
      }
    }
  } catch (const std::exception& e) {
    std::printf("FAIL %s\n", e.what());
    return 1;
  }
  return g_failed == 0 ? 0 : 1;
}
