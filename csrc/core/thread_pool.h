// A small fixed-size thread pool with a blocking parallel_for and a queue of background tasks, shared
// by the replay sampler and the vector env stepper.
//
// parallel_for (foreground): indices are handed out dynamically from per-thread blocks with stealing,
// which balances uneven work such as an env resetting mid-batch; results never depend on the thread
// count because each index is processed exactly once and writes only its own outputs. Completion does
// not wait for every worker to check in: the caller processes indices until every block is exhausted
// (so every index has been claimed), closes the job, and then waits only for the workers that actually
// joined it (an `active_` count) to finish the indices they claimed. A worker busy with a background
// task therefore never delays a parallel_for; it simply does not take part.
//
// submit (background): tasks run on the worker threads only, one at a time per worker, and only when no
// foreground job is open that the worker has not yet joined (a worker checks for a job before taking a
// task and between tasks). drain() waits until every submitted task has run (the caller helps run queued
// ones); cancel_pending() drops the tasks nobody has started. A pool without workers (one thread) runs
// a submitted task inline in submit(). The destructor drops pending tasks and waits for running ones.
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
#include <deque>
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

  // Calls fn(i) for every i in [0, n), spread over the calling thread and the workers not busy with a
  // background task. Blocks until all calls return. The first exception thrown by fn is rethrown here
  // (indices not yet handed out are then skipped). Not reentrant: one parallel_for at a time per pool,
  // and fn must not call parallel_for, drain or cancel_pending on the same pool (submit is allowed).
  void parallel_for(std::size_t n, const std::function<void(std::size_t)>& fn);

  // Queues a background task for the workers (thread-safe, callable from inside parallel_for's fn).
  // Without workers it runs inline. An exception thrown by a task is kept and rethrown by the next
  // drain() (the first one only).
  void submit(std::function<void()> task);
  // Waits until every task submitted so far has finished, running queued ones on the calling thread
  // too; then rethrows a kept task exception, if any. Call from the thread that calls parallel_for.
  void drain();
  // Drops the queued tasks no worker has started; returns how many. Running tasks are not waited for
  // (drain() after cancel_pending() waits for them).
  std::size_t cancel_pending();
  // Tasks queued or running at this moment (a snapshot).
  std::size_t tasks_in_flight();

 private:
  void worker_loop(int thread_index);
  void run_indices(const std::function<void(std::size_t)>& fn, int thread_index);
  void run_task(std::function<void()>& task);  // runs one dequeued task, then does the bookkeeping

  // One cache line per block so the threads' counters do not share a line.
  struct alignas(64) Block {
    std::atomic<std::size_t> next{0};
    std::size_t end = 0;
  };

  std::vector<std::thread> workers_;
  int spin_micros_ = 0;

  // Foreground job. generation_ is odd while a job is open. The caller writes job_ and blocks_ while
  // the generation is even and no worker is active, then bumps it (seq_cst) to open the job; a worker
  // that sees an odd generation it has not joined increments active_ and re-reads the generation
  // before it touches job_ (Dekker with the caller's close-then-read-active_), so a late worker never
  // reads a finished job or the next job's blocks.
  const std::function<void(std::size_t)>* job_ = nullptr;
  std::vector<Block> blocks_;  // one per thread (the caller is thread 0)
  std::atomic<std::uint64_t> generation_{0};
  std::atomic<int> active_{0};  // workers inside the current job
  std::atomic<int> sleeping_workers_{0};
  std::atomic<bool> caller_sleeping_{false};
  std::atomic<bool> stop_{false};

  // Background tasks (guarded by mutex_); queued_ mirrors tasks_.size() for the lock-free spin checks.
  std::deque<std::function<void()>> tasks_;
  std::atomic<std::size_t> queued_{0};
  std::size_t running_tasks_ = 0;
  std::exception_ptr task_error_;

  std::mutex mutex_;  // guards the sleep/wake hand-over, error_, the task queue and its counters
  std::condition_variable start_cv_;  // workers wait here for a job, a task or stop
  std::condition_variable done_cv_;   // the caller waits here for active_ == 0
  std::condition_variable idle_cv_;   // drain() waits here for running_tasks_ == 0
  std::exception_ptr error_;
};

}  // namespace deltairis
