// Native Crafter engine (see engine.h), part 4 of 5: the step, the player's and creatures' updates and
// chunk balancing.
// Every floating-point expression mirrors the operation order of the Python package (numpy float64 /
// float32, Pillow float32) so results agree bit for bit; the library is compiled with -ffp-contract=off.
#include "envs/crafter/engine.h"

#include <algorithm>
#include <cstdlib>
#include <stdexcept>

namespace deltairis {
namespace crafter {

// ------------------------------------------------------------------------------------------------
// Env: step and object updates
// ------------------------------------------------------------------------------------------------

StepResult Env::step(int action, std::uint8_t* obs) {
  if (action < 0 || action >= a_.num_actions()) throw std::out_of_range("crafter: action out of range");
  ++step_;
  update_time();
  action_ = action;
  const int view_max = std::max(a_.config_.view_x, a_.config_.view_y);
  snapshot_.assign(alive_.begin(), alive_.end());  // objects created during the step are not updated
  for (std::uint32_t slot : snapshot_) {
    const Obj& player = slots_[player_slot_];
    const Obj& obj = slots_[slot];
    const int dist = std::abs(obj.x - player.x) + std::abs(obj.y - player.y);
    if (dist < 2 * view_max) update_object(slot);
  }
  if (step_ % 10 == 0) {
    chunk_snapshot_.assign(chunk_order_.begin(), chunk_order_.end());
    for (int chunk : chunk_snapshot_) balance_chunk(chunk);
  }
  render(obs);
  StepResult result;
  const int hp = inventory_[a_.i_health_];
  double reward = static_cast<double>(hp - env_last_health_) / 10;
  env_last_health_ = hp;
  bool any_unlocked = false;
  for (std::size_t i = 0; i < achievements_.size(); ++i) {
    if (achievements_[i] > 0 && !unlocked_[i]) {
      unlocked_[i] = true;
      any_unlocked = true;
    }
  }
  if (any_unlocked) reward += 1.0;
  result.dead = hp <= 0;
  result.over = a_.config_.length > 0 && step_ >= a_.config_.length;
  result.done = result.dead || result.over;
  result.info_reward = reward;
  result.reward = a_.config_.reward ? reward : 0.0;
  return result;
}

void Env::update_object(std::uint32_t slot) {
  switch (slots_[slot].kind) {
    case ObjKind::kPlayer: update_player(); break;
    case ObjKind::kCow: update_cow(slot); break;
    case ObjKind::kZombie: update_zombie(slot); break;
    case ObjKind::kSkeleton: update_skeleton(slot); break;
    case ObjKind::kArrow: update_arrow(slot); break;
    case ObjKind::kPlant: update_plant(slot); break;
    case ObjKind::kFence: break;
  }
}

void Env::update_player() {
  const std::uint32_t me = player_slot_;
  const int tx = slots_[me].x + slots_[me].fx, ty = slots_[me].y + slots_[me].fy;
  const int material = material_at(tx, ty);
  const std::uint32_t target_obj = object_at(tx, ty);
  apply_player_action(player_action(), tx, ty, material, target_obj);
  update_life_stats();
  update_player_health();
}

// The action the player takes: its own, or sleep while asleep and not rested (waking up when rested).
Assets::Action Env::player_action() {
  Assets::Action act = a_.actions_[action_];
  if (sleeping_) {
    if (inventory_[a_.i_energy_] < a_.item_max_[a_.i_energy_]) {
      act = Assets::Action{};
      act.kind = ActionKind::kSleep;
    } else {
      sleeping_ = false;
      achievements_[a_.a_wake_up_] += 1;
    }
  }
  return act;
}

// Player.update's action dispatch; (tx, ty) is the facing cell with its material and object.
void Env::apply_player_action(const Assets::Action& act, int tx, int ty, int material, std::uint32_t target_obj) {
  const std::uint32_t me = player_slot_;
  switch (act.kind) {
    case ActionKind::kNoop: break;
    case ActionKind::kMove: {
      slots_[me].fx = act.dx;
      slots_[me].fy = act.dy;
      move(me, act.dx, act.dy);
      if (mat_[cell(slots_[me].x, slots_[me].y)] == a_.m_lava_) set_health(me, 0);
      break;
    }
    case ActionKind::kDo:
      if (target_obj) {
        player_do_object(target_obj);
      } else {
        player_do_material(tx, ty, material);
      }
      break;
    case ActionKind::kSleep:
      if (inventory_[a_.i_energy_] < a_.item_max_[a_.i_energy_]) sleeping_ = true;
      break;
    case ActionKind::kPlace: player_place(act.index, tx, ty, material); break;
    case ActionKind::kMake: player_make(act.index); break;
  }
}

// Player._update_life_stats: hunger, thirst and fatigue.
void Env::update_life_stats() {
  hunger_ += sleeping_ ? 0.5 : 1;
  if (hunger_ > 25) {
    hunger_ = 0;
    inventory_[a_.i_food_] -= 1;
  }
  thirst_ += sleeping_ ? 0.5 : 1;
  if (thirst_ > 20) {
    thirst_ = 0;
    inventory_[a_.i_drink_] -= 1;
  }
  if (sleeping_) {
    fatigue_ = std::min(fatigue_ - 1, 0);
  } else {
    fatigue_ += 1;
  }
  if (fatigue_ < -10) {
    fatigue_ = 0;
    inventory_[a_.i_energy_] += 1;
  }
  if (fatigue_ > 30) {
    fatigue_ = 0;
    inventory_[a_.i_energy_] -= 1;
  }
}

// Player._recover_health, the inventory limits, and _wake_up_when_hurt.
void Env::update_player_health() {
  const std::uint32_t me = player_slot_;
  const bool fine = inventory_[a_.i_food_] > 0 && inventory_[a_.i_drink_] > 0 &&
                    (inventory_[a_.i_energy_] > 0 || sleeping_);
  if (fine) {
    recover_ += sleeping_ ? 2 : 1;
  } else {
    recover_ -= sleeping_ ? 0.5 : 1;
  }
  if (recover_ > 25) {
    recover_ = 0;
    set_health(me, inventory_[a_.i_health_] + 1);
  }
  if (recover_ < -15) {
    recover_ = 0;
    set_health(me, inventory_[a_.i_health_] - 1);
  }
  for (std::size_t i = 0; i < inventory_.size(); ++i) {
    inventory_[i] = std::max(0, std::min(inventory_[i], a_.item_max_[i]));
  }
  if (inventory_[a_.i_health_] < player_last_health_) sleeping_ = false;
  player_last_health_ = inventory_[a_.i_health_];
}

void Env::player_do_object(std::uint32_t slot) {
  int damage = 1;
  if (inventory_[a_.i_wood_sword_]) damage = std::max(damage, 2);
  if (inventory_[a_.i_stone_sword_]) damage = std::max(damage, 3);
  if (inventory_[a_.i_iron_sword_]) damage = std::max(damage, 5);
  Obj& obj = slots_[slot];
  switch (obj.kind) {
    case ObjKind::kPlant:
      if (obj.grown > 300) {
        obj.grown = 0;
        inventory_[a_.i_food_] += 4;
        achievements_[a_.a_eat_plant_] += 1;
      }
      break;
    case ObjKind::kFence:
      remove_object(slot);
      if (a_.i_fence_ >= 0) inventory_[a_.i_fence_] += 1;
      if (a_.a_collect_fence_ >= 0) achievements_[a_.a_collect_fence_] += 1;
      break;
    case ObjKind::kZombie:
      set_health(slot, obj.health - damage);
      if (obj.health <= 0) achievements_[a_.a_defeat_zombie_] += 1;
      break;
    case ObjKind::kSkeleton:
      set_health(slot, obj.health - damage);
      if (obj.health <= 0) achievements_[a_.a_defeat_skeleton_] += 1;
      break;
    case ObjKind::kCow:
      set_health(slot, obj.health - damage);
      if (obj.health <= 0) {
        inventory_[a_.i_food_] += 6;
        achievements_[a_.a_eat_cow_] += 1;
        hunger_ = 0;
      }
      break;
    default: break;
  }
}

void Env::player_do_material(int tx, int ty, int material) {
  if (material == a_.m_water_) thirst_ = 0;
  if (material == 0) return;
  const Assets::CollectRule& rule = a_.collect_[material];
  if (!rule.present) return;
  for (const auto& req : rule.require) {
    if (inventory_[req.item] < req.amount) return;
  }
  mat_[cell(tx, ty)] = static_cast<std::uint8_t>(rule.leaves);
  if (random_.uniform() <= rule.probability) {
    for (std::size_t i = 0; i < rule.receive.size(); ++i) {
      inventory_[rule.receive[i].item] += rule.receive[i].amount;
      achievements_[rule.receive_achievement[i]] += 1;
    }
  }
}

void Env::player_place(int index, int tx, int ty, int material) {
  if (object_at(tx, ty)) return;
  const Assets::PlaceRule& rule = a_.place_[index];
  if (material == 0 || !rule.where[material]) return;
  for (const auto& use : rule.uses) {
    if (inventory_[use.item] < use.amount) return;
  }
  for (const auto& use : rule.uses) inventory_[use.item] -= use.amount;
  if (rule.is_object) {
    add_object(rule.object_kind, tx, ty);
  } else {
    mat_[cell(tx, ty)] = static_cast<std::uint8_t>(rule.material);
  }
  achievements_[rule.achievement] += 1;
}

void Env::player_make(int index) {
  // world.nearby(pos, 1) slices mat_map[x-1:x+2, y-1:y+2]; a negative start makes numpy's slice empty.
  const int px = slots_[player_slot_].x, py = slots_[player_slot_].y;
  const Assets::MakeRule& rule = a_.make_[index];
  std::vector<bool> present(a_.material_names_.size(), false);
  if (px - 1 >= 0 && py - 1 >= 0) {
    for (int x = px - 1; x <= std::min(px + 1, ax_ - 1); ++x) {
      for (int y = py - 1; y <= std::min(py + 1, ay_ - 1); ++y) present[mat_[cell(x, y)]] = true;
    }
  }
  for (int m : rule.nearby) {
    if (!present[m]) return;
  }
  for (const auto& use : rule.uses) {
    if (inventory_[use.item] < use.amount) return;
  }
  for (const auto& use : rule.uses) inventory_[use.item] -= use.amount;
  inventory_[rule.item] += rule.gives;
  achievements_[rule.achievement] += 1;
}

void Env::update_cow(std::uint32_t slot) {
  if (slots_[slot].health <= 0) remove_object(slot);
  if (random_.uniform() < 0.5) {
    int dx, dy;
    random_dir(&dx, &dy);
    move(slot, dx, dy);
  }
}

void Env::update_zombie(std::uint32_t slot) {
  if (slots_[slot].health <= 0) remove_object(slot);
  const Obj& player = slots_[player_slot_];
  int dist = std::abs(player.x - slots_[slot].x) + std::abs(player.y - slots_[slot].y);
  int dx, dy;
  if (dist <= 8 && random_.uniform() < 0.9) {
    const bool long_axis = random_.uniform() < 0.8;
    toward(slots_[slot], long_axis, &dx, &dy);
  } else {
    random_dir(&dx, &dy);
  }
  move(slot, dx, dy);
  dist = std::abs(player.x - slots_[slot].x) + std::abs(player.y - slots_[slot].y);
  if (dist <= 1) {
    Obj& zombie = slots_[slot];
    if (zombie.cooldown) {
      zombie.cooldown -= 1;
    } else {
      const int damage = sleeping_ ? 7 : 2;
      set_health(player_slot_, inventory_[a_.i_health_] - damage);
      slots_[slot].cooldown = 5;
    }
  }
}

void Env::update_skeleton(std::uint32_t slot) {
  if (slots_[slot].health <= 0) remove_object(slot);
  slots_[slot].cooldown = std::max(0, slots_[slot].cooldown - 1);
  const Obj& player = slots_[player_slot_];
  const int dist = std::abs(player.x - slots_[slot].x) + std::abs(player.y - slots_[slot].y);
  int dx, dy;
  if (dist <= 3) {
    const bool long_axis = random_.uniform() < 0.6;
    toward(slots_[slot], long_axis, &dx, &dy);
    if (move(slot, -dx, -dy)) return;
  }
  if (dist <= 5 && random_.uniform() < 0.5) {
    toward(slots_[slot], true, &dx, &dy);
    // _shoot(direction)
    if (slots_[slot].cooldown > 0) return;
    if (dx == 0 && dy == 0) return;
    const int tx = slots_[slot].x + dx, ty = slots_[slot].y + dy;
    if (is_free(tx, ty, a_.arrow_walkable_)) {
      const std::uint32_t arrow = add_object(ObjKind::kArrow, tx, ty);
      slots_[arrow].fx = dx;
      slots_[arrow].fy = dy;
      slots_[slot].cooldown = 4;
    }
  } else if (dist <= 8 && random_.uniform() < 0.3) {
    const bool long_axis = random_.uniform() < 0.6;
    toward(slots_[slot], long_axis, &dx, &dy);
    move(slot, dx, dy);
  } else if (random_.uniform() < 0.2) {
    random_dir(&dx, &dy);
    move(slot, dx, dy);
  }
}

void Env::update_arrow(std::uint32_t slot) {
  const int tx = slots_[slot].x + slots_[slot].fx, ty = slots_[slot].y + slots_[slot].fy;
  const int material = material_at(tx, ty);
  const std::uint32_t target = object_at(tx, ty);
  if (target) {
    set_health(target, health(target) - 2);
    remove_object(slot);
  } else if (material == 0 || !a_.arrow_walkable_[material]) {
    remove_object(slot);
    if (material == a_.m_table_ || material == a_.m_furnace_) mat_[cell(tx, ty)] = static_cast<std::uint8_t>(a_.m_path_);
  } else {
    move(slot, slots_[slot].fx, slots_[slot].fy);
  }
}

void Env::update_plant(std::uint32_t slot) {
  slots_[slot].grown += 1;
  static constexpr int kDirs[4][2] = {{-1, 0}, {1, 0}, {0, -1}, {0, 1}};
  bool threatened = false;
  for (const auto& d : kDirs) {
    const std::uint32_t other = object_at(slots_[slot].x + d[0], slots_[slot].y + d[1]);
    if (!other) continue;
    const ObjKind k = slots_[other].kind;
    if (k == ObjKind::kZombie || k == ObjKind::kSkeleton || k == ObjKind::kCow) threatened = true;
  }
  if (threatened) set_health(slot, slots_[slot].health - 1);
  if (slots_[slot].health <= 0) remove_object(slot);
}

// ------------------------------------------------------------------------------------------------
// Env: chunk balancing
// ------------------------------------------------------------------------------------------------

void Env::balance_chunk(int chunk) {
  const double light = daylight_;
  const int xmin = (chunk / nchunk_y_) * 12, ymin = (chunk % nchunk_y_) * 12;
  const int xmax = std::min(xmin + 12, ax_), ymax = std::min(ymin + 12, ay_);
  auto count = [&](int material) {
    int n = 0;
    for (int x = xmin; x < xmax; ++x)
      for (int y = ymin; y < ymax; ++y) n += mat_[cell(x, y)] == material;
    return n;
  };
  const int grass = count(a_.m_grass_);
  balance_object(chunk, ObjKind::kZombie, a_.m_grass_, 6, 0, 0.3, 0.4, grass < 50 ? 0 : 3.5 - 3 * light,
                 3.5 - 3 * light);
  const int path = count(a_.m_path_);
  balance_object(chunk, ObjKind::kSkeleton, a_.m_path_, 7, 7, 0.1, 0.1, path < 6 ? 0 : 1, 2);
  const int grass2 = count(a_.m_grass_);
  balance_object(chunk, ObjKind::kCow, a_.m_grass_, 5, 5, 0.01, 0.1, grass2 < 30 ? 0 : 1, 1.5 + light);
}

void Env::balance_object(int chunk, ObjKind kind, int material, int span_dist, int despawn_dist,
                         double spawn_prob, double despawn_prob, double target_min, double target_max) {
  const int xmin = (chunk / nchunk_y_) * 12, ymin = (chunk % nchunk_y_) * 12;
  const int xmax = std::min(xmin + 12, ax_), ymax = std::min(ymin + 12, ay_);
  std::vector<std::uint32_t>& creatures = creatures_;
  creatures.clear();
  for (std::uint32_t slot : chunk_members_[chunk]) {
    if (slots_[slot].kind == kind) creatures.push_back(slot);
  }
  const long n = static_cast<long>(creatures.size());
  const Obj& player = slots_[player_slot_];
  if (n < static_cast<long>(target_min) && random_.uniform() < spawn_prob) {
    std::vector<int> cells;
    for (int x = xmin; x < xmax; ++x)
      for (int y = ymin; y < ymax; ++y)
        if (mat_[cell(x, y)] == material) cells.push_back(cell(x, y));
    const int i = static_cast<int>(random_.randint(static_cast<std::int64_t>(cells.size())));
    const int x = cells[i] / ay_, y = cells[i] % ay_;
    const bool empty = objmap_[cells[i]] == 0;
    const bool away = std::abs(x - player.x) + std::abs(y - player.y) >= span_dist;
    if (empty && away) add_object(kind, x, y);
  } else if (n > static_cast<long>(target_max) && random_.uniform() < despawn_prob) {
    std::uint32_t slot = creatures[static_cast<std::size_t>(random_.randint(n))];
    if (forced_next_ < forced_despawns_.size()) {
      slot = forced_despawns_[forced_next_++];
      if (std::find(creatures.begin(), creatures.end(), slot) == creatures.end()) {
        throw std::logic_error("forced despawn choice is not a creature of this chunk");
      }
    }
    const bool away = std::abs(slots_[slot].x - player.x) + std::abs(slots_[slot].y - player.y) >= despawn_dist;
    if (away) remove_object(slot);
  }
}

}  // namespace crafter
}  // namespace deltairis
