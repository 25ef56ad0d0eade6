// tensor.cpp: storage allocation (64-byte aligned), tensor views and strided copies.
#include "tensor.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <sstream>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "autograd.h"
#include "parallel.h"
#include "strided.h"

namespace duat {

namespace {
std::atomic<int64_t> g_live_tensors{0};
std::atomic<int64_t> g_live_bytes{0};
constexpr size_t ALIGNMENT = 64;  // one cache line, and a full AVX-512 register
constexpr size_t CACHE_MIN = size_t{1} << 16;
constexpr size_t HUGE_PAGE = size_t{1} << 21;

// Large blocks are 2 MiB aligned and offered to the kernel for transparent huge pages: on a VM
// a 4 KiB page fault costs ~10 us, so a fresh 20 MB activation would spend ~50 ms faulting.
void* allocate_block(size_t bytes) {
  if (bytes < 4 * HUGE_PAGE) return std::aligned_alloc(ALIGNMENT, bytes);
  void* p = std::aligned_alloc(HUGE_PAGE, (bytes + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (p) madvise(p, bytes, MADV_HUGEPAGE);
#endif
  return p;
}

// Size classes above CACHE_MIN: eight per power of two (at most 12.5% slack), whole pages.
size_t size_class(size_t bytes) {
  size_t rounded = (bytes + ALIGNMENT - 1) / ALIGNMENT * ALIGNMENT;
  if (rounded < CACHE_MIN) return rounded ? rounded : ALIGNMENT;
  size_t pow2 = CACHE_MIN;
  while (pow2 < rounded) pow2 <<= 1;
  const size_t step = std::max<size_t>(4096, pow2 / 8);
  return (rounded + step - 1) / step * step;
}

struct BlockCache {
  std::mutex mutex;
  std::multimap<size_t, void*> blocks;
  int64_t cached = 0;
  int64_t limit = int64_t{1} << 30;
  int64_t hits = 0, misses = 0;
};

BlockCache& block_cache() {
  static BlockCache* cache = new BlockCache();  // never destroyed: storages may outlive statics
  return *cache;
}
}  // namespace

CacheStats cache_stats() {
  BlockCache& c = block_cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return {c.cached, c.limit, c.hits, c.misses};
}

void empty_cache() {
  BlockCache& c = block_cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  for (auto& [size, p] : c.blocks) std::free(p);
  c.blocks.clear();
  c.cached = 0;
}

void set_cache_limit(int64_t bytes) {
  {
    std::lock_guard<std::mutex> lock(block_cache().mutex);
    block_cache().limit = std::max<int64_t>(bytes, 0);
  }
  empty_cache();
}

const char* dtype_name(DType dtype) { return dtype == DTYPE_F32 ? "float32" : "int32"; }
const char* device_name(Device device) { return device == DEVICE_CPU ? "cpu" : "cuda"; }

std::string shape_str(const Shape& shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); i++) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

std::shared_ptr<Storage> Storage::allocate(size_t bytes, Device device) {
  check(device == DEVICE_CPU, ERROR_DEVICE, "CUDA storage is not available in this build");
  auto s = std::make_shared<Storage>();
  const size_t cls = size_class(bytes);
  if (cls >= CACHE_MIN) {
    BlockCache& c = block_cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    auto it = c.blocks.find(cls);
    if (it != c.blocks.end()) {
      s->data = it->second;
      c.blocks.erase(it);
      c.cached -= static_cast<int64_t>(cls);
      c.hits++;
    } else {
      c.misses++;
    }
  }
  if (!s->data) s->data = allocate_block(cls);
  if (!s->data) {
    empty_cache();  // one retry with the cache returned to the system
    s->data = allocate_block(cls);
  }
  if (!s->data) fail(ERROR_OUT_OF_MEMORY, "out of memory allocating " + std::to_string(bytes) + " bytes");
  s->bytes = bytes;
  s->capacity = cls;
  s->device = device;
  g_live_bytes += static_cast<int64_t>(bytes);
  return s;
}

Storage::~Storage() {
  g_live_bytes -= static_cast<int64_t>(bytes);
  if (capacity >= CACHE_MIN) {
    BlockCache& c = block_cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    if (c.cached + static_cast<int64_t>(capacity) <= c.limit) {
      c.blocks.emplace(capacity, data);
      c.cached += static_cast<int64_t>(capacity);
      return;
    }
  }
  std::free(data);
}

TensorImpl::TensorImpl() { g_live_tensors++; }
TensorImpl::~TensorImpl() { g_live_tensors--; }

int64_t TensorImpl::size(int64_t d) const { return shape[wrap_dim(d, dim(), "size")]; }

bool TensorImpl::is_contiguous() const {
  int64_t expect = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    if (shape[i] != 1 && strides[i] != expect) return false;
    expect *= shape[i];
  }
  return true;
}

float* TensorImpl::f32() const {
  check(dtype == DTYPE_F32, ERROR_DTYPE, "expected a float32 tensor but got int32");
  return static_cast<float*>(storage->data) + offset;
}

int32_t* TensorImpl::i32() const {
  check(dtype == DTYPE_I32, ERROR_DTYPE, "expected an int32 tensor but got float32");
  return static_cast<int32_t*>(storage->data) + offset;
}

MemoryStats memory_stats() { return {g_live_tensors.load(), g_live_bytes.load()}; }

Tensor empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) check(d >= 0, ERROR_SHAPE, "negative dimension in shape " + shape_str(shape));
  auto t = std::make_shared<TensorImpl>();
  t->storage = Storage::allocate(static_cast<size_t>(shape_numel(shape)) * 4, device);
  t->shape = shape;
  t->strides = contiguous_strides(shape);
  t->dtype = dtype;
  t->device = device;
  return t;
}

Tensor zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  std::memset(t->storage->data, 0, t->storage->bytes);
  return t;
}

Tensor full(const Shape& shape, float value) {
  Tensor t = empty(shape);
  float* p = t->f32();
  for (int64_t i = 0, n = t->numel(); i < n; i++) p[i] = value;
  return t;
}

Tensor zeros_like(const Tensor& t) { return zeros(t->shape, t->dtype, t->device); }
Tensor empty_like(const Tensor& t) { return empty(t->shape, t->dtype, t->device); }

Tensor make_view(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset) {
  auto t = std::make_shared<TensorImpl>();
  t->storage = base->storage;
  t->shape = shape;
  t->strides = strides;
  t->offset = offset;
  t->dtype = base->dtype;
  t->device = base->device;
  return t;
}

Tensor detach(const Tensor& t) { return make_view(t, t->shape, t->strides, t->offset); }


void copy_into(const Tensor& dst, const Tensor& src) {
  check(dst->shape == src->shape, ERROR_SHAPE, "copy between shapes " + shape_str(dst->shape) + " and " + shape_str(src->shape));
  check(dst->dtype == src->dtype, ERROR_DTYPE, "copy between different dtypes");
  mark_written(dst);
  if (dst->is_contiguous() && src->is_contiguous()) {
    std::memcpy(static_cast<char*>(dst->storage->data) + dst->offset * 4,
                static_cast<const char*>(src->storage->data) + src->offset * 4, static_cast<size_t>(dst->numel()) * 4);
    return;
  }
  // Both dtypes are 4 bytes: copy as raw 32-bit words, threaded over the outermost dimension,
  // unit-stride runs by memcpy.
  uint32_t* d = static_cast<uint32_t*>(dst->storage->data) + dst->offset;
  const uint32_t* s = static_cast<const uint32_t*>(src->storage->data) + src->offset;
  auto copy_runs = [](uint32_t* d, const uint32_t* s, const Shape& shape, const Shape& sd, const Shape& ss) {
    for_each_run<2>(shape, {&sd, &ss}, [&](auto off, int64_t n, auto inc) {
      if (inc[0] == 1 && inc[1] == 1) {
        std::memcpy(d + off[0], s + off[1], static_cast<size_t>(n) * 4);
      } else {
        for (int64_t i = 0; i < n; i++) d[off[0] + i * inc[0]] = s[off[1] + i * inc[1]];
      }
    });
  };
  if (dst->dim() >= 2 && dst->shape[0] >= 2 && dst->numel() >= (1 << 16)) {
    const Shape inner(dst->shape.begin() + 1, dst->shape.end());
    const Shape sd(dst->strides.begin() + 1, dst->strides.end()), ss(src->strides.begin() + 1, src->strides.end());
    parallel_for_range(dst->shape[0], 1, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; i++) copy_runs(d + i * dst->strides[0], s + i * src->strides[0], inner, sd, ss);
    });
    return;
  }
  copy_runs(d, s, dst->shape, dst->strides, src->strides);
}

void add_into(const Tensor& dst, const Tensor& src) {
  check(dst->shape == src->shape, ERROR_SHAPE, "add between shapes " + shape_str(dst->shape) + " and " + shape_str(src->shape));
  float* d = dst->f32();
  const float* s = src->f32();
  if (dst->is_contiguous() && src->is_contiguous()) {
    const int64_t n = dst->numel();
    parallel_for_range(n, 1 << 16, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; i++) d[i] += s[i];
    });
    return;
  }
  for_each_run<2>(dst->shape, {&dst->strides, &src->strides}, [&](auto off, int64_t n, auto inc) {
    for (int64_t i = 0; i < n; i++) d[off[0] + i * inc[0]] += s[off[1] + i * inc[1]];
  });
}

Tensor contiguous_data(const Tensor& t) {
  if (t->is_contiguous()) return t;
  Tensor out = empty(t->shape, t->dtype, t->device);
  copy_into(out, t);
  return out;
}

int64_t wrap_dim(int64_t d, int64_t ndim, const char* what) {
  int64_t w = d < 0 ? d + ndim : d;
  check(w >= 0 && w < ndim, ERROR_SHAPE,
        std::string(what) + ": dimension " + std::to_string(d) + " is out of range for a tensor of " +
            std::to_string(ndim) + " dimensions");
  return w;
}

void check_f32(const Tensor& t, const char* op, const char* arg) {
  check(t->dtype == DTYPE_F32, ERROR_DTYPE, std::string(op) + ": expected " + arg + " to be float32 but it is int32");
}

void check_i32(const Tensor& t, const char* op, const char* arg) {
  check(t->dtype == DTYPE_I32, ERROR_DTYPE, std::string(op) + ": expected " + arg + " to be int32 but it is float32");
}

void check_same_device(const Tensor& a, const Tensor& b, const char* op) {
  check(a->device == b->device, ERROR_DEVICE,
        std::string(op) + ": tensors are on different devices (" + device_name(a->device) + " and " +
            device_name(b->device) + ")");
}

void check_dim(const Tensor& t, int64_t ndim, const char* op, const char* arg) {
  check(t->dim() == ndim, ERROR_SHAPE,
        std::string(op) + ": expected " + arg + " to have " + std::to_string(ndim) + " dimensions but got shape " +
            shape_str(t->shape));
}

}  // namespace duat
