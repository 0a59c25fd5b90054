// Bindings of the native Crafter engine (csrc/envs/crafter/) and its thread-pool vector stepper
// (csrc/vecenv/): conversion of Python rules, textures and states to their C++ structs, buffer checks,
// then the C++ call with the GIL released. C++ std::invalid_argument reaches Python as ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bindings/buffers.h"
#include "core/info.h"
#include "envs/crafter/engine.h"
#include "envs/crafter/state_edit.h"
#include "vecenv/crafter_vector.h"

namespace deltairis {
namespace bindings {
namespace {

namespace cr = crafter;
using I64 = std::int64_t;

// ---- conversions of Python values to the engine's structs -------------------------------------

cr::RulesSpec::Amounts amounts_of(const py::handle& obj) {
  cr::RulesSpec::Amounts out;
  for (auto kv : py::reinterpret_borrow<py::dict>(obj)) {
    out.emplace_back(py::cast<std::string>(kv.first), py::cast<int>(kv.second));
  }
  return out;
}

// crafter's data.yaml (a dict) as a RulesSpec.
cr::RulesSpec rules_of(const py::dict& d) {
  cr::RulesSpec r;
  r.actions = py::cast<std::vector<std::string>>(d["actions"]);
  r.materials = py::cast<std::vector<std::string>>(d["materials"]);
  r.walkable = py::cast<std::vector<std::string>>(d["walkable"]);
  r.achievements = py::cast<std::vector<std::string>>(d["achievements"]);
  for (auto kv : py::reinterpret_borrow<py::dict>(d["items"])) {
    auto info = py::reinterpret_borrow<py::dict>(kv.second);
    r.items.push_back({py::cast<std::string>(kv.first), py::cast<int>(info["max"]), py::cast<int>(info["initial"])});
  }
  for (auto kv : py::reinterpret_borrow<py::dict>(d["collect"])) {
    auto info = py::reinterpret_borrow<py::dict>(kv.second);
    cr::RulesSpec::Collect c;
    c.material = py::cast<std::string>(kv.first);
    c.require = amounts_of(info["require"]);
    c.receive = amounts_of(info["receive"]);
    c.leaves = py::cast<std::string>(info["leaves"]);
    c.probability = info.contains("probability") ? py::cast<double>(info["probability"]) : 1.0;
    r.collect.push_back(c);
  }
  for (auto kv : py::reinterpret_borrow<py::dict>(d["place"])) {
    auto info = py::reinterpret_borrow<py::dict>(kv.second);
    cr::RulesSpec::Place p;
    p.name = py::cast<std::string>(kv.first);
    p.uses = amounts_of(info["uses"]);
    p.where = py::cast<std::vector<std::string>>(info["where"]);
    p.type = py::cast<std::string>(info["type"]);
    r.place.push_back(p);
  }
  for (auto kv : py::reinterpret_borrow<py::dict>(d["make"])) {
    auto info = py::reinterpret_borrow<py::dict>(kv.second);
    cr::RulesSpec::Make mk;
    mk.name = py::cast<std::string>(kv.first);
    mk.uses = amounts_of(info["uses"]);
    mk.nearby = py::cast<std::vector<std::string>>(info["nearby"]);
    mk.gives = py::cast<int>(info["gives"]);
    r.make.push_back(mk);
  }
  return r;
}

// Texture name -> (H, W, 3|4) uint8 image.
std::map<std::string, cr::Texture> textures_of(const py::dict& textures) {
  std::map<std::string, cr::Texture> tex;
  for (auto kv : textures) {
    const std::string name = py::cast<std::string>(kv.first);
    auto arr = py::cast<U8Array>(kv.second);
    if (arr.ndim() != 3 || (arr.shape(2) != 3 && arr.shape(2) != 4)) {
      throw py::value_error("texture '" + name + "' must have shape (H, W, 3|4)");
    }
    cr::Texture t;
    t.height = static_cast<int>(arr.shape(0));
    t.width = static_cast<int>(arr.shape(1));
    t.channels = static_cast<int>(arr.shape(2));
    t.pixels.assign(arr.data(), arr.data() + arr.size());
    tex.emplace(name, std::move(t));
  }
  return tex;
}

const std::vector<int>& pair_of(const std::vector<int>& v, const char* name) {
  if (v.size() != 2) throw py::value_error(std::string(name) + " must have two entries");
  return v;
}

std::shared_ptr<cr::Assets> make_assets(const py::dict& rules, const py::dict& textures, const std::vector<int>& area,
                                        const std::vector<int>& view, const std::vector<int>& size, bool reward,
                                        I64 length) {
  cr::EnvConfig config;
  config.area_x = pair_of(area, "area")[0];
  config.area_y = area[1];
  config.view_x = pair_of(view, "view")[0];
  config.view_y = view[1];
  config.size_x = pair_of(size, "size")[0];
  config.size_y = size[1];
  config.reward = reward;
  config.length = length;
  const auto tex = textures_of(textures);
  return std::make_shared<cr::Assets>(rules_of(rules), tex, config);
}

// A state exported from Python crafter (tests/envs/crafter_oracle.py) as an ImportedState.
cr::ImportedState imported_state_of(const py::dict& d) {
  cr::ImportedState s;
  s.step = py::cast<I64>(d["step"]);
  s.episode = py::cast<I64>(d["episode"]);
  s.mt_key = py::cast<std::vector<std::uint32_t>>(d["mt_key"]);
  s.mt_pos = py::cast<int>(d["mt_pos"]);
  s.materials = py::cast<std::vector<std::uint8_t>>(d["materials"]);
  s.num_slots = py::cast<std::uint32_t>(d["num_slots"]);
  s.objects = cr::imported_objects(py::cast<std::vector<cr::ObjectRow>>(d["objects"]));
  s.chunk_order = py::cast<std::vector<int>>(d["chunk_order"]);
  s.sleeping = py::cast<bool>(d["sleeping"]);
  s.player_last_health = py::cast<int>(d["player_last_health"]);
  s.hunger = py::cast<double>(d["hunger"]);
  s.thirst = py::cast<double>(d["thirst"]);
  s.fatigue = py::cast<int>(d["fatigue"]);
  s.recover = py::cast<double>(d["recover"]);
  s.inventory = py::cast<std::vector<int>>(d["inventory"]);
  s.achievements = py::cast<std::vector<int>>(d["achievements"]);
  s.env_last_health = py::cast<int>(d["env_last_health"]);
  s.unlocked = py::cast<std::vector<bool>>(d["unlocked"]);
  return s;
}

// ---- CrafterEnv ---------------------------------------------------------------------------------

U8Array new_obs(const cr::Assets& a) { return U8Array({a.obs_height(), a.obs_width(), 3}); }

U8Array area_map(const cr::Env& e) { return U8Array({e.assets().config().area_x, e.assets().config().area_y}); }

U8Array env_reset(cr::Env& env) {
  U8Array obs = new_obs(env.assets());
  std::uint8_t* ptr = obs.mutable_data();
  py::gil_scoped_release release;
  env.reset(ptr);
  return obs;
}

py::tuple env_step(cr::Env& env, I64 action) {
  if (env.step_count() < 0 || env.episode() == 0) throw py::value_error("call reset() before step()");
  if (action < 0 || action >= env.assets().num_actions()) {
    throw py::value_error("action must be in [0, " + std::to_string(env.assets().num_actions()) + "), got " +
                          std::to_string(action));
  }
  U8Array obs = new_obs(env.assets());
  std::uint8_t* ptr = obs.mutable_data();
  cr::StepResult r;
  {
    py::gil_scoped_release release;
    r = env.step(static_cast<int>(action), ptr);
  }
  return py::make_tuple(obs, r.reward, r.done, r.dead, r.over, r.info_reward);
}

U8Array env_render(cr::Env& env) {
  if (env.episode() == 0) throw py::value_error("call reset() before render()");
  U8Array obs = new_obs(env.assets());
  std::uint8_t* ptr = obs.mutable_data();
  py::gil_scoped_release release;
  env.render_frame(ptr);
  return obs;
}

U8Array env_semantic(const cr::Env& e) {
  U8Array out = area_map(e);
  e.semantic(out.mutable_data());
  return out;
}

U8Array env_material_map(const cr::Env& e) {
  U8Array out = area_map(e);
  std::copy(e.material_map().begin(), e.material_map().end(), out.mutable_data());
  return out;
}

py::list env_objects(const cr::Env& env) {
  py::list out;
  for (const auto& o : env.objects()) {
    py::dict d;
    d["kind"] = cr::object_kind_name(o.kind);
    d["pos"] = py::make_tuple(o.x, o.y);
    d["health"] = o.health;
    d["facing"] = py::make_tuple(o.facing_x, o.facing_y);
    d["cooldown"] = o.cooldown;
    d["grown"] = o.grown;
    out.append(d);
  }
  return out;
}

// ---- CrafterVectorEnv ---------------------------------------------------------------------------

using VectorEnv = CrafterVectorEnv;

py::dict vec_reset_counts(const VectorEnv& v) {
  const auto c = v.reset_counts();
  py::dict d;
  d["ready"] = c.ready;
  d["waited"] = c.waited;
  d["inline"] = c.inline_built;
  return d;
}

void vec_reset(VectorEnv& v, const py::object& seeds, const py::array& obs) {
  const auto& a = v.assets();
  const py::ssize_t n = v.num_envs();
  auto* out = output<std::uint8_t>(obs, "obs", {n, a.obs_height(), a.obs_width(), 3});
  std::vector<I64> seed_values;
  if (!seeds.is_none()) {
    auto arr = py::cast<py::array_t<I64, py::array::c_style | py::array::forcecast>>(seeds);
    if (arr.ndim() != 1 || arr.shape(0) != n) throw py::value_error("seeds must have shape (" + std::to_string(n) + ",)");
    seed_values.assign(arr.data(), arr.data() + n);
  }
  py::gil_scoped_release release;
  v.reset(seed_values.empty() ? nullptr : seed_values.data(), out);
}

void vec_step(VectorEnv& v, const py::array& actions, const py::array& obs, const py::array& reward,
              const py::array& terminated, const py::array& truncated, const py::array& final_obs,
              const py::array& episode_return, const py::array& episode_length, const py::array& final_inventory,
              const py::array& final_achievements, const py::array& final_semantic,
              const py::array& final_player_pos, const py::array& final_discount, const py::array& final_reward,
              bool all_infos) {
  const auto& a = v.assets();
  const py::ssize_t n = v.num_envs(), h = a.obs_height(), w = a.obs_width();
  const std::vector<I64> act = [&] {
    const I64* p = input<I64>(actions, "actions", {n});
    return std::vector<I64>(p, p + n);
  }();
  v.check_actions(act.data());
  CrafterStepBuffers out;
  out.obs = output<std::uint8_t>(obs, "obs", {n, h, w, 3});
  out.reward = output<float>(reward, "reward", {n});
  out.terminated = output<bool>(terminated, "terminated", {n});
  out.truncated = output<bool>(truncated, "truncated", {n});
  out.final_obs = output<std::uint8_t>(final_obs, "final_obs", {n, h, w, 3});
  out.episode_return = output<double>(episode_return, "episode_return", {n});
  out.episode_length = output<I64>(episode_length, "episode_length", {n});
  out.final_inventory = output<std::int32_t>(final_inventory, "final_inventory", {n, a.num_items()});
  out.final_achievements = output<std::int32_t>(final_achievements, "final_achievements", {n, a.num_achievements()});
  out.final_semantic = output<std::uint8_t>(final_semantic, "final_semantic", {n, a.config().area_x, a.config().area_y});
  out.final_player_pos = output<I64>(final_player_pos, "final_player_pos", {n, 2});
  out.final_discount = output<double>(final_discount, "final_discount", {n});
  out.final_reward = output<double>(final_reward, "final_reward", {n});
  out.all_infos = all_infos;
  py::gil_scoped_release release;
  v.step(act.data(), out);
}

void register_assets(py::module_& m) {
  py::class_<cr::Assets, std::shared_ptr<cr::Assets>>(
      m, "CrafterAssets", "Crafter rules, textures and render tables for one (area, view, size) configuration.")
      .def(py::init(&make_assets), py::arg("rules"), py::arg("textures"), py::arg("area"), py::arg("view"),
           py::arg("size"), py::arg("reward"), py::arg("length"))
      .def_property_readonly("action_names", &cr::Assets::action_names)
      .def_property_readonly("item_names", &cr::Assets::item_names)
      .def_property_readonly("achievement_names", &cr::Assets::achievement_names)
      .def_property_readonly("material_names", &cr::Assets::material_names)
      .def_property_readonly("num_actions", &cr::Assets::num_actions)
      .def_property_readonly("obs_shape",
                             [](const cr::Assets& a) { return py::make_tuple(a.obs_height(), a.obs_width(), 3); });
}

void register_env(py::module_& m) {
  py::class_<cr::Env>(m, "CrafterEnv", "One native Crafter environment (crafter.Env semantics).")
      .def(py::init<std::shared_ptr<cr::Assets>, I64>(), py::arg("assets"), py::arg("seed"))
      .def("reset", &env_reset, "Starts the next episode; returns its first observation.")
      .def("step", &env_step, py::arg("action"), "Returns (obs, reward, done, dead, over, info_reward).")
      .def("render", &env_render,
           "Draws the current frame (crafter.Env.render; uses the world's random stream at night).")
      .def_property_readonly("inventory", &cr::Env::inventory)
      .def_property_readonly("achievements", &cr::Env::achievements)
      .def_property_readonly("player_pos", [](const cr::Env& e) { return py::make_tuple(e.player_x(), e.player_y()); })
      .def_property_readonly("daylight", &cr::Env::daylight)
      .def_property_readonly("sleeping", &cr::Env::sleeping)
      .def_property_readonly("episode", &cr::Env::episode)
      .def_property_readonly("step_count", &cr::Env::step_count)
      .def_property_readonly("seed", &cr::Env::seed)
      .def("semantic", &env_semantic)
      .def("material_map", &env_material_map)
      .def("objects", &env_objects, "Live objects in creation order (dicts, for tests).")
      .def("_set_despawn_choices", &cr::Env::set_despawn_choices, py::arg("slots"),
           "Test hook: slots the next despawns remove (replay of CPython's set order).")
      .def_property_readonly("_despawn_choices_left", &cr::Env::despawn_choices_left)
      .def("_poke", &cr::apply_poke, py::arg("what"), py::arg("args"),
           "Test hook: edit the state (inventory, material, object).")
      .def(
          "_import_state", [](cr::Env& e, const py::dict& d) { e.import_state(imported_state_of(d)); },
          py::arg("state"), "Test hook: load a Python crafter.Env state exported between two steps.")
      .def(
          "save_state", [](const cr::Env& e) { return py::bytes(e.save_state()); },
          "The exact state as bytes (versioned; see Env::save_state).")
      .def(
          "load_state", [](cr::Env& e, const py::bytes& blob) { e.load_state(std::string(blob)); }, py::arg("blob"),
          "Restores a save_state() blob of the same configuration (ValueError naming the problem otherwise).");
}

void register_vector_env(py::module_& m) {
  py::class_<VectorEnv>(m, "CrafterVectorEnv", "N native Crafter envs stepped by a thread pool with auto-reset.")
      .def(py::init([](std::shared_ptr<cr::Assets> assets, int num_envs, int num_threads) {
             return std::make_unique<VectorEnv>(std::move(assets), num_envs, resolve_num_threads(num_threads));
           }),
           py::arg("assets"), py::arg("num_envs"), py::arg("num_threads") = 0)
      .def_property_readonly("num_envs", &VectorEnv::num_envs)
      .def_property_readonly("num_threads", &VectorEnv::num_threads)
      .def_property_readonly("background_resets", &VectorEnv::background_resets,
                             "Whether next episodes are built ahead by pool workers (more than one thread).")
      .def_property_readonly("reset_counts", &vec_reset_counts,
                             "Episode starts after an auto-reset or reset(None): taken from a ready spare, waited "
                             "for a spare being built, or built inline.")
      .def("reset", &vec_reset, py::arg("seeds"), py::arg("obs"))
      .def(
          "save_state", [](const VectorEnv& v) { return py::bytes(v.save_state()); },
          "Every env's exact state and episode statistics as bytes (versioned; the spares are rebuilt on load).")
      .def(
          "load_state", [](VectorEnv& v, const py::bytes& blob) { v.load_state(std::string(blob)); },
          py::arg("blob"), "Restores a save_state() blob (same num_envs and configuration; ValueError otherwise).")
      .def("step", &vec_step, py::arg("actions"), py::arg("obs"), py::arg("reward"), py::arg("terminated"),
           py::arg("truncated"), py::arg("final_obs"), py::arg("episode_return"), py::arg("episode_length"),
           py::arg("final_inventory"), py::arg("final_achievements"), py::arg("final_semantic"),
           py::arg("final_player_pos"), py::arg("final_discount"), py::arg("final_reward"),
           py::arg("all_infos") = false,
           "Steps all envs in place (auto-reset); every output is a caller-owned buffer. The final_* info "
           "rows (inventory ... reward) are written where an episode ended, and with all_infos=True in every "
           "row (a running env's state after the step).");
}

}  // namespace

void register_crafter(py::module_& m) {
  register_assets(m);
  register_env(m);
  register_vector_env(m);
}

}  // namespace bindings
}  // namespace deltairis
