// Unit tests of the native Crafter engine's building blocks: numpy's legacy generator, the episode seed
// (CPython's tuple hash), OpenSimplex noise, Pillow's nearest indices, the object-kind names, the asset
// tables, world generation, rendering of a known state, the player update and the test hooks' edits
// (state_edit.h, Env::import_state). Reference values were computed with numpy 1.x RandomState, CPython
// 3.11 hash() and opensimplex 0.4.5; the Python tests (tests/envs/test_crafter_native*.py) compare far
// more of them through crafter_probe.
#include "envs/crafter/engine.h"

#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "envs/crafter/opensimplex.h"
#include "envs/crafter/random.h"
#include "envs/crafter/state_codec.h"
#include "envs/crafter/state_edit.h"
#include "testing/check.h"

namespace deltairis {
namespace crafter {
namespace {

using testing::same_bits;

TEST(LegacyRandom, MatchesNumpyRandomState) {
  LegacyRandom rng(12345);
  CHECK(same_bits(rng.uniform(), 0.9296160928171479));
  CHECK(same_bits(rng.uniform(), 0.3163755545817859));
  CHECK(same_bits(rng.uniform(), 0.18391881167709445));
  CHECK_EQ(rng.randint(7), 6);
  CHECK_EQ(rng.randint(100), 34);
  CHECK_EQ(rng.randint(std::int64_t{1} << 32), 2557845021);
  CHECK_EQ(rng.randint(1), 0);
  CHECK_THROWS(rng.randint(0), std::invalid_argument, "out of range");
  CHECK_THROWS(rng.randint((std::int64_t{1} << 32) + 1), std::invalid_argument, "out of range");
}

TEST(LegacyRandom, RandintStaysInRangeAndReseeds) {
  LegacyRandom a(7), b(7);
  for (int i = 0; i < 2000; ++i) {
    const std::int64_t n = 1 + i % 13;
    const std::int64_t v = a.randint(n);
    CHECK_EQ(v, b.randint(n));
    CHECK(v >= 0 && v < n);
  }
  a.seed(3);
  LegacyRandom c(3);
  CHECK(same_bits(a.uniform(), c.uniform()));
  const double u = a.uniform(32, 127);
  CHECK(u >= 32 && u < 127);
}

TEST(EpisodeSeed, MatchesPythonTupleHash) {
  CHECK_EQ(episode_world_seed(0, 1), 1256191933u);
  CHECK_EQ(episode_world_seed(1, 2), 1037498010u);
  CHECK_EQ(episode_world_seed(-1, 3), 1467372159u);
  CHECK_EQ(episode_world_seed(INT64_MAX, std::int64_t{1} << 40), 1164045272u);
  CHECK_EQ(episode_world_seed(INT64_MIN, 7), 1854138926u);
  CHECK_EQ(python_int_hash(-1), -2);  // CPython reserves -1
  CHECK_EQ(python_int_hash((std::int64_t{1} << 61) - 1), 0);
}

TEST(OpenSimplex, MatchesOpensimplexPackage) {
  const OpenSimplex3 s42(42);
  CHECK(same_bits(s42.noise3(0.0, 0.0, 0.0), -2.2586544637972335e-65));
  CHECK(same_bits(s42.noise3(0.5, 0.25, -1.5), -0.09145439172639806));
  CHECK(same_bits(s42.noise3(10.3, -7.1, 2.2), 0.5501511519999994));
  CHECK(same_bits(s42.noise3(100.0, 200.0, 0.5), 0.27051245555158254));
  CHECK(same_bits(OpenSimplex3(-5).noise3(1.0, 2.0, 3.0), -1.766974580521645e-65));
}

TEST(OpenSimplex, IsBoundedAndDeterministic) {
  const OpenSimplex3 a(9), b(9), c(10);
  int differ = 0;
  for (int i = 0; i < 4000; ++i) {
    const double x = 0.37 * i - 300, y = 0.11 * i, z = -0.53 * i;
    const double v = a.noise3(x, y, z);
    CHECK(same_bits(v, b.noise3(x, y, z)));
    CHECK(std::fabs(v) <= 1.0);
    differ += !same_bits(v, c.noise3(x, y, z));
  }
  CHECK_GE(differ, 3900);
}

TEST(PillowNearest, MatchesPillowIndices) {
  CHECK_EQ(pillow_nearest_indices(5, 7), (std::vector<int>{0, 1, 1, 2, 3, 3, 4}));
  CHECK_EQ(pillow_nearest_indices(4, 4), (std::vector<int>{0, 1, 2, 3}));
  CHECK_EQ(pillow_nearest_indices(16, 4), (std::vector<int>{2, 6, 10, 14}));
  CHECK_EQ(pillow_nearest_indices(1, 3), (std::vector<int>{0, 0, 0}));
  for (int src : {1, 2, 5, 16, 17, 33}) {
    for (int dst : {1, 2, 3, 7, 40}) {
      const auto idx = pillow_nearest_indices(src, dst);
      REQUIRE_EQ(static_cast<int>(idx.size()), dst);
      for (int i = 0; i < dst; ++i) {
        CHECK(idx[i] >= 0 && idx[i] < src);
        if (i) CHECK_LE(idx[i - 1], idx[i]);
      }
    }
  }
}

TEST(ObjectKinds, NamesRoundTrip) {
  const char* names[] = {"Player", "Cow", "Zombie", "Skeleton", "Arrow", "Plant", "Fence"};
  for (int k = 0; k < 7; ++k) {
    CHECK_EQ(std::string(object_kind_name(static_cast<ObjKind>(k))), names[k]);
    CHECK_EQ(static_cast<int>(object_kind_from_name(names[k])), k);
  }
  CHECK_THROWS(object_kind_from_name("Dragon"), std::invalid_argument, "unknown object kind Dragon");
}

// ---- a Crafter world with crafter's data.yaml rules and solid-colour textures ---------------------

RulesSpec crafter_rules() {
  RulesSpec r;
  r.actions = {"noop", "move_left", "move_right", "move_up", "move_down", "do", "sleep", "place_stone",
               "place_table", "place_furnace", "place_plant", "make_wood_pickaxe", "make_stone_pickaxe",
               "make_iron_pickaxe", "make_wood_sword", "make_stone_sword", "make_iron_sword"};
  r.materials = {"water", "grass", "stone", "path", "sand", "tree", "lava", "coal", "iron", "diamond", "table",
                 "furnace"};
  r.walkable = {"grass", "path", "sand"};
  for (const char* n : {"health", "food", "drink", "energy"}) r.items.push_back({n, 9, 9});
  for (const char* n : {"sapling", "wood", "stone", "coal", "iron", "diamond", "wood_pickaxe", "stone_pickaxe",
                        "iron_pickaxe", "wood_sword", "stone_sword", "iron_sword"})
    r.items.push_back({n, 9, 0});
  r.collect = {{"tree", {}, {{"wood", 1}}, "grass", 1.0},
               {"stone", {{"wood_pickaxe", 1}}, {{"stone", 1}}, "path", 1.0},
               {"coal", {{"wood_pickaxe", 1}}, {{"coal", 1}}, "path", 1.0},
               {"iron", {{"stone_pickaxe", 1}}, {{"iron", 1}}, "path", 1.0},
               {"diamond", {{"iron_pickaxe", 1}}, {{"diamond", 1}}, "path", 1.0},
               {"water", {}, {{"drink", 1}}, "water", 1.0},
               {"grass", {}, {{"sapling", 1}}, "grass", 0.1}};
  r.place = {{"stone", {{"stone", 1}}, {"grass", "sand", "path", "water", "lava"}, "material"},
             {"table", {{"wood", 2}}, {"grass", "sand", "path"}, "material"},
             {"furnace", {{"stone", 4}}, {"grass", "sand", "path"}, "material"},
             {"plant", {{"sapling", 1}}, {"grass"}, "object"}};
  r.make = {{"wood_pickaxe", {{"wood", 1}}, {"table"}, 1},
            {"stone_pickaxe", {{"wood", 1}, {"stone", 1}}, {"table"}, 1},
            {"iron_pickaxe", {{"wood", 1}, {"coal", 1}, {"iron", 1}}, {"table", "furnace"}, 1},
            {"wood_sword", {{"wood", 1}}, {"table"}, 1},
            {"stone_sword", {{"wood", 1}, {"stone", 1}}, {"table"}, 1},
            {"iron_sword", {{"wood", 1}, {"coal", 1}, {"iron", 1}}, {"table", "furnace"}, 1}};
  r.achievements = {"collect_coal", "collect_diamond", "collect_drink", "collect_iron", "collect_sapling",
                    "collect_stone", "collect_wood", "defeat_skeleton", "defeat_zombie", "eat_cow", "eat_plant",
                    "make_iron_pickaxe", "make_iron_sword", "make_stone_pickaxe", "make_stone_sword",
                    "make_wood_pickaxe", "make_wood_sword", "place_furnace", "place_plant", "place_stone",
                    "place_table", "wake_up"};
  return r;
}

// A distinct opaque colour per texture name.
std::array<std::uint8_t, 3> colour_of(const std::string& name) {
  std::uint32_t h = 2166136261u;
  for (char c : name) h = (h ^ static_cast<std::uint8_t>(c)) * 16777619u;
  return {static_cast<std::uint8_t>(h), static_cast<std::uint8_t>(h >> 8), static_cast<std::uint8_t>(h >> 16)};
}

std::map<std::string, Texture> solid_textures(const RulesSpec& r) {
  std::vector<std::string> names = {"unknown", "player-left", "player-right", "player-up", "player-down",
                                    "player-sleep", "cow", "zombie", "skeleton", "arrow-left", "arrow-right",
                                    "arrow-up", "arrow-down", "plant", "plant-ripe", "fence"};
  for (const auto& m : r.materials) names.push_back(m);
  for (const auto& i : r.items) names.push_back(i.name);
  for (int d = 1; d < 10; ++d) names.push_back(std::to_string(d));
  std::map<std::string, Texture> out;
  for (const auto& n : names) {
    Texture t;
    t.height = t.width = 4;
    t.channels = 4;
    const auto c = colour_of(n);
    for (int i = 0; i < 16; ++i) t.pixels.insert(t.pixels.end(), {c[0], c[1], c[2], 255});
    out[n] = t;
  }
  return out;
}

std::shared_ptr<Assets> make_assets(EnvConfig config = EnvConfig{}) {
  const RulesSpec r = crafter_rules();
  return std::make_shared<Assets>(r, solid_textures(r), config);
}

int index_of(const std::vector<std::string>& names, const std::string& name) {
  for (std::size_t i = 0; i < names.size(); ++i)
    if (names[i] == name) return static_cast<int>(i);
  return -1;
}

TEST(Assets, TablesFollowTheRules) {
  const auto a = make_assets();
  CHECK_EQ(a->num_actions(), 17);
  CHECK_EQ(a->num_items(), 16);
  CHECK_EQ(a->num_achievements(), 22);
  CHECK_EQ(a->num_materials(), 12);
  CHECK_EQ(a->material_names()[0], std::string());
  CHECK_EQ(a->material_names()[3], "stone");
  CHECK_EQ(a->action_names()[10], "place_plant");
  CHECK_EQ(a->obs_height(), 64);
  CHECK_EQ(a->obs_width(), 64);
}

TEST(Assets, RejectsBadConfigurationsAndRules) {
  const RulesSpec r = crafter_rules();
  const auto tex = solid_textures(r);
  EnvConfig c;
  c.area_x = 0;
  CHECK_THROWS(Assets(r, tex, c), std::invalid_argument, "area must be positive");
  c = EnvConfig{};
  c.size_x = 4;
  CHECK_THROWS(Assets(r, tex, c), std::invalid_argument, "size must be at least view");
  c = EnvConfig{};
  c.view_y = 2;
  CHECK_THROWS(Assets(r, tex, c), std::invalid_argument, "view is too small");
  RulesSpec bad = r;
  bad.walkable.push_back("cloud");
  CHECK_THROWS(Assets(bad, tex, EnvConfig{}), std::invalid_argument, "unknown material 'cloud'");
  bad = r;
  bad.actions.push_back("fly");
  CHECK_THROWS(Assets(bad, tex, EnvConfig{}), std::invalid_argument, "unknown action 'fly'");
  bad = r;
  bad.place[3].name = "rock";
  CHECK_THROWS(Assets(bad, tex, EnvConfig{}), std::invalid_argument, "cannot place object 'rock'");
  CHECK_THROWS(Assets(r, {}, EnvConfig{}), std::invalid_argument, "missing");
}

std::vector<std::uint8_t> obs_buffer(const Assets& a) {
  return std::vector<std::uint8_t>(static_cast<std::size_t>(a.obs_height()) * a.obs_width() * 3);
}

TEST(World, GenerationIsDeterministic) {
  const auto a = make_assets();
  Env e1(a, 5), e2(a, 5), e3(a, 6);
  auto o1 = obs_buffer(*a), o2 = obs_buffer(*a), o3 = obs_buffer(*a);
  e1.reset(o1.data());
  e2.reset(o2.data());
  e3.reset(o3.data());
  CHECK(e1.material_map() == e2.material_map());
  CHECK(o1 == o2);
  CHECK(e1.material_map() != e3.material_map());
  CHECK_EQ(e1.player_x(), 32);
  CHECK_EQ(e1.player_y(), 32);
  CHECK_EQ(e1.episode(), 1);
  // Every cell holds a material; the player stands on walkable ground.
  for (std::uint8_t m : e1.material_map()) CHECK(m >= 1 && m <= 12);
  const int under = e1.material_map()[static_cast<std::size_t>(32) * 64 + 32];
  CHECK(a->material_names()[under] == "grass" || a->material_names()[under] == "sand" ||
        a->material_names()[under] == "path");
  // The next episode is another world; reset_at(1) rebuilds the first one.
  e1.reset(o1.data());
  CHECK(e1.material_map() != e2.material_map());
  e1.reset_at(1, o1.data());
  CHECK(e1.material_map() == e2.material_map());
  CHECK(o1 == o2);
}

// Surrounds the player (at 32, 32) with grass, a tree to the left and stone above.
void build_garden(Env& env, const Assets& a) {
  const int grass = index_of(a.material_names(), "grass");
  for (int x = 28; x <= 36; ++x)
    for (int y = 28; y <= 36; ++y) env.poke_material(x, y, grass);
  env.poke_material(31, 32, index_of(a.material_names(), "tree"));
  env.poke_material(32, 31, index_of(a.material_names(), "stone"));
}

bool no_objects_near(const Env& env, int cx, int cy, int r) {
  for (const auto& o : env.objects())
    if (o.kind != ObjKind::kPlayer && std::abs(o.x - cx) <= r && std::abs(o.y - cy) <= r) return false;
  return true;
}

TEST(Render, KnownStateDrawsTexturesLightAndInventory) {
  const auto a = make_assets();
  Env env(a, 11);
  auto obs = obs_buffer(*a);
  env.reset(obs.data());
  build_garden(env, *a);
  REQUIRE(no_objects_near(env, 32, 32, 1));
  env.render_frame(obs.data());
  auto again = obs_buffer(*a);
  env.render_frame(again.data());
  CHECK(obs == again);  // daylight: no random noise
  const double day = env.daylight();
  REQUIRE(day >= 0.5);
  // 64 / 9 = 7-pixel units; a 9 x 7 local view with the player at tile (4, 3); border (64 - 63) / 2 = 0.
  auto pixel = [&](int X, int Y) { return &obs[(static_cast<std::size_t>(Y) * 64 + X) * 3]; };
  auto lit = [&](const std::array<std::uint8_t, 3>& c, int k) {  // LocalView._light in daylight
    const int grey = (c[0] * 19595 + c[1] * 38470 + c[2] * 7471 + 0x8000) >> 16;
    const auto n2 = static_cast<std::uint8_t>(static_cast<float>(grey) + 0.4f * static_cast<float>(c[k] - grey));
    const double night = 0.5 * n2 + 0.5 * (k == 0 ? 0.0 : k == 1 ? 16.0 : 64.0);
    return static_cast<std::uint8_t>(day * c[k] + (1 - day) * night);
  };
  const struct {
    int tile_x, tile_y;
    const char* texture;
  } tiles[] = {{3, 3, "tree"}, {4, 2, "stone"}, {5, 3, "grass"}, {4, 3, "player-down"}};
  for (const auto& t : tiles) {
    const auto c = colour_of(t.texture);
    for (int x = 0; x < 7; ++x) {
      for (int y = 0; y < 7; ++y) {
        const std::uint8_t* p = pixel(t.tile_x * 7 + x, t.tile_y * 7 + y);
        for (int k = 0; k < 3; ++k) CHECK_EQ(p[k], lit(c, k));
      }
    }
  }
  // Inventory bar (not lit): health 9 in slot 0, its 5-pixel icon at int(0.1 * 7) = 0, its 4-pixel digit
  // at int(0.4 * 7) = 2; the slot's last column and row stay black.
  const int bar_y = 7 * 7;
  const auto health = colour_of("health"), nine = colour_of("9");
  for (int k = 0; k < 3; ++k) {
    CHECK_EQ(pixel(6, bar_y + 6)[k], 0);
    CHECK_EQ(pixel(1, bar_y + 1)[k], health[k]);
    CHECK_EQ(pixel(5, bar_y + 5)[k], nine[k]);
    CHECK_EQ(pixel(4 * 7 + 3, bar_y + 3)[k], 0);  // slot 4 (sapling) is empty
  }
}

TEST(Player, MovesCollectsAndGetsHungry) {
  const auto a = make_assets();
  Env env(a, 11);
  auto obs = obs_buffer(*a);
  env.reset(obs.data());
  build_garden(env, *a);
  REQUIRE(no_objects_near(env, 32, 32, 2));
  const int noop = 0, left = 1, right = 2, up = 3, act_do = 5;
  const int wood = index_of(a->item_names(), "wood"), food = index_of(a->item_names(), "food");
  const int collect_wood = index_of(a->achievement_names(), "collect_wood");
  env.step(left, obs.data());  // the tree blocks the way: the player only turns
  CHECK_EQ(env.player_x(), 32);
  env.step(act_do, obs.data());
  CHECK_EQ(env.inventory()[wood], 1);
  CHECK_EQ(env.achievements()[collect_wood], 1);
  CHECK_EQ(a->material_names()[env.material_map()[static_cast<std::size_t>(31) * 64 + 32]], "grass");
  env.step(up, obs.data());  // stone is not walkable
  CHECK_EQ(env.player_y(), 32);
  env.step(act_do, obs.data());  // no pickaxe: the stone stays
  CHECK_EQ(a->material_names()[env.material_map()[static_cast<std::size_t>(32) * 64 + 31]], "stone");
  env.step(right, obs.data());
  CHECK_EQ(env.player_x(), 33);
  env.step(left, obs.data());
  env.step(left, obs.data());  // onto the tree's grass
  CHECK_EQ(env.player_x(), 31);
  // Hunger grows by 1 a step while awake and costs a food point when it passes 25.
  for (int s = 7; s < 25; ++s) env.step(noop, obs.data());
  CHECK_EQ(env.inventory()[food], 9);
  env.step(noop, obs.data());
  CHECK_EQ(env.inventory()[food], 8);
  CHECK_EQ(env.step_count(), 26);
}

// ---- the test hooks' edits (state_edit.h): scenario pokes and exported object rows ---------------

const ObjectState* object_at(const std::vector<ObjectState>& objects, int x, int y) {
  for (const auto& o : objects)
    if (o.x == x && o.y == y) return &o;
  return nullptr;
}

TEST(StateEdit, PokesSetInventoryMaterialAndAddObjects) {
  const auto a = make_assets();
  Env env(a, 11);
  auto obs = obs_buffer(*a);
  env.reset(obs.data());
  build_garden(env, *a);
  REQUIRE(no_objects_near(env, 32, 32, 3));
  const int wood = index_of(a->item_names(), "wood"), table = index_of(a->material_names(), "table");
  apply_poke(env, "inventory", {wood, 7});
  CHECK_EQ(env.inventory()[wood], 7);
  apply_poke(env, "material", {34, 33, table});
  CHECK_EQ(static_cast<int>(env.material_map()[static_cast<std::size_t>(34) * 64 + 33]), table);
  const std::size_t before = env.objects().size();
  apply_poke(env, "object", {std::string("Cow"), 30, 32, 2, 0, 0, 0});
  apply_poke(env, "object", {std::string("Plant"), 32, 34, 1, 0, 0, 5});
  apply_poke(env, "object", {std::string("Arrow"), 33, 30, 0, 1, 0, 0});
  const auto objects = env.objects();
  REQUIRE_EQ(objects.size(), before + 3);
  CHECK(objects[before].kind == ObjKind::kCow);  // appended in creation order
  const ObjectState* cow = object_at(objects, 30, 32);
  const ObjectState* plant = object_at(objects, 32, 34);
  const ObjectState* arrow = object_at(objects, 33, 30);
  REQUIRE(cow && plant && arrow);
  CHECK(cow->kind == ObjKind::kCow);
  CHECK_EQ(cow->health, 2);
  CHECK(plant->kind == ObjKind::kPlant);
  CHECK_EQ(plant->grown, 5);
  CHECK(arrow->kind == ObjKind::kArrow);
  CHECK_EQ(arrow->facing_x, 1);
  CHECK_EQ(arrow->facing_y, 0);
}

TEST(StateEdit, PokesRejectBadInput) {
  const auto a = make_assets();
  Env env(a, 11);
  auto obs = obs_buffer(*a);
  env.reset(obs.data());
  build_garden(env, *a);
  CHECK_THROWS(apply_poke(env, "weather", {1}), std::invalid_argument, "unknown poke weather");
  CHECK_THROWS(apply_poke(env, "inventory", {1}), std::invalid_argument, "expected 2 arguments (item, value), got 1");
  CHECK_THROWS(apply_poke(env, "material", {1, 2, 3, 4}), std::invalid_argument, "expected 3 arguments");
  CHECK_THROWS(apply_poke(env, "inventory", {1, std::string("9")}), std::invalid_argument,
               "argument 1 must be an integer");
  CHECK_THROWS(apply_poke(env, "object", {1, 30, 32, 2, 0, 0, 0}), std::invalid_argument,
               "argument 0 must be a class name");
  CHECK_THROWS(apply_poke(env, "object", {std::string("Dragon"), 30, 32, 2, 0, 0, 0}), std::invalid_argument,
               "unknown object kind Dragon");
  CHECK_THROWS(apply_poke(env, "inventory", {16, 1}), std::invalid_argument, "poke_inventory: bad item");
  CHECK_THROWS(apply_poke(env, "material", {64, 0, 2}), std::invalid_argument, "outside the world");
  CHECK_THROWS(apply_poke(env, "material", {0, 0, 13}), std::invalid_argument, "bad material");
  CHECK_THROWS(apply_poke(env, "object", {std::string("Cow"), 32, 32, 3, 0, 0, 0}), std::invalid_argument,
               "cell not free");  // the player stands there
  CHECK_THROWS(apply_poke(env, "object", {std::string("Player"), 30, 30, 9, 0, 1, 0}), std::invalid_argument,
               "second player");
}

TEST(StateEdit, ObjectRowsBecomeImportedObjects) {
  const auto obj = imported_object(ObjectRow{4, "Zombie", 10, 11, 5, -1, 0, 3, 0});
  CHECK_EQ(obj.slot, 4u);
  CHECK(obj.kind == ObjKind::kZombie);
  CHECK_EQ(obj.x, 10);
  CHECK_EQ(obj.y, 11);
  CHECK_EQ(obj.health, 5);
  CHECK_EQ(obj.facing_x, -1);
  CHECK_EQ(obj.facing_y, 0);
  CHECK_EQ(obj.cooldown, 3);
  CHECK_EQ(obj.grown, 0);
  const auto objs = imported_objects({{1, "Player", 32, 32, 9, 0, 1, 0, 0}, {2, "Plant", 30, 30, 1, 0, 0, 0, 7}});
  REQUIRE_EQ(objs.size(), std::size_t{2});
  CHECK(objs[0].kind == ObjKind::kPlayer);
  CHECK(objs[1].kind == ObjKind::kPlant);
  CHECK_EQ(objs[1].grown, 7);
  CHECK(imported_objects({}).empty());
  CHECK_THROWS(imported_objects({{1, "Dragon", 0, 0, 0, 0, 0, 0, 0}}), std::invalid_argument,
               "unknown object kind Dragon");
}

ImportedState small_state(const Assets& a) {
  ImportedState s;
  s.step = 3;
  s.episode = 1;
  s.mt_key.assign(624, 0);
  s.mt_pos = 624;
  s.materials.assign(static_cast<std::size_t>(64) * 64, static_cast<std::uint8_t>(index_of(a.material_names(), "grass")));
  s.num_slots = 3;
  s.objects = imported_objects({{1, "Player", 32, 32, 9, 0, 1, 0, 0}, {2, "Cow", 30, 30, 3, 0, 0, 0, 0}});
  s.chunk_order = {2 * 6 + 2};  // chunk (24..35, 24..35) of a 64 x 64 area
  s.player_last_health = 9;
  s.inventory.assign(a.num_items(), 0);
  s.achievements.assign(a.num_achievements(), 0);
  s.env_last_health = 9;
  s.unlocked.assign(a.num_achievements(), false);
  return s;
}

TEST(StateEdit, ImportedRowsLoadAndBadStatesAreRejected) {
  const auto a = make_assets();
  Env env(a, 0);
  auto obs = obs_buffer(*a);
  env.reset(obs.data());
  env.set_despawn_choices({5, 6});
  CHECK_EQ(env.despawn_choices_left(), std::size_t{2});
  env.import_state(small_state(*a));
  CHECK_EQ(env.despawn_choices_left(), std::size_t{0});  // an import drops the forced despawns
  CHECK_EQ(env.step_count(), 3);
  CHECK_EQ(env.player_x(), 32);
  CHECK_EQ(env.player_y(), 32);
  const auto objects = env.objects();
  REQUIRE_EQ(objects.size(), std::size_t{2});
  CHECK(objects[1].kind == ObjKind::kCow);
  CHECK_EQ(objects[1].health, 3);
  ImportedState bad = small_state(*a);
  bad.mt_key.resize(10);
  CHECK_THROWS(env.import_state(bad), std::invalid_argument, "MT19937");
  bad = small_state(*a);
  bad.materials.resize(100);
  CHECK_THROWS(env.import_state(bad), std::invalid_argument, "materials");
  bad = small_state(*a);
  bad.objects = imported_objects({{2, "Cow", 30, 30, 3, 0, 0, 0, 0}});
  CHECK_THROWS(env.import_state(bad), std::invalid_argument, "no player");
  bad = small_state(*a);
  bad.objects = imported_objects({{1, "Player", 32, 32, 9, 0, 1, 0, 0}, {1, "Cow", 30, 30, 3, 0, 0, 0, 0}});
  CHECK_THROWS(env.import_state(bad), std::invalid_argument, "slot or position");
  bad = small_state(*a);
  bad.chunk_order.clear();
  CHECK_THROWS(env.import_state(bad), std::invalid_argument, "untouched chunk");
  bad = small_state(*a);
  bad.chunk_order = {99};
  CHECK_THROWS(env.import_state(bad), std::invalid_argument, "chunk order");
}


// ---- exact save / restore (Env::save_state, Env::load_state) -----------------------------------

// One step of a recorded trajectory: the observation and every StepResult field.
struct Frame {
  std::vector<std::uint8_t> obs;
  double reward, info_reward;
  bool done, dead, over;
};

// `steps` steps of random actions from `actions`, resetting after each episode end.
std::vector<Frame> run(Env& env, LegacyRandom& actions, int steps) {
  std::vector<Frame> out;
  auto obs = obs_buffer(env.assets());
  for (int t = 0; t < steps; ++t) {
    const StepResult r = env.step(static_cast<int>(actions.randint(env.assets().num_actions())), obs.data());
    out.push_back({obs, r.reward, r.info_reward, r.done, r.dead, r.over});
    if (r.done) {
      env.reset(obs.data());
      out.push_back({obs, 0, 0, false, false, false});
    }
  }
  return out;
}

void check_same(const std::vector<Frame>& a, const std::vector<Frame>& b) {
  REQUIRE_EQ(a.size(), b.size());
  for (std::size_t t = 0; t < a.size(); ++t) {
    CHECK(a[t].obs == b[t].obs);
    CHECK(same_bits(a[t].reward, b[t].reward));
    CHECK(same_bits(a[t].info_reward, b[t].info_reward));
    CHECK_EQ(a[t].done, b[t].done);
    CHECK_EQ(a[t].dead, b[t].dead);
    CHECK_EQ(a[t].over, b[t].over);
  }
}

TEST(SaveState, RestoredEnvContinuesByteForByte) {
  EnvConfig config;
  config.length = 120;  // several episode ends (time limit and deaths), nights need 180+ steps
  const auto a = make_assets(config);
  EnvConfig night;      // long episodes: the save lands at night (the render draws from the generator)
  const auto an = make_assets(night);
  for (const auto& assets : {a, an}) {
    for (int save_at : {0, 1, 37, 230}) {
      Env env(assets, 7);
      auto obs = obs_buffer(*assets);
      env.reset(obs.data());
      LegacyRandom actions(save_at + 1);
      run(env, actions, save_at);
      const std::string blob = env.save_state();
      LegacyRandom actions_copy = actions;
      const auto expected = run(env, actions, 260);
      Env restored(assets, 12345);  // another seed: load_state replaces it
      restored.load_state(blob);
      CHECK(restored.save_state() == blob);
      CHECK_EQ(restored.seed(), 7);
      check_same(run(restored, actions_copy, 260), expected);
      CHECK(restored.save_state() == env.save_state());
      CHECK(restored.objects().size() == env.objects().size());
    }
  }
}

TEST(SaveState, KeepsForcedDespawnsAndUnstartedEnvs) {
  const auto a = make_assets();
  Env fresh(a, 5);
  const std::string unstarted = fresh.save_state();
  Env env(a, 9);
  auto obs = obs_buffer(*a);
  env.reset(obs.data());
  env.set_despawn_choices({4, 8, 15});
  Env copy(a, 0);
  copy.load_state(env.save_state());
  CHECK_EQ(copy.despawn_choices_left(), std::size_t{3});
  copy.load_state(unstarted);  // back to a never-reset env with seed 5
  CHECK_EQ(copy.episode(), 0);
  CHECK_EQ(copy.seed(), 5);
  CHECK(copy.save_state() == unstarted);
  auto o1 = obs_buffer(*a), o2 = obs_buffer(*a);
  copy.reset(o1.data());
  fresh.reset(o2.data());
  CHECK(o1 == o2);
}

TEST(SaveState, BadBlobsAreRejectedAndLeaveTheEnvAsItWas) {
  const auto a = make_assets();
  Env env(a, 3);
  auto obs = obs_buffer(*a);
  env.reset(obs.data());
  LegacyRandom actions(1);
  run(env, actions, 20);
  const std::string blob = env.save_state();
  CHECK_EQ(blob.substr(0, 8), std::string("DICRAFTE"));
  Env target(a, 1);
  target.reset(obs.data());
  const std::string before = target.save_state();

  CHECK_THROWS(target.load_state(""), std::invalid_argument, "bad magic");
  CHECK_THROWS(target.load_state("not a crafter state at all"), std::invalid_argument, "bad magic");
  std::string other_version = blob;
  other_version[8] = 2;
  CHECK_THROWS(target.load_state(other_version), std::invalid_argument, "version mismatch (the blob has format version 2");
  CHECK_THROWS(target.load_state(blob.substr(0, blob.size() - 9)), std::invalid_argument, "truncated");
  CHECK_THROWS(target.load_state(blob.substr(0, 12)), std::invalid_argument, "truncated");
  CHECK_THROWS(target.load_state(blob + "x"), std::invalid_argument, "bytes after the end");
  std::string flipped = blob;
  flipped[blob.size() / 2] ^= 0x40;
  CHECK_THROWS(target.load_state(flipped), std::invalid_argument, "checksum mismatch");
  CHECK_THROWS(target.load_state(frame_state("DICRAFTE", Env::kStateVersion, "xyz")), std::invalid_argument,
               "corrupt payload");
  EnvConfig other;
  other.length = 50;
  Env other_env(make_assets(other), 3);
  other_env.reset(obs.data());
  CHECK_THROWS(target.load_state(other_env.save_state()), std::invalid_argument, "configuration mismatch");
  CHECK(target.save_state() == before);
}

}  // namespace
}  // namespace crafter
}  // namespace deltairis

TEST_MAIN()
