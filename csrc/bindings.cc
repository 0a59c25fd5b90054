// The only pybind11 translation unit of deltairis._core. Each component registers its bindings in a
// function of its own below; the components themselves (csrc/*/) contain no Python headers.
// Rules: validate every buffer (dtype, shape, contiguity) before touching it and raise ValueError
// naming the field; release the GIL around every blocking call.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "core/info.h"
#include "core/thread_pool.h"
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
}

// ---------------------------------------------------------------------------------------------
// replay: episode store and batched segment sampler (csrc/replay/)
// ---------------------------------------------------------------------------------------------
void register_replay(py::module_& m) {
  // BEGIN replay bindings
  namespace rp = deltairis::replay;
  // Checks kind/itemsize, C-contiguity, the number of dimensions, each known size (-1: any) and
  // writability; raises ValueError naming the field. Returns the data pointer as the tag's type.
  auto checked = [](auto* tag, const py::array& a, const char* name, char kind, std::vector<py::ssize_t> shape,
                    bool writable) {
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
                              " in dimension " + std::to_string(i) + ", expected " + std::to_string(shape[i]));
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
      py::arg("counts"), py::arg("alpha"), py::arg("out"), "Normalised sampling weights (left-to-right sum).");
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
        rp::draw_segments(c, len, n, alpha, u, u + b, u + 2 * b, b, seq_len, static_cast<rp::PadMode>(pad_mode),
                          ep, st, sp);
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
          [checked](rp::Reader& self, const py::array& lengths, const py::array& ep_chunk_begin,
             const py::array& chunk_offset, const py::array& chunk_row, const py::array& chunk_len,
             const py::array& episode, const py::array& start, const py::array& obs, const py::array& act,
             const py::array& rew, const py::array& end, const py::array& trunc, const py::array& mask) {
            rp::ChunkTable t;
            t.num_episodes = lengths.ndim() == 1 ? lengths.shape(0) : -1;
            t.num_chunks = chunk_offset.ndim() == 1 ? chunk_offset.shape(0) : -1;
            t.lengths = checked(static_cast<std::int64_t*>(nullptr), lengths, "lengths", 'i', {-1}, false);
            t.ep_begin = checked(static_cast<std::int64_t*>(nullptr), ep_chunk_begin, "ep_chunk_begin", 'i', {t.num_episodes + 1}, false);
            t.offset = checked(static_cast<std::int64_t*>(nullptr), chunk_offset, "chunk_offset", 'i', {-1}, false);
            t.row = checked(static_cast<std::int64_t*>(nullptr), chunk_row, "chunk_row", 'i', {t.num_chunks}, false);
            t.len = checked(static_cast<std::int64_t*>(nullptr), chunk_len, "chunk_len", 'i', {t.num_chunks}, false);
            const auto b = episode.ndim() == 1 ? episode.shape(0) : -1;
            const auto l = act.ndim() == 2 ? act.shape(1) : -1;
            const auto fb = self.frame_bytes();
            const auto* ep = checked(static_cast<std::int64_t*>(nullptr), episode, "episode_id", 'i', {-1}, false);
            const auto* st = checked(static_cast<std::int64_t*>(nullptr), start, "start", 'i', {b}, false);
            rp::GatherOutputs out;
            out.act = checked(static_cast<std::int64_t*>(nullptr), act, "act", 'i', {b, -1}, true);
            if (obs.ndim() < 2 || obs.shape(0) != b || obs.shape(1) != l || obs.size() != b * l * fb ||
                obs.dtype().kind() != 'u' || obs.dtype().itemsize() != 1)
              throw py::value_error("obs must be uint8 (B, L, *frame) matching act and the store's frame size");
            std::vector<py::ssize_t> obs_shape(obs.shape(), obs.shape() + obs.ndim());
            out.obs = checked(static_cast<std::uint8_t*>(nullptr), obs, "obs", 'u', obs_shape, true);
            out.rew = checked(static_cast<float*>(nullptr), rew, "rew", 'f', {b, l}, true);
            out.end = checked(static_cast<std::uint8_t*>(nullptr), end, "end", 'u', {b, l}, true);
            out.trunc = checked(static_cast<std::uint8_t*>(nullptr), trunc, "trunc", 'u', {b, l}, true);
            out.mask = checked(static_cast<bool*>(nullptr), mask, "mask_padding", 'b', {b, l}, true);
            py::gil_scoped_release release;
            self.gather(t, ep, st, b, l, out);
          },
          py::arg("lengths"), py::arg("ep_chunk_begin"), py::arg("chunk_offset"), py::arg("chunk_row"),
          py::arg("chunk_len"), py::arg("episode_id"), py::arg("start"), py::arg("obs"), py::arg("act"),
          py::arg("rew"), py::arg("end"), py::arg("trunc"), py::arg("mask_padding"),
          "Copy segments into the caller's buffers (GIL released); padding is zero with mask False.");
  // END replay bindings
}

// ---------------------------------------------------------------------------------------------
// vecenv: native Crafter engine and the thread-pool vector stepper (csrc/envs/crafter/, csrc/vecenv/)
// ---------------------------------------------------------------------------------------------
void register_vecenv(py::module_& m) {
  (void)m;
  // BEGIN vecenv bindings
  // END vecenv bindings
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "deltairis native core: replay sampler, vector env stepper, native Crafter";
  register_core(m);
  register_replay(m);
  register_vecenv(m);
}
