"""Causal / block-causal self-attention and its KV-cached variant.

Tensors are (B, H, T, D). ``mask="causal"``: query i sees keys j <= i. ``mask="block_causal"``:
causal plus full attention inside each block of ``block_size`` consecutive tokens (positions are
absolute, so with a KV cache the blocks stay aligned to the sequence start).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from deltairis.ops._dispatch import choose

MASKS = ("causal", "block_causal")


def _check_mask(mask: str, block_size: int) -> None:
    if mask not in MASKS:
        raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"attention expects q, k, v of one shape (B, H, T, D), got {q.shape}, {k.shape}, {v.shape}"
        )


def _kernel_unsupported(q: torch.Tensor) -> str | None:
    """Why the Triton kernels cannot take these queries (None when they can)."""
    if q.size(-1) > 128:
        return f"head dim {q.size(-1)} > 128"
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return f"dtype {q.dtype}"
    return None


def _dispatch(
    op: str,
    ref: Callable[..., torch.Tensor],
    tensors: tuple[torch.Tensor, ...],
    mask: str,
    block_size: int,
    backend: str | None,
    supported: Callable[[], str | None],
    auto_uses_kernel: bool = True,
) -> torch.Tensor:
    """Run ``op`` on validated ``tensors``: the kernel ``deltairis.kernels.<op>.<op>_triton`` that
    :func:`choose` picks, else the reference ``ref``."""
    fn = choose(op, tensors, backend, supported, (op, f"{op}_triton"), auto_uses_kernel=auto_uses_kernel)
    return (ref if fn is None else fn)(*tensors, mask=mask, block_size=block_size)


def attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, mask: str, block_size: int) -> torch.Tensor:
    """Boolean visibility mask (True = attend) for absolute query and key positions (broadcasting)."""
    q_pos = q_pos.unsqueeze(-1)
    k_pos = k_pos.unsqueeze(-2)
    visible = k_pos <= q_pos
    if mask == "block_causal":
        visible = visible | (
            torch.div(k_pos, block_size, rounding_mode="floor")
            == torch.div(q_pos, block_size, rounding_mode="floor")
        )
    return visible


def attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: str = "causal", block_size: int = 6
) -> torch.Tensor:
    """Reference: scaled dot-product attention with an explicit boolean mask."""
    _check_mask(mask, block_size)
    _check_qkv(q, k, v)
    if mask == "causal":  # same mask; lets PyTorch pick its flash kernel (2x the masked path on an H200)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    pos = torch.arange(q.size(2), device=q.device)
    visible = attention_mask(pos, pos, mask, block_size)  # (T, T)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: str = "causal",
    block_size: int = 6,
    backend: str | None = None,
) -> torch.Tensor:
    """Self-attention over (B, H, T, D) with the mask computed on the fly (forward and backward)."""
    _check_mask(mask, block_size)
    _check_qkv(q, k, v)

    supported = functools.partial(_kernel_unsupported, q)
    # auto -> PyTorch's SDPA: measured 2-4x faster than the Triton kernel for forward+backward on an H200
    # (benchmarks/bench_ops.py, README); the kernel stays available with backend="triton".
    return _dispatch("attention", attention_ref, (q, k, v), mask, block_size, backend, supported, False)


def _check_kvcache(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_lens: torch.Tensor,
) -> None:
    if q.dim() != 4:
        raise ValueError(f"q must be (B, H, Tq, D), got {tuple(q.shape)}")
    if k_new.shape != q.shape or v_new.shape != q.shape:
        raise ValueError(
            f"k_new and v_new must match q's shape {tuple(q.shape)}, got {tuple(k_new.shape)}, {tuple(v_new.shape)}"
        )
    b, h, tq, d = q.shape
    if (
        k_cache.dim() != 4
        or k_cache.shape[:2] != (b, h)
        or k_cache.size(3) != d
        or v_cache.shape != k_cache.shape
    ):
        raise ValueError(
            f"k_cache and v_cache must be (B={b}, H={h}, Tmax, D={d}), got {tuple(k_cache.shape)}, {tuple(v_cache.shape)}"
        )
    if tq > k_cache.size(2):
        raise ValueError(f"{tq} new tokens do not fit a cache of {k_cache.size(2)}")
    if cache_lens.shape != (b,) or cache_lens.dtype != torch.int32:
        raise ValueError(
            f"cache_lens must be int32 of shape ({b},), got {cache_lens.dtype} {tuple(cache_lens.shape)}"
        )
    if k_new.dtype != k_cache.dtype:
        raise ValueError(f"k_new dtype {k_new.dtype} differs from the cache's {k_cache.dtype}")
    if not cache_lens.is_cuda and cache_lens.numel() > 0:
        # Checked only on the host: reading CUDA values would synchronise the device (and break capture).
        lo, hi = int(cache_lens.min()), int(cache_lens.max())
        if lo < 0 or hi + tq > k_cache.size(2):
            raise ValueError(
                f"cache_lens must lie in [0, {k_cache.size(2) - tq}] for {tq} new tokens in a cache of "
                f"{k_cache.size(2)}, got values in [{lo}, {hi}]"
            )


def attention_kvcache_ref(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_lens: torch.Tensor,
    *,
    mask: str = "causal",
    block_size: int = 6,
) -> torch.Tensor:
    """Reference: write the new keys/values at each row's offset, then attend over the whole cache.

    Row b's new tokens occupy absolute positions ``cache_lens[b] + [0, Tq)``; keys at positions not
    yet written (``>= cache_lens[b] + Tq``) are never visible. ``cache_lens`` is not modified.
    """
    _check_mask(mask, block_size)
    _check_kvcache(q, k_new, v_new, k_cache, v_cache, cache_lens)
    b, h, tq, d = q.shape
    tmax = k_cache.size(2)
    q_pos = cache_lens.long().unsqueeze(1) + torch.arange(tq, device=q.device)  # (B, Tq)
    index = q_pos.view(b, 1, tq, 1).expand(b, h, tq, d)
    k_cache.scatter_(2, index, k_new)
    v_cache.scatter_(2, index, v_new)
    k_pos = torch.arange(tmax, device=q.device)  # (Tmax,)
    visible = attention_mask(q_pos, k_pos, mask, block_size)  # (B, Tq, Tmax)
    written = k_pos.view(1, 1, tmax) < (cache_lens.long() + tq).view(b, 1, 1)
    visible = (visible & written).unsqueeze(1)  # (B, 1, Tq, Tmax)
    scale = 1.0 / math.sqrt(d)
    return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=visible, scale=scale)


def attention_kvcache(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_lens: torch.Tensor,
    *,
    mask: str = "causal",
    block_size: int = 6,
    backend: str | None = None,
) -> torch.Tensor:
    """Fused cache write + attention for incremental decoding (forward only). Returns (B, H, Tq, D)."""
    _check_mask(mask, block_size)
    _check_kvcache(q, k_new, v_new, k_cache, v_cache, cache_lens)

    def supported() -> str | None:
        reason = _kernel_unsupported(q)
        if reason is None and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k_new, v_new)):
            return "attention_kvcache is forward-only (inputs require grad)"
        return reason

    tensors = (q, k_new, v_new, k_cache, v_cache, cache_lens)
    return _dispatch(
        "attention_kvcache", attention_kvcache_ref, tensors, mask, block_size, backend, supported
    )
