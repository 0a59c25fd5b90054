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
  // The lattice cell of a point: its base corner (xsb, ysb, zsb), the offset d0 from it, and its position
  // inside the unit cube (xins, yins, zins; in_sum = their sum) in stretched space.
  struct Cell {
    std::int64_t xsb, ysb, zsb;
    double dx0, dy0, dz0;
    double xins, yins, zins, in_sum;
  };
  // A lattice point and the offset of the input point from it.
  struct Vertex {
    std::int64_t x = 0, y = 0, z = 0;
    double dx = 0, dy = 0, dz = 0;
  };
  static Vertex vertex_at(const Cell& c, int ox, int oy, int oz, double squish);
  static Vertex edge_vertex(const Cell& c, int point);
  static Vertex far_vertex(const Cell& c, int point);
  void contribute_at(double* value, const Vertex& v) const;
  void contribute_unit_vertices(const Cell& c, double* value) const;
  void contribute_pair_vertices(const Cell& c, double* value) const;
  void lower_tetrahedron(const Cell& c, Vertex* ext0, Vertex* ext1, double* value_out) const;
  void upper_tetrahedron(const Cell& c, Vertex* ext0, Vertex* ext1, double* value_out) const;
  static void octahedron_closest(double xins, double yins, double zins, int* a_out, int* b_out, bool* a_further,
                                 bool* b_further);
  void octahedron(const Cell& c, Vertex* ext0, Vertex* ext1, double* value_out) const;
  void contribute(double* value, std::int64_t xsb, std::int64_t ysb, std::int64_t zsb, double dx, double dy,
                  double dz) const;
  double extrapolate(std::int64_t xsb, std::int64_t ysb, std::int64_t zsb, double dx, double dy,
                     double dz) const;

  std::array<std::int64_t, 256> perm_{};
  std::array<std::int64_t, 256> perm_grad_index3_{};
};

}  // namespace crafter
}  // namespace deltairis
