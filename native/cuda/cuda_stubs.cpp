// cuda_stubs.cpp: the CUDA side of a build without nvcc: no backend, and the reason why. Every
// request for DEVICE_CUDA then fails with a DeviceError that says so (core/device.cpp), unless
// the test device serves it.
#include "../core/backend.h"

namespace duat {

const CudaInfo& cuda_probe() {
  static const CudaInfo info = [] {
    CudaInfo c;
    c.reason = "this binary was built without CUDA (build with nvcc: DUAT_WITH_CUDA=ON)";
    return c;
  }();
  return info;
}

Backend* cuda_backend() { return nullptr; }

}  // namespace duat
