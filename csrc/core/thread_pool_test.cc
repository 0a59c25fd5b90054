// Unit tests of ThreadPool (thread_pool.h): parallel_for writes every index once per call, errors are
// rethrown and leave a working pool, background tasks run exactly once unless cancelled, drain() waits
// and rethrows, the destructor drops queued tasks.
#include "core/thread_pool.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/info.h"
#include "testing/check.h"

namespace deltairis {
namespace {

using U64 = std::uint64_t;

// sum_{i<n} i*(r+1)+1: what round r of the rounds below writes.
U64 round_sum(std::int64_t n, int r) {
  U64 total = 0;
  for (std::int64_t i = 0; i < n; ++i) total += static_cast<U64>(i) * static_cast<U64>(r + 1) + 1;
  return total;
}

struct Rounds {
  std::vector<U64> sums;
  std::vector<std::string> errors;  // "" where the round succeeded
};

// `rounds` parallel_for calls on one pool; round r writes i*(r+1)+1 at index i, and throws at
// (fail_round, fail_index). Uneven gaps between calls exercise both the spinning and the sleeping hand-over.
Rounds run_rounds(std::int64_t n, int threads, int rounds, int spin_micros, int fail_round = -1,
                  std::int64_t fail_index = -1) {
  Rounds out;
  std::vector<U64> partial(static_cast<std::size_t>(n));
  ThreadPool pool(threads, spin_micros);
  for (int r = 0; r < rounds; ++r) {
    std::fill(partial.begin(), partial.end(), 0);
    try {
      pool.parallel_for(static_cast<std::size_t>(n), [&](std::size_t i) {
        if (r == fail_round && static_cast<std::int64_t>(i) == fail_index)
          throw std::runtime_error("planted failure at index " + std::to_string(i));
        partial[i] = static_cast<U64>(i) * static_cast<U64>(r + 1) + 1;
      });
      out.errors.emplace_back();
    } catch (const std::exception& e) {
      out.errors.emplace_back(e.what());
    }
    U64 total = 0;
    for (auto v : partial) total += v;
    out.sums.push_back(total);
    if (r % 7 == 3) std::this_thread::sleep_for(std::chrono::microseconds(200 * (r % 5)));
  }
  return out;
}

TEST(ThreadPool, ParallelForSumOfSquares) {
  for (std::int64_t n : {0, 1, 2, 7, 1000, 12345}) {
    for (int threads : {1, 2, 3, 8}) {
      std::vector<U64> partial(static_cast<std::size_t>(n));
      {
        ThreadPool pool(resolve_num_threads(threads));
        pool.parallel_for(partial.size(), [&](std::size_t i) { partial[i] = static_cast<U64>(i) * i; });
      }
      U64 total = 0, expected = 0;
      for (std::int64_t i = 0; i < n; ++i) expected += static_cast<U64>(i) * static_cast<U64>(i);
      for (auto v : partial) total += v;
      CHECK_EQ(total, expected);
    }
  }
}

TEST(ThreadPool, ThreadCountHelpers) {
  CHECK_GE(default_num_threads(), 1);
  CHECK_EQ(resolve_num_threads(3), 3);
  CHECK_EQ(resolve_num_threads(0), default_num_threads());
  CHECK_EQ(resolve_num_threads(10000), 256);
  CHECK_EQ(ThreadPool(3).num_threads(), 3);
  CHECK_EQ(ThreadPool(0).num_threads(), 1);
}

TEST(ThreadPool, RepeatedCallsWriteEveryIndexOnce) {
  for (int spin : {0, 50, 100000}) {
    for (int threads : {2, 3, 5}) {
      for (std::int64_t n : {1, 2, 7, 64, 1001}) {
        const int rounds = 60;
        const Rounds got = run_rounds(n, threads, rounds, spin);
        for (int r = 0; r < rounds; ++r) {
          CHECK_EQ(got.sums[r], round_sum(n, r));
          CHECK_EQ(got.errors[r], std::string());
        }
      }
    }
  }
}

TEST(ThreadPool, ExceptionIsRethrownAndPoolSurvives) {
  for (int spin : {0, 100000}) {
    for (std::int64_t fail_index : {0, 5, 63}) {
      const int rounds = 20, fail_round = 9;
      const std::int64_t n = 64;
      const Rounds got = run_rounds(n, 3, rounds, spin, fail_round, fail_index);
      CHECK_EQ(got.errors[fail_round], "planted failure at index " + std::to_string(fail_index));
      for (int r = 0; r < rounds; ++r) {
        if (r == fail_round) continue;
        CHECK_EQ(got.errors[r], std::string());
        CHECK_EQ(got.sums[r], round_sum(n, r));  // every other round ran completely on the same pool
      }
      CHECK_LT(got.sums[fail_round], round_sum(n, fail_round));
    }
  }
}

TEST(ThreadPool, SpinEnvVarIsRead) {
  // Any DELTAIRIS_POOL_SPIN_US value, garbage included, leaves a working pool (garbage: the default).
  const struct {
    const char* value;
    int spin;
  } cases[] = {{"0", 0}, {"250", 250}, {"not-a-number", ThreadPool::kDefaultSpinMicros},
               {"-3", ThreadPool::kDefaultSpinMicros}};
  for (const auto& c : cases) {
    setenv("DELTAIRIS_POOL_SPIN_US", c.value, 1);
    CHECK_EQ(ThreadPool(2).spin_micros(), c.spin);
    const Rounds got = run_rounds(16, 2, 5, -1);
    for (int r = 0; r < 5; ++r) CHECK_EQ(got.sums[r], round_sum(16, r));
    for (const auto& e : got.errors) CHECK_EQ(e, std::string());
  }
  unsetenv("DELTAIRIS_POOL_SPIN_US");
}

struct TaskRounds {
  std::vector<U64> sums;
  std::vector<std::string> drain_errors;
  std::vector<std::int64_t> mismatches;  // rounds whose drain left executed != submitted - cancelled; -1: end
  std::int64_t submitted = 0, executed = 0, cancelled = 0;
};

// Background tasks (busy-waiting task_micros each; tasks_per_round submitted before each parallel_for and
// more from inside it) interleaved with parallel_for rounds as in run_rounds, drains every 5 rounds and
// cancel_pending every cancel_every rounds; task number throw_task throws.
TaskRounds run_task_rounds(std::int64_t n, int threads, int rounds, int spin_micros, int tasks_per_round,
                           int task_micros, int cancel_every, std::int64_t throw_task) {
  TaskRounds out;
  std::vector<U64> partial(static_cast<std::size_t>(n));
  std::atomic<std::int64_t> executed{0}, submitted{0};
  {
    ThreadPool pool(threads, spin_micros);
    auto make_task = [&] {
      const std::int64_t id = submitted.fetch_add(1);
      return [&executed, id, throw_task, task_micros] {
        const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(task_micros);
        while (std::chrono::steady_clock::now() < until) {
        }
        executed.fetch_add(1);
        if (id == throw_task) throw std::runtime_error("planted task failure " + std::to_string(id));
      };
    };
    auto drain = [&](int r) {
      try {
        pool.drain();
      } catch (const std::exception& e) {
        out.drain_errors.emplace_back(e.what());
      }
      if (executed.load() != submitted.load() - out.cancelled) out.mismatches.push_back(r);
    };
    for (int r = 0; r < rounds; ++r) {
      for (int t = 0; t < tasks_per_round; ++t) pool.submit(make_task());
      std::fill(partial.begin(), partial.end(), 0);
      pool.parallel_for(static_cast<std::size_t>(n), [&](std::size_t i) {
        partial[i] = static_cast<U64>(i) * static_cast<U64>(r + 1) + 1;
        if (tasks_per_round > 0 && i % 16 == 5) pool.submit(make_task());  // from inside a job
      });
      U64 total = 0;
      for (auto v : partial) total += v;
      out.sums.push_back(total);
      if (cancel_every > 0 && r % cancel_every == cancel_every - 1) {
        out.cancelled += static_cast<std::int64_t>(pool.cancel_pending());
      }
      if (r % 5 == 4) drain(r);
      if (r % 7 == 3) std::this_thread::sleep_for(std::chrono::microseconds(150 * (r % 5)));
    }
    drain(rounds);
    if (pool.tasks_in_flight() != 0) out.mismatches.push_back(-1);
  }
  out.submitted = submitted.load();
  out.executed = executed.load();
  return out;
}

TEST(ThreadPool, BackgroundTasksInterleaved) {
  // Background tasks never disturb the foreground jobs, every task runs exactly once unless cancelled
  // before it started, and drain() waits for all.
  for (int spin : {0, 50, 100000}) {
    for (int threads : {1, 2, 3, 5}) {
      for (std::int64_t n : {1, 7, 64, 1001}) {
        const int rounds = 40;
        const TaskRounds d = run_task_rounds(n, threads, rounds, spin, 3, 150, 0, -1);
        for (int r = 0; r < rounds; ++r) CHECK_EQ(d.sums[r], round_sum(n, r));
        CHECK(d.mismatches.empty());
        CHECK(d.drain_errors.empty());
        CHECK_EQ(d.cancelled, 0);
        std::int64_t inside = 0;
        for (std::int64_t i = 0; i < n; ++i) inside += i % 16 == 5;
        CHECK_EQ(d.submitted, rounds * 3 + rounds * inside);
        CHECK_EQ(d.executed, d.submitted);
      }
    }
  }
}

TEST(ThreadPool, CancelAndTaskErrors) {
  for (int threads : {1, 2, 4}) {
    const int rounds = 30;
    // 8 tasks a round (4 before parallel_for, 4 from inside); cancel_pending after rounds 2, 5, 8, ...,
    // drain after rounds 4, 9, ...: task 26 (round 3) is never cancelled, so its failure must surface.
    const TaskRounds d = run_task_rounds(64, threads, rounds, 50, 4, 300, 3, 26);
    for (int r = 0; r < rounds; ++r) CHECK_EQ(d.sums[r], round_sum(64, r));
    CHECK(d.mismatches.empty());  // after every drain: executed == submitted - cancelled
    CHECK_EQ(d.executed + d.cancelled, d.submitted);
    if (threads == 1) CHECK_EQ(d.cancelled, 0);  // no workers: tasks run inline in submit()
    // A task's exception reaches the next drain(), once, and the pool keeps working.
    REQUIRE_EQ(d.drain_errors.size(), std::size_t{1});
    CHECK_EQ(d.drain_errors[0], "planted task failure 26");
  }
}

TEST(ThreadPool, DestructorWithPendingTasks) {
  // Destroying a pool with queued tasks drops them, waits for the running ones, and returns promptly.
  for (int threads : {1, 2, 3, 8}) {
    std::atomic<std::int64_t> executed{0};
    const auto start = std::chrono::steady_clock::now();
    {
      ThreadPool pool(threads, 0);
      for (int t = 0; t < 200; ++t) {
        pool.submit([&executed] {
          std::this_thread::sleep_for(std::chrono::microseconds(5000));
          executed.fetch_add(1);
        });
      }
    }
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (threads == 1) {
      CHECK_EQ(executed.load(), 200);  // no workers: each ran inline
    } else {
      CHECK_LT(executed.load(), 200);
      CHECK_LT(elapsed, 0.5);  // no hang: the workers finish at most one 5 ms task each
    }
  }
}

}  // namespace
}  // namespace deltairis

TEST_MAIN()
