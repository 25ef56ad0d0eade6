// cuda_train.cu: the training step on the GPU (see cuda_train.h). Shapes: B batch, T1 tokens,
// BT = B*T1 rows, C width, N branches, M MLP width, H heads, D = C/H, K classes.
#include "cuda_train.h"

#include <cmath>

namespace duat {
namespace cuda {

namespace {

GemmArgs product(int M, int N, int K, const float* A, int64_t a_m, int64_t a_k, const float* B, int64_t b_n,
                 int64_t b_k, float* C, int64_t c_m) {
  GemmArgs g;
  g.M = M, g.N = N, g.K = K;
  g.A = A, g.a_m = a_m, g.a_k = a_k;
  g.B = B, g.b_n = b_n, g.b_k = b_k;
  g.C = C, g.c_m = c_m;
  return g;
}

GemmArgs batched(GemmArgs g, int batch, int64_t a_batch, int64_t b_batch, int64_t c_batch) {
  g.batch = batch, g.a_batch = a_batch, g.b_batch = b_batch, g.c_batch = c_batch;
  return g;
}

bool takes_no_decay(const std::string& name) {
  return name.size() >= 5 && (name.compare(name.size() - 5, 5, ".bias") == 0 || name.find("norm") != std::string::npos ||
                              name == "cls_token" || name == "pos_embed");
}

}  // namespace

CudaTrainer::CudaTrainer(const ModelConfig& config, const std::vector<std::vector<float>>& params, Precision precision,
                         const AdamWConfig& adamw)
    : config_(config), precision_(precision), adamw_(adamw), shapes_(model_param_shapes(config)) {
  check_model_config(config);
  const std::vector<std::string> names = model_param_names(config);
  if (params.size() != names.size())
    fail(ERROR_SHAPE, "CudaTrainer: expected " + std::to_string(names.size()) + " parameters, got " +
                             std::to_string(params.size()));
  for (size_t i = 0; i < names.size(); i++) {
    const size_t n = static_cast<size_t>(shape_numel(shapes_[i]));
    if (params[i].size() != n)
      fail(ERROR_SHAPE, "CudaTrainer: parameter '" + names[i] + "' has " + std::to_string(params[i].size()) +
                               " values, the config needs " + std::to_string(n));
    params_.push_back(cuda::upload(params[i].data(), n));
    grads_.push_back(DeviceBuffer(n));
    m_.push_back(DeviceBuffer(n));
    v_.push_back(DeviceBuffer(n));
    check_cuda(cudaMemset(m_.back().get(), 0, n * sizeof(float)), "moments");
    check_cuda(cudaMemset(v_.back().get(), 0, n * sizeof(float)), "moments");
    decay_.push_back(takes_no_decay(names[i]) ? 0.0f : adamw.weight_decay);
  }
}

void CudaTrainer::reserve(int64_t B) {
  if (B <= reserved_) return;
  const ModelConfig& c = config_;
  const int64_t N = c.branches, C = c.dim, M = c.mlp_hidden, T1 = c.tokens(), BT = B * T1, K = c.classes;
  xs_.clear();
  for (int64_t s = 0; s <= c.depth; s++) xs_.push_back(DeviceBuffer(BT * C));
  st_.clear();
  for (int64_t s = 0; s < c.depth; s++) {
    StageState t;
    t.mean1 = DeviceBuffer(BT), t.rstd1 = DeviceBuffer(BT), t.xn = DeviceBuffer(BT * C);
    t.wq = DeviceBuffer(N * 3 * C * C), t.bq = DeviceBuffer(N * 3 * C), t.qkv = DeviceBuffer(BT * N * 3 * C);
    t.att = DeviceBuffer(BT * N * C), t.lse = DeviceBuffer(B * N * c.heads * T1), t.a = DeviceBuffer(N * BT * C);
    t.mean2 = DeviceBuffer(N * BT), t.rstd2 = DeviceBuffer(N * BT), t.u = DeviceBuffer(N * BT * C);
    t.w1 = DeviceBuffer(N * M * C), t.b1 = DeviceBuffer(N * M), t.hpre = DeviceBuffer(BT * N * M), t.h = DeviceBuffer(BT * N * M);
    t.w2 = DeviceBuffer(C * N * M), t.b2 = DeviceBuffer(C);
    st_.push_back(std::move(t));
  }
  xc_ = DeviceBuffer(B * C), meanh_ = DeviceBuffer(B), rstdh_ = DeviceBuffer(B), yc_ = DeviceBuffer(B * C);
  logits_ = DeviceBuffer(B * K), dlogits_ = DeviceBuffer(B * K), loss_ = DeviceBuffer(1);
  dyc_ = DeviceBuffer(B * C), dxc_ = DeviceBuffer(B * C);
  dx0_ = DeviceBuffer(BT * C), dx1_ = DeviceBuffer(BT * C), dh_ = DeviceBuffer(BT * N * M);
  du_ = DeviceBuffer(N * BT * C), dv_ = DeviceBuffer(N * BT * C), da_ = DeviceBuffer(N * BT * C);
  datt_ = DeviceBuffer(BT * N * C), dqkv_ = DeviceBuffer(BT * N * 3 * C), delta_ = DeviceBuffer(B * N * c.heads * T1);
  dxn_ = DeviceBuffer(BT * C), dwq_ = DeviceBuffer(N * 3 * C * C), dbq_ = DeviceBuffer(N * 3 * C);
  dw1_ = DeviceBuffer(N * M * C), db1_ = DeviceBuffer(N * M), dw2_ = DeviceBuffer(C * N * M), db2_ = DeviceBuffer(C);
  reserved_ = B;
}

void CudaTrainer::stage_forward(int64_t s, const float* x, float* y, int64_t B, cudaStream_t st) {
  const ModelConfig& c = config_;
  const int64_t N = c.branches, C = c.dim, M = c.mlp_hidden, T1 = c.tokens(), BT = B * T1;
  const int Ni = static_cast<int>(N), Ci = static_cast<int>(C), Mi = static_cast<int>(M), BTi = static_cast<int>(BT);
  StageState& t = st_[s];
  const auto P = [&](int k) { return param(stage_param(s, k)); };
  layernorm_forward(x, nullptr, 0, nullptr, nullptr, t.xn.get(), t.mean1.get(), t.rstd1.get(), BT, C, c.eps, st);
  fold_affine_forward(P(2), P(3), P(0), P(1), t.wq.get(), t.bq.get(), N, 3 * C, C, st);
  GemmArgs qkv = product(BTi, Ni * 3 * Ci, Ci, t.xn.get(), C, 1, t.wq.get(), C, 1, t.qkv.get(), N * 3 * C);
  qkv.bias = t.bq.get();
  gemm(qkv, precision_, st);
  attention_forward(t.qkv.get(), t.att.get(), t.lse.get(), B, T1, N, c.heads, C / c.heads, st);
  GemmArgs proj = batched(product(BTi, Ci, Ci, t.att.get(), N * C, 1, P(4), C, 1, t.a.get(), C), Ni, C, C * C, BT * C);
  proj.bias = P(5), proj.bias_batch = C;
  gemm(proj, precision_, st);
  layernorm_forward(t.a.get(), x, BT, nullptr, nullptr, t.u.get(), t.mean2.get(), t.rstd2.get(), N * BT, C, c.eps, st);
  fold_affine_forward(P(8), P(9), P(6), P(7), t.w1.get(), t.b1.get(), N, M, C, st);
  GemmArgs fc1 = batched(product(BTi, Mi, Ci, t.u.get(), C, 1, t.w1.get(), C, 1, t.h.get(), N * M), Ni, BT * C, M * C, M);
  fc1.bias = t.b1.get(), fc1.bias_batch = M;
  fc1.epilogue = EPILOGUE_GELU, fc1.aux = t.hpre.get();
  gemm(fc1, precision_, st);
  branch_concat_forward(P(10), P(11), t.w2.get(), t.b2.get(), N, C, M, st);
  GemmArgs fc2 = product(BTi, Ci, Ni * Mi, t.h.get(), N * M, 1, t.w2.get(), N * M, 1, y, C);
  fc2.bias = t.b2.get();
  fc2.epilogue = EPILOGUE_STAGE, fc2.resid = x, fc2.extra = t.a.get(), fc2.nsum = Ni, fc2.extra_batch = BT * C;
  fc2.scale = c.branch_scale;
  gemm(fc2, precision_, st);
}

const float* CudaTrainer::forward(const float* images, int64_t B, cudaStream_t st) {
  reserve(B);
  const ModelConfig& c = config_;
  const int64_t C = c.dim, T1 = c.tokens(), K = c.classes, patch_in = c.channels * c.patch_size * c.patch_size;
  embed_forward(images, param(0), 1, patch_in, param(1), param(2), param(3), xs_[0].get(), B, c.channels, c.image_size,
                c.patch_size, C, st);
  for (int64_t s = 0; s < c.depth; s++) stage_forward(s, xs_[s].get(), xs_[s + 1].get(), B, st);
  copy_rows(xs_[c.depth].get(), T1 * C, xc_.get(), C, B, C, st);
  layernorm_forward(xc_.get(), nullptr, 0, param(tail_param(0)), param(tail_param(1)), yc_.get(), meanh_.get(),
                    rstdh_.get(), B, C, c.eps, st);
  GemmArgs head = product(static_cast<int>(B), static_cast<int>(K), static_cast<int>(C), yc_.get(), C, 1,
                          param(tail_param(2)), C, 1, logits_.get(), K);
  head.bias = param(tail_param(3));
  gemm(head, precision_, st);
  return logits_.get();
}

void CudaTrainer::stage_backward(int64_t s, const float* x, const float* dy, float* dx, int64_t B, cudaStream_t st) {
  const ModelConfig& c = config_;
  const int64_t N = c.branches, C = c.dim, M = c.mlp_hidden, T1 = c.tokens(), BT = B * T1, NM = N * M;
  const int Ni = static_cast<int>(N), Ci = static_cast<int>(C), Mi = static_cast<int>(M), BTi = static_cast<int>(BT);
  const float sc = c.branch_scale;
  StageState& t = st_[s];
  const auto P = [&](int k) { return param(stage_param(s, k)); };
  const auto G = [&](int k) { return grad(stage_param(s, k)); };
  // fc2 over the concatenated branches: y = x + sc * (h W2^T + b2 + sum_n a_n).
  GemmArgs dw2 = product(Ci, Ni * Mi, BTi, dy, 1, C, t.h.get(), 1, NM, dw2_.get(), NM);
  dw2.alpha = sc;
  gemm(dw2, precision_, st);
  sum_rows(dy, db2_.get(), 1, BT, C, 0, false, st);
  branch_concat_backward(dw2_.get(), db2_.get(), sc, G(10), G(11), N, C, M, st);
  GemmArgs dh = product(BTi, Ni * Mi, Ci, dy, C, 1, t.w2.get(), 1, NM, dh_.get(), NM);
  dh.alpha = sc;
  gemm(dh, precision_, st);
  gelu_backward(dh_.get(), t.hpre.get(), dh_.get(), BT * NM, st);
  // fc1 per branch (LN2's affine folded in).
  gemm(batched(product(BTi, Ci, Mi, dh_.get(), NM, 1, t.w1.get(), 1, C, du_.get(), C), Ni, M, M * C, BT * C), precision_, st);
  gemm(batched(product(Mi, Ci, BTi, dh_.get(), 1, NM, t.u.get(), 1, C, dw1_.get(), C), Ni, M, BT * C, M * C), precision_, st);
  sum_rows(dh_.get(), db1_.get(), 1, BT, NM, 0, false, st);
  fold_affine_backward(P(8), P(6), P(7), dw1_.get(), db1_.get(), G(8), G(9), G(6), G(7), N, M, C, st);
  // LN2 of v_n = a_n + x, then the residual paths: da_n = dv_n + sc * dy, dx = dy + sum_n dv_n.
  layernorm_backward(du_.get(), t.a.get(), x, BT, t.mean2.get(), t.rstd2.get(), nullptr, dv_.get(), nullptr, nullptr,
                     N * BT, C, false, st);
  check_cuda(cudaMemcpyAsync(dx, dy, BT * C * sizeof(float), cudaMemcpyDeviceToDevice, st), "stage backward (dx)");
  branch_residual_backward(dv_.get(), dy, sc, da_.get(), dx, N, BT, C, st);
  // Projections per branch.
  gemm(batched(product(BTi, Ci, Ci, da_.get(), C, 1, P(4), 1, C, datt_.get(), N * C), Ni, BT * C, C * C, C), precision_, st);
  gemm(batched(product(Ci, Ci, BTi, da_.get(), 1, C, t.att.get(), 1, N * C, G(4), C), Ni, BT * C, C, C * C), precision_, st);
  sum_rows(da_.get(), G(5), N, BT, C, BT * C, false, st);
  // Attention, then the QKV product (LN1's affine folded in) and the shared LayerNorm.
  attention_backward(datt_.get(), t.qkv.get(), t.att.get(), t.lse.get(), delta_.get(), dqkv_.get(), B, T1, N, c.heads,
                     C / c.heads, st);
  gemm(product(Ni * 3 * Ci, Ci, BTi, dqkv_.get(), 1, N * 3 * C, t.xn.get(), 1, C, dwq_.get(), C), precision_, st);
  sum_rows(dqkv_.get(), dbq_.get(), 1, BT, N * 3 * C, 0, false, st);
  gemm(product(BTi, Ci, Ni * 3 * Ci, dqkv_.get(), N * 3 * C, 1, t.wq.get(), 1, C, dxn_.get(), C), precision_, st);
  fold_affine_backward(P(2), P(0), P(1), dwq_.get(), dbq_.get(), G(2), G(3), G(0), G(1), N, 3 * C, C, st);
  layernorm_backward(dxn_.get(), x, nullptr, 0, t.mean1.get(), t.rstd1.get(), nullptr, dx, nullptr, nullptr, BT, C, true,
                     st);
}

float CudaTrainer::forward_backward(const float* images, const int32_t* labels, int64_t B, cudaStream_t st,
                                    float smoothing) {
  forward(images, B, st);
  const ModelConfig& c = config_;
  const int64_t C = c.dim, T1 = c.tokens(), BT = B * T1, K = c.classes;
  const int Bi = static_cast<int>(B), Ci = static_cast<int>(C), Ki = static_cast<int>(K);
  cross_entropy(logits_.get(), labels, loss_.get(), dlogits_.get(), B, K, smoothing, st);
  // Head: logits = LN(x[:, 0]) W^T + b.
  gemm(product(Ki, Ci, Bi, dlogits_.get(), 1, K, yc_.get(), 1, C, grad(tail_param(2)), C), precision_, st);
  sum_rows(dlogits_.get(), grad(tail_param(3)), 1, B, K, 0, false, st);
  gemm(product(Bi, Ci, Ki, dlogits_.get(), K, 1, param(tail_param(2)), 1, C, dyc_.get(), C), precision_, st);
  check_cuda(cudaMemsetAsync(grad(tail_param(0)), 0, C * sizeof(float), st), "clear");
  check_cuda(cudaMemsetAsync(grad(tail_param(1)), 0, C * sizeof(float), st), "clear");
  layernorm_backward(dyc_.get(), xc_.get(), nullptr, 0, meanh_.get(), rstdh_.get(), param(tail_param(0)), dxc_.get(),
                     grad(tail_param(0)), grad(tail_param(1)), B, C, false, st);
  float* dy = dx0_.get();
  float* dx = dx1_.get();
  check_cuda(cudaMemsetAsync(dy, 0, BT * C * sizeof(float), st), "clear");
  copy_rows(dxc_.get(), C, dy, T1 * C, B, C, st);
  for (int64_t s = c.depth - 1; s >= 0; s--) {
    stage_backward(s, xs_[s].get(), dy, dx, B, st);
    std::swap(dy, dx);
  }
  embed_backward(images, dy, grad(0), grad(1), grad(2), grad(3), B, c.channels, c.image_size, c.patch_size, C, st);
  float loss = 0.0f;
  check_cuda(cudaMemcpyAsync(&loss, loss_.get(), sizeof(float), cudaMemcpyDeviceToHost, st), "loss");
  check_cuda(cudaStreamSynchronize(st), "training step");
  return loss;
}

float CudaTrainer::step(const float* images, const int32_t* labels, int64_t B, float lr, cudaStream_t st) {
  const float loss = forward_backward(images, labels, B, st);
  adamw(std::vector<float>(params_.size(), lr), decay_, adamw_.beta1, adamw_.beta2, adamw_.eps, ++steps_, st);
  return loss;
}

double CudaTrainer::grad_norm(cudaStream_t st) {
  std::vector<std::pair<const float*, int64_t>> list;
  for (const DeviceBuffer& g : grads_) list.push_back({g.get(), static_cast<int64_t>(g.size())});
  sum_of_squares(list, norm_.get(), st);
  float sq = 0.0f;
  check_cuda(cudaMemcpyAsync(&sq, norm_.get(), sizeof(float), cudaMemcpyDeviceToHost, st), "gradient norm");
  check_cuda(cudaStreamSynchronize(st), "gradient norm");
  return std::sqrt(static_cast<double>(sq));
}

void CudaTrainer::adamw(const std::vector<float>& lr, const std::vector<float>& weight_decay, float beta1, float beta2,
                        float eps, int64_t step, cudaStream_t st, float grad_scale) {
  std::vector<AdamWTensor> table;
  for (size_t i = 0; i < params_.size(); i++)
    table.push_back({params_[i].get(), grads_[i].get(), m_[i].get(), v_[i].get(),
                     static_cast<int64_t>(params_[i].size()), lr.at(i), weight_decay.at(i)});
  adamw_multi(table, beta1, beta2, eps, step, grad_scale, st);
}

void CudaTrainer::upload(const std::vector<const float*>& params, const std::vector<const float*>& m,
                         const std::vector<const float*>& v) {
  for (size_t i = 0; i < params_.size(); i++) {
    const size_t bytes = params_[i].size() * sizeof(float);
    if (i < params.size() && params[i]) check_cuda(cudaMemcpy(params_[i].get(), params[i], bytes, cudaMemcpyHostToDevice), "upload");
    if (i < m.size() && m[i]) check_cuda(cudaMemcpy(m_[i].get(), m[i], bytes, cudaMemcpyHostToDevice), "upload");
    if (i < v.size() && v[i]) check_cuda(cudaMemcpy(v_[i].get(), v[i], bytes, cudaMemcpyHostToDevice), "upload");
  }
}

void CudaTrainer::download(const std::vector<float*>& params, const std::vector<float*>& m,
                           const std::vector<float*>& v) const {
  check_cuda(cudaDeviceSynchronize(), "download");
  for (size_t i = 0; i < params_.size(); i++) {
    const size_t n = params_[i].size();
    if (i < params.size() && params[i]) cuda::download(params_[i].get(), params[i], n);
    if (i < m.size() && m[i]) cuda::download(m_[i].get(), m[i], n);
    if (i < v.size() && v[i]) cuda::download(v_[i].get(), v[i], n);
  }
}

std::vector<std::vector<float>> CudaTrainer::download_grads() const {
  check_cuda(cudaDeviceSynchronize(), "download");
  std::vector<std::vector<float>> out;
  for (const DeviceBuffer& g : grads_) {
    out.emplace_back(g.size());
    cuda::download(g.get(), out.back().data(), g.size());
  }
  return out;
}

}  // namespace cuda
}  // namespace duat
