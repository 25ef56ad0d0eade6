// cuda_backend.h: what the CUDA side of this binary can do. A build without nvcc links
// cuda_stubs.cpp, which reports why CUDA is unavailable; a CUDA build probes the runtime and the
// driver and, with a device present, runs a one-kernel self-test.
#pragma once
#include <string>

namespace duat {

struct CudaStatus {
  bool built = false;      // compiled with nvcc
  bool available = false;  // a usable device and driver
  int devices = 0;
  int runtime_version = 0;  // e.g. 13000
  int driver_version = 0;   // 0 when no driver is installed
  std::string device;       // name and compute capability of device 0
  std::string reason;       // why CUDA is unavailable (empty when available)
};

// Probed once; later calls return the same answer.
const CudaStatus& cuda_status();

}  // namespace duat
