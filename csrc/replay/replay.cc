#include "replay/replay.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "core/info.h"
#include "replay/lz4.h"

namespace deltairis {
namespace replay {

namespace {

constexpr std::int64_t kMaxAbsStart = std::int64_t{1} << 60;

[[noreturn]] void invalid(const std::string& what) { throw std::invalid_argument(what); }

// Reads exactly `bytes` bytes at `offset`, retrying short reads; throws on EOF or error.
void pread_all(int fd, const std::string& path, void* dst, std::int64_t bytes, std::int64_t offset) {
  auto* p = static_cast<char*>(dst);
  while (bytes > 0) {
    ssize_t n = ::pread(fd, p, static_cast<std::size_t>(bytes), static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error("replay store: cannot read " + path + ": " + std::strerror(errno));
    }
    if (n == 0) throw std::runtime_error("replay store: " + path + " is shorter than the episode table says");
    p += n;
    bytes -= n;
    offset += n;
  }
}

void check_sizes(const ChunkTable& t) {
  if (t.num_episodes < 0 || t.num_chunks < 0 || t.num_rows < 0) invalid("chunk table: negative size");
  if (t.ep_begin[0] != 0 || t.ep_begin[t.num_episodes] != t.num_chunks)
    invalid("chunk table: ep_chunk_begin must start at 0 and end at the number of chunks");
}

// Checks that the chunks of episode e tile [0, lengths[e]) (run for every episode a gather touches, so
// the cost does not grow with the store).
void check_episode(const ChunkTable& t, std::int64_t e) {
  const std::int64_t b = t.ep_begin[e], end = t.ep_begin[e + 1];
  if (b < 0 || end < b || end > t.num_chunks) invalid("chunk table: ep_chunk_begin must be non-decreasing");
  std::int64_t pos = 0;
  for (std::int64_t c = b; c < end; ++c) {
    if (t.offset[c] != pos || t.len[c] < 1 || t.row[c] < 0 || t.row[c] > t.num_rows - t.len[c])
      invalid("chunk table: chunks of episode " + std::to_string(e) + " do not tile it");
    pos += t.len[c];
  }
  if (pos != t.lengths[e] || pos < 1)
    invalid("chunk table: chunks of episode " + std::to_string(e) + " do not sum to its length");
}

}  // namespace

void sampling_weights(const std::int64_t* counts, std::int64_t n, double alpha, double* out) {
  for (std::int64_t i = 0; i < n; ++i) {
    const double base = 1.0 / (1.0 + static_cast<double>(counts[i]));
    out[i] = std::pow(base, alpha);
  }
}

void sampling_probabilities(const std::int64_t* counts, std::int64_t n, double alpha, double* out) {
  sampling_weights(counts, n, alpha, out);
  double total = 0.0;
  for (std::int64_t i = 0; i < n; ++i) total += out[i];
  for (std::int64_t i = 0; i < n; ++i) out[i] /= total;
}

void draw_segments(const std::int64_t* counts, const std::int64_t* lengths, std::int64_t n, double alpha,
                   const double* u_ep, const double* u_t, const double* u_off, std::int64_t batch,
                   std::int64_t seq_len, PadMode mode, std::int64_t* episode, std::int64_t* start,
                   std::int64_t* stop) {
  if (n < 1) invalid("cannot sample from an empty replay store");
  if (seq_len < 1) invalid("seq_len must be >= 1");
  if (batch < 0) invalid("batch_size must be >= 0");
  if (!(alpha >= 0.0) || !std::isfinite(alpha)) invalid("alpha must be a finite number >= 0");
  if (mode != PadMode::kBoth && mode != PadMode::kLeft) invalid("pad_mode must be 0 (both) or 1 (left)");
  for (std::int64_t i = 0; i < n; ++i)
    if (lengths[i] < 1) invalid("lengths: every episode must hold at least one step");
  std::vector<double> cdf(static_cast<std::size_t>(n));
  sampling_weights(counts, n, alpha, cdf.data());
  for (std::int64_t i = 1; i < n; ++i) cdf[i] += cdf[i - 1];  // left to right, like np.add.accumulate
  const double total = cdf[n - 1];
  for (std::int64_t b = 0; b < batch; ++b) {
    const double target = u_ep[b] * total;
    std::int64_t e = std::upper_bound(cdf.begin(), cdf.end(), target) - cdf.begin();
    if (e > n - 1) e = n - 1;
    const std::int64_t len = lengths[e];
    std::int64_t t = static_cast<std::int64_t>(std::floor(u_t[b] * static_cast<double>(len)));
    if (t > len - 1) t = len - 1;
    std::int64_t k = static_cast<std::int64_t>(std::floor(u_off[b] * static_cast<double>(seq_len)));
    if (k > seq_len - 1) k = seq_len - 1;
    episode[b] = e;
    if (mode == PadMode::kBoth) {
      start[b] = t - k;
      stop[b] = start[b] + seq_len;
    } else {
      stop[b] = std::min(len, t + 1 + k);
      start[b] = stop[b] - seq_len;
    }
  }
}

void add_counts(std::int64_t* counts, std::int64_t n, const std::int64_t* episode, std::int64_t batch) {
  for (std::int64_t b = 0; b < batch; ++b)
    if (episode[b] < 0 || episode[b] >= n)
      invalid("episode id " + std::to_string(episode[b]) + " out of range");
  for (std::int64_t b = 0; b < batch; ++b) ++counts[episode[b]];
}

Reader::Reader(const std::vector<std::string>& paths, std::int64_t frame_bytes, int num_threads)
    : paths_(paths), frame_bytes_(frame_bytes), pool_(resolve_num_threads(num_threads)) {
  if (paths.size() != 5 && paths.size() != 6)
    invalid("ReplayReader needs 5 paths (obs, act, rew, end, trunc) or 6 (and the frames' block table)");
  compressed_ = paths.size() == 6;
  if (frame_bytes < 1) invalid("frame_bytes must be >= 1");
  for (const auto& p : paths) {
    int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      const std::string msg = "replay store: cannot open " + p + ": " + std::strerror(errno);
      for (int f : fds_) ::close(f);
      throw std::runtime_error(msg);
    }
    fds_.push_back(fd);
  }
}

Reader::~Reader() {
  unmap();
  for (int fd : fds_) ::close(fd);
}

void Reader::unmap() {
  for (std::size_t i = 0; i < maps_.size(); ++i)
    if (maps_[i] != nullptr) ::munmap(maps_[i], map_bytes_[i]);
  maps_.clear();
  map_bytes_.clear();
  mapped_rows_ = 0;
  mapped_blocks_ = 0;
}

void Reader::ensure_mapped(std::int64_t num_rows, std::int64_t num_blocks) {
  if (num_rows <= mapped_rows_ && num_blocks <= mapped_blocks_) return;
  unmap();
  static constexpr std::int64_t kItem[6] = {0, 8, 4, 1, 1, 32};  // the block table: 4 int64 a row
  const int files = compressed_ ? 6 : 5;
  std::int64_t rows = INT64_MAX;  // rows readable in every file (>= num_rows)
  std::int64_t blocks = 0;
  std::vector<void*> maps(files, nullptr);
  std::vector<std::size_t> bytes(files, 0);
  auto fail = [&](const std::string& msg) {
    for (std::size_t i = 0; i < maps.size(); ++i)
      if (maps[i] != nullptr) ::munmap(maps[i], bytes[i]);
    throw std::runtime_error(msg);
  };
  for (int i = 1; i < files; ++i) {
    struct stat st;
    if (::fstat(fds_[i], &st) != 0)
      fail("replay store: cannot stat " + paths_[i] + ": " + std::strerror(errno));
    const std::int64_t file_rows = static_cast<std::int64_t>(st.st_size) / kItem[i];
    const std::int64_t need = i == 5 ? num_blocks : num_rows;
    if (file_rows < need) fail("replay store: " + paths_[i] + " is shorter than the episode table says");
    if (i == 5 && file_rows == 0) continue;  // an empty block table: nothing to map
    if (i == 5)
      blocks = file_rows;
    else
      rows = std::min(rows, file_rows);
    bytes[i] = static_cast<std::size_t>(file_rows * kItem[i]);
    void* p = ::mmap(nullptr, bytes[i], PROT_READ, MAP_SHARED, fds_[i], 0);
    if (p == MAP_FAILED) {
      maps[i] = nullptr;
      fail("replay store: cannot map " + paths_[i] + ": " + std::strerror(errno));
    }
    maps[i] = p;
  }
  maps_ = maps;
  map_bytes_ = bytes;
  mapped_rows_ = rows;
  mapped_blocks_ = blocks;
}

void Reader::read_compressed(std::int64_t row, std::int64_t count, std::int64_t num_blocks,
                             std::uint8_t* obs) const {
  const std::int64_t* table = static_cast<const std::int64_t*>(maps_[5]);
  // The last block whose first row is <= row (rows of the table are in file order).
  std::int64_t lo = 0, hi = num_blocks;
  while (hi - lo > 1) {
    const std::int64_t mid = lo + (hi - lo) / 2;
    if (table[4 * mid] <= row) lo = mid; else hi = mid;
  }
  // The blocks holding the rows are consecutive in the table and in the file: one read for all of them.
  std::int64_t last = lo;
  while (last + 1 < num_blocks && table[4 * (last + 1)] < row + count) ++last;
  const std::int64_t begin = table[4 * lo + 2];
  const std::int64_t span = table[4 * last + 2] + table[4 * last + 3] - begin;
  if (span < 1 || span > (last - lo + 1) * (frame_bytes_ * 8 + (frame_bytes_ * 8) / 255 + 64))
    throw std::runtime_error("replay store: the block table " + paths_[5] + " is inconsistent");
  thread_local std::vector<std::uint8_t> packed, frames;
  packed.resize(static_cast<std::size_t>(span));
  pread_all(fds_[0], paths_[0], packed.data(), span, begin);
  const std::int64_t fb = frame_bytes_;
  for (std::int64_t k = lo, pos = row; pos < row + count; ++k) {
    if (k > last) throw std::runtime_error("replay store: " + paths_[5] + " holds fewer blocks than the rows");
    const std::int64_t first = table[4 * k], n = table[4 * k + 1], offset = table[4 * k + 2], size = table[4 * k + 3];
    if (n < 1 || size < 1 || first > pos || first + n <= pos || offset < begin || offset + size > begin + span)
      throw std::runtime_error("replay store: the block table " + paths_[5] + " is inconsistent");
    const std::int64_t take = std::min(first + n, row + count) - pos;
    std::uint8_t* out = obs + (pos - row) * fb;
    std::uint8_t* target = out;
    if (first != pos || take != n) {  // the segment holds part of the block: decode aside, copy the part
      frames.resize(static_cast<std::size_t>(n * fb));
      target = frames.data();
    }
    // a block the segment ends in is decoded only up to the segment's last frame
    const bool ok = target == out ? lz4_decode_block(packed.data() + (offset - begin), size, target, n * fb)
                                  : lz4_decode_block_prefix(packed.data() + (offset - begin), size, target, n * fb,
                                                            (pos - first + take) * fb);
    if (!ok)
      throw std::runtime_error("replay store: a compressed frame block of " + paths_[0] + " does not decode (at byte " +
                               std::to_string(offset) + ")");
    if (target != out) std::memcpy(out, target + (pos - first) * fb, static_cast<std::size_t>(take * fb));
    pos += take;
  }
}

void Reader::read_rows(std::int64_t row, std::int64_t count, std::int64_t num_blocks, std::uint8_t* obs,
                       std::int64_t* act, float* rew, std::uint8_t* end, std::uint8_t* trunc) const {
  if (compressed_)
    read_compressed(row, count, num_blocks, obs);
  else
    pread_all(fds_[0], paths_[0], obs, count * frame_bytes_, row * frame_bytes_);
  std::memcpy(act, static_cast<const std::int64_t*>(maps_[1]) + row, static_cast<std::size_t>(count) * 8);
  std::memcpy(rew, static_cast<const float*>(maps_[2]) + row, static_cast<std::size_t>(count) * 4);
  std::memcpy(end, static_cast<const std::uint8_t*>(maps_[3]) + row, static_cast<std::size_t>(count));
  std::memcpy(trunc, static_cast<const std::uint8_t*>(maps_[4]) + row, static_cast<std::size_t>(count));
}

void Reader::gather(const ChunkTable& table, const std::int64_t* episode, const std::int64_t* start,
                    std::int64_t batch, std::int64_t seq_len, const GatherOutputs& out) {
  if (seq_len < 1) invalid("seq_len must be >= 1");
  check_sizes(table);
  for (std::int64_t b = 0; b < batch; ++b) {
    if (episode[b] < 0 || episode[b] >= table.num_episodes)
      invalid("episode_id " + std::to_string(episode[b]) + " is not in the store");
    if (start[b] <= -kMaxAbsStart || start[b] >= kMaxAbsStart) invalid("start is out of range");
    check_episode(table, episode[b]);
  }
  if (compressed_ && table.num_rows > 0 && table.num_blocks < 1) invalid("num_blocks must be >= 1 for compressed frames");
  if (batch > 0) ensure_mapped(table.num_rows, compressed_ ? table.num_blocks : 0);
  const std::int64_t fb = frame_bytes_;
  pool_.parallel_for(static_cast<std::size_t>(batch), [&](std::size_t bi) {
    const std::int64_t b = static_cast<std::int64_t>(bi);
    const std::int64_t e = episode[b], s = start[b], len = table.lengths[e];
    const std::int64_t lo = std::max<std::int64_t>(s, 0);
    const std::int64_t hi = std::min<std::int64_t>(s + seq_len, len);
    std::uint8_t* obs = out.obs + b * seq_len * fb;
    std::int64_t* act = out.act + b * seq_len;
    float* rew = out.rew + b * seq_len;
    std::uint8_t* end = out.end + b * seq_len;
    std::uint8_t* trunc = out.trunc + b * seq_len;
    bool* mask = out.mask + b * seq_len;
    // Positions [first, last) of the segment are real steps; the rest is padding.
    const std::int64_t first = hi > lo ? lo - s : seq_len;
    const std::int64_t last = hi > lo ? hi - s : seq_len;
    auto zero = [&](std::int64_t from, std::int64_t to) {
      if (to <= from) return;
      const std::int64_t n = to - from;
      std::memset(obs + from * fb, 0, static_cast<std::size_t>(n * fb));
      std::memset(act + from, 0, static_cast<std::size_t>(n) * sizeof(std::int64_t));
      std::memset(rew + from, 0, static_cast<std::size_t>(n) * sizeof(float));
      std::memset(end + from, 0, static_cast<std::size_t>(n));
      std::memset(trunc + from, 0, static_cast<std::size_t>(n));
      std::fill(mask + from, mask + to, false);
    };
    zero(0, first);
    zero(last, seq_len);
    if (hi <= lo) return;
    std::fill(mask + first, mask + last, true);
    // First chunk holding step lo: the last chunk of the episode whose offset is <= lo.
    const std::int64_t* cb = table.offset + table.ep_begin[e];
    const std::int64_t* ce = table.offset + table.ep_begin[e + 1];
    std::int64_t c = (std::upper_bound(cb, ce, lo) - table.offset) - 1;
    for (std::int64_t pos = lo; pos < hi; ++c) {
      const std::int64_t chunk_end = table.offset[c] + table.len[c];
      const std::int64_t n = std::min(hi, chunk_end) - pos;
      const std::int64_t j = pos - s;
      read_rows(table.row[c] + (pos - table.offset[c]), n, table.num_blocks, obs + j * fb, act + j, rew + j,
                end + j, trunc + j);
      pos += n;
    }
  });
}

}  // namespace replay
}  // namespace deltairis
