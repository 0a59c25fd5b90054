"""channels_last frame CNNs, forced on CPU (``_LayoutMixin.cuda_only = False``), against the plain layout.

On CUDA the layout is on by default; on CPU it is off so CPU results stay those of the plain layers.
Forcing it on CPU checks the layout logic itself on every model that uses a frame CNN: weights move to
NHWC and back, outputs and gradients equal the contiguous run to float tolerance (cuDNN's / oneDNN's NHWC
kernels sum in another order), and the default CPU path is bit for bit the plain one.
"""

from __future__ import annotations

import pytest
import torch

from deltairis.agent import Agent
from deltairis.config import make_agent_config
from deltairis.models.convnet import FrameEncoder, _LayoutMixin, set_frame_cnn_options
from models.helpers import make_batch


def _grads(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


def _conv_weights_nhwc(module: torch.nn.Module) -> list[bool]:
    return [
        m.weight.is_contiguous(memory_format=torch.channels_last)
        for m in module.modules()
        if isinstance(m, torch.nn.Conv2d) and m.weight.size(2) * m.weight.size(3) > 1
    ]


@pytest.fixture(scope="module")
def agent() -> Agent:
    torch.manual_seed(0)
    return Agent(make_agent_config("tiny")).eval()  # eval: no codebook update between the compared runs


def test_default_cpu_path_is_the_plain_one(agent: Agent) -> None:
    batch = make_batch(2, 3, agent.config.num_actions, seed=1)
    tok = agent.tokenizer
    set_frame_cnn_options(tok, channels_last=True, fused_norm=True)  # the defaults
    a = tok.compute_loss(batch).loss
    set_frame_cnn_options(tok, channels_last=False, fused_norm=False)
    b = tok.compute_loss(batch).loss
    set_frame_cnn_options(tok, channels_last=True, fused_norm=True)
    assert torch.equal(a, b)
    assert not any(_conv_weights_nhwc(tok))


def test_forced_channels_last_equals_plain_on_every_model(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = make_batch(2, agent.config.actor_critic.burn_in + 1, agent.config.num_actions, seed=2)
    tok, wm, ac = agent.tokenizer, agent.world_model, agent.actor_critic
    runs = []
    for nhwc in (False, True):
        monkeypatch.setattr(_LayoutMixin, "cuda_only", not nhwc)
        agent.zero_grad(set_to_none=True)
        tl = tok.compute_loss(batch).loss
        tl.backward()
        wl = wm.compute_loss(batch, tok).loss
        wl.backward()
        out = ac.model(batch.obs[:, -1], ac.initial_state(2, "cpu"))
        state = ac.model.burn_in(batch.obs[:, :-1])
        (out.logits.square().sum() + state[0].square().sum()).backward()
        runs.append(([tl.detach(), wl.detach(), out.logits.detach(), state[0].detach()], _grads(agent)))
        weights = _conv_weights_nhwc(tok) + _conv_weights_nhwc(wm) + _conv_weights_nhwc(ac.model)
        assert all(weights) if nhwc else not any(weights)
    (v0, g0), (v1, g1) = runs
    for a, b in zip(v1, v0):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    # back to the CPU default: the weights return to the contiguous layout at the next forward
    monkeypatch.setattr(_LayoutMixin, "cuda_only", True)
    tok.compute_loss(batch)
    assert not any(_conv_weights_nhwc(tok))


def test_channels_last_output_flattens_as_the_plain_one(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    cfg = make_agent_config("tiny").actor_critic.frame_cnn
    enc = FrameEncoder(cfg)
    x = torch.rand(3, 2, 3, 64, 64)
    plain = enc(x)
    monkeypatch.setattr(_LayoutMixin, "cuda_only", False)
    nhwc = enc(x)
    assert nhwc.shape == plain.shape
    assert nhwc.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nhwc, plain, rtol=1e-4, atol=1e-5)
