// cuda_stubs.cpp: the CUDA backend of a build without nvcc.
#include "cuda_backend.h"
#include "cuda_session.h"

namespace duat {

const CudaStatus& cuda_status() {
  static const CudaStatus s = [] {
    CudaStatus c;
    c.reason = "this binary was built without CUDA (build with nvcc: DUAT_WITH_CUDA=ON)";
    return c;
  }();
  return s;
}

std::unique_ptr<CudaSession> cuda_session_create(const ModelConfig&, int) {
  fail(ERROR_DEVICE, "device 'cuda' is not available: " + cuda_status().reason);
}

}  // namespace duat
