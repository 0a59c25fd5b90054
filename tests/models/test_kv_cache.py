"""KVCache: allocation, bookkeeping (size, remaining, lens, reset) and the capacity checks of its users."""

from __future__ import annotations

import pytest
import torch

from deltairis import ops
from deltairis.models.kv_cache import KVCache


def test_empty_allocates_zeroed_buffers_of_the_requested_shape() -> None:
    cache = KVCache.empty(2, 3, 4, 7, 5, "cpu", torch.float64)
    assert cache.k.shape == cache.v.shape == (2, 3, 4, 7, 5)
    assert cache.k.dtype == cache.v.dtype == torch.float64
    assert cache.lens.dtype == torch.int32 and cache.lens.shape == (3,)
    assert not cache.k.any() and not cache.v.any() and not cache.lens.any()
    assert cache.k.data_ptr() != cache.v.data_ptr()
    assert (cache.size, cache.max_tokens, cache.batch_size, cache.remaining) == (0, 7, 3, 7)


def test_advance_and_reset_keep_size_lens_and_remaining_in_step() -> None:
    cache = KVCache.empty(1, 2, 1, 10, 4, "cpu")
    total = 0
    for n in (3, 1, 4):
        cache.advance(n)
        total += n
        assert cache.size == total and cache.remaining == 10 - total
        assert cache.lens.tolist() == [total, total]
    cache.k.fill_(1.0)
    buffer = cache.k
    assert cache.reset() is cache
    assert (cache.size, cache.remaining) == (0, 10) and cache.lens.tolist() == [0, 0]
    assert cache.k is buffer and not bool(cache.k.any()) and not bool(cache.v.any())  # reused, zeroed


def test_reset_cache_attends_only_to_new_tokens() -> None:
    """After reset() the stale keys are never attended: the result equals that of a fresh cache."""
    g = torch.Generator().manual_seed(0)
    b, h, tq, d = 2, 2, 3, 4
    cache = KVCache.empty(1, b, h, 8, d, "cpu")
    cache.k.normal_(generator=g)
    cache.v.normal_(generator=g)
    cache.advance(5)
    cache.reset()
    fresh = KVCache.empty(1, b, h, 8, d, "cpu")
    q, k, v = (torch.randn(b, h, tq, d, generator=g) for _ in range(3))
    y = ops.attention_kvcache(q, k, v, cache.k[0], cache.v[0], cache.lens, backend="torch")
    y_fresh = ops.attention_kvcache(q, k, v, fresh.k[0], fresh.v[0], fresh.lens, backend="torch")
    torch.testing.assert_close(y, y_fresh)
    torch.testing.assert_close(cache.k[0, :, :, :tq], k)  # the new keys were written at position 0


def test_a_nan_left_in_the_cache_does_not_reach_the_next_rollout() -> None:
    """A rollout whose step the non-finite guard skipped can leave NaN keys/values in the reused cache; after
    reset() the next rollout's output is finite and equal to a fresh cache's (masked positions hold 0)."""
    g = torch.Generator().manual_seed(1)
    b, h, d = 3, 2, 4
    cache = KVCache.empty(1, b, h, 8, d, "cpu")
    cache.k.fill_(float("nan"))
    cache.v.fill_(float("nan"))
    cache.advance(6)
    cache.reset()
    fresh = KVCache.empty(1, b, h, 8, d, "cpu")
    for c in (cache, fresh):  # rows of different lengths: the shorter rows mask positions of the longer
        c.lens.copy_(torch.tensor([2, 0, 1], dtype=torch.int32))
    q, k, v = (torch.randn(b, h, 2, d, generator=g) for _ in range(3))
    y = ops.attention_kvcache(q, k, v, cache.k[0], cache.v[0], cache.lens, backend="torch")
    y_fresh = ops.attention_kvcache(q, k, v, fresh.k[0], fresh.v[0], fresh.lens, backend="torch")
    assert bool(torch.isfinite(y).all())
    torch.testing.assert_close(y, y_fresh, rtol=0, atol=0)


def test_writing_beyond_capacity_is_refused_by_the_attention_op() -> None:
    cache = KVCache.empty(1, 1, 1, 4, 2, "cpu")
    cache.advance(3)
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"cache_lens must lie in \[0, 2\]"):
        ops.attention_kvcache(x, x, x, cache.k[0], cache.v[0], cache.lens, backend="torch")
    with pytest.raises(ValueError, match="do not fit a cache of 4"):
        y = torch.zeros(1, 1, 5, 2)
        ops.attention_kvcache(y, y, y, cache.k[0], cache.v[0], cache.lens, backend="torch")
