// cuda_model.cu: the Para-Former forward on the GPU (see cuda_model.h).
#include "cuda_model.h"

#include "../ops/ops.h"

#include <vector>

namespace duat {
namespace cuda {

namespace {

DeviceBuffer upload_tensor(const Tensor& t) {
  const Tensor c = contiguous_data(t);
  return upload(c->f32(), static_cast<size_t>(c->numel()));
}

}  // namespace

CudaModel::CudaModel(const ModelConfig& config, const ModelParams& p, Precision precision)
    : config_(config), precision_(precision) {
  const int64_t N = config.branches, C = config.dim, M = config.mlp_hidden;
  {  // (C, ch, P, P) -> (ch*P*P, C): a warp's threads read consecutive weights
    const Tensor w = contiguous_data(p.patch_w);
    const int64_t K = w->numel() / C;
    std::vector<float> t(K * C);
    for (int64_t c = 0; c < C; c++)
      for (int64_t k = 0; k < K; k++) t[k * C + c] = w->f32()[c * K + k];
    patch_w_ = upload(t.data(), t.size());
  }
  patch_b_ = upload_tensor(p.patch_b);
  cls_ = upload_tensor(p.cls_token);
  pos_ = upload_tensor(p.pos_embed);
  norm_w_ = upload_tensor(p.norm_w);
  norm_b_ = upload_tensor(p.norm_b);
  head_w_ = upload_tensor(p.head_w);
  head_b_ = upload_tensor(p.head_b);
  for (const StageParams& sp : p.stages) {
    Stage st;
    const auto up = [](const Tensor& t) { return upload_tensor(t); };
    const DeviceBuffer g1 = up(sp.norm1_w), b1 = up(sp.norm1_b), qkv_w = up(sp.qkv_w), qkv_b = up(sp.qkv_b);
    const DeviceBuffer g2 = up(sp.norm2_w), b2 = up(sp.norm2_b), fc1_w = up(sp.fc1_w), fc1_b = up(sp.fc1_b);
    const DeviceBuffer fc2_w = up(sp.fc2_w), fc2_b = up(sp.fc2_b);
    st.qkv_w = DeviceBuffer(N * 3 * C * C), st.qkv_b = DeviceBuffer(N * 3 * C);
    fold_affine_forward(qkv_w.get(), qkv_b.get(), g1.get(), b1.get(), st.qkv_w.get(), st.qkv_b.get(), N, 3 * C, C, nullptr);
    st.proj_w = up(sp.proj_w);
    st.proj_b = up(sp.proj_b);
    st.fc1_w = DeviceBuffer(N * M * C), st.fc1_b = DeviceBuffer(N * M);
    fold_affine_forward(fc1_w.get(), fc1_b.get(), g2.get(), b2.get(), st.fc1_w.get(), st.fc1_b.get(), N, M, C, nullptr);
    st.fc2_w = DeviceBuffer(C * N * M), st.fc2_b = DeviceBuffer(C);
    branch_concat_forward(fc2_w.get(), fc2_b.get(), st.fc2_w.get(), st.fc2_b.get(), N, C, M, nullptr);
    check_cuda(cudaDeviceSynchronize(), "model upload");  // before the sources are freed
    stages_.push_back(std::move(st));
  }
}

void CudaModel::reserve(int64_t B) {
  if (B <= reserved_batch_) return;
  const int64_t N = config_.branches, C = config_.dim, M = config_.mlp_hidden, BT = B * config_.tokens();
  x0_ = DeviceBuffer(BT * C);
  x1_ = DeviceBuffer(BT * C);
  xn_ = DeviceBuffer(BT * C);
  qkv_ = DeviceBuffer(BT * N * 3 * C);
  att_ = DeviceBuffer(BT * N * C);
  a_ = DeviceBuffer(N * BT * C);
  u_ = DeviceBuffer(N * BT * C);
  h_ = DeviceBuffer(BT * N * M);
  reserved_batch_ = B;
}

void CudaModel::stage_forward(const Stage& st, const float* x, float* y, int64_t B, cudaStream_t s) {
  const int64_t N = config_.branches, C = config_.dim, M = config_.mlp_hidden, T1 = config_.tokens(), BT = B * T1;
  const int BTi = static_cast<int>(BT), Ci = static_cast<int>(C), Mi = static_cast<int>(M), Ni = static_cast<int>(N);
  layernorm_forward(x, nullptr, 0, nullptr, nullptr, xn_.get(), nullptr, nullptr, BT, C, config_.eps, s);
  mark("norm1", s);
  GemmArgs qkv;  // (BT, C) x (N*3C, C)^T
  qkv.M = BTi, qkv.N = Ni * 3 * Ci, qkv.K = Ci;
  qkv.A = xn_.get(), qkv.a_m = C;
  qkv.B = st.qkv_w.get(), qkv.b_n = C;
  qkv.C = qkv_.get(), qkv.c_m = N * 3 * C;
  qkv.bias = st.qkv_b.get();
  gemm(qkv, precision_, s);
  mark("qkv", s);
  attention_forward(qkv_.get(), att_.get(), nullptr, B, T1, N, config_.heads, C / config_.heads, s);
  mark("attention", s);
  GemmArgs proj;  // per branch n: att[:, n*C:(n+1)*C] x proj_w[n]^T -> a[n] (BT, C)
  proj.M = BTi, proj.N = Ci, proj.K = Ci, proj.batch = Ni;
  proj.A = att_.get(), proj.a_m = N * C, proj.a_batch = C;
  proj.B = st.proj_w.get(), proj.b_n = C, proj.b_batch = C * C;
  proj.C = a_.get(), proj.c_m = C, proj.c_batch = BT * C;
  proj.bias = st.proj_b.get(), proj.bias_batch = C;
  gemm(proj, precision_, s);
  mark("proj", s);
  layernorm_forward(a_.get(), x, BT, nullptr, nullptr, u_.get(), nullptr, nullptr, N * BT, C, config_.eps, s);
  mark("norm2", s);
  GemmArgs fc1;  // per branch: u[n] x fc1_w[n]^T -> h[:, n*M:(n+1)*M], GELU
  fc1.M = BTi, fc1.N = Mi, fc1.K = Ci, fc1.batch = Ni;
  fc1.A = u_.get(), fc1.a_m = C, fc1.a_batch = BT * C;
  fc1.B = st.fc1_w.get(), fc1.b_n = C, fc1.b_batch = M * C;
  fc1.C = h_.get(), fc1.c_m = N * M, fc1.c_batch = M;
  fc1.bias = st.fc1_b.get(), fc1.bias_batch = M;
  fc1.epilogue = EPILOGUE_GELU;
  gemm(fc1, precision_, s);
  mark("fc1+gelu", s);
  GemmArgs fc2;  // (BT, N*M) x (C, N*M)^T, then y = x + s * (mlp + sum_n a_n)
  fc2.M = BTi, fc2.N = Ci, fc2.K = Ni * Mi;
  fc2.A = h_.get(), fc2.a_m = N * M;
  fc2.B = st.fc2_w.get(), fc2.b_n = N * M;
  fc2.C = y, fc2.c_m = C;
  fc2.bias = st.fc2_b.get();
  fc2.epilogue = EPILOGUE_STAGE;
  fc2.resid = x;
  fc2.extra = a_.get(), fc2.nsum = Ni, fc2.extra_batch = BT * C;
  fc2.scale = config_.branch_scale;
  gemm(fc2, precision_, s);
  mark("fc2+sum", s);
}

void CudaModel::forward(const float* images, int64_t B, float* logits, cudaStream_t s) {
  reserve(B);
  const ModelConfig& c = config_;
  embed_forward(images, patch_w_.get(), c.dim, 1, patch_b_.get(), cls_.get(), pos_.get(), x0_.get(), B, c.channels, c.image_size,
                c.patch_size, c.dim, s);
  mark("embed", s);
  float* x = x0_.get();
  float* y = x1_.get();
  for (const Stage& st : stages_) {
    stage_forward(st, x, y, B, s);
    std::swap(x, y);
  }
  head_forward(x, norm_w_.get(), norm_b_.get(), head_w_.get(), head_b_.get(), logits, B, c.tokens(), c.dim, c.classes,
               c.eps, s);
  mark("head", s);
}

}  // namespace cuda
}  // namespace duat
