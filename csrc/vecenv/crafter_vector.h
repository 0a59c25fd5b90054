// N native Crafter envs stepped by a thread pool, with auto-reset and per-episode statistics.
// Outputs go to caller-owned buffers; results do not depend on the thread count because every env
// is stepped by exactly one thread and writes only its own rows.
//
// Background resets ("spares"). A reset (world generation, ~2.7 ms) costs as much as ~70 steps, and a
// vector step is a barrier: with the reset done inline, one thread generates a world while the others
// finish their steps and wait. An env's next episode depends only on its seed and episode number, so
// with more than one thread each env slot keeps a spare Env already started at the slot's next episode,
// with its first observation, built ahead of time by idle pool workers (ThreadPool::submit). When an
// episode ends, the step swaps the spare in and copies its observation; if the spare is still being
// built it waits for it, and if its build has not started it builds it inline. Then the next spare of
// that slot is queued. The spare's Env is the same engine started with Env::reset_at, so the results
// are byte-identical to N independent envs and to the one-thread pool (no workers: inline resets).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "envs/crafter/engine.h"

namespace deltairis {

// Caller-owned output rows of one vector step (all pointers to C-contiguous arrays of N rows).
struct CrafterStepBuffers {
  std::uint8_t* obs = nullptr;                // (N, H, W, 3)
  float* reward = nullptr;                    // (N,)
  bool* terminated = nullptr;                 // (N,)
  bool* truncated = nullptr;                  // (N,)
  std::uint8_t* final_obs = nullptr;          // (N, H, W, 3), zeros where no episode finished
  double* episode_return = nullptr;           // (N,) 0 where nothing finished
  std::int64_t* episode_length = nullptr;     // (N,)
  std::int32_t* final_inventory = nullptr;    // (N, num_items)
  std::int32_t* final_achievements = nullptr; // (N, num_achievements)
  std::uint8_t* final_semantic = nullptr;     // (N, area_x, area_y)
  std::int64_t* final_player_pos = nullptr;   // (N, 2)
  double* final_discount = nullptr;           // (N,)
  double* final_reward = nullptr;             // (N,) info["reward"] of the last step
  // The final_* info rows above are written only where an episode ended (other rows are left as they
  // are), unless all_infos: then every row gets them, a running env's state after this step.
  bool all_infos = false;
};

class CrafterVectorEnv {
 public:
  CrafterVectorEnv(std::shared_ptr<const crafter::Assets> assets, int num_envs, int num_threads);
  ~CrafterVectorEnv();
  CrafterVectorEnv(const CrafterVectorEnv&) = delete;
  CrafterVectorEnv& operator=(const CrafterVectorEnv&) = delete;

  int num_envs() const { return static_cast<int>(envs_.size()); }
  int num_threads() const { return pool_.num_threads(); }
  const crafter::Assets& assets() const { return *assets_; }
  std::size_t obs_size() const { return obs_size_; }
  bool background_resets() const { return use_spares_; }

  // Starts a new episode in every env. With seeds (N values), env i is re-created with seeds[i]
  // (its episode counter restarts, as a fresh crafter.Env); without, each env starts its next episode.
  void reset(const std::int64_t* seeds, std::uint8_t* obs);
  // Steps env i with actions[i] (validated by the caller to lie in [0, num_actions)).
  void step(const std::int64_t* actions, const CrafterStepBuffers& out);
  // Throws std::invalid_argument naming the first action outside [0, num_actions).
  void check_actions(const std::int64_t* actions) const;

  // Episode starts served so far: from a ready spare, after waiting for a spare being built, and built
  // inline by the step (a spare whose build had not started, or no spares at all). For tests/benchmarks.
  struct ResetCounts {
    std::int64_t ready = 0;
    std::int64_t waited = 0;
    std::int64_t inline_built = 0;
  };
  ResetCounts reset_counts() const;

  // Exact save and restore (checkpoints), independent of the thread count. The state holds every env's
  // Env::save_state blob, its running episode return and length and the reset statistics (magic
  // "DICRAFTV", version kStateVersion, checksum; state_codec.h). The spares are not saved: a slot's spare
  // is always its env's next episode (seed, episode + 1), a function of the saved state, so load_state
  // queues them again and they are rebuilt exactly (Env::reset_at). load_state requires the same number
  // of envs and configuration and throws std::invalid_argument naming the problem, leaving this vector
  // env as it was. Must not run concurrently with step() or reset().
  static constexpr std::uint32_t kStateVersion = 1;
  std::string save_state() const;
  void load_state(const std::string& blob);

  const crafter::Env& env(int i) const { return *envs_[static_cast<std::size_t>(i)]; }

 private:
  enum SpareState : int { kEmpty = 0, kPending = 1, kBuilding = 2, kReady = 3 };
  struct Spare {
    std::unique_ptr<crafter::Env> env;  // reused from the slot's previous episode when the seed matches
    std::vector<std::uint8_t> obs;      // first observation of the spare's episode
    std::int64_t seed = 0;              // what to build (written only while no build can run)
    std::int64_t episode = 0;
    std::atomic<int> state{kEmpty};
    // Statistics, written only by the thread stepping this slot.
    std::int64_t ready = 0, waited = 0, inline_built = 0;
  };

  // Starts env i's next episode, writing its first observation to obs: from the spare (swapped in,
  // and the next spare marked pending) when there is one, else inline.
  void next_episode(std::size_t i, std::uint8_t* obs);
  void build_spare(Spare& s);
  void submit_spare(std::size_t i);
  void drop_spares();  // cancels queued builds, waits for running ones, empties every slot

  std::shared_ptr<const crafter::Assets> assets_;
  std::vector<std::unique_ptr<crafter::Env>> envs_;
  std::vector<std::unique_ptr<Spare>> spares_;
  std::vector<std::uint8_t> needs_submit_;  // per slot, set by the step that consumed its spare
  std::vector<double> returns_;
  std::vector<std::int64_t> lengths_;
  std::size_t obs_size_;
  bool use_spares_ = false;
  ThreadPool pool_;  // last: destroyed first (after ~CrafterVectorEnv has drained it)
};

}  // namespace deltairis
