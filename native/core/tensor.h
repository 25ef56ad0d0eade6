// tensor.h: storage, tensors (shape, strides, dtype, device), views, and live-memory counters.
// A Tensor is a shared pointer; views share storage. Shape letters follow STYLE.md.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "errors.h"

namespace duat {

enum DType : int { DTYPE_F32 = 0, DTYPE_I32 = 1 };
enum Device : int { DEVICE_CPU = 0, DEVICE_CUDA = 1 };

using Shape = std::vector<int64_t>;

const char* dtype_name(DType dtype);
const char* device_name(Device device);
std::string shape_str(const Shape& shape);
int64_t shape_numel(const Shape& shape);
Shape contiguous_strides(const Shape& shape);

struct Storage {
  void* data = nullptr;
  size_t bytes = 0;     // requested
  size_t capacity = 0;  // allocated (the size class)
  Device device = DEVICE_CPU;
  // Bumped by every in-place write to existing data (mark_written): caches of values derived
  // from a tensor (native/model's folded weights) compare it to know they are current.
  std::atomic<uint64_t> version{0};
  static std::shared_ptr<Storage> allocate(size_t bytes, Device device);
  ~Storage();
};

struct Node;
struct TensorImpl;
using Tensor = std::shared_ptr<TensorImpl>;

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  int64_t offset = 0;  // in elements
  Shape shape;
  Shape strides;  // in elements
  DType dtype = DTYPE_F32;
  Device device = DEVICE_CPU;
  bool requires_grad = false;
  Tensor grad;                     // leaves only; accumulated by backward()
  std::shared_ptr<Node> grad_fn;   // non-leaves: the op that made this tensor

  TensorImpl();
  ~TensorImpl();
  TensorImpl(const TensorImpl&) = delete;
  TensorImpl& operator=(const TensorImpl&) = delete;

  int64_t numel() const { return shape_numel(shape); }
  int64_t dim() const { return static_cast<int64_t>(shape.size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  bool is_contiguous() const;
  float* f32() const;    // first element; throws unless float32
  int32_t* i32() const;  // first element; throws unless int32
};

struct MemoryStats {
  int64_t tensors;  // live TensorImpl objects, views and graph internals included
  int64_t bytes;    // bytes of live storage on all devices
};
MemoryStats memory_stats();

// The CPU block cache: freed blocks of 64 KiB and more are kept by size class (at most
// cache_limit bytes) and reused, so steady-state training allocates without page faults.
struct CacheStats {
  int64_t cached_bytes;
  int64_t limit_bytes;
  int64_t hits;
  int64_t misses;
};
CacheStats cache_stats();
void set_cache_limit(int64_t bytes);  // 0 disables caching
void empty_cache();                   // returns every cached block to the system

Tensor empty(const Shape& shape, DType dtype = DTYPE_F32, Device device = DEVICE_CPU);
Tensor zeros(const Shape& shape, DType dtype = DTYPE_F32, Device device = DEVICE_CPU);
Tensor full(const Shape& shape, float value);
Tensor zeros_like(const Tensor& t);
Tensor empty_like(const Tensor& t);
// A view: same storage, given shape/strides/offset, no autograd history.
Tensor make_view(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset);
// The same data with no autograd history (saved tensors use this to avoid reference cycles).
Tensor detach(const Tensor& t);
// t itself if contiguous, else a contiguous copy (no autograd history).
Tensor contiguous_data(const Tensor& t);
// Copy src into dst elementwise (same shape; any strides).
void copy_into(const Tensor& dst, const Tensor& src);
// Records an in-place write to t's storage (see Storage::version). Every op that writes into an
// existing tensor calls it: copy_into, the optimizer updates, scale_inplace, GPU downloads.
inline void mark_written(const Tensor& t) {
  if (t && t->storage) t->storage->version.fetch_add(1, std::memory_order_relaxed);
}
// dst += src elementwise (same shape; any strides; float32).
void add_into(const Tensor& dst, const Tensor& src);

// Normalise a possibly negative dimension index; throws ERROR_SHAPE naming `what`.
int64_t wrap_dim(int64_t d, int64_t ndim, const char* what);

// Common argument checks, used by ops (kernels trust their inputs).
void check_f32(const Tensor& t, const char* op, const char* arg);
void check_i32(const Tensor& t, const char* op, const char* arg);
void check_same_device(const Tensor& a, const Tensor& b, const char* op);
void check_dim(const Tensor& t, int64_t ndim, const char* op, const char* arg);

}  // namespace duat
