// Unit tests of the replay sampler and reader (replay.h), each against a straightforward restatement.
#include "replay/replay.h"

#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "testing/check.h"

namespace deltairis {
namespace replay {
namespace {

using I64 = std::int64_t;

std::vector<double> weights_of(const std::vector<I64>& counts, double alpha) {
  std::vector<double> out(counts.size());
  sampling_weights(counts.data(), static_cast<I64>(counts.size()), alpha, out.data());
  return out;
}

TEST(Sampling, WeightsAreInverseCountsToTheAlpha) {
  const std::vector<I64> counts = {0, 1, 2, 3, 10, 1000};
  for (double alpha : {0.0, 0.5, 1.0, 2.0}) {
    const auto w = weights_of(counts, alpha);
    for (std::size_t i = 0; i < counts.size(); ++i) {
      CHECK(testing::same_bits(w[i], std::pow(1.0 / (1.0 + static_cast<double>(counts[i])), alpha)));
    }
  }
  for (double v : weights_of(counts, 0.0)) CHECK_EQ(v, 1.0);
}

TEST(Sampling, ProbabilitiesAreWeightsOverTheirLeftToRightSum) {
  const std::vector<I64> counts = {4, 0, 7, 1, 1};
  std::vector<double> p(counts.size());
  sampling_probabilities(counts.data(), static_cast<I64>(counts.size()), 0.7, p.data());
  const auto w = weights_of(counts, 0.7);
  double total = 0.0, sum = 0.0;
  for (double v : w) total += v;
  for (std::size_t i = 0; i < p.size(); ++i) {
    CHECK(testing::same_bits(p[i], w[i] / total));
    sum += p[i];
  }
  CHECK_LT(std::fabs(sum - 1.0), 1e-12);
}

struct Segments {
  std::vector<I64> episode, start, stop;
};

Segments draw(const std::vector<I64>& counts, const std::vector<I64>& lengths, double alpha,
              const std::vector<double>& u, I64 seq_len, PadMode mode) {
  const I64 b = static_cast<I64>(u.size() / 3);
  Segments s{std::vector<I64>(b), std::vector<I64>(b), std::vector<I64>(b)};
  draw_segments(counts.data(), lengths.data(), static_cast<I64>(lengths.size()), alpha, u.data(), u.data() + b,
                u.data() + 2 * b, b, seq_len, mode, s.episode.data(), s.start.data(), s.stop.data());
  return s;
}

TEST(Sampling, DrawSegmentsMatchesARestatement) {
  std::mt19937_64 gen(7);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  const std::vector<I64> lengths = {1, 5, 17, 3, 40, 2};
  const std::vector<I64> counts = {0, 3, 1, 8, 0, 2};
  const I64 batch = 500, seq_len = 6;
  std::vector<double> u(3 * batch);
  for (auto& v : u) v = unit(gen);
  u[0] = 0.0, u[batch] = 0.0, u[2 * batch] = 0.0;                                   // lowest draw
  u[1] = std::nextafter(1.0, 0.0), u[batch + 1] = u[1], u[2 * batch + 1] = u[1];  // highest draw
  const std::vector<double> w = weights_of(counts, 0.5);
  for (PadMode mode : {PadMode::kBoth, PadMode::kLeft}) {
    const Segments s = draw(counts, lengths, 0.5, u, seq_len, mode);
    for (I64 b = 0; b < batch; ++b) {
      // Episode: the first whose running weight sum exceeds u * total.
      double total = 0.0;
      for (double v : w) total += v;
      const double target = u[b] * total;
      I64 e = 0;
      double acc = w[0];
      while (e + 1 < static_cast<I64>(w.size()) && !(acc > target)) acc += w[++e];
      const I64 len = lengths[e];
      const I64 t = std::min<I64>(static_cast<I64>(std::floor(u[batch + b] * len)), len - 1);
      const I64 k = std::min<I64>(static_cast<I64>(std::floor(u[2 * batch + b] * seq_len)), seq_len - 1);
      CHECK_EQ(s.episode[b], e);
      CHECK_EQ(s.stop[b] - s.start[b], seq_len);
      if (mode == PadMode::kBoth) {
        CHECK_EQ(s.start[b], t - k);  // step t sits at position k; both sides may be padding
        CHECK_GE(s.start[b], 1 - seq_len);
        CHECK_LE(s.start[b], len - 1);
      } else {
        CHECK_EQ(s.stop[b], std::min(len, t + 1 + k));  // padding only on the left
        CHECK_LE(s.stop[b], len);
        CHECK_GE(s.stop[b], 1);
      }
    }
  }
}

TEST(Sampling, DrawSegmentsRejectsBadArguments) {
  const std::vector<I64> lengths = {3, 4}, counts = {0, 0};
  const std::vector<double> u(6, 0.5);
  CHECK_THROWS(draw(counts, lengths, 1.0, u, 0, PadMode::kBoth), std::invalid_argument, "seq_len must be >= 1");
  CHECK_THROWS(draw({}, {}, 1.0, u, 3, PadMode::kBoth), std::invalid_argument, "empty replay store");
  CHECK_THROWS(draw(counts, lengths, -1.0, u, 3, PadMode::kBoth), std::invalid_argument, "alpha");
  CHECK_THROWS(draw(counts, lengths, 1.0, u, 3, static_cast<PadMode>(2)), std::invalid_argument, "pad_mode");
  CHECK_THROWS(draw(counts, {3, 0}, 1.0, u, 3, PadMode::kLeft), std::invalid_argument, "at least one step");
}

TEST(Sampling, AddCountsChecksEveryIdFirst) {
  std::vector<I64> counts = {0, 0, 0};
  const std::vector<I64> ids = {2, 0, 2};
  add_counts(counts.data(), 3, ids.data(), 3);
  CHECK_EQ(counts, (std::vector<I64>{1, 0, 2}));
  const std::vector<I64> bad = {1, 5};
  CHECK_THROWS(add_counts(counts.data(), 3, bad.data(), 2), std::invalid_argument, "episode id 5 out of range");
  CHECK_EQ(counts, (std::vector<I64>{1, 0, 2}));  // nothing moved
}

// A replay store on disk: rows r of the five files hold obs bytes (r*7 + j) & 255, act 100 + r,
// rew 0.5 * r, end r % 2, trunc r % 3 == 0.
struct Store {
  static constexpr I64 kFrame = 3;
  std::string dir;
  std::vector<std::string> paths;
  I64 rows;

  explicit Store(I64 num_rows) : rows(num_rows) {
    char tmpl[] = "/tmp/deltairis_replay_test_XXXXXX";
    dir = mkdtemp(tmpl);
    for (const char* name : {"obs", "act", "rew", "end", "trunc"}) paths.push_back(dir + "/" + name);
    std::vector<std::uint8_t> obs, end, trunc;
    std::vector<I64> act;
    std::vector<float> rew;
    for (I64 r = 0; r < rows; ++r) {
      for (I64 j = 0; j < kFrame; ++j) obs.push_back(static_cast<std::uint8_t>((r * 7 + j) & 255));
      act.push_back(100 + r);
      rew.push_back(0.5f * static_cast<float>(r));
      end.push_back(static_cast<std::uint8_t>(r % 2));
      trunc.push_back(static_cast<std::uint8_t>(r % 3 == 0));
    }
    write(paths[0], obs.data(), obs.size());
    write(paths[1], act.data(), act.size() * 8);
    write(paths[2], rew.data(), rew.size() * 4);
    write(paths[3], end.data(), end.size());
    write(paths[4], trunc.data(), trunc.size());
  }
  ~Store() {
    for (const auto& p : paths) std::remove(p.c_str());
    ::rmdir(dir.c_str());
  }
  static void write(const std::string& path, const void* data, std::size_t bytes) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    std::fwrite(data, 1, bytes, f);
    std::fclose(f);
  }
};

// Episode 0: 5 steps in chunks at rows [10, 13) and [2, 4); episode 1: 4 steps at rows [20, 24).
struct Table {
  std::vector<I64> lengths = {5, 4}, ep_begin = {0, 2, 3}, offset = {0, 3, 0}, row = {10, 2, 20}, len = {3, 2, 4};
  ChunkTable view(I64 num_rows) const {
    ChunkTable t;
    t.num_episodes = 2;
    t.num_chunks = 3;
    t.num_rows = num_rows;
    t.lengths = lengths.data();
    t.ep_begin = ep_begin.data();
    t.offset = offset.data();
    t.row = row.data();
    t.len = len.data();
    return t;
  }
  // File row of step i of episode e (a restatement of the chunk lookup).
  I64 row_of(I64 e, I64 i) const {
    for (I64 c = ep_begin[e]; c < ep_begin[e + 1]; ++c)
      if (i >= offset[c] && i < offset[c] + len[c]) return row[c] + i - offset[c];
    return -1;
  }
};

struct Gathered {
  std::vector<std::uint8_t> obs, end, trunc;
  std::vector<I64> act;
  std::vector<float> rew;
  std::unique_ptr<bool[]> mask;
  GatherOutputs out;
  Gathered(I64 batch, I64 seq_len)
      : obs(batch * seq_len * Store::kFrame, 9), end(batch * seq_len, 9), trunc(batch * seq_len, 9),
        act(batch * seq_len, 9), rew(batch * seq_len, 9.0f), mask(new bool[batch * seq_len]) {
    for (I64 i = 0; i < batch * seq_len; ++i) mask[i] = true;
    out = {obs.data(), act.data(), rew.data(), end.data(), trunc.data(), mask.get()};
  }
};

TEST(Reader, GatherCopiesChunksAndZeroesPadding) {
  Store store(30);
  Table table;
  const std::vector<I64> episode = {0, 0, 1, 1, 0, 1};
  const std::vector<I64> start = {0, -2, 1, 3, 2, -10};  // whole, left pad, inside, right pad, across chunks, none
  const I64 batch = 6, seq_len = 4;
  for (int threads : {1, 3}) {
    Reader reader(store.paths, Store::kFrame, threads);
    CHECK_EQ(reader.num_threads(), threads);
    Gathered g(batch, seq_len);
    reader.gather(table.view(store.rows), episode.data(), start.data(), batch, seq_len, g.out);
    for (I64 b = 0; b < batch; ++b) {
      for (I64 j = 0; j < seq_len; ++j) {
        const I64 i = start[b] + j, at = b * seq_len + j;
        const bool real = i >= 0 && i < table.lengths[episode[b]];
        const I64 r = real ? table.row_of(episode[b], i) : 0;
        CHECK_EQ(g.mask[at], real);
        CHECK_EQ(g.act[at], real ? 100 + r : 0);
        CHECK_EQ(g.rew[at], real ? 0.5f * static_cast<float>(r) : 0.0f);
        CHECK_EQ(g.end[at], real ? static_cast<std::uint8_t>(r % 2) : std::uint8_t{0});
        CHECK_EQ(g.trunc[at], real ? static_cast<std::uint8_t>(r % 3 == 0) : std::uint8_t{0});
        for (I64 k = 0; k < Store::kFrame; ++k) {
          CHECK_EQ(g.obs[at * Store::kFrame + k], real ? static_cast<std::uint8_t>((r * 7 + k) & 255) : std::uint8_t{0});
        }
      }
    }
  }
}

TEST(Reader, GatherRejectsBadTablesAndIds) {
  Store store(30);
  Table table;
  Reader reader(store.paths, Store::kFrame, 2);
  Gathered g(1, 3);
  const I64 zero = 0, two = 2;
  CHECK_THROWS(reader.gather(table.view(store.rows), &two, &zero, 1, 3, g.out), std::invalid_argument,
               "episode_id 2 is not in the store");
  CHECK_THROWS(reader.gather(table.view(store.rows), &zero, &zero, 1, 0, g.out), std::invalid_argument,
               "seq_len must be >= 1");
  CHECK_THROWS(reader.gather(table.view(12), &zero, &zero, 1, 3, g.out), std::invalid_argument,
               "chunks of episode 0 do not tile it");  // row 10 + 3 lies past 12 rows
  Table bad = table;
  bad.offset[1] = 2;
  CHECK_THROWS(reader.gather(bad.view(store.rows), &zero, &zero, 1, 3, g.out), std::invalid_argument,
               "do not tile it");
  CHECK_THROWS(reader.gather(table.view(-1), &zero, &zero, 1, 3, g.out), std::invalid_argument, "negative size");
  CHECK_THROWS(reader.gather(table.view(40), &zero, &zero, 1, 3, g.out), std::runtime_error,
               "shorter than the episode table says");
}

TEST(Reader, ConstructorChecksPaths) {
  Store store(4);
  std::vector<std::string> missing(5, store.dir + "/nope");
  CHECK_THROWS(Reader(missing, 3, 1), std::runtime_error, "cannot open");
  CHECK_THROWS(Reader({store.paths[0]}, 3, 1), std::invalid_argument, "needs 5 paths");
  CHECK_THROWS(Reader(store.paths, 0, 1), std::invalid_argument, "frame_bytes must be >= 1");
}

}  // namespace
}  // namespace replay
}  // namespace deltairis

TEST_MAIN()
