// A small fixed-size thread pool with a blocking parallel_for, shared by the replay sampler and the
// vector env stepper. Indices are handed out dynamically (an atomic counter), which balances uneven
// work such as an env resetting mid-batch; results never depend on the thread count because each
// index is processed exactly once and writes only its own outputs.
//
// Waking a sleeping thread costs a futex call and, on a virtual machine, an inter-processor interrupt
// to a halted vCPU: measured at roughly 100-200 us on the 2-vCPU development VM, as much as stepping
// 3-5 Crafter envs. parallel_for is called in tight loops (one vector-env step after another), so
// after each job the workers, and the caller while it waits for them, spin on an atomic for a short
// budget before falling back to a condition variable. The budget (microseconds) defaults to
// kDefaultSpinMicros and can be set with the environment variable DELTAIRIS_POOL_SPIN_US (0 turns
// spinning off); it bounds the CPU time a pool burns while idle between calls.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace deltairis {

class ThreadPool {
 public:
  static constexpr int kDefaultSpinMicros = 500;

  // spin_micros < 0 reads DELTAIRIS_POOL_SPIN_US (default kDefaultSpinMicros).
  explicit ThreadPool(int num_threads, int spin_micros = -1);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }
  int spin_micros() const { return spin_micros_; }

  // Calls fn(i) for every i in [0, n), spread over the pool's threads and the calling thread.
  // Blocks until all calls return. The first exception thrown by fn is rethrown here.
  // Not reentrant: one parallel_for at a time per pool.
  void parallel_for(std::size_t n, const std::function<void(std::size_t)>& fn);

 private:
  void worker_loop(int thread_index);
  void run_indices(const std::function<void(std::size_t)>& fn, int thread_index);

  // One cache line per block so the threads' counters do not share a line.
  struct alignas(64) Block {
    std::atomic<std::size_t> next{0};
    std::size_t end = 0;
  };

  std::vector<std::thread> workers_;
  int spin_micros_ = 0;

  // Job description, written by the caller before it bumps generation_ (release) and read by workers
  // after they observe the new generation (acquire).
  const std::function<void(std::size_t)>* job_ = nullptr;
  std::vector<Block> blocks_;  // one per thread (the caller is thread 0)

  std::atomic<std::uint64_t> generation_{0};
  std::atomic<int> pending_{0};         // workers that have not finished the current job
  std::atomic<int> sleeping_workers_{0};
  std::atomic<bool> caller_sleeping_{false};
  std::atomic<bool> stop_{false};

  std::mutex mutex_;  // guards the condition variables' sleep/wake hand-over and error_
  std::condition_variable start_cv_;
  std::condition_variable done_cv_;
  std::exception_ptr error_;
};

}  // namespace deltairis
