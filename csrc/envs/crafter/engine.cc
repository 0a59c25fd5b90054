// Native Crafter engine: see engine.h. Every floating-point expression below mirrors the operation
// order of the Python package (numpy float64 / float32, Pillow float32) so results agree bit for bit;
// the library is compiled with -ffp-contract=off.
#include "envs/crafter/engine.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace deltairis {
namespace crafter {
namespace {

constexpr double kPi = 3.141592653589793;

inline std::uint8_t luma(const std::uint8_t* rgb) {
  return static_cast<std::uint8_t>((rgb[0] * 19595u + rgb[1] * 38470u + rgb[2] * 7471u + 0x8000u) >> 16);
}

// numpy.linspace(-1, 1, n) element i.
inline double linspace_pm1(int n, int i) {
  if (n == 1) return -1.0;
  if (i == n - 1) return 1.0;
  const double step = 2.0 / static_cast<double>(n - 1);
  return static_cast<double>(i) * step + -1.0;
}

inline int sign(int v) { return (v > 0) - (v < 0); }

}  // namespace

std::vector<int> pillow_nearest_indices(int src, int dst) {
  std::vector<int> out(static_cast<std::size_t>(dst));
  const double scale = static_cast<double>(src) / dst;
  if (src == dst) {
    for (int i = 0; i < dst; ++i) out[i] = i;
    return out;
  }
  double pos = scale * 0.5;
  for (int i = 0; i < dst; ++i) {
    int idx = pos < 0.0 ? -1 : static_cast<int>(pos);
    out[i] = std::min(std::max(idx, 0), src - 1);
    pos += scale;
  }
  return out;
}

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
// Assets
// ------------------------------------------------------------------------------------------------

int Assets::material_id(const std::string& name, bool required) const {
  for (std::size_t i = 1; i < material_names_.size(); ++i) {
    if (material_names_[i] == name) return static_cast<int>(i);
  }
  if (required) throw std::invalid_argument("crafter rules: unknown material '" + name + "'");
  return -1;
}

int Assets::item_id(const std::string& name) const {
  for (std::size_t i = 0; i < item_names_.size(); ++i) {
    if (item_names_[i] == name) return static_cast<int>(i);
  }
  return -1;
}

int Assets::achievement_id(const std::string& name) const {
  for (std::size_t i = 0; i < achievement_names_.size(); ++i) {
    if (achievement_names_[i] == name) return static_cast<int>(i);
  }
  return -1;
}

int Assets::required_item(const std::string& name) const {
  const int id = item_id(name);
  if (id < 0) throw std::invalid_argument("crafter rules: unknown item '" + name + "'");
  return id;
}

int Assets::required_achievement(const std::string& name) const {
  const int id = achievement_id(name);
  if (id < 0) throw std::invalid_argument("crafter rules: unknown achievement '" + name + "'");
  return id;
}

std::vector<Assets::ItemAmount> Assets::item_amounts(const RulesSpec::Amounts& in) const {
  std::vector<ItemAmount> out;
  for (const auto& kv : in) out.push_back({required_item(kv.first), kv.second});
  return out;
}

Assets::Assets(const RulesSpec& rules, const std::map<std::string, Texture>& textures, const EnvConfig& config)
    : config_(config) {
  check_config(config);
  load_materials(rules);
  load_items(rules);
  std::vector<std::string> place_names, make_names;
  load_rules(rules, &place_names, &make_names);
  load_actions(rules, place_names, make_names);
  build_layout();
  build_textures(textures);
  build_vignette();
  semantic_base_ = static_cast<int>(material_names_.size());
}

void Assets::check_config(const EnvConfig& config) {
  if (config.area_x < 1 || config.area_y < 1) throw std::invalid_argument("area must be positive");
  if (config.area_x > 4096 || config.area_y > 4096) throw std::invalid_argument("area is too large");
  if (config.view_x < 1 || config.view_y < 1) throw std::invalid_argument("view must be positive");
  if (config.size_x < 1 || config.size_y < 1) throw std::invalid_argument("size must be positive");
}

// Material names (id 0: none), the ids the engine refers to, and the walkable tables.
void Assets::load_materials(const RulesSpec& rules) {
  material_names_.push_back("");
  for (const auto& m : rules.materials) material_names_.push_back(m);
  if (material_names_.size() > 250) throw std::invalid_argument("crafter rules: too many materials");
  const int nm = static_cast<int>(material_names_.size());
  m_water_ = material_id("water", true);
  m_grass_ = material_id("grass", true);
  m_stone_ = material_id("stone", true);
  m_path_ = material_id("path", true);
  m_sand_ = material_id("sand", true);
  m_tree_ = material_id("tree", true);
  m_lava_ = material_id("lava", true);
  m_coal_ = material_id("coal", true);
  m_iron_ = material_id("iron", true);
  m_diamond_ = material_id("diamond", true);
  m_table_ = material_id("table", true);
  m_furnace_ = material_id("furnace", true);
  walkable_.assign(nm, false);
  for (const auto& m : rules.walkable) walkable_[material_id(m, true)] = true;
  player_walkable_ = walkable_;
  player_walkable_[m_lava_] = true;
  arrow_walkable_ = walkable_;
  arrow_walkable_[m_water_] = true;
  arrow_walkable_[m_lava_] = true;
}

// Items with their limits, achievements, and the ids the engine refers to.
void Assets::load_items(const RulesSpec& rules) {
  for (const auto& item : rules.items) {
    item_names_.push_back(item.name);
    item_max_.push_back(item.max);
    item_initial_.push_back(item.initial);
  }
  achievement_names_ = rules.achievements;
  i_health_ = required_item("health");
  i_food_ = required_item("food");
  i_drink_ = required_item("drink");
  i_energy_ = required_item("energy");
  i_wood_sword_ = required_item("wood_sword");
  i_stone_sword_ = required_item("stone_sword");
  i_iron_sword_ = required_item("iron_sword");
  i_fence_ = item_id("fence");
  a_wake_up_ = required_achievement("wake_up");
  a_eat_plant_ = required_achievement("eat_plant");
  a_collect_fence_ = achievement_id("collect_fence");
  a_defeat_zombie_ = required_achievement("defeat_zombie");
  a_defeat_skeleton_ = required_achievement("defeat_skeleton");
  a_eat_cow_ = required_achievement("eat_cow");
}

// The collect, place and make rules; the names of the place and make rules in rule order.
void Assets::load_rules(const RulesSpec& rules, std::vector<std::string>* place_names,
                        std::vector<std::string>* make_names) {
  const int nm = static_cast<int>(material_names_.size());
  collect_.assign(nm, CollectRule{});
  for (const auto& c : rules.collect) {
    CollectRule rule;
    rule.present = true;
    rule.require = item_amounts(c.require);
    rule.receive = item_amounts(c.receive);
    for (const auto& kv : c.receive) rule.receive_achievement.push_back(required_achievement("collect_" + kv.first));
    rule.leaves = material_id(c.leaves, true);
    rule.probability = c.probability;
    collect_[material_id(c.material, true)] = rule;
  }
  for (const auto& p : rules.place) {
    place_.push_back(place_rule(p));
    place_names->push_back(p.name);
  }
  for (const auto& mk : rules.make) {
    MakeRule rule;
    rule.uses = item_amounts(mk.uses);
    for (const auto& n : mk.nearby) rule.nearby.push_back(material_id(n, true));
    rule.item = required_item(mk.name);
    rule.gives = mk.gives;
    rule.achievement = required_achievement("make_" + mk.name);
    make_.push_back(rule);
    make_names->push_back(mk.name);
  }
}

Assets::PlaceRule Assets::place_rule(const RulesSpec::Place& p) const {
  PlaceRule rule;
  rule.uses = item_amounts(p.uses);
  rule.where.assign(material_names_.size(), false);
  for (const auto& w : p.where) rule.where[material_id(w, true)] = true;
  if (p.type == "material") {
    rule.is_object = false;
    rule.material = material_id(p.name, true);
  } else if (p.type == "object") {
    rule.is_object = true;
    if (p.name == "plant") {
      rule.object_kind = ObjKind::kPlant;
    } else if (p.name == "fence") {
      rule.object_kind = ObjKind::kFence;
    } else {
      throw std::invalid_argument("crafter rules: cannot place object '" + p.name + "'");
    }
  } else {
    throw std::invalid_argument("crafter rules: unknown place type '" + p.type + "'");
  }
  rule.achievement = required_achievement("place_" + p.name);
  return rule;
}

void Assets::load_actions(const RulesSpec& rules, const std::vector<std::string>& place_names,
                          const std::vector<std::string>& make_names) {
  for (const auto& name : rules.actions) {
    action_names_.push_back(name);
    actions_.push_back(parse_action(name, place_names, make_names));
  }
}

// noop, move_<dir>, do, sleep, place_<rule>, make_<rule>.
Assets::Action Assets::parse_action(const std::string& name, const std::vector<std::string>& place_names,
                                    const std::vector<std::string>& make_names) {
  Action act;
  auto starts = [&](const char* prefix) { return name.rfind(prefix, 0) == 0; };
  auto index_of = [&](const std::vector<std::string>& names, const std::string& n) {
    for (std::size_t i = 0; i < names.size(); ++i)
      if (names[i] == n) return static_cast<int>(i);
    throw std::invalid_argument("crafter rules: action '" + name + "' has no rule");
  };
  if (name == "noop") {
    act.kind = ActionKind::kNoop;
  } else if (starts("move_")) {
    act.kind = ActionKind::kMove;
    const std::string dir = name.substr(5);
    if (dir == "left") {
      act.dx = -1;
    } else if (dir == "right") {
      act.dx = 1;
    } else if (dir == "up") {
      act.dy = -1;
    } else if (dir == "down") {
      act.dy = 1;
    } else {
      throw std::invalid_argument("crafter rules: unknown direction in '" + name + "'");
    }
  } else if (name == "do") {
    act.kind = ActionKind::kDo;
  } else if (name == "sleep") {
    act.kind = ActionKind::kSleep;
  } else if (starts("place_")) {
    act.kind = ActionKind::kPlace;
    act.index = index_of(place_names, name.substr(6));
  } else if (starts("make_")) {
    act.kind = ActionKind::kMake;
    act.index = index_of(make_names, name.substr(5));
  } else {
    throw std::invalid_argument("crafter rules: unknown action '" + name + "'");
  }
  return act;
}

// Render tables: unit = size // view; the local view loses ceil(items / view_x) rows to the inventory bar.
void Assets::build_layout() {
  const EnvConfig& config = config_;
  unit_x_ = config.size_x / config.view_x;
  unit_y_ = config.size_y / config.view_y;
  if (unit_x_ < 1 || unit_y_ < 1) throw std::invalid_argument("size must be at least view in each axis");
  item_rows_ = (num_items() + config.view_x - 1) / config.view_x;
  grid_x_ = config.view_x;
  grid_y_ = config.view_y - item_rows_;
  if (grid_y_ < 1) throw std::invalid_argument("view is too small for the inventory bar");
  local_w_ = grid_x_ * unit_x_;
  local_h_ = grid_y_ * unit_y_;
  item_h_ = item_rows_ * unit_y_;
  border_x_ = (config.size_x - unit_x_ * config.view_x) / 2;
  border_y_ = (config.size_y - unit_y_ * config.view_y) / 2;
  for (int i = 0; i < num_items(); ++i) {
    const int px = i % grid_x_, py = i / grid_x_;
    item_pos_x_.push_back(static_cast<int>(px * unit_x_ + 0.1 * unit_x_));
    item_pos_y_.push_back(static_cast<int>(py * unit_y_ + 0.1 * unit_y_));
    amount_pos_x_.push_back(static_cast<int>(px * unit_x_ + 0.4 * unit_x_));
    amount_pos_y_.push_back(static_cast<int>(py * unit_y_ + 0.4 * unit_y_));
  }
}

// The texture `wanted` ("unknown" when absent) resized to (w, h) like crafter: the PNG transposed to
// (width, height), then Pillow's nearest resize to w rows x h columns.
const CanvasTexture* Assets::add_texture(const std::map<std::string, Texture>& textures, const std::string& wanted,
                                         int w, int h) {
  auto it = textures.find(wanted);
  if (it == textures.end()) it = textures.find("unknown");
  if (it == textures.end()) throw std::invalid_argument("crafter textures: missing '" + wanted + "'");
  const Texture& t = it->second;
  if (t.channels != 3 && t.channels != 4) throw std::invalid_argument("texture '" + wanted + "' channels");
  CanvasTexture out;
  out.w = std::max(w, 0);
  out.h = std::max(h, 0);
  out.channels = t.channels;
  out.pixels.resize(static_cast<std::size_t>(out.w) * out.h * t.channels);
  const std::vector<int> ri = pillow_nearest_indices(t.width, out.w);
  const std::vector<int> ci = pillow_nearest_indices(t.height, out.h);
  for (int r = 0; r < out.w; ++r) {
    for (int c = 0; c < out.h; ++c) {
      const std::uint8_t* src = &t.pixels[(static_cast<std::size_t>(ci[c]) * t.width + ri[r]) * t.channels];
      std::uint8_t* dst = &out.pixels[(static_cast<std::size_t>(r) * out.h + c) * t.channels];
      for (int k = 0; k < t.channels; ++k) dst[k] = src[k];
    }
  }
  texture_store_.push_back(std::move(out));
  return &texture_store_.back();
}

void Assets::build_textures(const std::map<std::string, Texture>& textures) {
  const int nm = static_cast<int>(material_names_.size());
  texture_store_.reserve(nm + 16 + num_items() + 11);  // no reallocation: the tables point into it
  material_tex_.assign(nm, nullptr);
  material_tex_[0] = add_texture(textures, "unknown", unit_x_, unit_y_);
  for (int m = 1; m < nm; ++m) material_tex_[m] = add_texture(textures, material_names_[m], unit_x_, unit_y_);
  const char* object_names[] = {"player-left", "player-right", "player-up", "player-down", "player-sleep",
                                "cow",         "zombie",       "skeleton",  "arrow-left",  "arrow-right",
                                "arrow-up",    "arrow-down",   "plant",     "plant-ripe",  "fence"};
  for (const char* n : object_names) object_tex_.push_back(add_texture(textures, n, unit_x_, unit_y_));
  const int item_w = static_cast<int>(0.8 * unit_x_), item_hh = static_cast<int>(0.8 * unit_y_);
  const int digit_w = static_cast<int>(0.6 * unit_x_), digit_h = static_cast<int>(0.6 * unit_y_);
  for (const auto& n : item_names_) item_tex_.push_back(add_texture(textures, n, item_w, item_hh));
  for (int d = 0; d < 10; ++d) digit_tex_.push_back(add_texture(textures, std::to_string(d), digit_w, digit_h));
  digit_tex_.push_back(add_texture(textures, "unknown", digit_w, digit_h));
}

// LocalView's vignette: 1 - exp(-0.5 * (x^2 + y^2) / 0.5^2) over linspace(-1, 1) in each axis.
void Assets::build_vignette() {
  vignette_.resize(static_cast<std::size_t>(local_w_) * local_h_);
  for (int x = 0; x < local_w_; ++x) {
    const double lx = linspace_pm1(local_w_, x);
    for (int y = 0; y < local_h_; ++y) {
      const double ly = linspace_pm1(local_h_, y);
      vignette_[static_cast<std::size_t>(x) * local_h_ + y] = 1 - std::exp(-0.5 * (lx * lx + ly * ly) / (0.5 * 0.5));
    }
  }
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

// ------------------------------------------------------------------------------------------------
// Env: rendering and views
// ------------------------------------------------------------------------------------------------

const CanvasTexture* Env::object_texture(const Obj& obj) const {
  switch (obj.kind) {
    case ObjKind::kPlayer:
      if (sleeping_) return a_.object_tex_[4];
      if (obj.fx == -1) return a_.object_tex_[0];
      if (obj.fx == 1) return a_.object_tex_[1];
      if (obj.fy == -1) return a_.object_tex_[2];
      return a_.object_tex_[3];
    case ObjKind::kCow: return a_.object_tex_[5];
    case ObjKind::kZombie: return a_.object_tex_[6];
    case ObjKind::kSkeleton: return a_.object_tex_[7];
    case ObjKind::kArrow:
      if (obj.fx == -1) return a_.object_tex_[8];
      if (obj.fx == 1) return a_.object_tex_[9];
      if (obj.fy == -1) return a_.object_tex_[10];
      return a_.object_tex_[11];
    case ObjKind::kPlant: return obj.grown > 300 ? a_.object_tex_[13] : a_.object_tex_[12];
    case ObjKind::kFence: return a_.object_tex_[14];
  }
  return a_.object_tex_[14];
}

namespace {

// crafter.engine._draw / _draw_alpha onto an x-major (width, height, 3) canvas, clipped like numpy
// slicing at the canvas's far edges.
void draw_texture(std::uint8_t* canvas, int cw, int ch, int x0, int y0, const CanvasTexture& tex, bool alpha) {
  const int x1 = std::min(x0 + tex.w, cw), y1 = std::min(y0 + tex.h, ch);
  for (int x = std::max(x0, 0); x < x1; ++x) {
    for (int y = std::max(y0, 0); y < y1; ++y) {
      const std::uint8_t* src = &tex.pixels[(static_cast<std::size_t>(x - x0) * tex.h + (y - y0)) * tex.channels];
      std::uint8_t* dst = &canvas[(static_cast<std::size_t>(x) * ch + y) * 3];
      if (alpha && tex.channels == 4) {
        const float a = static_cast<float>(src[3]) / 255;
        for (int k = 0; k < 3; ++k) {
          const float t = static_cast<float>(src[k]) / 255;
          const float c = static_cast<float>(dst[k]) / 255;
          const float blended = a * t + (1 - a) * c;
          dst[k] = static_cast<std::uint8_t>(255 * blended);
        }
      } else {
        dst[0] = src[0];
        dst[1] = src[1];
        dst[2] = src[2];
      }
    }
  }
}

// LocalView._light then _sleep for one pixel: c is the canvas colour, n1 its noised version (c itself in
// daylight).
void light_pixel(const std::uint8_t* c, const std::uint8_t* n1, double daylight, double one_minus_day, bool sleeping,
                 std::uint8_t* dst) {
  static constexpr double kNightTint[3] = {0, 16, 64};
  static constexpr double kSleepTint[3] = {0, 0, 16};
  const int grey = luma(n1);
  double out[3];
  for (int k = 0; k < 3; ++k) {
    const float blended = static_cast<float>(grey) + 0.4f * static_cast<float>(static_cast<int>(n1[k]) - grey);
    const std::uint8_t n2 = static_cast<std::uint8_t>(blended);
    const double night = 0.5 * n2 + 0.5 * kNightTint[k];
    out[k] = daylight * c[k] + one_minus_day * night;
  }
  if (sleeping) {
    std::uint8_t s[3];
    for (int k = 0; k < 3; ++k) s[k] = static_cast<std::uint8_t>(out[k]);
    const int g = luma(s);
    for (int k = 0; k < 3; ++k) {
      const float blended = static_cast<float>(g) + 0.0f * static_cast<float>(static_cast<int>(s[k]) - g);
      out[k] = 0.5 * static_cast<std::uint8_t>(blended) + 0.5 * kSleepTint[k];
    }
  }
  for (int k = 0; k < 3; ++k) dst[k] = static_cast<std::uint8_t>(out[k]);
}

}  // namespace

void Env::render(std::uint8_t* obs) {
  draw_local_view();
  std::fill(obs, obs + static_cast<std::size_t>(a_.config_.size_x) * a_.config_.size_y * 3,
            static_cast<std::uint8_t>(0));
  light_local_view(obs);
  draw_item_view(obs);
}

// Local view canvas: materials, then objects in creation order.
void Env::draw_local_view() {
  const int w = a_.local_w_, h = a_.local_h_;
  const int ux = a_.unit_x_, uy = a_.unit_y_;
  const int gx = a_.grid_x_, gy = a_.grid_y_;
  const int ox = gx / 2, oy = gy / 2;
  const Obj& player = slots_[player_slot_];
  std::fill(local_.begin(), local_.end(), static_cast<std::uint8_t>(127));
  for (int x = 0; x < gx; ++x) {
    for (int y = 0; y < gy; ++y) {
      const int wx = player.x + x - ox, wy = player.y + y - oy;
      if (!inside(wx, wy)) continue;
      draw_texture(local_.data(), w, h, x * ux, y * uy, *a_.material_tex_[mat_[cell(wx, wy)]], false);
    }
  }
  for (std::uint32_t slot : alive_) {
    const Obj& obj = slots_[slot];
    const int x = obj.x - player.x + ox, y = obj.y - player.y + oy;
    if (x < 0 || y < 0 || x >= gx || y >= gy) continue;
    draw_texture(local_.data(), w, h, x * ux, y * uy, *object_texture(obj), true);
  }
}

// Lighting (LocalView._light, with noise and vignette at night) and sleep tint of the local view canvas
// into obs.
void Env::light_local_view(std::uint8_t* obs) {
  const int sx = a_.config_.size_x, sy = a_.config_.size_y;
  const int w = a_.local_w_, h = a_.local_h_;
  const double daylight = daylight_;
  const bool dark = daylight < 0.5;
  const double amount = 2 * (0.5 - daylight);
  if (dark) {
    for (std::size_t i = 0; i < noise_.size(); ++i) noise_[i] = random_.uniform(32, 127);
  }
  const double one_minus_day = 1 - daylight;
  const bool sleeping = sleeping_;
  const int bx = a_.border_x_, by = a_.border_y_;
  // In daylight the result depends on the colour alone: memoise it per frame (textures use few colours).
  if (!dark) std::fill(light_cache_key_.begin(), light_cache_key_.end(), -1);
  for (int x = 0; x < w; ++x) {
    for (int y = 0; y < h; ++y) {
      const std::size_t p = static_cast<std::size_t>(x) * h + y;
      const std::uint8_t* c = &local_[p * 3];
      const int X = bx + x, Y = by + y;
      if (X < 0 || Y < 0 || X >= sx || Y >= sy) continue;
      std::uint8_t* dst = &obs[(static_cast<std::size_t>(Y) * sx + X) * 3];
      if (dark) {
        std::uint8_t n1[3];
        const double m = amount * a_.vignette_[p];
        const double nz = noise_[p];
        for (int k = 0; k < 3; ++k) n1[k] = static_cast<std::uint8_t>((1 - m) * c[k] + m * nz);
        light_pixel(c, n1, daylight, one_minus_day, sleeping, dst);
      } else {
        const std::int32_t key = (c[0] << 16) | (c[1] << 8) | c[2];
        const std::size_t slot = static_cast<std::size_t>((key * 2654435761u) >> 20) & (kLightCache - 1);
        std::uint8_t* cached = &light_cache_value_[slot * 3];
        if (light_cache_key_[slot] != key) {
          light_pixel(c, c, daylight, one_minus_day, sleeping, cached);
          light_cache_key_[slot] = key;
        }
        dst[0] = cached[0];
        dst[1] = cached[1];
        dst[2] = cached[2];
      }
    }
  }
}

// Inventory bar (ItemView) below the local view, unlit.
void Env::draw_item_view(std::uint8_t* obs) {
  const int sx = a_.config_.size_x, sy = a_.config_.size_y;
  const int w = a_.local_w_, h = a_.local_h_, ih = a_.item_h_;
  const int bx = a_.border_x_, by = a_.border_y_;
  std::vector<std::uint8_t>& items = items_;
  items.assign(static_cast<std::size_t>(w) * ih * 3, 0);
  for (int i = 0; i < a_.num_items(); ++i) {
    const int amount_i = inventory_[i];
    if (amount_i < 1) continue;
    draw_texture(items.data(), w, ih, a_.item_pos_x_[i], a_.item_pos_y_[i], *a_.item_tex_[i], true);
    const CanvasTexture& digit = amount_i <= 9 ? *a_.digit_tex_[amount_i] : *a_.digit_tex_[10];
    draw_texture(items.data(), w, ih, a_.amount_pos_x_[i], a_.amount_pos_y_[i], digit, true);
  }
  for (int x = 0; x < w; ++x) {
    for (int y = 0; y < ih; ++y) {
      const int X = bx + x, Y = by + h + y;
      if (X < 0 || Y < 0 || X >= sx || Y >= sy) continue;
      const std::uint8_t* src = &items[(static_cast<std::size_t>(x) * ih + y) * 3];
      std::uint8_t* dst = &obs[(static_cast<std::size_t>(Y) * sx + X) * 3];
      dst[0] = src[0];
      dst[1] = src[1];
      dst[2] = src[2];
    }
  }
}

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

void Env::semantic(std::uint8_t* out) const {
  std::copy(mat_.begin(), mat_.end(), out);
  for (std::uint32_t slot : alive_) {
    const Obj& obj = slots_[slot];
    const int kind = static_cast<int>(obj.kind);
    out[cell(obj.x, obj.y)] =
        obj.kind == ObjKind::kFence ? 255 : static_cast<std::uint8_t>(a_.semantic_base_ + kind);
  }
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
