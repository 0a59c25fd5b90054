// A tiny unit-test harness for the C++ tests (csrc/**/*_test.cc), no dependencies:
//
//   TEST(ThreadPool, ParallelForWritesEveryIndex) { CHECK_EQ(sum, expected); }
//   int main(int argc, char** argv) { return deltairis::testing::run_all(argc, argv); }
//
// CHECK* record a failure (with file, line and both values) and go on; REQUIRE* also end the test.
// `<exe> <substring>` runs only the tests whose "Suite.Name" contains the substring.
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

namespace deltairis {
namespace testing {

struct TestCase {
  std::string name;
  std::function<void()> body;
};

inline std::vector<TestCase>& registry() {
  static std::vector<TestCase> tests;
  return tests;
}

inline int& failures_in_current_test() {
  static int failures = 0;
  return failures;
}

struct Registrar {
  Registrar(const char* suite, const char* name, std::function<void()> body) {
    registry().push_back({std::string(suite) + "." + name, std::move(body)});
  }
};

struct RequireFailed {};  // thrown by REQUIRE* to end the current test

inline void report(const char* file, int line, const std::string& what) {
  ++failures_in_current_test();
  std::fprintf(stderr, "%s:%d: FAILED %s\n", file, line, what.c_str());
}

template <typename T>
std::string show(const T& value) {
  std::ostringstream os;
  os.precision(17);
  os << value;
  return os.str();
}
inline std::string show(const std::string& value) { return "\"" + value + "\""; }
inline std::string show(const char* value) { return show(std::string(value)); }
inline std::string show(std::uint8_t value) { return std::to_string(static_cast<int>(value)); }
template <typename T>
std::string show(const std::vector<T>& values) {
  std::string out = "[";
  for (std::size_t i = 0; i < values.size() && i < 16; ++i) out += (i ? ", " : "") + show(values[i]);
  return out + (values.size() > 16 ? ", ...]" : "]");
}

// Evaluates each side once, compares them with `cmp` and reports both values on failure.
template <typename A, typename B, typename Cmp>
bool check_op(const A& a, const B& b, Cmp cmp, const char* file, int line, const char* expr) {
  const bool ok = cmp(a, b);
  if (!ok) report(file, line, std::string(expr) + " with " + show(a) + " vs " + show(b));
  return ok;
}

// Bit-for-bit equality of doubles (NaN == NaN, 0.0 != -0.0).
inline bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

inline int run_all(int argc, char** argv) {
  const std::string filter = argc > 1 ? argv[1] : "";
  int failed = 0, ran = 0;
  for (const auto& t : registry()) {
    if (!filter.empty() && t.name.find(filter) == std::string::npos) continue;
    ++ran;
    failures_in_current_test() = 0;
    try {
      t.body();
    } catch (const RequireFailed&) {
    } catch (const std::exception& e) {
      report(__FILE__, __LINE__, t.name + " threw " + e.what());
    } catch (...) {
      report(__FILE__, __LINE__, t.name + " threw a non-std exception");
    }
    const bool ok = failures_in_current_test() == 0;
    failed += ok ? 0 : 1;
    std::fprintf(ok ? stdout : stderr, "[%s] %s\n", ok ? "  OK  " : "FAILED", t.name.c_str());
  }
  std::printf("%d of %d tests passed\n", ran - failed, ran);
  return failed == 0 && ran > 0 ? 0 : 1;
}

}  // namespace testing
}  // namespace deltairis

#define DELTAIRIS_CONCAT_(a, b) a##b
#define DELTAIRIS_CONCAT(a, b) DELTAIRIS_CONCAT_(a, b)
#define TEST(suite, name)                                                                             \
  static void DELTAIRIS_CONCAT(test_##suite##_, name)();                                              \
  static ::deltairis::testing::Registrar DELTAIRIS_CONCAT(registrar_##suite##_, name)(#suite, #name, \
                                                                                      &DELTAIRIS_CONCAT(test_##suite##_, name)); \
  static void DELTAIRIS_CONCAT(test_##suite##_, name)()

#define DELTAIRIS_CHECK_OP(a, op, b)                                                                  \
  ::deltairis::testing::check_op((a), (b), [](const auto& x_, const auto& y_) { return x_ op y_; }, __FILE__, \
                                 __LINE__, #a " " #op " " #b)
#define CHECK_EQ(a, b) DELTAIRIS_CHECK_OP(a, ==, b)
#define CHECK_NE(a, b) DELTAIRIS_CHECK_OP(a, !=, b)
#define CHECK_LT(a, b) DELTAIRIS_CHECK_OP(a, <, b)
#define CHECK_LE(a, b) DELTAIRIS_CHECK_OP(a, <=, b)
#define CHECK_GE(a, b) DELTAIRIS_CHECK_OP(a, >=, b)
#define CHECK(cond) \
  ((cond) ? true : (::deltairis::testing::report(__FILE__, __LINE__, "CHECK(" #cond ")"), false))
#define REQUIRE(cond) \
  do {                                                      \
    if (!CHECK(cond)) throw ::deltairis::testing::RequireFailed{}; \
  } while (0)
#define REQUIRE_EQ(a, b) \
  do {                                                              \
    if (!CHECK_EQ(a, b)) throw ::deltairis::testing::RequireFailed{}; \
  } while (0)
// The statement throws an exception of `type` whose what() contains `needle`.
#define CHECK_THROWS(statement, type, needle)                                                           \
  do {                                                                                                \
    bool caught_ = false;                                                                              \
    try {                                                                                             \
      statement;                                                                                      \
    } catch (const type& e_) {                                                                        \
      caught_ = true;                                                                                  \
      if (std::string(e_.what()).find(needle) == std::string::npos)                                   \
        ::deltairis::testing::report(__FILE__, __LINE__, std::string("message ") + e_.what() + " lacks " + (needle)); \
    }                                                                                                 \
    if (!caught_) ::deltairis::testing::report(__FILE__, __LINE__, #statement " did not throw " #type); \
  } while (0)
#define TEST_MAIN() \
  int main(int argc, char** argv) { return ::deltairis::testing::run_all(argc, argv); }
