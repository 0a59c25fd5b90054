// A decoder of the LZ4 block format (the compressed frames of a replay store, see
// python/deltairis/data/frame_codec.py). Written from the format's description: a block is a list of
// sequences; each starts with a token byte whose high nibble is the literal count and low nibble the
// match length - 4 (15: more length bytes follow, each added, until one is not 255), then the literals,
// then a 2-byte little-endian match offset (absent after the last sequence), copying match-length bytes
// from that far back in the output (the copy may overlap what it writes).
#pragma once

#include <cstdint>

namespace deltairis {
namespace replay {

// Decodes src[0, src_size) into dst[0, dst_size); returns true when it fills dst exactly and every read
// and write stayed within the buffers (damaged input: false, nothing outside dst is written).
bool lz4_decode_block(const std::uint8_t* src, std::int64_t src_size, std::uint8_t* dst, std::int64_t dst_size);

// The first `want` bytes of the block only (0 < want <= dst_size): decoding stops at the first sequence
// that reaches them. dst has room for the whole block (dst_size); bytes past `want` may be written.
// Returns false on damaged input (as above, checked up to where it stops).
bool lz4_decode_block_prefix(const std::uint8_t* src, std::int64_t src_size, std::uint8_t* dst,
                             std::int64_t dst_size, std::int64_t want);

}  // namespace replay
}  // namespace deltairis
