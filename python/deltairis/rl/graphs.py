"""CUDA-graph replay of the imagined world-model step.

One imagined step launches hundreds of small kernels (4 transformer calls, 4 samplers, heads, the
tokenizer decoder). :class:`GraphedWorldModelStep` captures :func:`world_model_step` once per distinct
cache position and replays it, which removes the launch overhead while computing exactly what the
eager step computes (the sampler offset is a device tensor, so replays draw fresh samples).

The captured graphs read the model's parameters in place: optimizer steps (in-place updates) are
seen by later replays. A :class:`GraphRunners` owned by the caller (the actor-critic loss) keeps one
runner per (batch size, device) and rebuilds it when a parameter's storage changes (e.g. after
``.to(device)``); nothing is cached at module level.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deltairis.models.kv_cache import KVCache
from deltairis.ops.graphs import CapturedStep
from deltairis.rl.imagination import WorldModelState, world_model_step


@dataclass
class _Captured:
    step: CapturedStep
    size_after: int


class GraphedWorldModelStep:
    """Drop-in replacement for :func:`world_model_step` on CUDA, bound to its own static KV cache."""

    def __init__(self, tokenizer, world_model, batch_size: int, device: torch.device) -> None:
        if torch.device(device).type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        self.tokenizer = tokenizer
        self.world_model = world_model
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.cache: KVCache = world_model.transformer.empty_cache(batch_size, device)
        e = world_model.config.transformer.embed_dim
        self._dummy_pending = torch.zeros(batch_size, 1, e, device=device)
        self._graphs: dict[tuple[int, bool, int], _Captured] = {}  # (cache size, pending, row offset)
        self.fingerprint = parameter_fingerprint(tokenizer, world_model)

    def _capture(
        self, key: tuple[int, bool, int], state: WorldModelState, act: torch.Tensor, offset: torch.Tensor
    ) -> _Captured:
        size0, has_pending, row_offset = key
        cache = self.cache
        lens0 = cache.lens.clone()
        seed = state.seed
        result = {}

        def fn(obs: torch.Tensor, a: torch.Tensor, pending: torch.Tensor, off: torch.Tensor):
            cache.size = size0  # every (warm-up or captured) run starts from the same position
            st = WorldModelState(cache, obs, pending if has_pending else None, seed, off, row_offset)
            new, rew, end = world_model_step(self.tokenizer, self.world_model, st, a)
            result["size_after"] = cache.size
            return new.obs, new.pending, rew, end, new.offset

        pending = state.pending if has_pending else self._dummy_pending
        step = CapturedStep(fn, state.obs, act, pending, offset, warmup=1)
        cache.lens.copy_(lens0)  # undo the warm-up run's advance (its KV writes are rewritten on replay)
        cache.size = size0
        # A first CUDA forward (the warm-up) may have moved conv weights to channels_last: this graph reads
        # the new storages, graphs captured before it would read freed ones.
        fingerprint = parameter_fingerprint(self.tokenizer, self.world_model)
        if fingerprint != self.fingerprint:
            self._graphs.clear()
            self.fingerprint = fingerprint
        return _Captured(step, result["size_after"])

    def step(self, tokenizer, world_model, state: WorldModelState, act: torch.Tensor):
        """Same contract as :func:`world_model_step` (``state.cache`` must be ``self.cache``)."""
        if state.cache is not self.cache:
            raise ValueError("state.cache is not this runner's cache; burn in with cache=runner.cache")
        if tokenizer is not self.tokenizer or world_model is not self.world_model:
            raise ValueError("this runner was captured for other models")
        offset = state.offset
        if not isinstance(offset, torch.Tensor):
            offset = torch.tensor([offset], dtype=torch.int64, device=self.device)
        key = (self.cache.size, state.pending is not None, state.row_offset)
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._graphs[key] = self._capture(key, state, act, offset)
        pending = state.pending if state.pending is not None else self._dummy_pending
        obs, new_pending, rew, end, new_offset = captured.step(state.obs, act, pending, offset)
        self.cache.size = captured.size_after
        new_state = WorldModelState(
            self.cache, obs.clone(), new_pending.clone(), state.seed, new_offset.clone(), state.row_offset
        )
        return new_state, rew.clone(), end.clone()


def parameter_fingerprint(*modules: torch.nn.Module) -> tuple[int, ...]:
    return tuple(t.data_ptr() for m in modules for t in list(m.parameters()) + list(m.buffers()))


class GraphRunners:
    """The CUDA-graph runners of one (tokenizer, world model) pair, one per batch size and device."""

    def __init__(self, tokenizer, world_model) -> None:
        self.tokenizer = tokenizer
        self.world_model = world_model
        self._runners: dict[tuple[int, str], GraphedWorldModelStep] = {}

    def get(self, batch_size: int, device: torch.device) -> GraphedWorldModelStep:
        """The runner for this batch size and device (rebuilt if the parameters moved)."""
        key = (batch_size, str(device))
        runner = self._runners.get(key)
        if runner is None or runner.fingerprint != parameter_fingerprint(self.tokenizer, self.world_model):
            runner = self._runners[key] = GraphedWorldModelStep(
                self.tokenizer, self.world_model, batch_size, device
            )
        return runner

    def clear(self) -> None:
        self._runners.clear()
