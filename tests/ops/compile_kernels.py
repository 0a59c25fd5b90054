"""Compile every Triton kernel ahead of time for a CUDA target, without a GPU (helper script).

Run as ``python tests/ops/compile_kernels.py [capability]`` with ``TRITON_INTERPRET`` unset:
it builds each kernel variant the launchers use (dtypes, masks, tile sizes) down to a cubin with
Triton's bundled ptxas and prints one JSON line per variant: name, ok, error, shared memory.
``test_compile.py`` runs it in a subprocess, so a kernel that only the GPU compiler rejects
(type errors, unsupported constructs, too much shared memory) fails on CPU-only machines too.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

SOURCE = Path(__file__).resolve().parents[2] / "kernels"


def load(name: str) -> Any:
    """deltairis.kernels.<name>, from the source tree when there is one."""
    source = SOURCE / f"{name}.py"
    if source.is_file():
        spec = importlib.util.spec_from_file_location(f"deltairis.kernels.{name}", source)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        return mod
    return importlib.import_module(f"deltairis.kernels.{name}")


def variants() -> Iterator[tuple[str, Any, dict[str, str], dict[str, str], dict[str, Any], int]]:
    """(label, jit function, pointer dtypes, scalar types, constexprs, num_warps)."""
    att, kv, smp, th, gn = (
        load(n) for n in ("attention", "attention_kvcache", "sampling", "twohot", "groupnorm")
    )
    for dt, d in (("bf16", 64), ("bf16", 128), ("fp32", 64)):
        prec = "ieee" if dt == "fp32" else None
        tile = 64 if (dt != "fp32" and d <= 64) else 32  # as attention._config
        ce = dict(BLOCK_CAUSAL=True, BLOCK_M=tile, BLOCK_N=tile, BLOCK_D=d, DOT_PREC=prec)
        grads = dict(Q=dt, K=dt, V=dt, DO=dt, LSE="fp32", DELTA="fp32", DK=dt, DV=dt, DQ=dt)
        scales = {"qk_scale": "fp32", "sm_scale": "fp32"}
        yield (
            f"attn_fwd {dt} D{d}",
            att._attn_fwd_kernel,
            dict(Q=dt, K=dt, V=dt, O=dt, LSE="fp32"),
            scales,
            ce,
            4,
        )
        yield f"attn_dkdv {dt} D{d}", att._attn_bwd_dkdv_kernel, grads, scales, ce, 4
        yield f"attn_dq {dt} D{d}", att._attn_bwd_dq_kernel, grads, scales, ce, 4
        ce_kv = dict(BLOCK_CAUSAL=True, BLOCK_M=16, BLOCK_N=64 if d <= 64 else 32, BLOCK_D=d, DOT_PREC=prec)
        ptrs = dict(Q=dt, KN=dt, VN=dt, KC=dt, VC=dt, LENS="i32", O=dt)
        yield f"attn_kvcache {dt} D{d}", kv._attn_kvcache_kernel, ptrs, scales, ce_kv, 4
    yield (
        "attn_delta bf16",
        att._attn_bwd_delta_kernel,
        dict(O="bf16", DO="bf16", DELTA="fp32"),
        {},
        dict(BLOCK_M=64, BLOCK_D=64),
        4,
    )
    for on_device in (False, True):
        ptrs = dict(logits_ptr="fp32", out_ptr="i64", offset_ptr="i64")
        scalars = {"k0": "i64", "k1": "i64", "temperature": "fp32"}
        ce = dict(OFFSET_ON_DEVICE=on_device, BLOCK_R=2, BLOCK_V=1024)
        yield f"sample offset_on_device={on_device}", smp._sample_kernel, ptrs, scalars, ce, 4
    # GroupNorm+SiLU: the block sizes groupnorm._blocks picks for 128 channels in 32 groups on 64x64
    # frames, contiguous (one group per program) and channels_last (8 groups per program).
    for dt in ("fp32", "bf16"):
        for layout, ce in (
            ("nchw", dict(BLOCK_HW=512, BLOCK_CC=4, BLOCK_G=1)),
            ("nhwc", dict(BLOCK_HW=64, BLOCK_CC=32, BLOCK_G=8)),
        ):
            fwd = dict(x_ptr=dt, w_ptr="fp32", b_ptr="fp32", y_ptr=dt, mean_ptr="fp32", rstd_ptr="fp32")
            yield f"gn_silu_fwd {dt} {layout}", gn._gn_silu_fwd_kernel, fwd, {"eps": "fp32"}, ce, 4
            bwd = dict(
                x_ptr=dt, w_ptr="fp32", b_ptr="fp32", dy_ptr=dt, mean_ptr="fp32", rstd_ptr="fp32",
                dx_ptr=dt, dw_part_ptr="fp32", db_part_ptr="fp32",
            )  # fmt: skip
            yield f"gn_silu_bwd {dt} {layout}", gn._gn_silu_bwd_kernel, bwd, {}, ce, 4
    scalars = {"low": "fp32", "high": "fp32", "step": "fp32"}
    yield (
        "twohot bf16",
        th._twohot_kernel,
        dict(logits_ptr="bf16", out_ptr="fp32"),
        scalars,
        dict(BLOCK_K=256),
        2,
    )


def main() -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    capability = int(sys.argv[1]) if len(sys.argv) > 1 else 90
    for label, fn, ptrs, scalars, constexprs, num_warps in variants():
        signature = {}
        for name in fn.arg_names:
            if name in constexprs:
                signature[name] = "constexpr"
            elif name in ptrs:
                signature[name] = "*" + ptrs[name]
            else:
                signature[name] = scalars.get(name, "i32")
        row: dict[str, Any] = {"name": label, "ok": True}
        try:
            kernel = triton.compile(
                ASTSource(fn, signature, constexprs=constexprs),
                target=GPUTarget("cuda", capability, 32),
                options={"num_warps": num_warps, "num_stages": 2},
            )
            row["shared_bytes"] = kernel.metadata.shared
        except Exception as err:  # noqa: BLE001 - report every failure, not only the first
            row.update(ok=False, error=f"{type(err).__name__}: {err}"[:2000])
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
