// parallel.h: the one thread pool. parallel_for splits [0, n) into tasks run on the pool's
// workers and the calling thread; a call made from inside a task runs inline (no nesting, no
// oversubscription).
#pragma once
#include <cstdint>
#include <functional>

namespace duat {

int get_num_threads();
void set_num_threads(int n);  // 1 .. 256; 0 = hardware concurrency

// Calls fn(task) for task in [0, n_tasks), spread over the pool.
void parallel_for(int64_t n_tasks, const std::function<void(int64_t)>& fn);

// Splits [0, n) into contiguous ranges of at least `grain` items, one or more per thread.
void parallel_for_range(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace duat
