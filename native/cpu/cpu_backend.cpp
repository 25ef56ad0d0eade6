// cpu_backend.cpp: the CPU backend's memory (the block cache), elementwise and reduction kernels,
// and row kernels (softmax, LayerNorm, cross-entropy). Contracts: core/backend.h.
#include "cpu_backend.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "../core/errors.h"
#include "../core/parallel.h"
#include "../core/strided.h"
#include "../core/tensor.h"
#include "kernels.h"
#include "math.h"

namespace duat {

Backend& cpu_backend() {
  static CpuBackend* cpu = new CpuBackend();  // never destroyed: storages may outlive statics
  return *cpu;
}

// ================================ memory: the block cache =======================================
namespace {
constexpr size_t ALIGNMENT = 64;  // one cache line, and a full AVX-512 register
constexpr size_t CACHE_MIN = size_t{1} << 16;
constexpr size_t HUGE_PAGE = size_t{1} << 21;
constexpr int64_t ELEM_GRAIN = 1 << 15;  // elements per task below which threading costs more

// Blocks of 2 MiB and more are 2 MiB aligned and offered to the kernel for transparent huge pages:
// on a VM a 4 KiB page fault costs ~10 us, so a fresh 20 MB activation would spend ~50 ms
// faulting, and the products' operands are read through fewer TLB entries. (From 8 MiB before:
// Para-Former-1-4's 2.4 MB activations then took 4 KiB pages; with them on huge pages its training
// step went from 146.6, 146.5 to 139.2, 129.9 ms in interleaved profiles, with the same RSS.)
void* allocate_block(size_t bytes) {
  if (bytes < HUGE_PAGE) return std::aligned_alloc(ALIGNMENT, bytes);
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

// Blocks by size class, each with the tick at which it came back. A block given back to a full
// cache takes the place of the longest-cached ones: when the sizes a program asks for change (a
// second model, another batch size) the cache turns over to the new ones; were it to keep its
// old blocks and free the new, every step would fault its memory in afresh (Para-Former-1-12's
// blocks left ViT-12 taking 11,000 faults a step, 400 -> 660 ms).
// Its limit by default (auto) is the larger of 1 GiB and the most bytes of such blocks the program
// has had in use at once: a step whose buffers come to more than 1 GiB gets them all back at the
// next step, as smaller ones do, and the memory kept is never more than the program already held
// at its peak. (With a fixed 1 GiB, Para-Former-12-4's step at batch 64 missed 56 blocks and took
// 1,200-2,600 page faults every step: 2.12 s against 1.40 s; bench/results/cpu-ab-cache-limit.md.)
struct BlockCache {
  struct Block {
    void* p;
    uint64_t tick;
  };
  using Blocks = std::multimap<size_t, Block>;
  std::mutex mutex;
  Blocks blocks;
  std::map<uint64_t, Blocks::iterator> by_age;  // every cached block by its tick, oldest first
  int64_t cached = 0;
  int64_t limit = CACHE_LIMIT_AUTO;     // fixed bytes, or auto
  int64_t in_use = 0, peak_in_use = 0;  // blocks of CACHE_MIN and more handed out and not given back
  int64_t hits = 0, misses = 0;
  uint64_t ticks = 0;

  int64_t effective_limit() const {
    return limit == CACHE_LIMIT_AUTO ? std::max(int64_t{1} << 30, peak_in_use) : limit;
  }
  void hand_out(size_t bytes) {
    in_use += static_cast<int64_t>(bytes);
    peak_in_use = std::max(peak_in_use, in_use);
  }

  void* take(Blocks::iterator it) {
    void* p = it->second.p;
    cached -= static_cast<int64_t>(it->first);
    by_age.erase(it->second.tick);
    blocks.erase(it);
    return p;
  }
};

BlockCache& block_cache() {
  static BlockCache* cache = new BlockCache();  // never destroyed: storages may outlive statics
  return *cache;
}

// ---- lasting blocks (allocate_lasting): the packed inference weights on huge pages ----
// A forward pass reads a model's packed weights whole, and they are larger than L2 (ViT-12's 21
// MB): they come from L3 every pass, through the TLB, and on 4 KiB pages each 24 KiB panel spans
// six of them. Lasting blocks under half a huge page are laid one after another in 2 MiB chunks
// offered for transparent huge pages (a model's weights side by side, as they are packed); a
// chunk goes back to the system when its last block is released. Their capacity carries
// LASTING_TAG (the sizes are multiples of ALIGNMENT), so release() knows them without a lookup.
constexpr size_t LASTING_TAG = 1;

struct LastingChunks {
  std::mutex mutex;
  std::unordered_map<uintptr_t, int64_t> live;  // blocks not yet released, by their chunk's address
  uintptr_t open = 0;                           // the chunk new blocks are laid in
  size_t used = 0;                              // its bytes laid so far
};

LastingChunks& lasting_chunks() {
  static LastingChunks* chunks = new LastingChunks();  // never destroyed: storages may outlive statics
  return *chunks;
}
}  // namespace

CacheStats cache_stats() {
  BlockCache& c = block_cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  return {c.cached, c.effective_limit(), c.hits, c.misses};
}

void empty_cache() {
  BlockCache& c = block_cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  for (auto& [size, block] : c.blocks) std::free(block.p);
  c.blocks.clear();
  c.by_age.clear();
  c.cached = 0;
}

void set_cache_limit(int64_t bytes) {
  {
    BlockCache& c = block_cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    c.limit = bytes == CACHE_LIMIT_AUTO ? bytes : std::max<int64_t>(bytes, 0);
  }
  empty_cache();
}

void* CpuBackend::allocate(size_t bytes, size_t* capacity) {
  size_t cls = size_class(bytes);
  void* p = nullptr;
  if (cls >= CACHE_MIN) {
    // The smallest cached block that fits, up to a quarter larger than the class: a step's
    // buffers come in many sizes, and a new block for each would leave the cached ones unused.
    BlockCache& c = block_cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    auto it = c.blocks.lower_bound(cls);
    if (it != c.blocks.end() && it->first <= cls + cls / 4) {
      cls = it->first;
      p = c.take(it);
      c.hits++;
      c.hand_out(cls);
    } else {
      c.misses++;
    }
  }
  if (!p) {
    p = allocate_block(cls);
    if (!p) {
      empty_cache();  // one retry with the cache returned to the system
      p = allocate_block(cls);
    }
    if (!p) fail(ERROR_OUT_OF_MEMORY, "out of memory allocating " + std::to_string(bytes) + " bytes on the CPU");
    if (cls >= CACHE_MIN) {
      BlockCache& c = block_cache();
      std::lock_guard<std::mutex> lock(c.mutex);
      c.hand_out(cls);
    }
  }
  *capacity = cls;
  return p;
}

int64_t lasting_chunks_held() {
  LastingChunks& c = lasting_chunks();
  std::lock_guard<std::mutex> lock(c.mutex);
  return static_cast<int64_t>(c.live.size());
}

void* CpuBackend::allocate_lasting(size_t bytes, size_t* capacity) {
  const size_t rounded = (bytes + ALIGNMENT - 1) / ALIGNMENT * ALIGNMENT;
  if (rounded == 0 || rounded > HUGE_PAGE / 2) return allocate(bytes, capacity);
  LastingChunks& c = lasting_chunks();
  std::lock_guard<std::mutex> lock(c.mutex);
  if (!c.open || c.used + rounded > HUGE_PAGE) {
    void* chunk = std::aligned_alloc(HUGE_PAGE, HUGE_PAGE);
    if (!chunk) fail(ERROR_OUT_OF_MEMORY, "out of memory allocating " + std::to_string(bytes) + " bytes on the CPU");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(chunk, HUGE_PAGE, MADV_HUGEPAGE);
#endif
    c.open = reinterpret_cast<uintptr_t>(chunk);
    c.used = 0;
  }
  void* p = reinterpret_cast<void*>(c.open + c.used);
  c.used += rounded;
  ++c.live[c.open];  // (a new chunk's count starts at 0)
  *capacity = rounded | LASTING_TAG;
  return p;
}

void CpuBackend::release(void* p, size_t capacity) {
  if (capacity & LASTING_TAG) {
    LastingChunks& c = lasting_chunks();
    void* chunk = nullptr;
    {
      std::lock_guard<std::mutex> lock(c.mutex);
      const uintptr_t base = reinterpret_cast<uintptr_t>(p) & ~(HUGE_PAGE - 1);
      const auto it = c.live.find(base);
      if (--it->second == 0) {
        c.live.erase(it);
        if (c.open == base) c.open = 0;
        chunk = reinterpret_cast<void*>(base);
      }
    }
    std::free(chunk);
    return;
  }
  std::vector<void*> evicted;  // freed after the lock: giving memory back to the system is slow
  if (capacity >= CACHE_MIN) {
    BlockCache& c = block_cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    c.in_use -= static_cast<int64_t>(capacity);
    const int64_t limit = c.effective_limit();
    if (static_cast<int64_t>(capacity) <= limit) {
      while (c.cached + static_cast<int64_t>(capacity) > limit) evicted.push_back(c.take(c.by_age.begin()->second));
      const uint64_t tick = ++c.ticks;
      c.by_age.emplace(tick, c.blocks.emplace(capacity, BlockCache::Block{p, tick}));
      c.cached += static_cast<int64_t>(capacity);
      p = nullptr;
    }
  }
  for (void* e : evicted) std::free(e);
  std::free(p);
}

void CpuBackend::upload(void* dst, const void* host, size_t bytes) { copy(dst, host, bytes); }
void CpuBackend::download(void* host, const void* src, size_t bytes) { copy(host, src, bytes); }

void CpuBackend::copy(void* dst, const void* src, size_t bytes) {
  if (bytes < (size_t{1} << 20)) {
    std::memcpy(dst, src, bytes);
    return;
  }
  const int64_t chunks = get_num_threads();
  parallel_for(chunks, [&](int64_t c) {
    const size_t lo = bytes * c / chunks / 64 * 64, hi = c + 1 == chunks ? bytes : bytes * (c + 1) / chunks / 64 * 64;
    std::memcpy(static_cast<char*>(dst) + lo, static_cast<const char*>(src) + lo, hi - lo);
  });
}

void CpuBackend::fill(void* dst, int64_t words, uint32_t bits) {
  uint32_t* p = static_cast<uint32_t*>(dst);
  if (bits == 0) {
    parallel_for_range(words, ELEM_GRAIN * 4, [&](int64_t lo, int64_t hi) { std::memset(p + lo, 0, (hi - lo) * 4); });
    return;
  }
  parallel_for_range(words, ELEM_GRAIN * 4, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) p[i] = bits;
  });
}

// ================================ elementwise ==================================================
namespace {

// Calls fn(offsets, n, increments) for every innermost run of a walk over `nd` dimensions under K
// stride sets, threaded over the outermost dimension (over the elements when there is one).
template <size_t K, typename Fn>
void parallel_runs(int nd, const int64_t* shape, const std::array<const int64_t*, K>& strides, Fn fn) {
  std::array<int64_t, K> zero{}, inc{};
  if (nd == 0) {
    fn(zero, int64_t{1}, inc);
    return;
  }
  if (nd == 1) {
    for (size_t k = 0; k < K; k++) inc[k] = strides[k][0];
    parallel_for_range(shape[0], ELEM_GRAIN, [&](int64_t lo, int64_t hi) {
      std::array<int64_t, K> off;
      for (size_t k = 0; k < K; k++) off[k] = lo * inc[k];
      fn(off, hi - lo, inc);
    });
    return;
  }
  const Shape inner(shape + 1, shape + nd);
  std::array<Shape, K> inner_strides;
  std::array<const Shape*, K> ptrs;
  for (size_t k = 0; k < K; k++) {
    inner_strides[k].assign(strides[k] + 1, strides[k] + nd);
    ptrs[k] = &inner_strides[k];
  }
  const int64_t per_row = shape_numel(inner);
  parallel_for_range(shape[0], std::max<int64_t>(1, ELEM_GRAIN / std::max<int64_t>(per_row, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) {
      std::array<int64_t, K> base;
      for (size_t k = 0; k < K; k++) base[k] = i * strides[k][0];
      for_each_run<K>(inner, ptrs, [&](auto off, int64_t n, auto runinc) {
        for (size_t k = 0; k < K; k++) off[k] += base[k];
        fn(off, n, runinc);
      });
    }
  });
}

template <MapOp OP>
inline float map_value(float a, float b, float s) {
  switch (OP) {
    case MAP_ADD: return a + b;
    case MAP_SUB: return a - b;
    case MAP_MUL: return a * b;
    case MAP_DIV: return a / b;
    case MAP_ADD_SCALAR: return a + s;
    case MAP_MUL_SCALAR: return a * s;
    default: return a;
  }
}

constexpr bool binary_op(MapOp op) {
  return op == MAP_ADD || op == MAP_SUB || op == MAP_MUL || op == MAP_DIV || op == MAP_GELU_GRAD;
}

template <MapOp OP, bool ACC>
void map_float(const MapArgs& m) {
  float* out = static_cast<float*>(m.out);
  const float* a = static_cast<const float*>(m.a);
  const float* b = binary_op(OP) ? static_cast<const float*>(m.b) : a;
  const int64_t* bs = binary_op(OP) ? m.b_strides : m.a_strides;
  const float s = m.scalar;
  parallel_runs<3>(m.nd, m.shape, {m.out_strides, m.a_strides, bs}, [&](auto off, int64_t n, auto inc) {
    float* po = out + off[0];
    const float* pa = a + off[1];
    const float* pb = b + off[2];
    // GELU through the active instruction set's row kernels on every layout (the AVX-512 ones
    // compute it by table, math.h): the whole run when it is contiguous, else element by element.
    if constexpr (OP == MAP_GELU || OP == MAP_GELU_GRAD) {
      auto gelu_run = [&](int64_t i, int64_t len) {
        if constexpr (OP == MAP_GELU) {
          gelu_forward_range_cpu(pa + i * inc[1], po + i * inc[0], len, ACC ? 1.0f : 0.0f);
        } else {
          gelu_backward_range_cpu(pa + i * inc[1], pb + i * inc[2], po + i * inc[0], len, ACC);
        }
      };
      if (inc[0] == 1 && inc[1] == 1 && inc[2] == 1) return gelu_run(0, n);
      for (int64_t i = 0; i < n; i++) gelu_run(i, 1);
      return;
    }
    if (inc[0] == 1 && inc[1] == 1 && inc[2] == 1) {
#pragma omp simd
      for (int64_t i = 0; i < n; i++) po[i] = (ACC ? po[i] : 0.0f) + map_value<OP>(pa[i], pb[i], s);
    } else if (inc[0] == 1 && inc[1] == 1 && inc[2] == 0) {
      const float bv = pb[0];
#pragma omp simd
      for (int64_t i = 0; i < n; i++) po[i] = (ACC ? po[i] : 0.0f) + map_value<OP>(pa[i], bv, s);
    } else {
      for (int64_t i = 0; i < n; i++) {
        float& o = po[i * inc[0]];
        o = (ACC ? o : 0.0f) + map_value<OP>(pa[i * inc[1]], pb[i * inc[2]], s);
      }
    }
  });
}

template <MapOp OP>
void map_dispatch(const MapArgs& m) {
  if (m.accumulate) map_float<OP, true>(m);
  else map_float<OP, false>(m);
}

// MAP_COPY without accumulation: raw 4-byte words, so int32 tensors copy too.
void map_words(const MapArgs& m) {
  uint32_t* out = static_cast<uint32_t*>(m.out);
  const uint32_t* a = static_cast<const uint32_t*>(m.a);
  parallel_runs<2>(m.nd, m.shape, {m.out_strides, m.a_strides}, [&](auto off, int64_t n, auto inc) {
    if (inc[0] == 1 && inc[1] == 1) {
      std::memcpy(out + off[0], a + off[1], static_cast<size_t>(n) * 4);
    } else {
      for (int64_t i = 0; i < n; i++) out[off[0] + i * inc[0]] = a[off[1] + i * inc[1]];
    }
  });
}

}  // namespace

void CpuBackend::map(const MapArgs& m) {
  switch (m.op) {
    case MAP_COPY: return m.accumulate ? map_dispatch<MAP_COPY>(m) : map_words(m);
    case MAP_ADD: return map_dispatch<MAP_ADD>(m);
    case MAP_SUB: return map_dispatch<MAP_SUB>(m);
    case MAP_MUL: return map_dispatch<MAP_MUL>(m);
    case MAP_DIV: return map_dispatch<MAP_DIV>(m);
    case MAP_ADD_SCALAR: return map_dispatch<MAP_ADD_SCALAR>(m);
    case MAP_MUL_SCALAR: return map_dispatch<MAP_MUL_SCALAR>(m);
    case MAP_GELU: return map_dispatch<MAP_GELU>(m);
    case MAP_GELU_GRAD: return map_dispatch<MAP_GELU_GRAD>(m);
  }
}

// ================================ reduction ====================================================
// Sums in fp64 into a compact accumulator over the kept dimensions, then writes out once.
// Threads own disjoint accumulators: split over the outermost dimension when it is kept, over the
// columns of the last dimension when that one is kept, over partial sums when nothing is kept.
namespace {
// Whether a reduction walk sums rows of a contiguous last dimension that it keeps (acc stride 1)
// over every other dimension (acc stride 0), the rows lying `ld` floats apart: then *rows and *ld.
bool as_row_sum(const Shape& sh, const Shape& si, const Shape& sa, int64_t* rows, int64_t* ld) {
  const size_t nd = sh.size();
  if (nd < 2 || si[nd - 1] != 1 || sa[nd - 1] != 1) return false;
  int64_t count = 1, stride = 0;
  for (size_t d = nd - 1; d-- > 0;) {
    if (sa[d] != 0) return false;
    if (sh[d] == 1) continue;
    if (count == 1) {
      stride = si[d];
    } else if (si[d] != stride * count) {
      return false;
    }
    count *= sh[d];
  }
  *rows = count;
  *ld = stride;
  return true;
}
}  // namespace

void CpuBackend::reduce(const ReduceArgs& r) {
  const int nd = r.nd;
  Shape shape(r.shape, r.shape + nd), in_s(r.in_strides, r.in_strides + nd), out_s(r.out_strides, r.out_strides + nd);
  Shape kept_shape, acc_s(nd, 0);
  for (int d = nd; d-- > 0;) {
    if (out_s[d] == 0) continue;
    acc_s[d] = shape_numel(kept_shape);
    kept_shape.insert(kept_shape.begin(), shape[d]);
  }
  const int64_t n_acc = shape_numel(kept_shape);
  // fp64 accumulators from the block cache (a fresh vector would page-fault on every call).
  const Tensor acc_buf = zeros({std::max<int64_t>(n_acc, 1) * 2});
  double* acc = reinterpret_cast<double*>(acc_buf->f32());
  const float* in = r.in;
  auto walk = [&](const Shape& sh, const Shape& si, const Shape& sa, const float* src, double* dst) {
    int64_t rows = 0, ld = 0;
    if (as_row_sum(sh, si, sa, &rows, &ld)) return accumulate_rows_f64_cpu(src, ld, rows, dst, sh.back());
    for_each_run<2>(sh, {&si, &sa}, [&](auto off, int64_t n, auto inc) {
      if (inc[1] == 0) {
        double s = 0.0;
        for (int64_t i = 0; i < n; i++) s += src[off[0] + i * inc[0]];
        dst[off[1]] += s;
      } else if (inc[0] == 1 && inc[1] == 1) {
        accumulate_f64_cpu(src + off[0], dst + off[1], n);
      } else {
        for (int64_t i = 0; i < n; i++) dst[off[1] + i * inc[1]] += src[off[0] + i * inc[0]];
      }
    });
  };
  const int64_t total = shape_numel(shape);
  const int threads = get_num_threads();
  if (nd == 0) {
    acc[0] = in[0];
  } else if (total < ELEM_GRAIN || threads == 1) {
    walk(shape, in_s, acc_s, in, acc);
  } else if (out_s[0] != 0 && shape[0] >= threads) {
    const Shape sh(shape.begin() + 1, shape.end()), si(in_s.begin() + 1, in_s.end()), sa(acc_s.begin() + 1, acc_s.end());
    parallel_for_range(shape[0], 1, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; i++) walk(sh, si, sa, in + i * in_s[0], acc + i * acc_s[0]);
    });
  } else if (out_s[nd - 1] != 0 && shape[nd - 1] >= 16) {
    const int64_t cols = shape[nd - 1];
    const int64_t chunks = std::min<int64_t>(threads, cols / 16);
    parallel_for(chunks, [&](int64_t c) {
      Shape sh = shape;
      const int64_t c0 = cols * c / chunks, c1 = cols * (c + 1) / chunks;
      sh[nd - 1] = c1 - c0;
      walk(sh, in_s, acc_s, in + c0 * in_s[nd - 1], acc + c0 * acc_s[nd - 1]);
    });
  } else if (n_acc == 1) {
    std::vector<double> part(threads, 0.0);
    const Shape sh(shape.begin() + 1, shape.end()), si(in_s.begin() + 1, in_s.end()), sa(nd - 1, 0);
    parallel_for(threads, [&](int64_t t) {
      const int64_t lo = shape[0] * t / threads, hi = shape[0] * (t + 1) / threads;
      if (nd == 1) {
        double s = 0.0;
        for (int64_t i = lo; i < hi; i++) s += in[i * in_s[0]];
        part[t] = s;
        return;
      }
      double s = 0.0;
      for (int64_t i = lo; i < hi; i++) walk(sh, si, sa, in + i * in_s[0], &s);
      part[t] = s;
    });
    for (double s : part) acc[0] += s;
  } else {
    walk(shape, in_s, acc_s, in, acc);
  }
  // Write: out (+)= scale * acc over the kept dimensions.
  Shape kept_out_s, kept_acc_s;
  for (int d = 0; d < nd; d++)
    if (out_s[d] != 0) kept_out_s.push_back(out_s[d]), kept_acc_s.push_back(acc_s[d]);
  const double scale = r.scale;
  float* out = r.out;
  for_each_run<2>(kept_shape, {&kept_out_s, &kept_acc_s}, [&](auto off, int64_t n, auto inc) {
    for (int64_t i = 0; i < n; i++) {
      float& o = out[off[0] + i * inc[0]];
      const float v = static_cast<float>(acc[off[1] + i * inc[1]] * scale);
      o = r.accumulate ? o + v : v;
    }
  });
}

// GELU's gradient and its bias sums in one pass: tasks over blocks of rows (a fixed number, so
// the sums do not depend on the thread count), each streaming its rows and keeping fp64 column
// sums (as reduce does) in cache; the blocks' sums are then added in order.
void CpuBackend::gelu_backward_bias(const float* x, const float* dy, float* dx, float* db, int64_t batch,
                                    int64_t rows, int64_t cols, bool accumulate) {
  constexpr int64_t ROWS = 64;
  const int64_t blocks = (rows + ROWS - 1) / ROWS;
  const Tensor part_buf = empty({std::max<int64_t>(batch * blocks * cols, 1) * 2});
  double* part = reinterpret_cast<double*>(part_buf->f32());
  auto task = [&](int64_t t) {
    const int64_t b = t / blocks, r0 = t % blocks * ROWS, r1 = std::min(rows, r0 + ROWS);
    double* sums = part + t * cols;
    std::fill(sums, sums + cols, 0.0);
    const int64_t off = (b * rows + r0) * cols;
    gelu_backward_rows_cpu(x + off, dy + off, dx + off, cols, r1 - r0, cols, sums);
  };
  if (batch * rows * cols < ELEM_GRAIN || get_num_threads() == 1) {
    for (int64_t t = 0; t < batch * blocks; t++) task(t);
  } else {
    parallel_for(batch * blocks, task);
  }
  for (int64_t b = 0; b < batch; b++) sum_parts_f64_cpu(part + b * blocks * cols, blocks, cols, db + b * cols, accumulate);
}

// ================================ rows =========================================================
void CpuBackend::argmax_rows(const float* x, int32_t* out, int64_t rows, int64_t cols) {
  parallel_for_range(rows, std::max<int64_t>(1, ELEM_GRAIN / std::max<int64_t>(cols, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; r++) {
      const float* row = x + r * cols;
      int64_t best = 0;
      for (int64_t j = 1; j < cols; j++)
        if (row[j] > row[best] || (std::isnan(row[j]) && !std::isnan(row[best]))) best = j;
      out[r] = static_cast<int32_t>(best);
    }
  });
}

void CpuBackend::count_correct(const float* logits, const int32_t* labels, float* out, int64_t B, int64_t K) {
  std::vector<int32_t> pred(static_cast<size_t>(B));
  argmax_rows(logits, pred.data(), B, K);
  int64_t n = 0;
  for (int64_t i = 0; i < B; i++) n += pred[i] == labels[i];
  *out = static_cast<float>(n);
}

void CpuBackend::softmax_forward(const float* x, float* y, int64_t rows, int64_t cols, bool log) {
  if (log) log_softmax_forward_cpu(x, y, rows, cols);
  else softmax_forward_cpu(x, y, rows, cols);
}

void CpuBackend::softmax_backward(const float* y, const float* dy, float* dx, int64_t rows, int64_t cols, bool log) {
  if (log) log_softmax_backward_cpu(y, dy, dx, rows, cols);
  else softmax_backward_cpu(y, dy, dx, rows, cols);
}

void CpuBackend::layernorm_forward(const LayerNormArgs& a) {
  std::vector<float> scratch;
  float* mean = a.mean;
  float* rstd = a.rstd;
  if (!mean || !rstd) {
    scratch.resize(static_cast<size_t>(2 * a.rows));
    mean = mean ? mean : scratch.data();
    rstd = rstd ? rstd : scratch.data() + a.rows;
  }
  layernorm_forward_cpu(a.x, a.gamma, a.beta, a.y, mean, rstd, a.rows, a.C, a.eps, a.resid, a.resid_rows);
}

void CpuBackend::layernorm_backward(const LayerNormGradArgs& a) {
  const int64_t C = a.C;
  if (!a.resid) {
    layernorm_backward_cpu(a.x, a.gamma, a.mean, a.rstd, a.dy, a.dx, a.dgamma, a.dbeta, a.rows, C, a.accumulate);
    return;
  }
  // With a residual (no weight), in one pass: a task takes blocks of the residual's rows and, for
  // each block, the matching rows of every set in turn (each set's rows stream in order), adding
  // each row's dx into dx and into the block's fp64 residual sums, which stay in L1.
  constexpr int64_t BLOCK = 16;
  const int64_t R = a.resid_rows, sets = a.rows / R;
  if (sets == 0 || (!a.dx && !a.dresid)) return;
  const int64_t blocks = (R + BLOCK - 1) / BLOCK;
  const int64_t grain = std::max<int64_t>(1, ELEM_GRAIN / (BLOCK * sets * std::max<int64_t>(C, 1)));
  parallel_for_range(blocks, grain, [&](int64_t lo, int64_t hi) {
    thread_local std::vector<double> sums;
    sums.resize(static_cast<size_t>(BLOCK * C));
    for (int64_t r0 = lo * BLOCK; r0 < std::min(R, hi * BLOCK); r0 += BLOCK) {
      const int64_t r1 = std::min(R, r0 + BLOCK);
      for (int64_t s = 0; s < sets; s++)
        for (int64_t r = r0; r < r1; r++) {
          const int64_t row = s * R + r;
          double* sum = a.dresid ? sums.data() + (r - r0) * C : nullptr;
          layernorm_resid_backward_row_cpu(a.x + row * C, a.resid + r * C, a.mean[row], a.rstd[row], a.dy + row * C,
                                           a.dx ? a.dx + row * C : nullptr, a.accumulate, sum, s == 0, C);
        }
      for (int64_t r = r0; a.dresid && r < r1; r++) {
        const double* sum = sums.data() + (r - r0) * C;
        float* dr = a.dresid + r * C;
        if (a.resid_accumulate) {
          for (int64_t c = 0; c < C; c++) dr[c] += static_cast<float>(sum[c]);
        } else {
          for (int64_t c = 0; c < C; c++) dr[c] = static_cast<float>(sum[c]);
        }
      }
    }
  });
}

void CpuBackend::cross_entropy(const float* logits, const int32_t* labels, float* loss, float* dlogits, int64_t B,
                               int64_t K, float smoothing) {
  const float off = smoothing / static_cast<float>(K), on = 1.0f - smoothing + off;
  const float inv_b = 1.0f / static_cast<float>(B);
  double total = 0.0;
  for (int64_t i = 0; i < B; i++) {
    const float* z = logits + i * K;
    const int32_t y = labels[i];
    float* d = dlogits ? dlogits + i * K : nullptr;
    if (y < 0 || y >= K) {
      total = NAN;
      if (d) std::fill(d, d + K, 0.0f);
      continue;
    }
    float m = -INFINITY;
    for (int64_t k = 0; k < K; k++) m = std::max(m, z[k]);
    double s = 0.0, zsum = 0.0;
    for (int64_t k = 0; k < K; k++) s += fast_exp(z[k] - m), zsum += z[k];
    const double lse = m + std::log(s);
    total += (1.0 - smoothing) * (lse - z[y]) + smoothing * (lse - zsum / K);
    if (d)
      for (int64_t k = 0; k < K; k++) d[k] = (fast_exp(z[k] - m) / static_cast<float>(s) - (k == y ? on : off)) * inv_b;
  }
  *loss = static_cast<float>(total / static_cast<double>(B));
}

void CpuBackend::dropout(const float* x, float* out, int64_t n, float p, uint64_t seed, bool accumulate) {
  const float keep_scale = 1.0f / (1.0f - p);
  parallel_for_range(n, ELEM_GRAIN, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) {
      const float v = dm::uniform_at(seed, static_cast<uint64_t>(i), 0) < p ? 0.0f : x[i] * keep_scale;
      out[i] = accumulate ? out[i] + v : v;
    }
  });
}

}  // namespace duat
