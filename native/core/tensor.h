// tensor.h: storage, tensors (shape, strides, dtype, device), views, copies between devices and
// live-memory counters. A Tensor is a shared pointer; views share storage. A storage lives on one
// device and is allocated by that device's Backend (backend.h). Shape letters: docs/design.md, "Conventions".
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend.h"
#include "errors.h"
#include "shape.h"

namespace duat {

enum DType : int { DTYPE_F32 = 0, DTYPE_I32 = 1 };

// Elements one tensor may hold: beyond it shapes are refused before any arithmetic can wrap.
constexpr int64_t MAX_ELEMENTS = int64_t{1} << 40;

const char* dtype_name(DType dtype);
std::string shape_str(const Shape& shape);
// The element count, the one checked product of a shape's dimensions: ERROR_SHAPE for a negative
// dimension or when the nonzero dimensions multiply to more than MAX_ELEMENTS.
int64_t shape_numel(const Shape& shape);
Shape contiguous_strides(const Shape& shape);

struct DerivedSlot;  // native/model/derived.cpp

struct Storage {
  void* data = nullptr;
  size_t bytes = 0;     // requested
  size_t capacity = 0;  // reserved by the backend
  Device device = DEVICE_CPU;
  Backend* owner = nullptr;  // the backend that allocated it (and frees it)
  // Bumped by every in-place write to existing data (mark_written): caches of values derived
  // from a tensor (native/model/derived.h) compare it to know they are current.
  std::atomic<uint64_t> version{0};
  // Non-zero while a model step owns the storage (the model's lock, native/model): the binding
  // refuses JS access to it meanwhile (ERROR_STATE), so no call can race the step.
  std::atomic<int> busy{0};
  // Weights derived from this storage's values for inference (native/model/derived.h): they are
  // freed with it.
  std::shared_ptr<DerivedSlot> derived;
  // lasting: Backend::allocate_lasting (memory kept long and read whole by every call).
  static std::shared_ptr<Storage> allocate(size_t bytes, Device device, bool lasting = false);
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
  // The rows (along dimension 0) that optimizers update: [update_begin, update_end), -1 for the
  // last row. A model's frozen and inactive branches are the rows outside (Model::set_branches).
  int64_t update_begin = 0, update_end = -1;

  TensorImpl();
  ~TensorImpl();
  TensorImpl(const TensorImpl&) = delete;
  TensorImpl& operator=(const TensorImpl&) = delete;

  int64_t numel() const { return shape_numel(shape); }
  int64_t dim() const { return static_cast<int64_t>(shape.size()); }
  int64_t size(int64_t d) const;  // negative d counts from the end
  bool is_contiguous() const;
  // Host access to the first element: ERROR_DEVICE unless the tensor is on the CPU (code that
  // reads data on the host must copy it there first), ERROR_DTYPE for the other dtype.
  float* f32() const;
  int32_t* i32() const;
  // The first element in the memory of the tensor's device: only kernels of that device may
  // dereference it (ops hand it to their Backend).
  float* ptr_f32() const;
  int32_t* ptr_i32() const;
  void* ptr() const;
};

struct MemoryStats {
  int64_t tensors;     // live TensorImpl objects, views and graph internals included
  int64_t bytes;       // bytes of live storage on all devices
  int64_t cuda_bytes;  // of which on DEVICE_CUDA
  int64_t peak_bytes;  // the most `bytes` has been since reset_peak_bytes()
};
MemoryStats memory_stats();
void reset_peak_bytes();

// The CPU block cache: freed blocks of 64 KiB and more are kept by size class (up to the cache's
// limit; a block freed into a full cache replaces the longest-cached ones) and reused, so
// steady-state training allocates without page faults.
struct CacheStats {
  int64_t cached_bytes;
  int64_t limit_bytes;
  int64_t hits;
  int64_t misses;
};
CacheStats cache_stats();  // limit_bytes: the limit in force (auto: as it stands now)
// A fixed limit (0 disables caching), or CACHE_LIMIT_AUTO (the default): the larger of 1 GiB and
// the most bytes of cacheable blocks the program has had in use at once.
constexpr int64_t CACHE_LIMIT_AUTO = -1;
void set_cache_limit(int64_t bytes);
void empty_cache();                   // returns every cached block to the system

Tensor empty(const Shape& shape, DType dtype = DTYPE_F32, Device device = DEVICE_CPU);
// empty() of float32 memory kept long and read whole by every call (Backend::allocate_lasting).
Tensor empty_lasting(const Shape& shape, Device device);
Tensor zeros(const Shape& shape, DType dtype = DTYPE_F32, Device device = DEVICE_CPU);
Tensor full(const Shape& shape, float value, Device device = DEVICE_CPU);
Tensor zeros_like(const Tensor& t);
Tensor empty_like(const Tensor& t);
// Whether t's elements fill its span exactly once (its strides a permutation of a contiguous
// layout): dense tensors can lend their layout to buffers made for them.
bool is_dense(const Tensor& t);
// Like empty_like, but with t's memory order when t is dense (its strides a permutation of a
// contiguous layout): gradients laid out like the tensors they belong to need no copies.
Tensor empty_like_layout(const Tensor& t);
// Whether t and u address their elements in the same order (same shape and strides).
bool same_layout(const Tensor& t, const Tensor& u);
bool same_layout(const TensorImpl& t, const TensorImpl& u);
// A view: same storage, given shape/strides/offset, no autograd history.
Tensor make_view(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset);
// The same data with no autograd history (saved tensors use this to avoid reference cycles).
Tensor detach(const Tensor& t);
// t itself if contiguous, else a contiguous copy on the same device (no autograd history).
Tensor contiguous_data(const Tensor& t);
// t itself if it lives on `device`, else a contiguous copy there (no autograd history).
Tensor to_device(const Tensor& t, Device device);
// Copy src into dst elementwise (same shape and dtype; any strides; any two devices).
void copy_into(const Tensor& dst, const Tensor& src);
// Records an in-place write to t's storage (see Storage::version). Every op that writes into an
// existing tensor calls it: copy_into, the optimizer updates, scale_inplace, moves between devices.
inline void mark_written(const Tensor& t) {
  if (t && t->storage) t->storage->version.fetch_add(1, std::memory_order_relaxed);
}
// dst += src elementwise (same shape and device; any strides; float32).
void add_into(const Tensor& dst, const Tensor& src);
// Moves t's data to `device` in place: t (and views made from it later) address the new storage.
// Views made earlier keep the old one. For parameters (model.to(device)).
void move_storage(const Tensor& t, Device device);

// The elementwise kernel over tensors: out (+)= f(a, b), a and b broadcast to out's shape (b may
// be null). Dimensions are coalesced before the backend sees them.
void launch_map(MapOp op, const Tensor& out, const Tensor& a, const Tensor& b, float scalar = 0.0f,
                bool accumulate = false);
// The reduction over tensors: out (+)= scale * in summed over the dims where out has size 1 and
// in does not (out has in's rank; its strides are used, so out may be a view).
void launch_reduce(const Tensor& out, const Tensor& in, float scale = 1.0f, bool accumulate = false);
// Strides that read `t` as if broadcast to `out` (0 along broadcast dimensions).
Shape broadcast_strides(const Tensor& t, const Shape& out);

// Normalise a possibly negative dimension index; throws ERROR_SHAPE naming `what`.
int64_t wrap_dim(int64_t d, int64_t ndim, const char* what);

// Common argument checks, used by ops (kernels trust their inputs).
void check_f32(const Tensor& t, const char* op, const char* arg);
void check_i32(const Tensor& t, const char* op, const char* arg);
// Both on one device; ERROR_DEVICE naming both devices otherwise.
void check_same_device(const Tensor& a, const Tensor& b, const char* op);
void check_dim(const Tensor& t, int64_t ndim, const char* op, const char* arg);

}  // namespace duat
