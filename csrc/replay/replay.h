// Episode store reader and batched segment sampler (docs/algorithm.md section 6). Pure C++, no Python.
//
// The store keeps one raw file per field (obs rows of frame_bytes, int64 actions, float32 rewards, uint8
// end/trunc flags); an episode is a list of chunks (runs of consecutive file rows). The draw functions
// turn uniforms supplied by the caller into segment ids with the exact arithmetic of the NumPy reference
// (python/deltairis/data/segment_rule.py); gather copies the segments into caller-owned buffers with pread,
// so resident memory does not grow with the store.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/thread_pool.h"

namespace deltairis {
namespace replay {

enum class PadMode : int { kBoth = 0, kLeft = 1 };

// w_i = (1 / (1 + counts_i)) ^ alpha, float64.
void sampling_weights(const std::int64_t* counts, std::int64_t n, double alpha, double* out);

// w_i / sum(w), the sum taken left to right.
void sampling_probabilities(const std::int64_t* counts, std::int64_t n, double alpha, double* out);

// Segment b: episode = first i with cdf[i] > u_ep[b] * cdf[n-1]; t = floor(u_t[b] * len);
// k = floor(u_off[b] * seq_len); "both": start = t - k, stop = start + seq_len;
// "left": stop = min(len, t + 1 + k), start = stop - seq_len. Throws std::invalid_argument on bad input.
void draw_segments(const std::int64_t* counts, const std::int64_t* lengths, std::int64_t n, double alpha,
                   const double* u_ep, const double* u_t, const double* u_off, std::int64_t batch,
                   std::int64_t seq_len, PadMode mode, std::int64_t* episode, std::int64_t* start,
                   std::int64_t* stop);

// counts[episode[b]] += 1 for every b (episode ids must be in [0, n)).
void add_counts(std::int64_t* counts, std::int64_t n, const std::int64_t* episode, std::int64_t batch);

// The episode table: chunks sorted by (episode, offset); chunks of episode e are [ep_begin[e],
// ep_begin[e+1]).
struct ChunkTable {
  std::int64_t num_episodes = 0;
  std::int64_t num_chunks = 0;
  std::int64_t num_rows = 0;               // rows in use in the data files; every chunk lies below
  const std::int64_t* lengths = nullptr;   // (N,)
  const std::int64_t* ep_begin = nullptr;  // (N + 1,)
  const std::int64_t* offset = nullptr;    // (C,) first episode step of the chunk
  const std::int64_t* row = nullptr;       // (C,) first file row of the chunk
  const std::int64_t* len = nullptr;       // (C,)
  std::int64_t num_blocks = 0;             // compressed frames: rows of the block table in use
};

// Destinations of a gather, each (B, L[, frame_bytes]) contiguous.
struct GatherOutputs {
  std::uint8_t* obs = nullptr;
  std::int64_t* act = nullptr;
  float* rew = nullptr;
  std::uint8_t* end = nullptr;
  std::uint8_t* trunc = nullptr;
  bool* mask = nullptr;
};

// Frames are read with pread (one call per run of consecutive rows, no mapping, so resident memory does
// not grow with the store); the per-step scalars (14 bytes a step, 0.1 % of the data) are memory-mapped,
// read-only, and the mapping follows the files as they grow. Compressed frames (a sixth path: the block
// table, int64 rows (first_row, num_rows, byte_offset, num_bytes) of LZ4 blocks in the first file) are
// read a block at a time and decoded by the gather threads, straight into the output when the segment
// holds the whole block.
class Reader {
 public:
  // paths: obs, act, rew, end, trunc files (opened read-only), then for compressed frames the block
  // table (obs is then the blocks' file). num_threads <= 0: default.
  Reader(const std::vector<std::string>& paths, std::int64_t frame_bytes, int num_threads);
  ~Reader();
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;

  std::int64_t frame_bytes() const { return frame_bytes_; }
  int num_threads() const { return pool_.num_threads(); }

  // Checks the table against itself and the ids (std::invalid_argument), then copies segment b, steps
  // start[b] .. start[b] + seq_len - 1 of episode[b], into row b of the outputs; steps outside the
  // episode are zero with mask false. Each segment is written by one thread: results never depend on
  // the thread count. Not reentrant: callers serialise calls on one Reader.
  void gather(const ChunkTable& table, const std::int64_t* episode, const std::int64_t* start,
              std::int64_t batch, std::int64_t seq_len, const GatherOutputs& out);

 private:
  void read_rows(std::int64_t row, std::int64_t count, std::int64_t num_blocks, std::uint8_t* obs,
                 std::int64_t* act, float* rew, std::uint8_t* end, std::uint8_t* trunc) const;
  // Frames of rows [row, row + count) from the compressed blocks (the first num_blocks of the table).
  void read_compressed(std::int64_t row, std::int64_t count, std::int64_t num_blocks, std::uint8_t* obs) const;
  // Maps the scalar files (and the block table) so that rows [0, num_rows) and blocks [0, num_blocks)
  // are readable.
  void ensure_mapped(std::int64_t num_rows, std::int64_t num_blocks);
  void unmap();

  std::vector<int> fds_;
  std::vector<void*> maps_;  // act, rew, end, trunc (index 1..4 of the paths); nullptr: none
  std::vector<std::size_t> map_bytes_;
  std::int64_t mapped_rows_ = 0;
  std::int64_t mapped_blocks_ = 0;
  bool compressed_ = false;
  std::vector<std::string> paths_;
  std::int64_t frame_bytes_;
  ThreadPool pool_;
};

}  // namespace replay
}  // namespace deltairis
