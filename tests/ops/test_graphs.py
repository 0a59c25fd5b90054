"""CapturedStep: input validation on CPU; on GPU a captured step with the fused ops replays like eager."""

from __future__ import annotations

import pytest
import torch

from deltairis import ops
from deltairis.ops.graphs import CapturedStep


def test_rejects_cpu_tensors_and_scalars() -> None:
    with pytest.raises(ValueError, match="CUDA graphs need CUDA tensors"):
        CapturedStep(lambda x: x * 2, torch.zeros(3))
    with pytest.raises(TypeError, match="scalars are frozen"):
        CapturedStep(lambda x: x, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one input"):
        CapturedStep(lambda: None)


@pytest.mark.gpu
@pytest.mark.usefixtures("compiled")
def test_captured_decoding_step_matches_eager_gpu() -> None:
    """One decoding step (KV-cache attention + sampling with a device offset), replayed 4 times."""
    b, h, d, tmax = 8, 4, 64, 32
    k_cache, v_cache = torch.zeros(b, h, tmax, d, device="cuda"), torch.zeros(b, h, tmax, d, device="cuda")
    lens = torch.zeros(b, dtype=torch.int32, device="cuda")
    offset = torch.zeros((), dtype=torch.int64, device="cuda")
    proj = torch.randn(h * d, 16, device="cuda")

    def step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = ops.attention_kvcache(q, k, v, k_cache, v_cache, lens, backend="triton")  # (B, H, 1, D)
        logits = y.reshape(b, h * d) @ proj  # (B, 16)
        tok = ops.sample_categorical(logits, seed=5, offset=offset, backend="triton")
        lens.add_(1)
        offset.add_(1)
        return y, tok

    qkv = torch.randn(4, 3, b, h, 1, d, device="cuda")  # (step, q/k/v, B, H, 1, D)
    captured = CapturedStep(step, *(qkv[0, i] for i in range(3)), warmup=1)
    k_cache.zero_(), v_cache.zero_(), lens.zero_(), offset.zero_()  # undo the warm-up's side effects
    got = []
    for t in range(4):
        y, tok = captured(*(qkv[t, i] for i in range(3)))
        got.append((y.clone(), tok.clone()))
    k_ref, v_ref = torch.zeros_like(k_cache), torch.zeros_like(v_cache)
    lens_ref = torch.zeros_like(lens)
    for t in range(4):
        q, k, v = (qkv[t, i] for i in range(3))
        y = ops.attention_kvcache_ref(q, k, v, k_ref, v_ref, lens_ref)
        # Same logits as the replay (its own y), so only the sampler is compared.
        tok = ops.sample_categorical_ref(got[t][0].reshape(b, h * d) @ proj, seed=5, offset=t)
        lens_ref += 1
        torch.testing.assert_close(got[t][0], y, rtol=1e-4, atol=1e-5)
        assert torch.equal(got[t][1], tok) or (got[t][1] == tok).float().mean().item() >= 0.85
    assert lens.tolist() == [4] * b
