"""A memory plan before training: each component's peak memory at its batch, against what is available.

A run that does not fit its device used to die without a message: ``deltairis-train`` with the
Crafter preset on a 24 GiB CPU machine was ended by the kernel's OOM killer inside its first tokenizer
step (issue #21). The plan is made before the first gradient step and names the way out.

Use (one entry point; the trainer, the CLI and ``doctor`` call it before the first gradient step)::

    from deltairis.train.memory import MemoryPlanError, plan_for_config

    plan = plan_for_config(cfg, num_actions, device)  # cfg: the TrainerConfig (or its DictConfig)
    logger.info("%s", plan.summary())
    if not plan.fits:
        raise MemoryPlanError(plan)  # its message names the component, the sizes and the overrides

What "peak" means (the same on the estimating and the measuring side): the largest amount of memory
one training step of one component (loss, backward, gradient clipping, optimizer step) holds above the
process's baseline, i.e. above what the process held before the agent was built. It includes the whole
agent's weights and buffers, the component's gradients and optimizer state, the activations kept for
the backward pass and the transients of each op, the batch (the uint8 host copy and the float copy on
the device), and on CPU the allocator's and the math libraries' share (see below). It excludes the
interpreter, the imported libraries' code and whatever the process held before (the replay store,
the collector): that is already out of :func:`available_bytes`. On CPU it is anonymous memory (what
the OOM killer counts as ``anon-rss``), on CUDA the caching allocator's allocated bytes.

How it is estimated:

- CPU: the step runs on fake tensors (:class:`torch._subclasses.FakeTensorMode`: shapes and dtypes,
  no data and no arithmetic) at the configured batch, while a dispatch mode counts the bytes of the
  live tensor storages (a storage counts from the op that returns it until it is freed); the largest
  count is the tensors' peak. The process needs more than its tensors: freed blocks the C allocator
  keeps, the math libraries' work buffers, their first-step setup. Measured against the peak resident
  anonymous memory of fresh processes running one real step (``tests/train/test_memory.py``; tiny and
  Crafter presets), the real peak is ``CPU_RUNTIME_BYTES + factor * tensors' peak`` with the
  factors of :data:`CPU_ALLOCATOR_FACTOR` (1.1 for the tokenizer, 1.4 for the world model, 1.2 for the
  actor-critic), within +-20% on every measured point. A few seconds on CPU, at any batch size.
- CUDA: one real step at two small batches (1 and 2), whose peaks (``torch.cuda.max_memory_allocated``)
  are fitted linearly in the batch size (activations are linear in it; weights, gradients and optimizer
  state are the intercept) and extrapolated, times :data:`CUDA_ALLOCATOR_FACTOR`. Less than a second
  per component on a GPU. (Not yet compared with a full-batch step on a GPU.)

Both leave the random number generators as they were (the estimate builds its own agent).

The plan compares, per component, its step's peak plus the gradients and optimizer state the other
components keep between their steps with :func:`available_bytes` less a safety margin
(:data:`SAFETY_MARGIN`); for a component that does not fit it finds the smallest number of
gradient-accumulation steps ``k`` whose micro-batch ``ceil(batch_size / k)`` fits.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from deltairis.config.models import AgentConfig
from deltairis.config.schema import TrainerConfig, TrainingConfig
from deltairis.data import Batch
from deltairis.errors import DeltaIrisError
from deltairis.train.components import COMPONENT_NAMES, Component, build_components

# what is available is measured in host_memory; re-exported here for the plan's users
from deltairis.train.host_memory import (
    available_bytes,
    cgroup_available_bytes,
    host_available_bytes,
    parse_meminfo,
)

if TYPE_CHECKING:
    from deltairis.agent import Agent

MiB = 1 << 20
GiB = 1 << 30

#: a component fits when its estimate is at most ``(1 - SAFETY_MARGIN)`` of the available memory
SAFETY_MARGIN = 0.15
#: CPU: anonymous memory the first training step adds regardless of its size (thread pools, the math
#: libraries' primitive caches and work buffers, the allocator's arenas); measured ~80 MiB for every
#: component of the tiny preset at batch 1
CPU_RUNTIME_BYTES = 80 * MiB
#: CPU: resident memory per byte of the tensors' peak (freed blocks glibc keeps, oneDNN's hidden
#: buffers), per component, measured on the tiny and Crafter presets (module docstring)
CPU_ALLOCATOR_FACTOR: Mapping[str, float] = {"tokenizer": 1.1, "world_model": 1.4, "actor_critic": 1.2}
#: CPU: the factor of a component not in :data:`CPU_ALLOCATOR_FACTOR`
CPU_DEFAULT_FACTOR = 1.3
#: CUDA: the caching allocator's reserve over its allocated peak (rounding, fragmentation)
CUDA_ALLOCATOR_FACTOR = 1.1
#: CUDA: the batch sizes of the two measured steps
CUDA_FIT_BATCHES = (1, 2)
#: the CPU demo the message points at
CPU_DEMO = "env=toy params=tiny"

# -- sizes --------------------------------------------------------------------------------------------


def format_bytes(n: int | None) -> str:
    """``n`` bytes as GiB (>= 1 GiB) or MiB, e.g. ``26.3 GiB``; ``unknown`` for None."""
    if n is None:
        return "unknown"
    if abs(n) >= GiB:
        return f"{n / GiB:.1f} GiB"
    return f"{n / MiB:.0f} MiB"


# -- the estimate ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepEstimate:
    """The peak memory of one training step of ``component`` at ``batch_size`` (module docstring)."""

    component: str
    batch_size: int
    device: str
    #: the tensors' peak (CPU: counted on fake tensors; CUDA: the extrapolated allocated peak)
    tensor_peak_bytes: int
    #: what the step leaves behind for the next one: its gradients, optimizer state and caches
    state_bytes: int
    #: the step's peak as the process sees it (the number compared with what is available)
    estimate_bytes: int


def cpu_estimate_bytes(component: str, tensor_peak_bytes: int) -> int:
    """CPU: the process's peak for a step whose tensors peak at ``tensor_peak_bytes``."""
    factor = CPU_ALLOCATOR_FACTOR.get(component, CPU_DEFAULT_FACTOR)
    return int(CPU_RUNTIME_BYTES + factor * tensor_peak_bytes)


def _random_batch(batch_size: int, seq_len: int) -> Batch:
    """A host batch of the trainer's layout (uint8 frames); zeros: only shapes and dtypes matter."""
    b, t = batch_size, seq_len
    return Batch(
        obs=torch.zeros((b, t, 3, 64, 64), dtype=torch.uint8),
        act=torch.zeros((b, t), dtype=torch.long),
        rew=torch.zeros((b, t)),
        end=torch.zeros((b, t), dtype=torch.uint8),
        trunc=torch.zeros((b, t), dtype=torch.uint8),
        mask_padding=torch.ones((b, t), dtype=torch.bool),
        episode_id=torch.zeros((b,), dtype=torch.long),
        start=torch.zeros((b,), dtype=torch.long),
        stop=torch.full((b,), t, dtype=torch.long),
    )


def _train_step(component: Component, batch: Batch, autocast: bool) -> None:
    """The trainer's step without its distributed and non-finite parts: loss, hook, backward, clip, step."""
    train_module = component.train_module
    train_module.train()
    ctx = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if autocast and batch.obs.device.type == "cuda"
        else contextlib.nullcontext()
    )
    with ctx:
        out = component.loss(batch, 0)
    if component.after_loss is not None:
        component.after_loss()
    component.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(component.parameters, component.config.max_grad_norm)
    component.optimizer.step()


def _forget_step(component: Component) -> None:
    """Drop what a step left (gradients, optimizer state): the next estimate is again a first step."""
    component.optimizer.zero_grad(set_to_none=True)
    component.optimizer.state.clear()


class _LiveStorageBytes(TorchDispatchMode):
    """Counts the bytes of the live tensor storages: a storage counts from the op that returns it (or
    :meth:`track`) until it is freed. Reads of a value (``.item()``, ``bool(t)``) answer 1 / True, so a
    step on fake tensors runs through (the memory of a step does not depend on them)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, weakref.ref[Any]] = {}

    def track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = id(storage)
        if key in self._refs:
            return
        nbytes = int(storage.nbytes())

        def freed(_ref: object, key: int = key, nbytes: int = nbytes) -> None:
            self.live -= nbytes
            self._refs.pop(key, None)

        self._refs[key] = weakref.ref(storage, freed)
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is torch.ops.aten._local_scalar_dense.default:
            return True if args[0].dtype == torch.bool else 1
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out


def _fakeify(agent: nn.Module, mode: Any) -> None:
    """Replace ``agent``'s parameters and buffers by fake tensors of ``mode`` (shared ones stay shared)."""
    memo: dict[int, torch.Tensor] = {}
    for module in agent.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                if id(p) not in memo:
                    memo[id(p)] = nn.Parameter(mode.from_tensor(p.detach()), requires_grad=p.requires_grad)
                module._parameters[name] = memo[id(p)]  # type: ignore[assignment]
        for name, b in list(module._buffers.items()):
            if b is not None:
                if id(b) not in memo:
                    memo[id(b)] = mode.from_tensor(b)
                module._buffers[name] = memo[id(b)]


@contextlib.contextmanager
def _rng_kept(device: torch.device) -> Iterator[None]:
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def _build_agent(agent_config: AgentConfig, dtype: torch.dtype) -> Agent:
    from deltairis.agent import Agent

    agent = Agent(agent_config)
    return agent.to(dtype) if dtype != torch.float32 else agent


#: bump when the counting or the calibration changes: cached CPU estimates are then recomputed
ESTIMATE_VERSION = 1
#: settings of a component that do not change the memory of one step
_SCHEDULE_KEYS = ("start_after_epochs", "steps_per_epoch", "steps_first_epoch", "learning_rate",
                  "weight_decay", "max_grad_norm", "sampling_alpha", "grad_acc_steps")
_log = logging.getLogger(__name__)


def estimate_cache_dir() -> Path:
    """Where CPU estimates are kept between processes: ``DELTAIRIS_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/deltairis`` (default ``~/.cache/deltairis``), subfolder ``memory``.

    Counting a step on fake tensors costs seconds (most of it the actor-critic's imagination); its result
    depends only on the model, the step's shapes, the dtype and the code, so a run, a resume or the next
    run of the same configuration reads it back instead."""
    root = os.environ.get("DELTAIRIS_CACHE_DIR")
    if not root:
        root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "deltairis")
    return Path(root) / "memory"


def _read_cached_estimate(key: str) -> StepEstimate | None:
    path = estimate_cache_dir() / f"{key}.json"
    try:
        fields = json.loads(path.read_text())
        return StepEstimate(**fields)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:  # a damaged entry is recomputed (and rewritten)
        _log.debug("ignoring the cached memory estimate %s: %s", path, exc)
        return None


def _write_cached_estimate(key: str, estimate: StepEstimate) -> None:
    folder = estimate_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{key}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(dataclasses.asdict(estimate), f)
        os.replace(tmp, folder / f"{key}.json")
    except OSError as exc:  # a read-only home: estimates are simply not kept
        _log.debug("cannot keep the memory estimate in %s: %s", folder, exc)


class StepEstimator:
    """Estimates of one agent configuration's steps on one device; each (component, batch) is made once.

    ``peak(name, batch_size)`` -> :class:`StepEstimate`. On CPU each estimate runs the step on fake
    tensors; on CUDA the first estimate of a component measures real steps at
    :data:`CUDA_FIT_BATCHES` and later ones read the linear fit.
    """

    def __init__(
        self,
        agent_config: AgentConfig,
        training_cfg: TrainingConfig,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.agent_config = agent_config
        self.training_cfg = training_cfg
        self.device = torch.device(device)
        self.dtype = dtype
        self._cache: dict[tuple[str, int], StepEstimate] = {}
        self._fits: dict[str, tuple[float, float, int]] = {}  # CUDA: intercept, slope, state bytes
        self._fake: tuple[Any, Agent, dict[str, Component]] | None = None

    def peak(self, name: str, batch_size: int) -> StepEstimate:
        if name not in COMPONENT_NAMES:
            raise ValueError(f"unknown component {name!r}; expected one of {', '.join(COMPONENT_NAMES)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        key = (name, int(batch_size))
        if key not in self._cache:
            if self.device.type == "cuda":
                self._cache[key] = self._cuda_estimate(name, int(batch_size))
            else:
                self._cache[key] = self._fake_estimate(name, int(batch_size))
        return self._cache[key]

    # -- CPU: fake tensors --------------------------------------------------------------------------
    def _fake_components(self) -> tuple[Any, Agent, dict[str, Component]]:
        if self._fake is None:
            from torch._subclasses.fake_tensor import FakeTensorMode

            mode = FakeTensorMode()
            with _rng_kept(self.device):
                agent = _build_agent(self.agent_config, self.dtype)
            _fakeify(agent, mode)
            with mode:
                components = build_components(agent, self.training_cfg)
            self._fake = (mode, agent, components)
        return self._fake

    def _fake_estimate(self, name: str, batch_size: int) -> StepEstimate:
        key = self._disk_key(name, batch_size)
        cached = _read_cached_estimate(key)
        if cached is not None:
            return cached
        estimate = self._count_fake_step(name, batch_size)
        _write_cached_estimate(key, estimate)
        return estimate

    def _disk_key(self, name: str, batch_size: int) -> str:
        """What a CPU estimate depends on: the model, the component's step-shaping settings, the batch,
        the dtype and the versions of this package and of torch (not the schedule or the learning rate)."""
        from importlib import metadata

        from deltairis.train.components import component_config

        try:
            version = metadata.version("delta-iris")
        except metadata.PackageNotFoundError:  # a source tree on sys.path
            version = "source"

        step = dataclasses.asdict(component_config(self.training_cfg, name))
        for k in _SCHEDULE_KEYS:
            step.pop(k, None)
        parts = (ESTIMATE_VERSION, version, torch.__version__, repr(self.agent_config), name,
                 sorted(step.items()), batch_size, str(self.dtype), self.device.type)
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]

    def _count_fake_step(self, name: str, batch_size: int) -> StepEstimate:
        mode, agent, components = self._fake_components()
        component = components[name]
        counter = _LiveStorageBytes()
        with _rng_kept(self.device), mode, counter:
            for t in (*agent.parameters(), *agent.buffers()):
                counter.track(t)
            start = counter.live
            host = _random_batch(batch_size, component.seq_len)
            batch = host.to(self.device)
            _train_step(component, batch, component.config.mixed_precision)
            del host, batch
            state = counter.live - start
            _forget_step(component)
        return StepEstimate(
            component=name,
            batch_size=batch_size,
            device=str(self.device),
            tensor_peak_bytes=counter.peak,
            state_bytes=max(state, 0),
            estimate_bytes=cpu_estimate_bytes(name, counter.peak),
        )

    # -- CUDA: two measured steps and a linear fit ----------------------------------------------------
    def _cuda_measure(self, name: str, batch_size: int) -> tuple[int, int]:
        """(allocated peak, bytes left after the step) of one real step, above the memory before it."""
        device = self.device
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with _rng_kept(device):
            agent = _build_agent(self.agent_config, self.dtype).to(device)
            component = build_components(agent, self.training_cfg)[name]
            batch = _random_batch(batch_size, component.seq_len).to(device)
            before = torch.cuda.memory_allocated(device)
            _train_step(component, batch, component.config.mixed_precision)
            del batch
            torch.cuda.synchronize(device)
            after = torch.cuda.memory_allocated(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del agent, component
        return peak, after - before

    def _cuda_estimate(self, name: str, batch_size: int) -> StepEstimate:
        if name not in self._fits:
            (b1, b2) = CUDA_FIT_BATCHES
            p1, _ = self._cuda_measure(name, b1)
            p2, state = self._cuda_measure(name, b2)
            slope = max((p2 - p1) / (b2 - b1), 0.0)
            self._fits[name] = (p2 - slope * b2, slope, state)
            torch.cuda.empty_cache()
        intercept, slope, state = self._fits[name]
        tensors = int(intercept + slope * batch_size)
        return StepEstimate(
            component=name,
            batch_size=batch_size,
            device=str(self.device),
            tensor_peak_bytes=tensors,
            state_bytes=state,
            estimate_bytes=int(CUDA_ALLOCATOR_FACTOR * tensors),
        )


def estimate_component_peak(
    agent_config: AgentConfig,
    training_cfg: TrainingConfig,
    name: str,
    batch_size: int,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> StepEstimate:
    """The peak memory of one training step of component ``name`` at ``batch_size`` on ``device``."""
    return StepEstimator(agent_config, training_cfg, device, dtype).peak(name, batch_size)


# -- the plan -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComponentPlan:
    """One component's row of the plan.

    ``estimate_bytes``: its step's peak (:class:`StepEstimate`) plus the state the other components keep;
    ``fits``: ``estimate_bytes <= (1 - margin) * available_bytes`` (True when available is unknown);
    ``grad_acc_steps``/``micro_batch_size``: 1 (:func:`plan_for_config`: the configured ``grad_acc_steps``)
    and ``batch_size`` when it fits, else the smallest ``k`` whose micro-batch ``ceil(batch_size / k)``
    fits (:func:`plan_for_config`: times the configured steps; both None when not even a batch of 1 fits);
    ``micro_estimate_bytes``: the estimate at that micro-batch (at a batch of 1 when none fits).
    """

    name: str
    batch_size: int
    estimate_bytes: int
    available_bytes: int | None
    fits: bool
    grad_acc_steps: int | None
    micro_batch_size: int | None
    micro_estimate_bytes: int | None


@dataclass(frozen=True)
class MemoryPlan:
    device: str
    available_bytes: int | None
    margin: float
    components: dict[str, ComponentPlan]
    #: ranks of a ``torchrun`` run: each trains ``ceil(batch_size / world_size)`` rows of a batch, and the
    #: estimates are of one rank's rows (the plan's batch sizes and suggestions are the config's, global)
    world_size: int = 1

    @property
    def fits(self) -> bool:
        return all(c.fits for c in self.components.values())

    def summary(self) -> str:
        """One line per component, for the run's log."""
        lines = [f"memory plan on {self.device}: {format_bytes(self.available_bytes)} available"]
        for c in self.components.values():
            verdict = "fits" if c.fits else "does NOT fit"
            lines.append(
                f"  {c.name}: batch {c.batch_size}, one step ~{format_bytes(c.estimate_bytes)}: {verdict}"
            )
        return "\n".join(lines)

    def message(self) -> str:
        """The user's message for the components that do not fit ('' when all fit)."""
        return memory_plan_message(self)


def smallest_grad_acc_steps(
    batch_size: int, estimate: Callable[[int], int], budget: int
) -> tuple[int, int, int] | None:
    """The smallest ``k`` in ``1..batch_size`` with ``estimate(ceil(batch_size / k)) <= budget``:
    ``(k, micro_batch, estimate)``, or None when not even a micro-batch of 1 fits. ``estimate`` must not
    decrease with the batch size (a binary search over ``k``)."""
    if estimate(1) > budget:
        return None
    lo, hi = 1, batch_size  # hi fits (micro-batch 1)
    if estimate(batch_size) <= budget:
        return 1, batch_size, estimate(batch_size)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if estimate(math.ceil(batch_size / mid)) <= budget:
            hi = mid
        else:
            lo = mid
    # the smallest k with the same micro-batch (the search may land on a larger k of the same size)
    micro = math.ceil(batch_size / hi)
    k = math.ceil(batch_size / micro)
    return k, micro, estimate(micro)


def plan_memory(
    estimator: StepEstimator | Callable[[str, int], StepEstimate],
    batch_sizes: Mapping[str, int],
    available: int | None,
    device: torch.device | str,
    margin: float = SAFETY_MARGIN,
) -> MemoryPlan:
    """The plan for components ``batch_sizes`` (name -> configured batch) given ``available`` bytes.

    ``estimator``: a :class:`StepEstimator` or any ``(name, batch_size) -> StepEstimate``.
    """
    peak = estimator.peak if isinstance(estimator, StepEstimator) else estimator
    full = {name: peak(name, b) for name, b in batch_sizes.items()}
    budget = None if available is None else int((1.0 - margin) * available)
    rows: dict[str, ComponentPlan] = {}
    for name, b in batch_sizes.items():
        others = sum(e.state_bytes for n, e in full.items() if n != name)

        def total(micro: int, name: str = name, others: int = others) -> int:
            return peak(name, micro).estimate_bytes + others

        est = total(b)
        if budget is None or est <= budget:
            rows[name] = ComponentPlan(name, b, est, available, True, 1, b, est)
            continue
        found = smallest_grad_acc_steps(b, total, budget)
        if found is None:
            rows[name] = ComponentPlan(name, b, est, available, False, None, None, total(1))
        else:
            k, micro, micro_est = found
            rows[name] = ComponentPlan(name, b, est, available, False, k, micro, micro_est)
    return MemoryPlan(str(torch.device(device)), available, margin, rows)


def memory_plan_message(plan: MemoryPlan) -> str:
    """What the user reads when a plan does not fit: per component the estimate, what is available and
    the overrides to use; on CPU also the CPU demo."""
    bad = [c for c in plan.components.values() if not c.fits]
    if not bad:
        return ""
    where = "this machine's RAM" if plan.device == "cpu" else f"{plan.device}"
    lines: list[str] = []
    overrides: list[str] = []
    ranks = plan.world_size
    for c in bad:
        rows = f" ({math.ceil(c.batch_size / ranks)} rows on each of {ranks} ranks)" if ranks > 1 else ""
        lines.append(
            f"Not enough memory to train the {c.name} at batch_size {c.batch_size}{rows} on {plan.device}: one "
            f"training step needs about {format_bytes(c.estimate_bytes)}, and {format_bytes(c.available_bytes)} "
            f"of {where} is available ({int(plan.margin * 100)}% is kept as a safety margin)."
        )
        if c.grad_acc_steps is None or c.micro_batch_size is None:
            lines.append(
                f"  Not even a batch of 1 fits (about {format_bytes(c.micro_estimate_bytes)} needed)."
            )
        else:
            line = (
                f"training.{c.name}.grad_acc_steps={c.grad_acc_steps} "
                f"training.{c.name}.batch_size={c.micro_batch_size}"
            )
            overrides.append(line)
            lines.append(
                f"  It fits in {c.grad_acc_steps} gradient-accumulation steps of {c.micro_batch_size} "
                f"(about {format_bytes(c.micro_estimate_bytes)} each): {line}"
            )
    if len(overrides) > 1:
        lines.append("All together: " + " ".join(overrides))
    if plan.device == "cpu":
        lines.append(f"On a CPU, the small demo configuration trains in minutes: deltairis-train {CPU_DEMO}")
    return "\n".join(lines)


class MemoryPlanError(DeltaIrisError, RuntimeError):
    """A component's training step does not fit the memory available; the message says what to change."""

    def __init__(self, plan: MemoryPlan) -> None:
        super().__init__(memory_plan_message(plan) or "the memory plan fits")
        self.plan = plan


def _typed(cfg: TrainerConfig | DictConfig) -> TrainerConfig:
    from deltairis.train.configuration import typed_config

    return typed_config(cfg)


#: estimators kept for the next plan of the same agent and training shapes (a resumed run, tests)
_ESTIMATORS: OrderedDict[tuple[str, ...], StepEstimator] = OrderedDict()
_ESTIMATORS_KEPT = 4


def _shape_key(training: TrainingConfig) -> str:
    """What of the training section a step's memory depends on (not the batch size, the schedule or the
    learning rate): sequence lengths, optimizers, weight decay, autocast, padding handling."""
    parts = [f"exclude_padding={training.exclude_padding}"]
    for name in COMPONENT_NAMES:
        c = getattr(training, name)
        parts.append(f"{name}:{c.seq_len}:{c.optimizer}:{c.weight_decay > 0}:{c.mixed_precision}")
    return "|".join(parts)


def cached_estimator(
    agent_config: AgentConfig,
    training_cfg: TrainingConfig,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
) -> StepEstimator:
    """A :class:`StepEstimator` for these shapes, reused from an earlier plan when there is one (a fake
    step costs seconds on CPU; the estimates of a configuration do not change within a process)."""
    device = torch.device(device)
    key = (repr(agent_config), _shape_key(training_cfg), str(device), str(dtype))
    found = _ESTIMATORS.get(key)
    if found is None:
        found = StepEstimator(agent_config, copy.deepcopy(training_cfg), device, dtype)
        _ESTIMATORS[key] = found
        while len(_ESTIMATORS) > _ESTIMATORS_KEPT:
            _ESTIMATORS.popitem(last=False)
    _ESTIMATORS.move_to_end(key)
    return found


def plan_for_config(
    cfg: TrainerConfig | DictConfig,
    num_actions: int,
    device: torch.device | str,
    *,
    available: int | None | Callable[[torch.device], int | None] = available_bytes,
    margin: float = SAFETY_MARGIN,
    components: tuple[str, ...] = COMPONENT_NAMES,
    dtype: torch.dtype = torch.float32,
    world_size: int = 1,
) -> MemoryPlan:
    """The memory plan of a trainer config on ``device`` (the entry point; see the module docstring).

    ``available``: bytes, or a function of the device (default :func:`available_bytes`, read now).
    Components that do not train (``steps_per_epoch == 0`` and ``steps_first_epoch == 0``) are left out.
    ``batch_size`` is the micro-batch of ``grad_acc_steps`` (a configured ``grad_acc_steps`` ``g``
    multiplies a suggested split: ``g * k`` steps). ``world_size`` > 1 (``torchrun``): each rank's
    step holds ``ceil(batch_size / world_size)`` rows; the suggested ``batch_size`` is again the config's.
    """
    from deltairis.train.components import component_config
    from deltairis.train.configuration import agent_config_from

    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    typed = _typed(cfg)
    device = torch.device(device)
    agent_config = agent_config_from(typed, num_actions)
    training = typed.training
    batch_sizes: dict[str, int] = {}
    configured: dict[str, tuple[int, int]] = {}  # name -> (batch_size, grad_acc_steps) of the config
    for name in components:
        c = component_config(training, name)
        if c.steps_per_epoch > 0 or c.steps_first_epoch > 0:
            configured[name] = (c.batch_size, c.grad_acc_steps)
            batch_sizes[name] = math.ceil(c.batch_size / world_size)
    avail = available(device) if callable(available) else available
    estimator = cached_estimator(agent_config, training, device, dtype)
    plan = plan_memory(estimator, batch_sizes, avail, device, margin)
    rows: dict[str, ComponentPlan] = {}
    for name, row in plan.components.items():
        b, g = configured[name]
        k = row.grad_acc_steps
        if row.fits:
            rows[name] = dataclasses.replace(row, batch_size=b, grad_acc_steps=g, micro_batch_size=b)
        elif k is None:
            rows[name] = dataclasses.replace(row, batch_size=b)
        else:  # k micro-batches of the rank's rows; each rank takes its share of ceil(b / k)
            micro = math.ceil(b / k)
            rows[name] = dataclasses.replace(row, batch_size=b, grad_acc_steps=g * k, micro_batch_size=micro)
    return dataclasses.replace(plan, components=rows, world_size=world_size)


__all__ = [
    "CPU_ALLOCATOR_FACTOR",
    "CPU_DEMO",
    "CPU_RUNTIME_BYTES",
    "SAFETY_MARGIN",
    "ComponentPlan",
    "MemoryPlan",
    "MemoryPlanError",
    "StepEstimate",
    "StepEstimator",
    "available_bytes",
    "cached_estimator",
    "cgroup_available_bytes",
    "cpu_estimate_bytes",
    "estimate_component_peak",
    "format_bytes",
    "host_available_bytes",
    "memory_plan_message",
    "parse_meminfo",
    "plan_for_config",
    "plan_memory",
    "smallest_grad_acc_steps",
]
