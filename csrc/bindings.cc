// The only pybind11 translation unit of deltairis._core. Each component registers its bindings in a
// function of its own below; the components themselves (csrc/*/) contain no Python headers.
// Rules: validate every buffer (dtype, shape, contiguity) before touching it and raise ValueError
// naming the field; release the GIL around every blocking call.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "core/info.h"
#include "core/thread_pool.h"
#include "envs/crafter/engine.h"
#include "envs/crafter/opensimplex.h"
#include "envs/crafter/random.h"
#include "vecenv/crafter_vector.h"
#include "replay/replay.h"

namespace py = pybind11;

#ifndef DELTAIRIS_VERSION
#define DELTAIRIS_VERSION "0.0.0"
#endif

namespace {

// ---------------------------------------------------------------------------------------------
// core: build information and a thread-pool self-test
// ---------------------------------------------------------------------------------------------
void register_core(py::module_& m) {
  m.attr("__version__") = DELTAIRIS_VERSION;
  m.def("build_info", &deltairis::build_info, "Compiler and flags this extension was built with.");
  m.def("default_num_threads", &deltairis::default_num_threads,
        "Hardware threads available (DELTAIRIS_NUM_THREADS overrides).");
  m.def("resolve_num_threads", &deltairis::resolve_num_threads, py::arg("requested"),
        "Thread count actually used for a request (<= 0 means default).");
  m.def(
      "parallel_sum_squares",
      [](std::int64_t n, int num_threads) {
        if (n < 0) throw py::value_error("n must be >= 0");
        std::vector<std::uint64_t> partial(static_cast<std::size_t>(n));
        {
          py::gil_scoped_release release;
          deltairis::ThreadPool pool(deltairis::resolve_num_threads(num_threads));
          pool.parallel_for(static_cast<std::size_t>(n), [&](std::size_t i) {
            partial[i] = static_cast<std::uint64_t>(i) * static_cast<std::uint64_t>(i);
          });
        }
        std::uint64_t total = 0;
        for (auto v : partial) total += v;
        return total;
      },
      py::arg("n"), py::arg("num_threads") = 0,
      "Sum of i*i for i < n computed on the thread pool (a self-test of the pool).");
  m.def(
      "thread_pool_selftest",
      [](std::int64_t n, int num_threads, int rounds, int spin_micros, std::int64_t fail_round,
         std::int64_t fail_index) {
        if (n < 0 || rounds < 0) throw py::value_error("n and rounds must be >= 0");
        std::vector<std::uint64_t> sums;
        std::vector<std::string> errors;
        std::vector<std::uint64_t> partial(static_cast<std::size_t>(n));
        {
          py::gil_scoped_release release;
          deltairis::ThreadPool pool(deltairis::resolve_num_threads(num_threads), spin_micros);
          for (int r = 0; r < rounds; ++r) {
            std::fill(partial.begin(), partial.end(), 0);
            try {
              pool.parallel_for(static_cast<std::size_t>(n), [&](std::size_t i) {
                if (r == fail_round && static_cast<std::int64_t>(i) == fail_index)
                  throw std::runtime_error("planted failure at index " + std::to_string(i));
                partial[i] = static_cast<std::uint64_t>(i) * static_cast<std::uint64_t>(r + 1) + 1;
              });
              errors.emplace_back();
            } catch (const std::exception& e) {
              errors.emplace_back(e.what());
            }
            std::uint64_t total = 0;
            for (auto v : partial) total += v;
            sums.push_back(total);
            // Uneven gaps between calls exercise both the spinning and the sleeping hand-over.
            if (r % 7 == 3) std::this_thread::sleep_for(std::chrono::microseconds(200 * (r % 5)));
          }
        }
        return py::make_tuple(sums, errors);
      },
      py::arg("n"), py::arg("num_threads"), py::arg("rounds"), py::arg("spin_micros"),
      py::arg("fail_round") = -1, py::arg("fail_index") = -1,
      "Runs `rounds` parallel_for calls on one pool (round r writes i*(r+1)+1 at index i); returns "
      "(per-round sums, per-round error messages). A self-test of the pool's hand-over.");
  m.def(
      "thread_pool_task_selftest",
      [](std::int64_t n, int num_threads, int rounds, int spin_micros, int tasks_per_round, int task_micros,
         int cancel_every, std::int64_t throw_task) {
        if (n < 0 || rounds < 0 || tasks_per_round < 0 || task_micros < 0) {
          throw py::value_error("n, rounds, tasks_per_round and task_micros must be >= 0");
        }
        std::vector<std::uint64_t> sums;
        std::vector<std::string> drain_errors;
        std::vector<std::int64_t> mismatches;  // rounds after whose drain executed != submitted - cancelled
        std::vector<std::uint64_t> partial(static_cast<std::size_t>(n));
        std::atomic<std::int64_t> executed{0}, submitted{0};
        std::int64_t cancelled = 0;
        {
          py::gil_scoped_release release;
          deltairis::ThreadPool pool(deltairis::resolve_num_threads(num_threads), spin_micros);
          auto make_task = [&] {
            const std::int64_t id = submitted.fetch_add(1);
            return [&executed, id, throw_task, task_micros] {
              const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(task_micros);
              while (std::chrono::steady_clock::now() < until) {
              }
              executed.fetch_add(1);
              if (id == throw_task) throw std::runtime_error("planted task failure " + std::to_string(id));
            };
          };
          auto drain = [&](int r) {
            try {
              pool.drain();
            } catch (const std::exception& e) {
              drain_errors.emplace_back(e.what());
            }
            if (executed.load() != submitted.load() - cancelled) mismatches.push_back(r);
          };
          for (int r = 0; r < rounds; ++r) {
            for (int t = 0; t < tasks_per_round; ++t) pool.submit(make_task());
            std::fill(partial.begin(), partial.end(), 0);
            pool.parallel_for(static_cast<std::size_t>(n), [&](std::size_t i) {
              partial[i] = static_cast<std::uint64_t>(i) * static_cast<std::uint64_t>(r + 1) + 1;
              if (tasks_per_round > 0 && i % 16 == 5) pool.submit(make_task());  // from inside a job
            });
            std::uint64_t total = 0;
            for (auto v : partial) total += v;
            sums.push_back(total);
            if (cancel_every > 0 && r % cancel_every == cancel_every - 1) {
              cancelled += static_cast<std::int64_t>(pool.cancel_pending());
            }
            if (r % 5 == 4) drain(r);
            if (r % 7 == 3) std::this_thread::sleep_for(std::chrono::microseconds(150 * (r % 5)));
          }
          drain(rounds);
          if (pool.tasks_in_flight() != 0) mismatches.push_back(-1);
        }
        py::dict d;
        d["sums"] = sums;
        d["submitted"] = submitted.load();
        d["executed"] = executed.load();
        d["cancelled"] = cancelled;
        d["drain_errors"] = drain_errors;
        d["mismatches"] = mismatches;
        return d;
      },
      py::arg("n"), py::arg("num_threads"), py::arg("rounds"), py::arg("spin_micros"), py::arg("tasks_per_round"),
      py::arg("task_micros"), py::arg("cancel_every") = 0, py::arg("throw_task") = -1,
      "Interleaves background tasks (busy-waiting task_micros each; tasks_per_round submitted before each "
      "parallel_for and more from inside it) with parallel_for rounds like thread_pool_selftest, with "
      "drains every 5 rounds and cancel_pending every cancel_every rounds. Returns a dict: sums, "
      "submitted, executed, cancelled, drain_errors, mismatches (rounds whose drain left "
      "executed != submitted - cancelled; -1: tasks still in flight at the end).");
  m.def(
      "thread_pool_destroy_with_pending",
      [](int num_threads, int tasks, int task_micros) {
        std::atomic<std::int64_t> executed{0};
        {
          py::gil_scoped_release release;
          deltairis::ThreadPool pool(deltairis::resolve_num_threads(num_threads), 0);
          for (int t = 0; t < tasks; ++t) {
            pool.submit([&executed, task_micros] {
              std::this_thread::sleep_for(std::chrono::microseconds(task_micros));
              executed.fetch_add(1);
            });
          }
        }  // the destructor drops what has not started and waits for what is running
        return executed.load();
      },
      py::arg("num_threads"), py::arg("tasks"), py::arg("task_micros"),
      "Submits tasks to a pool and destroys it at once; returns how many ran (a self-test of the destructor).");
}

// ---------------------------------------------------------------------------------------------
// replay: episode store and batched segment sampler (csrc/replay/)
// ---------------------------------------------------------------------------------------------
void register_replay(py::module_& m) {
  // BEGIN replay bindings
  namespace rp = deltairis::replay;
  // Checks kind/itemsize, C-contiguity, the number of dimensions, each known size (-1: any) and
  // writability; raises ValueError naming the field. Returns the data pointer as the tag's type.
  auto checked = [](auto* tag, const py::array& a, const char* name, char kind,
                    std::vector<py::ssize_t> shape, bool writable) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const std::string field(name);
    if (a.dtype().kind() != kind || a.dtype().itemsize() != static_cast<py::ssize_t>(sizeof(T))) {
      throw py::value_error(field + " has dtype " + std::string(py::str(a.dtype())) + ", expected " + kind +
                            std::to_string(8 * sizeof(T)));
    }
    if (a.ndim() != static_cast<py::ssize_t>(shape.size())) {
      throw py::value_error(field + " must have " + std::to_string(shape.size()) + " dimensions, got " +
                            std::to_string(a.ndim()));
    }
    for (std::size_t i = 0; i < shape.size(); ++i) {
      if (shape[i] >= 0 && a.shape(static_cast<py::ssize_t>(i)) != shape[i]) {
        throw py::value_error(field + " has size " + std::to_string(a.shape(static_cast<py::ssize_t>(i))) +
                              " in dimension " + std::to_string(i) + ", expected " +
                              std::to_string(shape[i]));
      }
    }
    if (!(a.flags() & py::array::c_style)) throw py::value_error(field + " must be C-contiguous");
    if (writable && !a.writeable()) throw py::value_error(field + " must be writable");
    return static_cast<T*>(const_cast<void*>(a.data()));
  };
  m.def(
      "replay_sampling_weights",
      [checked](const py::array& counts, double alpha, const py::array& out) {
        const auto n = counts.ndim() == 1 ? counts.shape(0) : -1;
        auto* c = checked(static_cast<std::int64_t*>(nullptr), counts, "counts", 'i', {-1}, false);
        auto* o = checked(static_cast<double*>(nullptr), out, "out", 'f', {n}, true);
        rp::sampling_weights(c, n, alpha, o);
      },
      py::arg("counts"), py::arg("alpha"), py::arg("out"), "out[i] = (1 / (1 + counts[i])) ** alpha.");
  m.def(
      "replay_sampling_probabilities",
      [checked](const py::array& counts, double alpha, const py::array& out) {
        const auto n = counts.ndim() == 1 ? counts.shape(0) : -1;
        auto* c = checked(static_cast<std::int64_t*>(nullptr), counts, "counts", 'i', {-1}, false);
        auto* o = checked(static_cast<double*>(nullptr), out, "out", 'f', {n}, true);
        if (n < 1) throw py::value_error("counts must hold at least one episode");
        rp::sampling_probabilities(c, n, alpha, o);
      },
      py::arg("counts"), py::arg("alpha"), py::arg("out"),
      "Normalised sampling weights (left-to-right sum).");
  m.def(
      "replay_draw_segments",
      [checked](const py::array& counts, const py::array& lengths, double alpha, const py::array& uniforms,
                std::int64_t seq_len, int pad_mode, const py::array& episode, const py::array& start,
                const py::array& stop) {
        const auto n = lengths.ndim() == 1 ? lengths.shape(0) : -1;
        const auto b = uniforms.ndim() == 2 ? uniforms.shape(1) : -1;
        auto* len = checked(static_cast<std::int64_t*>(nullptr), lengths, "lengths", 'i', {-1}, false);
        auto* c = checked(static_cast<std::int64_t*>(nullptr), counts, "counts", 'i', {n}, false);
        auto* u = checked(static_cast<double*>(nullptr), uniforms, "uniforms", 'f', {3, -1}, false);
        auto* ep = checked(static_cast<std::int64_t*>(nullptr), episode, "episode_id", 'i', {b}, true);
        auto* st = checked(static_cast<std::int64_t*>(nullptr), start, "start", 'i', {b}, true);
        auto* sp = checked(static_cast<std::int64_t*>(nullptr), stop, "stop", 'i', {b}, true);
        if (pad_mode != 0 && pad_mode != 1) throw py::value_error("pad_mode must be 0 (both) or 1 (left)");
        rp::draw_segments(c, len, n, alpha, u, u + b, u + 2 * b, b, seq_len,
                          static_cast<rp::PadMode>(pad_mode), ep, st, sp);
      },
      py::arg("counts"), py::arg("lengths"), py::arg("alpha"), py::arg("uniforms"), py::arg("seq_len"),
      py::arg("pad_mode"), py::arg("episode_id"), py::arg("start"), py::arg("stop"),
      "Segment ids from float64 uniforms (3, B), written into episode_id/start/stop (int64 (B,)).");
  m.def(
      "replay_add_counts",
      [checked](const py::array& counts, const py::array& episode) {
        const auto n = counts.ndim() == 1 ? counts.shape(0) : -1;
        auto* c = checked(static_cast<std::int64_t*>(nullptr), counts, "counts", 'i', {-1}, true);
        auto* ep = checked(static_cast<std::int64_t*>(nullptr), episode, "episode_id", 'i', {-1}, false);
        rp::add_counts(c, n, ep, episode.shape(0));
      },
      py::arg("counts"), py::arg("episode_id"), "counts[episode_id[b]] += 1 for every b, in place.");

  py::class_<rp::Reader>(m, "ReplayReader",
                         "Reads segments of a replay store directory with a thread pool (pread, no mmap).")
      .def(py::init([](const std::vector<std::string>& paths, std::int64_t frame_bytes, int num_threads) {
             return new rp::Reader(paths, frame_bytes, num_threads);
           }),
           py::arg("paths"), py::arg("frame_bytes"), py::arg("num_threads") = 0)
      .def_property_readonly("num_threads", &rp::Reader::num_threads)
      .def_property_readonly("frame_bytes", &rp::Reader::frame_bytes)
      .def(
          "gather",
          [checked](rp::Reader& self, std::int64_t num_rows, const py::array& lengths,
                    const py::array& ep_chunk_begin, const py::array& chunk_offset,
                    const py::array& chunk_row, const py::array& chunk_len, const py::array& episode,
                    const py::array& start, const py::array& obs, const py::array& act, const py::array& rew,
                    const py::array& end, const py::array& trunc, const py::array& mask) {
            rp::ChunkTable t;
            t.num_rows = num_rows;
            t.num_episodes = lengths.ndim() == 1 ? lengths.shape(0) : -1;
            t.num_chunks = chunk_offset.ndim() == 1 ? chunk_offset.shape(0) : -1;
            t.lengths = checked(static_cast<std::int64_t*>(nullptr), lengths, "lengths", 'i', {-1}, false);
            t.ep_begin = checked(static_cast<std::int64_t*>(nullptr), ep_chunk_begin, "ep_chunk_begin", 'i',
                                 {t.num_episodes + 1}, false);
            t.offset =
                checked(static_cast<std::int64_t*>(nullptr), chunk_offset, "chunk_offset", 'i', {-1}, false);
            t.row = checked(static_cast<std::int64_t*>(nullptr), chunk_row, "chunk_row", 'i', {t.num_chunks},
                            false);
            t.len = checked(static_cast<std::int64_t*>(nullptr), chunk_len, "chunk_len", 'i', {t.num_chunks},
                            false);
            const auto b = episode.ndim() == 1 ? episode.shape(0) : -1;
            const auto l = act.ndim() == 2 ? act.shape(1) : -1;
            const auto fb = self.frame_bytes();
            const auto* ep =
                checked(static_cast<std::int64_t*>(nullptr), episode, "episode_id", 'i', {-1}, false);
            const auto* st = checked(static_cast<std::int64_t*>(nullptr), start, "start", 'i', {b}, false);
            rp::GatherOutputs out;
            out.act = checked(static_cast<std::int64_t*>(nullptr), act, "act", 'i', {b, -1}, true);
            if (obs.ndim() < 2 || obs.shape(0) != b || obs.shape(1) != l || obs.size() != b * l * fb ||
                obs.dtype().kind() != 'u' || obs.dtype().itemsize() != 1)
              throw py::value_error(
                  "obs must be uint8 (B, L, *frame) matching act and the store's frame size");
            std::vector<py::ssize_t> obs_shape(obs.shape(), obs.shape() + obs.ndim());
            out.obs = checked(static_cast<std::uint8_t*>(nullptr), obs, "obs", 'u', obs_shape, true);
            out.rew = checked(static_cast<float*>(nullptr), rew, "rew", 'f', {b, l}, true);
            out.end = checked(static_cast<std::uint8_t*>(nullptr), end, "end", 'u', {b, l}, true);
            out.trunc = checked(static_cast<std::uint8_t*>(nullptr), trunc, "trunc", 'u', {b, l}, true);
            out.mask = checked(static_cast<bool*>(nullptr), mask, "mask_padding", 'b', {b, l}, true);
            py::gil_scoped_release release;
            self.gather(t, ep, st, b, l, out);
          },
          py::arg("num_rows"), py::arg("lengths"), py::arg("ep_chunk_begin"), py::arg("chunk_offset"),
          py::arg("chunk_row"), py::arg("chunk_len"), py::arg("episode_id"), py::arg("start"), py::arg("obs"),
          py::arg("act"), py::arg("rew"), py::arg("end"), py::arg("trunc"), py::arg("mask_padding"),
          "Copy segments into the caller's buffers (GIL released); padding is zero with mask False.");
  // END replay bindings
}

// ---------------------------------------------------------------------------------------------
// vecenv: native Crafter engine and the thread-pool vector stepper (csrc/envs/crafter/, csrc/vecenv/)
// ---------------------------------------------------------------------------------------------
void register_vecenv(py::module_& m) {
  (void)m;
  // BEGIN vecenv bindings
  namespace cr = deltairis::crafter;
  using U8Array = py::array_t<std::uint8_t, py::array::c_style>;

  // Checks dtype, C-contiguity and shape of a caller-owned buffer; ValueError names the field.
  auto check_buffer = [](const py::array& arr, const py::dtype& dtype, const std::vector<py::ssize_t>& shape,
                         const char* name) {
    if (!arr.dtype().is(dtype)) {
      throw py::value_error(std::string(name) + " must have dtype " + std::string(py::str(dtype)) + ", got " +
                            std::string(py::str(arr.dtype())));
    }
    if (!(arr.flags() & py::array::c_style)) throw py::value_error(std::string(name) + " must be C-contiguous");
    if (!arr.writeable()) throw py::value_error(std::string(name) + " must be writeable");
    bool ok = arr.ndim() == static_cast<py::ssize_t>(shape.size());
    for (std::size_t i = 0; ok && i < shape.size(); ++i) ok = arr.shape(static_cast<py::ssize_t>(i)) == shape[i];
    if (!ok) {
      std::string want = "(";
      for (std::size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + std::to_string(shape[i]);
      std::string got = "(";
      for (py::ssize_t i = 0; i < arr.ndim(); ++i) got += (i ? ", " : "") + std::to_string(arr.shape(i));
      throw py::value_error(std::string(name) + " must have shape " + want + "), got " + got + ")");
    }
  };
  auto amounts_of = [](const py::handle& obj) {
    cr::RulesSpec::Amounts out;
    for (auto kv : py::reinterpret_borrow<py::dict>(obj)) out.emplace_back(py::cast<std::string>(kv.first), py::cast<int>(kv.second));
    return out;
  };
  auto rules_of = [amounts_of](const py::dict& d) {
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
  };
  auto pair_of = [](const std::vector<int>& v, const char* name) {
    if (v.size() != 2) throw py::value_error(std::string(name) + " must have two entries");
    return v;
  };

  py::class_<cr::Assets, std::shared_ptr<cr::Assets>>(
      m, "CrafterAssets", "Crafter rules, textures and render tables for one (area, view, size) configuration.")
      .def(py::init([rules_of, pair_of](const py::dict& rules, const py::dict& textures, std::vector<int> area,
                                        std::vector<int> view, std::vector<int> size, bool reward,
                                        std::int64_t length) {
             cr::EnvConfig config;
             area = pair_of(area, "area");
             view = pair_of(view, "view");
             size = pair_of(size, "size");
             config.area_x = area[0];
             config.area_y = area[1];
             config.view_x = view[0];
             config.view_y = view[1];
             config.size_x = size[0];
             config.size_y = size[1];
             config.reward = reward;
             config.length = length;
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
             try {
               return std::make_shared<cr::Assets>(rules_of(rules), tex, config);
             } catch (const std::invalid_argument& e) {
               throw py::value_error(e.what());
             }
           }),
           py::arg("rules"), py::arg("textures"), py::arg("area"), py::arg("view"), py::arg("size"),
           py::arg("reward"), py::arg("length"))
      .def_property_readonly("action_names", &cr::Assets::action_names)
      .def_property_readonly("item_names", &cr::Assets::item_names)
      .def_property_readonly("achievement_names", &cr::Assets::achievement_names)
      .def_property_readonly("material_names", &cr::Assets::material_names)
      .def_property_readonly("num_actions", &cr::Assets::num_actions)
      .def_property_readonly("obs_shape", [](const cr::Assets& a) {
        return py::make_tuple(a.obs_height(), a.obs_width(), 3);
      });

  auto env_objects = [](const cr::Env& env) {
    static const char* kNames[] = {"Player", "Cow", "Zombie", "Skeleton", "Arrow", "Plant", "Fence"};
    py::list out;
    for (const auto& o : env.objects()) {
      py::dict d;
      d["kind"] = kNames[static_cast<int>(o.kind)];
      d["pos"] = py::make_tuple(o.x, o.y);
      d["health"] = o.health;
      d["facing"] = py::make_tuple(o.facing_x, o.facing_y);
      d["cooldown"] = o.cooldown;
      d["grown"] = o.grown;
      out.append(d);
    }
    return out;
  };
  py::class_<cr::Env>(m, "CrafterEnv", "One native Crafter environment (crafter.Env semantics).")
      .def(py::init([](std::shared_ptr<cr::Assets> assets, std::int64_t seed) {
             return std::make_unique<cr::Env>(std::move(assets), seed);
           }),
           py::arg("assets"), py::arg("seed"))
      .def(
          "reset",
          [](cr::Env& env) {
            U8Array obs({env.assets().obs_height(), env.assets().obs_width(), 3});
            std::uint8_t* ptr = obs.mutable_data();
            {
              py::gil_scoped_release release;
              env.reset(ptr);
            }
            return obs;
          },
          "Starts the next episode; returns its first observation.")
      .def(
          "step",
          [](cr::Env& env, std::int64_t action) {
            if (env.step_count() < 0 || env.episode() == 0) throw py::value_error("call reset() before step()");
            if (action < 0 || action >= env.assets().num_actions()) {
              throw py::value_error("action must be in [0, " + std::to_string(env.assets().num_actions()) +
                                    "), got " + std::to_string(action));
            }
            U8Array obs({env.assets().obs_height(), env.assets().obs_width(), 3});
            std::uint8_t* ptr = obs.mutable_data();
            cr::StepResult r;
            {
              py::gil_scoped_release release;
              r = env.step(static_cast<int>(action), ptr);
            }
            return py::make_tuple(obs, r.reward, r.done, r.dead, r.over, r.info_reward);
          },
          py::arg("action"), "Returns (obs, reward, done, dead, over, info_reward).")
      .def(
          "render",
          [](cr::Env& env) {
            if (env.episode() == 0) throw py::value_error("call reset() before render()");
            U8Array obs({env.assets().obs_height(), env.assets().obs_width(), 3});
            std::uint8_t* ptr = obs.mutable_data();
            {
              py::gil_scoped_release release;
              env.render_frame(ptr);
            }
            return obs;
          },
          "Draws the current frame (crafter.Env.render; uses the world's random stream at night).")
      .def_property_readonly("inventory", [](const cr::Env& e) { return e.inventory(); })
      .def_property_readonly("achievements", [](const cr::Env& e) { return e.achievements(); })
      .def_property_readonly("player_pos", [](const cr::Env& e) { return py::make_tuple(e.player_x(), e.player_y()); })
      .def_property_readonly("daylight", &cr::Env::daylight)
      .def_property_readonly("sleeping", &cr::Env::sleeping)
      .def_property_readonly("episode", &cr::Env::episode)
      .def_property_readonly("step_count", &cr::Env::step_count)
      .def_property_readonly("seed", &cr::Env::seed)
      .def("semantic",
           [](const cr::Env& e) {
             U8Array out({e.assets().config().area_x, e.assets().config().area_y});
             e.semantic(out.mutable_data());
             return out;
           })
      .def("material_map",
           [](const cr::Env& e) {
             U8Array out({e.assets().config().area_x, e.assets().config().area_y});
             std::copy(e.material_map().begin(), e.material_map().end(), out.mutable_data());
             return out;
           })
      .def("objects", env_objects, "Live objects in creation order (dicts, for tests).")
      .def(
          "_set_despawn_choices",
          [](cr::Env& e, std::vector<std::uint32_t> slots) { e.set_despawn_choices(std::move(slots)); },
          py::arg("slots"), "Test hook: slots the next despawns remove (replay of CPython's set order).")
      .def_property_readonly("_despawn_choices_left", &cr::Env::despawn_choices_left)
      .def(
          "_poke",
          [](cr::Env& e, const std::string& what, const py::tuple& args) {
            try {
              if (what == "inventory") {
                e.poke_inventory(py::cast<int>(args[0]), py::cast<int>(args[1]));
              } else if (what == "material") {
                e.poke_material(py::cast<int>(args[0]), py::cast<int>(args[1]), py::cast<int>(args[2]));
              } else if (what == "object") {
                static const char* kNames[] = {"Player", "Cow", "Zombie", "Skeleton", "Arrow", "Plant", "Fence"};
                const std::string kind = py::cast<std::string>(args[0]);
                int k = -1;
                for (int i = 0; i < 7; ++i)
                  if (kind == kNames[i]) k = i;
                if (k < 0) throw py::value_error("unknown object kind " + kind);
                e.poke_object(static_cast<cr::ObjKind>(k), py::cast<int>(args[1]), py::cast<int>(args[2]),
                              py::cast<int>(args[3]), py::cast<int>(args[4]), py::cast<int>(args[5]),
                              py::cast<int>(args[6]));
              } else {
                throw py::value_error("unknown poke " + what);
              }
            } catch (const std::invalid_argument& err) {
              throw py::value_error(err.what());
            }
          },
          py::arg("what"), py::arg("args"), "Test hook: edit the state (inventory, material, object).")
      .def(
          "_import_state",
          [](cr::Env& e, const py::dict& d) {
            static const char* kNames[] = {"Player", "Cow", "Zombie", "Skeleton", "Arrow", "Plant", "Fence"};
            cr::ImportedState s;
            s.step = py::cast<std::int64_t>(d["step"]);
            s.episode = py::cast<std::int64_t>(d["episode"]);
            s.mt_key = py::cast<std::vector<std::uint32_t>>(d["mt_key"]);
            s.mt_pos = py::cast<int>(d["mt_pos"]);
            s.materials = py::cast<std::vector<std::uint8_t>>(d["materials"]);
            s.num_slots = py::cast<std::uint32_t>(d["num_slots"]);
            for (auto item : py::reinterpret_borrow<py::list>(d["objects"])) {
              auto t = py::cast<py::sequence>(item);
              const std::string kind = py::cast<std::string>(t[1]);
              int k = -1;
              for (int i = 0; i < 7; ++i)
                if (kind == kNames[i]) k = i;
              if (k < 0) throw py::value_error("unknown object kind " + kind);
              s.objects.push_back({py::cast<std::uint32_t>(t[0]), static_cast<cr::ObjKind>(k), py::cast<int>(t[2]),
                                   py::cast<int>(t[3]), py::cast<int>(t[4]), py::cast<int>(t[5]), py::cast<int>(t[6]),
                                   py::cast<int>(t[7]), py::cast<int>(t[8])});
            }
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
            try {
              e.import_state(s);
            } catch (const std::invalid_argument& err) {
              throw py::value_error(err.what());
            }
          },
          py::arg("state"), "Test hook: load a Python crafter.Env state exported between two steps.");

  py::class_<deltairis::CrafterVectorEnv>(m, "CrafterVectorEnv",
                                          "N native Crafter envs stepped by a thread pool with auto-reset.")
      .def(py::init([](std::shared_ptr<cr::Assets> assets, int num_envs, int num_threads) {
             if (num_envs < 1) throw py::value_error("num_envs must be >= 1, got " + std::to_string(num_envs));
             return std::make_unique<deltairis::CrafterVectorEnv>(std::move(assets), num_envs,
                                                                   deltairis::resolve_num_threads(num_threads));
           }),
           py::arg("assets"), py::arg("num_envs"), py::arg("num_threads") = 0)
      .def_property_readonly("num_envs", &deltairis::CrafterVectorEnv::num_envs)
      .def_property_readonly("num_threads", &deltairis::CrafterVectorEnv::num_threads)
      .def_property_readonly("background_resets", &deltairis::CrafterVectorEnv::background_resets,
                             "Whether next episodes are built ahead by pool workers (more than one thread).")
      .def_property_readonly(
          "reset_counts",
          [](const deltairis::CrafterVectorEnv& v) {
            const auto c = v.reset_counts();
            py::dict d;
            d["ready"] = c.ready;
            d["waited"] = c.waited;
            d["inline"] = c.inline_built;
            return d;
          },
          "Episode starts after an auto-reset or reset(None): taken from a ready spare, waited for a spare "
          "being built, or built inline.")
      .def(
          "reset",
          [check_buffer](deltairis::CrafterVectorEnv& v, py::object seeds, py::array obs) {
            const auto& a = v.assets();
            const py::ssize_t n = v.num_envs();
            check_buffer(obs, py::dtype::of<std::uint8_t>(), {n, a.obs_height(), a.obs_width(), 3}, "obs");
            std::vector<std::int64_t> seed_values;
            if (!seeds.is_none()) {
              auto arr = py::cast<py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>>(seeds);
              if (arr.ndim() != 1 || arr.shape(0) != n) {
                throw py::value_error("seeds must have shape (" + std::to_string(n) + ",)");
              }
              seed_values.assign(arr.data(), arr.data() + n);
            }
            auto* ptr = static_cast<std::uint8_t*>(obs.mutable_data());
            py::gil_scoped_release release;
            v.reset(seed_values.empty() ? nullptr : seed_values.data(), ptr);
          },
          py::arg("seeds"), py::arg("obs"))
      .def(
          "step",
          [check_buffer](deltairis::CrafterVectorEnv& v, py::array actions, py::array obs, py::array reward,
                         py::array terminated, py::array truncated, py::array final_obs, py::array episode_return,
                         py::array episode_length, py::array final_inventory, py::array final_achievements,
                         py::array final_semantic, py::array final_player_pos, py::array final_discount,
                         py::array final_reward, bool all_infos) {
            const auto& a = v.assets();
            const py::ssize_t n = v.num_envs();
            if (!actions.dtype().is(py::dtype::of<std::int64_t>())) {
              throw py::value_error("actions must have dtype int64, got " + std::string(py::str(actions.dtype())));
            }
            if (actions.ndim() != 1 || actions.shape(0) != n) {
              throw py::value_error("actions must have shape (" + std::to_string(n) + ",)");
            }
            if (!(actions.flags() & py::array::c_style)) throw py::value_error("actions must be C-contiguous");
            const auto* act = static_cast<const std::int64_t*>(actions.data());
            for (py::ssize_t i = 0; i < n; ++i) {
              if (act[i] < 0 || act[i] >= a.num_actions()) {
                throw py::value_error("actions[" + std::to_string(i) + "] = " + std::to_string(act[i]) +
                                      " is out of range [0, " + std::to_string(a.num_actions()) + ")");
              }
            }
            const py::ssize_t h = a.obs_height(), w = a.obs_width();
            check_buffer(obs, py::dtype::of<std::uint8_t>(), {n, h, w, 3}, "obs");
            check_buffer(reward, py::dtype::of<float>(), {n}, "reward");
            check_buffer(terminated, py::dtype::of<bool>(), {n}, "terminated");
            check_buffer(truncated, py::dtype::of<bool>(), {n}, "truncated");
            check_buffer(final_obs, py::dtype::of<std::uint8_t>(), {n, h, w, 3}, "final_obs");
            check_buffer(episode_return, py::dtype::of<double>(), {n}, "episode_return");
            check_buffer(episode_length, py::dtype::of<std::int64_t>(), {n}, "episode_length");
            check_buffer(final_inventory, py::dtype::of<std::int32_t>(), {n, a.num_items()}, "final_inventory");
            check_buffer(final_achievements, py::dtype::of<std::int32_t>(), {n, a.num_achievements()},
                         "final_achievements");
            check_buffer(final_semantic, py::dtype::of<std::uint8_t>(), {n, a.config().area_x, a.config().area_y},
                         "final_semantic");
            check_buffer(final_player_pos, py::dtype::of<std::int64_t>(), {n, 2}, "final_player_pos");
            check_buffer(final_discount, py::dtype::of<double>(), {n}, "final_discount");
            check_buffer(final_reward, py::dtype::of<double>(), {n}, "final_reward");
            deltairis::CrafterStepBuffers out;
            out.obs = static_cast<std::uint8_t*>(obs.mutable_data());
            out.reward = static_cast<float*>(reward.mutable_data());
            out.terminated = static_cast<bool*>(terminated.mutable_data());
            out.truncated = static_cast<bool*>(truncated.mutable_data());
            out.final_obs = static_cast<std::uint8_t*>(final_obs.mutable_data());
            out.episode_return = static_cast<double*>(episode_return.mutable_data());
            out.episode_length = static_cast<std::int64_t*>(episode_length.mutable_data());
            out.final_inventory = static_cast<std::int32_t*>(final_inventory.mutable_data());
            out.final_achievements = static_cast<std::int32_t*>(final_achievements.mutable_data());
            out.final_semantic = static_cast<std::uint8_t*>(final_semantic.mutable_data());
            out.final_player_pos = static_cast<std::int64_t*>(final_player_pos.mutable_data());
            out.final_discount = static_cast<double*>(final_discount.mutable_data());
            out.final_reward = static_cast<double*>(final_reward.mutable_data());
            out.all_infos = all_infos;
            std::vector<std::int64_t> act_copy(act, act + n);
            py::gil_scoped_release release;
            v.step(act_copy.data(), out);
          },
          py::arg("actions"), py::arg("obs"), py::arg("reward"), py::arg("terminated"), py::arg("truncated"),
          py::arg("final_obs"), py::arg("episode_return"), py::arg("episode_length"), py::arg("final_inventory"),
          py::arg("final_achievements"), py::arg("final_semantic"), py::arg("final_player_pos"),
          py::arg("final_discount"), py::arg("final_reward"), py::arg("all_infos") = false,
          "Steps all envs in place (auto-reset); every output is a caller-owned buffer. The final_* info "
          "rows (inventory ... reward) are written where an episode ended, and with all_infos=True in every "
          "row (a running env's state after the step).");

  // Low-level numerics, exposed for the equivalence tests.
  m.def("_crafter_episode_seed", &cr::episode_world_seed, py::arg("seed"), py::arg("episode"));
  m.def(
      "_crafter_legacy_random",
      [](std::uint32_t seed, const std::vector<std::pair<std::string, std::int64_t>>& calls) {
        cr::LegacyRandom rng(seed);
        std::vector<double> out;
        for (const auto& c : calls) {
          if (c.first == "uniform") {
            out.push_back(rng.uniform());
          } else if (c.first == "randint") {
            if (c.second < 1 || c.second > (std::int64_t{1} << 32)) throw py::value_error("randint n out of range");
            out.push_back(static_cast<double>(rng.randint(c.second)));
          } else {
            throw py::value_error("unknown call " + c.first);
          }
        }
        return out;
      },
      py::arg("seed"), py::arg("calls"));
  m.def(
      "_crafter_noise3",
      [](std::int64_t seed, py::array_t<double, py::array::c_style | py::array::forcecast> xyz) {
        if (xyz.ndim() != 2 || xyz.shape(1) != 3) throw py::value_error("xyz must have shape (n, 3)");
        cr::OpenSimplex3 simplex(seed);
        py::array_t<double> out(xyz.shape(0));
        for (py::ssize_t i = 0; i < xyz.shape(0); ++i) {
          out.mutable_at(i) = simplex.noise3(xyz.at(i, 0), xyz.at(i, 1), xyz.at(i, 2));
        }
        return out;
      },
      py::arg("seed"), py::arg("xyz"));
  m.def("_crafter_pillow_nearest", &cr::pillow_nearest_indices, py::arg("src"), py::arg("dst"));
  // END vecenv bindings
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "deltairis native core: replay sampler, vector env stepper, native Crafter";
  register_core(m);
  register_replay(m);
  register_vecenv(m);
}
