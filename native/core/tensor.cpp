// tensor.cpp: storage through the device's backend, tensor views, strided copies within and
// between devices, and the tensor-level front of the elementwise and reduction kernels.
#include "tensor.h"

#include <algorithm>
#include <cstring>
#include <sstream>

#include "autograd.h"

namespace duat {

namespace {
std::atomic<int64_t> g_live_tensors{0};
std::atomic<int64_t> g_live_bytes{0};
std::atomic<int64_t> g_cuda_bytes{0};
std::atomic<int64_t> g_peak_bytes{0};

// Operands of one elementwise or reduction launch, walked together over one shape.
struct Walk {
  Shape shape;
  std::vector<Shape> strides;  // one set per operand
};

// Drops size-1 dimensions and merges neighbours that every operand steps through as one
// (stride[d] == stride[d+1] * shape[d+1]), so most launches see one or two dimensions.
Walk coalesce(Walk w) {
  Walk out;
  out.strides.resize(w.strides.size());
  for (size_t d = 0; d < w.shape.size(); d++) {
    if (w.shape[d] == 1) continue;
    out.shape.push_back(w.shape[d]);
    for (size_t k = 0; k < w.strides.size(); k++) out.strides[k].push_back(w.strides[k][d]);
  }
  // Merge from the innermost dimension outwards.
  for (size_t d = out.shape.size(); d-- > 1;) {
    bool merge = true;
    for (const Shape& s : out.strides) merge = merge && s[d - 1] == s[d] * out.shape[d];
    if (!merge) continue;
    out.shape[d - 1] *= out.shape[d];
    out.shape.erase(out.shape.begin() + static_cast<std::ptrdiff_t>(d));
    for (Shape& s : out.strides) {
      s[d - 1] = s[d];
      s.erase(s.begin() + static_cast<std::ptrdiff_t>(d));
    }
  }
  DUAT_CHECK(out.shape.size() <= static_cast<size_t>(MAX_DIMS), ERROR_SHAPE,
             "tensors of more than " + std::to_string(MAX_DIMS) + " dimensions are not supported");
  return out;
}

void fill_dims(int64_t* dst, const Shape& src) {
  for (size_t d = 0; d < src.size(); d++) dst[d] = src[d];
}
}  // namespace

const char* dtype_name(DType dtype) { return dtype == DTYPE_F32 ? "float32" : "int32"; }

std::string shape_str(const Shape& shape) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < shape.size(); i++) s << (i ? ", " : "") << shape[i];
  s << "]";
  return s.str();
}

int64_t shape_numel(const Shape& shape) {
  // The product of the nonzero dimensions is bounded too, so that strides (which skip empty
  // dimensions) never overflow either: [0, 2^40, 2^40] is refused though it holds nothing.
  bool empty = false;
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) fail(ERROR_SHAPE, "negative dimension in shape " + shape_str(shape));
    if (d == 0) {
      empty = true;
      continue;
    }
    if (n > MAX_ELEMENTS / d)
      fail(ERROR_SHAPE, "shape " + shape_str(shape) + " has more than 2^40 elements, the most one tensor may hold");
    n *= d;
  }
  return empty ? 0 : n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= std::max<int64_t>(shape[i], 1);
  }
  return strides;
}

std::shared_ptr<Storage> Storage::allocate(size_t bytes, Device device, bool lasting) {
  Backend& be = backend(device);
  auto s = std::make_shared<Storage>();
  s->data = lasting ? be.allocate_lasting(bytes, &s->capacity) : be.allocate(bytes, &s->capacity);
  s->bytes = bytes;
  s->device = device;
  s->owner = &be;
  const int64_t live = g_live_bytes += static_cast<int64_t>(bytes);
  for (int64_t peak = g_peak_bytes.load(); live > peak && !g_peak_bytes.compare_exchange_weak(peak, live);) {
  }
  if (device == DEVICE_CUDA) g_cuda_bytes += static_cast<int64_t>(bytes);
  return s;
}

Storage::~Storage() {
  g_live_bytes -= static_cast<int64_t>(bytes);
  if (device == DEVICE_CUDA) g_cuda_bytes -= static_cast<int64_t>(bytes);
  if (owner) owner->release(data, capacity);
}

int64_t cuda_live_bytes() { return g_cuda_bytes.load(); }

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

namespace {
void check_host(const TensorImpl& t) {
  DUAT_CHECK(t.device == DEVICE_CPU, ERROR_DEVICE,
             std::string("host access to a tensor on ") + device_name(t.device) + ": copy it to the CPU first (to('cpu'))");
}
}  // namespace

float* TensorImpl::f32() const {
  check_host(*this);
  return ptr_f32();
}

int32_t* TensorImpl::i32() const {
  check_host(*this);
  return ptr_i32();
}

float* TensorImpl::ptr_f32() const {
  DUAT_CHECK(dtype == DTYPE_F32, ERROR_DTYPE, "expected a float32 tensor but got int32");
  return static_cast<float*>(storage->data) + offset;
}

int32_t* TensorImpl::ptr_i32() const {
  DUAT_CHECK(dtype == DTYPE_I32, ERROR_DTYPE, "expected an int32 tensor but got float32");
  return static_cast<int32_t*>(storage->data) + offset;
}

void* TensorImpl::ptr() const { return static_cast<char*>(storage->data) + offset * 4; }

MemoryStats memory_stats() {
  return {g_live_tensors.load(), g_live_bytes.load(), g_cuda_bytes.load(), g_peak_bytes.load()};
}

void reset_peak_bytes() { g_peak_bytes.store(g_live_bytes.load()); }

namespace {
Tensor empty_tensor(const Shape& shape, DType dtype, Device device, bool lasting) {
  const int64_t n = shape_numel(shape);
  auto t = std::make_shared<TensorImpl>();
  t->storage = Storage::allocate(static_cast<size_t>(n) * 4, device, lasting);
  t->shape = shape;
  t->strides = contiguous_strides(shape);
  t->dtype = dtype;
  t->device = device;
  return t;
}
}  // namespace

Tensor empty(const Shape& shape, DType dtype, Device device) { return empty_tensor(shape, dtype, device, false); }

Tensor empty_lasting(const Shape& shape, Device device) { return empty_tensor(shape, DTYPE_F32, device, true); }

Tensor zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  if (t->numel()) backend(device).fill(t->storage->data, t->numel(), 0u);
  return t;
}

Tensor full(const Shape& shape, float value, Device device) {
  Tensor t = empty(shape, DTYPE_F32, device);
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  if (t->numel()) backend(device).fill(t->storage->data, t->numel(), bits);
  return t;
}

Tensor zeros_like(const Tensor& t) { return zeros(t->shape, t->dtype, t->device); }
Tensor empty_like(const Tensor& t) { return empty(t->shape, t->dtype, t->device); }

bool is_dense(const Tensor& t) {
  // Sorting the dimensions by stride gives a contiguous layout: no gaps, no overlap.
  std::vector<size_t> order(t->shape.size());
  for (size_t i = 0; i < order.size(); i++) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return t->strides[a] > t->strides[b]; });
  int64_t expect = 1;
  for (size_t k = order.size(); k-- > 0;) {
    const size_t d = order[k];
    if (t->shape[d] != 1 && t->strides[d] != expect) return false;
    expect *= t->shape[d];
  }
  return true;
}

Tensor empty_like_layout(const Tensor& t) {
  if (!is_dense(t) || t->is_contiguous()) return empty_like(t);
  Tensor out = empty({t->numel()}, t->dtype, t->device);
  out->shape = t->shape;
  out->strides = t->strides;
  for (size_t d = 0; d < t->shape.size(); d++)
    if (t->shape[d] == 1) out->strides[d] = 1;
  return out;
}

bool same_layout(const TensorImpl& t, const TensorImpl& u) {
  if (t.shape != u.shape) return false;
  for (size_t d = 0; d < t.shape.size(); d++)
    if (t.shape[d] != 1 && t.strides[d] != u.strides[d]) return false;
  return true;
}
bool same_layout(const Tensor& t, const Tensor& u) { return same_layout(*t, *u); }

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

Shape broadcast_strides(const Tensor& t, const Shape& out) {
  Shape s(out.size(), 0);
  const size_t lead = out.size() - t->shape.size();
  for (size_t i = 0; i < t->shape.size(); i++) s[lead + i] = t->shape[i] == 1 ? 0 : t->strides[i];
  return s;
}

void launch_map(MapOp op, const Tensor& out, const Tensor& a, const Tensor& b, float scalar, bool accumulate) {
  if (out->numel() == 0) return;
  Walk w{out->shape, {out->strides, broadcast_strides(a, out->shape)}};
  if (b) w.strides.push_back(broadcast_strides(b, out->shape));
  w = coalesce(std::move(w));
  MapArgs m;
  m.op = op;
  m.nd = static_cast<int>(w.shape.size());
  fill_dims(m.shape, w.shape);
  m.out = out->ptr();
  fill_dims(m.out_strides, w.strides[0]);
  m.a = a->ptr();
  fill_dims(m.a_strides, w.strides[1]);
  if (b) {
    m.b = b->ptr();
    fill_dims(m.b_strides, w.strides[2]);
  }
  m.scalar = scalar;
  m.accumulate = accumulate;
  backend(out->device).map(m);
}

void launch_reduce(const Tensor& out, const Tensor& in, float scale, bool accumulate) {
  if (in->numel() == 0) {  // a sum of nothing is 0 (out may hold garbage: copy a zero, never scale it)
    if (!accumulate && out->numel()) launch_map(MAP_COPY, out, zeros({}, DTYPE_F32, out->device), nullptr);
    return;
  }
  if (out->shape == in->shape) {  // nothing to sum: an element-wise (scaled) copy, not a reduction
    if (scale == 1.0f)
      launch_map(MAP_COPY, out, in, nullptr, 0.0f, accumulate);
    else
      launch_map(MAP_MUL_SCALAR, out, in, nullptr, scale, accumulate);
    return;
  }
  Shape os = out->strides;
  for (size_t d = 0; d < os.size(); d++)
    if (out->shape[d] == 1) os[d] = 0;
  Walk w = coalesce({in->shape, {in->strides, os}});
  ReduceArgs r;
  r.nd = static_cast<int>(w.shape.size());
  fill_dims(r.shape, w.shape);
  r.in = in->ptr_f32();
  fill_dims(r.in_strides, w.strides[0]);
  r.out = out->ptr_f32();
  fill_dims(r.out_strides, w.strides[1]);
  r.scale = scale;
  r.accumulate = accumulate;
  backend(in->device).reduce(r);
}

void copy_into(const Tensor& dst, const Tensor& src) {
  DUAT_CHECK(dst->shape == src->shape, ERROR_SHAPE, "copy between shapes " + shape_str(dst->shape) + " and " + shape_str(src->shape));
  DUAT_CHECK(dst->dtype == src->dtype, ERROR_DTYPE, "copy between different dtypes");
  mark_written(dst);
  if (dst->numel() == 0) return;
  if (dst->device == src->device) {
    launch_map(MAP_COPY, dst, src, nullptr);
    return;
  }
  // Between devices through a contiguous staging copy on the side that needs one.
  const size_t bytes = static_cast<size_t>(dst->numel()) * 4;
  const Tensor s = contiguous_data(src);
  if (src->device == DEVICE_CPU) {
    const Tensor d = dst->is_contiguous() ? dst : empty_like(dst);
    backend(dst->device).upload(d->ptr(), s->ptr(), bytes);
    if (d != dst) launch_map(MAP_COPY, dst, d, nullptr);
  } else if (dst->device == DEVICE_CPU) {
    const Tensor d = dst->is_contiguous() ? dst : empty_like(dst);
    backend(src->device).download(d->ptr(), s->ptr(), bytes);
    if (d != dst) launch_map(MAP_COPY, dst, d, nullptr);
  } else {
    copy_into(dst, to_device(src, DEVICE_CPU));
  }
}

Tensor to_device(const Tensor& t, Device device) {
  if (t->device == device) return t;
  Tensor out = empty(t->shape, t->dtype, device);
  copy_into(out, t);
  return out;
}

void move_storage(const Tensor& t, Device device) {
  if (t->device == device) return;
  const Tensor moved = to_device(t, device);
  if (t->grad) t->grad = to_device(t->grad, device);
  t->storage = moved->storage;
  t->offset = 0;
  t->strides = moved->strides;
  t->device = device;
}

void add_into(const Tensor& dst, const Tensor& src) {
  DUAT_CHECK(dst->shape == src->shape, ERROR_SHAPE, "add between shapes " + shape_str(dst->shape) + " and " + shape_str(src->shape));
  check_f32(dst, "add", "the destination");
  check_f32(src, "add", "the source");
  check_same_device(dst, src, "add");
  launch_map(MAP_COPY, dst, src, nullptr, 0.0f, true);
}

Tensor contiguous_data(const Tensor& t) {
  if (t->is_contiguous()) return t;
  Tensor out = empty(t->shape, t->dtype, t->device);
  launch_map(MAP_COPY, out, t, nullptr);
  return out;
}

int64_t wrap_dim(int64_t d, int64_t ndim, const char* what) {
  int64_t w = d < 0 ? d + ndim : d;
  DUAT_CHECK(w >= 0 && w < ndim, ERROR_SHAPE,
             std::string(what) + ": dimension " + std::to_string(d) + " is out of range for a tensor of " +
                 std::to_string(ndim) + " dimensions");
  return w;
}

void check_f32(const Tensor& t, const char* op, const char* arg) {
  DUAT_CHECK(t->dtype == DTYPE_F32, ERROR_DTYPE, std::string(op) + ": expected " + arg + " to be float32 but it is int32");
}

void check_i32(const Tensor& t, const char* op, const char* arg) {
  DUAT_CHECK(t->dtype == DTYPE_I32, ERROR_DTYPE, std::string(op) + ": expected " + arg + " to be int32 but it is float32");
}

void check_same_device(const Tensor& a, const Tensor& b, const char* op) {
  DUAT_CHECK(a->device == b->device, ERROR_DEVICE,
             std::string(op) + ": tensors are on different devices (" + device_name(a->device) + " and " +
                 device_name(b->device) + "); move one with to()");
}

void check_dim(const Tensor& t, int64_t ndim, const char* op, const char* arg) {
  DUAT_CHECK(t->dim() == ndim, ERROR_SHAPE,
             std::string(op) + ": expected " + arg + " to have " + std::to_string(ndim) + " dimensions but got shape " +
                 shape_str(t->shape));
}

}  // namespace duat
