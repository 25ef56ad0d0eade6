// cuda_memory.h: device memory through a caching allocator. cudaMalloc and cudaFree synchronise
// the device and cost tens of microseconds, so freed blocks go back to a cache by size class
// and the next request of that class takes one from there. Blocks are reused in stream order
// on one stream (duat runs its work on one stream per process).
#pragma once
#include <cstddef>
#include <cstdint>

namespace duat {
namespace cuda {

// A block of at least `bytes` (256-byte aligned). Throws duat::Error (ERROR_OUT_OF_MEMORY) when the device is
// out of memory even after the cache was returned to the driver.
void* device_alloc(size_t bytes);
void device_free(void* p);
// Returns every cached (unused) block to the driver.
void empty_cache();

struct AllocatorStats {
  size_t in_use = 0;     // bytes handed out and not yet freed (size classes)
  size_t cached = 0;     // bytes held for reuse
  size_t peak = 0;       // highest in_use
  int64_t driver_allocs = 0;  // cudaMalloc calls
  int64_t cache_hits = 0;     // requests served from the cache
};
AllocatorStats allocator_stats();
// The size class of a request: 512-byte steps up to 1 MiB, then 1/8 power-of-two steps.
size_t allocation_class(size_t bytes);

// An owning device buffer of floats (or raw bytes).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t count) : ptr_(count ? static_cast<float*>(device_alloc(count * sizeof(float))) : nullptr), count_(count) {}
  ~DeviceBuffer() { device_free(ptr_); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), count_(o.count_) { o.ptr_ = nullptr; o.count_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      device_free(ptr_);
      ptr_ = o.ptr_;
      count_ = o.count_;
      o.ptr_ = nullptr;
      o.count_ = 0;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  float* get() const { return ptr_; }
  size_t size() const { return count_; }

 private:
  float* ptr_ = nullptr;
  size_t count_ = 0;
};

// Host <-> device copies of floats (synchronous).
DeviceBuffer upload(const float* host, size_t count);
void download(const float* device, float* host, size_t count);

// The split-K scratch of the matrix product: one accumulator tile and one ticket per output
// tile, both zero between launches. Grown on demand, kept for the process.
struct Workspace {
  float* partials = nullptr;
  int* tickets = nullptr;
  int64_t partial_floats = 0, ticket_count = 0;
};
Workspace& gemm_workspace(int64_t partial_floats, int64_t tickets);

}  // namespace cuda
}  // namespace duat
