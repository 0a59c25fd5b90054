"""attention_kvcache: incremental decoding equals full attention; the Triton kernel (interpreter on
CPU, compiled on GPU) matches the reference in outputs and in the cache contents it writes."""

from __future__ import annotations

import pytest
import torch

from deltairis import ops

MASKS = ("causal", "block_causal")


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12)).item()


def make_case(
    b: int,
    h: int,
    tq: int,
    d: int,
    tmax: int,
    lens: list[int],
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> tuple[torch.Tensor, ...]:
    """q, k_new, v_new (B, H, Tq, D), random caches (B, H, Tmax, D) and int32 cache_lens (B,)."""
    q, k_new, v_new = (torch.randn(b, h, tq, d, device=device, dtype=dtype) for _ in range(3))
    k_cache, v_cache = (torch.randn(b, h, tmax, d, device=device, dtype=dtype) for _ in range(2))
    cache_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    return q, k_new, v_new, k_cache, v_cache, cache_lens


@pytest.mark.parametrize("mask", MASKS)
def test_reference_incremental_equals_full_attention(mask: str) -> None:
    """Feeding a sequence in chunks through the cache gives full attention's outputs."""
    b, h, t, d, bs = 2, 3, 14, 8, 4
    q, k, v = (torch.randn(b, h, t, d) for _ in range(3))
    full = ops.attention_ref(q, k, v, mask=mask, block_size=bs)
    k_cache, v_cache = torch.zeros(b, h, 16, d), torch.zeros(b, h, 16, d)
    lens = torch.zeros(b, dtype=torch.int32)
    outs = []
    # Block-causal queries see their whole block, so chunks must end on block boundaries (or at t).
    chunks = [(0, 4), (4, 5), (5, 8), (8, 14)] if mask == "causal" else [(0, 4), (4, 12), (12, 14)]
    for lo, hi in chunks:
        outs.append(
            ops.attention_kvcache_ref(
                q[:, :, lo:hi],
                k[:, :, lo:hi],
                v[:, :, lo:hi],
                k_cache,
                v_cache,
                lens,
                mask=mask,
                block_size=bs,
            )
        )
        lens += hi - lo
    torch.testing.assert_close(torch.cat(outs, dim=2), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k_cache[:, :, :t], k)


def test_bad_input_is_rejected() -> None:
    q, kn, vn, kc, vc, lens = make_case(2, 2, 3, 8, 10, [0, 7])
    with pytest.raises(ValueError, match="cache_lens"):
        ops.attention_kvcache(q, kn, vn, kc, vc, lens.long())
    with pytest.raises(ValueError, match="cache_lens"):
        ops.attention_kvcache(q, kn, vn, kc, vc, lens[:1])
    with pytest.raises(ValueError, match="cache_lens"):
        ops.attention_kvcache(q, kn, vn, kc, vc, torch.tensor([0, 8], dtype=torch.int32))  # 8 + 3 > 10
    with pytest.raises(ValueError, match="cache_lens"):
        ops.attention_kvcache(q, kn, vn, kc, vc, torch.tensor([-1, 0], dtype=torch.int32))
    with pytest.raises(ValueError, match="k_new and v_new"):
        ops.attention_kvcache(q, kn[:, :, :2], vn, kc, vc, lens)
    with pytest.raises(ValueError, match="k_cache and v_cache"):
        ops.attention_kvcache(q, kn, vn, kc[:, :1], vc, lens)
    with pytest.raises(ValueError, match="do not fit"):
        ops.attention_kvcache(q, kn, vn, kc[:, :, :2], vc[:, :, :2], lens)
    with pytest.raises(ValueError, match="dtype"):
        ops.attention_kvcache(q, kn.double(), vn, kc, vc, lens)
    with pytest.raises(ValueError, match="mask"):
        ops.attention_kvcache(q, kn, vn, kc, vc, lens, mask="none")


# (B, H, Tq, D, Tmax, cache_lens): T = 1, ragged rows, a row that fills the cache exactly, an empty
# cache, more new tokens than one 16-row tile (two programs per row), head dim not a power of two.
CPU_CASES = [
    (1, 1, 1, 8, 1, [0]),
    (3, 2, 1, 16, 30, [0, 13, 29]),
    (4, 2, 3, 24, 40, [0, 5, 21, 37]),
    (2, 1, 20, 16, 45, [25, 3]),
    (2, 3, 2, 33, 18, [16, 9]),
]


@pytest.mark.usefixtures("interpret")
@pytest.mark.parametrize("mask,block_size", [("causal", 6), ("block_causal", 6), ("block_causal", 4)])
@pytest.mark.parametrize("case", CPU_CASES, ids=lambda c: "x".join(map(str, c[:5])))
def test_triton_matches_reference_interpreter(case: tuple, mask: str, block_size: int) -> None:
    b, h, tq, d, tmax, lens = case
    q, kn, vn, kc, vc, cache_lens = make_case(b, h, tq, d, tmax, lens)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    lens_before = cache_lens.clone()
    out = ops.attention_kvcache(
        q, kn, vn, kc, vc, cache_lens, mask=mask, block_size=block_size, backend="triton"
    )
    ref = ops.attention_kvcache_ref(q, kn, vn, kc_ref, vc_ref, cache_lens, mask=mask, block_size=block_size)
    assert out.shape == (b, h, tq, d)
    assert rel_err(out, ref) < 1e-4
    # Same cache contents: the new rows written, every other position untouched.
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)
    assert torch.equal(cache_lens, lens_before)


@pytest.mark.usefixtures("interpret")
def test_triton_never_reads_unwritten_positions_interpreter() -> None:
    """Garbage (huge values, NaN) beyond cache_lens + Tq must not change the output."""
    q, kn, vn, kc, vc, lens = make_case(3, 2, 2, 16, 24, [0, 6, 11])
    clean = ops.attention_kvcache(
        q, kn, vn, kc.clone(), vc.clone(), lens, mask="block_causal", backend="triton"
    )
    for row, n in enumerate([2, 8, 13]):
        kc[row, :, n:] = 1e4
        vc[row, :, n:] = float("nan")
    dirty = ops.attention_kvcache(q, kn, vn, kc, vc, lens, mask="block_causal", backend="triton")
    assert torch.equal(clean, dirty)


@pytest.mark.usefixtures("interpret")
def test_triton_decoding_loop_interpreter() -> None:
    """Several decoding steps through the kernel match full attention (causal), cache shared in place."""
    b, h, d, steps = 2, 2, 16, [3, 1, 1, 2]
    t = sum(steps)
    q, k, v = (torch.randn(b, h, t, d) for _ in range(3))
    full = ops.attention_ref(q, k, v, mask="causal")
    k_cache, v_cache = torch.zeros(b, h, t, d), torch.zeros(b, h, t, d)
    lens = torch.zeros(b, dtype=torch.int32)
    lo = 0
    for n in steps:
        sl = slice(lo, lo + n)
        out = ops.attention_kvcache(
            q[:, :, sl], k[:, :, sl], v[:, :, sl], k_cache, v_cache, lens, backend="triton"
        )
        assert rel_err(out, full[:, :, sl]) < 1e-4
        lens += n
        lo += n


@pytest.mark.usefixtures("interpret")
def test_triton_fp16_within_twice_pytorch_error_interpreter() -> None:
    """16-bit caches on CPU (fp16: Triton 3.9's interpreter computes bf16 dots wrongly)."""
    case32 = make_case(3, 2, 3, 32, 30, [0, 14, 27])
    case16 = [x.half() if x.is_floating_point() else x for x in case32]
    ref32 = ops.attention_kvcache_ref(*[x.clone() for x in case32], mask="block_causal")
    pt16 = ops.attention_kvcache_ref(*[x.clone() for x in case16], mask="block_causal")
    caches = [x.clone() for x in case16]
    ours = ops.attention_kvcache(*caches, mask="block_causal", backend="triton")
    assert ours.dtype == torch.float16
    err_ours, err_pt = (ours.float() - ref32).abs().max().item(), (pt16.float() - ref32).abs().max().item()
    assert err_ours <= 2 * err_pt + 1e-4, f"triton fp16 error {err_ours:.3g} > 2 x PyTorch's {err_pt:.3g}"
    ref_caches = [x.clone() for x in case16]
    ops.attention_kvcache_ref(*ref_caches, mask="block_causal")
    assert torch.equal(caches[3], ref_caches[3]) and torch.equal(caches[4], ref_caches[4])


# ----------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("tq", [1, 3, 40])
def test_triton_matches_reference_gpu(mask: str, tq: int) -> None:
    b, h, d, tmax = 86, 8, 64, 126
    lens = torch.randint(0, tmax - tq + 1, (b,)).tolist()
    lens[0], lens[1] = 0, tmax - tq  # an empty and a full cache
    q, kn, vn, kc, vc, cache_lens = make_case(b, h, tq, d, tmax, lens, device="cuda")
    kc_ref, vc_ref = kc.clone(), vc.clone()
    out = ops.attention_kvcache(q, kn, vn, kc, vc, cache_lens, mask=mask, backend="triton")
    ref = ops.attention_kvcache_ref(q, kn, vn, kc_ref, vc_ref, cache_lens, mask=mask)
    assert rel_err(out, ref) < 1e-4
    assert torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)


@pytest.mark.gpu
@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize("mask", MASKS)
def test_triton_bf16_within_twice_pytorch_error_gpu(mask: str) -> None:
    b, h, tq, d, tmax = 86, 8, 3, 64, 126
    lens = torch.randint(0, tmax - tq + 1, (b,)).tolist()
    case32 = make_case(b, h, tq, d, tmax, lens, device="cuda")
    case16 = [x.to(torch.bfloat16) if x.is_floating_point() else x for x in case32]
    ref32 = ops.attention_kvcache_ref(*[x.clone() for x in case32], mask=mask)
    pt16 = ops.attention_kvcache_ref(*[x.clone() for x in case16], mask=mask)
    ours = ops.attention_kvcache(*[x.clone() for x in case16], mask=mask, backend="triton")
    err_ours = (ours.float() - ref32).abs().max().item()
    err_pt = (pt16.float() - ref32).abs().max().item()
    assert err_ours <= 2 * err_pt + 1e-6, f"triton bf16 error {err_ours:.3g} > 2 x PyTorch's {err_pt:.3g}"


@pytest.mark.gpu
@pytest.mark.usefixtures("compiled")
def test_triton_is_cuda_graph_capturable_gpu() -> None:
    """cache_lens is read on the device: a captured step replays with the lengths at replay time."""
    q, kn, vn, kc, vc, lens = make_case(4, 2, 1, 64, 32, [0, 3, 7, 9], device="cuda")
    out = ops.attention_kvcache(q, kn, vn, kc, vc, lens, backend="triton")  # compile outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.attention_kvcache(q, kn, vn, kc, vc, lens, backend="triton")
    lens.copy_(torch.tensor([1, 4, 8, 10], dtype=torch.int32))
    kc_ref, vc_ref = kc.clone(), vc.clone()
    graph.replay()
    torch.cuda.synchronize()
    ref = ops.attention_kvcache_ref(q, kn, vn, kc_ref, vc_ref, lens)
    assert rel_err(out, ref) < 1e-4
    assert torch.equal(kc, kc_ref)
