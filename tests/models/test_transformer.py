"""Transformer: the mask, cached decoding against the full forward, causality, batch independence and
the input checks. World-model level cache tests live in test_world_model.py."""

from __future__ import annotations

import pytest
import torch

from deltairis.config.models import TransformerConfig
from deltairis.models.transformer import Transformer, build_mask


def make(attention: str = "causal", tokens_per_block: int = 3, max_blocks: int = 5, **kw: int) -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(
        max_blocks=max_blocks,
        tokens_per_block=tokens_per_block,
        embed_dim=kw.get("embed_dim", 12),
        num_layers=kw.get("num_layers", 2),
        num_heads=kw.get("num_heads", 3),
        mlp_ratio=2,
        attention=attention,
    )
    return Transformer(cfg).double().eval()


@pytest.mark.parametrize("attention", ["causal", "block_causal"])
@pytest.mark.parametrize("block", [1, 2, 5])
def test_build_mask_matches_the_rule_written_out(attention: str, block: int) -> None:
    cfg = TransformerConfig(max_blocks=4, tokens_per_block=block, attention=attention)
    mask = build_mask(cfg)
    n = 4 * block
    assert mask.shape == (n, n) and mask.dtype == torch.bool
    for i in range(n):
        for j in range(n):
            expected = j <= i or (attention == "block_causal" and j // block == i // block)
            assert bool(mask[i, j]) == expected, (i, j)


def test_layers_register_the_mask() -> None:
    model = make("block_causal")
    assert torch.equal(model.blocks[0].sa.mask, build_mask(model.config))


@pytest.mark.parametrize("attention", ["causal", "block_causal"])
@pytest.mark.parametrize(
    ("b", "t", "chunks"), [(1, 7, [1] * 7), (3, 11, [3, 3, 3, 2]), (2, 13, [5, 1, 4, 3])]
)
def test_cached_forward_in_pieces_equals_full_forward(
    attention: str, b: int, t: int, chunks: list[int]
) -> None:
    """Token by token (causal) and block by block (the only split that keeps block-causal exact)."""
    model = make(attention)
    x = torch.randn(b, t, model.config.embed_dim, dtype=torch.float64)
    full = model(x)
    if attention == "block_causal":  # cached pieces must be whole blocks (plus a last partial one)
        p = model.config.tokens_per_block
        chunks = [p] * (t // p) + ([t % p] if t % p else [])
    cache = model.empty_cache(b, "cpu", torch.float64)
    outs, start = [], 0
    for n in chunks:
        outs.append(model(x[:, start : start + n], cache))
        start += n
        assert cache.size == start and cache.lens.tolist() == [start] * b
    torch.testing.assert_close(torch.cat(outs, dim=1), full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("attention", ["causal", "block_causal"])
def test_outputs_do_not_depend_on_future_tokens(attention: str) -> None:
    model = make(attention, tokens_per_block=3)
    x = torch.randn(2, 10, 12, dtype=torch.float64)
    y = model(x)
    x2 = x.clone()
    x2[:, 7:] = torch.randn(2, 3, 12, dtype=torch.float64)  # changes tokens 7.. (block 2 is 6..8)
    y2 = model(x2)
    visible_end = 6 if attention == "block_causal" else 7
    torch.testing.assert_close(y2[:, :visible_end], y[:, :visible_end], rtol=0, atol=0)
    assert not torch.allclose(y2[:, 7:], y[:, 7:])
    if attention == "block_causal":  # token 6 sees tokens 7 and 8 of its block
        assert not torch.allclose(y2[:, 6], y[:, 6])


def test_batch_rows_are_independent() -> None:
    model = make()
    x = torch.randn(3, 6, 12, dtype=torch.float64)
    y = model(x)
    x2 = x.clone()
    x2[1] = torch.randn(6, 12, dtype=torch.float64)
    y2 = model(x2)
    torch.testing.assert_close(y2[[0, 2]], y[[0, 2]], rtol=0, atol=0)
    assert not torch.allclose(y2[1], y[1])


def test_shape_and_dtype_are_kept() -> None:
    model = make().float()
    y = model(torch.randn(2, 5, 12))
    assert y.shape == (2, 5, 12) and y.dtype == torch.float32


def test_too_many_tokens_is_an_error() -> None:
    model = make(max_blocks=2, tokens_per_block=3)  # 6 positions
    with pytest.raises(ValueError, match="sequence of 7 tokens exceeds the transformer's 6 positions"):
        model(torch.zeros(1, 7, 12, dtype=torch.float64))
    cache = model.empty_cache(1, "cpu", torch.float64)
    model(torch.zeros(1, 4, 12, dtype=torch.float64), cache)
    with pytest.raises(ValueError, match="sequence of 7 tokens exceeds"):
        model(torch.zeros(1, 3, 12, dtype=torch.float64), cache)
    assert cache.size == 4  # a refused call leaves the cache as it was


def test_cache_batch_size_must_match() -> None:
    model = make()
    cache = model.empty_cache(2, "cpu", torch.float64)
    with pytest.raises(ValueError, match="cache batch size 2 != input batch size 3"):
        model(torch.zeros(3, 1, 12, dtype=torch.float64), cache)


def test_embed_dim_must_divide_into_heads() -> None:
    with pytest.raises(ValueError, match="embed_dim 10 not divisible by num_heads 3"):
        make(embed_dim=10, num_heads=3)


def test_empty_cache_matches_the_config() -> None:
    model = make(num_layers=2, num_heads=3, embed_dim=12)
    cache = model.empty_cache(4, "cpu")
    assert cache.k.shape == (2, 4, 3, model.config.max_tokens, 4)
    assert cache.k.dtype == torch.float32
