"""GPU benchmarks of the fused ops against their baselines, measured in the same run.

Two ways to run it (both need CUDA; without it every case is skipped):

* as a pytest-benchmark suite: ``pytest benchmarks/bench_ops.py`` (one test per variant, grouped by
  op and shape with ``benchmark.group``; the device name is recorded in ``extra_info``);
* standalone: ``python benchmarks/bench_ops.py --json out.json`` times every case with CUDA events
  (``triton.testing.do_bench``, median) and writes the speed-ups over each group's baseline; the GPU
  script ``benchmarks/gpu/run.sh`` uses this form, which needs neither pytest nor pytest-benchmark.

Shapes are the imagination shapes of the issue: KV-cache attention at B = 86, H = 8, D = 64, cache
126, 1 and 3 new tokens; attention forward+backward at (32, 8, 126, 64) bf16; categorical sampling
of (86 * 4, 1024) logits; two-hot expectations of (86, 255) and (86 * 15, 255) logits; GroupNorm+SiLU
forward+backward at two frame-CNN shapes of the Crafter tokenizer (B*T = 32*20 frames, 32 groups), fused
Triton against ``F.group_norm`` + ``F.silu`` in both memory formats (PyTorch's CUDA GroupNorm makes
channels_last inputs contiguous first).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from deltairis import ops


@dataclass(frozen=True)
class Case:
    """One benchmarked variant: ``make()`` builds inputs and returns the callable to time."""

    group: str
    variant: str
    baseline: str  # the variant of this group that speed-ups are measured against
    make: Callable[[], Callable[[], object]]


def _kvcache(dtype: torch.dtype, tq: int, variant: str) -> Callable[[], object]:
    b, h, d, tmax = 86, 8, 64, 126
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k_new, v_new = (torch.randn(b, h, tq, d, device="cuda", dtype=dtype, generator=gen) for _ in range(3))
    k_cache, v_cache = (
        torch.randn(b, h, tmax, d, device="cuda", dtype=dtype, generator=gen) for _ in range(2)
    )
    # Ragged lengths over the whole range, up to a full cache.
    lens = torch.randint(0, tmax - tq + 1, (b,), device="cuda", generator=gen).to(torch.int32)
    lens[0] = tmax - tq
    backend = "triton" if variant == "triton" else "torch"
    return lambda: ops.attention_kvcache(
        q, k_new, v_new, k_cache, v_cache, lens, mask="causal", backend=backend
    )


def _attention(mask: str, variant: str) -> Callable[[], object]:
    b, h, t, d = 32, 8, 126, 64
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (
        torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
        for _ in range(3)
    )
    grad = torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    if variant == "triton":
        fwd = lambda: ops.attention(q, k, v, mask=mask, backend="triton")
    elif variant == "sdpa_is_causal":
        fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:  # sdpa with an explicit boolean mask: the reference
        fwd = lambda: ops.attention_ref(q, k, v, mask=mask)
    return lambda: torch.autograd.grad(fwd(), (q, k, v), grad)


def _sampling(variant: str) -> Callable[[], object]:
    logits = torch.randn(86 * 4, 1024, device="cuda")
    if variant == "triton":
        return lambda: ops.sample_categorical(logits, seed=0, offset=1, backend="triton")
    if variant == "reference":
        return lambda: ops.sample_categorical(logits, seed=0, offset=1, backend="torch")
    return lambda: torch.distributions.Categorical(logits=logits).sample()


def _twohot(rows: int, variant: str) -> Callable[[], object]:
    logits = torch.randn(rows, 255, device="cuda")
    backend = "triton" if variant == "triton" else "torch"
    return lambda: ops.twohot_expectation(logits, backend=backend)


def _group_norm_silu(
    shape: tuple[int, int, int, int], dtype: torch.dtype, variant: str
) -> Callable[[], object]:
    n, c, h, w = shape
    gen = torch.Generator(device="cuda").manual_seed(0)
    fmt = torch.channels_last if variant.endswith("nhwc") else torch.contiguous_format
    x = torch.randn(n, c, h, w, device="cuda", generator=gen).to(dtype).contiguous(memory_format=fmt)
    x.requires_grad_()
    weight = torch.randn(c, device="cuda", generator=gen).requires_grad_()
    bias = torch.randn(c, device="cuda", generator=gen).requires_grad_()
    grad = torch.randn_like(x)
    if variant.startswith("triton"):
        fwd = lambda: ops.group_norm_silu(x, 32, weight, bias, backend="triton")
    else:
        fwd = lambda: F.silu(F.group_norm(x, 32, weight, bias))
    return lambda: torch.autograd.grad(fwd(), (x, weight, bias), grad)


def _cases() -> list[Case]:
    cases: list[Case] = []
    for dtype, dname in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
        for tq in (1, 3):
            group = f"attention_kvcache causal B86 H8 D64 cache126 Tq{tq} {dname}"
            for variant in ("reference", "triton"):
                cases.append(
                    Case(group, variant, "reference", lambda dt=dtype, n=tq, v=variant: _kvcache(dt, n, v))
                )
    for variant in ("sdpa_is_causal", "reference", "triton"):
        cases.append(Case("attention fwd+bwd causal B32 H8 T126 D64 bf16", variant, "sdpa_is_causal",
                          lambda v=variant: _attention("causal", v)))  # fmt: skip
    for variant in ("reference", "triton"):
        cases.append(Case("attention fwd+bwd block_causal6 B32 H8 T126 D64 bf16", variant, "reference",
                          lambda v=variant: _attention("block_causal", v)))  # fmt: skip
    for variant in ("categorical", "reference", "triton"):
        cases.append(
            Case(
                "sample_categorical (344, 1024) fp32", variant, "categorical", lambda v=variant: _sampling(v)
            )
        )
    for rows in (86, 86 * 15):
        for variant in ("reference", "triton"):
            cases.append(Case(f"twohot_expectation ({rows}, 255) fp32", variant, "reference",
                              lambda r=rows, v=variant: _twohot(r, v)))  # fmt: skip
    for shape in ((640, 64, 64, 64), (640, 256, 8, 8)):
        for dtype, dname in ((torch.bfloat16, "bf16"), (torch.float32, "fp32")):
            group = f"group_norm_silu fwd+bwd {shape} G32 {dname}"
            for variant in ("reference", "reference_nhwc", "triton", "triton_nhwc"):
                cases.append(Case(group, variant, "reference",
                                  lambda sh=shape, dt=dtype, v=variant: _group_norm_silu(sh, dt, v)))  # fmt: skip
    return cases


CASES = _cases()


def device_info() -> dict[str, str]:
    info = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = "missing"
    return info


# ------------------------------------------------------------------------------------ pytest-benchmark


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.group} | {c.variant}")
def test_op(benchmark, bench_device: torch.device, case: Case) -> None:
    if bench_device.type != "cuda":
        pytest.skip("the fused-op benchmarks compare GPU kernels (DELTAIRIS_BENCH_DEVICE is not CUDA)")
    fn = case.make()

    def run() -> None:
        fn()
        torch.cuda.synchronize()

    for _ in range(3):  # compile / autotune outside the timed region
        run()
    benchmark.group = case.group
    benchmark.extra_info.update(device_info())
    benchmark.extra_info["variant"] = case.variant
    benchmark.extra_info["baseline"] = case.baseline
    benchmark.pedantic(run, rounds=30, iterations=5, warmup_rounds=2)


# ---------------------------------------------------------------------------------------- standalone


def run_standalone() -> dict[str, object]:
    """Median milliseconds of every case (CUDA events) and speed-ups over each group's baseline."""
    from triton.testing import do_bench

    results: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    for case in CASES:
        key = f"{case.group} | {case.variant}"
        try:
            fn = case.make()
            fn()  # compile outside the timing
            torch.cuda.synchronize()
            ms = float(do_bench(fn, warmup=25, rep=200, return_mode="median"))
        except Exception as err:  # noqa: BLE001 - one failing variant must not hide the others
            errors[key] = f"{type(err).__name__}: {err}"
            continue
        results.setdefault(case.group, {})[case.variant] = ms
    speedups: dict[str, dict[str, float]] = {}
    for case in CASES:
        group = results.get(case.group, {})
        if case.variant in group and case.baseline in group and case.variant != case.baseline:
            speedups.setdefault(case.group, {})[f"{case.variant}_vs_{case.baseline}"] = (
                group[case.baseline] / group[case.variant]
            )
    return {"info": device_info(), "median_ms": results, "speedup": speedups, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_ops.py needs a CUDA device")
    report = run_standalone()
    text = json.dumps(report, indent=2, sort_keys=True)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    for group, variants in report["median_ms"].items():  # type: ignore[union-attr]
        line = ", ".join(f"{v} {ms:.4f} ms" for v, ms in variants.items())
        ups = report["speedup"].get(group, {})  # type: ignore[union-attr]
        extra = ", ".join(f"{k} x{s:.2f}" for k, s in ups.items() if math.isfinite(s))
        print(f"{group}: {line}" + (f"  [{extra}]" if extra else ""))
    for key, err in report["errors"].items():  # type: ignore[union-attr]
        print(f"ERROR {key}: {err}")


if __name__ == "__main__":
    main()
