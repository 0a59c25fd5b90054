// Native Crafter engine (see engine.h), part 1 of 5: Assets, the rules table, textures and render tables
// shared by all envs of one configuration.
// Every floating-point expression mirrors the operation order of the Python package (numpy float64 /
// float32, Pillow float32) so results agree bit for bit; the library is compiled with -ffp-contract=off.
#include "envs/crafter/engine.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace deltairis {
namespace crafter {
namespace {

// numpy.linspace(-1, 1, n) element i.
inline double linspace_pm1(int n, int i) {
  if (n == 1) return -1.0;
  if (i == n - 1) return 1.0;
  const double step = 2.0 / static_cast<double>(n - 1);
  return static_cast<double>(i) * step + -1.0;
}

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

}  // namespace crafter
}  // namespace deltairis
