"""Triton GroupNorm fused with SiLU: ``silu(group_norm(x, G, weight, bias, eps))``, forward and backward.

Same semantics as :func:`deltairis.ops.groupnorm.group_norm_silu_ref`. One program handles one
(sample, group) pair: the group's ``C/G`` channels times ``H*W`` positions are walked in tiles of
(BLOCK_HW positions, BLOCK_C channels) addressed through the tensor's strides, so contiguous (NCHW)
and channels_last (NHWC) inputs are read in place, and the output has the input's layout.

Forward: a pass for the mean, one for the centred variance (as stable as PyTorch's Welford), one that
writes ``y = silu(xhat * w + b)``; the per-group mean and 1/std are saved for the backward.
Backward (z = xhat * w + b, s = sigmoid(z)): ``dz = dy * s * (1 + z * (1 - s))``; per group
``dx = rstd * (dz*w - mean(dz*w) - xhat * mean(dz*w*xhat))``; per sample and channel partial sums of
``dz * xhat`` and ``dz`` that the launcher reduces over samples into the weight and bias gradients.
Arithmetic is float32 whatever the input dtype; outputs take the input dtype.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

INTERPRETED: bool = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _gn_silu_fwd_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    mean_ptr,
    rstd_ptr,
    sN,
    sC,
    sHW,
    C,
    HW,
    G,
    CG,
    eps,
    BLOCK_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)  # n * G + g
    n = pid // G
    g = pid % G
    base = n.to(tl.int64) * sN
    c = g * CG + tl.arange(0, BLOCK_C)  # (BLOCK_C,)
    cmask = tl.arange(0, BLOCK_C) < CG
    count = (CG * HW) * 1.0
    # pass 1: mean
    acc = tl.zeros((BLOCK_HW, BLOCK_C), dtype=tl.float32)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        m = (hw[:, None] < HW) & cmask[None, :]
        off = base + hw[:, None].to(tl.int64) * sHW + c[None, :].to(tl.int64) * sC
        acc += tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
    mean = tl.sum(tl.sum(acc, axis=1), axis=0) / count
    # pass 2: centred variance
    acc = tl.zeros((BLOCK_HW, BLOCK_C), dtype=tl.float32)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        m = (hw[:, None] < HW) & cmask[None, :]
        off = base + hw[:, None].to(tl.int64) * sHW + c[None, :].to(tl.int64) * sC
        d = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32) - mean
        acc += tl.where(m, d * d, 0.0)
    var = tl.sum(tl.sum(acc, axis=1), axis=0) / count
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(mean_ptr + pid, mean)
    tl.store(rstd_ptr + pid, rstd)
    w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    scale = w * rstd  # (BLOCK_C,)
    shift = b - mean * scale
    # pass 3: y = silu(x * scale + shift)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        m = (hw[:, None] < HW) & cmask[None, :]
        off = base + hw[:, None].to(tl.int64) * sHW + c[None, :].to(tl.int64) * sC
        x = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
        z = x * scale[None, :] + shift[None, :]
        y = z / (1.0 + tl.exp(-z))
        tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _gn_silu_bwd_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    dy_ptr,
    mean_ptr,
    rstd_ptr,
    dx_ptr,
    dw_part_ptr,
    db_part_ptr,
    sN,
    sC,
    sHW,
    dsN,
    dsC,
    dsHW,
    C,
    HW,
    G,
    CG,
    BLOCK_HW: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    n = pid // G
    g = pid % G
    base = n.to(tl.int64) * sN
    dbase = n.to(tl.int64) * dsN
    cl = tl.arange(0, BLOCK_C)
    c = g * CG + cl
    cmask = cl < CG
    count = (CG * HW) * 1.0
    mean = tl.load(mean_ptr + pid)
    rstd = tl.load(rstd_ptr + pid)
    w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    # pass 1: dz, the group sums of dz*w and dz*w*xhat, the per-channel sums of dz*xhat and dz
    s1 = tl.zeros((BLOCK_HW, BLOCK_C), dtype=tl.float32)
    s2 = tl.zeros((BLOCK_HW, BLOCK_C), dtype=tl.float32)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        m = (hw[:, None] < HW) & cmask[None, :]
        off = base + hw[:, None].to(tl.int64) * sHW + c[None, :].to(tl.int64) * sC
        doff = dbase + hw[:, None].to(tl.int64) * dsHW + c[None, :].to(tl.int64) * dsC
        xhat = (tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32) - mean) * rstd
        dy = tl.load(dy_ptr + doff, mask=m, other=0.0).to(tl.float32)
        z = xhat * w[None, :] + b[None, :]
        s = 1.0 / (1.0 + tl.exp(-z))
        dz = tl.where(m, dy * s * (1.0 + z * (1.0 - s)), 0.0)
        s1 += dz
        s2 += dz * xhat
    db_c = tl.sum(s1, axis=0)  # (BLOCK_C,)
    dw_c = tl.sum(s2, axis=0)
    tl.store(db_part_ptr + n.to(tl.int64) * C + c, db_c, mask=cmask)
    tl.store(dw_part_ptr + n.to(tl.int64) * C + c, dw_c, mask=cmask)
    # sum over the group of dz*w and dz*w*xhat, from the per-channel sums
    mean_dxhat = tl.sum(db_c * w, axis=0) / count
    mean_dxhat_xhat = tl.sum(dw_c * w, axis=0) / count
    # pass 2: dx
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        m = (hw[:, None] < HW) & cmask[None, :]
        off = base + hw[:, None].to(tl.int64) * sHW + c[None, :].to(tl.int64) * sC
        doff = dbase + hw[:, None].to(tl.int64) * dsHW + c[None, :].to(tl.int64) * dsC
        xhat = (tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32) - mean) * rstd
        dy = tl.load(dy_ptr + doff, mask=m, other=0.0).to(tl.float32)
        z = xhat * w[None, :] + b[None, :]
        s = 1.0 / (1.0 + tl.exp(-z))
        dxhat = dy * s * (1.0 + z * (1.0 - s)) * w[None, :]
        dx = rstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat)
        tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=m)


def mergeable(x: torch.Tensor) -> bool:
    """Whether H and W of a 4-D tensor merge into one position index (contiguous, channels_last, ...)."""
    h, w = x.shape[2], x.shape[3]
    return h <= 1 or w <= 1 or x.stride(2) == w * x.stride(3)


def _layout(x: torch.Tensor) -> tuple[int, int, int]:
    """(sample, channel, position) strides of a 4-D tensor whose H and W merge into one index."""
    if not mergeable(x):
        raise ValueError(f"group_norm_silu_triton: H and W must be mergeable, got strides {x.stride()}")
    return x.stride(0), x.stride(1), x.stride(3) if x.shape[3] > 1 else x.stride(2)


def _blocks(cg: int, hw: int) -> tuple[int, int]:
    block_c = triton.next_power_of_2(cg)
    block_hw = max(1, min(triton.next_power_of_2(hw), max(16, 2048 // block_c)))
    return block_hw, block_c


def _check(x: torch.Tensor, num_groups: int) -> None:
    if x.dim() != 4:
        raise ValueError(f"group_norm_silu_triton expects (N, C, H, W), got shape {tuple(x.shape)}")
    if x.size(1) % num_groups:
        raise ValueError(f"{x.size(1)} channels not divisible by {num_groups} groups")


def _forward(
    x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(x, num_groups)
    n, c, h, w = x.shape
    y = torch.empty_like(x)  # same layout (contiguous or channels_last) as x
    mean = torch.empty(n * num_groups, dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    if x.numel() == 0:
        return y, mean, rstd
    sN, sC, sHW = _layout(x)
    cg = c // num_groups
    block_hw, block_c = _blocks(cg, h * w)
    _gn_silu_fwd_kernel[(n * num_groups,)](
        x, weight, bias, y, mean, rstd, sN, sC, sHW, c, h * w, num_groups, cg, float(eps),
        BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=4,
    )  # fmt: skip
    return y, mean, rstd


def _backward(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    dy: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n, c, h, w = x.shape
    dx = torch.empty_like(x)
    dw_part = torch.zeros(n, c, dtype=torch.float32, device=x.device)
    db_part = torch.zeros_like(dw_part)
    if x.numel() > 0:
        sN, sC, sHW = _layout(x)
        if not mergeable(dy):
            dy = dy.contiguous(
                memory_format=torch.channels_last if x.stride(1) == 1 else torch.contiguous_format
            )
        dsN, dsC, dsHW = _layout(dy)
        cg = c // num_groups
        block_hw, block_c = _blocks(cg, h * w)
        _gn_silu_bwd_kernel[(n * num_groups,)](
            x, weight, bias, dy, mean, rstd, dx, dw_part, db_part, sN, sC, sHW, dsN, dsC, dsHW,
            c, h * w, num_groups, cg, BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=4,
        )  # fmt: skip
    return dx, dw_part.sum(0).to(weight.dtype), db_part.sum(0).to(bias.dtype)


class _GroupNormSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, num_groups, weight, bias, eps):  # type: ignore[override]
        if x.dim() == 4 and not mergeable(x):
            x = x.contiguous()
        y, mean, rstd = _forward(x, num_groups, weight, bias, eps)
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.num_groups = num_groups
        return y

    @staticmethod
    def backward(ctx, dy):  # type: ignore[override]
        x, weight, bias, mean, rstd = ctx.saved_tensors
        dx, dw, db = _backward(x, ctx.num_groups, weight, bias, mean, rstd, dy)
        return dx, None, dw, db, None


def group_norm_silu_triton(
    x: torch.Tensor, num_groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """silu(group_norm(x)) for (N, C, H, W) x (any dtype, contiguous or channels_last); output like x."""
    return _GroupNormSiLU.apply(x, num_groups, weight, bias, eps)
