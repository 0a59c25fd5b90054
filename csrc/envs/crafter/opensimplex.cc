// Transcription of the OpenSimplex noise3 algorithm (Kurt Spencer's construction) as computed by
// opensimplex 0.4.5.1 without numba: same operation order, plain double arithmetic, Python int
// semantics for the lattice coordinates.
#include "envs/crafter/opensimplex.h"

#include <cmath>

namespace deltairis {
namespace crafter {
namespace {

constexpr std::int64_t kGradients3[72] = {
    -11, 4,  4,  -4, 11,  4,  -4, 4,  11,  11, 4,  4,  4,  11,  4,  4,  4,  11,
    -11, -4, 4,  -4, -11, 4,  -4, -4, 11,  11, -4, 4,  4,  -11, 4,  4,  -4, 11,
    -11, 4,  -4, -4, 11,  -4, -4, 4,  -11, 11, 4,  -4, 4,  11,  -4, 4,  4,  -11,
    -11, -4, -4, -4, -11, -4, -4, -4, -11, 11, -4, -4, 4,  -11, -4, 4,  -4, -11,
};
constexpr double kStretch3 = -1.0 / 6;
constexpr double kSquish3 = 1.0 / 3;
constexpr double kNorm3 = 103;

inline std::int64_t lcg(std::int64_t seed) {
  return static_cast<std::int64_t>(static_cast<std::uint64_t>(seed) * 6364136223846793005ULL +
                                   1442695040888963407ULL);
}

}  // namespace

OpenSimplex3::OpenSimplex3(std::int64_t seed) {
  std::array<std::int64_t, 256> source{};
  for (int i = 0; i < 256; ++i) source[i] = i;
  seed = lcg(seed);
  seed = lcg(seed);
  seed = lcg(seed);
  for (int i = 255; i >= 0; --i) {
    seed = lcg(seed);
    // Python computes (seed + 31) % (i + 1) on unbounded ints with floor modulo.
    const __int128 shifted = static_cast<__int128>(seed) + 31;
    __int128 r = shifted % (i + 1);
    if (r < 0) r += i + 1;
    perm_[i] = source[static_cast<int>(r)];
    perm_grad_index3_[i] = (perm_[i] % 24) * 3;
    source[static_cast<int>(r)] = source[i];
  }
}

double OpenSimplex3::extrapolate(std::int64_t xsb, std::int64_t ysb, std::int64_t zsb, double dx,
                                 double dy, double dz) const {
  const std::int64_t index = perm_grad_index3_[(perm_[(perm_[xsb & 0xFF] + ysb) & 0xFF] + zsb) & 0xFF];
  const double g1 = static_cast<double>(kGradients3[index]);
  const double g2 = static_cast<double>(kGradients3[index + 1]);
  const double g3 = static_cast<double>(kGradients3[index + 2]);
  return g1 * dx + g2 * dy + g3 * dz;
}

// Adds one lattice point's contribution: attn = 2 - |d|^2; if attn > 0, value += attn^4 * gradient.d
void OpenSimplex3::contribute(double* value, std::int64_t xsb, std::int64_t ysb, std::int64_t zsb, double dx,
                              double dy, double dz) const {
  double attn = 2 - dx * dx - dy * dy - dz * dz;
  if (attn > 0) {
    attn *= attn;
    *value += attn * attn * extrapolate(xsb, ysb, zsb, dx, dy, dz);
  }
}

// Adds the contribution of lattice point v.
void OpenSimplex3::contribute_at(double* value, const Vertex& v) const {
  contribute(value, v.x, v.y, v.z, v.dx, v.dy, v.dz);
}

// Adds the vertices (1,0,0), (0,1,0), (0,0,1) of the cell, in that order.
void OpenSimplex3::contribute_unit_vertices(const Cell& c, double* value) const {
  contribute_at(value, vertex_at(c, 1, 0, 0, kSquish3));
  contribute_at(value, vertex_at(c, 0, 1, 0, kSquish3));
  contribute_at(value, vertex_at(c, 0, 0, 1, kSquish3));
}

// Adds the vertices (1,1,0), (1,0,1), (0,1,1) of the cell, in that order.
void OpenSimplex3::contribute_pair_vertices(const Cell& c, double* value) const {
  contribute_at(value, vertex_at(c, 1, 1, 0, 2 * kSquish3));
  contribute_at(value, vertex_at(c, 1, 0, 1, 2 * kSquish3));
  contribute_at(value, vertex_at(c, 0, 1, 1, 2 * kSquish3));
}

// Inside the tetrahedron at (0,0,0) (in_sum <= 1): its four vertices, and picks the two extra ones.
void OpenSimplex3::lower_tetrahedron(const Cell& cell, Vertex* ext0, Vertex* ext1, double* value_out) const {
  const std::int64_t xsb = cell.xsb, ysb = cell.ysb, zsb = cell.zsb;
  double dx0 = cell.dx0, dy0 = cell.dy0, dz0 = cell.dz0;
  const double xins = cell.xins, yins = cell.yins, zins = cell.zins;
  const double in_sum = cell.in_sum;
  int a_point = 0x01;
  double a_score = xins;
  int b_point = 0x02;
  double b_score = yins;
  if (a_score >= b_score && zins > b_score) {
    b_score = zins;
    b_point = 0x04;
  } else if (a_score < b_score && zins > a_score) {
    a_score = zins;
    a_point = 0x04;
  }
  const double wins = 1 - in_sum;
  if (wins > a_score || wins > b_score) {
    const int c = (b_score > a_score) ? b_point : a_point;
    if ((c & 0x01) == 0) {
      ext0->x = xsb - 1;
      ext1->x = xsb;
      ext0->dx = dx0 + 1;
      ext1->dx = dx0;
    } else {
      ext0->x = ext1->x = xsb + 1;
      ext0->dx = ext1->dx = dx0 - 1;
    }
    if ((c & 0x02) == 0) {
      ext0->y = ext1->y = ysb;
      ext0->dy = ext1->dy = dy0;
      if ((c & 0x01) == 0) {
        ext1->y -= 1;
        ext1->dy += 1;
      } else {
        ext0->y -= 1;
        ext0->dy += 1;
      }
    } else {
      ext0->y = ext1->y = ysb + 1;
      ext0->dy = ext1->dy = dy0 - 1;
    }
    if ((c & 0x04) == 0) {
      ext0->z = zsb;
      ext1->z = zsb - 1;
      ext0->dz = dz0;
      ext1->dz = dz0 + 1;
    } else {
      ext0->z = ext1->z = zsb + 1;
      ext0->dz = ext1->dz = dz0 - 1;
    }
  } else {
    // Per axis: in c, both at +1; else one at 0 and one at -1.
    const int c = a_point | b_point;
    auto o = [c](int axis, int in, int out) { return (c & axis) != 0 ? in : out; };
    *ext0 = vertex_at(cell, o(0x01, 1, 0), o(0x02, 1, 0), o(0x04, 1, 0), 2 * kSquish3);
    *ext1 = vertex_at(cell, o(0x01, 1, -1), o(0x02, 1, -1), o(0x04, 1, -1), kSquish3);
  }
  contribute(value_out, xsb + 0, ysb + 0, zsb + 0, dx0, dy0, dz0);
  contribute_unit_vertices(cell, value_out);
}

// Inside the tetrahedron at (1,1,1) (in_sum >= 2): its four vertices, and picks the two extra ones.
void OpenSimplex3::upper_tetrahedron(const Cell& cell, Vertex* ext0, Vertex* ext1, double* value_out) const {
  const std::int64_t xsb = cell.xsb, ysb = cell.ysb, zsb = cell.zsb;
  double dx0 = cell.dx0, dy0 = cell.dy0, dz0 = cell.dz0;
  const double xins = cell.xins, yins = cell.yins, zins = cell.zins;
  const double in_sum = cell.in_sum;
  int a_point = 0x06;
  double a_score = xins;
  int b_point = 0x05;
  double b_score = yins;
  if (a_score <= b_score && zins < b_score) {
    b_score = zins;
    b_point = 0x03;
  } else if (a_score > b_score && zins < a_score) {
    a_score = zins;
    a_point = 0x03;
  }
  const double wins = 3 - in_sum;
  if (wins < a_score || wins < b_score) {
    const int c = (b_score < a_score) ? b_point : a_point;
    if ((c & 0x01) != 0) {
      ext0->x = xsb + 2;
      ext1->x = xsb + 1;
      ext0->dx = dx0 - 2 - 3 * kSquish3;
      ext1->dx = dx0 - 1 - 3 * kSquish3;
    } else {
      ext0->x = ext1->x = xsb;
      ext0->dx = ext1->dx = dx0 - 3 * kSquish3;
    }
    if ((c & 0x02) != 0) {
      ext0->y = ext1->y = ysb + 1;
      ext0->dy = ext1->dy = dy0 - 1 - 3 * kSquish3;
      if ((c & 0x01) != 0) {
        ext1->y += 1;
        ext1->dy -= 1;
      } else {
        ext0->y += 1;
        ext0->dy -= 1;
      }
    } else {
      ext0->y = ext1->y = ysb;
      ext0->dy = ext1->dy = dy0 - 3 * kSquish3;
    }
    if ((c & 0x04) != 0) {
      ext0->z = zsb + 1;
      ext1->z = zsb + 2;
      ext0->dz = dz0 - 1 - 3 * kSquish3;
      ext1->dz = dz0 - 2 - 3 * kSquish3;
    } else {
      ext0->z = ext1->z = zsb;
      ext0->dz = ext1->dz = dz0 - 3 * kSquish3;
    }
  } else {
    // Per axis: in c, one at +1 and one at +2; else both at 0.
    const int c = a_point & b_point;
    auto o = [c](int axis, int in) { return (c & axis) != 0 ? in : 0; };
    *ext0 = vertex_at(cell, o(0x01, 1), o(0x02, 1), o(0x04, 1), kSquish3);
    *ext1 = vertex_at(cell, o(0x01, 2), o(0x02, 2), o(0x04, 2), 2 * kSquish3);
  }
  contribute_pair_vertices(cell, value_out);
  contribute_at(value_out, vertex_at(cell, 1, 1, 1, 3 * kSquish3));
}

// The lattice point base + (ox, oy, oz) and the input's offset d0 - o - squish from it.
OpenSimplex3::Vertex OpenSimplex3::vertex_at(const Cell& c, int ox, int oy, int oz, double squish) {
  Vertex v;
  v.x = c.xsb + ox;
  v.y = c.ysb + oy;
  v.z = c.zsb + oz;
  v.dx = c.dx0 - ox - squish;
  v.dy = c.dy0 - oy - squish;
  v.dz = c.dz0 - oz - squish;
  return v;
}

// The octahedron's edge vertex one step back along the first axis missing from `point`.
OpenSimplex3::Vertex OpenSimplex3::edge_vertex(const Cell& c, int point) {
  if ((point & 0x01) == 0) return vertex_at(c, -1, 1, 1, kSquish3);
  if ((point & 0x02) == 0) return vertex_at(c, 1, -1, 1, kSquish3);
  return vertex_at(c, 1, 1, -1, kSquish3);
}

// The vertex two steps along the first axis in `point`.
OpenSimplex3::Vertex OpenSimplex3::far_vertex(const Cell& c, int point) {
  if ((point & 0x01) != 0) return vertex_at(c, 2, 0, 0, 2 * kSquish3);
  if ((point & 0x02) != 0) return vertex_at(c, 0, 2, 0, 2 * kSquish3);
  return vertex_at(c, 0, 0, 2, 2 * kSquish3);
}

// The two closest vertices of the octahedron's (each of x+y, x+z, y+z against 1): their points and
// whether each lies on the far side (sum > 1).
void OpenSimplex3::octahedron_closest(double xins, double yins, double zins, int* a_out, int* b_out, bool* a_further,
                                      bool* b_further) {
  double a_score, b_score;
  int& a_point = *a_out;
  int& b_point = *b_out;
  bool& a_is_further_side = *a_further;
  bool& b_is_further_side = *b_further;
  const double p1 = xins + yins;
  if (p1 > 1) {
    a_score = p1 - 1;
    a_point = 0x03;
    a_is_further_side = true;
  } else {
    a_score = 1 - p1;
    a_point = 0x04;
    a_is_further_side = false;
  }
  const double p2 = xins + zins;
  if (p2 > 1) {
    b_score = p2 - 1;
    b_point = 0x05;
    b_is_further_side = true;
  } else {
    b_score = 1 - p2;
    b_point = 0x02;
    b_is_further_side = false;
  }
  const double p3 = yins + zins;
  if (p3 > 1) {
    const double score = p3 - 1;
    if (a_score <= b_score && a_score < score) {
      a_point = 0x06;
      a_is_further_side = true;
    } else if (a_score > b_score && b_score < score) {
      b_point = 0x06;
      b_is_further_side = true;
    }
  } else {
    const double score = 1 - p3;
    if (a_score <= b_score && a_score < score) {
      a_point = 0x01;
      a_is_further_side = false;
    } else if (a_score > b_score && b_score < score) {
      b_point = 0x01;
      b_is_further_side = false;
    }
  }
}

// Inside the octahedron between them (1 < in_sum < 2): its six vertices, and picks the two extra ones.
void OpenSimplex3::octahedron(const Cell& cell, Vertex* ext0, Vertex* ext1, double* value_out) const {
  const std::int64_t xsb = cell.xsb, ysb = cell.ysb, zsb = cell.zsb;
  double dx0 = cell.dx0, dy0 = cell.dy0, dz0 = cell.dz0;
  const double xins = cell.xins, yins = cell.yins, zins = cell.zins;
  int a_point, b_point;
  bool a_is_further_side, b_is_further_side;
  octahedron_closest(xins, yins, zins, &a_point, &b_point, &a_is_further_side, &b_is_further_side);
  if (a_is_further_side == b_is_further_side) {
    if (a_is_further_side) {
      *ext0 = vertex_at(cell, 1, 1, 1, 3 * kSquish3);
      const int c = a_point & b_point;
      *ext1 = far_vertex(cell, c);
    } else {
      *ext0 = vertex_at(cell, 0, 0, 0, 0.0);
      const int c = a_point | b_point;
      *ext1 = edge_vertex(cell, c);
    }
  } else {
    int c1, c2;
    if (a_is_further_side) {
      c1 = a_point;
      c2 = b_point;
    } else {
      c1 = b_point;
      c2 = a_point;
    }
    *ext0 = edge_vertex(cell, c1);
    ext1->dx = dx0 - 2 * kSquish3;
    ext1->dy = dy0 - 2 * kSquish3;
    ext1->dz = dz0 - 2 * kSquish3;
    ext1->x = xsb;
    ext1->y = ysb;
    ext1->z = zsb;
    if ((c2 & 0x01) != 0) {
      ext1->dx -= 2;
      ext1->x += 2;
    } else if ((c2 & 0x02) != 0) {
      ext1->dy -= 2;
      ext1->y += 2;
    } else {
      ext1->dz -= 2;
      ext1->z += 2;
    }
  }
  contribute_unit_vertices(cell, value_out);
  contribute_pair_vertices(cell, value_out);
}

double OpenSimplex3::noise3(double x, double y, double z) const {
  const double stretch_offset = (x + y + z) * kStretch3;
  const double xs = x + stretch_offset;
  const double ys = y + stretch_offset;
  const double zs = z + stretch_offset;

  const std::int64_t xsb = static_cast<std::int64_t>(std::floor(xs));
  const std::int64_t ysb = static_cast<std::int64_t>(std::floor(ys));
  const std::int64_t zsb = static_cast<std::int64_t>(std::floor(zs));

  const double squish_offset = static_cast<double>(xsb + ysb + zsb) * kSquish3;
  const double xb = static_cast<double>(xsb) + squish_offset;
  const double yb = static_cast<double>(ysb) + squish_offset;
  const double zb = static_cast<double>(zsb) + squish_offset;

  const double xins = xs - static_cast<double>(xsb);
  const double yins = ys - static_cast<double>(ysb);
  const double zins = zs - static_cast<double>(zsb);
  const double in_sum = xins + yins + zins;

  const Cell c{xsb, ysb, zsb, x - xb, y - yb, z - zb, xins, yins, zins, in_sum};
  double value = 0;
  Vertex ext0, ext1;  // the two extra lattice points the region picks
  if (in_sum <= 1) {
    lower_tetrahedron(c, &ext0, &ext1, &value);
  } else if (in_sum >= 2) {
    upper_tetrahedron(c, &ext0, &ext1, &value);
  } else {
    octahedron(c, &ext0, &ext1, &value);
  }
  contribute_at(&value, ext0);
  contribute_at(&value, ext1);
  return value / kNorm3;
}

}  // namespace crafter
}  // namespace deltairis
