from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from deltairis.config.models import TokenizerConfig
from deltairis.models.quantizer import Quantizer


def _quantizer(**kw) -> Quantizer:
    cfg = TokenizerConfig(num_actions=3, codebook_size=kw.pop("codebook_size", 32), codebook_dim=8, **kw)
    return Quantizer(cfg, input_dim=24)


def test_codebook_starts_small_then_unit_norm_and_tokens_are_argmax() -> None:
    q = _quantizer()
    # the reference's start: uniform in [-1/C, 1/C], not normalised before the first update
    assert float(q.codebook.abs().max()) <= 1.0 / 32
    assert float(q.codebook.norm(dim=-1).max()) < 0.5
    x = torch.randn(5, 7, 24)
    out = q(x)
    assert out.tokens.shape == (5, 7) and out.tokens.dtype == torch.int64
    z = F.normalize(q.pre_quant_proj(x), dim=-1)
    brute = torch.stack(
        [torch.stack([(z[i, j] @ q.codebook.T).argmax() for j in range(7)]) for i in range(5)]
    )
    assert torch.equal(out.tokens, brute)
    for _ in range(3):
        q.update_codebook(out.z, out.tokens)
        torch.testing.assert_close(q.codebook.norm(dim=-1), torch.ones(32))
    assert int(q.num_codebook_updates) == 3


def test_straight_through_gradient() -> None:
    q = _quantizer()
    x = torch.randn(4, 24, requires_grad=True)
    out = q(x)
    # forward value is the code vector, gradient flows to the encoder side as if q were z
    torch.testing.assert_close(out.q, q.post_quant_proj(q.codebook[out.tokens]))
    out.q.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert q.pre_quant_proj.weight.grad is not None and q.pre_quant_proj.weight.grad.abs().sum() > 0


def test_ema_and_frequencies_follow_the_formulas() -> None:
    q = _quantizer()
    z = F.normalize(torch.randn(50, 8), dim=-1)
    tokens = torch.randint(0, 32, (50,))
    old_cb, old_f = q.codebook.clone(), q.codewords_freqs.clone()
    q.update_codebook(z, tokens)
    counts = torch.bincount(tokens, minlength=32).float()
    means = torch.zeros(32, 8)
    for c in range(32):
        if counts[c] > 0:
            means[c] = F.normalize(z[tokens == c].mean(0), dim=0)
    expected = F.normalize(old_cb + 0.01 * (means - old_cb), dim=-1)
    torch.testing.assert_close(q.codebook, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q.codewords_freqs, old_f + 0.02 * (counts / 50 - old_f))


def test_padding_weights_exclude_vectors() -> None:
    q1, q2 = _quantizer(), _quantizer()
    q2.load_state_dict(q1.state_dict())
    z = F.normalize(torch.randn(40, 8), dim=-1)
    tokens = torch.randint(0, 32, (40,))
    w = torch.zeros(40)
    w[:25] = 1
    q1.update_codebook(z, tokens, w)
    q2.update_codebook(z[:25], tokens[:25])
    torch.testing.assert_close(q1.codebook, q2.codebook)
    torch.testing.assert_close(q1.codewords_freqs, q2.codewords_freqs)


def test_revival_replaces_dead_codes_with_batch_vectors() -> None:
    q = _quantizer(max_codebook_updates_with_revival=10)
    # collapse usage onto code 0 so entropy is far below log2(32) - 2 and others are dead
    q.codewords_freqs.zero_()
    q.codewords_freqs[0] = 1.0
    z = F.normalize(torch.randn(64, 8), dim=-1)
    tokens = torch.zeros(64, dtype=torch.long)
    q.update_codebook(z, tokens)
    revived = torch.isclose(q.codewords_freqs, torch.full((32,), 1 / 32))
    assert revived[1:].all(), "every dead code must be revived"
    # each revived code is one of the batch vectors, each used at most once
    sims = q.codebook[1:] @ z.T
    matches = (sims > 1 - 1e-5).float()
    assert (matches.sum(1) >= 1).all()
    assert (matches.sum(0) <= 1).all()


def test_no_revival_when_limit_reached_and_entropy_above_floor() -> None:
    q = _quantizer(max_codebook_updates_with_revival=0)
    q.codewords_freqs.fill_(0.0)
    q.codewords_freqs[:4] = 0.25  # entropy 2 bits: below log2(32)-2 = 3 but above the 1-bit floor
    before = q.codebook.clone()
    z = F.normalize(torch.randn(16, 8), dim=-1)
    q.update_codebook(z, torch.arange(16) % 4)
    assert not torch.isclose(q.codewords_freqs[4:], torch.full((28,), 1 / 32)).any()
    # unassigned codes keep their direction
    torch.testing.assert_close(q.codebook[4:], F.normalize(before[4:], dim=-1), rtol=1e-5, atol=1e-6)
    # below the floor, revival happens regardless of the limit
    q.codewords_freqs.fill_(0.0)
    q.codewords_freqs[0] = 1.0
    q.update_codebook(z, torch.zeros(16, dtype=torch.long))
    assert torch.isclose(q.codewords_freqs[1:], torch.full((31,), 1 / 32)).sum() == 16  # at most one per z


def test_entropy_bits() -> None:
    q = _quantizer()
    assert math.isclose(float(q.entropy_bits()), 5.0, rel_tol=1e-5)
