"""Seeds and named counter streams (deltairis.seeding)."""

from __future__ import annotations

import hashlib

import pytest

from deltairis.seeding import POLICY_STREAMS, StreamBlock, derive_env_seed, derive_seed, stream_base


def test_derive_seed_is_a_stable_hash_of_its_parts() -> None:
    # restated: blake2b-64 of repr(parts), little endian, top bit dropped
    for parts in [(1,), (7, "collect", 3), ("x", 0, "imagine", 12, 99)]:
        want = int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 1
        assert derive_seed(*parts) == want < 2**63
    assert derive_seed(1, "a") != derive_seed(1, "b") != derive_seed(2, "a")
    assert all(0 <= derive_env_seed(s, "env") < 2**31 - 2**16 for s in range(50))


def test_stream_blocks_give_each_name_its_offset() -> None:
    assert POLICY_STREAMS.names == ("action", "epsilon_coin", "epsilon_action")
    assert [POLICY_STREAMS.offset(t, "action") for t in range(4)] == [0, 3, 6, 9]
    assert POLICY_STREAMS.offset(5, "epsilon_coin") == 16 and POLICY_STREAMS.offset(5, "epsilon_action") == 17
    block = StreamBlock("a", "b")
    offsets = {block.offset(t, n) for t in range(10) for n in ("a", "b")}
    assert offsets == set(range(20))  # no two draws share a stream
    with pytest.raises(KeyError, match="unknown stream 'c'"):
        block.offset(0, "c")
    with pytest.raises(ValueError, match="distinct"):
        StreamBlock("a", "a")


def test_imagination_streams_of_different_seeds_do_not_overlap() -> None:
    assert stream_base(1) - stream_base(0) == 1 << 24
    with pytest.raises(ValueError, match="non-negative"):
        stream_base(-3)
