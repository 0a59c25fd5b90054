// Native Crafter engine (see engine.h), part 5 of 5: rendering (local view, daylight, item view) and
// the semantic map.
// Every floating-point expression mirrors the operation order of the Python package (numpy float64 /
// float32, Pillow float32) so results agree bit for bit; the library is compiled with -ffp-contract=off.
#include "envs/crafter/engine.h"

#include <algorithm>

namespace deltairis {
namespace crafter {
namespace {

inline std::uint8_t luma(const std::uint8_t* rgb) {
  return static_cast<std::uint8_t>((rgb[0] * 19595u + rgb[1] * 38470u + rgb[2] * 7471u + 0x8000u) >> 16);
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Env: rendering and views
// ------------------------------------------------------------------------------------------------

const CanvasTexture* Env::object_texture(const Obj& obj) const {
  switch (obj.kind) {
    case ObjKind::kPlayer:
      if (sleeping_) return a_.object_tex_[4];
      if (obj.fx == -1) return a_.object_tex_[0];
      if (obj.fx == 1) return a_.object_tex_[1];
      if (obj.fy == -1) return a_.object_tex_[2];
      return a_.object_tex_[3];
    case ObjKind::kCow: return a_.object_tex_[5];
    case ObjKind::kZombie: return a_.object_tex_[6];
    case ObjKind::kSkeleton: return a_.object_tex_[7];
    case ObjKind::kArrow:
      if (obj.fx == -1) return a_.object_tex_[8];
      if (obj.fx == 1) return a_.object_tex_[9];
      if (obj.fy == -1) return a_.object_tex_[10];
      return a_.object_tex_[11];
    case ObjKind::kPlant: return obj.grown > 300 ? a_.object_tex_[13] : a_.object_tex_[12];
    case ObjKind::kFence: return a_.object_tex_[14];
  }
  return a_.object_tex_[14];
}

namespace {

// crafter.engine._draw / _draw_alpha onto an x-major (width, height, 3) canvas, clipped like numpy
// slicing at the canvas's far edges.
void draw_texture(std::uint8_t* canvas, int cw, int ch, int x0, int y0, const CanvasTexture& tex, bool alpha) {
  const int x1 = std::min(x0 + tex.w, cw), y1 = std::min(y0 + tex.h, ch);
  for (int x = std::max(x0, 0); x < x1; ++x) {
    for (int y = std::max(y0, 0); y < y1; ++y) {
      const std::uint8_t* src = &tex.pixels[(static_cast<std::size_t>(x - x0) * tex.h + (y - y0)) * tex.channels];
      std::uint8_t* dst = &canvas[(static_cast<std::size_t>(x) * ch + y) * 3];
      if (alpha && tex.channels == 4) {
        const float a = static_cast<float>(src[3]) / 255;
        for (int k = 0; k < 3; ++k) {
          const float t = static_cast<float>(src[k]) / 255;
          const float c = static_cast<float>(dst[k]) / 255;
          const float blended = a * t + (1 - a) * c;
          dst[k] = static_cast<std::uint8_t>(255 * blended);
        }
      } else {
        dst[0] = src[0];
        dst[1] = src[1];
        dst[2] = src[2];
      }
    }
  }
}

// LocalView._light then _sleep for one pixel: c is the canvas colour, n1 its noised version (c itself in
// daylight).
void light_pixel(const std::uint8_t* c, const std::uint8_t* n1, double daylight, double one_minus_day, bool sleeping,
                 std::uint8_t* dst) {
  static constexpr double kNightTint[3] = {0, 16, 64};
  static constexpr double kSleepTint[3] = {0, 0, 16};
  const int grey = luma(n1);
  double out[3];
  for (int k = 0; k < 3; ++k) {
    const float blended = static_cast<float>(grey) + 0.4f * static_cast<float>(static_cast<int>(n1[k]) - grey);
    const std::uint8_t n2 = static_cast<std::uint8_t>(blended);
    const double night = 0.5 * n2 + 0.5 * kNightTint[k];
    out[k] = daylight * c[k] + one_minus_day * night;
  }
  if (sleeping) {
    std::uint8_t s[3];
    for (int k = 0; k < 3; ++k) s[k] = static_cast<std::uint8_t>(out[k]);
    const int g = luma(s);
    for (int k = 0; k < 3; ++k) {
      const float blended = static_cast<float>(g) + 0.0f * static_cast<float>(static_cast<int>(s[k]) - g);
      out[k] = 0.5 * static_cast<std::uint8_t>(blended) + 0.5 * kSleepTint[k];
    }
  }
  for (int k = 0; k < 3; ++k) dst[k] = static_cast<std::uint8_t>(out[k]);
}

}  // namespace

void Env::render(std::uint8_t* obs) {
  draw_local_view();
  std::fill(obs, obs + static_cast<std::size_t>(a_.config_.size_x) * a_.config_.size_y * 3,
            static_cast<std::uint8_t>(0));
  light_local_view(obs);
  draw_item_view(obs);
}

// Local view canvas: materials, then objects in creation order.
void Env::draw_local_view() {
  const int w = a_.local_w_, h = a_.local_h_;
  const int ux = a_.unit_x_, uy = a_.unit_y_;
  const int gx = a_.grid_x_, gy = a_.grid_y_;
  const int ox = gx / 2, oy = gy / 2;
  const Obj& player = slots_[player_slot_];
  std::fill(local_.begin(), local_.end(), static_cast<std::uint8_t>(127));
  for (int x = 0; x < gx; ++x) {
    for (int y = 0; y < gy; ++y) {
      const int wx = player.x + x - ox, wy = player.y + y - oy;
      if (!inside(wx, wy)) continue;
      draw_texture(local_.data(), w, h, x * ux, y * uy, *a_.material_tex_[mat_[cell(wx, wy)]], false);
    }
  }
  for (std::uint32_t slot : alive_) {
    const Obj& obj = slots_[slot];
    const int x = obj.x - player.x + ox, y = obj.y - player.y + oy;
    if (x < 0 || y < 0 || x >= gx || y >= gy) continue;
    draw_texture(local_.data(), w, h, x * ux, y * uy, *object_texture(obj), true);
  }
}

// Lighting (LocalView._light, with noise and vignette at night) and sleep tint of the local view canvas
// into obs.
void Env::light_local_view(std::uint8_t* obs) {
  const int sx = a_.config_.size_x, sy = a_.config_.size_y;
  const int w = a_.local_w_, h = a_.local_h_;
  const double daylight = daylight_;
  const bool dark = daylight < 0.5;
  const double amount = 2 * (0.5 - daylight);
  if (dark) {
    for (std::size_t i = 0; i < noise_.size(); ++i) noise_[i] = random_.uniform(32, 127);
  }
  const double one_minus_day = 1 - daylight;
  const bool sleeping = sleeping_;
  const int bx = a_.border_x_, by = a_.border_y_;
  // In daylight the result depends on the colour alone: memoise it per frame (textures use few colours).
  if (!dark) std::fill(light_cache_key_.begin(), light_cache_key_.end(), -1);
  for (int x = 0; x < w; ++x) {
    for (int y = 0; y < h; ++y) {
      const std::size_t p = static_cast<std::size_t>(x) * h + y;
      const std::uint8_t* c = &local_[p * 3];
      const int X = bx + x, Y = by + y;
      if (X < 0 || Y < 0 || X >= sx || Y >= sy) continue;
      std::uint8_t* dst = &obs[(static_cast<std::size_t>(Y) * sx + X) * 3];
      if (dark) {
        std::uint8_t n1[3];
        const double m = amount * a_.vignette_[p];
        const double nz = noise_[p];
        for (int k = 0; k < 3; ++k) n1[k] = static_cast<std::uint8_t>((1 - m) * c[k] + m * nz);
        light_pixel(c, n1, daylight, one_minus_day, sleeping, dst);
      } else {
        const std::int32_t key = (c[0] << 16) | (c[1] << 8) | c[2];
        const std::size_t slot = static_cast<std::size_t>((key * 2654435761u) >> 20) & (kLightCache - 1);
        std::uint8_t* cached = &light_cache_value_[slot * 3];
        if (light_cache_key_[slot] != key) {
          light_pixel(c, c, daylight, one_minus_day, sleeping, cached);
          light_cache_key_[slot] = key;
        }
        dst[0] = cached[0];
        dst[1] = cached[1];
        dst[2] = cached[2];
      }
    }
  }
}

// Inventory bar (ItemView) below the local view, unlit.
void Env::draw_item_view(std::uint8_t* obs) {
  const int sx = a_.config_.size_x, sy = a_.config_.size_y;
  const int w = a_.local_w_, h = a_.local_h_, ih = a_.item_h_;
  const int bx = a_.border_x_, by = a_.border_y_;
  std::vector<std::uint8_t>& items = items_;
  items.assign(static_cast<std::size_t>(w) * ih * 3, 0);
  for (int i = 0; i < a_.num_items(); ++i) {
    const int amount_i = inventory_[i];
    if (amount_i < 1) continue;
    draw_texture(items.data(), w, ih, a_.item_pos_x_[i], a_.item_pos_y_[i], *a_.item_tex_[i], true);
    const CanvasTexture& digit = amount_i <= 9 ? *a_.digit_tex_[amount_i] : *a_.digit_tex_[10];
    draw_texture(items.data(), w, ih, a_.amount_pos_x_[i], a_.amount_pos_y_[i], digit, true);
  }
  for (int x = 0; x < w; ++x) {
    for (int y = 0; y < ih; ++y) {
      const int X = bx + x, Y = by + h + y;
      if (X < 0 || Y < 0 || X >= sx || Y >= sy) continue;
      const std::uint8_t* src = &items[(static_cast<std::size_t>(x) * ih + y) * 3];
      std::uint8_t* dst = &obs[(static_cast<std::size_t>(Y) * sx + X) * 3];
      dst[0] = src[0];
      dst[1] = src[1];
      dst[2] = src[2];
    }
  }
}

void Env::semantic(std::uint8_t* out) const {
  std::copy(mat_.begin(), mat_.end(), out);
  for (std::uint32_t slot : alive_) {
    const Obj& obj = slots_[slot];
    const int kind = static_cast<int>(obj.kind);
    out[cell(obj.x, obj.y)] =
        obj.kind == ObjKind::kFence ? 255 : static_cast<std::uint8_t>(a_.semantic_base_ + kind);
  }
}

}  // namespace crafter
}  // namespace deltairis
