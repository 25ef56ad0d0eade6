// parallel.cpp: a fixed pool of workers woken per parallel_for; tasks are claimed with an
// atomic counter, and the caller works too, so a pool of n threads has n - 1 workers.
// Between regions a worker spins for a short while (SPIN_NS) before it sleeps on the condition
// variable: a training step opens hundreds of small regions, and a futex wake-up costs tens of
// microseconds each, while the spin costs at most SPIN_NS of one core per idle gap. A pool larger
// than the machine's hardware threads never spins: its spinning workers would take the cores from
// the ones with work (256 threads on 2 cores made a training step 200 times slower).
#include "parallel.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace duat {

namespace {

thread_local bool t_in_task = false;
constexpr int MAX_THREADS = 256;  // the pool's largest size (set_num_threads)
constexpr int64_t SPIN_NS = 200000;

// pool_use's totals (parallel.h), added to only while g_counting is on.
std::atomic<bool> g_counting{false};
std::atomic<int64_t> g_wall_ns{0}, g_busy_ns{0};

int64_t now_ns() {
  using std::chrono::steady_clock;
  return std::chrono::duration_cast<std::chrono::nanoseconds>(steady_clock::now().time_since_epoch()).count();
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

class Pool {
 public:
  explicit Pool(int n) { start(n); }
  ~Pool() { stop(); }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void resize(int n) {
    std::lock_guard<std::mutex> run(run_mutex_);
    stop();
    start(n);
  }

  void run(int64_t n_tasks, const FunctionRef<void(int64_t)>& fn) {
    std::lock_guard<std::mutex> run(run_mutex_);  // one parallel region at a time
    const bool counting = g_counting.load(std::memory_order_relaxed);
    const int64_t t0 = counting ? now_ns() : 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      fn_ = &fn;
      counting_ = counting;
      n_tasks_ = n_tasks;
      next_.store(0);
      pending_.store(static_cast<int>(workers_.size()));
      error_ = nullptr;
      generation_++;
    }
    wake_.notify_all();
    const int64_t t_work = counting ? now_ns() : 0;
    work();
    const int64_t t_done = counting ? now_ns() : 0;
    // The caller spins for the last workers too before it sleeps (a region's tasks end within
    // microseconds of each other; a futex sleep and wake-up would cost more).
    spin_while([&] { return pending_.load(std::memory_order_acquire) != 0; });
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return pending_.load(std::memory_order_acquire) == 0; });
    fn_ = nullptr;
    if (counting) {  // the workers added their busy time before counting themselves out of pending_
      const int64_t t1 = now_ns();
      g_wall_ns.fetch_add(t1 - t0, std::memory_order_relaxed);
      g_busy_ns.fetch_add(t_done - t_work, std::memory_order_relaxed);
    }
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void start(int n) {
    quit_ = false;
    const unsigned hw = std::thread::hardware_concurrency();
    spin_ns_ = hw == 0 || static_cast<unsigned>(n) <= hw ? SPIN_NS : 0;
    // A new worker starts from the current generation: were it to start from 0 it would take the
    // last finished region (or the next one, half begun) for a new one and count itself out of
    // `pending_` twice, and the region after would wait for ever (or end while tasks still run).
    const uint64_t now = generation_.load();
    for (int i = 1; i < n; i++) workers_.emplace_back([this, now] { loop(now); });
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      quit_ = true;
      generation_++;
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

  // Spins while `busy()` holds, for at most spin_ns_ (0 when oversubscribed).
  template <typename Busy>
  void spin_while(Busy busy) const {
    const auto spin_until = std::chrono::steady_clock::now() + std::chrono::nanoseconds(spin_ns_);
    while (busy() && std::chrono::steady_clock::now() < spin_until)
      for (int i = 0; i < 16; i++) cpu_relax();
  }

  void work() {
    t_in_task = true;
    for (;;) {
      int64_t task = next_.fetch_add(1);
      if (task >= n_tasks_) break;
      try {
        (*fn_)(task);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
        next_.store(n_tasks_);
      }
    }
    t_in_task = false;
  }

  void loop(uint64_t seen) {
    for (;;) {
      // Spin briefly for the next region, then sleep.
      spin_while([&] { return generation_.load(std::memory_order_acquire) == seen; });
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load() != seen; });
        seen = generation_.load();
        if (quit_) return;
      }
      const bool counting = counting_;  // the region's, as its caller counts it
      const int64_t t0 = counting ? now_ns() : 0;
      work();
      if (counting) g_busy_ns.fetch_add(now_ns() - t0, std::memory_order_relaxed);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        // Under the mutex: the caller checks `pending_` under it before it sleeps.
        std::lock_guard<std::mutex> lock(mutex_);
        done_.notify_one();
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex run_mutex_, mutex_;
  std::condition_variable wake_, done_;
  const FunctionRef<void(int64_t)>* fn_ = nullptr;
  bool counting_ = false;  // whether the region's threads add to pool_use's totals
  int64_t n_tasks_ = 0;
  std::atomic<int64_t> next_{0};
  std::atomic<int> pending_{0};
  std::atomic<uint64_t> generation_{0};
  bool quit_ = false;
  int64_t spin_ns_ = SPIN_NS;  // set by start(): 0 when oversubscribed
  std::exception_ptr error_;
};

int default_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n ? static_cast<int>(std::min<unsigned>(n, MAX_THREADS)) : 1;
}

Pool& pool() {
  static Pool p(default_threads());
  return p;
}

}  // namespace

int get_num_threads() { return pool().size(); }

void set_num_threads(int n) { pool().resize(n <= 0 ? default_threads() : std::min(n, MAX_THREADS)); }

void parallel_for(int64_t n_tasks, FunctionRef<void(int64_t)> fn) {
  if (n_tasks <= 0) return;
  if (n_tasks == 1 || t_in_task || pool().size() == 1) {
    for (int64_t t = 0; t < n_tasks; t++) fn(t);
    return;
  }
  pool().run(n_tasks, fn);
}

void parallel_for_shares(int64_t n_tasks, FunctionRef<void(int64_t)> fn) {
  const int64_t threads = t_in_task ? 1 : std::min<int64_t>(get_num_threads(), n_tasks);
  if (threads <= 1 || n_tasks >= (int64_t{1} << 32)) return parallel_for(n_tasks, fn);
  // A share's tasks left, [front, back), in one word (front in the high half): its own thread takes
  // the front and the others the back, and a compare-and-swap never lets both take the same task.
  // On the stack: every packed product opens one of these.
  std::array<std::atomic<uint64_t>, MAX_THREADS> shares;
  for (int64_t s = 0; s < threads; s++)
    shares[static_cast<size_t>(s)].store(static_cast<uint64_t>(n_tasks * s / threads) << 32 |
                                         static_cast<uint64_t>(n_tasks * (s + 1) / threads));
  std::atomic<bool> failed{false};
  auto take = [&](int64_t s, bool front) -> int64_t {
    std::atomic<uint64_t>& share = shares[static_cast<size_t>(s)];
    uint64_t v = share.load(std::memory_order_relaxed);
    for (;;) {
      const uint64_t lo = v >> 32, hi = v & 0xFFFFFFFFu;
      if (lo >= hi || failed.load(std::memory_order_relaxed)) return -1;
      const uint64_t next = front ? (lo + 1) << 32 | hi : lo << 32 | (hi - 1);
      if (share.compare_exchange_weak(v, next, std::memory_order_relaxed)) return static_cast<int64_t>(front ? lo : hi - 1);
    }
  };
  parallel_for(threads, [&](int64_t s) {
    try {
      for (int64_t t; (t = take(s, true)) >= 0;) fn(t);
      for (int64_t o = 1; o < threads; o++)
        for (int64_t t; (t = take((s + o) % threads, false)) >= 0;) fn(t);
    } catch (...) {
      failed.store(true);  // the other threads stop taking tasks; parallel_for rethrows this
      throw;
    }
  });
}

// ---- the engine thread ----
// The bindings' asynchronous jobs ran on libuv's worker threads, a different one from job to job
// (four by default, taken in turn): a step often began on a thread that had not run for three
// steps, and one step in three or four ran its first products at half speed (most likely that
// thread placed on the core of the pool's spinning worker, its scratch cold). One long-lived
// thread now runs them all: ViT-4 training steps 2.1 ms (+-1.6) faster at 109 ms, the gain in the
// slow steps; Para-Former-1-4 0.3 ms (+-0.9) (bench/results/cpu-ab-engine.md).
namespace {
thread_local bool t_on_engine = false;

class Engine {
 public:
  void run(const std::function<void()>& fn) {
    Job job;
    job.fn = &fn;
    bool queued = false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!started_) started_ = start();
      if (started_) {
        queue_.push_back(&job);
        queued = true;
      }
    }
    if (!queued) return fn();  // no thread to be had: the job runs where it was asked for
    wake_.notify_one();
    {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [&] { return job.done; });
    }
    if (job.error) std::rethrow_exception(job.error);
  }

 private:
  struct Job {
    const std::function<void()>* fn = nullptr;
    bool done = false;
    std::exception_ptr error;
  };

  // Starts the thread (under mutex_); false when the system has none to give.
  bool start() {
    try {
      std::thread([this] { loop(); }).detach();
      return true;
    } catch (const std::system_error&) {
      return false;
    }
  }

  // Jobs in the order they came, each to its end; never returns (the thread is detached and
  // sleeps on wake_ at exit).
  void loop() {
    t_on_engine = true;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return !queue_.empty(); });
      Job* job = queue_.front();
      queue_.pop_front();
      lock.unlock();
      try {
        (*job->fn)();
      } catch (...) {
        job->error = std::current_exception();
      }
      lock.lock();
      job->done = true;
      done_.notify_all();  // every waiting caller looks at its own job
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::deque<Job*> queue_;
  bool started_ = false;
};
}  // namespace

void run_on_engine(const std::function<void()>& fn) {
  if (t_on_engine) return fn();
  static Engine* engine = new Engine();  // never destroyed: its thread outlives statics
  engine->run(fn);
}

void pool_use_counting(bool on) { g_counting.store(on); }

PoolUse pool_use() { return {g_wall_ns.load(), g_busy_ns.load()}; }

void parallel_for_range(int64_t n, int64_t grain, FunctionRef<void(int64_t, int64_t)> fn) {
  if (n <= 0) return;
  const int64_t threads = t_in_task ? 1 : get_num_threads();
  int64_t chunks = std::min<int64_t>(threads, std::max<int64_t>(1, n / std::max<int64_t>(grain, 1)));
  if (chunks <= 1) {
    fn(0, n);
    return;
  }
  const int64_t step = (n + chunks - 1) / chunks;
  parallel_for(chunks, [&](int64_t c) {
    int64_t lo = c * step, hi = std::min(n, lo + step);
    if (lo < hi) fn(lo, hi);
  });
}

}  // namespace duat
