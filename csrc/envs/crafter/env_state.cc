// Env::save_state / Env::load_state (see engine.h): the exact state of an env as bytes.
//
// Payload of version 1, in order (state_codec.h encodings):
//   config fingerprint (bytes) | started (u8)
//   seed, episode (i64)                                                   -- always
//   then, when started:
//   step (i64) | daylight (f64) | MT19937 key (624 x u32) and index (u32)
//   materials (u8 array, area_x * area_y) | slots (count, then per slot: kind u8, x, y, health, facing x,
//   facing y, cooldown, grown (i32), removed (u8); slot 0 the unused placeholder) | chunk first-touch
//   order (i32 array) | player slot (u32) | last action (i32) | sleeping (u8) | player last health (i32)
//   | hunger, thirst, recover (f64) | fatigue (i32) | inventory, achievements (i32 arrays) | env last
//   health (i32) | unlocked (u8 array) | forced despawns (u32 array) and next index (u64)
#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "envs/crafter/engine.h"
#include "envs/crafter/state_codec.h"

namespace deltairis {
namespace crafter {
namespace {

constexpr char kEnvMagic[] = "DICRAFTE";  // 8 characters, the terminator is not written
constexpr const char* kWhat = "Crafter env state";
constexpr int kNumKinds = 7;

}  // namespace

std::string config_fingerprint(const Assets& a) {
  const EnvConfig& c = a.config();
  return "area " + std::to_string(c.area_x) + "x" + std::to_string(c.area_y) + ", view " + std::to_string(c.view_x) +
         "x" + std::to_string(c.view_y) + ", size " + std::to_string(c.size_x) + "x" + std::to_string(c.size_y) +
         ", reward " + (c.reward ? "on" : "off") + ", length " + std::to_string(c.length) + ", " +
         std::to_string(a.num_actions()) + " actions, " + std::to_string(a.num_items()) + " items, " +
         std::to_string(a.num_achievements()) + " achievements, " + std::to_string(a.num_materials()) +
         " materials";
}

std::string Env::save_state() const {
  ByteWriter w;
  w.bytes(config_fingerprint(a_));
  const bool started = episode_ > 0;
  w.u8(started ? 1 : 0);
  w.i64(seed_);
  w.i64(episode_);
  if (started) {
    w.i64(step_);
    w.f64(daylight_);
    std::vector<std::uint32_t> key;
    int pos = 0;
    random_.get_state(&key, &pos);
    for (std::uint32_t word : key) w.u32(word);
    w.u32(static_cast<std::uint32_t>(pos));
    w.u8s(mat_);
    w.u64(slots_.size());
    for (const Obj& o : slots_) {
      w.u8(static_cast<std::uint8_t>(o.kind));
      for (int v : {o.x, o.y, o.health, o.fx, o.fy, o.cooldown, o.grown}) w.i32(v);
      w.u8(o.removed ? 1 : 0);
    }
    w.i32s(chunk_order_);
    w.u32(player_slot_);
    w.i32(action_);
    w.u8(sleeping_ ? 1 : 0);
    w.i32(player_last_health_);
    w.f64(hunger_);
    w.f64(thirst_);
    w.f64(recover_);
    w.i32(fatigue_);
    w.i32s(inventory_);
    w.i32s(achievements_);
    w.i32(env_last_health_);
    w.bools(unlocked_);
    w.u32s(forced_despawns_);
    w.u64(forced_next_);
  }
  return frame_state(kEnvMagic, kStateVersion, w.str());
}

void Env::load_state(const std::string& blob) {
  ByteReader r = unframe_state(blob, kEnvMagic, kStateVersion, kWhat);
  auto bad = [&](const std::string& problem) { r.fail("inconsistent state (" + problem + ")"); };
  const std::string fingerprint = r.bytes("config fingerprint");
  if (fingerprint != config_fingerprint(a_)) {
    r.fail("configuration mismatch (saved with " + fingerprint + "; this env has " + config_fingerprint(a_) + ")");
  }
  const bool started = r.flag("started");
  const std::int64_t seed = r.i64("seed");
  const std::int64_t episode = r.i64("episode");
  if (started != (episode > 0)) bad("episode " + std::to_string(episode) + " with started " + std::to_string(started));
  if (!started) {  // a constructed env that was never reset: the constructor's state
    r.expect_end();
    seed_ = seed;
    episode_ = 0;
    step_ = 0;
    daylight_ = 0.0;
    random_.seed(0);
    mat_.clear();
    objmap_.clear();
    slots_.clear();
    alive_.clear();
    chunk_members_.clear();
    chunk_touched_.clear();
    chunk_order_.clear();
    player_slot_ = 1;
    action_ = 0;
    sleeping_ = false;
    player_last_health_ = 0;
    hunger_ = thirst_ = recover_ = 0;
    fatigue_ = 0;
    inventory_.clear();
    achievements_.clear();
    env_last_health_ = 0;
    unlocked_.clear();
    forced_despawns_.clear();
    forced_next_ = 0;
    return;
  }

  const std::int64_t step = r.i64("step");
  if (step < 0) bad("negative step " + std::to_string(step));
  const double daylight = r.f64("daylight");
  std::vector<std::uint32_t> key(624);
  for (std::uint32_t& word : key) word = r.u32("MT19937 key");
  const int pos = static_cast<int>(r.u32("MT19937 index"));
  LegacyRandom random;
  try {
    random.set_state(key, pos);
  } catch (const std::invalid_argument& e) {
    bad(std::string("generator: ") + e.what());
  }

  const std::size_t cells = static_cast<std::size_t>(ax_) * ay_;
  std::vector<std::uint8_t> mat = r.u8s("materials");
  if (mat.size() != cells) bad("materials hold " + std::to_string(mat.size()) + " cells, the world " + std::to_string(cells));
  for (std::uint8_t m : mat) {
    if (m > a_.num_materials()) bad("material id " + std::to_string(m) + " out of range");
  }

  std::vector<Obj> slots(r.count("slots", 30));
  for (Obj& o : slots) {
    const std::uint8_t kind = r.u8("slot kind");
    if (kind >= kNumKinds) bad("object kind " + std::to_string(kind));
    o.kind = static_cast<ObjKind>(kind);
    o.x = r.i32("slot x");
    o.y = r.i32("slot y");
    o.health = r.i32("slot health");
    o.fx = r.i32("slot facing");
    o.fy = r.i32("slot facing");
    o.cooldown = r.i32("slot cooldown");
    o.grown = r.i32("slot grown");
    o.removed = r.flag("slot removed");
  }
  if (slots.empty() || !slots[0].removed) bad("slot 0 must be the removed placeholder");

  const std::size_t nchunks = static_cast<std::size_t>(nchunk_x_) * nchunk_y_;
  std::vector<int> chunk_order = r.i32s("chunk order");
  std::vector<bool> touched(nchunks, false);
  for (int chunk : chunk_order) {
    if (chunk < 0 || static_cast<std::size_t>(chunk) >= nchunks || touched[chunk]) bad("chunk order");
    touched[chunk] = true;
  }
  std::vector<std::uint32_t> objmap(cells, 0);
  std::vector<std::uint32_t> alive;
  std::vector<std::vector<std::uint32_t>> members(nchunks);
  for (std::uint32_t slot = 1; slot < slots.size(); ++slot) {
    const Obj& o = slots[slot];
    if (o.removed) continue;
    if (!inside(o.x, o.y) || objmap[cell(o.x, o.y)] != 0) bad("object " + std::to_string(slot) + " position");
    objmap[cell(o.x, o.y)] = slot;
    alive.push_back(slot);  // creation order = slot order
    const int chunk = chunk_of(o.x, o.y);
    if (!touched[chunk]) bad("object " + std::to_string(slot) + " in an untouched chunk");
    members[chunk].push_back(slot);  // sorted: slots ascend
  }
  const std::uint32_t player_slot = r.u32("player slot");
  if (player_slot == 0 || player_slot >= slots.size() || slots[player_slot].removed ||
      slots[player_slot].kind != ObjKind::kPlayer) {
    bad("player slot " + std::to_string(player_slot) + " is not a live player");
  }
  const int action = r.i32("last action");
  if (action < 0 || action >= a_.num_actions()) bad("last action " + std::to_string(action));
  const bool sleeping = r.flag("sleeping");
  const int player_last_health = r.i32("player last health");
  const double hunger = r.f64("hunger"), thirst = r.f64("thirst"), recover = r.f64("recover");
  const int fatigue = r.i32("fatigue");
  std::vector<int> inventory = r.i32s("inventory");
  std::vector<int> achievements = r.i32s("achievements");
  const int env_last_health = r.i32("env last health");
  std::vector<bool> unlocked = r.bools("unlocked");
  if (static_cast<int>(inventory.size()) != a_.num_items()) bad("inventory size " + std::to_string(inventory.size()));
  if (static_cast<int>(achievements.size()) != a_.num_achievements() ||
      static_cast<int>(unlocked.size()) != a_.num_achievements()) {
    bad("achievements size");
  }
  std::vector<std::uint32_t> forced = r.u32s("forced despawns");
  const std::uint64_t forced_next = r.u64("forced despawn index");
  if (forced_next > forced.size()) bad("forced despawn index");
  r.expect_end();

  // Commit (nothing above changed the env).
  seed_ = seed;
  episode_ = episode;
  step_ = step;
  daylight_ = daylight;
  random_ = random;
  mat_ = std::move(mat);
  objmap_ = std::move(objmap);
  slots_ = std::move(slots);
  alive_ = std::move(alive);
  chunk_members_ = std::move(members);
  chunk_touched_ = std::move(touched);
  chunk_order_ = std::move(chunk_order);
  player_slot_ = player_slot;
  action_ = action;
  sleeping_ = sleeping;
  player_last_health_ = player_last_health;
  hunger_ = hunger;
  thirst_ = thirst;
  recover_ = recover;
  fatigue_ = fatigue;
  inventory_ = std::move(inventory);
  achievements_ = std::move(achievements);
  env_last_health_ = env_last_health;
  unlocked_ = std::move(unlocked);
  forced_despawns_ = std::move(forced);
  forced_next_ = static_cast<std::size_t>(forced_next);
  std::fill(light_cache_key_.begin(), light_cache_key_.end(), -1);
}

}  // namespace crafter
}  // namespace deltairis
