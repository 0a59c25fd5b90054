// Byte encoding of saved env states (Env::save_state, CrafterVectorEnv::save_state): fixed-width
// little-endian integers, doubles by their IEEE-754 bits, length-prefixed arrays, and a frame
//
//   magic (8 bytes) | version (u32) | payload length (u64) | payload | FNV-1a 64 of everything before (u64)
//
// so that a blob of another kind, another version, a truncated or a corrupted one is rejected with a
// std::invalid_argument naming the problem before any of it is used. Independent of the host's
// endianness and of the thread count.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace deltairis {
namespace crafter {

inline std::uint64_t fnv1a64(const char* data, std::size_t size) {
  std::uint64_t h = 14695981039346656037ULL;
  for (std::size_t i = 0; i < size; ++i) {
    h ^= static_cast<std::uint8_t>(data[i]);
    h *= 1099511628211ULL;
  }
  return h;
}

class ByteWriter {
 public:
  void u8(std::uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void u32(std::uint32_t v) {
    for (int k = 0; k < 4; ++k) u8(static_cast<std::uint8_t>(v >> (8 * k)));
  }
  void u64(std::uint64_t v) {
    for (int k = 0; k < 8; ++k) u8(static_cast<std::uint8_t>(v >> (8 * k)));
  }
  void i32(std::int32_t v) { u32(static_cast<std::uint32_t>(v)); }
  void i64(std::int64_t v) { u64(static_cast<std::uint64_t>(v)); }
  void f64(double v) {
    std::uint64_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    u64(bits);
  }
  void bytes(const std::string& s) {
    u64(s.size());
    out_ += s;
  }
  void u8s(const std::vector<std::uint8_t>& v) {
    u64(v.size());
    out_.append(reinterpret_cast<const char*>(v.data()), v.size());
  }
  void i32s(const std::vector<int>& v) {
    u64(v.size());
    for (int x : v) i32(x);
  }
  void u32s(const std::vector<std::uint32_t>& v) {
    u64(v.size());
    for (std::uint32_t x : v) u32(x);
  }
  void bools(const std::vector<bool>& v) {
    u64(v.size());
    for (bool x : v) u8(x ? 1 : 0);
  }
  const std::string& str() const { return out_; }

 private:
  std::string out_;
};

// Reads a payload; every read is bounds-checked ("<what>: corrupt payload (<field> ...)").
class ByteReader {
 public:
  ByteReader(const char* data, std::size_t size, std::string what) : p_(data), end_(data + size), what_(std::move(what)) {}

  [[noreturn]] void fail(const std::string& problem) const { throw std::invalid_argument(what_ + ": " + problem); }

  std::uint8_t u8(const char* field) {
    need(1, field);
    return static_cast<std::uint8_t>(*p_++);
  }
  std::uint32_t u32(const char* field) {
    need(4, field);
    std::uint32_t v = 0;
    for (int k = 0; k < 4; ++k) v |= static_cast<std::uint32_t>(static_cast<std::uint8_t>(*p_++)) << (8 * k);
    return v;
  }
  std::uint64_t u64(const char* field) {
    need(8, field);
    std::uint64_t v = 0;
    for (int k = 0; k < 8; ++k) v |= static_cast<std::uint64_t>(static_cast<std::uint8_t>(*p_++)) << (8 * k);
    return v;
  }
  std::int32_t i32(const char* field) { return static_cast<std::int32_t>(u32(field)); }
  std::int64_t i64(const char* field) { return static_cast<std::int64_t>(u64(field)); }
  double f64(const char* field) {
    const std::uint64_t bits = u64(field);
    double v;
    std::memcpy(&v, &bits, sizeof v);
    return v;
  }
  bool flag(const char* field) {
    const std::uint8_t v = u8(field);
    if (v > 1) fail(std::string("corrupt payload (") + field + " is " + std::to_string(v) + ", not 0 or 1)");
    return v == 1;
  }
  // An array length, checked against the bytes left (each element takes at least `element` bytes).
  std::size_t count(const char* field, std::size_t element) {
    const std::uint64_t n = u64(field);
    if (n > static_cast<std::uint64_t>(end_ - p_) / element) {
      fail(std::string("corrupt payload (") + field + " claims " + std::to_string(n) + " entries, more than the blob holds)");
    }
    return static_cast<std::size_t>(n);
  }
  std::string bytes(const char* field) {
    const std::size_t n = count(field, 1);
    std::string s(p_, n);
    p_ += n;
    return s;
  }
  std::vector<std::uint8_t> u8s(const char* field) {
    const std::size_t n = count(field, 1);
    std::vector<std::uint8_t> v(reinterpret_cast<const std::uint8_t*>(p_), reinterpret_cast<const std::uint8_t*>(p_) + n);
    p_ += n;
    return v;
  }
  std::vector<int> i32s(const char* field) {
    std::vector<int> v(count(field, 4));
    for (int& x : v) x = i32(field);
    return v;
  }
  std::vector<std::uint32_t> u32s(const char* field) {
    std::vector<std::uint32_t> v(count(field, 4));
    for (std::uint32_t& x : v) x = u32(field);
    return v;
  }
  std::vector<bool> bools(const char* field) {
    std::vector<bool> v(count(field, 1));
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = flag(field);
    return v;
  }
  void expect_end() const {
    if (p_ != end_) fail("corrupt payload (" + std::to_string(end_ - p_) + " unread bytes at its end)");
  }

 private:
  void need(std::size_t n, const char* field) const {
    if (static_cast<std::size_t>(end_ - p_) < n) fail(std::string("corrupt payload (ends inside ") + field + ")");
  }
  const char* p_;
  const char* end_;
  std::string what_;
};

constexpr std::size_t kStateMagicSize = 8;
constexpr std::size_t kStateHeaderSize = kStateMagicSize + 4 + 8;

// Frames a payload: magic (exactly 8 characters), version, length, payload, checksum.
inline std::string frame_state(const char* magic, std::uint32_t version, const std::string& payload) {
  ByteWriter w;
  for (std::size_t i = 0; i < kStateMagicSize; ++i) w.u8(static_cast<std::uint8_t>(magic[i]));
  w.u32(version);
  w.u64(payload.size());
  std::string out = w.str() + payload;
  ByteWriter tail;
  tail.u64(fnv1a64(out.data(), out.size()));
  return out + tail.str();
}

// Checks a framed blob (kind, version, length, checksum) and returns a reader of its payload. `what`
// names the state in the messages ("Crafter env state").
inline ByteReader unframe_state(const std::string& blob, const char* magic, std::uint32_t version,
                                const std::string& what) {
  auto fail = [&](const std::string& problem) { throw std::invalid_argument(what + ": " + problem); };
  if (blob.size() < kStateMagicSize || std::memcmp(blob.data(), magic, kStateMagicSize) != 0) {
    fail("not a saved state of this kind (bad magic bytes; expected \"" + std::string(magic, kStateMagicSize) +
         "\")" + (blob.size() < kStateMagicSize ? " — the blob has only " + std::to_string(blob.size()) + " bytes" : ""));
  }
  if (blob.size() < kStateHeaderSize) {
    fail("truncated (" + std::to_string(blob.size()) + " bytes, shorter than the " +
         std::to_string(kStateHeaderSize) + "-byte header)");
  }
  ByteReader header(blob.data() + kStateMagicSize, kStateHeaderSize - kStateMagicSize, what);
  const std::uint32_t got_version = header.u32("version");
  const std::uint64_t length = header.u64("payload length");
  if (got_version != version) {
    fail("version mismatch (the blob has format version " + std::to_string(got_version) +
         ", this build reads version " + std::to_string(version) + ")");
  }
  const std::uint64_t expected = kStateHeaderSize + length + 8;
  if (length > blob.size() || blob.size() != expected) {
    fail(blob.size() < expected || length > blob.size()
             ? "truncated (" + std::to_string(blob.size()) + " bytes, the header announces " +
                   std::to_string(expected) + ")"
             : "corrupt (" + std::to_string(blob.size() - expected) + " bytes after the end the header announces)");
  }
  ByteReader tail(blob.data() + blob.size() - 8, 8, what);
  if (tail.u64("checksum") != fnv1a64(blob.data(), blob.size() - 8)) {
    fail("corrupt (checksum mismatch: the bytes were changed after saving)");
  }
  return ByteReader(blob.data() + kStateHeaderSize, static_cast<std::size_t>(length), what);
}

}  // namespace crafter
}  // namespace deltairis
