// crafter_probe: prints the native Crafter engine's numerics for requests read on stdin, one reply line
// per request line, so tests/envs/test_crafter_native.py can compare them with Python's numpy, opensimplex
// and Pillow. Doubles travel as %.17g (exact round trip). Requests:
//   episode_seed <seed> <episode>              -> <uint32>
//   legacy_random <seed> <k> <name n>*k        -> k doubles (name: uniform | randint)
//   noise3 <seed> <k> <x y z>*k                -> k doubles
//   pillow_nearest <src> <dst>                 -> dst ints
// A bad request replies "error <message>".
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "envs/crafter/engine.h"
#include "envs/crafter/opensimplex.h"
#include "envs/crafter/random.h"

namespace {

namespace cr = deltairis::crafter;

std::string fmt(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

template <typename T>
T read(std::istringstream& in) {
  T value;
  if (!(in >> value)) throw std::invalid_argument("malformed request");
  return value;
}

std::string legacy_random(std::istringstream& in) {
  cr::LegacyRandom rng(static_cast<std::uint32_t>(read<std::int64_t>(in)));
  const auto k = read<std::int64_t>(in);
  std::string out;
  for (std::int64_t i = 0; i < k; ++i) {
    const auto name = read<std::string>(in);
    const auto n = read<std::int64_t>(in);
    if (name == "uniform") {
      out += fmt(rng.uniform());
    } else if (name == "randint") {
      out += fmt(static_cast<double>(rng.randint(n)));
    } else {
      throw std::invalid_argument("unknown call " + name);
    }
    out += ' ';
  }
  return out;
}

std::string noise3(std::istringstream& in) {
  cr::OpenSimplex3 simplex(read<std::int64_t>(in));
  const auto k = read<std::int64_t>(in);
  std::string out;
  for (std::int64_t i = 0; i < k; ++i) {
    const double x = read<double>(in), y = read<double>(in), z = read<double>(in);
    out += fmt(simplex.noise3(x, y, z)) + ' ';
  }
  return out;
}

std::string answer(const std::string& line) {
  std::istringstream in(line);
  const auto what = read<std::string>(in);
  if (what == "episode_seed") {
    const auto seed = read<std::int64_t>(in);
    return std::to_string(cr::episode_world_seed(seed, read<std::int64_t>(in)));
  }
  if (what == "legacy_random") return legacy_random(in);
  if (what == "noise3") return noise3(in);
  if (what == "pillow_nearest") {
    const int src = read<int>(in);
    std::string out;
    for (int v : cr::pillow_nearest_indices(src, read<int>(in))) out += std::to_string(v) + ' ';
    return out;
  }
  throw std::invalid_argument("unknown request " + what);
}

}  // namespace

int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    try {
      std::cout << answer(line) << '\n';
    } catch (const std::exception& e) {
      std::cout << "error " << e.what() << '\n';
    }
    std::cout.flush();
  }
  return 0;
}
