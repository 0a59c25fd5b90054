#include "envs/crafter/state_edit.h"

#include <stdexcept>
#include <string>

namespace deltairis {
namespace crafter {
namespace {

// The poke's arguments, checked: `n` of them, a class name first when `named` and integers elsewhere.
class PokeArgs {
 public:
  PokeArgs(const std::string& what, const std::vector<PokeArg>& args, std::size_t n, bool named, const char* form)
      : args_(args) {
    if (args.size() != n) {
      throw std::invalid_argument("poke " + what + ": expected " + std::to_string(n) + " arguments " + form + ", got " +
                                  std::to_string(args.size()));
    }
    for (std::size_t i = 0; i < n; ++i) {
      const bool is_name = named && i == 0;
      if (is_name != std::holds_alternative<std::string>(args[i])) {
        throw std::invalid_argument("poke " + what + ": argument " + std::to_string(i) + " must be " +
                                    (is_name ? "a class name" : "an integer"));
      }
    }
  }
  int operator[](std::size_t i) const { return std::get<int>(args_[i]); }
  const std::string& name() const { return std::get<std::string>(args_[0]); }

 private:
  const std::vector<PokeArg>& args_;
};

}  // namespace

void apply_poke(Env& env, const std::string& what, const std::vector<PokeArg>& args) {
  if (what == "inventory") {
    const PokeArgs a(what, args, 2, false, "(item, value)");
    env.poke_inventory(a[0], a[1]);
  } else if (what == "material") {
    const PokeArgs a(what, args, 3, false, "(x, y, material)");
    env.poke_material(a[0], a[1], a[2]);
  } else if (what == "object") {
    const PokeArgs a(what, args, 7, true, "(kind, x, y, health, fx, fy, grown)");
    env.poke_object(object_kind_from_name(a.name()), a[1], a[2], a[3], a[4], a[5], a[6]);
  } else {
    throw std::invalid_argument("unknown poke " + what);
  }
}

ImportedState::Object imported_object(const ObjectRow& row) {
  const auto& [slot, kind, x, y, health, facing_x, facing_y, cooldown, grown] = row;
  return {slot, object_kind_from_name(kind), x, y, health, facing_x, facing_y, cooldown, grown};
}

std::vector<ImportedState::Object> imported_objects(const std::vector<ObjectRow>& rows) {
  std::vector<ImportedState::Object> out;
  out.reserve(rows.size());
  for (const auto& row : rows) out.push_back(imported_object(row));
  return out;
}

}  // namespace crafter
}  // namespace deltairis
