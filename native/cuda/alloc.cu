// alloc.cu: the caching allocator (kernels.h). cudaMalloc and cudaFree synchronise the device and
// cost tens of microseconds, so freed blocks go back to a cache by size class and the next request
// of that class takes one from there. All work runs on one stream (stream()), so a block reused
// from the cache is never still in use by earlier work.
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "kernels.h"

namespace duat {
namespace cuda {

namespace {

struct Cache {
  std::mutex mu;
  std::multimap<size_t, void*> free_blocks;        // size class -> block
  std::unordered_map<void*, size_t> live;          // block -> size class
  AllocatorStats stats;
  bool holding = false;                            // hold_frees: freed blocks wait in `held`
  std::vector<std::pair<size_t, void*>> held;
};

Cache& cache() {
  static Cache* c = new Cache();  // never destroyed: blocks may be freed during static teardown
  return *c;
}

void release_cached(Cache& c) {
  for (auto& [size, p] : c.free_blocks) {
    cudaFree(p);
    c.stats.cached -= size;
  }
  c.free_blocks.clear();
}

}  // namespace

size_t allocation_class(size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (bytes <= (1u << 20)) return (bytes + 511) / 512 * 512;
  size_t top = 1u << 20;
  while (top < bytes) top <<= 1;
  const size_t step = top / 16;  // classes top/2 + k*step, k = 1..8
  return (bytes + step - 1) / step * step;
}

void* device_alloc(size_t bytes) {
  Cache& c = cache();
  const size_t size = allocation_class(bytes);
  std::lock_guard<std::mutex> lock(c.mu);
  void* p = nullptr;
  auto it = c.free_blocks.find(size);
  if (it != c.free_blocks.end()) {
    p = it->second;
    c.free_blocks.erase(it);
    c.stats.cached -= size;
    c.stats.cache_hits++;
  } else {
    cudaError_t e = cudaMalloc(&p, size);
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      release_cached(c);
      e = cudaMalloc(&p, size);
    }
    check_cuda(e, "device allocation");
    c.stats.driver_allocs++;
  }
  c.live[p] = size;
  c.stats.in_use += size;
  if (c.stats.in_use > c.stats.peak) c.stats.peak = c.stats.in_use;
  return p;
}

void device_free(void* p) {
  if (!p) return;
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  auto it = c.live.find(p);
  if (it == c.live.end()) return;  // not ours: never hand foreign pointers to the cache
  if (c.holding) {
    c.held.push_back({it->second, p});
  } else {
    c.free_blocks.emplace(it->second, p);
  }
  c.stats.in_use -= it->second;
  c.stats.cached += it->second;
  c.live.erase(it);
}

void hold_frees(bool on) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.holding = on;
  if (on) return;
  for (const auto& [size, p] : c.held) c.free_blocks.emplace(size, p);
  c.held.clear();
}

void empty_cache() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  release_cached(c);
}

AllocatorStats allocator_stats() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  return c.stats;
}

Workspace& gemm_workspace(int64_t partial_floats, int64_t tickets) {
  static Workspace w;
  if (partial_floats > w.partial_floats) {
    device_free(w.partials);
    w.partials = static_cast<float*>(device_alloc(partial_floats * sizeof(float)));
    check_cuda(cudaMemsetAsync(w.partials, 0, partial_floats * sizeof(float), stream()), "split-K accumulators");
    w.partial_floats = partial_floats;
  }
  if (tickets > w.ticket_count) {
    device_free(w.tickets);
    w.tickets = static_cast<int*>(device_alloc(tickets * sizeof(int)));
    check_cuda(cudaMemsetAsync(w.tickets, 0, tickets * sizeof(int), stream()), "split-K tickets");
    w.ticket_count = tickets;
  }
  return w;
}

}  // namespace cuda
}  // namespace duat
