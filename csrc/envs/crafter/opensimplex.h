// OpenSimplex 3-D noise reproducing the pure-Python opensimplex 0.4.5.1 (seeding and noise3) bit for bit.
#pragma once

#include <array>
#include <cstdint>

namespace deltairis {
namespace crafter {

class OpenSimplex3 {
 public:
  // Builds the permutation tables from a (Python int) seed that fits in int64.
  explicit OpenSimplex3(std::int64_t seed = 0);

  // noise3(x, y, z) in [-1, 1].
  double noise3(double x, double y, double z) const;

 private:
  double extrapolate(std::int64_t xsb, std::int64_t ysb, std::int64_t zsb, double dx, double dy,
                     double dz) const;

  std::array<std::int64_t, 256> perm_{};
  std::array<std::int64_t, 256> perm_grad_index3_{};
};

}  // namespace crafter
}  // namespace deltairis
