"""``deltairis-doctor``: is this machine ready to train? Versions, devices, fast paths, timings, memory.

Reports, for a model preset (``--preset crafter|atari|tiny``) on a device (``--device``, default: CUDA when
available):

* versions: Python, torch, CUDA/cuDNN, Triton, ale-py, crafter, gymnasium, deltairis and the compiled
  extension ``deltairis._core`` with its build type (``build_info()``: compiler, C++ standard, build type);
* devices and their memory;
* the preflight of every GPU fast path (:mod:`deltairis.train.preflight`): ``ok``, ``failed: ...`` or
  ``not applicable`` (every path on CPU);
* one timed training step (loss, backward; no optimizer step) per component with the fast paths on and off;
* the memory plan (:func:`deltairis.train.memory.plan_for_config`) with the suggested ``grad_acc_steps``;
* native Crafter steps per second for 16 envs (:func:`deltairis.envs.make_vector_env`).

``--quick`` times the steps at small shapes (batches of 1, short segments, a one-step imagination) and runs
fewer Crafter steps (the preflight keeps the preset's shapes: on CPU it costs nothing);
``--json`` prints one JSON object (keys ``versions``, ``devices``, ``fast_paths``, ``memory``,
``timings``, ``crafter``, ``ok``) instead of the table. Exit status: 0 when every check passes, 1 when
one fails (a fast path failed, a timed step or the Crafter run raised, the native extension is missing,
a component does not fit the device's memory), 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from deltairis.agent import Agent
from deltairis.cli.common import default_config
from deltairis.config.models import DEFAULT_NUM_ACTIONS
from deltairis.config.schema import TrainerConfig
from deltairis.models.convnet import set_frame_cnn_options
from deltairis.rl.losses import ActorCriticLoss, actor_critic_loss
from deltairis.rl.world_model_env import WorldModelEnv
from deltairis.runtime import resolve_device
from deltairis.train.configuration import agent_config_from, typed_config
from deltairis.train.preflight import (
    FastPathResult,
    apply_fallbacks,
    fast_paths_active,
    run_preflight,
    synthetic_batch,
)

logger = logging.getLogger("deltairis.cli")

PRESETS = ("crafter", "atari", "tiny")
COMPONENTS = ("tokenizer", "world_model", "actor_critic")
#: The Atari game whose config the atari preset's checks use (the model does not depend on the game).
ATARI_ENV_ID = "BreakoutNoFrameskip-v4"
CRAFTER_ENVS = 16


# -- versions and devices ---------------------------------------------------------------------------------
def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    """Versions of Python, torch, CUDA/cuDNN, Triton, the environments and the compiled extension."""
    from deltairis import _native

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none (CPU build of torch)",
        "cudnn": str(cudnn) if cudnn else "not available",
        "triton": _dist_version("triton"),
        "ale-py": _dist_version("ale-py"),
        "crafter": _dist_version("crafter"),
        "gymnasium": _dist_version("gymnasium"),
        "deltairis": _dist_version("delta-iris"),
    }
    core = _native.core
    if core is None:
        out["deltairis._core"] = f"missing ({_native.import_error})"
    else:
        info = getattr(core, "build_info", None)
        out["deltairis._core"] = (
            f"built ({info()})" if callable(info) else "built (no build_info: build type unknown)"
        )
    return out


def devices() -> list[dict[str, Any]]:
    """The CPU and every CUDA device, with their memory (bytes)."""
    out: list[dict[str, Any]] = []
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        ram = free = None
    out.append(
        {
            "name": "cpu",
            "description": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "total_bytes": ram,
            "free_bytes": free,
        }
    )
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free_b, total_b = torch.cuda.mem_get_info(i)
            out.append(
                {
                    "name": f"cuda:{i}",
                    "description": f"{props.name}, compute capability {props.major}.{props.minor}",
                    "total_bytes": int(total_b),
                    "free_bytes": int(free_b),
                }
            )
    return out


# -- config and agent -------------------------------------------------------------------------------------
def preset_config(preset: str) -> TrainerConfig:
    """The default training config of a preset (the atari one for :data:`ATARI_ENV_ID`)."""
    return typed_config(default_config(preset, ATARI_ENV_ID if preset == "atari" else None))


def small_config(cfg: TrainerConfig) -> TrainerConfig:
    """``cfg`` with batches of 1 and segments of 2 steps (``--quick`` timings)."""
    cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training))
    for name in COMPONENTS:
        c = dataclasses.replace(getattr(cfg.training, name), batch_size=1)
        if c.seq_len is not None:
            c.seq_len = 2
        setattr(cfg.training, name, c)
    return cfg


def build_agent(cfg: TrainerConfig, device: torch.device) -> Agent:
    torch.manual_seed(0)
    return Agent(agent_config_from(cfg, DEFAULT_NUM_ACTIONS[cfg.agent.preset])).to(device)


# -- timings ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _fast_paths(agent: Agent, on: bool) -> Iterator[None]:
    """The fast paths as configured (``on``) or all off: reference ops, plain frame CNNs."""
    old = os.environ.get("DELTAIRIS_BACKEND")
    saved = [
        (m, a, getattr(m, a))
        for m in agent.modules()
        for a in ("channels_last", "fused_norm")
        if hasattr(type(m), a) and isinstance(getattr(m, a), bool)
    ]
    if not on:
        os.environ["DELTAIRIS_BACKEND"] = "torch"
        set_frame_cnn_options(agent, channels_last=False, fused_norm=False)
    try:
        yield
    finally:
        for m, a, v in saved:
            setattr(m, a, v)
        if old is None:
            os.environ.pop("DELTAIRIS_BACKEND", None)
        else:
            os.environ["DELTAIRIS_BACKEND"] = old


def _step_fn(
    agent: Agent, cfg: TrainerConfig, name: str, device: torch.device, on: bool
) -> Callable[[], None]:
    """One loss + backward of component ``name`` on a synthetic batch of its config's shape."""
    c = getattr(cfg.training, name)
    t = c.seq_len if c.seq_len is not None else agent.config.actor_critic.burn_in + 1
    batch = synthetic_batch(c.batch_size, t, agent.config.num_actions, device, seed=7)
    autocast = on and c.mixed_precision and device.type == "cuda"
    if name == "tokenizer":
        loss_fn: Callable[[], torch.Tensor] = lambda: agent.tokenizer.compute_loss(batch).loss
    elif name == "world_model":
        loss_fn = lambda: agent.world_model.compute_loss(batch, agent.tokenizer).loss
    elif on:
        ac_loss = ActorCriticLoss(agent.actor_critic, agent.tokenizer, agent.world_model)
        loss_fn = lambda: ac_loss(batch, 1).loss
    else:
        env = WorldModelEnv(agent.tokenizer, agent.world_model, cuda_graphs=False, bf16=False)
        loss_fn = lambda: actor_critic_loss(agent.actor_critic, batch, env, 1).loss

    def step() -> None:
        agent.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn()
        loss.backward()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timings(agent: Agent, cfg: TrainerConfig, device: torch.device, warmup: int) -> list[dict[str, Any]]:
    """Seconds of one timed step per component, fast paths on and off (after ``warmup`` untimed steps:
    kernel compilation, graph capture and cuDNN's choice happen there). On a device where no fast path
    is used (CPU) both are one and the same path, timed once (``same_path``)."""
    out = []
    modes = [(m, m.training) for m in agent.modules()]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            same = not fast_paths_active(device)  # e.g. CPU: the fast paths are never used, one path to time
            for name in COMPONENTS:
                row: dict[str, Any] = {"component": name, "same_path": same}
                for on in (True,) if same else (True, False):
                    key = "fast_s" if on else "reference_s"
                    try:
                        with _fast_paths(agent, on):
                            agent.eval()
                            getattr(agent, name).train()
                            step = _step_fn(agent, cfg, name, device, on)
                            for _ in range(warmup):
                                step()
                            _sync(device)
                            t0 = time.perf_counter()
                            step()
                            _sync(device)
                            row[key] = time.perf_counter() - t0
                    except Exception as exc:  # noqa: BLE001 - reported as a failed check
                        row[key] = None
                        row["error"] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
                if same:
                    row["reference_s"] = row["fast_s"]
                row["ok"] = "error" not in row
                out.append(row)
        finally:
            for m, training in modes:
                m.training = training
            agent.zero_grad(set_to_none=True)
    return out


# -- memory -----------------------------------------------------------------------------------------------
def memory(cfg: TrainerConfig, device: torch.device) -> dict[str, Any]:
    """The memory plan per component (:func:`deltairis.train.memory.plan_for_config`, as a run makes it
    before its first collection): ``estimate_bytes``, ``available_bytes``, ``fits``, ``grad_acc_steps``
    and ``batch_size`` (the split that fits, None when not even a batch of 1 does), or
    ``{"status": "unavailable", "reason": ...}`` when the plan cannot be made."""
    from deltairis.train.memory import plan_for_config

    try:
        plan = plan_for_config(cfg, DEFAULT_NUM_ACTIONS[cfg.agent.preset], device)
    except Exception as exc:  # noqa: BLE001 - a plan that cannot be made is reported, not a crash
        return {"status": "unavailable", "reason": f"{type(exc).__name__}: {exc}"}
    return {
        name: {
            "estimate_bytes": p.estimate_bytes,
            "available_bytes": p.available_bytes,
            "fits": p.fits,
            "grad_acc_steps": p.grad_acc_steps,
            "batch_size": p.micro_batch_size,
        }
        for name, p in plan.components.items()
    }


# -- Crafter ----------------------------------------------------------------------------------------------
def crafter_speed(steps: int, num_envs: int = CRAFTER_ENVS) -> dict[str, Any]:
    """Native Crafter steps per second (all envs together) over ``steps`` vector steps of random actions."""
    import numpy as np

    from deltairis.envs import make_vector_env

    try:
        env = make_vector_env("crafter", num_envs, seed=0, backend="native")
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "num_envs": num_envs, "error": f"{type(exc).__name__}: {exc}"}
    try:
        env.reset()
        rng = np.random.default_rng(0)
        actions = rng.integers(0, env.num_actions, size=(steps, num_envs))
        t0 = time.perf_counter()
        for a in actions:
            env.step(a)
        seconds = time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001
        return {"ok": False, "num_envs": num_envs, "error": f"{type(exc).__name__}: {exc}"}
    finally:
        env.close()
    return {
        "ok": True,
        "num_envs": num_envs,
        "steps": steps * num_envs,
        "steps_per_s": steps * num_envs / seconds,
    }


# -- report -----------------------------------------------------------------------------------------------
def collect(preset: str, device_spec: str, quick: bool) -> dict[str, Any]:
    """Every section of the report, and ``ok`` (whether every check passed)."""
    device = resolve_device(device_spec, "--device")
    report: dict[str, Any] = {"preset": preset, "device": str(device), "quick": quick}
    report["versions"] = versions()
    report["devices"] = devices()
    cfg = preset_config(preset)
    agent = build_agent(cfg, device)
    results: list[FastPathResult] = run_preflight(agent, cfg, device)
    report["fast_paths"] = [r.as_dict() for r in results]
    apply_fallbacks(results, agent, cfg)  # the timings' "fast" runs what a run would
    report["memory"] = memory(cfg, device)
    timing_cfg, timing_agent = cfg, agent
    if quick:  # batches of 1, a one-step imagination after one burn-in frame
        timing_cfg = small_config(cfg)
        acfg = agent.config
        small_ac = dataclasses.replace(acfg.actor_critic, burn_in=1, horizon=1)
        torch.manual_seed(0)
        timing_agent = Agent(dataclasses.replace(acfg, actor_critic=small_ac)).to(device)
        apply_fallbacks(results, timing_agent, timing_cfg)
    report["timings"] = timings(
        timing_agent, timing_cfg, device, warmup=0 if quick and device.type == "cpu" else 1
    )
    report["crafter"] = crafter_speed(50 if quick else 500)
    report["ok"] = not failures(report)
    return report


def failures(report: dict[str, Any]) -> list[str]:
    """The failed checks of a report, in words."""
    out = [
        f"fast path {r['name']}: {r['status']}"
        for r in report["fast_paths"]
        if r["status"].startswith("failed")
    ]
    if report["versions"]["deltairis._core"].startswith("missing"):
        out.append(f"deltairis._core {report['versions']['deltairis._core']}")
    mem = report["memory"]
    if mem.get("status") != "unavailable":
        out += [f"memory: {name} does not fit" for name, m in mem.items() if not m.get("fits", True)]
    out += [f"timing of {t['component']}: {t['error']}" for t in report["timings"] if not t["ok"]]
    if not report["crafter"]["ok"]:
        out.append(f"native Crafter: {report['crafter']['error']}")
    return out


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  " + "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()
    return [title, line(header), "  " + "  ".join("-" * w for w in widths), *(line(r) for r in rows), ""]


def render(report: dict[str, Any]) -> str:
    """The report as readable tables."""
    out = [
        f"deltairis-doctor: preset {report['preset']}, device {report['device']}"
        + (" (quick)" if report["quick"] else ""),
        "",
    ]
    out += _table("Versions", ("package", "version"), list(report["versions"].items()))
    out += _table(
        "Devices",
        ("device", "description", "memory", "free"),
        [
            (d["name"], d["description"], _bytes(d["total_bytes"]), _bytes(d["free_bytes"]))
            for d in report["devices"]
        ],
    )
    out += _table(
        "Fast paths (preflight)",
        ("path", "status", "detail"),
        [(r["name"], r["status"], r["detail"]) for r in report["fast_paths"]],
    )
    mem = report["memory"]
    if mem.get("status") == "unavailable":
        out += ["Memory plan", f"  unavailable: {mem['reason']}", ""]
    else:
        out += _table(
            "Memory plan",
            ("component", "estimate", "available", "fits", "grad_acc_steps", "batch_size"),
            [
                (
                    n,
                    _bytes(m["estimate_bytes"]),
                    _bytes(m["available_bytes"]),
                    m["fits"],
                    m["grad_acc_steps"],
                    m["batch_size"],
                )
                for n, m in mem.items()
            ],
        )
    fmt = lambda s: "error" if s is None else f"{s * 1000:.1f} ms"
    out += _table(
        "One training step (loss + backward)" + (", small shapes" if report["quick"] else ""),
        ("component", "fast paths on", "off", "speed-up"),
        [
            (
                t["component"],
                fmt(t["fast_s"]),
                fmt(t["reference_s"]),
                "same path"
                if t.get("same_path")
                else f"{t['reference_s'] / t['fast_s']:.2f}x"
                if t["fast_s"] and t["reference_s"]
                else "-",
            )
            for t in report["timings"]
        ],
    )
    c = report["crafter"]
    speed = f"{c['steps_per_s']:.0f} steps/s ({c['steps']} steps)" if c["ok"] else f"failed: {c['error']}"
    out += [f"Native Crafter, {c['num_envs']} envs: {speed}", ""]
    bad = failures(report)
    out.append("All checks passed." if not bad else "FAILED:\n" + "\n".join(f"  - {b}" for b in bad))
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="deltairis-doctor",
        description="Check this machine for training: versions, devices, GPU fast paths, timings, memory, "
        "Crafter speed.",
    )
    parser.add_argument(
        "--preset", choices=PRESETS, default="crafter", help="model preset (default: crafter)"
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--quick", action="store_true", help="timings at small shapes, a short Crafter run")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from deltairis.errors import ConfigError

    try:
        report = collect(args.preset, args.device, args.quick)
    except ConfigError as exc:
        print(f"deltairis-doctor: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(render(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
