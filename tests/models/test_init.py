"""The tokenizer and the world model start from the reference's initialisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deltairis.config import make_agent_config
from deltairis.models.common import init_reference_weights
from deltairis.models.tokenizer import Tokenizer
from deltairis.models.world_model import WorldModel


@pytest.mark.parametrize("preset", ["crafter", "atari"])
def test_linear_embedding_layernorm_follow_the_reference_rule(preset: str) -> None:
    torch.manual_seed(0)
    cfg = make_agent_config(preset, 17)
    for model in (Tokenizer(cfg.tokenizer), WorldModel(cfg.world_model)):
        weights = [m.weight.flatten() for m in model.modules() if isinstance(m, (nn.Linear, nn.Embedding))]
        assert weights, type(model).__name__
        w = torch.cat(weights)
        assert abs(float(w.std()) - 0.02) < 0.002 and abs(float(w.mean())) < 0.002, (type(model).__name__, w.std())
        for m in model.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                assert torch.count_nonzero(m.bias) == 0
            if isinstance(m, nn.LayerNorm):
                assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.count_nonzero(m.bias) == 0
        # convolutions keep PyTorch's default (uniform with a fan-in bound), which is not N(0, 0.02)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert convs and any(float(c.weight.std()) > 0.03 for c in convs)


def test_init_rule_touches_only_linear_embedding_layernorm() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(300, 400), nn.Conv2d(3, 8, 3), nn.LayerNorm(5), nn.Embedding(50, 300))
    conv_before = net[1].weight.clone()
    net[2].weight.data.fill_(3.0)
    net.apply(init_reference_weights)
    assert torch.equal(net[1].weight, conv_before)
    assert abs(float(net[0].weight.std()) - 0.02) < 0.001 and torch.count_nonzero(net[0].bias) == 0
    assert abs(float(net[3].weight.std()) - 0.02) < 0.001
    assert torch.equal(net[2].weight, torch.ones(5))


def test_init_follows_float64() -> None:
    net = nn.Linear(64, 64).double()
    net.apply(init_reference_weights)
    assert net.weight.dtype == torch.float64 and abs(float(net.weight.std()) - 0.02) < 0.003


def test_tiny_preset_keeps_pytorch_defaults_and_a_unit_codebook() -> None:
    """The CPU demo preset was tuned (and its learning test measured) with PyTorch's initialisation."""
    torch.manual_seed(0)
    cfg = make_agent_config("tiny", 5)
    assert not cfg.tokenizer.reference_init and not cfg.world_model.reference_init
    assert make_agent_config("crafter", 17).tokenizer.reference_init
    tok, wm = Tokenizer(cfg.tokenizer), WorldModel(cfg.world_model)
    assert float(wm.act_emb.weight.std()) > 0.5  # nn.Embedding's N(0, 1), not N(0, 0.02)
    assert any(torch.count_nonzero(m.bias) > 0 for m in wm.modules() if isinstance(m, nn.Linear))
    torch.testing.assert_close(tok.quantizer.codebook.norm(dim=-1), torch.ones(cfg.tokenizer.codebook_size))
