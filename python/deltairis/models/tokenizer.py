"""The delta tokenizer: encodes what changed between x_t and x_{t+1} given a_t (docs/algorithm.md section 3)."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from deltairis.config.models import TokenizerConfig
from deltairis.models.common import LossOutput, init_reference_weights, masked_mean, mean
from deltairis.models.convnet import FrameDecoder, FrameEncoder
from deltairis.models.quantizer import Quantizer


def quantize_frame_values(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to multiples of 1/255 (how decoded frames are shown and re-used)."""
    return x.clamp(0.0, 1.0).mul(255.0).round().div(255.0)


class Tokenizer(nn.Module):
    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        self.config = config
        self.latent_res = config.latent_res
        self.grid = round(config.tokens_per_frame**0.5)
        if self.grid * self.grid != config.tokens_per_frame or self.latent_res % self.grid:
            raise ValueError(
                f"tokens_per_frame={config.tokens_per_frame} must be a square dividing the latent map"
            )
        self.patch = self.latent_res // self.grid
        self.encoder_act_emb = nn.Embedding(config.num_actions, config.image_size**2)
        self.decoder_act_emb = nn.Embedding(
            config.num_actions, config.decoder_act_channels * self.latent_res**2
        )
        self.quantizer = Quantizer(config, input_dim=config.encoder.latent_dim * self.patch**2)
        self.encoder = FrameEncoder(config.encoder)
        self.frame_cnn = FrameEncoder(config.frame_cnn)
        self.decoder = FrameDecoder(config.decoder)
        if config.reference_init:
            self.apply(init_reference_weights)

    # -- pieces -----------------------------------------------------------------------------
    def encode(self, obs_prev: torch.Tensor, act: torch.Tensor, obs_next: torch.Tensor) -> torch.Tensor:
        """Continuous token vectors (B, T, K, patch*patch*latent) before quantization."""
        size = self.config.image_size
        a = rearrange(self.encoder_act_emb(act), "b t (h w) -> b t 1 h w", h=size, w=size)
        x = torch.cat((obs_prev, a, obs_next), dim=2)  # (B, T, 7, H, W)
        z = self.encoder(x)  # (B, T, latent, r, r)
        return rearrange(z, "b t c (h k) (w l) -> b t (h w) (k l c)", h=self.grid, w=self.grid)

    def tokens_to_map(self, q: torch.Tensor) -> torch.Tensor:
        """(B, T, K, patch*patch*latent) -> latent map (B, T, latent, r, r)."""
        return rearrange(
            q, "b t (h w) (k l c) -> b t c (h k) (w l)", h=self.grid, w=self.grid, k=self.patch, l=self.patch
        )

    def decode(
        self, obs_prev: torch.Tensor, act: torch.Tensor, q_map: torch.Tensor, clamp: bool = False
    ) -> torch.Tensor:
        """x_t, a_t and the quantized map -> reconstruction of x_{t+1} (B, T, 3, H, W)."""
        frame = self.frame_cnn(obs_prev)  # (B, T, c, r, r)
        r = self.latent_res
        a = rearrange(
            self.decoder_act_emb(act),
            "b t (c h w) -> b t c h w",
            c=self.config.decoder_act_channels,
            h=r,
            w=r,
        )
        x = self.decoder(torch.cat((frame, a, q_map), dim=2))
        return quantize_frame_values(x) if clamp else x

    def decode_tokens(
        self, obs_prev: torch.Tensor, act: torch.Tensor, tokens: torch.Tensor, clamp: bool = True
    ) -> torch.Tensor:
        """Decode Δ-tokens (B, T, K) given x_t and a_t into x_{t+1} (used by imagination)."""
        q = self.quantizer.embed_tokens(tokens)  # (B, T, K, D)
        return self.decode(obs_prev, act, self.tokens_to_map(q), clamp=clamp)

    @torch.no_grad()
    def encode_tokens(
        self, obs_prev: torch.Tensor, act: torch.Tensor, obs_next: torch.Tensor
    ) -> torch.Tensor:
        """Δ-tokens (B, T, K) int64 of each transition (no codebook update)."""
        return self.quantizer.encode(self.encode(obs_prev, act, obs_next))[1]

    def forward(self, obs_prev: torch.Tensor, act: torch.Tensor, obs_next: torch.Tensor, clamp: bool = False):
        """Encode, quantize, decode. Returns (reconstruction, quantizer output)."""
        qo = self.quantizer(self.encode(obs_prev, act, obs_next))
        return self.decode(obs_prev, act, self.tokens_to_map(qo.q), clamp=clamp), qo

    # -- training ---------------------------------------------------------------------------
    def compute_loss(self, batch) -> LossOutput:
        """Reconstruction losses over real->real transitions, commitment over every token vector.

        As in the reference: the L1, L2 and worst-pixel terms count only transitions whose two frames
        are real; the commitment loss and the codebook maintenance (in training mode) use all
        B*(T-1)*K token vectors, padding transitions included. ``config.exclude_padding`` restricts
        those two to real->real transitions too (an opt-in variant).
        """
        cfg = self.config
        obs, act, mask = batch.obs, batch.act, batch.mask_padding
        valid = mask[:, :-1] & mask[:, 1:]  # (B, T-1)
        x_next = obs[:, 1:]
        recon, qo = self(obs[:, :-1], act[:, :-1], x_next)
        err = recon.float() - x_next.float()  # (B, T-1, C, H, W)
        if cfg.exclude_padding:
            commitment = masked_mean(qo.commitment.float(), valid[..., None].expand_as(qo.commitment))
        else:
            commitment = mean(qo.commitment.float())
        l1 = masked_mean(err.abs(), valid)
        l2 = masked_mean(err.pow(2), valid)
        worst = masked_mean(err.pow(2).flatten(2).amax(dim=-1), valid)
        loss = (
            cfg.commitment_weight * commitment
            + cfg.l1_weight * l1
            + cfg.l2_weight * l2
            + cfg.max_pixel_weight * worst
        )
        if self.training:
            weights = valid[..., None].expand_as(qo.tokens) if cfg.exclude_padding else None
            self.quantizer.update_codebook(qo.z, qo.tokens, weights)
        metrics = {
            "tokenizer/loss": loss.detach(),
            "tokenizer/commitment_loss": commitment.detach(),
            "tokenizer/l1_loss": l1.detach(),
            "tokenizer/l2_loss": l2.detach(),
            "tokenizer/max_pixel_loss": worst.detach(),
            "tokenizer/codebook_entropy_bits": self.quantizer.entropy_bits(),
        }
        return LossOutput(loss, metrics)
