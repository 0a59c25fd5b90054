"""GroupNorm followed by SiLU (every norm of the frame CNNs), with a fused Triton fast path.

:func:`group_norm_silu_ref` is ``F.silu(F.group_norm(...))``, exactly what ``nn.GroupNorm`` then
``nn.SiLU`` compute. The Triton kernel (``deltairis.kernels.groupnorm``) reads contiguous and
channels_last inputs in place (PyTorch's CUDA GroupNorm makes channels_last inputs contiguous first)
and writes its output in the input's layout and dtype.

Under CUDA autocast, ``F.group_norm`` runs in float32 and returns float32; the kernel also computes in
float32 but returns the input's dtype (bf16 after a bf16 convolution). In the frame CNNs every
GroupNorm+SiLU output feeds a convolution, which autocast casts to bf16 anyway, so the values the next
layer sees are the same up to float32 rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deltairis.ops._dispatch import choose


def group_norm_silu_ref(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """silu(group_norm(x, num_groups, weight, bias, eps)) in plain PyTorch."""
    return F.silu(F.group_norm(x, num_groups, weight, bias, eps))


def group_norm_silu(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    backend: str | None = None,
) -> torch.Tensor:
    """silu(group_norm(x)) for x (N, C, ...); the Triton kernel for CUDA (N, C, H, W) inputs under ``auto``."""
    if x.dim() < 2 or x.size(1) % num_groups:
        raise ValueError(
            f"group_norm_silu: {num_groups} groups need (N, C, ...) with C divisible by them, "
            f"got shape {tuple(x.shape)}"
        )

    def supported() -> str | None:
        if x.dim() != 4:
            return f"{x.dim()}-D input (the kernel takes (N, C, H, W))"
        if weight is None or bias is None:
            return "no affine weight and bias"
        if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return f"dtype {x.dtype}"
        if weight.dtype != torch.float32 or bias.dtype != torch.float32:
            return f"weight/bias dtype {weight.dtype}/{bias.dtype} (float32 expected)"
        if weight.shape != (x.size(1),) or bias.shape != (x.size(1),):
            return f"weight/bias shapes {tuple(weight.shape)}/{tuple(bias.shape)} for {x.size(1)} channels"
        if x.size(1) // num_groups > 1024:
            return f"{x.size(1) // num_groups} channels per group > 1024"
        return None

    tensors = (x,) if weight is None or bias is None else (x, weight, bias)
    fn = choose("group_norm_silu", tensors, backend, supported, ("groupnorm", "group_norm_silu_triton"))
    if fn is None:
        return group_norm_silu_ref(x, num_groups, weight, bias, eps)
    return fn(x, num_groups, weight.contiguous(), bias.contiguous(), eps)
