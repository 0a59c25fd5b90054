// Unit tests of the LZ4 block decoder (lz4.h) on blocks written by hand from the format's description.
#include "replay/lz4.h"

#include <cstdint>
#include <string>
#include <vector>

#include "testing/check.h"

namespace deltairis {
namespace replay {
namespace {

using Bytes = std::vector<std::uint8_t>;

bool decode(const Bytes& block, Bytes& out) {
  return lz4_decode_block(block.data(), static_cast<std::int64_t>(block.size()), out.data(),
                          static_cast<std::int64_t>(out.size()));
}

Bytes text(const std::string& s) { return Bytes(s.begin(), s.end()); }

TEST(Lz4, LiteralsOnly) {
  Bytes block = {0x50, 'h', 'e', 'l', 'l', 'o'};  // 5 literals, no match: the last sequence
  Bytes out(5);
  CHECK(decode(block, out));
  CHECK(out == text("hello"));
}

TEST(Lz4, LongLiteralRunWithExtraLengthBytes) {
  Bytes block = {0xF0, 255, 5};  // 15 + 255 + 5 = 275 literals
  for (int i = 0; i < 275; ++i) block.push_back(static_cast<std::uint8_t>(i * 7));
  Bytes out(275);
  CHECK(decode(block, out));
  for (int i = 0; i < 275; ++i) CHECK_EQ(out[i], static_cast<std::uint8_t>(i * 7));
}

TEST(Lz4, OverlappingMatchRepeatsTheLastBytes) {
  // "ab", then a match of 4 + 7 = 11 bytes at offset 2 (overlapping: "ababababab..."), then "!".
  Bytes block = {0x27, 'a', 'b', 0x02, 0x00, 0x10, '!'};
  Bytes out(14);
  CHECK(decode(block, out));
  CHECK(out == text("ababababababa!"));
  // offset 1: a run of one byte, longer than 15 (extra length bytes)
  Bytes run = {0x1F, 'x', 0x01, 0x00, 30, 0x10, '.'};  // 4 + 15 + 30 = 49 copies of 'x'
  Bytes out2(51);
  CHECK(decode(run, out2));
  CHECK(out2 == text(std::string(50, 'x') + "."));
}

TEST(Lz4, FarMatchCopiedInPieces) {
  // 20 literals, then a match of 4 + 15 + 21 = 40 bytes at offset 20 (overlapping twice), then 16 literals
  Bytes block = {0xFF, 5};  // 15 + 5 = 20 literals, match length nibble 15
  for (int i = 0; i < 20; ++i) block.push_back(static_cast<std::uint8_t>(100 + i));
  block.insert(block.end(), {20, 0, 21, 0xF0, 1});  // offset 20, 21 more match bytes; 16 literals
  for (int i = 0; i < 16; ++i) block.push_back(static_cast<std::uint8_t>(200 + i));
  Bytes out(76);
  CHECK(decode(block, out));
  for (int i = 0; i < 60; ++i) CHECK_EQ(out[i], static_cast<std::uint8_t>(100 + i % 20));
  for (int i = 0; i < 16; ++i) CHECK_EQ(out[60 + i], static_cast<std::uint8_t>(200 + i));
}

TEST(Lz4, PrefixStopsAtTheBytesAskedFor) {
  const Bytes block = {0x27, 'a', 'b', 0x02, 0x00, 0x10, '!'};
  const Bytes whole = text("ababababababa!");
  for (int want = 1; want <= 14; ++want) {
    Bytes out(14, 0);
    CHECK(lz4_decode_block_prefix(block.data(), 7, out.data(), 14, want));
    CHECK(Bytes(out.begin(), out.begin() + want) == Bytes(whole.begin(), whole.begin() + want));
  }
  Bytes out(14);
  CHECK(!lz4_decode_block_prefix(block.data(), 7, out.data(), 14, 0));
  CHECK(!lz4_decode_block_prefix(block.data(), 7, out.data(), 14, 15));
  CHECK(!lz4_decode_block_prefix(block.data(), 4, out.data(), 14, 13));  // cut short before the bytes
}

TEST(Lz4, DamagedBlocksAreRefused) {
  Bytes out(14, 0xEE);
  CHECK(!decode({0x27, 'a', 'b', 0x00, 0x00, 0x10, '!'}, out));  // offset 0
  CHECK(!decode({0x27, 'a', 'b', 0x03, 0x00, 0x10, '!'}, out));  // offset past the start of the output
  CHECK(!decode({0x27, 'a', 'b', 0x02}, out));                    // the offset cut short
  CHECK(!decode({0xF0}, out));                                    // a literal length cut short
  CHECK(!decode({0x90, 'a', 'b'}, out));                          // fewer literals than announced
  Bytes small(13), large(15);
  Bytes good = {0x27, 'a', 'b', 0x02, 0x00, 0x10, '!'};
  CHECK(!decode(good, small));  // more output than room: refused before writing past the buffer
  CHECK(!decode(good, large));  // less output than expected
  CHECK(decode(good, out));
}

}  // namespace
}  // namespace replay
}  // namespace deltairis

TEST_MAIN()
