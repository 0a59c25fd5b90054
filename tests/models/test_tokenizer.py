from __future__ import annotations

import dataclasses

import pytest
import torch

from deltairis.config import make_agent_config
from deltairis.models.tokenizer import Tokenizer

from .helpers import make_batch


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    torch.manual_seed(0)
    return Tokenizer(make_agent_config("tiny").tokenizer)


def test_shapes_and_dtypes(tokenizer: Tokenizer) -> None:
    b = make_batch(2, 4, 5)
    tokens = tokenizer.encode_tokens(b.obs[:, :-1], b.act[:, :-1], b.obs[:, 1:])
    assert tokens.shape == (2, 3, 4) and tokens.dtype == torch.int64
    assert tokens.min() >= 0 and tokens.max() < tokenizer.config.codebook_size
    recon, _ = tokenizer(b.obs[:, :-1], b.act[:, :-1], b.obs[:, 1:], clamp=True)
    assert recon.shape == (2, 3, 3, 64, 64)
    assert recon.min() >= 0 and recon.max() <= 1
    torch.testing.assert_close(recon * 255, (recon * 255).round())
    # decoding the tokens reproduces the reconstruction (the straight-through sum differs by rounding only)
    raw, _ = tokenizer(b.obs[:, :-1], b.act[:, :-1], b.obs[:, 1:])
    decoded = tokenizer.decode_tokens(b.obs[:, :-1], b.act[:, :-1], tokens, clamp=False)
    torch.testing.assert_close(decoded, raw, rtol=1e-4, atol=1e-5)


def test_token_patch_order(tokenizer: Tokenizer) -> None:
    # token k covers patch (k // 2, k % 2) of the 2x2 grid, flattened (row, col, channel)
    c = tokenizer.config.encoder.latent_dim
    z = torch.randn(1, 1, c, 8, 8)
    flat = torch.einsum("btchw->bthwc", z)  # (1, 1, 8, 8, C)
    tokens = tokenizer.tokens_to_map  # inverse direction checked below
    from einops import rearrange

    cut = rearrange(z, "b t c (h k) (w l) -> b t (h w) (k l c)", h=2, w=2)
    torch.testing.assert_close(cut[0, 0, 1], flat[0, 0, :4, 4:].reshape(-1))
    torch.testing.assert_close(cut[0, 0, 2], flat[0, 0, 4:, :4].reshape(-1))
    torch.testing.assert_close(tokens(cut), z)


def test_loss_ignores_padding(tokenizer: Tokenizer) -> None:
    tokenizer.eval()  # no codebook update, deterministic
    b1 = make_batch(2, 5, 5, pad_left=2, pad_right=1, seed=1)
    b2 = make_batch(2, 5, 5, pad_left=2, pad_right=1, seed=1)
    b2.obs[0, :2] = torch.rand(2, 3, 64, 64)  # change padded frames only
    b2.obs[-1, -1:] = torch.rand(1, 3, 64, 64)
    l1 = tokenizer.compute_loss(b1).loss
    l2 = tokenizer.compute_loss(b2).loss
    torch.testing.assert_close(l1, l2)
    b2.obs[0, 3] = torch.rand(3, 64, 64)  # a real frame changes the loss
    assert not torch.isclose(tokenizer.compute_loss(b2).loss, l1)


def test_loss_terms_and_training_update() -> None:
    cfg = dataclasses.replace(
        make_agent_config("tiny").tokenizer, commitment_weight=0.0, l1_weight=0.0, max_pixel_weight=0.0
    )
    tok = Tokenizer(cfg)
    b = make_batch(1, 3, 5, seed=3)
    recon, _ = tok(b.obs[:, :-1], b.act[:, :-1], b.obs[:, 1:])
    out = tok.compute_loss(b)
    torch.testing.assert_close(out.loss, ((recon - b.obs[:, 1:]) ** 2).mean())
    assert int(tok.quantizer.num_codebook_updates) == 1  # training mode updates the codebook
    out.loss.backward()
    assert tok.encoder_act_emb.weight.grad is not None


def test_bf16_autocast_runs() -> None:
    tok = Tokenizer(make_agent_config("tiny").tokenizer)
    b = make_batch(1, 3, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tok.compute_loss(b)
    assert torch.isfinite(out.loss)
