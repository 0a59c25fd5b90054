// Native Crafter engine reproducing crafter 1.8.3 (world generation, objects, balancing, daylight,
// rendering, rewards) bit for bit, given the same rules table and textures. No Python in here: the
// bindings read data.yaml and the PNG textures from the installed crafter package and pass them in.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "envs/crafter/opensimplex.h"
#include "envs/crafter/random.h"

namespace deltairis {
namespace crafter {

// The rules table (crafter's data.yaml) in plain strings, as read from the installed package.
struct RulesSpec {
  using Amounts = std::vector<std::pair<std::string, int>>;
  struct Item {
    std::string name;
    int max = 0;
    int initial = 0;
  };
  struct Collect {
    std::string material;
    Amounts require;
    Amounts receive;
    std::string leaves;
    double probability = 1.0;
  };
  struct Place {
    std::string name;
    Amounts uses;
    std::vector<std::string> where;
    std::string type;  // "material" or "object"
  };
  struct Make {
    std::string name;
    Amounts uses;
    std::vector<std::string> nearby;
    int gives = 1;
  };
  std::vector<std::string> actions;
  std::vector<std::string> materials;
  std::vector<std::string> walkable;
  std::vector<Item> items;
  std::vector<Collect> collect;
  std::vector<Place> place;
  std::vector<Make> make;
  std::vector<std::string> achievements;
};

// A decoded PNG: row-major (height, width, channels) with 3 or 4 channels.
struct Texture {
  int height = 0;
  int width = 0;
  int channels = 0;
  std::vector<std::uint8_t> pixels;
};

struct EnvConfig {
  int area_x = 64;
  int area_y = 64;
  int view_x = 9;
  int view_y = 9;
  int size_x = 64;
  int size_y = 64;
  bool reward = true;
  std::int64_t length = 10000;  // <= 0: no time limit
};

// A texture resized with Pillow's NEAREST rule, in canvas layout: pixel (r, c) covers canvas
// position (x0 + r, y0 + c); pixels[(r * h + c) * channels + k].
struct CanvasTexture {
  int w = 0;
  int h = 0;
  int channels = 0;
  std::vector<std::uint8_t> pixels;
};

// Pillow's NEAREST source indices for resizing `src` pixels to `dst` (accumulated offsets).
std::vector<int> pillow_nearest_indices(int src, int dst);

enum class ObjKind : std::uint8_t { kPlayer = 0, kCow, kZombie, kSkeleton, kArrow, kPlant, kFence };

// Python crafter's class name of an object kind ("Player", "Cow", ...).
const char* object_kind_name(ObjKind kind);
// The kind whose class name is `name`; throws std::invalid_argument("unknown object kind <name>").
ObjKind object_kind_from_name(const std::string& name);

enum class ActionKind : std::uint8_t { kNoop, kMove, kDo, kSleep, kPlace, kMake };

// Immutable rules, textures and render tables for one EnvConfig; shared by many envs and threads.
class Assets {
 public:
  Assets(const RulesSpec& rules, const std::map<std::string, Texture>& textures, const EnvConfig& config);
  Assets(const Assets&) = delete;  // render tables point into texture_store_
  Assets& operator=(const Assets&) = delete;

  struct Action {
    ActionKind kind = ActionKind::kNoop;
    int dx = 0, dy = 0;  // kMove
    int index = 0;       // kPlace / kMake rule index
  };
  struct ItemAmount {
    int item;
    int amount;
  };
  struct CollectRule {
    bool present = false;
    std::vector<ItemAmount> require;
    std::vector<ItemAmount> receive;
    std::vector<int> receive_achievement;
    int leaves = 0;
    double probability = 1.0;
  };
  struct PlaceRule {
    std::vector<ItemAmount> uses;
    std::vector<bool> where;  // by material id
    bool is_object = false;   // object placements create a Plant (or a Fence)
    ObjKind object_kind = ObjKind::kPlant;
    int material = 0;
    int achievement = -1;
  };
  struct MakeRule {
    std::vector<ItemAmount> uses;
    std::vector<int> nearby;  // material ids
    int item = 0;
    int gives = 1;
    int achievement = -1;
  };

  const EnvConfig& config() const { return config_; }
  int num_actions() const { return static_cast<int>(actions_.size()); }
  int num_items() const { return static_cast<int>(item_names_.size()); }
  int num_achievements() const { return static_cast<int>(achievement_names_.size()); }
  int num_materials() const { return static_cast<int>(material_names_.size()) - 1; }
  const std::vector<std::string>& action_names() const { return action_names_; }
  const std::vector<std::string>& item_names() const { return item_names_; }
  const std::vector<std::string>& achievement_names() const { return achievement_names_; }
  const std::vector<std::string>& material_names() const { return material_names_; }  // [0] = ""
  int obs_height() const { return config_.size_y; }
  int obs_width() const { return config_.size_x; }

 private:
  friend class Env;
  int material_id(const std::string& name, bool required) const;
  int item_id(const std::string& name) const;
  int achievement_id(const std::string& name) const;
  int required_item(const std::string& name) const;         // throws when the rules lack it
  int required_achievement(const std::string& name) const;  // throws when the rules lack it
  std::vector<ItemAmount> item_amounts(const RulesSpec::Amounts& in) const;
  // The constructor's steps, in order.
  static void check_config(const EnvConfig& config);
  void load_materials(const RulesSpec& rules);
  void load_items(const RulesSpec& rules);
  void load_rules(const RulesSpec& rules, std::vector<std::string>* place_names, std::vector<std::string>* make_names);
  PlaceRule place_rule(const RulesSpec::Place& p) const;
  void load_actions(const RulesSpec& rules, const std::vector<std::string>& place_names,
                    const std::vector<std::string>& make_names);
  static Action parse_action(const std::string& name, const std::vector<std::string>& place_names,
                             const std::vector<std::string>& make_names);
  void build_layout();
  const CanvasTexture* add_texture(const std::map<std::string, Texture>& textures, const std::string& wanted, int w,
                                   int h);
  void build_textures(const std::map<std::string, Texture>& textures);
  void build_vignette();

  EnvConfig config_;
  std::vector<std::string> action_names_;
  std::vector<Action> actions_;
  std::vector<std::string> material_names_;
  std::vector<bool> walkable_;        // by material id
  std::vector<bool> player_walkable_; // + lava
  std::vector<bool> arrow_walkable_;  // + water, lava
  std::vector<std::string> item_names_;
  std::vector<int> item_max_;
  std::vector<int> item_initial_;
  std::vector<std::string> achievement_names_;
  std::vector<CollectRule> collect_;  // by material id
  std::vector<PlaceRule> place_;
  std::vector<MakeRule> make_;
  // Materials used by world generation and the objects.
  int m_water_, m_grass_, m_stone_, m_path_, m_sand_, m_tree_, m_lava_, m_coal_, m_iron_, m_diamond_,
      m_table_, m_furnace_;
  // Items and achievements the player logic names directly (-1 when absent).
  int i_health_, i_food_, i_drink_, i_energy_, i_wood_sword_, i_stone_sword_, i_iron_sword_, i_fence_;
  int a_wake_up_, a_eat_plant_, a_collect_fence_, a_defeat_zombie_, a_defeat_skeleton_, a_eat_cow_;

  // Render tables.
  int unit_x_ = 0, unit_y_ = 0;
  int grid_x_ = 0, grid_y_ = 0;       // local view tiles
  int item_rows_ = 0;
  int border_x_ = 0, border_y_ = 0;
  int local_w_ = 0, local_h_ = 0;     // local view canvas in pixels (x extent, y extent)
  int item_h_ = 0;                    // item view canvas y extent
  std::vector<CanvasTexture> texture_store_;
  std::vector<const CanvasTexture*> material_tex_;  // by material id ([0] = unknown)
  std::vector<const CanvasTexture*> object_tex_;    // see Env::object_texture
  std::vector<const CanvasTexture*> item_tex_;      // by item id, 0.8 unit
  std::vector<const CanvasTexture*> digit_tex_;     // [0..9] and [10] = unknown, 0.6 unit
  int item_off_x_ = 0, item_off_y_ = 0, amount_off_x_ = 0, amount_off_y_ = 0;  // per-slot offsets
  std::vector<int> item_pos_x_, item_pos_y_, amount_pos_x_, amount_pos_y_;   // by inventory slot
  std::vector<double> vignette_;  // (local_w, local_h), x-major
  int semantic_base_ = 0;         // semantic id of the Player class
};

// The configuration a saved state belongs to, in words ("area 64x64, view 9x9, ..., 17 actions, ...").
std::string config_fingerprint(const Assets& assets);

struct StepResult {
  double reward = 0.0;       // returned reward (0 when config.reward is false)
  double info_reward = 0.0;  // info["reward"]
  bool done = false;
  bool dead = false;
  bool over = false;
};

// Full state of a Python crafter.Env between two steps (test hook for one-step round trips).
struct ImportedState {
  struct Object {
    std::uint32_t slot;
    ObjKind kind;
    int x, y, health, facing_x, facing_y, cooldown, grown;
  };
  std::int64_t step = 0;
  std::int64_t episode = 0;
  std::vector<std::uint32_t> mt_key;
  int mt_pos = 0;
  std::vector<std::uint8_t> materials;  // (area_x, area_y)
  std::uint32_t num_slots = 1;          // len(world._objects), slot 0 included
  std::vector<Object> objects;          // live objects, the player among them
  std::vector<int> chunk_order;         // chunk indices (x // 12) * ceil(area_y / 12) + y // 12
  bool sleeping = false;
  int player_last_health = 0;
  double hunger = 0, thirst = 0, recover = 0;
  int fatigue = 0;
  std::vector<int> inventory;
  std::vector<int> achievements;
  int env_last_health = 0;
  std::vector<bool> unlocked;
};

// Public view of one object (for tests and state export).
struct ObjectState {
  ObjKind kind;
  int x, y;
  int health;
  int facing_x, facing_y;  // arrows and the player
  int cooldown;            // zombie cooldown, skeleton reload
  int grown;               // plants
  bool removed;
};

class Env {
 public:
  Env(std::shared_ptr<const Assets> assets, std::int64_t seed);

  // Starts the next episode and writes its first observation, (size_y, size_x, 3) uint8.
  void reset(std::uint8_t* obs) { reset_at(episode_ + 1, obs); }
  // Starts episode number `episode` (1 = the first) directly: the same state and observation as
  // calling reset() `episode` times on a fresh Env with this seed (the vector env builds its next
  // episodes ahead of time this way). Everything an episode depends on is re-initialised here.
  void reset_at(std::int64_t episode, std::uint8_t* obs);
  // Advances one step; `action` must be in [0, num_actions).
  StepResult step(int action, std::uint8_t* obs);

  // crafter.Env.render(): draws the current frame again (at night this draws the noise from the world's
  // random stream, exactly as crafter does, so it changes the rest of the episode).
  void render_frame(std::uint8_t* obs) { render(obs); }
  const Assets& assets() const { return *assets_; }
  std::int64_t seed() const { return seed_; }
  std::int64_t episode() const { return episode_; }
  std::int64_t step_count() const { return step_; }
  double daylight() const { return daylight_; }
  bool sleeping() const { return sleeping_; }
  int player_x() const { return slots_[player_slot_].x; }
  int player_y() const { return slots_[player_slot_].y; }
  const std::vector<int>& inventory() const { return inventory_; }
  const std::vector<int>& achievements() const { return achievements_; }
  // Material ids, (area_x, area_y) x-major.
  const std::vector<std::uint8_t>& material_map() const { return mat_; }
  // The semantic map of crafter's info, (area_x, area_y) x-major.
  void semantic(std::uint8_t* out) const;
  // Live objects in creation order.
  std::vector<ObjectState> objects() const;
  // Test hook (replay of the unmodified package): the slots that the next despawns remove, in order,
  // instead of creation-order creatures[randint(0, n)] (the draw itself still happens).
  void set_despawn_choices(std::vector<std::uint32_t> slots) {
    forced_despawns_ = std::move(slots);
    forced_next_ = 0;
  }
  std::size_t despawn_choices_left() const { return forced_despawns_.size() - forced_next_; }
  // Test hook: replaces the whole state (throws std::invalid_argument on an inconsistent state, after
  // which the env must be reset or re-imported before use). state_edit.h builds its objects from rows.
  void import_state(const ImportedState& state);
  // Exact save and restore (checkpoints): every field a step, a reset or a render reads — the world
  // (materials, objects with all their fields, removed ones included, chunk first-touch order), the
  // generator's full MT19937 state, seed, episode and step counters, daylight, the player's stats,
  // inventory, achievements and unlocks, the forced despawns — framed by state_codec.h (magic
  // "DICRAFTE", version kStateVersion, checksum). Derived tables (object map, live list, chunk members)
  // are rebuilt on load; render scratch and the daylight colour memo hold no state. load_state accepts
  // only a state saved with the same configuration (config_fingerprint) and throws
  // std::invalid_argument naming the problem (kind, version, truncation, checksum, configuration or an
  // inconsistent field), leaving the env as it was.
  static constexpr std::uint32_t kStateVersion = 1;
  std::string save_state() const;
  void load_state(const std::string& blob);

  // Test hooks (scenario tests apply the same edits to the Python reference; state_edit.h's apply_poke
  // dispatches to them): set an inventory count or a material, or add an object (throws
  // std::invalid_argument on a bad item, material, position or kind).
  void poke_inventory(int item, int value);
  void poke_material(int x, int y, int material);
  std::uint32_t poke_object(ObjKind kind, int x, int y, int health, int fx, int fy, int grown);

 private:
  struct Obj {
    ObjKind kind;
    int x, y;
    int health;  // unused for the player (its health lives in the inventory)
    int fx, fy;
    int cooldown;  // zombie cooldown / skeleton reload
    int grown;
    bool removed;
  };

  // World.
  bool inside(int x, int y) const { return x >= 0 && y >= 0 && x < ax_ && y < ay_; }
  int cell(int x, int y) const { return x * ay_ + y; }
  int material_at(int x, int y) const { return inside(x, y) ? mat_[cell(x, y)] : 0; }
  std::uint32_t object_at(int x, int y) const { return inside(x, y) ? objmap_[cell(x, y)] : 0; }
  int chunk_of(int x, int y) const { return (x / 12) * nchunk_y_ + (y / 12); }
  void chunk_insert(int chunk, std::uint32_t slot);
  void chunk_erase(int chunk, std::uint32_t slot);
  std::uint32_t add_object(ObjKind kind, int x, int y);
  void remove_object(std::uint32_t slot);
  void move_object(std::uint32_t slot, int x, int y);

  int health(std::uint32_t slot) const;
  void set_health(std::uint32_t slot, int value);
  bool is_free(int x, int y, const std::vector<bool>& walkable) const;
  const std::vector<bool>& walkable_of(ObjKind kind) const;
  bool move(std::uint32_t slot, int dx, int dy);
  void toward(const Obj& obj, bool long_axis, int* dx, int* dy) const;
  void random_dir(int* dx, int* dy);

  void generate_world();
  void update_time();
  void update_object(std::uint32_t slot);
  void update_player();
  Assets::Action player_action();
  void apply_player_action(const Assets::Action& act, int tx, int ty, int material, std::uint32_t target_obj);
  void update_life_stats();
  void update_player_health();
  void update_cow(std::uint32_t slot);
  void update_zombie(std::uint32_t slot);
  void update_skeleton(std::uint32_t slot);
  void update_arrow(std::uint32_t slot);
  void update_plant(std::uint32_t slot);
  void player_do_object(std::uint32_t slot);
  void player_do_material(int tx, int ty, int material);
  void player_place(int rule, int tx, int ty, int material);
  void player_make(int rule);
  void balance_chunk(int chunk);
  void balance_object(int chunk, ObjKind kind, int material, int span_dist, int despawn_dist,
                      double spawn_prob, double despawn_prob, double target_min, double target_max);
  const CanvasTexture* object_texture(const Obj& obj) const;
  void render(std::uint8_t* obs);
  void draw_local_view();                   // materials and objects onto local_
  void light_local_view(std::uint8_t* obs);  // daylight, night noise and sleep tint into obs
  void draw_item_view(std::uint8_t* obs);    // the inventory bar into obs

  std::shared_ptr<const Assets> assets_;
  const Assets& a_;
  int ax_, ay_, nchunk_x_, nchunk_y_;
  std::int64_t seed_;
  std::int64_t episode_ = 0;
  std::int64_t step_ = 0;
  double daylight_ = 0.0;
  LegacyRandom random_;

  std::vector<std::uint8_t> mat_;
  std::vector<std::uint32_t> objmap_;
  std::vector<Obj> slots_;              // slot 0 unused
  std::vector<std::uint32_t> alive_;    // live slots in creation order
  std::vector<std::vector<std::uint32_t>> chunk_members_;  // sorted slots per chunk
  std::vector<bool> chunk_touched_;
  std::vector<int> chunk_order_;        // first-touch order

  // Player.
  std::uint32_t player_slot_ = 1;
  int action_ = 0;
  bool sleeping_ = false;
  int player_last_health_ = 0;
  double hunger_ = 0, thirst_ = 0, recover_ = 0;
  int fatigue_ = 0;
  std::vector<int> inventory_;
  std::vector<int> achievements_;
  // Env bookkeeping.
  int env_last_health_ = 0;
  std::vector<bool> unlocked_;

  // Per-step scratch (reused to avoid allocations).
  std::vector<std::uint32_t> snapshot_;
  std::vector<int> chunk_snapshot_;
  std::vector<std::uint32_t> creatures_;

  std::vector<std::uint32_t> forced_despawns_;
  std::size_t forced_next_ = 0;

  // Render scratch.
  std::vector<std::uint8_t> local_;   // (local_w, local_h, 3)
  std::vector<double> noise_;
  std::vector<std::uint8_t> items_;   // (local_w, item_h, 3)
  static constexpr std::size_t kLightCache = 4096;  // per-frame colour -> lit colour memo (daylight)
  std::vector<std::int32_t> light_cache_key_;
  std::vector<std::uint8_t> light_cache_value_;
};

}  // namespace crafter
}  // namespace deltairis
