#include "replay/lz4.h"

#include <cstring>

namespace deltairis {
namespace replay {

namespace {

// Reads the extra bytes of a length whose nibble was 15; false when the input ends first.
inline bool read_length(const std::uint8_t*& ip, const std::uint8_t* end, std::int64_t& length) {
  std::uint8_t b;
  do {
    if (ip >= end) return false;
    b = *ip++;
    length += b;
  } while (b == 255);
  return true;
}

}  // namespace

bool lz4_decode_block(const std::uint8_t* src, std::int64_t src_size, std::uint8_t* dst, std::int64_t dst_size) {
  return lz4_decode_block_prefix(src, src_size, dst, dst_size, dst_size);
}

bool lz4_decode_block_prefix(const std::uint8_t* src, std::int64_t src_size, std::uint8_t* dst,
                             std::int64_t dst_size, std::int64_t want) {
  if (want < 1 || want > dst_size) return false;
  std::uint8_t* const stop = dst + want;
  const std::uint8_t* ip = src;
  const std::uint8_t* const iend = src + src_size;
  std::uint8_t* op = dst;
  std::uint8_t* const oend = dst + dst_size;
  while (ip < iend) {
    const std::uint8_t token = *ip++;
    std::int64_t literals = token >> 4;
    if (literals == 15 && !read_length(ip, iend, literals)) return false;
    if (literals > iend - ip || literals > oend - op) return false;
    if (literals <= 16 && iend - ip >= 16 && oend - op >= 16) {
      std::memcpy(op, ip, 16);  // one fixed-size copy (bytes past the run are rewritten later)
    } else {
      std::memcpy(op, ip, static_cast<std::size_t>(literals));
    }
    ip += literals;
    op += literals;
    if (ip == iend) break;  // the last sequence has literals only
    if (op >= stop && stop != oend) return true;  // the prefix asked for is decoded
    if (iend - ip < 2) return false;
    const std::int64_t offset = static_cast<std::int64_t>(ip[0]) | (static_cast<std::int64_t>(ip[1]) << 8);
    ip += 2;
    if (offset == 0 || offset > op - dst) return false;
    std::int64_t length = token & 15;
    if (length == 15 && !read_length(ip, iend, length)) return false;
    length += 4;
    if (length > oend - op) return false;
    const std::uint8_t* match = op - offset;
    if (offset >= 16 && oend - op >= length + 16) {
      // 16-byte pieces, each at least 16 bytes behind what it writes; the last may run past the match
      // (by < 16 bytes, inside the output), rewritten by the sequences that follow
      for (std::int64_t done = 0; done < length; done += 16) std::memcpy(op + done, match + done, 16);
      op += length;
    } else if (offset >= length) {
      std::memcpy(op, match, static_cast<std::size_t>(length));
      op += length;
    } else {
      // The match repeats the last `offset` bytes: copy from its start in pieces no longer than the
      // distance to it (never overlapping), which doubles every piece; the pattern's period divides it.
      std::int64_t distance = offset;
      while (length > 0) {
        const std::int64_t n = distance < length ? distance : length;
        std::memcpy(op, match, static_cast<std::size_t>(n));
        op += n;
        length -= n;
        distance += n;
      }
    }
    if (op >= stop && stop != oend) return true;
  }
  return op == oend;
}

}  // namespace replay
}  // namespace deltairis
