// matrix.h: tensors as operands of the strided matrix product (GemmArgs, core/backend.h), for the
// product ops (linalg.cpp, branch.cpp). Internal to native/ops.
#pragma once
#include "../core/autograd.h"
#include "../core/tensor.h"

namespace duat {

// A tensor's elements as batch x rows x cols: (z, r, c) at p + z*s_z + r*s_r + c*s_c.
struct Mat {
  float* p = nullptr;
  int64_t batch = 1, rows = 0, cols = 0;
  int64_t s_z = 0, s_r = 0, s_c = 1;
};

// A product dimension as GemmArgs holds it (int): ERROR_SHAPE beyond 2^31 - 1, naming the op.
int gemm_dim(int64_t v, const char* op);

// The dimensions [lo, hi) of t walked as one index: their sizes' product and its stride. False
// when they do not collapse (a gap between them).
bool collapse_dims(const Tensor& t, int64_t lo, int64_t hi, int64_t* count, int64_t* stride);
// t's last two dims as rows x cols and its leading dims as the batch index.
bool as_mat(const Tensor& t, Mat* m);
// All of t's dims but the last as rows (batch 1), the last as cols.
bool as_rows(const Tensor& t, Mat* m);

// Runs the product `g` (everything but C and beta set) into input i's gradient buffer, seen as a
// Mat by as_rows (fold_rows) or as_mat: written when the buffer is fresh, added to otherwise;
// through a contiguous temporary when the buffer's layout cannot be a GemmArgs C (unit column
// stride, collapsible dims).
void gemm_into_grad(Grads& grads, size_t i, GemmArgs g, bool fold_rows, Device device);

}  // namespace duat
