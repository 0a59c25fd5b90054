#include "vecenv/crafter_vector.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace deltairis {

CrafterVectorEnv::CrafterVectorEnv(std::shared_ptr<const crafter::Assets> assets, int num_envs, int num_threads)
    : assets_(std::move(assets)),
      obs_size_(static_cast<std::size_t>(assets_->obs_height()) * assets_->obs_width() * 3),
      pool_(std::max(1, std::min(num_threads, std::max(num_envs, 1)))) {
  if (num_envs < 1) throw std::invalid_argument("num_envs must be >= 1");
  for (int i = 0; i < num_envs; ++i) envs_.push_back(std::make_unique<crafter::Env>(assets_, i));
  returns_.assign(static_cast<std::size_t>(num_envs), 0.0);
  lengths_.assign(static_cast<std::size_t>(num_envs), 0);
}

void CrafterVectorEnv::reset(const std::int64_t* seeds, std::uint8_t* obs) {
  pool_.parallel_for(envs_.size(), [&](std::size_t i) {
    if (seeds != nullptr) envs_[i] = std::make_unique<crafter::Env>(assets_, seeds[i]);
    envs_[i]->reset(obs + i * obs_size_);
    returns_[i] = 0.0;
    lengths_[i] = 0;
  });
}

void CrafterVectorEnv::step(const std::int64_t* actions, const CrafterStepBuffers& out) {
  const std::size_t ni = static_cast<std::size_t>(assets_->num_items());
  const std::size_t na = static_cast<std::size_t>(assets_->num_achievements());
  const std::size_t area = static_cast<std::size_t>(assets_->config().area_x) * assets_->config().area_y;
  pool_.parallel_for(envs_.size(), [&](std::size_t i) {
    crafter::Env& env = *envs_[i];
    std::uint8_t* obs = out.obs + i * obs_size_;
    const crafter::StepResult r = env.step(static_cast<int>(actions[i]), obs);
    returns_[i] += static_cast<double>(static_cast<float>(r.reward));  // as the Python backends sum float32 rewards
    lengths_[i] += 1;
    out.reward[i] = static_cast<float>(r.reward);
    out.terminated[i] = r.dead;
    out.truncated[i] = r.over && !r.dead;
    out.episode_return[i] = 0.0;
    out.episode_length[i] = 0;
    if (!r.done) {
      std::memset(out.final_obs + i * obs_size_, 0, obs_size_);  // rows without a finished episode hold zeros
      return;
    }
    std::memcpy(out.final_obs + i * obs_size_, obs, obs_size_);
    out.episode_return[i] = returns_[i];
    out.episode_length[i] = lengths_[i];
    for (std::size_t k = 0; k < ni; ++k) out.final_inventory[i * ni + k] = env.inventory()[k];
    for (std::size_t k = 0; k < na; ++k) out.final_achievements[i * na + k] = env.achievements()[k];
    env.semantic(out.final_semantic + i * area);
    out.final_player_pos[2 * i] = env.player_x();
    out.final_player_pos[2 * i + 1] = env.player_y();
    out.final_discount[i] = r.dead ? 0.0 : 1.0;
    out.final_reward[i] = r.info_reward;
    returns_[i] = 0.0;
    lengths_[i] = 0;
    env.reset(obs);
  });
}

}  // namespace deltairis
