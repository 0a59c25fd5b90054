"""Backend selection: DELTAIRIS_BACKEND, per-call backend=, interpreter handling, clear errors."""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch

from deltairis import ops
from deltairis.ops import _dispatch

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None, reason="Triton is not installed"
)


@pytest.fixture
def spy_kernel(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Replace every Triton kernel by a recorder that returns the reference's result."""
    calls: list[tuple[str, str]] = []
    refs: dict[str, Callable[..., torch.Tensor]] = {
        "attention_triton": ops.attention_ref,
        "attention_kvcache_triton": ops.attention_kvcache_ref,
        "sample_categorical_triton": ops.sample_categorical_ref,
        "twohot_expectation_triton": ops.twohot_expectation_ref,
    }

    def fake_load(module: str, name: str) -> Callable[..., torch.Tensor]:
        def kernel(*args: object, **kwargs: object) -> torch.Tensor:
            calls.append((module, name))
            return refs[name](*args, **kwargs)

        return kernel

    monkeypatch.setattr(_dispatch, "load_kernel", fake_load)
    monkeypatch.setattr(_dispatch, "triton_available", lambda: True)
    monkeypatch.setattr(_dispatch, "triton_interpreted", lambda: True)
    monkeypatch.delenv("DELTAIRIS_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return calls


def run_all_ops(backend: str | None) -> None:
    q = torch.randn(1, 2, 5, 8)
    ops.attention(q, q, q, backend=backend)
    cache = torch.zeros(1, 2, 8, 8)
    ops.attention_kvcache(q, q, q, cache, cache.clone(), torch.zeros(1, dtype=torch.int32), backend=backend)
    ops.sample_categorical(torch.randn(3, 4), seed=0, offset=0, backend=backend)
    ops.twohot_expectation(torch.randn(3, 9), backend=backend)


def test_auto_on_cpu_uses_torch_even_with_interpreter(
    spy_kernel: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    run_all_ops(None)
    run_all_ops("auto")
    assert spy_kernel == []


def test_env_var_selects_triton_under_interpreter(spy_kernel: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("DELTAIRIS_BACKEND", "triton")
    run_all_ops(None)
    assert [name for _, name in spy_kernel] == [
        "attention_triton",
        "attention_kvcache_triton",
        "sample_categorical_triton",
        "twohot_expectation_triton",
    ]


def test_per_call_backend_overrides_env(spy_kernel: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setenv("DELTAIRIS_BACKEND", "triton")
    run_all_ops("torch")
    assert spy_kernel == []
    monkeypatch.setenv("DELTAIRIS_BACKEND", " Torch ")  # case and spaces are tolerated
    run_all_ops(None)
    assert spy_kernel == []
    run_all_ops("triton")
    assert len(spy_kernel) == 4


def test_unknown_backend_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    q = torch.randn(1, 1, 2, 4)
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        ops.attention(q, q, q, backend="cuda")
    monkeypatch.setenv("DELTAIRIS_BACKEND", "fast")
    with pytest.raises(ValueError, match="DELTAIRIS_BACKEND"):
        ops.twohot_expectation(torch.randn(2, 5))


def test_explicit_triton_on_cpu_without_interpreter_raises(spy_kernel: list) -> None:
    q = torch.randn(1, 1, 3, 8)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        ops.attention(q, q, q, backend="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        ops.sample_categorical(torch.randn(2, 3), seed=0, offset=0, backend="triton")
    assert spy_kernel == []


def test_explicit_triton_without_triton_installed_raises(
    spy_kernel: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_dispatch, "triton_available", lambda: False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="not installed"):
        ops.twohot_expectation(torch.randn(2, 5), backend="triton")
    ops.twohot_expectation(torch.randn(2, 5), backend="auto")  # auto falls back silently
    assert spy_kernel == []


def test_unsupported_inputs(spy_kernel: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    wide = torch.randn(1, 1, 3, 160)  # head dim > 128
    with pytest.raises(RuntimeError, match="head dim 160"):
        ops.attention(wide, wide, wide, backend="triton")
    with pytest.raises(RuntimeError, match="dtype"):
        ops.twohot_expectation(torch.randn(2, 5, dtype=torch.float64), backend="triton")
    q = torch.randn(1, 1, 1, 8, requires_grad=True)
    cache = torch.zeros(1, 1, 4, 8)
    with pytest.raises(RuntimeError, match="forward-only"):
        ops.attention_kvcache(
            q, q, q, cache, cache.clone(), torch.zeros(1, dtype=torch.int32), backend="triton"
        )
    assert spy_kernel == []


def test_import_does_not_import_triton() -> None:
    code = "import sys, deltairis, deltairis.ops; assert 'triton' not in sys.modules, 'triton imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr


@needs_triton
def test_kernel_module_is_reimported_in_tritons_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel module decorated in the other mode is re-imported in the mode Triton runs in."""
    mode = _dispatch.triton_interpreted()
    fn = _dispatch.load_kernel("twohot", "twohot_expectation_triton")
    mod = importlib.import_module("deltairis.kernels.twohot")
    assert fn is mod.twohot_expectation_triton and mod.INTERPRETED is mode
    monkeypatch.setattr(mod, "INTERPRETED", not mode)
    monkeypatch.setenv("TRITON_INTERPRET", "0" if mode else "1")  # the wrong mode in the environment
    fn = _dispatch.load_kernel("twohot", "twohot_expectation_triton")
    mod = importlib.import_module("deltairis.kernels.twohot")
    assert mod.INTERPRETED is mode and fn is mod.twohot_expectation_triton
    assert _dispatch.load_kernel("no_such_module", "f") is None


@needs_triton
@pytest.mark.usefixtures("interpret")
def test_reimported_kernel_runs_interpreter() -> None:
    mod = importlib.import_module("deltairis.kernels.twohot")
    importlib.reload(mod)  # decorated again under TRITON_INTERPRET=1
    logits = torch.randn(3, 11)
    torch.testing.assert_close(
        ops.twohot_expectation(logits, backend="triton"), ops.twohot_expectation_ref(logits)
    )


def test_triton_imported_compiled_cannot_run_cpu_tensors(
    spy_kernel: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_dispatch, "triton_interpreted", lambda: False)
    with pytest.raises(RuntimeError, match="imported before TRITON_INTERPRET=1"):
        ops.twohot_expectation(torch.randn(2, 5), backend="triton")
    assert spy_kernel == []


def test_a_switched_off_kernel_runs_its_reference_under_every_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    from deltairis.ops import _dispatch

    monkeypatch.setattr(_dispatch, "_SWITCHED_OFF", set())
    calls: list[str] = []
    monkeypatch.setattr(_dispatch, "triton_available", lambda: True)
    monkeypatch.setattr(_dispatch, "interpreter_enabled", lambda: True)
    monkeypatch.setattr(_dispatch, "triton_interpreted", lambda: True)
    monkeypatch.setattr(_dispatch, "load_kernel", lambda module, name: lambda *a: calls.append(name))
    x = torch.zeros(2)

    def pick(op: str, backend: str | None) -> bool:
        return _dispatch.choose(op, (x,), backend, lambda: None, ("m", f"{op}_triton")) is not None

    assert pick("a", "triton") and pick("b", "triton")
    undo = ops.switch_off_kernel("a")
    assert ops.kernels_switched_off() == {"a"}
    assert not pick("a", "triton") and not pick("a", None) and not pick("a", "auto")  # the reference
    assert pick("b", "triton")  # the other kernels stay on
    assert ops.switch_off_kernel("a")() is None and ops.kernels_switched_off() == {"a"}  # already off: no-op
    undo()
    assert ops.kernels_switched_off() == frozenset() and pick("a", "triton")
