"""Strict loading of reference-layout checkpoints, built here from docs/algorithm.md section 7's key list."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deltairis.agent import Agent, CheckpointError, agent_checkpoint, load_agent, save_agent
from deltairis.config import make_agent_config


def _conv(prefix: str, cout: int, cin: int, k: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (cout, cin, k, k), f"{prefix}.bias": (cout,)}


def _gn(prefix: str, c: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,)}


def _rb(prefix: str, cin: int, cout: int) -> dict[str, tuple]:
    d = _gn(f"{prefix}.f.0", cin) | _conv(f"{prefix}.f.2", cout, cin, 3) | _gn(f"{prefix}.f.3", cout)
    d |= _conv(f"{prefix}.f.5", cout, cout, 3)
    if cin != cout:
        d |= _conv(f"{prefix}.skip_projection", cout, cin, 1)
    return d


def encoder_keys(prefix: str, cin: int, latent: int, n: int) -> dict[str, tuple]:
    # docs/algorithm.md section 2: 0 conv, 1 RB(n,n), 2 down(n), 3 RB(n,n), 4 RB(n,2n), 5 down(2n), 6 RB(2n,2n), 7 down(2n),
    # 8 RB(2n,4n), 9 GroupNorm(4n), 10 SiLU, 11 conv(4n->latent)
    d = _conv(f"{prefix}.0", n, cin, 3) | _rb(f"{prefix}.1", n, n) | _conv(f"{prefix}.2.conv", n, n, 2)
    d |= _rb(f"{prefix}.3", n, n) | _rb(f"{prefix}.4", n, 2 * n) | _conv(f"{prefix}.5.conv", 2 * n, 2 * n, 2)
    d |= (
        _rb(f"{prefix}.6", 2 * n, 2 * n)
        | _conv(f"{prefix}.7.conv", 2 * n, 2 * n, 2)
        | _rb(f"{prefix}.8", 2 * n, 4 * n)
    )
    return d | _gn(f"{prefix}.9", 4 * n) | _conv(f"{prefix}.11", latent, 4 * n, 3)


def decoder_keys(prefix: str, latent: int, cout: int, n: int) -> dict[str, tuple]:
    # docs/algorithm.md section 2: 0 conv(latent->4n), 1 RB(4n,2n), 2 up(2n), 3 RB(2n,2n), 4 up(2n), 5 RB(2n,n), 6 RB(n,n),
    # 7 up(n), 8 RB(n,n), 9 GroupNorm(n), 10 SiLU, 11 conv(n->C_out)
    d = (
        _conv(f"{prefix}.0", 4 * n, latent, 3)
        | _rb(f"{prefix}.1", 4 * n, 2 * n)
        | _conv(f"{prefix}.2.conv", 2 * n, 2 * n, 3)
    )
    d |= (
        _rb(f"{prefix}.3", 2 * n, 2 * n)
        | _conv(f"{prefix}.4.conv", 2 * n, 2 * n, 3)
        | _rb(f"{prefix}.5", 2 * n, n)
    )
    d |= _rb(f"{prefix}.6", n, n) | _conv(f"{prefix}.7.conv", n, n, 3) | _rb(f"{prefix}.8", n, n)
    return d | _gn(f"{prefix}.9", n) | _conv(f"{prefix}.11", cout, n, 3)


def _lin(prefix: str, out: int, inp: int) -> dict[str, tuple]:
    return {f"{prefix}.weight": (out, inp), f"{prefix}.bias": (out,)}


def reference_layout(preset: str, a: int) -> dict[str, tuple]:
    """Key -> shape of the published checkpoint layout (docs/algorithm.md section 7, Atari per docs/algorithm.md section 6)."""
    atari = preset == "atari"
    e = 256 if atari else 512
    blocks = 26 if atari else 21
    p = 6 * blocks
    dec_latent, dec_n = (16, 32) if atari else (8, 64)
    d: dict[str, tuple] = {
        "tokenizer.encoder_act_emb.weight": (a, 4096),
        "tokenizer.decoder_act_emb.weight": (a, 256),
        "tokenizer.quantizer.codebook": (1024, 64),
        "tokenizer.quantizer.codewords_freqs": (1024,),
        "tokenizer.quantizer.num_codebook_updates": (),
    }
    d |= _lin("tokenizer.quantizer.pre_quant_proj", 64, 1024) | _lin(
        "tokenizer.quantizer.post_quant_proj", 1024, 64
    )
    d |= encoder_keys("tokenizer.encoder.encoder", 7, 64, 64)
    d |= decoder_keys("tokenizer.decoder.decoder", dec_latent + 4 + 64, 3, 64)
    d |= encoder_keys("tokenizer.frame_cnn.encoder", 3, dec_latent, dec_n)
    w = "world_model"
    d |= {f"{w}.transformer.pos_emb.weight": (p, e)} | _gn(f"{w}.transformer.ln", e)
    for i in range(3):
        b = f"{w}.transformer.blocks.{i}"
        d |= {f"{b}.sa.mask": (p, p)} | _gn(f"{b}.sa.ln", e)
        for name in ("query", "key", "value", "attention.proj"):
            d |= _lin(f"{b}.sa.{name}", e, e)
        d |= _gn(f"{b}.mlp.ln", e) | _lin(f"{b}.mlp.mlp.0", 4 * e, e) | _lin(f"{b}.mlp.mlp.2", e, 4 * e)
    d |= encoder_keys(f"{w}.frame_cnn.0.encoder", 3, 4 if atari else 8, 32) | _gn(f"{w}.frame_cnn.2", e)
    d |= {f"{w}.act_emb.weight": (a, e), f"{w}.latents_emb.weight": (1024, e)}
    for head, out, kept in (("latents", 1024, 4), ("rewards", 3 if atari else 255, 1), ("ends", 2, 1)):
        d |= {f"{w}.head_{head}.indices": (kept * blocks,)}
        d |= _lin(f"{w}.head_{head}.head_module.0", e, e) | _lin(f"{w}.head_{head}.head_module.2", out, e)
    for m in ("model", "target_model"):
        c = f"actor_critic.{m}"
        d |= encoder_keys(f"{c}.cnn.0.encoder", 3, 16, 32)
        d |= {f"{c}.lstm.weight_ih": (2048, 1024), f"{c}.lstm.weight_hh": (2048, 512)}
        d |= {f"{c}.lstm.bias_ih": (2048,), f"{c}.lstm.bias_hh": (2048,)}
        d |= _lin(f"{c}.actor_linear", a, 512) | _lin(f"{c}.critic_linear", 1 if atari else 255, 512)
    return d


def reference_state_dict(preset: str, a: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in reference_layout(preset, a).items():
        if k.endswith(".mask"):
            sd[k] = torch.ones(shape, dtype=torch.bool).tril()
        elif k.endswith("indices"):
            kept = [1, 2, 3, 4] if "latents" in k else [1]
            n = shape[0] // len(kept)
            sd[k] = (torch.tensor(kept).repeat(n) + 6 * torch.arange(n).repeat_interleave(len(kept))).long()
        elif k.endswith("num_codebook_updates"):
            sd[k] = torch.tensor(123, dtype=torch.int64)
        elif k.endswith("codebook"):
            sd[k] = torch.nn.functional.normalize(torch.randn(shape, generator=g), dim=-1)
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.05
    return sd


@pytest.mark.parametrize("preset,a", [("crafter", 17), ("atari", 4), ("atari", 9)])
def test_reference_layout_loads_strictly(tmp_path: Path, preset: str, a: int) -> None:
    sd = reference_state_dict(preset, a)
    path = tmp_path / "last.pt"
    torch.save(sd, path)
    agent = load_agent(path, preset=preset)
    assert agent.config.num_actions == a
    loaded = agent.state_dict()
    assert set(loaded) == set(sd)
    for k, v in sd.items():
        assert torch.equal(loaded[k], v), k


def test_crafter_parameter_counts_match_spec() -> None:
    agent = Agent(make_agent_config("crafter"))
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(agent.tokenizer) == 5_409_611
    assert count(agent.world_model) == 11_948_457
    assert count(agent.actor_critic) == 7_490_432


def test_parity_api_shapes_on_reference_weights(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    torch.save(reference_state_dict("crafter", 17), path)
    agent = load_agent(path)
    obs = torch.rand(2, 3, 3, 64, 64)
    act = torch.randint(0, 17, (2, 3))
    tokens = agent.delta_tokens(obs[:, :-1], act[:, :-1], obs[:, 1:])
    assert tokens.shape == (2, 2, 4) and tokens.dtype == torch.int64
    recon = agent.reconstruct(obs[:, :-1], act[:, :-1], obs[:, 1:])
    assert recon.shape == (2, 2, 3, 64, 64) and recon.min() >= 0 and recon.max() <= 1
    wm = agent.world_model_logits(obs, act)
    assert (
        wm.latents.shape == (2, 2, 4, 1024) and wm.rewards.shape == (2, 3, 255) and wm.ends.shape == (2, 3, 2)
    )
    # the teacher-forced latent logits use the tokenizer's tokens as inputs: changing the first frame's
    # tokens changes the second transition's predictions
    pol = agent.policy_logits(obs)
    assert pol.actions.shape == (2, 3, 17) and pol.values.shape == (2, 3)
    # frame-by-frame from a zero state: the first step equals a fresh single-frame call
    single = agent.policy_logits(obs[:, :1])
    torch.testing.assert_close(pol.actions[:, 0], single.actions[:, 0])
    with pytest.raises(ValueError, match="act must be int64"):
        agent.delta_tokens(obs[:, :-1], act[:, :-1].int(), obs[:, 1:])
    with pytest.raises(ValueError, match="obs must be"):
        agent.world_model_logits(obs[0], act)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda sd: sd.pop("world_model.act_emb.weight"), "missing keys: world_model.act_emb.weight"),
        (lambda sd: sd.__setitem__("extra.weight", torch.zeros(1)), "unexpected keys: extra.weight"),
        (
            lambda sd: sd.__setitem__("tokenizer.quantizer.codebook", torch.zeros(512, 64)),
            r"tokenizer.quantizer.codebook has shape \(512, 64\), expected \(1024, 64\)",
        ),
        (
            lambda sd: sd.__setitem__(
                "world_model.transformer.blocks.1.sa.mask", torch.ones(126, 126, dtype=torch.bool)
            ),
            "blocks.1.sa.mask is not the causal attention mask",
        ),
        (
            lambda sd: sd.__setitem__("actor_critic.model.lstm.bias_ih", torch.full((2048,), float("nan"))),
            "lstm.bias_ih contains NaN",
        ),
    ],
)
def test_mismatched_reference_checkpoint_is_named(tmp_path: Path, mutate, match: str) -> None:
    sd = reference_state_dict("crafter", 17)
    mutate(sd)
    path = tmp_path / "last.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=match):
        load_agent(path)


def test_wrong_preset_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    torch.save(reference_state_dict("crafter", 17), path)
    with pytest.raises(CheckpointError, match="pos_emb.weight has shape"):
        load_agent(path, preset="atari")


def test_corrupt_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_agent(bad)
    good = tmp_path / "good.pt"
    save_agent(Agent(make_agent_config("tiny")), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_agent(truncated)
    with pytest.raises(FileNotFoundError):
        load_agent(tmp_path / "nope.pt")


def test_own_checkpoint_roundtrip(tmp_path: Path) -> None:
    agent = Agent(make_agent_config("tiny", num_actions=7))
    path = tmp_path / "last.pt"
    save_agent(agent, path)
    again = load_agent(path, preset="crafter")  # the file's own config wins over the preset
    assert again.config == agent.config
    for (k, v), (k2, v2) in zip(agent.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    payload = agent_checkpoint(agent)
    payload["config"]["tokenizer"]["bogus"] = 1
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="bogus"):
        load_agent(path)
    with pytest.raises(CheckpointError, match="7 actions"):
        save_agent(agent, path)
        load_agent(path, num_actions=4)
