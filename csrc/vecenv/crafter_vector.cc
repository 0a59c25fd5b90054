#include "vecenv/crafter_vector.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>

#include "envs/crafter/state_codec.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace deltairis {
namespace {

inline void relax(int k) {
  if (k < 256) {
#if defined(__x86_64__) || defined(__i386__)
    _mm_pause();
#endif
  } else {
    std::this_thread::yield();  // the builder may need this core (more threads than vCPUs)
  }
}

}  // namespace

CrafterVectorEnv::CrafterVectorEnv(std::shared_ptr<const crafter::Assets> assets, int num_envs, int num_threads)
    : assets_(std::move(assets)),
      obs_size_(static_cast<std::size_t>(assets_->obs_height()) * assets_->obs_width() * 3),
      pool_(std::max(1, std::min(num_threads, std::max(num_envs, 1)))) {
  if (num_envs < 1) throw std::invalid_argument("num_envs must be >= 1, got " + std::to_string(num_envs));
  use_spares_ = pool_.num_threads() > 1;
  for (int i = 0; i < num_envs; ++i) {
    envs_.push_back(std::make_unique<crafter::Env>(assets_, i));
    spares_.push_back(std::make_unique<Spare>());
    if (use_spares_) spares_.back()->obs.resize(obs_size_);
  }
  needs_submit_.assign(static_cast<std::size_t>(num_envs), 0);
  returns_.assign(static_cast<std::size_t>(num_envs), 0.0);
  lengths_.assign(static_cast<std::size_t>(num_envs), 0);
}

void CrafterVectorEnv::check_actions(const std::int64_t* actions) const {
  for (int i = 0; i < num_envs(); ++i) {
    if (actions[i] < 0 || actions[i] >= assets_->num_actions()) {
      throw std::invalid_argument("actions[" + std::to_string(i) + "] = " + std::to_string(actions[i]) +
                                  " is out of range [0, " + std::to_string(assets_->num_actions()) + ")");
    }
  }
}

CrafterVectorEnv::~CrafterVectorEnv() {
  // Queued builds refer to this object: drop them and wait for the running ones before members go.
  pool_.cancel_pending();
  try {
    pool_.drain();
  } catch (...) {  // a build's exception has nowhere to go now
  }
}

void CrafterVectorEnv::build_spare(Spare& s) {
  if (!s.env || s.env->seed() != s.seed) s.env = std::make_unique<crafter::Env>(assets_, s.seed);
  s.env->reset_at(s.episode, s.obs.data());
}

void CrafterVectorEnv::submit_spare(std::size_t i) {
  pool_.submit([this, i] {
    Spare& s = *spares_[i];
    int expected = kPending;
    // A stale task (its spare was already built by the step) finds another state and does nothing.
    if (!s.state.compare_exchange_strong(expected, kBuilding, std::memory_order_acquire)) return;
    try {
      build_spare(s);
    } catch (...) {
      s.state.store(kPending, std::memory_order_release);  // the step builds it inline and sees the error
      return;
    }
    s.state.store(kReady, std::memory_order_release);
  });
}

void CrafterVectorEnv::drop_spares() {
  pool_.cancel_pending();
  pool_.drain();
  for (auto& s : spares_) s->state.store(kEmpty);
}

void CrafterVectorEnv::next_episode(std::size_t i, std::uint8_t* obs) {
  Spare& s = *spares_[i];
  std::int64_t* outcome = &s.ready;
  for (int k = 0;; ++k) {
    int st = s.state.load(std::memory_order_acquire);
    if (st == kReady) break;
    if (st == kEmpty) {  // no spares (one thread, or none scheduled): the classic inline reset
      s.inline_built += 1;
      envs_[i]->reset(obs);
      return;
    }
    if (st == kPending) {  // its build has not started: do it here rather than wait for a worker
      if (!s.state.compare_exchange_weak(st, kBuilding, std::memory_order_acquire)) continue;
      try {
        build_spare(s);
      } catch (...) {
        s.state.store(kPending, std::memory_order_release);
        throw;
      }
      s.state.store(kReady, std::memory_order_relaxed);  // this thread owns it
      outcome = &s.inline_built;
      break;
    }
    outcome = &s.waited;  // kBuilding on a worker: it is already running, wait for it
    relax(k);
  }
  *outcome += 1;
  std::swap(envs_[i], s.env);
  std::memcpy(obs, s.obs.data(), obs_size_);
  // The next spare: the slot's following episode, built on the Env that just finished.
  s.seed = envs_[i]->seed();
  s.episode = envs_[i]->episode() + 1;
  s.state.store(kPending, std::memory_order_release);
  needs_submit_[i] = 1;
}

void CrafterVectorEnv::reset(const std::int64_t* seeds, std::uint8_t* obs) {
  if (seeds != nullptr) {
    drop_spares();  // the queued spares belong to the old seeds
    pool_.parallel_for(envs_.size(), [&](std::size_t i) {
      envs_[i] = std::make_unique<crafter::Env>(assets_, seeds[i]);
      envs_[i]->reset(obs + i * obs_size_);
    });
    if (use_spares_) {
      for (std::size_t i = 0; i < envs_.size(); ++i) {  // no build can run: drop_spares drained the pool
        Spare& s = *spares_[i];
        s.seed = envs_[i]->seed();
        s.episode = envs_[i]->episode() + 1;
        s.state.store(kPending, std::memory_order_release);
        needs_submit_[i] = 1;
      }
    }
  } else {
    try {
      pool_.parallel_for(envs_.size(), [&](std::size_t i) { next_episode(i, obs + i * obs_size_); });
    } catch (...) {
      for (std::size_t i = 0; i < envs_.size(); ++i) {
        if (needs_submit_[i]) submit_spare(i);
        needs_submit_[i] = 0;
      }
      throw;
    }
  }
  std::fill(returns_.begin(), returns_.end(), 0.0);
  std::fill(lengths_.begin(), lengths_.end(), 0);
  for (std::size_t i = 0; i < envs_.size(); ++i) {
    if (needs_submit_[i]) submit_spare(i);
    needs_submit_[i] = 0;
  }
}

void CrafterVectorEnv::step(const std::int64_t* actions, const CrafterStepBuffers& out) {
  const std::size_t ni = static_cast<std::size_t>(assets_->num_items());
  const std::size_t na = static_cast<std::size_t>(assets_->num_achievements());
  const std::size_t area = static_cast<std::size_t>(assets_->config().area_x) * assets_->config().area_y;
  auto submit_consumed = [&] {
    for (std::size_t i = 0; i < envs_.size(); ++i) {
      if (needs_submit_[i]) submit_spare(i);
      needs_submit_[i] = 0;
    }
  };
  try {
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
      if (r.done) {
        std::memcpy(out.final_obs + i * obs_size_, obs, obs_size_);
        out.episode_return[i] = returns_[i];
        out.episode_length[i] = lengths_[i];
      } else {
        std::memset(out.final_obs + i * obs_size_, 0, obs_size_);  // rows without a finished episode hold zeros
        if (!out.all_infos) return;
      }
      // The info of this step: the finished episode's last state, or (all_infos) the running env's state.
      for (std::size_t k = 0; k < ni; ++k) out.final_inventory[i * ni + k] = env.inventory()[k];
      for (std::size_t k = 0; k < na; ++k) out.final_achievements[i * na + k] = env.achievements()[k];
      env.semantic(out.final_semantic + i * area);
      out.final_player_pos[2 * i] = env.player_x();
      out.final_player_pos[2 * i + 1] = env.player_y();
      out.final_discount[i] = r.dead ? 0.0 : 1.0;
      out.final_reward[i] = r.info_reward;
      if (!r.done) return;
      returns_[i] = 0.0;
      lengths_[i] = 0;
      next_episode(i, obs);  // `env` may be swapped out here: not used after this line
    });
  } catch (...) {
    submit_consumed();
    throw;
  }
  submit_consumed();  // after the barrier: the workers build the next spares while the caller is away
}

namespace {
constexpr char kVectorMagic[] = "DICRAFTV";  // 8 characters, the terminator is not written
}  // namespace

// Payload of version 1: config fingerprint (bytes) | num_envs (u32) | per env: episode return (f64),
// episode length (i64), reset statistics ready, waited, inline (i64), Env::save_state blob (bytes).
std::string CrafterVectorEnv::save_state() const {
  crafter::ByteWriter w;
  w.bytes(crafter::config_fingerprint(*assets_));
  w.u32(static_cast<std::uint32_t>(envs_.size()));
  for (std::size_t i = 0; i < envs_.size(); ++i) {
    const Spare& s = *spares_[i];
    w.f64(returns_[i]);
    w.i64(lengths_[i]);
    w.i64(s.ready);
    w.i64(s.waited);
    w.i64(s.inline_built);
    w.bytes(envs_[i]->save_state());
  }
  return crafter::frame_state(kVectorMagic, kStateVersion, w.str());
}

void CrafterVectorEnv::load_state(const std::string& blob) {
  crafter::ByteReader r = crafter::unframe_state(blob, kVectorMagic, kStateVersion, "Crafter vector env state");
  const std::string fingerprint = r.bytes("config fingerprint");
  if (fingerprint != crafter::config_fingerprint(*assets_)) {
    r.fail("configuration mismatch (saved with " + fingerprint + "; this env has " +
           crafter::config_fingerprint(*assets_) + ")");
  }
  const std::uint32_t n = r.u32("num_envs");
  if (n != envs_.size()) {
    r.fail("num_envs mismatch (saved with " + std::to_string(n) + " envs, this one has " +
           std::to_string(envs_.size()) + ")");
  }
  std::vector<std::unique_ptr<crafter::Env>> envs;
  std::vector<double> returns(n);
  std::vector<std::int64_t> lengths(n), ready(n), waited(n), inline_built(n);
  for (std::uint32_t i = 0; i < n; ++i) {
    returns[i] = r.f64("episode return");
    lengths[i] = r.i64("episode length");
    ready[i] = r.i64("reset statistics");
    waited[i] = r.i64("reset statistics");
    inline_built[i] = r.i64("reset statistics");
    envs.push_back(std::make_unique<crafter::Env>(assets_, 0));
    try {
      envs.back()->load_state(r.bytes("env state"));
    } catch (const std::invalid_argument& e) {
      r.fail("env " + std::to_string(i) + ": " + e.what());
    }
  }
  r.expect_end();
  // Commit: no build may run while the envs and spares change hands.
  drop_spares();
  for (std::size_t i = 0; i < envs_.size(); ++i) {
    envs_[i] = std::move(envs[i]);
    returns_[i] = returns[i];
    lengths_[i] = lengths[i];
    Spare& s = *spares_[i];
    s.ready = ready[i];
    s.waited = waited[i];
    s.inline_built = inline_built[i];
    needs_submit_[i] = 0;
    if (use_spares_ && envs_[i]->episode() > 0) {  // the spare the saved vector env had queued or built
      s.seed = envs_[i]->seed();
      s.episode = envs_[i]->episode() + 1;
      s.state.store(kPending, std::memory_order_release);
      submit_spare(i);
    }
  }
}

CrafterVectorEnv::ResetCounts CrafterVectorEnv::reset_counts() const {
  ResetCounts c;
  for (const auto& s : spares_) {
    c.ready += s->ready;
    c.waited += s->waited;
    c.inline_built += s->inline_built;
  }
  return c;
}

}  // namespace deltairis
