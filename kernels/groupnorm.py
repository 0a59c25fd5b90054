"""Triton GroupNorm fused with SiLU: ``silu(group_norm(x, G, weight, bias, eps))``, forward and backward.

Same semantics as :func:`deltairis.ops.groupnorm.group_norm_silu_ref`. One program handles one sample
and GPB neighbouring groups (one for NCHW inputs; enough for 32 contiguous channels for channels_last
ones): their channels times ``H*W`` positions are walked in tiles of (BLOCK_HW positions, BLOCK_CC
channels) addressed through the tensor's strides, so contiguous and channels_last inputs are read in
place, and the output has the input's layout. Per-group sums are segment sums over the tile's columns.

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
def _segment_sum(col, gid, gi):
    """Per-group sums (BLOCK_G,) of per-column values ``col`` (BLOCK_CC,) with group ids ``gid``."""
    return tl.sum(tl.where(gid[:, None] == gi[None, :], col[:, None], 0.0), axis=0)


@triton.jit
def _broadcast(val, gid, gi):
    """Per-column values (BLOCK_CC,) of per-group values ``val`` (BLOCK_G,)."""
    return tl.sum(tl.where(gid[:, None] == gi[None, :], val[None, :], 0.0), axis=1)


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
    GPB,
    eps,
    BLOCK_HW: tl.constexpr,
    BLOCK_CC: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    n = tl.program_id(0)
    g0 = tl.program_id(1) * GPB  # first group of this program; it handles groups g0 .. g0+GPB-1
    base = n.to(tl.int64) * sN
    cc = tl.arange(0, BLOCK_CC)  # columns: channels g0*CG .. (g0+GPB)*CG - 1
    c = g0 * CG + cc
    cmask = (cc < GPB * CG) & (c < C)
    gid = cc // CG  # group of each column, relative to g0
    gi = tl.arange(0, BLOCK_G)
    gmask = (gi < GPB) & (g0 + gi < G)
    count = (CG * HW) * 1.0
    # pass 1: mean
    acc = tl.zeros((BLOCK_HW, BLOCK_CC), dtype=tl.float32)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        m = (hw[:, None] < HW) & cmask[None, :]
        off = base + hw[:, None].to(tl.int64) * sHW + c[None, :].to(tl.int64) * sC
        acc += tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
    mean_g = _segment_sum(tl.sum(acc, axis=0), gid, gi) / count  # (BLOCK_G,)
    mean = _broadcast(mean_g, gid, gi)  # (BLOCK_CC,)
    # pass 2: centred variance
    acc = tl.zeros((BLOCK_HW, BLOCK_CC), dtype=tl.float32)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        m = (hw[:, None] < HW) & cmask[None, :]
        off = base + hw[:, None].to(tl.int64) * sHW + c[None, :].to(tl.int64) * sC
        d = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32) - mean[None, :]
        acc += tl.where(m, d * d, 0.0)
    var_g = _segment_sum(tl.sum(acc, axis=0), gid, gi) / count
    rstd_g = 1.0 / tl.sqrt(var_g + eps)
    tl.store(mean_ptr + n * G + g0 + gi, mean_g, mask=gmask)
    tl.store(rstd_ptr + n * G + g0 + gi, rstd_g, mask=gmask)
    rstd = _broadcast(rstd_g, gid, gi)
    w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    scale = w * rstd  # (BLOCK_CC,)
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
    GPB,
    BLOCK_HW: tl.constexpr,
    BLOCK_CC: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    n = tl.program_id(0)
    g0 = tl.program_id(1) * GPB
    base = n.to(tl.int64) * sN
    dbase = n.to(tl.int64) * dsN
    cc = tl.arange(0, BLOCK_CC)
    c = g0 * CG + cc
    cmask = (cc < GPB * CG) & (c < C)
    gid = cc // CG
    gi = tl.arange(0, BLOCK_G)
    gmask = (gi < GPB) & (g0 + gi < G)
    count = (CG * HW) * 1.0
    mean = _broadcast(tl.load(mean_ptr + n * G + g0 + gi, mask=gmask, other=0.0), gid, gi)
    rstd = _broadcast(tl.load(rstd_ptr + n * G + g0 + gi, mask=gmask, other=0.0), gid, gi)
    w = tl.load(w_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    # pass 1: dz, the per-channel sums of dz and dz*xhat (bias and weight gradients of this sample)
    s1 = tl.zeros((BLOCK_HW, BLOCK_CC), dtype=tl.float32)
    s2 = tl.zeros((BLOCK_HW, BLOCK_CC), dtype=tl.float32)
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        m = (hw[:, None] < HW) & cmask[None, :]
        off = base + hw[:, None].to(tl.int64) * sHW + c[None, :].to(tl.int64) * sC
        doff = dbase + hw[:, None].to(tl.int64) * dsHW + c[None, :].to(tl.int64) * dsC
        xhat = (tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32) - mean[None, :]) * rstd[None, :]
        dy = tl.load(dy_ptr + doff, mask=m, other=0.0).to(tl.float32)
        z = xhat * w[None, :] + b[None, :]
        s = 1.0 / (1.0 + tl.exp(-z))
        dz = tl.where(m, dy * s * (1.0 + z * (1.0 - s)), 0.0)
        s1 += dz
        s2 += dz * xhat
    db_c = tl.sum(s1, axis=0)  # (BLOCK_CC,)
    dw_c = tl.sum(s2, axis=0)
    tl.store(db_part_ptr + n.to(tl.int64) * C + c, db_c, mask=cmask)
    tl.store(dw_part_ptr + n.to(tl.int64) * C + c, dw_c, mask=cmask)
    # group means of dxhat = dz*w and of dxhat*xhat, from the per-channel sums
    mean_dxhat = _broadcast(_segment_sum(db_c * w, gid, gi) / count, gid, gi)
    mean_dxhat_xhat = _broadcast(_segment_sum(dw_c * w, gid, gi) / count, gid, gi)
    # pass 2: dx
    for start in range(0, HW, BLOCK_HW):
        hw = start + tl.arange(0, BLOCK_HW)
        m = (hw[:, None] < HW) & cmask[None, :]
        off = base + hw[:, None].to(tl.int64) * sHW + c[None, :].to(tl.int64) * sC
        doff = dbase + hw[:, None].to(tl.int64) * dsHW + c[None, :].to(tl.int64) * dsC
        xhat = (tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32) - mean[None, :]) * rstd[None, :]
        dy = tl.load(dy_ptr + doff, mask=m, other=0.0).to(tl.float32)
        z = xhat * w[None, :] + b[None, :]
        s = 1.0 / (1.0 + tl.exp(-z))
        dxhat = dy * s * (1.0 + z * (1.0 - s)) * w[None, :]
        dx = rstd[None, :] * (dxhat - mean_dxhat[None, :] - xhat * mean_dxhat_xhat[None, :])
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


def _blocks(x: torch.Tensor, num_groups: int) -> tuple[int, int, int, int, int]:
    """(groups per program, programs per sample, BLOCK_HW, BLOCK_CC, BLOCK_G) for x's layout.

    Contiguous (NCHW): one group per program, its positions along the tile's rows are contiguous.
    channels_last (NHWC): several neighbouring groups per program, so that a tile row covers at least 32
    contiguous channels (whole 128-byte lines in float32) instead of one group's few channels.
    """
    c, hw = x.size(1), x.size(2) * x.size(3)
    cg = c // num_groups
    gpb = 1
    if x.stride(1) == 1 and c > 1:  # channels are the innermost dimension
        gpb = min(num_groups, max(1, 32 // cg))
    block_cc = triton.next_power_of_2(gpb * cg)
    block_g = triton.next_power_of_2(gpb)
    block_hw = max(1, min(triton.next_power_of_2(hw), max(16, 2048 // block_cc)))
    return gpb, triton.cdiv(num_groups, gpb), block_hw, block_cc, block_g


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
    gpb, programs, block_hw, block_cc, block_g = _blocks(x, num_groups)
    _gn_silu_fwd_kernel[(n, programs)](
        x, weight, bias, y, mean, rstd, sN, sC, sHW, c, h * w, num_groups, c // num_groups, gpb, float(eps),
        BLOCK_HW=block_hw, BLOCK_CC=block_cc, BLOCK_G=block_g, num_warps=4,
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
        gpb, programs, block_hw, block_cc, block_g = _blocks(x, num_groups)
        _gn_silu_bwd_kernel[(n, programs)](
            x, weight, bias, dy, mean, rstd, dx, dw_part, db_part, sN, sC, sHW, dsN, dsC, dsHW,
            c, h * w, num_groups, c // num_groups, gpb,
            BLOCK_HW=block_hw, BLOCK_CC=block_cc, BLOCK_G=block_g, num_warps=4,
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
