#include "core/thread_pool.h"

#include <chrono>
#include <cstdlib>
#include <string>

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
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true);
  }
  start_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run_indices(const std::function<void(std::size_t)>& fn, int thread_index) {
  const std::size_t nb = blocks_.size();
  for (std::size_t k = 0; k < nb; ++k) {  // own block first, then help the others in turn
    Block& b = blocks_[(static_cast<std::size_t>(thread_index) + k) % nb];
    for (std::size_t i = b.next.fetch_add(1); i < b.end; i = b.next.fetch_add(1)) fn(i);
  }
}

void ThreadPool::worker_loop(int thread_index) {
  std::uint64_t seen = 0;
  for (;;) {
    auto has_work = [&] { return stop_.load() || generation_.load() != seen; };
    if (!spin_until(has_work, spin_micros_)) {
      std::unique_lock<std::mutex> lock(mutex_);
      sleeping_workers_.fetch_add(1);  // seq_cst: the caller either sees us asleep or we see its job
      start_cv_.wait(lock, has_work);
      sleeping_workers_.fetch_sub(1);
    }
    if (stop_.load()) return;
    seen = generation_.load();
    try {
      run_indices(*job_, thread_index);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
    if (pending_.fetch_sub(1) == 1 && caller_sleeping_.load()) {
      std::lock_guard<std::mutex> lock(mutex_);
      done_cv_.notify_one();
    }
  }
}

void ThreadPool::parallel_for(std::size_t n, const std::function<void(std::size_t)>& fn) {
  if (n == 0) return;
  if (workers_.empty() || n == 1) {
    for (std::size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  job_ = &fn;
  error_ = nullptr;  // no worker touches error_ between jobs
  const std::size_t nb = blocks_.size();
  for (std::size_t t = 0; t < nb; ++t) {  // contiguous blocks, sizes differing by at most one
    blocks_[t].next.store(n * t / nb);
    blocks_[t].end = n * (t + 1) / nb;
  }
  pending_.store(static_cast<int>(workers_.size()));
  generation_.fetch_add(1);  // seq_cst publish of the job
  if (sleeping_workers_.load() > 0) {
    std::lock_guard<std::mutex> lock(mutex_);  // a worker between its check and its wait holds the mutex
    start_cv_.notify_all();
  }
  std::exception_ptr mine;
  try {
    run_indices(fn, 0);
  } catch (...) {
    mine = std::current_exception();
    for (auto& b : blocks_) b.next.store(b.end);  // hand out no more indices; workers finish theirs
  }
  auto all_done = [&] { return pending_.load() == 0; };
  if (!spin_until(all_done, spin_micros_)) {
    std::unique_lock<std::mutex> lock(mutex_);
    caller_sleeping_.store(true);
    done_cv_.wait(lock, all_done);
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

}  // namespace deltairis
