// Edits of a native Crafter Env in the forms the Python tests write them (tests/envs/crafter_oracle.py):
// scenario pokes ("inventory", "material", "object") and the object rows of a state exported from
// Python crafter. The binding only converts Python values to these types and calls these functions.
#pragma once

#include <cstdint>
#include <string>
#include <tuple>
#include <variant>
#include <vector>

#include "envs/crafter/engine.h"

namespace deltairis {
namespace crafter {

// One argument of a poke: an integer, or an object kind's class name.
using PokeArg = std::variant<int, std::string>;

// Applies one scenario edit to a reset env:
//   ("inventory", item index, value)                       -> Env::poke_inventory
//   ("material", x, y, material id)                        -> Env::poke_material
//   ("object", class name, x, y, health, fx, fy, grown)    -> Env::poke_object
// Throws std::invalid_argument("unknown poke <what>") for another `what`, and on a wrong number or type
// of arguments, an unknown class name or an edit the env rejects.
void apply_poke(Env& env, const std::string& what, const std::vector<PokeArg>& args);

// One live object of an exported state: (slot, class name, x, y, health, facing x, facing y,
// cooldown, grown), as export_state writes it.
using ObjectRow = std::tuple<std::uint32_t, std::string, int, int, int, int, int, int, int>;

// The rows as ImportedState objects (throws std::invalid_argument("unknown object kind <name>")).
ImportedState::Object imported_object(const ObjectRow& row);
std::vector<ImportedState::Object> imported_objects(const std::vector<ObjectRow>& rows);

}  // namespace crafter
}  // namespace deltairis
