// Bindings of the replay sampler and reader (csrc/replay/): buffer checks, then the C++ call.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bindings/buffers.h"
#include "replay/replay.h"

namespace deltairis {
namespace bindings {
namespace {

namespace rp = replay;
using I64 = std::int64_t;

void sampling_weights(const py::array& counts, double alpha, const py::array& out) {
  const auto n = size_if(counts, 1, 0);
  const I64* c = input<I64>(counts, "counts", {kAnySize});
  double* o = output<double>(out, "out", {n});
  rp::sampling_weights(c, n, alpha, o);
}

void sampling_probabilities(const py::array& counts, double alpha, const py::array& out) {
  const auto n = size_if(counts, 1, 0);
  const I64* c = input<I64>(counts, "counts", {kAnySize});
  double* o = output<double>(out, "out", {n});
  if (n < 1) throw py::value_error("counts must hold at least one episode");
  rp::sampling_probabilities(c, n, alpha, o);
}

void draw_segments(const py::array& counts, const py::array& lengths, double alpha, const py::array& uniforms,
                   I64 seq_len, int pad_mode, const py::array& episode, const py::array& start,
                   const py::array& stop) {
  const auto n = size_if(lengths, 1, 0);
  const auto b = size_if(uniforms, 2, 1);
  const I64* len = input<I64>(lengths, "lengths", {kAnySize});
  const I64* c = input<I64>(counts, "counts", {n});
  const double* u = input<double>(uniforms, "uniforms", {3, kAnySize});
  I64* ep = output<I64>(episode, "episode_id", {b});
  I64* st = output<I64>(start, "start", {b});
  I64* sp = output<I64>(stop, "stop", {b});
  if (pad_mode != 0 && pad_mode != 1) throw py::value_error("pad_mode must be 0 (both) or 1 (left)");
  rp::draw_segments(c, len, n, alpha, u, u + b, u + 2 * b, b, seq_len, static_cast<rp::PadMode>(pad_mode), ep, st,
                    sp);
}

void add_counts(const py::array& counts, const py::array& episode) {
  const auto n = size_if(counts, 1, 0);
  I64* c = output<I64>(counts, "counts", {kAnySize});
  const I64* ep = input<I64>(episode, "episode_id", {kAnySize});
  rp::add_counts(c, n, ep, episode.shape(0));
}

rp::ChunkTable chunk_table(I64 num_rows, const py::array& lengths, const py::array& ep_chunk_begin,
                           const py::array& chunk_offset, const py::array& chunk_row, const py::array& chunk_len) {
  rp::ChunkTable t;
  t.num_rows = num_rows;
  t.num_episodes = size_if(lengths, 1, 0);
  t.num_chunks = size_if(chunk_offset, 1, 0);
  t.lengths = input<I64>(lengths, "lengths", {kAnySize});
  t.ep_begin = input<I64>(ep_chunk_begin, "ep_chunk_begin", {t.num_episodes + 1});
  t.offset = input<I64>(chunk_offset, "chunk_offset", {kAnySize});
  t.row = input<I64>(chunk_row, "chunk_row", {t.num_chunks});
  t.len = input<I64>(chunk_len, "chunk_len", {t.num_chunks});
  return t;
}

void gather(rp::Reader& self, I64 num_rows, const py::array& lengths, const py::array& ep_chunk_begin,
            const py::array& chunk_offset, const py::array& chunk_row, const py::array& chunk_len,
            const py::array& episode, const py::array& start, const py::array& obs, const py::array& act,
            const py::array& rew, const py::array& end, const py::array& trunc, const py::array& mask,
            I64 num_blocks) {
  rp::ChunkTable t = chunk_table(num_rows, lengths, ep_chunk_begin, chunk_offset, chunk_row, chunk_len);
  if (num_blocks < 0) throw py::value_error("num_blocks must be >= 0");
  t.num_blocks = num_blocks;
  const auto b = size_if(episode, 1, 0);
  const auto l = size_if(act, 2, 1);
  const I64* ep = input<I64>(episode, "episode_id", {kAnySize});
  const I64* st = input<I64>(start, "start", {b});
  rp::GatherOutputs out;
  out.act = output<I64>(act, "act", {b, kAnySize});
  if (obs.ndim() < 2 || obs.shape(0) != b || obs.shape(1) != l || obs.size() != b * l * self.frame_bytes() ||
      obs.dtype().kind() != 'u' || obs.dtype().itemsize() != 1)
    throw py::value_error("obs must be uint8 (B, L, *frame) matching act and the store's frame size");
  out.obs = output<std::uint8_t>(obs, "obs", std::vector<py::ssize_t>(obs.shape(), obs.shape() + obs.ndim()));
  out.rew = output<float>(rew, "rew", {b, l});
  out.end = output<std::uint8_t>(end, "end", {b, l});
  out.trunc = output<std::uint8_t>(trunc, "trunc", {b, l});
  out.mask = output<bool>(mask, "mask_padding", {b, l});
  py::gil_scoped_release release;
  self.gather(t, ep, st, b, l, out);
}

}  // namespace

void register_replay(py::module_& m) {
  m.def("replay_sampling_weights", &sampling_weights, py::arg("counts"), py::arg("alpha"), py::arg("out"),
        "out[i] = (1 / (1 + counts[i])) ** alpha.");
  m.def("replay_sampling_probabilities", &sampling_probabilities, py::arg("counts"), py::arg("alpha"),
        py::arg("out"), "Normalised sampling weights (left-to-right sum).");
  m.def("replay_draw_segments", &draw_segments, py::arg("counts"), py::arg("lengths"), py::arg("alpha"),
        py::arg("uniforms"), py::arg("seq_len"), py::arg("pad_mode"), py::arg("episode_id"), py::arg("start"),
        py::arg("stop"), "Segment ids from float64 uniforms (3, B), written into episode_id/start/stop (int64 (B,)).");
  m.def("replay_add_counts", &add_counts, py::arg("counts"), py::arg("episode_id"),
        "counts[episode_id[b]] += 1 for every b, in place.");

  py::class_<rp::Reader>(m, "ReplayReader",
                         "Reads segments of a replay store directory with a thread pool (pread, no mmap).")
      .def(py::init<const std::vector<std::string>&, I64, int>(), py::arg("paths"), py::arg("frame_bytes"),
           py::arg("num_threads") = 0)
      .def_property_readonly("num_threads", &rp::Reader::num_threads)
      .def_property_readonly("frame_bytes", &rp::Reader::frame_bytes)
      .def("gather", &gather, py::arg("num_rows"), py::arg("lengths"), py::arg("ep_chunk_begin"),
           py::arg("chunk_offset"), py::arg("chunk_row"), py::arg("chunk_len"), py::arg("episode_id"),
           py::arg("start"), py::arg("obs"), py::arg("act"), py::arg("rew"), py::arg("end"), py::arg("trunc"),
           py::arg("mask_padding"), py::arg("num_blocks") = 0, "Copy segments into the caller's buffers (GIL released); padding is zero with mask False.");
}

}  // namespace bindings
}  // namespace deltairis
