#include "core/thread_pool.h"

#include <chrono>
#include <cstdlib>
#include <string>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define DELTAIRIS_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define DELTAIRIS_CPU_RELAX() asm volatile("yield" ::: "memory")
#else
#define DELTAIRIS_CPU_RELAX() std::this_thread::yield()
#endif

namespace deltairis {
namespace {

int spin_from_env() {
  const char* v = std::getenv("DELTAIRIS_POOL_SPIN_US");
  if (v == nullptr || *v == '\0') return ThreadPool::kDefaultSpinMicros;
  char* end = nullptr;
  const long us = std::strtol(v, &end, 10);
  if (end == v || *end != '\0' || us < 0) return ThreadPool::kDefaultSpinMicros;  // ignore garbage
  return us > 1000000 ? 1000000 : static_cast<int>(us);
}

// Spins until done() or until `micros` have passed; returns done()'s last value.
template <typename Pred>
bool spin_until(Pred done, int micros) {
  if (done()) return true;
  if (micros <= 0) return false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(micros);
  for (;;) {
    for (int k = 0; k < 64; ++k) {
      if (done()) return true;
      DELTAIRIS_CPU_RELAX();
    }
    if (std::chrono::steady_clock::now() >= deadline) return done();
  }
}

}  // namespace

ThreadPool::ThreadPool(int num_threads, int spin_micros)
    : spin_micros_(spin_micros < 0 ? spin_from_env() : spin_micros) {
  if (num_threads < 1) num_threads = 1;
  blocks_ = std::vector<Block>(static_cast<std::size_t>(num_threads));
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  std::deque<std::function<void()>> dropped;  // destroyed after the workers are gone, outside the lock
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true);
    dropped.swap(tasks_);
    queued_.store(0);
  }
  start_cv_.notify_all();
  for (auto& t : workers_) t.join();  // a worker finishes the task it is running, then exits
}

void ThreadPool::run_indices(const std::function<void(std::size_t)>& fn, int thread_index) {
  const std::size_t nb = blocks_.size();
  for (std::size_t k = 0; k < nb; ++k) {  // own block first, then help the others in turn
    Block& b = blocks_[(static_cast<std::size_t>(thread_index) + k) % nb];
    for (std::size_t i = b.next.fetch_add(1); i < b.end; i = b.next.fetch_add(1)) fn(i);
  }
}

void ThreadPool::run_task(std::function<void()>& task) {
  std::exception_ptr err;
  try {
    task();
  } catch (...) {
    err = std::current_exception();
  }
  task = nullptr;  // release what the task captured before it counts as finished
  std::lock_guard<std::mutex> lock(mutex_);
  if (err && !task_error_) task_error_ = err;
  --running_tasks_;
  if (running_tasks_ == 0 && tasks_.empty()) idle_cv_.notify_all();
}

void ThreadPool::worker_loop(int thread_index) {
  std::uint64_t joined = 0;  // the last job generation this worker joined or passed over
  auto job_open = [&] {
    const std::uint64_t g = generation_.load();
    return (g & 1) != 0 && g != joined;
  };
  auto has_work = [&] { return stop_.load() || job_open() || queued_.load() > 0; };
  for (;;) {
    if (!spin_until(has_work, spin_micros_)) {
      std::unique_lock<std::mutex> lock(mutex_);
      sleeping_workers_.fetch_add(1);  // seq_cst: the caller either sees us asleep or we see its job
      start_cv_.wait(lock, has_work);
      sleeping_workers_.fetch_sub(1);
    }
    if (stop_.load()) return;

    // The foreground job first.
    const std::uint64_t g = generation_.load();
    if ((g & 1) != 0 && g != joined) {
      joined = g;
      active_.fetch_add(1);             // seq_cst, then re-read the generation (Dekker with the close):
      if (generation_.load() == g) {    // still open, so job_ and blocks_ are this job's until we leave
        try {
          run_indices(*job_, thread_index);
        } catch (...) {
          for (auto& b : blocks_) b.next.store(b.end);  // hand out no more indices
          std::lock_guard<std::mutex> lock(mutex_);
          if (!error_) error_ = std::current_exception();
        }
      }
      if (active_.fetch_sub(1) == 1 && caller_sleeping_.load()) {
        std::lock_guard<std::mutex> lock(mutex_);
        done_cv_.notify_one();
      }
      continue;  // look for work again (a job may have opened meanwhile)
    }

    // Otherwise one background task.
    std::function<void()> task;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (tasks_.empty()) continue;  // another thread took it
      task = std::move(tasks_.front());
      tasks_.pop_front();
      queued_.fetch_sub(1);
      ++running_tasks_;
    }
    run_task(task);
  }
}

void ThreadPool::parallel_for(std::size_t n, const std::function<void(std::size_t)>& fn) {
  if (n == 0) return;
  if (workers_.empty() || n == 1) {
    for (std::size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  // The generation is even and active_ is 0 here: no worker reads job_, blocks_ or error_.
  job_ = &fn;
  error_ = nullptr;
  const std::size_t nb = blocks_.size();
  for (std::size_t t = 0; t < nb; ++t) {  // contiguous blocks, sizes differing by at most one
    blocks_[t].next.store(n * t / nb);
    blocks_[t].end = n * (t + 1) / nb;
  }
  generation_.fetch_add(1);  // seq_cst: open the job (odd)
  if (sleeping_workers_.load() > 0) {
    std::lock_guard<std::mutex> lock(mutex_);  // a worker between its check and its wait holds the mutex
    start_cv_.notify_all();
  }
  std::exception_ptr mine;
  try {
    run_indices(fn, 0);  // returns once every block is exhausted: every index has been claimed
  } catch (...) {
    mine = std::current_exception();
    for (auto& b : blocks_) b.next.store(b.end);  // hand out no more indices; workers finish theirs
  }
  generation_.fetch_add(1);  // seq_cst: close the job (even); a worker arriving now sees it closed
  auto all_left = [&] { return active_.load() == 0; };  // the workers that joined finished their indices
  if (!spin_until(all_left, spin_micros_)) {
    std::unique_lock<std::mutex> lock(mutex_);
    caller_sleeping_.store(true);
    done_cv_.wait(lock, all_left);
    caller_sleeping_.store(false);
  }
  job_ = nullptr;
  std::exception_ptr err;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    err = error_ ? error_ : mine;
  }
  if (err) std::rethrow_exception(err);
}

void ThreadPool::submit(std::function<void()> task) {
  if (!task) return;
  if (workers_.empty()) {  // nobody else could run it
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++running_tasks_;
    }
    run_task(task);
    return;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  if (stop_.load()) return;
  tasks_.push_back(std::move(task));
  queued_.fetch_add(1);  // seq_cst: a spinning worker sees it; a sleeping one registered under the mutex
  if (sleeping_workers_.load() > 0) start_cv_.notify_one();
}

void ThreadPool::drain() {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      idle_cv_.wait(lock, [&] { return running_tasks_ == 0 || !tasks_.empty(); });
      if (tasks_.empty()) break;  // and nothing running
      task = std::move(tasks_.front());
      tasks_.pop_front();
      queued_.fetch_sub(1);
      ++running_tasks_;
    }
    run_task(task);  // help rather than wait for a worker to come round
  }
  std::exception_ptr err;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    err = std::exchange(task_error_, nullptr);
  }
  if (err) std::rethrow_exception(err);
}

std::size_t ThreadPool::cancel_pending() {
  std::deque<std::function<void()>> dropped;  // destroyed outside the lock
  {
    std::lock_guard<std::mutex> lock(mutex_);
    dropped.swap(tasks_);
    queued_.store(0);
    if (running_tasks_ == 0) idle_cv_.notify_all();
  }
  return dropped.size();
}

std::size_t ThreadPool::tasks_in_flight() {
  std::lock_guard<std::mutex> lock(mutex_);
  return tasks_.size() + running_tasks_;
}

}  // namespace deltairis
