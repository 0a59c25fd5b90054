// Native Crafter engine (see engine.h), part 2 of 5: reset, world generation and the time of day.
// Every floating-point expression mirrors the operation order of the Python package (numpy float64 /
// float32, Pillow float32) so results agree bit for bit; the library is compiled with -ffp-contract=off.
#include "envs/crafter/engine.h"

#include <cmath>

namespace deltairis {
namespace crafter {
namespace {

constexpr double kPi = 3.141592653589793;

}  // namespace

// ------------------------------------------------------------------------------------------------
// Env: reset, world generation, time
// ------------------------------------------------------------------------------------------------

void Env::update_time() {
  const double progress = std::fmod(static_cast<double>(step_) / 300, 1.0) + 0.3;
  daylight_ = 1 - std::pow(std::abs(std::cos(kPi * progress)), 3.0);
}

void Env::reset_at(std::int64_t episode, std::uint8_t* obs) {
  const int cx = ax_ / 2, cy = ay_ / 2;
  episode_ = episode;
  step_ = 0;
  random_.seed(episode_world_seed(seed_, episode_));
  daylight_ = 0.0;
  mat_.assign(static_cast<std::size_t>(ax_) * ay_, 0);
  objmap_.assign(static_cast<std::size_t>(ax_) * ay_, 0);
  slots_.clear();
  slots_.push_back(Obj{ObjKind::kFence, 0, 0, 0, 0, 0, 0, 0, true});
  alive_.clear();
  chunk_members_.assign(static_cast<std::size_t>(nchunk_x_) * nchunk_y_, {});
  chunk_touched_.assign(static_cast<std::size_t>(nchunk_x_) * nchunk_y_, false);
  chunk_order_.clear();
  update_time();

  inventory_ = a_.item_initial_;
  achievements_.assign(a_.achievement_names_.size(), 0);
  player_slot_ = add_object(ObjKind::kPlayer, cx, cy);
  slots_[player_slot_].fx = 0;
  slots_[player_slot_].fy = 1;
  action_ = 0;
  sleeping_ = false;
  player_last_health_ = inventory_[a_.i_health_];
  hunger_ = thirst_ = recover_ = 0;
  fatigue_ = 0;
  env_last_health_ = inventory_[a_.i_health_];
  unlocked_.assign(a_.achievement_names_.size(), false);
  generate_world();
  render(obs);
}

void Env::generate_world() {
  const OpenSimplex3 simplex(random_.randint(2147483647));
  const int px = slots_[player_slot_].x, py = slots_[player_slot_].y;
  std::vector<bool> tunnels(static_cast<std::size_t>(ax_) * ay_, false);
  auto noise = [&](double x, double y, double z, double size) { return simplex.noise3(x / size, y / size, z); };
  for (int x = 0; x < ax_; ++x) {
    for (int y = 0; y < ay_; ++y) {
      const double fx = x, fy = y;
      const std::int64_t ddx = x - px, ddy = y - py;
      double start = 4 - std::sqrt(static_cast<double>(ddx * ddx + ddy * ddy));
      start += 2 * noise(fx, fy, 8, 3);
      start = 1 / (1 + std::exp(-start));
      double water = (0 + 1 * noise(fx, fy, 3, 15)) + 0.15 * noise(fx, fy, 3, 5);
      water = water + 0.1;
      water -= 2 * start;
      double mountain = ((0 + 1 * noise(fx, fy, 0, 15)) + 0.3 * noise(fx, fy, 0, 5)) / (0 + 1 + 0.3);
      mountain -= 4 * start + 0.3 * water;
      int m;
      const int c = cell(x, y);
      if (start > 0.5) {
        m = a_.m_grass_;
      } else if (mountain > 0.15) {
        if (noise(fx, fy, 6, 7) > 0.15 && mountain > 0.3) {
          m = a_.m_path_;
        } else if (simplex.noise3(static_cast<double>(2 * x) / 3, (fy / 5) / 3, 7) > 0.4) {
          m = a_.m_path_;
          tunnels[c] = true;
        } else if (simplex.noise3((fx / 5) / 3, static_cast<double>(2 * y) / 3, 7) > 0.4) {
          m = a_.m_path_;
          tunnels[c] = true;
        } else if (noise(fx, fy, 1, 8) > 0 && random_.uniform() > 0.85) {
          m = a_.m_coal_;
        } else if (noise(fx, fy, 2, 6) > 0.4 && random_.uniform() > 0.75) {
          m = a_.m_iron_;
        } else if (mountain > 0.18 && random_.uniform() > 0.994) {
          m = a_.m_diamond_;
        } else if (mountain > 0.3 && noise(fx, fy, 6, 5) > 0.35) {
          m = a_.m_lava_;
        } else {
          m = a_.m_stone_;
        }
      } else if (0.25 < water && water <= 0.35 && noise(fx, fy, 4, 9) > -0.2) {
        m = a_.m_sand_;
      } else if (0.3 < water) {
        m = a_.m_water_;
      } else {
        if (noise(fx, fy, 5, 7) > 0 && random_.uniform() > 0.8) {
          m = a_.m_tree_;
        } else {
          m = a_.m_grass_;
        }
      }
      mat_[c] = static_cast<std::uint8_t>(m);
    }
  }
  for (int x = 0; x < ax_; ++x) {
    for (int y = 0; y < ay_; ++y) {
      const std::int64_t ddx = x - px, ddy = y - py;
      const double dist = std::sqrt(static_cast<double>(ddx * ddx + ddy * ddy));
      const int c = cell(x, y);
      const int m = mat_[c];
      if (!a_.walkable_[m]) {
        continue;
      } else if (dist > 3 && m == a_.m_grass_ && random_.uniform() > 0.985) {
        add_object(ObjKind::kCow, x, y);
      } else if (dist > 10 && random_.uniform() > 0.993) {
        add_object(ObjKind::kZombie, x, y);
      } else if (m == a_.m_path_ && tunnels[c] && random_.uniform() > 0.95) {
        add_object(ObjKind::kSkeleton, x, y);
      }
    }
  }
}

}  // namespace crafter
}  // namespace deltairis
