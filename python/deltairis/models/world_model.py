"""The world model: a transformer over blocks [I-token, action, Δ1..ΔK] (docs/algorithm.md section 4)."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from deltairis.config.models import WorldModelConfig
from deltairis.models.common import LossOutput, init_reference_weights, masked_mean
from deltairis.models.convnet import FlattenHWC, FrameEncoder
from deltairis.models.kv_cache import KVCache
from deltairis.models.transformer import Transformer
from deltairis.ops.twohot import symlog, two_hot


class WorldModelLogits(NamedTuple):
    latents: torch.Tensor  # (B, T-1, K, V): Δ-token logits for each transition t -> t+1
    rewards: torch.Tensor  # (B, T, R)
    ends: torch.Tensor  # (B, T, 2)


class Head(nn.Module):
    """Linear -> ReLU -> Linear applied at the block positions in ``block_pattern``.

    ``indices`` (a buffer, as in the reference checkpoint) lists the kept absolute positions of a
    full-length sequence.
    """

    def __init__(
        self, max_blocks: int, block_pattern: list[int], embed_dim: int, hidden: int, out: int
    ) -> None:
        super().__init__()
        pattern = torch.tensor(block_pattern, dtype=torch.bool)
        kept = torch.nonzero(pattern).flatten()
        self.num_kept = int(kept.numel())
        self.block_size = len(block_pattern)
        offsets = torch.arange(max_blocks).repeat_interleave(self.num_kept) * self.block_size
        self.register_buffer("indices", kept.repeat(max_blocks) + offsets)
        self.head_module = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU(), nn.Linear(hidden, out))

    def select(self, x: torch.Tensor, num_blocks: int) -> torch.Tensor:
        """Outputs at the kept positions of the first ``num_blocks`` blocks: (B, num_blocks*kept, E)."""
        return x[:, self.indices[: num_blocks * self.num_kept]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_module(x)


class WorldModel(nn.Module):
    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        self.config = config
        tcfg = config.transformer
        e = tcfg.embed_dim
        k = config.tokens_per_frame
        if tcfg.tokens_per_block != k + 2:
            raise ValueError(
                f"tokens_per_block {tcfg.tokens_per_block} must be tokens_per_frame + 2 = {k + 2}"
            )
        fc = config.frame_cnn
        res = 64 // fc.downsampling
        if fc.latent_dim * res * res != e:
            raise ValueError(f"I-token size {fc.latent_dim}*{res}*{res} must equal embed_dim {e}")
        self.transformer = Transformer(tcfg)
        self.frame_cnn = nn.Sequential(FrameEncoder(fc), FlattenHWC(), nn.LayerNorm(e))
        self.act_emb = nn.Embedding(config.num_actions, e)
        self.latents_emb = nn.Embedding(config.latent_vocab_size, e)
        act_pattern = [0, 1] + [0] * k
        latent_pattern = [0, 1] + [1] * (k - 1) + [0]
        h = config.head_hidden
        self.head_latents = Head(tcfg.max_blocks, latent_pattern, e, h, config.latent_vocab_size)
        self.head_rewards = Head(tcfg.max_blocks, act_pattern, e, h, config.num_reward_classes)
        self.head_ends = Head(tcfg.max_blocks, act_pattern, e, h, 2)
        if config.reference_init:
            self.apply(init_reference_weights)

    @property
    def tokens_per_frame(self) -> int:
        return self.config.tokens_per_frame

    # -- embeddings ---------------------------------------------------------------------------
    def embed_frames(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> I-tokens (B, T, E)."""
        return self.frame_cnn(obs)

    def embed_sequence(self, obs: torch.Tensor, act: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Blocks [I(x_t), a_t, Δ_t] for t < T -> (B, T*(K+2), E); tokens (B, T, K)."""
        frames = self.embed_frames(obs).unsqueeze(2)  # (B, T, 1, E)
        acts = self.act_emb(act).unsqueeze(2)  # (B, T, 1, E)
        lat = self.latents_emb(tokens)  # (B, T, K, E)
        seq = torch.cat((frames, acts, lat), dim=2)  # (B, T, K+2, E)
        return seq.flatten(1, 2)  # (B, T*(K+2), E)

    # -- teacher-forced forward -----------------------------------------------------------------
    def forward_logits(
        self, obs: torch.Tensor, act: torch.Tensor, tokens: torch.Tensor, cache: KVCache | None = None
    ) -> WorldModelLogits:
        """Logits for T blocks given the Δ-tokens of the first T-1 transitions (B, T-1, K)."""
        b, t = act.shape
        k = self.tokens_per_frame
        dummy = tokens.new_zeros(b, 1, k)
        seq = self.embed_sequence(obs, act, torch.cat((tokens, dummy), dim=1))
        x = self.transformer(seq, cache)
        lat = self.head_latents(self.head_latents.select(x, t)).view(b, t, k, -1)[:, :-1]
        rew = self.head_rewards(self.head_rewards.select(x, t))  # (B, T, R)
        end = self.head_ends(self.head_ends.select(x, t))  # (B, T, 2)
        return WorldModelLogits(lat, rew, end)

    def reward_labels(self, rew: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.two_hot_rewards:
            return two_hot(symlog(rew), cfg.num_reward_buckets, cfg.bucket_low, cfg.bucket_high)
        return (torch.sign(rew) + 1).long()

    def compute_loss(self, batch, tokenizer) -> LossOutput:
        """Δ-token, reward and end cross-entropies, masked as the reference masks them.

        Rewards and ends count on every real step; the end label is the env's ``done``, termination
        or time-limit truncation. Δ-token targets of block t (and the accuracy) count wherever frame
        t is real, so the transition from the last real frame into right padding is trained;
        ``config.exclude_padding`` (opt-in) also requires frame t+1 to be real.
        """
        cfg = self.config
        obs, act, mask = batch.obs, batch.act, batch.mask_padding
        with torch.no_grad():
            tokens = tokenizer.encode_tokens(obs[:, :-1], act[:, :-1], obs[:, 1:])  # (B, T-1, K)
        out = self.forward_logits(obs, act, tokens)
        real_t = mask[:, :-1] & mask[:, 1:] if cfg.exclude_padding else mask[:, :-1]  # (B, T-1)
        valid_lat = real_t.unsqueeze(-1).expand_as(tokens)  # (B, T-1, K)
        ce_lat = F.cross_entropy(
            out.latents.flatten(0, 2).float(), tokens.flatten(), reduction="none"
        ).view_as(tokens)
        loss_latents = masked_mean(ce_lat, valid_lat)
        acc = masked_mean((out.latents.argmax(-1) == tokens).float(), valid_lat)
        labels = self.reward_labels(batch.rew)
        logits_r = out.rewards.float()
        if cfg.two_hot_rewards:
            ce_rew = -(labels * F.log_softmax(logits_r, dim=-1)).sum(-1)
        else:
            ce_rew = F.cross_entropy(logits_r.flatten(0, 1), labels.flatten(), reduction="none").view_as(
                batch.rew
            )
        loss_rewards = masked_mean(ce_rew, mask)
        done = batch.end.bool() | batch.trunc.bool()  # (B, T) the env's done
        ce_end = F.cross_entropy(out.ends.float().flatten(0, 1), done.long().flatten(), reduction="none")
        loss_ends = masked_mean(ce_end.view_as(mask.float()), mask)
        loss = (
            cfg.latents_weight * loss_latents
            + cfg.rewards_weight * loss_rewards
            + cfg.ends_weight * loss_ends
        )
        metrics = {
            "world_model/loss": loss.detach(),
            "world_model/loss_latents": loss_latents.detach(),
            "world_model/loss_rewards": loss_rewards.detach(),
            "world_model/loss_ends": loss_ends.detach(),
            "world_model/latents_accuracy": acc.detach(),
        }
        return LossOutput(loss, metrics)
