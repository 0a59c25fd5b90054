"""End-to-end epoch benchmark through the real :class:`deltairis.train.trainer.Trainer`.

One steady-state epoch (global epoch >= 2: the policy collects, every component trains, the checkpoint
is written; evaluation excluded, as the reference evaluates every 50 epochs) of a preset, with per-phase
wall time and steps/s, peak GPU memory and the device. Phases are timed by wrapping the trainer's own
``collect`` / ``train_component`` / ``save_checkpoint`` around :meth:`Trainer.run_epoch` (CUDA is
synchronized at every phase boundary), so the loop measured is the one training runs.

Full epoch (``--full``): the preset's own schedule; for ``crafter`` that is 10,000 env steps on 16 envs,
500 tokenizer, 500 world-model and 500 actor-critic steps at the preset batch sizes, and the checkpoint.
``--scale S`` runs ``S`` times the steps of every phase (at least one step or one round of the envs) and
*extrapolates linearly*: full-epoch seconds of a phase = measured seconds / measured steps x full steps,
from rates measured after a warm-up epoch (cuDNN autotuning, CUDA-graph capture, first allocations); the
checkpoint counts once, at the time it blocks the loop.

Baselines measured in the same run:

* ``collection_random``: the same number of env steps with uniformly random actions (env + store only);
* ``checkpoint.sync_seconds``: the same checkpoint set written inline (``common.checkpoint_in_background
  =false``), against ``checkpoint.blocked_seconds``, the time the loop waits with the background writer
  (the write itself, ``checkpoint.write_seconds``, overlaps the next epoch); medians of
  ``--checkpoint-repeats`` saves of each kind at the state after the epoch, alternated
  (``checkpoint.epoch_blocked_seconds``: the epoch's own save).

Before the timed epoch the store gets ``--warmup-steps`` random env steps (the preset's 100,000-step
first epoch is not needed to time steps at the preset shapes).

Script: ``python benchmarks/bench_epoch.py --preset crafter --device cuda --scale 0.1 --json out.json``.
pytest-benchmark: ``python -m pytest benchmarks/bench_epoch.py --benchmark-only`` (tiny preset, few steps).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

COMPONENTS = ("tokenizer", "world_model", "actor_critic")
CHECKPOINT_MEMBERS = ("last.pt", "optimizer.pt", "trainer_state.pt")
PRESETS = {  # preset -> the Hydra groups of its run
    "crafter": ("env=crafter", "params=crafter"),
    "tiny": ("env=toy", "params=tiny"),
    "atari": ("env=atari", "params=atari"),
}
GOAL_SECONDS = 120.0  # issue #14: a full Crafter epoch on one H100/H200


def device_description(device: torch.device) -> str:
    """The machine, as benchmarks/conftest.py describes it (one definition for every benchmark)."""
    path = Path(__file__).with_name("conftest.py")
    spec = importlib.util.spec_from_file_location("_deltairis_bench_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.device_description(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def scaled_steps(full: int, scale: float, unit: int = 1) -> int:
    """``scale`` x ``full`` steps, rounded up to a multiple of ``unit``, at least one unit (0 stays 0)."""
    if full <= 0:
        return 0
    return max(unit, math.ceil(full * scale / unit) * unit)


class PhaseTimer:
    """Wraps the trainer's phase methods on the instance and records each call's wall time."""

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.seconds: dict[str, float] = {}
        self.metrics: dict[str, dict[str, float]] = {}

    def _timed(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        device = self.trainer.device
        _sync(device)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        _sync(device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        if isinstance(out, dict):
            self.metrics[name] = dict(out)
        return out

    @contextlib.contextmanager
    def installed(self) -> Iterator[PhaseTimer]:
        t = self.trainer
        collect, train_component, save_checkpoint = t.collect, t.train_component, t.save_checkpoint
        t.collect = lambda *a, **k: self._timed("collection", collect, *a, **k)
        t.train_component = lambda name, *a, **k: self._timed(name, train_component, name, *a, **k)
        t.save_checkpoint = lambda *a, **k: self._timed("checkpoint", save_checkpoint, *a, **k)
        try:
            yield self
        finally:
            del t.collect, t.train_component, t.save_checkpoint  # back to the class's methods


def _set_steps(cfg: Any, collect: int, components: dict[str, int]) -> None:
    cfg.collection.train.num_steps = collect
    for name, steps in components.items():
        getattr(cfg.training, name).steps_per_epoch = steps


def _phase(steps: int, seconds: float, full_steps: int, unit: str) -> dict[str, Any]:
    rate = steps / seconds if seconds > 0 else 0.0
    return {
        "steps": steps,
        "unit": unit,
        "seconds": seconds,
        "steps_per_s": rate,
        "full_steps": full_steps,
        "full_seconds_est": full_steps / rate if rate > 0 else 0.0,
    }


def measure_epoch(
    preset: str = "tiny",
    device: str = "cpu",
    *,
    scale: float = 0.1,
    full: bool = False,
    collect_steps: int | None = None,
    component_steps: int | None = None,
    warmup_steps: int | None = None,
    warmup_epochs: int = 1,
    overrides: Sequence[str] = (),
    run_dir: Path | None = None,
    seed: int = 0,
    checkpoint_repeats: int = 2,
) -> dict[str, Any]:
    """Time one steady-state epoch of ``preset`` through the Trainer; returns the report (a JSON dict)."""
    from deltairis.train.configuration import compose_config
    from deltairis.train.trainer import Trainer

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    if full:
        scale = 1.0
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    cfg = compose_config(
        [
            *PRESETS[preset],
            f"common.device={device}",
            "wandb.mode=disabled",
            "common.progress_bar=false",
            f"common.seed={seed}",
            "common.do_checkpoint=true",
            "common.checkpoint_in_background=true",
            "evaluation.should=false",
            *overrides,
        ]
    )
    num_envs = int(cfg.collection.train.num_envs)
    full_collect = int(cfg.collection.train.num_steps)
    full_components = {n: int(cfg.training[n].steps_per_epoch) for n in COMPONENTS}
    if collect_steps is None:
        collect = scaled_steps(full_collect, scale, num_envs)
    else:
        collect = math.ceil(collect_steps / num_envs) * num_envs if collect_steps > 0 else 0
    steps = {
        n: (scaled_steps(full, scale) if component_steps is None else int(component_steps))
        for n, full in full_components.items()
    }
    seq_lens = [int(cfg.training[n].seq_len or 0) for n in COMPONENTS]
    if warmup_steps is None:
        warmup_steps = num_envs * max(2 * max(seq_lens), 32)
    # The random experience of "epoch 1"; the components start from global epoch 2 on (visit counts).
    cfg.collection.train.num_steps_first_epoch = max(num_envs, int(warmup_steps))
    for n in COMPONENTS:
        cfg.training[n].start_after_epochs = 0
        cfg.training[n].steps_first_epoch = 0
    cfg.collection.train.stop_after_epochs = 10**6

    owned = run_dir is None
    tmp = tempfile.TemporaryDirectory(prefix="bench_epoch_") if owned else None
    run = Path(tmp.name if tmp is not None else run_dir) / "run"  # type: ignore[arg-type]
    report: dict[str, Any] = {
        "benchmark": "bench_epoch",
        "preset": preset,
        "scale": scale,
        "full": full or (collect == full_collect and steps == full_components),
        "overrides": list(overrides),
    }
    setup_t0 = time.perf_counter()
    t = Trainer(cfg, run)
    try:
        dev = t.device
        report.update(
            device=str(dev),
            device_name=device_description(dev),
            torch=torch.__version__,
            threads=torch.get_num_threads(),
            num_envs=num_envs,
            env=str(cfg.env.name),
            env_backend=type(t.collector.env).__name__,
            batch_sizes={n: int(cfg.training[n].batch_size) for n in COMPONENTS},
            seq_lens={n: int(t.components[n].seq_len) for n in COMPONENTS},
            mixed_precision={n: bool(cfg.training[n].mixed_precision) for n in COMPONENTS},
        )
        # epoch 1: random warm-up data (not timed as a phase)
        t0 = time.perf_counter()
        t.collect(1)
        t.epoch = 1
        report["warmup"] = {
            "random_env_steps": int(t.stores["train"].num_steps),
            "collect_seconds": time.perf_counter() - t0,
            "setup_seconds": t0 - setup_t0,
        }
        epoch = 2
        # warm-up epochs: one step of every phase (compilation, graph capture, autotuning)
        warm_t0 = time.perf_counter()
        for _ in range(warmup_epochs):
            _set_steps(t.cfg, min(collect, num_envs), {n: min(s, 1) for n, s in steps.items()})
            t.run_epoch(epoch)
            t.wait_for_checkpoint()
            epoch += 1
        _sync(dev)
        report["warmup"]["epochs"] = warmup_epochs
        report["warmup"]["epochs_seconds"] = time.perf_counter() - warm_t0

        # the timed epoch
        _set_steps(t.cfg, collect, steps)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        timer = PhaseTimer(t)
        with timer.installed():
            _sync(dev)
            t0 = time.perf_counter()
            metrics = t.run_epoch(epoch)
            _sync(dev)
            epoch_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        t.wait_for_checkpoint()  # the rest of the background write (it would overlap the next epoch)
        wait_seconds = time.perf_counter() - t0
        write_seconds = t._checkpoint_writer.last_write_seconds
        peak = None
        if dev.type == "cuda":
            peak = {
                "allocated_gib": torch.cuda.max_memory_allocated(dev) / 2**30,
                "reserved_gib": torch.cuda.max_memory_reserved(dev) / 2**30,
            }

        phases: dict[str, Any] = {
            "collection": _phase(collect, timer.seconds.get("collection", 0.0), full_collect, "env steps")
        }
        for n in COMPONENTS:
            phases[n] = _phase(steps[n], timer.seconds.get(n, 0.0), full_components[n], "gradient steps")
        ckpt_bytes = sum((t.ckpt_dir / m).stat().st_size for m in CHECKPOINT_MEMBERS)

        # the same set, at the same state: with the background writer (blocked, then its write) and
        # written inline (the baseline), alternated
        runs: dict[str, list[float]] = {"blocked": [], "write": [], "sync": []}
        for _ in range(max(1, checkpoint_repeats)):
            for background in (True, False):
                t.cfg.common.checkpoint_in_background = background
                _sync(dev)
                t0 = time.perf_counter()
                t.save_checkpoint()
                seconds = time.perf_counter() - t0
                t.wait_for_checkpoint()
                if background:
                    runs["blocked"].append(seconds)
                    runs["write"].append(t._checkpoint_writer.last_write_seconds)
                else:
                    runs["sync"].append(seconds)
        t.cfg.common.checkpoint_in_background = True
        blocked = statistics.median(runs["blocked"])
        phases["checkpoint"] = {
            "blocked_seconds": blocked,
            "write_seconds": statistics.median(runs["write"]),
            "sync_seconds": statistics.median(runs["sync"]),
            "repeats": len(runs["sync"]),
            "epoch_blocked_seconds": timer.seconds.get("checkpoint", 0.0),
            "epoch_write_seconds": write_seconds,
            "wait_after_epoch_seconds": wait_seconds,
            "megabytes": ckpt_bytes / 2**20,
            "full_seconds_est": blocked,
        }

        # baseline: the same number of env steps with uniformly random actions
        random_steps = max(collect, num_envs)
        c = t.cfg.collection.train
        t0 = time.perf_counter()
        stats = t.collector.collect(
            random_steps, None, dev, epsilon=c.epsilon, temperature=c.temperature, seed=seed + 1
        )
        random_seconds = time.perf_counter() - t0
        report["collection_random"] = {
            "steps": stats.num_steps,
            "seconds": random_seconds,
            "steps_per_s": stats.num_steps / random_seconds if random_seconds > 0 else 0.0,
        }
        full_est = sum(p["full_seconds_est"] for p in phases.values())
        report.update(
            phases=phases,
            epoch={
                "seconds": epoch_seconds,
                "phases_seconds": sum(timer.seconds.values()),
                "full_seconds_est": full_est,
                "goal_seconds": GOAL_SECONDS if preset == "crafter" else None,
            },
            peak_memory=peak,
            trainer_metrics={
                k: float(v) for k, v in metrics.items() if k.endswith("steps_per_s") or k == "epoch_seconds"
            },
            extrapolation=(
                "full_seconds_est of a phase = seconds / steps x full_steps (rates after "
                f"{warmup_epochs} warm-up epoch(s)); the checkpoint counts once at blocked_seconds; "
                f"epoch.full_seconds_est is their sum (full epoch: {full_collect} env steps on {num_envs} "
                f"envs, {'/'.join(str(full_components[n]) for n in COMPONENTS)} "
                "tokenizer/world-model/actor-critic steps, the checkpoint)"
            ),
        )
    finally:
        t.close()
        if tmp is not None:
            tmp.cleanup()
    return report


def format_report(r: dict[str, Any]) -> str:
    lines = [
        (
            f"bench_epoch: preset {r['preset']} on {r['device']} ({r['device_name']}), scale {r['scale']:g}, "
            f"{r['num_envs']} envs ({r['env_backend']}), torch {r['torch']}, {r['threads']} threads"
        )
    ]
    for name, p in r["phases"].items():
        if name == "checkpoint":
            lines.append(
                f"  {'checkpoint':<13} blocked {p['blocked_seconds']:.3f} s (background write "
                f"{p['write_seconds']:.3f} s) vs inline {p['sync_seconds']:.3f} s, {p['megabytes']:.1f} MiB "
                f"(medians of {p['repeats']})"
            )
        else:
            lines.append(
                f"  {name:<13} {p['steps']:>6} {p['unit']:<14} {p['seconds']:8.3f} s "
                f"{p['steps_per_s']:9.2f}/s  -> full {p['full_steps']}: {p['full_seconds_est']:8.1f} s"
            )
    cr = r["collection_random"]
    lines.append(f"  random-policy collection baseline: {cr['steps_per_s']:.1f} env steps/s")
    e = r["epoch"]
    lines.append(
        f"  epoch (scaled) {e['seconds']:.2f} s; full epoch estimate {e['full_seconds_est']:.1f} s"
        + (f" (goal {e['goal_seconds']:.0f} s)" if e["goal_seconds"] else "")
    )
    if r.get("peak_memory"):
        lines.append(
            f"  peak GPU memory {r['peak_memory']['allocated_gib']:.2f} GiB allocated, "
            f"{r['peak_memory']['reserved_gib']:.2f} GiB reserved"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--scale", type=float, default=0.1, help="fraction of the full epoch's steps")
    parser.add_argument("--full", action="store_true", help="the full epoch (scale 1)")
    parser.add_argument("--collect-steps", type=int, default=None, help="env steps (overrides --scale)")
    parser.add_argument(
        "--component-steps", type=int, default=None, help="gradient steps per component (overrides --scale)"
    )
    parser.add_argument("--warmup-steps", type=int, default=None, help="random env steps put in the store")
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--checkpoint-repeats", type=int, default=2, help="saves of each kind after the epoch"
    )
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="folder for the run (default: a temporary one, removed)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. training.tokenizer.batch_size=8")
    args = parser.parse_args(argv)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    report = measure_epoch(
        args.preset,
        device,
        scale=args.scale,
        full=args.full,
        collect_steps=args.collect_steps,
        component_steps=args.component_steps,
        warmup_steps=args.warmup_steps,
        warmup_epochs=args.warmup_epochs,
        overrides=args.overrides,
        seed=args.seed,
        checkpoint_repeats=args.checkpoint_repeats,
        run_dir=args.run_dir,
    )
    print(format_report(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return 0


# -- pytest-benchmark (tiny preset, a few steps; CPU or CUDA, see bench_device) -------------------------
def test_epoch(benchmark: Any, tmp_path: Path, bench_device: torch.device) -> None:
    benchmark.group = "epoch"
    out: dict[str, Any] = {}

    def run() -> None:
        out.update(
            measure_epoch("tiny", str(bench_device), collect_steps=40, component_steps=3, run_dir=tmp_path)
        )

    benchmark.pedantic(run, rounds=1, iterations=1)
    for name, p in out["phases"].items():
        if name == "checkpoint":
            for k in ("blocked_seconds", "write_seconds", "sync_seconds"):
                benchmark.extra_info[f"checkpoint_{k}"] = round(p[k], 4)
        else:
            benchmark.extra_info[f"{name}_steps_per_s"] = round(p["steps_per_s"], 3)
    benchmark.extra_info["collection_random_steps_per_s"] = round(out["collection_random"]["steps_per_s"], 1)
    benchmark.extra_info["epoch_seconds"] = round(out["epoch"]["seconds"], 3)
    benchmark.extra_info["full_epoch_seconds_est"] = round(out["epoch"]["full_seconds_est"], 2)


if __name__ == "__main__":
    sys.exit(main())
