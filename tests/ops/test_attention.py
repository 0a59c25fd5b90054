"""attention: the reference against a per-query loop, the Triton kernel (interpreter on CPU, compiled
on GPU) against the reference, forward and backward."""

from __future__ import annotations

import math

import pytest
import torch

from deltairis import ops

MASKS = ("causal", "block_causal")


def rel_err(x: torch.Tensor, ref: torch.Tensor, scale: float | None = None) -> float:
    """Max absolute error relative to ``scale`` (default: the reference's largest magnitude)."""
    if scale is None:
        scale = ref.float().abs().max().item()
    return ((x.float() - ref.float()).abs().max() / max(scale, 1e-12)).item()


def grad_scale(grads: tuple[torch.Tensor, ...]) -> float:
    """The largest gradient magnitude over (dq, dk, dv): a gradient that is exactly zero in exact
    arithmetic (dq with T = 1) is judged relative to the others."""
    return max(g.abs().max().item() for g in grads)


def loop_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: str, block_size: int
) -> torch.Tensor:
    """Plain float64 per-query softmax attention, written independently of the op."""
    b, h, t, d = q.shape
    out = torch.zeros(b, h, t, d, dtype=torch.float64)
    for i in range(t):
        keys = [
            j for j in range(t) if j <= i or (mask == "block_causal" and j // block_size == i // block_size)
        ]
        s = (q[:, :, i : i + 1].double() @ k[:, :, keys].double().transpose(-1, -2)) / math.sqrt(
            d
        )  # (B, H, 1, n)
        out[:, :, i] = (torch.softmax(s, dim=-1) @ v[:, :, keys].double())[:, :, 0]
    return out


def make_qkv(
    b: int,
    h: int,
    t: int,
    d: int,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    layout: str = "dense",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random q, k, v of shape (B, H, T, D); ``layout="bthd"`` gives transposed views like the model's."""
    if layout == "bthd":
        qkv = torch.randn(b, t, 3, h, d, device=device, dtype=dtype)  # (B, T, 3, H, D)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # each (B, H, T, D), non-contiguous
        return q, k, v
    return tuple(torch.randn(b, h, t, d, device=device, dtype=dtype) for _ in range(3))  # type: ignore[return-value]


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("block_size", [1, 3, 6])
def test_reference_matches_loop(mask: str, block_size: int) -> None:
    q, k, v = make_qkv(2, 3, 13, 8)
    out = ops.attention_ref(q, k, v, mask=mask, block_size=block_size)
    assert rel_err(out, loop_attention(q, k, v, mask, block_size)) < 1e-5


def test_block_causal_differs_from_causal() -> None:
    q, k, v = make_qkv(1, 2, 12, 8)
    causal = ops.attention_ref(q, k, v, mask="causal")
    block = ops.attention_ref(q, k, v, mask="block_causal", block_size=6)
    # The last query of each block sees exactly the causal keys; earlier ones see more.
    torch.testing.assert_close(causal[:, :, 5], block[:, :, 5])
    assert (causal[:, :, 0] - block[:, :, 0]).abs().max() > 1e-3


def test_bad_input_is_rejected() -> None:
    q, k, v = make_qkv(1, 2, 5, 8)
    with pytest.raises(ValueError, match="mask"):
        ops.attention(q, k, v, mask="full")
    with pytest.raises(ValueError, match="block_size"):
        ops.attention(q, k, v, mask="block_causal", block_size=0)
    with pytest.raises(ValueError, match="one shape"):
        ops.attention(q, k[:, :, :4], v)
    with pytest.raises(ValueError, match="one shape"):
        ops.attention(q[0], k[0], v[0])
    with pytest.raises(ValueError, match="backend"):
        ops.attention(q, k, v, backend="cuda")


# (B, H, T, D, layout): odd sizes, T = 1, T across several 16-row tiles, head dim not a power of two.
CPU_SHAPES = [
    (1, 1, 1, 8, "dense"),
    (2, 3, 37, 24, "dense"),
    (1, 2, 20, 16, "bthd"),
    (3, 1, 7, 33, "dense"),
]


@pytest.mark.usefixtures("interpret")
@pytest.mark.parametrize(
    "mask,block_size", [("causal", 6), ("block_causal", 6), ("block_causal", 5), ("block_causal", 1)]
)
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_triton_matches_reference_interpreter(shape: tuple, mask: str, block_size: int) -> None:
    b, h, t, d, layout = shape
    q, k, v = make_qkv(b, h, t, d, layout=layout)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out = ops.attention(q, k, v, mask=mask, block_size=block_size, backend="triton")
    ref = ops.attention_ref(q, k, v, mask=mask, block_size=block_size)
    assert out.shape == ref.shape
    assert rel_err(out, ref) < 1e-4
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    scale = grad_scale(want)
    for name, g, w in zip("qkv", got, want):
        assert g.shape == w.shape
        assert rel_err(g, w, scale) < 1e-4, f"d{name}"


@pytest.mark.usefixtures("interpret")
def test_triton_forward_without_grad_interpreter() -> None:
    q, k, v = make_qkv(2, 2, 19, 16)
    with torch.no_grad():
        out = ops.attention(q, k, v, mask="block_causal", block_size=4, backend="triton")
    assert not out.requires_grad
    assert rel_err(out, ops.attention_ref(q, k, v, mask="block_causal", block_size=4)) < 1e-4


@pytest.mark.usefixtures("interpret")
def test_triton_grad_of_one_input_interpreter() -> None:
    q, k, v = make_qkv(1, 2, 9, 8)
    v.requires_grad_()
    out = ops.attention(q, k, v, backend="triton")
    (gv,) = torch.autograd.grad(out.square().sum(), (v,))
    ref = ops.attention_ref(q, k, v)
    (wv,) = torch.autograd.grad(ref.square().sum(), (v,))
    assert rel_err(gv, wv) < 1e-4


@pytest.mark.usefixtures("interpret")
@pytest.mark.parametrize("mask", MASKS)
def test_triton_fp16_within_twice_pytorch_error_interpreter(mask: str) -> None:
    """The 16-bit casts of the kernels (P and dS before their dots, the outputs) on CPU: fp16, since
    Triton 3.9's interpreter computes bf16 dots wrongly (bf16 is covered by the GPU tests)."""
    q, k, v = make_qkv(2, 2, 21, 32, dtype=torch.float16)
    grad = torch.randn(2, 2, 21, 32, dtype=torch.float16)

    def run(fn, dtype: torch.dtype) -> list[torch.Tensor]:
        xs = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
        out = fn(*xs)
        return [out, *torch.autograd.grad(out, xs, grad.to(dtype))]

    ref32 = run(lambda *x: ops.attention_ref(*x, mask=mask), torch.float32)
    pt16 = run(lambda *x: ops.attention_ref(*x, mask=mask), torch.float16)
    op16 = run(lambda *x: ops.attention(*x, mask=mask, backend="triton"), torch.float16)
    for name, ours, pytorch, ref in zip(("out", "dq", "dk", "dv"), op16, pt16, ref32):
        assert ours.dtype == torch.float16
        e, p = (ours.float() - ref).abs().max().item(), (pytorch.float() - ref).abs().max().item()
        assert e <= 2 * p + 1e-4, f"{name}: triton fp16 error {e:.3g} > 2 x PyTorch's {p:.3g}"


# ----------------------------------------------------------------------------------------------- GPU


def _bf16_errors(
    b: int, h: int, t: int, d: int, mask: str, block_size: int, backend: str
) -> tuple[list[float], list[float]]:
    """Max errors vs an fp32 reference of (out, dq, dk, dv): the op in bf16 and plain PyTorch in bf16."""
    q, k, v = make_qkv(b, h, t, d, dtype=torch.bfloat16, device="cuda", layout="bthd")
    grad = torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16)

    def run(fn, dtype: torch.dtype) -> list[torch.Tensor]:
        xs = [x.detach().to(dtype).requires_grad_() for x in (q, k, v)]
        out = fn(*xs)
        return [out, *torch.autograd.grad(out, xs, grad.to(dtype))]

    ref32 = run(lambda *x: ops.attention_ref(*x, mask=mask, block_size=block_size), torch.float32)
    pt16 = run(lambda *x: ops.attention_ref(*x, mask=mask, block_size=block_size), torch.bfloat16)
    op16 = run(
        lambda *x: ops.attention(*x, mask=mask, block_size=block_size, backend=backend), torch.bfloat16
    )
    err = lambda xs: [(x.float() - r).abs().max().item() for x, r in zip(xs, ref32)]
    return err(op16), err(pt16)


@pytest.mark.gpu
@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("shape", [(2, 3, 1, 64), (4, 8, 126, 64), (2, 2, 77, 40), (1, 4, 300, 128)])
def test_triton_bf16_within_twice_pytorch_error_gpu(shape: tuple, mask: str) -> None:
    ours, pytorch = _bf16_errors(*shape, mask=mask, block_size=6, backend="triton")
    for name, e, p in zip(("out", "dq", "dk", "dv"), ours, pytorch):
        # 1e-4 absolute slack: with T = 1 both errors are rounding-level (dq is 0 in exact arithmetic),
        # far below the ~1e-2 bf16 errors of the other shapes.
        assert e <= 2 * p + 1e-4, f"{name}: triton error {e:.3g} > 2 x PyTorch bf16 error {p:.3g}"


@pytest.mark.gpu
@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("shape", [(1, 1, 1, 8), (2, 3, 37, 24), (2, 8, 126, 64), (1, 2, 200, 128)])
def test_triton_fp32_matches_reference_gpu(shape: tuple, mask: str) -> None:
    q, k, v = (x.requires_grad_() for x in make_qkv(*shape, device="cuda", layout="bthd"))
    out = ops.attention(q, k, v, mask=mask, block_size=5, backend="triton")
    ref = ops.attention_ref(q, k, v, mask=mask, block_size=5)
    assert rel_err(out, ref) < 1e-4
    grad = torch.randn_like(out)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for g, w in zip(torch.autograd.grad(out, (q, k, v), grad), want):
        assert rel_err(g, w, grad_scale(want)) < 1e-4


@pytest.mark.gpu
@pytest.mark.usefixtures("compiled")
def test_auto_uses_sdpa_for_full_attention_on_cuda_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CUDA, ``auto`` runs full-sequence attention with PyTorch's SDPA (measured faster than the
    Triton kernel), never the kernel; ``backend="triton"`` still runs the kernel."""
    from deltairis.ops import _dispatch

    loaded: list[tuple[str, str]] = []
    real_load = _dispatch.load_kernel

    def spy(module: str, name: str):
        loaded.append((module, name))
        return real_load(module, name)

    monkeypatch.setattr(_dispatch, "load_kernel", spy)
    q, k, v = make_qkv(2, 2, 16, 32, dtype=torch.bfloat16, device="cuda")
    for mask in ("causal", "block_causal"):
        loaded.clear()
        out = ops.attention(q, k, v, mask=mask, backend="auto")
        assert out.shape == q.shape and not loaded
        forced = ops.attention(q, k, v, mask=mask, backend="triton")
        assert loaded[-1] == ("attention", "attention_triton")
        assert (forced.float() - out.float()).abs().max().item() < 2e-2  # bf16


def test_auto_skips_kernels_marked_slower(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dispatch rule itself, without a GPU: CUDA-looking inputs get the kernel under ``auto`` unless
    the op says its kernel is slower (``auto_uses_kernel=False``); explicit ``triton`` still gets it."""
    from types import SimpleNamespace

    from deltairis.ops import _dispatch

    sentinel = object()
    monkeypatch.setattr(_dispatch, "triton_available", lambda: True)
    monkeypatch.setattr(_dispatch, "load_kernel", lambda module, name: sentinel)
    cuda_like = [SimpleNamespace(is_cuda=True)]
    ok = lambda: None  # noqa: E731
    assert _dispatch.choose("op", cuda_like, "auto", ok, ("m", "f")) is sentinel
    assert _dispatch.choose("op", cuda_like, "auto", ok, ("m", "f"), auto_uses_kernel=False) is None
    assert _dispatch.choose("op", cuda_like, "triton", ok, ("m", "f"), auto_uses_kernel=False) is sentinel
    assert _dispatch.choose("op", cuda_like, "torch", ok, ("m", "f")) is None
