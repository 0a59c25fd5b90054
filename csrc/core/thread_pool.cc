#include "core/thread_pool.h"

#include <exception>

namespace deltairis {

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads < 1) num_threads = 1;
  for (int i = 0; i < num_threads - 1; ++i) workers_.emplace_back([this, i] { worker_loop(i + 1); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  start_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::worker_loop(int /*worker_index*/) {
  std::size_t seen = 0;
  for (;;) {
    const std::function<void(std::size_t)>* job;
    std::size_t n;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      start_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      job = job_;
      n = job_size_;
    }
    try {
      for (std::size_t i = next_index_.fetch_add(1); i < n; i = next_index_.fetch_add(1)) (*job)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) done_cv_.notify_all();
    }
  }
}

void ThreadPool::parallel_for(std::size_t n, const std::function<void(std::size_t)>& fn) {
  if (n == 0) return;
  if (workers_.empty() || n == 1) {
    for (std::size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    job_ = &fn;
    job_size_ = n;
    pending_ = static_cast<int>(workers_.size());
    error_ = nullptr;
    next_index_.store(0);
    ++generation_;
  }
  start_cv_.notify_all();
  std::exception_ptr mine;
  try {
    for (std::size_t i = next_index_.fetch_add(1); i < n; i = next_index_.fetch_add(1)) fn(i);
  } catch (...) {
    mine = std::current_exception();
  }
  std::exception_ptr err;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    done_cv_.wait(lock, [&] { return pending_ == 0; });
    job_ = nullptr;
    err = error_ ? error_ : mine;
  }
  if (err) std::rethrow_exception(err);
}

}  // namespace deltairis
