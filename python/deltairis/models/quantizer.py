"""Cosine-similarity vector quantizer with EMA codebook, usage frequencies and dead-code revival (docs/algorithm.md section 3).

All maintenance runs on the device without host synchronisation: invalid (padding) vectors are
excluded through weights, and the revival decision is a tensor predicate.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from deltairis import distributed
from deltairis.config.models import TokenizerConfig


class QuantizerOutput(NamedTuple):
    q: torch.Tensor  # (..., input_dim) post-projected straight-through vectors
    tokens: torch.Tensor  # (...) int64
    z: torch.Tensor  # (..., codebook_dim) normalized pre-quantization vectors
    commitment: torch.Tensor  # (...) per-vector mean squared distance to the chosen code (no weight)


class Quantizer(nn.Module):
    def __init__(self, config: TokenizerConfig, input_dim: int) -> None:
        super().__init__()
        self.config = config
        c, e = config.codebook_size, config.codebook_dim
        self.pre_quant_proj = nn.Linear(input_dim, e)
        self.post_quant_proj = nn.Linear(e, input_dim)
        # As in the reference: small uniform values, not unit vectors; every update ends with a
        # normalisation, so the first update pulls each used code almost onto its batch mean.
        codebook = torch.empty(c, e).uniform_(-1.0 / c, 1.0 / c)
        if not config.reference_init:  # PyTorch-default models (the tiny preset) start from unit vectors
            codebook = F.normalize(codebook, dim=-1)
        self.register_buffer("codebook", codebook)
        self.register_buffer("codewords_freqs", torch.full((c,), 1.0 / c))
        self.register_buffer("num_codebook_updates", torch.tensor(0, dtype=torch.int64))

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(..., input_dim) -> normalized z (..., e) and tokens (...)."""
        z = F.normalize(self.pre_quant_proj(x), dim=-1)
        sim = torch.einsum("...e,ce->...c", z, self.codebook.to(z.dtype))
        return z, sim.argmax(dim=-1)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (...) -> post-projected code vectors (..., input_dim)."""
        return self.post_quant_proj(self.codebook[tokens])

    def forward(self, x: torch.Tensor) -> QuantizerOutput:
        z, tokens = self.encode(x)
        q = self.codebook[tokens].to(z.dtype)
        commitment = (z - q.detach()).pow(2).mean(dim=-1)
        q = z + (q - z).detach()  # straight-through estimator
        return QuantizerOutput(self.post_quant_proj(q), tokens, z, commitment)

    def entropy_bits(self) -> torch.Tensor:
        f = self.codewords_freqs
        return -(f * torch.log2(f.clamp(min=1e-30))).sum()

    @torch.no_grad()
    def update_codebook(
        self, z: torch.Tensor, tokens: torch.Tensor, weights: torch.Tensor | None = None
    ) -> None:
        """One maintenance step from normalized vectors ``z`` (N, e) and their tokens (N,).

        The reference (and our default) passes every token vector of the batch, padding transitions
        included. ``weights`` (N,) in {0, 1} excludes vectors from every statistic and from revival (the
        opt-in ``exclude_padding`` variant).

        Revival, as in the reference: when the entropy of the updated frequencies is below
        ``log2(C) - margin`` (and revival is allowed), a uniformly random subset of the dead codes
        (frequency < factor / C), of at most as many codes as there are usable vectors, is replaced by
        distinct, uniformly drawn vectors of the batch. Decided and drawn on the device.

        Inside :func:`deltairis.distributed.sharded_losses` the vectors, tokens and weights of every rank
        are gathered first (in rank order, which is the global batch's order), so every rank applies the
        update of the whole batch; its random draws then need the same torch RNG state on every rank
        (the trainer broadcasts rank 0's at the start of each training phase).
        """
        cfg = self.config
        c = cfg.codebook_size
        z = z.detach().float().reshape(-1, z.size(-1))
        tokens = tokens.reshape(-1)
        w = torch.ones(z.size(0), device=z.device) if weights is None else weights.reshape(-1).float()
        if distributed.losses_are_sharded():
            z, tokens, w = (distributed.all_gather_rows(t) for t in (z, tokens, w))
        n = z.size(0)
        counts = torch.zeros(c, device=z.device).index_add_(0, tokens, w)
        sums = torch.zeros(c, z.size(1), device=z.device).index_add_(0, tokens, z * w[:, None])
        means = F.normalize(sums / counts.clamp(min=1.0)[:, None], dim=-1)  # unassigned codes -> zero vector
        codebook = torch.lerp(self.codebook, means, cfg.codebook_ema)
        freqs = torch.lerp(self.codewords_freqs, counts / w.sum().clamp(min=1.0), cfg.freqs_ema)

        # Revival of dead codes, decided on the device.
        entropy = -(freqs * torch.log2(freqs.clamp(min=1e-30))).sum()
        limit = cfg.max_codebook_updates_with_revival
        allowed = entropy < cfg.revival_entropy_floor_bits
        allowed = allowed | (True if limit is None else self.num_codebook_updates < limit)
        do_revive = (entropy < math.log2(c) - cfg.revival_entropy_margin_bits) & allowed
        dead = freqs < cfg.revival_freq_factor / c
        num_valid = (w > 0).sum()
        # A random order of the dead codes (dead codes first): the first num_valid of them are revived.
        code_order = torch.rand(c, device=z.device).masked_fill(~dead, -1.0).argsort(descending=True)
        code_rank = torch.empty_like(code_order).scatter_(0, code_order, torch.arange(c, device=z.device))
        revive = dead & do_revive & (code_rank < num_valid)
        # A random order of the usable vectors (usable first): revived code of rank r takes vector r.
        vec_order = torch.rand(n, device=z.device).masked_fill(w <= 0, -1.0).argsort(descending=True)
        replacement = z[vec_order[code_rank.clamp(max=max(n - 1, 0))]] if n > 0 else codebook
        codebook = torch.where(revive[:, None], replacement, codebook)
        freqs = torch.where(revive, torch.full_like(freqs, 1.0 / c), freqs)

        self.codebook.copy_(F.normalize(codebook, dim=-1))
        self.codewords_freqs.copy_(freqs)
        self.num_codebook_updates.add_(1)
