// numpy legacy RandomState (MT19937) draws and CPython's tuple hash, as used by crafter 1.8.3.
#pragma once

#include <cstdint>
#include <random>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace deltairis {
namespace crafter {

// The subset of numpy.random.RandomState that crafter uses, with numpy's legacy formulas.
class LegacyRandom {
 public:
  explicit LegacyRandom(std::uint32_t seed = 0) : mt_(seed) {}

  // RandomState(seed): init_genrand(seed), identical to std::mt19937's seeding.
  void seed(std::uint32_t seed) { mt_.seed(seed); }

  std::uint32_t next_u32() { return static_cast<std::uint32_t>(mt_()); }

  // Sets the generator to numpy's RandomState.get_state(): 624 key words and the next index (test hook;
  // uses the libstdc++ text format "x[0] ... x[623] index").
  void set_state(const std::vector<std::uint32_t>& key, int pos) {
    if (key.size() != 624 || pos < 0 || pos > 624) throw std::invalid_argument("MT19937 state: bad key or pos");
    std::stringstream ss;
    for (std::uint32_t word : key) ss << word << ' ';
    ss << pos;
    ss >> mt_;
    if (ss.fail()) throw std::invalid_argument("MT19937 state: rejected");
  }

  // The generator's complete state in the same form (624 key words and the next index), for exact saves.
  void get_state(std::vector<std::uint32_t>* key, int* pos) const {
    std::stringstream ss;
    ss << mt_;
    key->assign(624, 0);
    for (std::uint32_t& word : *key) ss >> word;
    ss >> *pos;
    if (ss.fail()) throw std::logic_error("MT19937 state: unexpected text form");
  }

  // RandomState.uniform(): a 53-bit double from two 32-bit words.
  double uniform() {
    const std::int32_t a = static_cast<std::int32_t>(next_u32() >> 5);
    const std::int32_t b = static_cast<std::int32_t>(next_u32() >> 6);
    return (a * 67108864.0 + b) / 9007199254740992.0;
  }

  // RandomState.uniform(lo, hi): lo + (hi - lo) * u.
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

  // RandomState.randint(0, n) for 1 <= n <= 2**32: masked rejection sampling on 32-bit words.
  std::int64_t randint(std::int64_t n) {
    if (n <= 0 || n > (std::int64_t{1} << 32)) throw std::invalid_argument("randint: n out of range");
    const std::uint32_t rng = static_cast<std::uint32_t>(n - 1);
    if (rng == 0) return 0;
    if (rng == 0xFFFFFFFFu) return next_u32();
    std::uint32_t mask = rng;
    mask |= mask >> 1;
    mask |= mask >> 2;
    mask |= mask >> 4;
    mask |= mask >> 8;
    mask |= mask >> 16;
    std::uint32_t value;
    while ((value = (next_u32() & mask)) > rng) {
    }
    return value;
  }

 private:
  std::mt19937 mt_;
};

// CPython's hash() of an int (64-bit build): value modulo 2**61 - 1 keeping the sign, -1 -> -2.
inline std::int64_t python_int_hash(std::int64_t value) {
  constexpr std::uint64_t kModulus = (std::uint64_t{1} << 61) - 1;
  const bool negative = value < 0;
  const std::uint64_t magnitude =
      negative ? static_cast<std::uint64_t>(0) - static_cast<std::uint64_t>(value) : static_cast<std::uint64_t>(value);
  std::int64_t h = static_cast<std::int64_t>(magnitude % kModulus);
  if (negative) h = -h;
  if (h == -1) h = -2;
  return h;
}

// CPython 3.8+ hash((a, b)) for two ints (the xxHash-style tuple hash of a 64-bit build).
inline std::int64_t python_pair_hash(std::int64_t a, std::int64_t b) {
  constexpr std::uint64_t kPrime1 = 11400714785074694791ULL;
  constexpr std::uint64_t kPrime2 = 14029467366897019727ULL;
  constexpr std::uint64_t kPrime5 = 2870177450012600261ULL;
  std::uint64_t acc = kPrime5;
  for (std::int64_t item : {a, b}) {
    const std::uint64_t lane = static_cast<std::uint64_t>(python_int_hash(item));
    acc += lane * kPrime2;
    acc = (acc << 31) | (acc >> 33);
    acc *= kPrime1;
  }
  acc += std::uint64_t{2} ^ (kPrime5 ^ 3527539ULL);
  if (acc == static_cast<std::uint64_t>(-1)) return 1546275796;
  return static_cast<std::int64_t>(acc);
}

// crafter.Env's world seed of an episode: hash((seed, episode)) % (2**31 - 1), Python floor modulo.
inline std::uint32_t episode_world_seed(std::int64_t seed, std::int64_t episode) {
  constexpr std::int64_t kModulus = 2147483647;
  std::int64_t r = python_pair_hash(seed, episode) % kModulus;
  if (r < 0) r += kModulus;
  return static_cast<std::uint32_t>(r);
}

}  // namespace crafter
}  // namespace deltairis
