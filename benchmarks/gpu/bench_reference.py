"""Time one optimizer step of each component against the reference implementation, side by side.

    python benchmarks/gpu/bench_reference.py --reference third_party/delta-iris --json bench_reference.json

Builds, in one process, the reference's tokenizer, world model and actor-critic from its own Crafter
config (``config/params/crafter.yaml`` of an extracted copy of vmicheli/delta-iris, instantiated with
Hydra as its trainer does) and ours (:func:`deltairis.train.configuration.agent_config_from` and
:func:`deltairis.train.components.build_components` of the ``env=crafter params=crafter`` config), checks
that the two presets train at the same shapes (batch sizes, sequence lengths, burn-in, horizon), and
times one optimizer step of each component on the same random batch, alternating the two
implementations (the order flips every repetition), after a warm-up: the median over the repetitions,
host clock between device synchronisations. Each side steps as its own trainer does: bf16 autocast for
the tokenizer and the world model, none for the actor-critic (on CUDA only; a CPU run uses fp32
throughout), the gradient clip at 10, the optimizer step; ours through
:func:`deltairis.train.step.gradient_step` (with its non-finite guard), the reference through
``compute_loss`` / ``loss_total.backward()`` / ``clip_grad_norm_`` / ``optimizer.step()``. Data loading
is not timed on either side (``benchmarks/bench_replay.py`` compares the samplers).

The reference is never part of this package: extract it into an ignored folder first,

    git clone https://github.com/vmicheli/delta-iris third_party/delta-iris

and nothing of it is imported before :func:`main` runs. Modules the reference imports at module level
but never calls on these paths (``cv2``, ``gym``, ``torchvision``, ``wandb``) are replaced by empty
stand-ins when they are not installed; the JSON lists which.

``--device cpu --batch-size 2 --warmup 0 --repeats 1`` is the CPU smoke run (its figures compare
nothing: CPU, tiny batch, fp32).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REFERENCE = ROOT / "third_party" / "delta-iris"
COMPONENTS = ("tokenizer", "world_model", "actor_critic")
MAX_GRAD_NORM = 10.0  # both presets' max_grad_norm (checked below)
HOW_TO_GET = (
    "git clone https://github.com/vmicheli/delta-iris {dir}   (or, from a bare mirror: "
    "mkdir -p {dir} && git -C <mirror> archive HEAD | tar -x -C {dir})"
)


class ReferenceMissing(SystemExit):
    pass


def check_reference(ref: Path) -> Path:
    """``ref/config/params/crafter.yaml`` and ``ref/src/models`` must exist; else a clear error."""
    cfg = ref / "config" / "params" / "crafter.yaml"
    if not (ref / "src" / "models").is_dir() or not cfg.is_file():
        raise ReferenceMissing(
            f"bench_reference: no reference implementation at {ref} (expected {ref}/src/models and {cfg}).\n"
            "Get it into that ignored folder with:\n  " + HOW_TO_GET.format(dir=ref)
        )
    return cfg


def _stub_missing_modules() -> list[str]:
    """Empty stand-ins for modules the reference imports at module level but these paths never call."""
    stubbed = []

    def missing(name: str) -> bool:
        return name not in sys.modules and importlib.util.find_spec(name) is None

    if missing("cv2"):
        sys.modules["cv2"] = types.ModuleType("cv2")
        stubbed.append("cv2")
    if missing("wandb"):
        sys.modules["wandb"] = types.ModuleType("wandb")
        stubbed.append("wandb")
    if missing("gym"):
        gym = types.ModuleType("gym")
        for cls in ("Env", "Wrapper", "ObservationWrapper", "RewardWrapper", "ActionWrapper"):
            setattr(gym, cls, type(cls, (), {}))
        gym.spaces = types.ModuleType("gym.spaces")
        gym.wrappers = types.ModuleType("gym.wrappers")

        def _no_gym(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("gym is a stand-in in bench_reference.py (no environment is made here)")

        gym.make = _no_gym
        sys.modules.update({"gym": gym, "gym.spaces": gym.spaces, "gym.wrappers": gym.wrappers})
        stubbed.append("gym")
    if missing("torchvision"):
        tv = types.ModuleType("torchvision")
        tv.transforms = types.ModuleType("torchvision.transforms")
        tv.transforms.functional = types.ModuleType("torchvision.transforms.functional")
        sys.modules.update(
            {
                "torchvision": tv,
                "torchvision.transforms": tv.transforms,
                "torchvision.transforms.functional": tv.transforms.functional,
            }
        )
        stubbed.append("torchvision")
    return stubbed


def build_reference(ref: Path, num_actions: int, device: torch.device) -> dict[str, Any]:
    """The reference's three components, optimizers and training shapes, from its Crafter config."""
    cfg_path = check_reference(ref)
    stubbed = _stub_missing_modules()
    src = str((ref / "src").resolve())
    if src not in sys.path:
        sys.path.insert(0, src)
    import models as ref_models  # the reference's flat imports (src/ on sys.path)
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if not str(Path(ref_models.__file__).resolve()).startswith(src):
        raise SystemExit(
            f"bench_reference: 'models' resolved to {ref_models.__file__}, not the reference's {src}"
        )
    from data import Batch as RefBatch
    from utils import configure_optimizer as ref_configure_optimizer

    if not OmegaConf.has_resolver("eval"):
        OmegaConf.register_new_resolver("eval", eval)  # the reference's main.py does the same
    root = OmegaConf.create({"params": OmegaConf.load(cfg_path)})
    OmegaConf.resolve(root)
    p = root.params
    p.tokenizer.num_actions = p.world_model.num_actions = p.actor_critic.model.num_actions = num_actions
    tokenizer = ref_models.Tokenizer(instantiate(p.tokenizer)).to(device)
    world_model = ref_models.WorldModel(instantiate(p.world_model)).to(device)
    actor_critic = ref_models.ActorCritic(instantiate(p.actor_critic)).to(device)
    t = p.training
    lr = float(t.learning_rate)
    modules = {"tokenizer": tokenizer, "world_model": world_model, "actor_critic": actor_critic}
    optimizers = {
        "tokenizer": ref_configure_optimizer(tokenizer, lr, float(t.tokenizer.weight_decay)),
        "world_model": ref_configure_optimizer(world_model, lr, float(t.world_model.weight_decay)),
        "actor_critic": torch.optim.Adam(actor_critic.parameters(), lr=lr),
    }
    return {
        "modules": modules,
        "optimizers": optimizers,
        "loss_kwargs": {
            "tokenizer": {},
            "world_model": {"tokenizer": tokenizer},
            "actor_critic": {"tokenizer": tokenizer, "world_model": world_model},
        },
        "Batch": RefBatch,
        "shapes": {n: (int(t[n].batch_num_samples), int(t[n].sequence_length)) for n in COMPONENTS},
        "max_grad_norm": {n: float(t[n].max_grad_norm) for n in COMPONENTS},
        "burn_in": int(p.actor_critic.burn_in_length),
        "horizon": int(p.actor_critic.imagination_horizon),
        "stubbed_modules": stubbed,
        "config": str(cfg_path),
    }


def build_ours(num_actions: int, device: torch.device) -> dict[str, Any]:
    """Our agent and the trainer's component records at the Crafter preset."""
    from deltairis.agent import Agent
    from deltairis.train.components import build_components
    from deltairis.train.configuration import agent_config_from, compose_config

    cfg = compose_config(
        ["env=crafter", "params=crafter", f"common.device={device.type}", "wandb.mode=disabled"]
    )
    agent = Agent(agent_config_from(cfg, num_actions)).to(device)
    components = build_components(agent, cfg.training)
    return {
        "agent": agent,
        "components": components,
        "shapes": {n: (int(cfg.training[n].batch_size), components[n].seq_len) for n in COMPONENTS},
        "max_grad_norm": {n: float(cfg.training[n].max_grad_norm) for n in COMPONENTS},
        "mixed_precision": {n: bool(cfg.training[n].mixed_precision) for n in COMPONENTS},
        "burn_in": int(agent.config.actor_critic.burn_in),
        "horizon": int(agent.config.actor_critic.horizon),
    }


def check_same_shapes(ours: dict[str, Any], ref: dict[str, Any]) -> None:
    problems = []
    for n in COMPONENTS:
        if ours["shapes"][n] != ref["shapes"][n]:
            problems.append(f"{n}: ours (batch, seq) {ours['shapes'][n]} vs reference {ref['shapes'][n]}")
        if ours["max_grad_norm"][n] != ref["max_grad_norm"][n]:
            problems.append(
                f"{n}: max_grad_norm ours {ours['max_grad_norm'][n]} vs reference {ref['max_grad_norm'][n]}"
            )
    for key in ("burn_in", "horizon"):
        if ours[key] != ref[key]:
            problems.append(f"actor_critic {key}: ours {ours[key]} vs reference {ref[key]}")
    if problems:
        raise SystemExit("bench_reference: the two Crafter presets differ:\n  " + "\n  ".join(problems))


def random_batches(
    b: int, t: int, num_actions: int, device: torch.device, ref_batch_cls: type
) -> tuple[Any, Any]:
    """One random batch, as ours (deltairis.data.Batch, uint8 frames moved and scaled by ``to``) and as
    the reference's ``data.Batch`` (frames already in [0, 1], as its collate function makes them)."""
    from deltairis.data import Batch

    g = torch.Generator().manual_seed(0)
    obs = torch.randint(0, 256, (b, t, 3, 64, 64), dtype=torch.uint8, generator=g)
    act = torch.randint(0, num_actions, (b, t), generator=g)
    rew = torch.randn(b, t, generator=g)
    ours = Batch(
        obs=obs,
        act=act,
        rew=rew,
        end=torch.zeros(b, t, dtype=torch.uint8),
        trunc=torch.zeros(b, t, dtype=torch.uint8),
        mask_padding=torch.ones(b, t, dtype=torch.bool),
        episode_id=torch.zeros(b, dtype=torch.long),
        start=torch.zeros(b, dtype=torch.long),
        stop=torch.full((b,), t, dtype=torch.long),
    ).to(device)
    ref = ref_batch_cls(
        observations=obs.to(device).float().div(255),
        actions=act.to(device),
        rewards=rew.to(device),
        ends=torch.zeros(b, t, dtype=torch.long, device=device),
        mask_padding=torch.ones(b, t, dtype=torch.bool, device=device),
        segment_ids=[],
    )
    return ours, ref


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], None], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return 1000.0 * (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="extracted vmicheli/delta-iris")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--num-actions", type=int, default=17, help="Crafter's 17 actions")
    ap.add_argument("--batch-size", type=int, default=None, help="one batch size for all three (smoke runs)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--time-budget", type=float, default=80.0, help="stop repeating after this many seconds")
    ap.add_argument("--components", default=",".join(COMPONENTS))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    names = [n for n in args.components.split(",") if n]
    unknown = sorted(set(names) - set(COMPONENTS))
    if unknown:
        raise SystemExit(f"bench_reference: unknown component(s) {unknown}; expected some of {COMPONENTS}")
    check_reference(args.reference)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # both trainers' setting
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(0)
    ours = build_ours(args.num_actions, device)
    torch.manual_seed(0)
    ref = build_reference(args.reference, args.num_actions, device)
    check_same_shapes(ours, ref)

    def n_params(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.parameters() if p.requires_grad)

    steps: dict[str, dict[str, Callable[[], None]]] = {}
    shapes: dict[str, list[int]] = {}
    params: dict[str, dict[str, int]] = {}
    for n in names:
        b, t = ours["shapes"][n]
        if args.batch_size is not None:
            b = int(args.batch_size)
        shapes[n] = [b, t]
        mp = ours["mixed_precision"][n] and device.type == "cuda"
        ob, rb = random_batches(b, t, args.num_actions, device, ref["Batch"])
        comp = ours["components"][n]
        rmod, ropt, rkw = ref["modules"][n], ref["optimizers"][n], ref["loss_kwargs"][n]
        params[n] = {"ours": sum(p.numel() for p in comp.parameters), "reference": n_params(rmod)}
        seed = iter(range(10**9))

        def our_step(comp=comp, ob=ob, mp=mp, seed=seed) -> None:
            from deltairis.train.step import gradient_step

            ours["agent"].eval()
            comp.train_module.train()
            gradient_step(comp, ob, next(seed), MAX_GRAD_NORM, autocast=_autocast(device, mp))

        def ref_step(rmod=rmod, ropt=ropt, rkw=rkw, rb=rb, mp=mp) -> None:
            for m in ref["modules"].values():
                m.eval()
            rmod.train()
            with _autocast(device, mp):
                losses, _ = rmod.compute_loss(rb, **rkw)
            losses.loss_total.backward()
            torch.nn.utils.clip_grad_norm_(rmod.parameters(), MAX_GRAD_NORM)
            ropt.step()
            ropt.zero_grad()

        steps[n] = {"ours": our_step, "reference": ref_step}

    times: dict[str, dict[str, list[float]]] = {n: {"ours": [], "reference": []} for n in names}
    for n in names:
        for _ in range(args.warmup):
            steps[n]["ours"]()
            steps[n]["reference"]()
    _sync(device)
    t_start = time.perf_counter()
    for r in range(args.repeats):
        for n in names:
            order = ("ours", "reference") if r % 2 == 0 else ("reference", "ours")
            for side in order:
                times[n][side].append(timed(steps[n][side], device))
        if time.perf_counter() - t_start > args.time_budget:
            break

    result: dict[str, Any] = {
        "benchmark": "bench_reference",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "reference": str(args.reference),
        "reference_config": ref["config"],
        "stubbed_modules": ref["stubbed_modules"],
        "preset_shapes": args.batch_size is None,
        "warmup": args.warmup,
        "repeats": len(next(iter(times.values()))["ours"]) if names else 0,
        "components": {},
    }
    for n in names:
        o, rf = statistics.median(times[n]["ours"]), statistics.median(times[n]["reference"])
        result["components"][n] = {
            "batch_size": shapes[n][0],
            "seq_len": shapes[n][1],
            "mixed_precision": ours["mixed_precision"][n] and device.type == "cuda",
            "ours_ms": round(o, 3),
            "reference_ms": round(rf, 3),
            "ratio": round(rf / o, 3) if o > 0 else None,  # > 1: ours is faster
            "ours_all_ms": [round(x, 3) for x in times[n]["ours"]],
            "reference_all_ms": [round(x, 3) for x in times[n]["reference"]],
            "trainable_params": params[n],
        }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"device: {result['device']}, torch {result['torch']}, median of {result['repeats']} after {args.warmup} warm-up"
    )
    print(f"{'component':<14}{'B x T':>9}{'ours ms':>11}{'ref ms':>11}{'ref/ours':>10}  params ours/ref")
    for n, c in result["components"].items():
        print(
            f"{n:<14}{c['batch_size']:>4} x{c['seq_len']:>3}{c['ours_ms']:>11.1f}{c['reference_ms']:>11.1f}"
            f"{c['ratio']:>10.2f}  {c['trainable_params']['ours']}/{c['trainable_params']['reference']}"
        )
    return result


if __name__ == "__main__":
    main()
