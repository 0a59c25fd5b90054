// Build information and thread-count helpers shared by every native component.
#pragma once

#include <string>

namespace deltairis {

// Number of hardware threads the process may use (>= 1). Honours DELTAIRIS_NUM_THREADS when set.
int default_num_threads();

// Resolves a user-supplied thread count: values <= 0 mean "default", others are clamped to [1, 256].
int resolve_num_threads(int requested);

// Human-readable description of the compiler and flags this library was built with.
std::string build_info();

}  // namespace deltairis
