from __future__ import annotations

import dataclasses

import pytest
import torch

from deltairis.config import make_agent_config
from deltairis.models.tokenizer import Tokenizer
from deltairis.models.world_model import WorldModel

from .helpers import make_batch


def _wm(attention: str = "causal", num_layers: int = 2) -> WorldModel:
    cfg = make_agent_config("tiny").world_model
    tcfg = dataclasses.replace(cfg.transformer, attention=attention, num_layers=num_layers)
    cfg = dataclasses.replace(cfg, transformer=tcfg)
    return WorldModel(cfg).eval()


def test_head_indices_follow_block_pattern() -> None:
    wm = _wm()
    idx = wm.head_latents.indices
    assert idx.dtype == torch.int64 and idx.numel() == 4 * 21
    assert sorted(set((idx % 6).tolist())) == [1, 2, 3, 4]
    assert (wm.head_rewards.indices % 6 == 1).all() and wm.head_rewards.indices.numel() == 21
    assert torch.equal(wm.head_ends.indices, wm.head_rewards.indices)


@pytest.mark.parametrize("t", [1, 2, 7])
def test_kv_cached_steps_equal_full_forward(t: int) -> None:
    torch.manual_seed(t)
    wm = _wm()
    b = 3
    seq = torch.randn(b, t * 6, wm.config.transformer.embed_dim)
    full = wm.transformer(seq)
    cache = wm.transformer.empty_cache(b, "cpu")
    pieces, i = [], 0
    for n in [1, 2, 3, 1, 5] * 10:  # ragged chunk sizes
        if i >= seq.size(1):
            break
        pieces.append(wm.transformer(seq[:, i : i + n], cache))
        i += n
    stepped = torch.cat(pieces, 1)
    assert cache.size == t * 6 and torch.equal(cache.lens, torch.full((b,), t * 6, dtype=torch.int32))
    torch.testing.assert_close(stepped, full, rtol=1e-4, atol=1e-5)


def test_block_causal_differs_and_sees_inside_block() -> None:
    torch.manual_seed(0)
    causal, block = _wm("causal", num_layers=1), _wm("block_causal", num_layers=1)
    block.load_state_dict(
        causal.state_dict() | {k: v for k, v in block.state_dict().items() if k.endswith("mask")}
    )
    seq = torch.randn(1, 12, 128)
    a, bb = causal.transformer(seq), block.transformer(seq)
    # with one layer, the last token of each block sees the same context under both masks
    torch.testing.assert_close(a[:, 5], bb[:, 5], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(a[:, 0], bb[:, 0])


def test_cache_overflow_is_an_error() -> None:
    wm = _wm()
    cache = wm.transformer.empty_cache(1, "cpu")
    wm.transformer(torch.randn(1, 120, 128), cache)
    with pytest.raises(ValueError, match="exceeds"):
        wm.transformer(torch.randn(1, 7, 128), cache)


def test_logits_shapes_and_loss_masks() -> None:
    cfg = make_agent_config("tiny")
    tok, wm = Tokenizer(cfg.tokenizer).eval(), _wm()
    b = make_batch(2, 6, 5, pad_left=2, pad_right=1)
    tokens = tok.encode_tokens(b.obs[:, :-1], b.act[:, :-1], b.obs[:, 1:])
    out = wm.forward_logits(b.obs, b.act, tokens)
    assert out.latents.shape == (2, 5, 4, 64)
    assert out.rewards.shape == (2, 6, 63) and out.ends.shape == (2, 6, 2)
    loss = wm.compute_loss(b, tok)
    assert torch.isfinite(loss.loss) and 0 <= float(loss.metrics["world_model/latents_accuracy"]) <= 1
    # rewards on padded steps do not matter
    b.rew[0, :2] = 100.0
    torch.testing.assert_close(wm.compute_loss(b, tok).loss, loss.loss)
    b.rew[0, 3] = 100.0
    assert not torch.isclose(wm.compute_loss(b, tok).loss, loss.loss)


def test_atari_reward_classes() -> None:
    cfg = make_agent_config("atari")
    wm = WorldModel(cfg.world_model)
    labels = wm.reward_labels(torch.tensor([-3.0, 0.0, 0.5]))
    assert labels.tolist() == [0, 1, 2]
    assert wm.head_rewards.head_module[2].out_features == 3
