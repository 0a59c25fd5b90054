from __future__ import annotations

import pytest
import torch

from deltairis.ops.twohot import symexp, symlog, two_hot, twohot_expectation_ref
from deltairis.rl.returns import lambda_returns


def _loop(rew, values, end, gamma, lam):
    b, h = rew.shape
    out = torch.zeros(b, h)
    for i in range(b):
        for t in range(h):
            # explicit sum of n-step returns weighted by lambda (the definition, not the recursion)
            g = 0.0
            total = 0.0
            discount = 1.0
            weight_left = 1.0
            alive = 1.0
            for n in range(1, h - t + 1):
                k = t + n - 1
                g += discount * alive * float(rew[i, k])
                alive *= 1.0 - float(end[i, k])
                discount *= gamma
                nstep = g + discount * alive * float(values[i, t + n])
                w = (1 - lam) * lam ** (n - 1) if t + n < h else lam ** (n - 1)
                total += w * nstep
                weight_left -= w
            out[i, t] = total
    return out


@pytest.mark.parametrize("b,h", [(1, 1), (3, 5), (4, 15), (2, 20)])
def test_lambda_returns_match_nstep_definition(b: int, h: int) -> None:
    g = torch.Generator().manual_seed(b * 100 + h)
    rew = torch.randn(b, h, generator=g)
    values = torch.randn(b, h + 1, generator=g)
    end = (torch.rand(b, h, generator=g) < 0.2).float()
    ours = lambda_returns(rew, values, end, 0.97, 0.95)
    torch.testing.assert_close(ours, _loop(rew, values, end, 0.97, 0.95), rtol=1e-4, atol=1e-4)


def test_lambda_returns_bad_shapes() -> None:
    with pytest.raises(ValueError, match="values"):
        lambda_returns(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), 0.9, 0.9)


def test_symlog_roundtrip_and_two_hot() -> None:
    x = torch.randn(1000) * 100
    torch.testing.assert_close(symexp(symlog(x)), x, rtol=1e-4, atol=1e-4)
    y = torch.empty(500).uniform_(-25, 25)
    enc = two_hot(y, 255, -20.0, 20.0)
    assert torch.allclose(enc.sum(-1), torch.ones(500))
    assert ((enc > 0).sum(-1) <= 2).all()
    centers = torch.linspace(-20, 20, 255)
    torch.testing.assert_close((enc * centers).sum(-1), y.clamp(-20, 20), rtol=1e-4, atol=1e-4)
    # a very confident logit vector on the two-hot of symlog(r) decodes back to r
    r = torch.tensor([0.0, 1.0, -3.5, 12.0])
    logits = torch.log(two_hot(symlog(r), 255, -20.0, 20.0).clamp(min=1e-12))
    torch.testing.assert_close(twohot_expectation_ref(logits), r, rtol=1e-3, atol=1e-3)
