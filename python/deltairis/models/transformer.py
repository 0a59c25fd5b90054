"""Pre-LayerNorm GPT-style transformer with causal or block-causal attention (docs/algorithm.md section 4).

Module names follow the reference checkpoint: ``pos_emb``, ``blocks.i.sa.{mask, ln, query, key, value,
attention.proj}``, ``blocks.i.mlp.{ln, mlp.0, mlp.2}``, ``ln``.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from deltairis import ops
from deltairis.config.models import TransformerConfig
from deltairis.models.kv_cache import KVCache
from deltairis.ops.attention import attention_mask


def build_mask(config: TransformerConfig) -> torch.Tensor:
    """The (max_tokens, max_tokens) boolean visibility mask of the configured attention."""
    pos = torch.arange(config.max_tokens)
    return attention_mask(pos, pos, config.attention, config.tokens_per_block)


class Attention(nn.Module):
    """Multi-head attention core plus its output projection (``attention.proj`` in the checkpoint)."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.proj = nn.Linear(config.embed_dim, config.embed_dim)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        cfg = self.config
        h = cfg.num_heads
        q, k, v = (rearrange(t, "b l (h d) -> b h l d", h=h) for t in (q, k, v))  # (B, H, L, D)
        if cache is None:
            y = ops.attention(q, k, v, mask=cfg.attention, block_size=cfg.tokens_per_block)
        else:
            y = ops.attention_kvcache(
                q,
                k.to(cache.k.dtype),
                v.to(cache.v.dtype),
                cache.k[layer],
                cache.v[layer],
                cache.lens,
                mask=cfg.attention,
                block_size=cfg.tokens_per_block,
            )
        y = rearrange(y, "b h l d -> b l (h d)")  # (B, L, E)
        return self.proj(y)


class SelfAttentionLayer(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        e = config.embed_dim
        if e % config.num_heads:
            raise ValueError(f"embed_dim {e} not divisible by num_heads {config.num_heads}")
        self.register_buffer("mask", build_mask(config))
        self.ln = nn.LayerNorm(e)
        self.query = nn.Linear(e, e)
        self.key = nn.Linear(e, e)
        self.value = nn.Linear(e, e)
        self.attention = Attention(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        h = self.ln(x)
        return x + self.drop(self.attention(self.query(h), self.key(h), self.value(h), cache, layer))


class MLPLayer(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        e = config.embed_dim
        self.ln = nn.LayerNorm(e)
        self.mlp = nn.Sequential(
            nn.Linear(e, config.mlp_ratio * e),
            nn.GELU(),
            nn.Linear(config.mlp_ratio * e, e),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.ln(x))


class Block(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.sa = SelfAttentionLayer(config)
        self.mlp = MLPLayer(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        return self.mlp(self.sa(x, cache, layer))


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.pos_emb = nn.Embedding(config.max_tokens, config.embed_dim)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.num_layers)])
        self.ln = nn.LayerNorm(config.embed_dim)

    def empty_cache(
        self, batch_size: int, device: torch.device | str, dtype: torch.dtype = torch.float32
    ) -> KVCache:
        cfg = self.config
        return KVCache.empty(
            cfg.num_layers,
            batch_size,
            cfg.num_heads,
            cfg.max_tokens,
            cfg.embed_dim // cfg.num_heads,
            device,
            dtype,
        )

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """x (B, L, E) -> (B, L, E). With a cache, the L tokens continue the cached sequence and are appended."""
        start = 0 if cache is None else cache.size
        length = x.size(1)
        if start + length > self.config.max_tokens:
            raise ValueError(
                f"sequence of {start + length} tokens exceeds the transformer's {self.config.max_tokens} positions"
            )
        if cache is not None and cache.batch_size != x.size(0):
            raise ValueError(f"cache batch size {cache.batch_size} != input batch size {x.size(0)}")
        pos = torch.arange(start, start + length, device=x.device)
        x = self.drop(x + self.pos_emb(pos))
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.advance(length)
        return self.ln(x)
