// N native Crafter envs stepped by a thread pool, with auto-reset and per-episode statistics.
// Outputs go to caller-owned buffers; results do not depend on the thread count because every env
// is stepped by exactly one thread and writes only its own rows.
#pragma once

#include <cstdint>
#include <memory>
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
};

class CrafterVectorEnv {
 public:
  CrafterVectorEnv(std::shared_ptr<const crafter::Assets> assets, int num_envs, int num_threads);

  int num_envs() const { return static_cast<int>(envs_.size()); }
  int num_threads() const { return pool_.num_threads(); }
  const crafter::Assets& assets() const { return *assets_; }
  std::size_t obs_size() const { return obs_size_; }

  // Starts a new episode in every env. With seeds (N values), env i is re-created with seeds[i]
  // (its episode counter restarts, as a fresh crafter.Env); without, each env starts its next episode.
  void reset(const std::int64_t* seeds, std::uint8_t* obs);
  // Steps env i with actions[i] (validated by the caller to lie in [0, num_actions)).
  void step(const std::int64_t* actions, const CrafterStepBuffers& out);

  const crafter::Env& env(int i) const { return *envs_[static_cast<std::size_t>(i)]; }

 private:
  std::shared_ptr<const crafter::Assets> assets_;
  std::vector<std::unique_ptr<crafter::Env>> envs_;
  std::vector<double> returns_;
  std::vector<std::int64_t> lengths_;
  std::size_t obs_size_;
  ThreadPool pool_;
};

}  // namespace deltairis
