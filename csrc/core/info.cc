#include "core/info.h"

#include <cstdlib>
#include <sstream>
#include <string>
#include <thread>

namespace deltairis {

int default_num_threads() {
  if (const char* env = std::getenv("DELTAIRIS_NUM_THREADS")) {
    char* end = nullptr;
    long v = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && v > 0) return v > 256 ? 256 : static_cast<int>(v);
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

int resolve_num_threads(int requested) {
  if (requested <= 0) return default_num_threads();
  return requested > 256 ? 256 : requested;
}

std::string build_info() {
  std::ostringstream os;
#if defined(__clang__)
  os << "clang " << __clang_major__ << "." << __clang_minor__;
#elif defined(__GNUC__)
  os << "gcc " << __GNUC__ << "." << __GNUC_MINOR__;
#else
  os << "unknown compiler";
#endif
  os << "; C++" << (__cplusplus / 100 % 100);
#if defined(__FP_FAST_FMA)
  os << "; fma-available";
#endif
#if defined(__FAST_MATH__)
  os << "; fast-math";
#endif
#if defined(NDEBUG)
  os << "; release";
#else
  os << "; debug";
#endif
  return os.str();
}

}  // namespace deltairis
