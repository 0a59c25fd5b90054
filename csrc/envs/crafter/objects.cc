// Native Crafter engine (see engine.h), part 3 of 5: object kinds and the world's object bookkeeping
// (slots, object map, chunks, movement), state import, test pokes and the object listing.
// Every floating-point expression mirrors the operation order of the Python package (numpy float64 /
// float32, Pillow float32) so results agree bit for bit; the library is compiled with -ffp-contract=off.
#include "envs/crafter/engine.h"

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <utility>

namespace deltairis {
namespace crafter {
namespace {

inline int sign(int v) { return (v > 0) - (v < 0); }

}  // namespace

namespace {
constexpr const char* kObjectKindNames[] = {"Player", "Cow", "Zombie", "Skeleton", "Arrow", "Plant", "Fence"};
constexpr int kNumObjectKinds = static_cast<int>(sizeof(kObjectKindNames) / sizeof(kObjectKindNames[0]));
}  // namespace

const char* object_kind_name(ObjKind kind) { return kObjectKindNames[static_cast<int>(kind)]; }

ObjKind object_kind_from_name(const std::string& name) {
  for (int k = 0; k < kNumObjectKinds; ++k)
    if (name == kObjectKindNames[k]) return static_cast<ObjKind>(k);
  throw std::invalid_argument("unknown object kind " + name);
}

// ------------------------------------------------------------------------------------------------
// Env: world bookkeeping
// ------------------------------------------------------------------------------------------------

Env::Env(std::shared_ptr<const Assets> assets, std::int64_t seed)
    : assets_(std::move(assets)),
      a_(*assets_),
      ax_(a_.config_.area_x),
      ay_(a_.config_.area_y),
      nchunk_x_((a_.config_.area_x + 11) / 12),
      nchunk_y_((a_.config_.area_y + 11) / 12),
      seed_(seed) {
  local_.resize(static_cast<std::size_t>(a_.local_w_) * a_.local_h_ * 3);
  light_cache_key_.assign(kLightCache, -1);
  light_cache_value_.assign(kLightCache * 3, 0);
  noise_.resize(static_cast<std::size_t>(a_.local_w_) * a_.local_h_);
}

void Env::chunk_insert(int chunk, std::uint32_t slot) {
  if (!chunk_touched_[chunk]) {
    chunk_touched_[chunk] = true;
    chunk_order_.push_back(chunk);
  }
  auto& members = chunk_members_[chunk];
  members.insert(std::lower_bound(members.begin(), members.end(), slot), slot);
}

void Env::chunk_erase(int chunk, std::uint32_t slot) {
  auto& members = chunk_members_[chunk];
  auto it = std::lower_bound(members.begin(), members.end(), slot);
  if (it != members.end() && *it == slot) members.erase(it);
}

std::uint32_t Env::add_object(ObjKind kind, int x, int y) {
  const std::uint32_t slot = static_cast<std::uint32_t>(slots_.size());
  Obj obj{kind, x, y, 0, 0, 0, 0, 0, false};
  switch (kind) {
    case ObjKind::kCow: obj.health = 3; break;
    case ObjKind::kZombie: obj.health = 5; break;
    case ObjKind::kSkeleton: obj.health = 3; break;
    case ObjKind::kPlant: obj.health = 1; break;
    default: obj.health = 0; break;
  }
  slots_.push_back(obj);
  objmap_[cell(x, y)] = slot;
  alive_.push_back(slot);
  chunk_insert(chunk_of(x, y), slot);
  return slot;
}

void Env::remove_object(std::uint32_t slot) {
  Obj& obj = slots_[slot];
  if (obj.removed) return;
  objmap_[cell(obj.x, obj.y)] = 0;
  chunk_erase(chunk_of(obj.x, obj.y), slot);
  auto it = std::lower_bound(alive_.begin(), alive_.end(), slot);
  if (it != alive_.end() && *it == slot) alive_.erase(it);
  obj.removed = true;
}

void Env::move_object(std::uint32_t slot, int x, int y) {
  Obj& obj = slots_[slot];
  if (obj.removed) return;
  objmap_[cell(x, y)] = slot;
  objmap_[cell(obj.x, obj.y)] = 0;
  const int old_chunk = chunk_of(obj.x, obj.y), new_chunk = chunk_of(x, y);
  if (old_chunk != new_chunk) {
    chunk_erase(old_chunk, slot);
    chunk_insert(new_chunk, slot);
  }
  obj.x = x;
  obj.y = y;
}

int Env::health(std::uint32_t slot) const {
  return slots_[slot].kind == ObjKind::kPlayer ? inventory_[a_.i_health_] : slots_[slot].health;
}

void Env::set_health(std::uint32_t slot, int value) {
  value = std::max(0, value);
  if (slots_[slot].kind == ObjKind::kPlayer) {
    inventory_[a_.i_health_] = value;
  } else {
    slots_[slot].health = value;
  }
}

const std::vector<bool>& Env::walkable_of(ObjKind kind) const {
  if (kind == ObjKind::kPlayer) return a_.player_walkable_;
  if (kind == ObjKind::kArrow) return a_.arrow_walkable_;
  return a_.walkable_;
}

bool Env::is_free(int x, int y, const std::vector<bool>& walkable) const {
  if (!inside(x, y)) return false;
  return objmap_[cell(x, y)] == 0 && walkable[mat_[cell(x, y)]];
}

bool Env::move(std::uint32_t slot, int dx, int dy) {
  const Obj& obj = slots_[slot];
  const int tx = obj.x + dx, ty = obj.y + dy;
  if (is_free(tx, ty, walkable_of(obj.kind))) {
    move_object(slot, tx, ty);
    return true;
  }
  return false;
}

void Env::toward(const Obj& obj, bool long_axis, int* dx, int* dy) const {
  const Obj& player = slots_[player_slot_];
  const int ox = player.x - obj.x, oy = player.y - obj.y;
  const int ax = std::abs(ox), ay = std::abs(oy);
  if (long_axis ? ax > ay : ax <= ay) {
    *dx = sign(ox);
    *dy = 0;
  } else {
    *dx = 0;
    *dy = sign(oy);
  }
}

void Env::random_dir(int* dx, int* dy) {
  static constexpr int kDirs[4][2] = {{-1, 0}, {1, 0}, {0, -1}, {0, 1}};
  const int i = static_cast<int>(random_.randint(4));
  *dx = kDirs[i][0];
  *dy = kDirs[i][1];
}

// ------------------------------------------------------------------------------------------------
// Env: state import, test hooks, object listing
// ------------------------------------------------------------------------------------------------

void Env::import_state(const ImportedState& s) {
  const std::size_t cells = static_cast<std::size_t>(ax_) * ay_;
  if (s.materials.size() != cells) throw std::invalid_argument("import_state: materials size");
  if (s.inventory.size() != inventory_.size() && !inventory_.empty()) throw std::invalid_argument("import_state: inventory");
  if (static_cast<int>(s.inventory.size()) != a_.num_items()) throw std::invalid_argument("import_state: inventory");
  if (static_cast<int>(s.achievements.size()) != a_.num_achievements() ||
      static_cast<int>(s.unlocked.size()) != a_.num_achievements()) {
    throw std::invalid_argument("import_state: achievements");
  }
  step_ = s.step;
  episode_ = s.episode;
  random_.set_state(s.mt_key, s.mt_pos);
  update_time();
  mat_ = s.materials;
  for (std::uint8_t m : mat_) {
    if (m > a_.num_materials()) throw std::invalid_argument("import_state: bad material id");
  }
  objmap_.assign(cells, 0);
  slots_.assign(s.num_slots, Obj{ObjKind::kFence, 0, 0, 0, 0, 0, 0, 0, true});
  alive_.clear();
  chunk_members_.assign(static_cast<std::size_t>(nchunk_x_) * nchunk_y_, {});
  chunk_touched_.assign(chunk_members_.size(), false);
  chunk_order_.clear();
  for (int chunk : s.chunk_order) {
    if (chunk < 0 || chunk >= static_cast<int>(chunk_members_.size()) || chunk_touched_[chunk]) {
      throw std::invalid_argument("import_state: bad chunk order");
    }
    chunk_touched_[chunk] = true;
    chunk_order_.push_back(chunk);
  }
  bool have_player = false;
  std::vector<ImportedState::Object> objs = s.objects;
  std::sort(objs.begin(), objs.end(), [](const auto& l, const auto& r) { return l.slot < r.slot; });
  for (std::size_t i = 0; i < objs.size(); ++i) {
    const auto& o = objs[i];
    if (o.slot == 0 || o.slot >= s.num_slots || (i > 0 && objs[i - 1].slot == o.slot) || !inside(o.x, o.y) ||
        objmap_[cell(o.x, o.y)] != 0) {
      throw std::invalid_argument("import_state: bad object slot or position");
    }
    slots_[o.slot] = Obj{o.kind, o.x, o.y, o.health, o.facing_x, o.facing_y, o.cooldown, o.grown, false};
    objmap_[cell(o.x, o.y)] = o.slot;
    alive_.push_back(o.slot);
    const int chunk = chunk_of(o.x, o.y);
    if (!chunk_touched_[chunk]) throw std::invalid_argument("import_state: object in an untouched chunk");
    chunk_members_[chunk].push_back(o.slot);
    if (o.kind == ObjKind::kPlayer) {
      if (have_player) throw std::invalid_argument("import_state: two players");
      have_player = true;
      player_slot_ = o.slot;
    }
  }
  if (!have_player) throw std::invalid_argument("import_state: no player");
  sleeping_ = s.sleeping;
  player_last_health_ = s.player_last_health;
  hunger_ = s.hunger;
  thirst_ = s.thirst;
  recover_ = s.recover;
  fatigue_ = s.fatigue;
  inventory_ = s.inventory;
  achievements_ = s.achievements;
  env_last_health_ = s.env_last_health;
  unlocked_ = s.unlocked;
  forced_despawns_.clear();
  forced_next_ = 0;
}

void Env::poke_inventory(int item, int value) {
  if (item < 0 || item >= a_.num_items()) throw std::invalid_argument("poke_inventory: bad item");
  inventory_[item] = value;
}

void Env::poke_material(int x, int y, int material) {
  if (!inside(x, y)) throw std::invalid_argument("poke_material: position outside the world");
  if (material < 1 || material > a_.num_materials()) throw std::invalid_argument("poke_material: bad material");
  mat_[cell(x, y)] = static_cast<std::uint8_t>(material);
}

std::uint32_t Env::poke_object(ObjKind kind, int x, int y, int health, int fx, int fy, int grown) {
  if (!inside(x, y) || objmap_[cell(x, y)] != 0) throw std::invalid_argument("poke_object: cell not free");
  if (kind == ObjKind::kPlayer) throw std::invalid_argument("poke_object: cannot add a second player");
  const std::uint32_t slot = add_object(kind, x, y);
  slots_[slot].health = health;
  slots_[slot].fx = fx;
  slots_[slot].fy = fy;
  slots_[slot].grown = grown;
  return slot;
}

std::vector<ObjectState> Env::objects() const {
  std::vector<ObjectState> out;
  for (std::uint32_t slot : alive_) {
    const Obj& obj = slots_[slot];
    ObjectState s{obj.kind, obj.x, obj.y, health(slot), obj.fx, obj.fy, obj.cooldown, obj.grown, obj.removed};
    out.push_back(s);
  }
  return out;
}

}  // namespace crafter
}  // namespace deltairis
