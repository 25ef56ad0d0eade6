// parallel.h: the one thread pool. parallel_for splits [0, n) into tasks run on the pool's
// workers and the calling thread; a call made from inside a task runs inline (no nesting, no
// oversubscription).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>

namespace duat {

// A callable passed to a call that runs it before it returns, by reference: unlike a
// std::function made of a lambda that captures more than two pointers, it takes no heap block (a
// batch-1 forward pass opens a few hundred parallel regions). It must not outlive what it refers to.
template <typename Sig>
class FunctionRef;
template <typename R, typename... Args>
class FunctionRef<R(Args...)> {
 public:
  template <typename F, typename = std::enable_if_t<!std::is_same<std::decay_t<F>, FunctionRef>::value &&
                                                    std::is_invocable_r<R, F&, Args...>::value>>
  FunctionRef(F&& f)  // NOLINT: implicit, as std::function's
      : obj_(const_cast<void*>(static_cast<const void*>(std::addressof(f)))),
        call_([](void* obj, Args... args) -> R {
          return (*static_cast<std::remove_reference_t<F>*>(obj))(std::forward<Args>(args)...);
        }) {}
  R operator()(Args... args) const { return call_(obj_, std::forward<Args>(args)...); }

 private:
  void* obj_;
  R (*call_)(void*, Args...);
};

int get_num_threads();
void set_num_threads(int n);  // 1 .. 256; 0 = hardware concurrency

// Calls fn(task) for task in [0, n_tasks), spread over the pool.
void parallel_for(int64_t n_tasks, FunctionRef<void(int64_t)> fn);

// Calls fn(task) for task in [0, n_tasks) as parallel_for does, but each thread first runs a
// contiguous share of the tasks in order, then takes the tasks still left at the ends of the other
// shares. Neighbouring tasks (the next rows of a matrix) then mostly run on one thread, one after
// the other, so what the hardware prefetchers fetch past a task's data is what that thread reads
// next; a thread slowed by a neighbour still has the end of its share taken from it.
void parallel_for_shares(int64_t n_tasks, FunctionRef<void(int64_t)> fn);

// Splits [0, n) into contiguous ranges of at least `grain` items, one or more per thread.
void parallel_for_range(int64_t n, int64_t grain, FunctionRef<void(int64_t, int64_t)> fn);

// Runs fn on the engine thread, one long-lived thread that runs the asynchronous jobs (the
// bindings' training steps and evaluations) one after another in the order they came, and waits
// for it; rethrows what fn throws. Called on the engine thread itself (or where no thread can be
// started), runs fn on the calling thread.
void run_on_engine(const std::function<void()>& fn);

// The pool's use, summed over every parallel region that ran through it (with two or more tasks)
// while counting was on: `wall` the regions' wall time, `busy` the time their threads (the
// caller and the workers) spent running tasks. A span of a thread's work of length dt that
// opened regions left (threads - 1) * dt + (wall - busy) of thread time unused, the differences
// taken across the span. For the profiler (core/profile.h); counting costs a few clock reads per
// region and thread, nothing while off.
struct PoolUse {
  int64_t wall_ns = 0, busy_ns = 0;
};
void pool_use_counting(bool on);
PoolUse pool_use();

}  // namespace duat
