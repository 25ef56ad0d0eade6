// elementwise.cu: the generic elementwise kernel (MapArgs: any shape, any strides per operand,
// broadcasting by zero strides), the generic reduction (ReduceArgs), fills, dropout, patches, and
// the LayerNorm-affine folds of the branched products. Index arithmetic: dm::strided_offsets and
// dm::patch_pixel (core/device_math.h, checked on the CPU by native/tests). Contracts: core/backend.h.
#include <string>

#include "common.cuh"

namespace duat {
namespace cuda {

namespace {

__device__ __forceinline__ float map_value(MapOp op, float a, float b, float s) {
  switch (op) {
    case MAP_ADD: return a + b;
    case MAP_SUB: return a - b;
    case MAP_MUL: return a * b;
    case MAP_DIV: return a / b;
    case MAP_ADD_SCALAR: return a + s;
    case MAP_MUL_SCALAR: return a * s;
    case MAP_GELU: return dm::gelu(a);
    case MAP_GELU_GRAD: return b * dm::gelu_grad(a);
    default: return a;
  }
}

// One thread per output element, grid-stride; the operands' offsets from the linear index.
__global__ void map_kernel(const MapArgs m, int64_t n) {
  const bool binary = m.b != nullptr;
  DUAT_GRID_LOOP(i, n) {
    int64_t o = 0, a = 0, b = 0;
    dm::strided_offsets(i, m.nd, m.shape, m.out_strides, m.a_strides, binary ? m.b_strides : nullptr, &o, &a, &b);
    if (m.op == MAP_COPY && !m.accumulate) {  // raw words: int32 tensors copy too
      static_cast<uint32_t*>(m.out)[o] = static_cast<const uint32_t*>(m.a)[a];
      continue;
    }
    float* out = static_cast<float*>(m.out) + o;
    const float v = map_value(m.op, static_cast<const float*>(m.a)[a], binary ? static_cast<const float*>(m.b)[b] : 0.0f,
                              m.scalar);
    *out = m.accumulate ? *out + v : v;
  }
}

// The reduction split by the launcher: outputs walk the kept dimensions, each output sums `count`
// inputs walked by the reduced dimensions.
struct ReducePlan {
  int nk = 0, nr = 0;
  int64_t kshape[MAX_DIMS], kin[MAX_DIMS], kout[MAX_DIMS];
  int64_t rshape[MAX_DIMS], rin[MAX_DIMS];
  int64_t outputs = 1, count = 1;
  const float* in;
  float* out;
  float scale;
  bool accumulate;
};

__device__ __forceinline__ void reduce_write(const ReducePlan& p, int64_t out_off, float sum) {
  float* o = p.out + out_off;
  *o = p.accumulate ? *o + p.scale * sum : p.scale * sum;
}

// Many inputs per output: a block per output, its threads striding over the inputs.
__global__ void reduce_block_kernel(const ReducePlan p) {
  __shared__ float partial[8];
  for (int64_t k = blockIdx.x; k < p.outputs; k += gridDim.x) {
    int64_t in0 = 0, out0 = 0, unused = 0;
    dm::strided_offsets(k, p.nk, p.kshape, p.kin, p.kout, nullptr, &in0, &out0, &unused);
    float s = 0.0f;
    for (int64_t j = threadIdx.x; j < p.count; j += blockDim.x) {
      int64_t off = 0, u1 = 0, u2 = 0;
      dm::strided_offsets(j, p.nr, p.rshape, p.rin, p.rin, nullptr, &off, &u1, &u2);
      s += p.in[in0 + off];
    }
    s = warp_sum(s);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
      float total = 0.0f;
      for (int w = 0; w < static_cast<int>(blockDim.x / 32); w++) total += partial[w];
      reduce_write(p, out0, total);
    }
    __syncthreads();
  }
}

// Few inputs per output: a thread per output.
__global__ void reduce_thread_kernel(const ReducePlan p) {
  DUAT_GRID_LOOP(k, p.outputs) {
    int64_t in0 = 0, out0 = 0, unused = 0;
    dm::strided_offsets(k, p.nk, p.kshape, p.kin, p.kout, nullptr, &in0, &out0, &unused);
    float s = 0.0f;
    for (int64_t j = 0; j < p.count; j++) {
      int64_t off = 0, u1 = 0, u2 = 0;
      dm::strided_offsets(j, p.nr, p.rshape, p.rin, p.rin, nullptr, &off, &u1, &u2);
      s += p.in[in0 + off];
    }
    reduce_write(p, out0, s);
  }
}

__global__ void fill_kernel(uint32_t* p, int64_t n, uint32_t bits) {
  DUAT_GRID_LOOP(i, n) p[i] = bits;
}

__global__ void dropout_kernel(const float* x, float* out, int64_t n, float p, uint64_t seed, float keep_scale,
                               bool accumulate) {
  DUAT_GRID_LOOP(i, n) {
    const float v = dm::uniform_at(seed, static_cast<uint64_t>(i), 0) < p ? 0.0f : x[i] * keep_scale;
    out[i] = accumulate ? out[i] + v : v;
  }
}

// patches (B, T, ch*P*P) <-> images (B, ch, S, S): every patch element has its own pixel, so the
// backward adds without collisions.
__global__ void patchify_kernel(float* images, float* patches, int64_t B, int64_t ch, int64_t S, int64_t P,
                                bool backward) {
  const int64_t G = S / P, T = G * G, F = ch * P * P, n = B * T * F;
  DUAT_GRID_LOOP(i, n) {
    const int64_t f = i % F, t = (i / F) % T, b = i / (F * T);
    const int64_t pix = dm::patch_pixel(b, f / (P * P), t + 1, (f / P) % P, f % P, ch, S, P);
    if (backward) {
      images[pix] += patches[i];
    } else {
      patches[i] = images[pix];
    }
  }
}

__global__ void fold_affine_forward_kernel(const float* w, const float* b, const float* g, const float* beta,
                                           float* wf, float* bf, int64_t N, int O, int C) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * 4 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= N * O) return;
  const int64_t n = row / O;
  float dot = 0.0f;
  for (int c = lane; c < C; c += 32) {
    const float wv = w[row * C + c];
    wf[row * C + c] = wv * g[n * C + c];
    dot = fmaf(wv, beta[n * C + c], dot);
  }
  dot = warp_sum(dot);
  if (lane == 0) bf[row] = dot + (b ? b[row] : 0.0f);
}

// A thread per column (n, c) walks the O rows: dw written, dg and dbeta summed; db copied.
__global__ void fold_affine_backward_kernel(const float* w, const float* g, const float* beta, const float* dwf,
                                            const float* dbf, float* dw, float* db, float* dg, float* dbeta, int O,
                                            int C) {
  const int64_t n = blockIdx.y;
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (blockIdx.x == 0 && db)
    for (int o = threadIdx.x; o < O; o += blockDim.x) db[n * O + o] = dbf[n * O + o];
  if (c >= C) return;
  const float gc = g[n * C + c], bc = beta[n * C + c];
  float sg = 0.0f, sb = 0.0f;
#pragma unroll 4
  for (int o = 0; o < O; o++) {
    const int64_t at = (n * O + o) * C + c;
    const float d = dwf[at], wv = w[at], dbo = dbf[n * O + o];
    dw[at] = d * gc + dbo * bc;
    sg = fmaf(d, wv, sg);
    sb = fmaf(dbo, wv, sb);
  }
  dg[n * C + c] = sg;
  dbeta[n * C + c] = sb;
}


}  // namespace

void map(const MapArgs& m) {
  int64_t n = 1;
  for (int d = 0; d < m.nd; d++) n *= m.shape[d];
  if (n <= 0) return;
  map_kernel<<<elementwise_blocks(n), 256, 0, stream()>>>(m, n);
  launched("elementwise");
}

void reduce(const ReduceArgs& r) {
  ReducePlan p;
  for (int d = 0; d < r.nd; d++) {
    if (r.out_strides[d] != 0) {
      p.kshape[p.nk] = r.shape[d], p.kin[p.nk] = r.in_strides[d], p.kout[p.nk] = r.out_strides[d];
      p.outputs *= r.shape[d];
      p.nk++;
    } else {
      p.rshape[p.nr] = r.shape[d], p.rin[p.nr] = r.in_strides[d];
      p.count *= r.shape[d];
      p.nr++;
    }
  }
  p.in = r.in, p.out = r.out, p.scale = r.scale, p.accumulate = r.accumulate;
  if (p.outputs <= 0) return;
  if (p.count >= 256) {
    reduce_block_kernel<<<static_cast<unsigned>(std::min<int64_t>(p.outputs, 65535)), 256, 0, stream()>>>(p);
  } else {
    reduce_thread_kernel<<<elementwise_blocks(p.outputs), 256, 0, stream()>>>(p);
  }
  launched("reduce");
}

void fill(void* dst, int64_t words, uint32_t bits) {
  if (words <= 0) return;
  if (bits == 0) {
    check_cuda(cudaMemsetAsync(dst, 0, static_cast<size_t>(words) * 4, stream()), "fill");
    return;
  }
  fill_kernel<<<elementwise_blocks(words), 256, 0, stream()>>>(static_cast<uint32_t*>(dst), words, bits);
  launched("fill");
}

void dropout(const float* x, float* out, int64_t n, float p, uint64_t seed, bool accumulate) {
  if (n <= 0) return;
  dropout_kernel<<<elementwise_blocks(n), 256, 0, stream()>>>(x, out, n, p, seed, 1.0f / (1.0f - p), accumulate);
  launched("dropout");
}

void patchify_forward(const float* images, float* patches, int64_t B, int64_t ch, int64_t S, int64_t P) {
  const int64_t n = B * (S / P) * (S / P) * ch * P * P;
  if (n <= 0) return;
  patchify_kernel<<<elementwise_blocks(n), 256, 0, stream()>>>(const_cast<float*>(images), patches, B, ch, S, P, false);
  launched("patchify");
}

void patchify_backward(const float* dpatches, float* dimages, int64_t B, int64_t ch, int64_t S, int64_t P) {
  const int64_t n = B * (S / P) * (S / P) * ch * P * P;
  if (n <= 0) return;
  patchify_kernel<<<elementwise_blocks(n), 256, 0, stream()>>>(dimages, const_cast<float*>(dpatches), B, ch, S, P, true);
  launched("patchify backward");
}

void fold_affine_forward(const float* w, const float* b, const float* g, const float* beta, float* wf, float* bf,
                         int64_t N, int64_t O, int64_t C) {
  fold_affine_forward_kernel<<<static_cast<unsigned>(dm::ceil_div(N * O, 4)), 128, 0, stream()>>>(
      w, b, g, beta, wf, bf, N, static_cast<int>(O), static_cast<int>(C));
  launched("fold affine forward");
}

void fold_affine_backward(const float* w, const float* g, const float* beta, const float* dwf, const float* dbf,
                          float* dw, float* db, float* dg, float* dbeta, int64_t N, int64_t O, int64_t C) {
  const dim3 grid(static_cast<unsigned>(dm::ceil_div(C, 64)), static_cast<unsigned>(N));
  fold_affine_backward_kernel<<<grid, 64, 0, stream()>>>(w, g, beta, dwf, dbf, dw, db, dg, dbeta, static_cast<int>(O),
                                                         static_cast<int>(C));
  launched("fold affine backward");
}

}  // namespace cuda
}  // namespace duat
