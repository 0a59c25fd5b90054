"""group_norm_silu: the reference is nn.GroupNorm -> nn.SiLU; the Triton kernel (interpreter / GPU) against it,
values and gradients of input, weight and bias, contiguous and channels_last inputs."""

from __future__ import annotations

import pytest
import torch

from deltairis import ops
from deltairis.config.models import FrameCnnConfig
from deltairis.models.convnet import FrameDecoder, FrameEncoder, set_frame_cnn_options

# (N, C, H, W, groups): odd channel and group counts, 1-wide maps, a group of one channel
SHAPES = [
    (2, 6, 5, 3, 3),
    (1, 8, 4, 4, 2),
    (3, 5, 7, 1, 5),
    (2, 12, 1, 9, 4),
    (1, 7, 3, 3, 1),
    (4, 32, 6, 6, 32),
    (2, 24, 11, 13, 8),
    (1, 96, 4, 4, 32),
    (2, 70, 3, 3, 14),  # channels_last: 6 groups per program, the last program holds 2
]


def _inputs(shape, channels_last: bool, dtype=torch.float32, device="cpu", seed=0):
    n, c, h, w, _ = shape
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, h, w, generator=g) * 2.0 + 0.7).to(device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = (torch.randn(c, generator=g) * 0.5 + 1.0).to(device)
    bias = (torch.randn(c, generator=g) * 0.5).to(device)
    dy = torch.randn(n, c, h, w, generator=g).to(device=device, dtype=dtype)
    return x, weight, bias, dy


def _run(fn, x, weight, bias, dy, groups):
    xs, ws, bs = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    y = fn(xs, groups, ws, bs)
    (y.float() * dy.float()).sum().backward()
    return y, xs.grad, ws.grad, bs.grad


def test_reference_is_groupnorm_then_silu_bit_for_bit() -> None:
    x, weight, bias, _ = _inputs((2, 12, 5, 7, 4), False)
    gn = torch.nn.GroupNorm(4, 12)
    with torch.no_grad():
        gn.weight.copy_(weight)
        gn.bias.copy_(bias)
    assert torch.equal(ops.group_norm_silu_ref(x, 4, weight, bias), torch.nn.SiLU()(gn(x)))
    # auto on CPU is the reference
    assert torch.equal(ops.group_norm_silu(x, 4, weight, bias), ops.group_norm_silu_ref(x, 4, weight, bias))


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ops.group_norm_silu(torch.zeros(2, 6, 3, 3), 4, torch.ones(6), torch.zeros(6))
    with pytest.raises(ValueError, match="divisible"):
        ops.group_norm_silu(torch.zeros(6), 2)


@pytest.mark.usefixtures("interpret")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_triton_matches_reference_interpreter(shape: tuple, channels_last: bool) -> None:
    groups = shape[-1]
    x, weight, bias, dy = _inputs(shape, channels_last, seed=sum(shape))
    tri = lambda *a: ops.group_norm_silu(*a, backend="triton")
    y, dx, dw, db = _run(tri, x, weight, bias, dy, groups)
    y0, dx0, dw0, db0 = _run(ops.group_norm_silu_ref, x, weight, bias, dy, groups)
    assert y.shape == y0.shape and y.dtype == x.dtype
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    torch.testing.assert_close(y, y0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx, dx0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dw, dw0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(db, db0, rtol=1e-4, atol=1e-4)


@pytest.mark.usefixtures("interpret")
def test_triton_strided_and_bf16_interpreter() -> None:
    # H/W not mergeable (a transposed map) and a gradient with other strides than x
    base, weight, bias, dy = _inputs((2, 8, 5, 6, 4), False, seed=3)
    x = base.transpose(2, 3)  # (2, 8, 6, 5), not mergeable
    dyt = dy.transpose(2, 3).contiguous(memory_format=torch.channels_last)
    tri = lambda *a: ops.group_norm_silu(*a, backend="triton")
    got = _run(tri, x, weight, bias, dyt, 4)
    want = _run(ops.group_norm_silu_ref, x, weight, bias, dyt, 4)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # bf16 input: computed in float32, returned in bf16; within twice PyTorch's own bf16 error
    x32, weight, bias, dy = _inputs((2, 16, 6, 6, 4), True, seed=5)
    xb = x32.to(torch.bfloat16)
    exact = ops.group_norm_silu_ref(xb.double(), 4, weight.double(), bias.double())
    y = ops.group_norm_silu(xb, 4, weight, bias, backend="triton")
    torch_bf16 = ops.group_norm_silu_ref(xb, 4, weight.bfloat16(), bias.bfloat16())
    assert y.dtype == torch.bfloat16
    assert (y.double() - exact).abs().max() <= 2 * (torch_bf16.double() - exact).abs().max() + 1e-6


@pytest.mark.usefixtures("interpret")
def test_triton_unsupported_inputs_raise_interpreter() -> None:
    with pytest.raises(RuntimeError, match="does not support"):
        ops.group_norm_silu(torch.zeros(2, 4, 5), 2, torch.ones(4), torch.zeros(4), backend="triton")
    with pytest.raises(RuntimeError, match="does not support"):
        ops.group_norm_silu(torch.zeros(2, 4, 3, 3), 2, backend="triton")


def _cnn_config() -> FrameCnnConfig:
    return FrameCnnConfig(
        image_channels=3, latent_dim=4, num_channels=8, mult=(1, 2), down=(1, 0), num_groups=4
    )


@pytest.mark.usefixtures("interpret")
def test_frame_cnns_fused_triton_match_plain_layers_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    enc, dec = FrameEncoder(_cnn_config()), FrameDecoder(_cnn_config())
    x = torch.rand(2, 3, 16, 16)
    set_frame_cnn_options(enc, fused_norm=False)
    set_frame_cnn_options(dec, fused_norm=False)
    z0 = enc(x)
    r0 = dec(z0)
    (r0.square().sum()).backward()
    g0 = [p.grad.clone() for p in list(enc.parameters()) + list(dec.parameters())]
    enc.zero_grad(), dec.zero_grad()
    set_frame_cnn_options(enc, fused_norm=True)
    set_frame_cnn_options(dec, fused_norm=True)
    monkeypatch.setenv("DELTAIRIS_BACKEND", "triton")  # the kernel on CPU tensors, through the interpreter
    z1 = enc(x)
    r1 = dec(z1)
    (r1.square().sum()).backward()
    torch.testing.assert_close(z1, z0, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(r1, r0, rtol=1e-4, atol=1e-5)
    for a, b in zip([p.grad for p in list(enc.parameters()) + list(dec.parameters())], g0):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.usefixtures("interpret")
def test_frame_cnn_fused_under_bf16_autocast_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under autocast the convolutions give bf16; F.group_norm then runs in fp32 and returns fp32, the
    kernel returns bf16 (the next convolution casts to bf16 anyway). Against the fp32 run, the fused bf16
    run's error is bounded by the plain bf16 run's (outputs and every gradient): 3x here, not the usual
    2x, because Triton's interpreter truncates float32 -> bf16 (compiled Triton rounds to nearest), which
    doubles the kernel's own rounding error on CPU."""
    torch.manual_seed(1)
    enc = FrameEncoder(_cnn_config())
    x = torch.rand(4, 3, 16, 16)

    def run(fused: bool, autocast: bool):
        set_frame_cnn_options(enc, fused_norm=fused)
        monkeypatch.setenv("DELTAIRIS_BACKEND", "triton" if fused else "torch")
        enc.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            z = enc(x)
        z.float().square().sum().backward()
        return [z.detach().float()] + [p.grad.clone() for p in enc.parameters()]

    exact, plain, fused = run(False, False), run(False, True), run(True, True)
    assert enc(x).dtype == torch.float32
    for e, p, f in zip(exact, plain, fused):
        err_plain = (p - e).norm() / e.norm().clamp(min=1e-12)
        err_fused = (f - e).norm() / e.norm().clamp(min=1e-12)
        assert err_fused <= 3 * err_plain + 1e-4, (err_fused.item(), err_plain.item())


# -- GPU ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape", SHAPES + [(64, 64, 64, 64, 32), (640, 256, 8, 8, 32)], ids=str)
def test_triton_matches_reference_gpu(shape: tuple, channels_last: bool, dtype: torch.dtype) -> None:
    groups = shape[-1]
    x, weight, bias, dy = _inputs(shape, channels_last, dtype=dtype, device="cuda")
    tri = lambda *a: ops.group_norm_silu(*a, backend="triton")
    got = _run(tri, x, weight, bias, dy, groups)
    want = _run(ops.group_norm_silu_ref, x.float(), weight, bias, dy, groups)  # float32 reference
    assert got[0].dtype == dtype
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(got[0].float(), want[0], **tol)
    torch.testing.assert_close(got[1].float(), want[1], **tol)
    wtol = {"rtol": 1e-3, "atol": 1e-3} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 1e-1}
    torch.testing.assert_close(got[2], want[2], **wtol)
    torch.testing.assert_close(got[3], want[3], **wtol)


@pytest.mark.gpu
@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_frame_cnns_fast_paths_match_plain_layers_gpu(
    autocast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fp32 convolutions: NHWC and NCHW pick different cuDNN algorithms, whose TF32 rounding would differ
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    cfg = FrameCnnConfig(image_channels=3, latent_dim=16, num_channels=32, num_groups=8)
    enc, dec = FrameEncoder(cfg).cuda(), FrameDecoder(cfg).cuda()
    x = torch.rand(6, 2, 3, 64, 64, device="cuda")
    outs = []
    for fast in (False, True):
        for m in (enc, dec):
            set_frame_cnn_options(m, channels_last=fast, fused_norm=fast)
            m.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            z = enc(x)
            r = dec(z)
        r.float().square().mean().backward()
        outs.append(
            (z.float(), r.float(), [p.grad.clone() for p in list(enc.parameters()) + list(dec.parameters())])
        )
    tol = {"rtol": 1e-3, "atol": 1e-3} if not autocast else {"rtol": 5e-2, "atol": 5e-2}
    torch.testing.assert_close(outs[1][0], outs[0][0], **tol)
    torch.testing.assert_close(outs[1][1], outs[0][1], **tol)
    for a, b in zip(outs[1][2], outs[0][2]):
        torch.testing.assert_close(a, b, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)
    # weights follow the device: back on CPU they are contiguous again and the output is the plain one
    enc.cpu()
    enc(x[:1].cpu())
    assert all(p.is_contiguous() for p in enc.parameters())
