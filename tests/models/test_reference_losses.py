"""Our losses, gradients and codebook update against plain restatements of the reference's rules.

Each ``_ref_*`` function below restates, in the reference's own terms, how its training code computes a
quantity (masks, reductions, label grids). The batches cover left padding, right padding after an
episode end, and no padding; the presets cover Crafter and Atari (and the tiny test preset).
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from deltairis.agent import Agent
from deltairis.config import make_agent_config
from deltairis.data.batch import Batch
from deltairis.models.quantizer import Quantizer
from deltairis.ops.twohot import symlog, two_hot

PADDINGS = {"none": (0, 0), "left": (3, 0), "right": (0, 2), "both": (2, 2)}
# Every padding case on the tiny preset; one batch with left and right padding on the full presets
# (sample 0 left padded, the last sample ended and right padded), kept short for the CPU.
CASES = [("tiny", p) for p in PADDINGS] + [("crafter", "both"), ("atari", "both")]


def _shape(preset: str) -> tuple[int, int]:
    return (3, 6) if preset == "tiny" else (2, 5)


def _batch(b: int, t: int, num_actions: int, pad_left: int, pad_right: int, seed: int) -> Batch:
    """Sample 0 is left padded, the last sample ends (end = 1) and is right padded after the end."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.rand(b, t, 3, 64, 64, generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    end = torch.zeros(b, t, dtype=torch.uint8)
    trunc = torch.zeros(b, t, dtype=torch.uint8)
    if pad_left:
        mask[0, :pad_left] = False
    if pad_right:
        mask[-1, t - pad_right :] = False
        end[-1, t - pad_right - 1] = 1
    if b > 2:
        trunc[1, t - 1] = 1  # a time-limit truncation is an end label for the world model
    obs = obs * mask[:, :, None, None, None]
    rew = torch.randn(b, t, generator=g) * mask
    return Batch(
        obs=obs,
        act=torch.randint(0, num_actions, (b, t), generator=g),
        rew=rew,
        end=end,
        trunc=trunc,
        mask_padding=mask,
        episode_id=torch.zeros(b, dtype=torch.long),
        start=torch.zeros(b, dtype=torch.long),
        stop=torch.full((b,), t, dtype=torch.long),
    )


# -- restatements of the reference ---------------------------------------------------------------------
def _ref_symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log(torch.abs(x) + 1)


def _ref_two_hot(x: torch.Tensor, x_min: float, x_max: float, num_buckets: int) -> torch.Tensor:
    x = x.clone().clamp_(x_min, x_max - 1e-5)
    buckets = torch.linspace(x_min, x_max, num_buckets).to(x.device)
    k = torch.searchsorted(buckets, x) - 1
    values = torch.stack((buckets[k + 1] - x, x - buckets[k]), dim=-1) / (
        buckets[k + 1] - buckets[k]
    ).unsqueeze(-1)
    return torch.scatter(
        x.new_zeros(*x.size(), num_buckets), dim=-1, index=torch.stack((k, k + 1), dim=-1), src=values
    )


def _ref_tokenizer_loss(tok, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Commitment over all token vectors; L1/L2/worst-pixel over real->real transitions."""
    cfg = tok.config
    x1, a, x2 = batch.obs[:, :-1], batch.act[:, :-1], batch.obs[:, 1:]
    z = F.normalize(tok.quantizer.pre_quant_proj(tok.encode(x1, a, x2)), dim=-1)  # (B, T-1, K, e)
    b, t, k, e = z.shape
    z = z.reshape(b * t * k, e)
    tokens = torch.einsum("ne,ce->nc", z, tok.quantizer.codebook).argmax(dim=-1)
    q = tok.quantizer.codebook[tokens]
    commitment = cfg.commitment_weight * (z - q.detach()).pow(2).mean()
    q = tok.quantizer.post_quant_proj(z + (q - z).detach()).reshape(b, t, k, -1)
    r = tok.decode(x1, a, tok.tokens_to_map(q))
    delta = (x2 - r)[torch.logical_and(batch.mask_padding[:, 1:], batch.mask_padding[:, :-1])]
    l1 = cfg.l1_weight * delta.abs().mean()
    l2 = cfg.l2_weight * delta.pow(2).mean()
    worst = cfg.max_pixel_weight * delta.flatten(1).pow(2).max(dim=-1)[0].mean()
    return commitment + l1 + l2 + worst, z.detach(), tokens


def _ref_codebook_update(
    quantizer: Quantizer, z: torch.Tensor, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """EMA of the codebook and the frequencies over every vector (no revival at high entropy)."""
    c = quantizer.codebook.size(0)
    one_hot = F.one_hot(tokens, c).float()
    counts = one_hot.sum(dim=0)
    update = F.normalize(
        torch.einsum("ne,nc->ce", z, one_hot) / torch.clamp(counts.unsqueeze(-1), min=1), dim=-1
    )
    codebook = quantizer.codebook.clone().lerp_(update, 1 - 0.99)
    freqs = quantizer.codewords_freqs.clone().lerp_(counts / one_hot.size(0), 1 - 0.98)
    return F.normalize(codebook, dim=-1), freqs


def _ref_world_model_loss(wm, tokenizer, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = wm.config
    with torch.no_grad():
        tokens = tokenizer.encode_tokens(batch.obs[:, :-1], batch.act[:, :-1], batch.obs[:, 1:])
    out = wm.forward_logits(batch.obs, batch.act, tokens)
    mask = batch.mask_padding
    labels_latents = tokens[mask[:, :-1]].flatten()
    logits_latents = out.latents[mask[:, :-1]].flatten(0, 1)
    acc = (logits_latents.max(dim=-1)[1] == labels_latents).float().mean()
    if cfg.two_hot_rewards:
        labels_rewards = _ref_two_hot(
            _ref_symlog(batch.rew), cfg.bucket_low, cfg.bucket_high, cfg.num_reward_buckets
        )
    else:
        labels_rewards = (batch.rew.sign() + 1).long()
    done = (batch.end.bool() | batch.trunc.bool()).long()
    loss = (
        F.cross_entropy(logits_latents, labels_latents) * cfg.latents_weight
        + F.cross_entropy(out.rewards[mask], labels_rewards[mask]) * cfg.rewards_weight
        + F.cross_entropy(out.ends[mask], done[mask]) * cfg.ends_weight
    )
    return loss, acc


def _assert_grads_close(a: torch.nn.Module, b: torch.nn.Module, rtol: float = 1e-4) -> None:
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        if pa.grad is None and pb.grad is None:
            continue
        assert pa.grad is not None and pb.grad is not None, name
        scale = pb.grad.abs().max().clamp(min=1e-12)
        err = (pa.grad - pb.grad).abs().max() / scale
        assert err <= rtol, f"{name}: relative gradient error {float(err):.3g}"


def _preset(name: str, num_actions: int):
    return make_agent_config(name, num_actions)


# -- two-hot labels ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("low", "high", "n"), [(-20.0, 20.0, 255), (-5.0, 5.0, 63), (-1.0, 3.0, 2)])
def test_two_hot_labels_are_bit_identical(low: float, high: float, n: int) -> None:
    g = torch.Generator().manual_seed(n)
    grid = torch.linspace(low, high, n)
    x = torch.cat(
        (
            # in range and above it (the reference cannot encode values <= low: it would index bucket -1)
            (torch.rand(4000, generator=g) * 1.1 + 1e-4) * (high - low) + low,
            grid[1:],  # exactly on the grid
            grid[1:-1] + 1e-6,
            torch.tensor([high, high + 5, high - 1e-5, low + 1e-4]),
        )
    )
    ours = two_hot(x, n, low, high)
    assert torch.equal(ours, _ref_two_hot(x, low, high, n))
    rewards = torch.tensor([0.0, 1.0, -1.0, 0.1, -0.1, 2.0, 1e3, -3.7, 0.5, -0.25])
    assert torch.equal(symlog(rewards), _ref_symlog(rewards))
    r = rewards[_ref_symlog(rewards) > low]
    assert torch.equal(two_hot(symlog(r), n, low, high), _ref_two_hot(_ref_symlog(r), low, high, n))


def test_two_hot_at_the_lowest_bucket_puts_all_weight_there() -> None:
    # The reference would index bucket -1 here; we put the weight on bucket 0.
    out = two_hot(torch.tensor([-20.0, -25.0]), 255, -20.0, 20.0)
    assert torch.equal(out[:, 0], torch.ones(2)) and out[:, 1:].abs().sum() == 0


# -- tokenizer -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("preset", "padding"), CASES)
def test_tokenizer_loss_gradients_and_codebook_update_match_the_reference(preset: str, padding: str) -> None:
    num_actions = {"tiny": 5, "crafter": 17, "atari": 4}[preset]
    torch.manual_seed(0)
    agent = Agent(_preset(preset, num_actions))
    ours = agent.tokenizer.train()
    ref = copy.deepcopy(ours)
    batch = _batch(*_shape(preset), num_actions, *PADDINGS[padding], seed=1)
    ref_loss, z, tokens = _ref_tokenizer_loss(ref, batch)
    expected_codebook, expected_freqs = _ref_codebook_update(ref.quantizer, z, tokens)
    out = ours.compute_loss(batch)
    torch.testing.assert_close(out.loss, ref_loss, rtol=1e-5, atol=1e-7)
    out.loss.backward()
    ref_loss.backward()
    _assert_grads_close(ours, ref)
    torch.testing.assert_close(ours.quantizer.codebook, expected_codebook, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.quantizer.codewords_freqs, expected_freqs, rtol=1e-6, atol=1e-9)


def test_tokenizer_padding_changes_only_commitment_and_codebook() -> None:
    # Padded frames enter the commitment loss and the codebook statistics, never the pixel losses.
    torch.manual_seed(0)
    tok = Agent(_preset("tiny", 5)).tokenizer.eval()
    b1 = _batch(2, 6, 5, 2, 2, seed=3)
    b2 = copy.deepcopy(b1)
    b2.obs[0, :2] = torch.rand(2, 3, 64, 64)  # padded frames only
    m1, m2 = tok.compute_loss(b1).metrics, tok.compute_loss(b2).metrics
    for key in ("tokenizer/l1_loss", "tokenizer/l2_loss", "tokenizer/max_pixel_loss"):
        torch.testing.assert_close(m1[key], m2[key])
    assert not torch.isclose(
        m1["tokenizer/commitment_loss"], m2["tokenizer/commitment_loss"], rtol=1e-7, atol=0
    )


def test_tokenizer_exclude_padding_switch_restores_the_masked_variant() -> None:
    torch.manual_seed(0)
    cfg = make_agent_config("tiny", 5)
    tok = Agent(
        dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer, exclude_padding=True))
    ).tokenizer
    tok.eval()
    b1 = _batch(2, 6, 5, 2, 2, seed=3)
    b2 = copy.deepcopy(b1)
    b2.obs[0, :2] = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(tok.compute_loss(b1).loss, tok.compute_loss(b2).loss)
    # and the codebook statistics skip padding transitions
    tok.train()
    before = tok.quantizer.codewords_freqs.clone()
    tok.compute_loss(b1)
    valid = (b1.mask_padding[:, :-1] & b1.mask_padding[:, 1:]).sum() * cfg.tokenizer.tokens_per_frame
    counts = (tok.quantizer.codewords_freqs - 0.98 * before) / 0.02 * valid
    torch.testing.assert_close(counts.sum(), valid.float(), rtol=1e-4, atol=1e-3)


# -- codebook revival ----------------------------------------------------------------------------------
def test_revival_takes_a_uniformly_random_subset_of_dead_codes() -> None:
    from deltairis.config.models import TokenizerConfig

    c, n, trials = 32, 8, 400
    hits = torch.zeros(c)
    z = F.normalize(torch.randn(n, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    sets = set()
    for trial in range(trials):
        torch.manual_seed(trial)
        q = Quantizer(TokenizerConfig(num_actions=3, codebook_size=c, codebook_dim=8), input_dim=8)
        q.codewords_freqs.zero_()
        q.codewords_freqs[0] = 1.0  # entropy 0: codes 1..31 are dead and revival is allowed
        q.update_codebook(z, torch.zeros(n, dtype=torch.long))
        revived = torch.isclose(q.codewords_freqs, torch.full((c,), 1 / c))
        assert int(revived.sum()) == n and not revived[0]
        # each revived code is a distinct vector of the batch
        sims = q.codebook[revived] @ z.T
        assert torch.equal((sims > 1 - 1e-5).sum(0), torch.ones(n, dtype=torch.long))
        hits += revived.float()
        sets.add(tuple(torch.nonzero(revived).flatten().tolist()))
    rate = hits[1:] / trials  # expected n / 31 = 0.258 for every dead code
    assert rate.min() > 0.17 and rate.max() < 0.35, rate
    assert len(sets) > trials // 2


# -- world model ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("preset", "padding"), CASES)
def test_world_model_loss_and_gradients_match_the_reference(preset: str, padding: str) -> None:
    num_actions = {"tiny": 5, "crafter": 17, "atari": 4}[preset]
    torch.manual_seed(0)
    agent = Agent(_preset(preset, num_actions)).train()
    agent.tokenizer.eval()
    ours = agent.world_model
    ref = copy.deepcopy(ours)
    batch = _batch(*_shape(preset), num_actions, *PADDINGS[padding], seed=2)
    ref_loss, ref_acc = _ref_world_model_loss(ref, agent.tokenizer, batch)
    out = ours.compute_loss(batch, agent.tokenizer)
    torch.testing.assert_close(out.loss, ref_loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.metrics["world_model/latents_accuracy"], ref_acc)
    out.loss.backward()
    ref_loss.backward()
    _assert_grads_close(ours, ref)


def test_world_model_trains_the_step_into_right_padding() -> None:
    # Δ-token targets count wherever frame t is real: the transition into padding has weight, the one
    # out of left padding has none.
    torch.manual_seed(0)
    agent = Agent(_preset("tiny", 5)).eval()
    b = _batch(3, 6, 5, 2, 2, seed=4)
    out = agent.world_model.forward_logits(
        b.obs, b.act, agent.tokenizer.encode_tokens(b.obs[:, :-1], b.act[:, :-1], b.obs[:, 1:])
    )
    last_real = int(b.mask_padding[-1].nonzero().max())
    probe = out.latents.detach().requires_grad_(True)
    tokens = agent.tokenizer.encode_tokens(b.obs[:, :-1], b.act[:, :-1], b.obs[:, 1:])
    real_t = b.mask_padding[:, :-1]
    ce = F.cross_entropy(probe[real_t].flatten(0, 1), tokens[real_t].flatten())
    ce.backward()
    assert probe.grad[-1, last_real].abs().sum() > 0  # frame t real, t+1 padding: trained
    assert probe.grad[0, 0].abs().sum() == 0  # frame t padding: not trained
    cfg = make_agent_config("tiny", 5)
    strict = Agent(
        dataclasses.replace(cfg, world_model=dataclasses.replace(cfg.world_model, exclude_padding=True))
    )
    strict.load_state_dict(agent.state_dict())
    strict.eval()
    full = agent.world_model.compute_loss(b, agent.tokenizer).metrics["world_model/loss_latents"]
    masked = strict.world_model.compute_loss(b, strict.tokenizer).metrics["world_model/loss_latents"]
    assert not torch.isclose(full, masked)


def test_world_model_end_label_includes_truncation() -> None:
    torch.manual_seed(0)
    agent = Agent(_preset("tiny", 5)).eval()
    b = _batch(3, 6, 5, 0, 0, seed=5)
    b.trunc[1, 5] = 1
    b2 = copy.deepcopy(b)
    b2.trunc.zero_()
    l1 = agent.world_model.compute_loss(b, agent.tokenizer).metrics["world_model/loss_ends"]
    l2 = agent.world_model.compute_loss(b2, agent.tokenizer).metrics["world_model/loss_ends"]
    assert not torch.isclose(l1, l2)
    b2.end[1, 5] = 1  # the same label given as a termination
    torch.testing.assert_close(
        agent.world_model.compute_loss(b2, agent.tokenizer).metrics["world_model/loss_ends"], l1
    )
