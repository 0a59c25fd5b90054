"""The world model as an environment (docs/algorithm.md, sections 4 and 5).

:class:`WorldModelEnv` is the one place where the world model is stepped: the actor-critic's
imagination (a batch of real segments), ``deltairis-play -w/-a`` and the live play window (one stream of
frames) all drive it the same way::

    env = WorldModelEnv(tokenizer, world_model)
    obs = env.reset(frames, actions, seed=s)  # burn in on frames (B, T, 3, H, W), actions (B, T)
    obs, rew, end = env.step(act)  # one imagined step for actions (B,)

The env owns its rollout state (:class:`WorldModelState`: the KV cache, the current frame, the Δ-token
not yet fed to the transformer and the sampler's counter); no state lives on an ``nn.Module``.

No step reads a value back from the device: the cache position is a Python int, and Δ-tokens and
(classified) rewards and ends are drawn by the counter-based sampler
(:func:`deltairis.ops.sample_categorical`) from the fixed seed :data:`~deltairis.seeding.SAMPLER_SEED` at
offsets ``stream_base(seed) + k`` (the layout is declared in :mod:`deltairis.seeding`). ``row_offset`` is
the global index of the batch's first row when it is a slice of a larger batch (a rank of a distributed
run): the slice then draws what the whole batch draws for those rows.

CUDA graphs (``cuda_graphs=True``, CUDA only): each step is replayed from a graph captured once per
(cache position, pending Δ-token, row offset, autocast) on a KV cache kept for that batch size, which
removes the launch overhead of the step's hundreds of small kernels. The sampler's offset is then a
device tensor advanced inside the graph, so replays draw exactly what the eager step draws. Graphs read
the parameters in place (optimizer updates are seen) and are dropped when a parameter's storage moves.
The whole-rollout graph (:mod:`deltairis.rl.rollout`) captures this same step inside its own graph and
so needs an env with ``cuda_graphs=False``.

``bf16=True`` (opt-in, changes numerics) runs the world-model step under bf16 autocast; frames and
rewards come back in the input frames' dtype. Everything else follows the input dtype (float64 works).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from deltairis import ops
from deltairis.models.kv_cache import KVCache
from deltairis.ops.graphs import CapturedStep, parameter_fingerprint
from deltairis.ops.sampling import check_row_offset
from deltairis.seeding import SAMPLER_SEED, stream_base


@dataclass
class WorldModelState:
    """The rollout state of a :class:`WorldModelEnv` (owned by the env, passed explicitly to the step)."""

    cache: KVCache
    obs: torch.Tensor  # (B, 3, H, W) current frame
    pending: torch.Tensor | None  # (B, 1, E) embedding of the last Δ-token, not yet fed
    offset: int | torch.Tensor  # next sampler stream (a one-element device tensor under CUDA graphs)
    row_offset: int = 0  # global index of the first row (a slice of a larger batch)


@torch.no_grad()
def _burn_in(
    tokenizer, world_model, obs: torch.Tensor, act: torch.Tensor, cache: KVCache
) -> torch.Tensor | None:
    """Feed the T-1 real transitions of ``obs`` (B, T, ...) to the emptied ``cache``; returns the
    pending token."""
    cache.reset()
    if obs.size(1) < 2:
        return None
    tokens = tokenizer.encode_tokens(obs[:, :-1], act[:, :-1], obs[:, 1:])  # (B, T-1, K)
    seq = world_model.embed_sequence(obs[:, :-1], act[:, :-1], tokens)  # (B, (T-1)*(K+2), E)
    if seq.size(1) > cache.max_tokens:
        raise ValueError(f"burn-in of {seq.size(1)} tokens exceeds the cache ({cache.max_tokens})")
    world_model.transformer(seq[:, :-1], cache)
    return seq[:, -1:]


@torch.no_grad()
def _step(
    tokenizer, world_model, state: WorldModelState, act: torch.Tensor
) -> tuple[WorldModelState, torch.Tensor, torch.Tensor]:
    """The imagined step, written once: (new state, reward (B,), end (B,) int64) for actions (B,)."""
    wm = world_model
    cfg = wm.config
    cache, pending, offset, rows = state.cache, state.pending, state.offset, state.row_offset
    if cache.remaining <= cfg.transformer.tokens_per_block:
        # at most one block left (the reference's rule): restart the context from the current frame
        cache.reset()
        pending = None
    frame = wm.embed_frames(state.obs.unsqueeze(1))  # (B, 1, E)
    a = wm.act_emb(act).unsqueeze(1)  # (B, 1, E)
    x = torch.cat((frame, a) if pending is None else (pending, frame, a), dim=1)
    h = wm.transformer(x, cache)[:, -1:]  # (B, 1, E) output at the action position
    rew_logits = wm.head_rewards(h)[:, 0]
    end_logits = wm.head_ends(h)[:, 0]
    tokens = []
    k = cfg.tokens_per_frame
    for j in range(k):
        logits = wm.head_latents(h)[:, 0]  # (B, V)
        tok = ops.sample_categorical(logits, seed=SAMPLER_SEED, offset=offset, row_offset=rows)
        offset += 1  # in place for a device tensor (read by a captured graph)
        tokens.append(tok)
        emb = wm.latents_emb(tok).unsqueeze(1)  # (B, 1, E)
        if j < k - 1:
            h = wm.transformer(emb, cache)
        else:
            pending = emb
    tokens_t = torch.stack(tokens, dim=1).unsqueeze(1)  # (B, 1, K)
    next_obs = tokenizer.decode_tokens(state.obs.unsqueeze(1), act.unsqueeze(1), tokens_t, clamp=True)[:, 0]
    dtype = state.obs.dtype  # outputs follow the input frames (float32 under bf16 autocast too)
    if cfg.two_hot_rewards:
        rew = ops.twohot_expectation(rew_logits, low=cfg.bucket_low, high=cfg.bucket_high).to(dtype)
    else:  # classes {0, 1, 2} -> rewards {-1, 0, 1}
        rew_class = ops.sample_categorical(rew_logits, seed=SAMPLER_SEED, offset=offset, row_offset=rows)
        rew = rew_class.to(dtype) - 1
        offset += 1
    end = ops.sample_categorical(end_logits, seed=SAMPLER_SEED, offset=offset, row_offset=rows)
    offset += 1
    return WorldModelState(cache, next_obs.to(dtype), pending, offset, rows), rew, end


@dataclass
class _Captured:
    step: CapturedStep
    size_after: int  # the cache position after the captured step


@dataclass
class _Slot:
    """The KV cache of one (batch size, device, dtype), kept for the env's life (graphs read its memory),
    and the step graphs captured on it."""

    cache: KVCache
    graphs: dict[tuple[int, bool, int, bool], _Captured] = field(default_factory=dict)
    dummy_pending: torch.Tensor | None = None


class WorldModelEnv:
    """Burn in on real frames, then imagine frames, rewards and ends for actions (see the module doc)."""

    def __init__(self, tokenizer, world_model, *, cuda_graphs: bool = False, bf16: bool = False) -> None:
        self.tokenizer = tokenizer
        self.world_model = world_model
        self.cuda_graphs = bool(cuda_graphs)
        self.bf16 = bool(bf16)
        self.state: WorldModelState | None = None
        self._slots: dict[tuple[int, str, torch.dtype], _Slot] = {}
        self._fingerprint: tuple[int, ...] = ()

    # -- state ------------------------------------------------------------------------------------
    @property
    def obs(self) -> torch.Tensor:
        """The current frame (B, 3, H, W)."""
        return self._require_state().obs

    def _require_state(self) -> WorldModelState:
        if self.state is None:
            raise ValueError("the world-model env has no state yet: call reset() first")
        return self.state

    def uses_graphs(self, device: torch.device) -> bool:
        """Whether steps on ``device`` replay CUDA graphs."""
        return self.cuda_graphs and device.type == "cuda"

    def slot_cache(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        """The env's KV cache for this batch size, device and dtype (kept, so graphs can read it)."""
        return self._slot(batch_size, torch.device(device), dtype).cache

    def _slot(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> _Slot:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # "cuda" and "cuda:0" name the same cache
            device = torch.device("cuda", torch.cuda.current_device())
        key = (batch_size, str(device), dtype)
        slot = self._slots.get(key)
        if slot is None:
            cache = self.world_model.transformer.empty_cache(batch_size, device, dtype)
            slot = self._slots[key] = _Slot(cache)
        return slot

    # -- reset / step -----------------------------------------------------------------------------
    @torch.no_grad()
    def reset(
        self,
        obs: torch.Tensor,
        act: torch.Tensor | None = None,
        *,
        seed: int | None,
        row_offset: int = 0,
    ) -> torch.Tensor:
        """Burn in on real frames and return the current frame (B, 3, H, W) (the last real one).

        ``obs``: frames (B, T, 3, H, W), or (B, 3, H, W) for a single frame; ``act`` (B, T): the actions
        taken after each frame (the last one is unused; may be None for a single frame). ``seed``: start
        the sampler streams of this imagination seed; None continues the running streams (no stream is
        drawn twice, e.g. when the play window restarts the context). ``row_offset``: see the module doc.
        """
        if obs.dim() == 4:
            obs = obs.unsqueeze(1)
        if obs.dim() != 5 or obs.size(1) < 1:
            raise ValueError(
                f"reset needs frames (B, T >= 1, C, H, W) or (B, C, H, W), got {tuple(obs.shape)}"
            )
        b, t = obs.shape[:2]
        if act is None:
            if t > 1:
                raise ValueError(f"reset on {t} frames needs their actions (B, T)")
            act = torch.zeros(b, 1, dtype=torch.long, device=obs.device)
        elif act.shape != (b, t):
            raise ValueError(f"actions of shape {tuple(act.shape)} do not match frames (B, T) = {(b, t)}")
        check_row_offset(row_offset)
        graphs = self.uses_graphs(obs.device)
        if seed is None:
            if self.state is None:
                raise ValueError("reset(seed=None) continues earlier streams: the first reset needs a seed")
            offset = self.state.offset
        else:
            base = stream_base(seed)
            # under graphs the counter lives on the device, filled without a host-to-device copy
            offset = torch.full((1,), base, dtype=torch.int64, device=obs.device) if graphs else base
        if graphs:
            self._check_fingerprint()
        slot = self._slot(b, obs.device, obs.dtype)
        pending = _burn_in(self.tokenizer, self.world_model, obs, act, slot.cache)
        self.state = WorldModelState(slot.cache, obs[:, -1], pending, offset, row_offset)
        return self.state.obs

    @torch.no_grad()
    def step(self, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One imagined step for actions (B,): next frame (B, 3, H, W), reward (B,), end (B,) int64 {0, 1}."""
        state = self._require_state()
        b = state.obs.size(0)
        if act.shape != (b,):
            raise ValueError(f"actions must have shape ({b},), got {tuple(act.shape)}")
        if self.uses_graphs(state.obs.device):
            new, rew, end = self._replay(state, act)
        else:
            new, rew, end = self.step_body(state, act)
        self.state = new
        return new.obs, rew, end

    def step_body(
        self, state: WorldModelState, act: torch.Tensor
    ) -> tuple[WorldModelState, torch.Tensor, torch.Tensor]:
        """The step computation on an explicit state, eagerly (what every graph captures)."""
        autocast = (
            torch.autocast(state.obs.device.type, torch.bfloat16, cache_enabled=False)  # a graph must re-read
            if self.bf16  # the in-place updated weights: no weight-cast cache
            else contextlib.nullcontext()
        )
        with autocast:
            return _step(self.tokenizer, self.world_model, state, act)

    # -- CUDA graphs ------------------------------------------------------------------------------
    def _check_fingerprint(self) -> None:
        fingerprint = parameter_fingerprint(self.tokenizer, self.world_model)
        if fingerprint != self._fingerprint:  # a parameter's storage moved: graphs would read freed memory
            for slot in self._slots.values():
                slot.graphs.clear()
            self._fingerprint = fingerprint

    def _replay(
        self, state: WorldModelState, act: torch.Tensor
    ) -> tuple[WorldModelState, torch.Tensor, torch.Tensor]:
        slot = self._slot(state.obs.size(0), state.obs.device, state.obs.dtype)
        if state.cache is not slot.cache:
            raise ValueError("the state's cache is not this env's: reset() the env before stepping it")
        offset = state.offset
        if not isinstance(offset, torch.Tensor):
            raise ValueError("a graphed step needs the sampler offset on the device: reset() the env")
        autocast = torch.is_autocast_enabled(state.obs.device.type)
        key = (slot.cache.size, state.pending is not None, state.row_offset, autocast)
        if slot.dummy_pending is None:  # graph input standing for "no pending token"
            e = self.world_model.latents_emb.weight
            slot.dummy_pending = torch.zeros(act.size(0), 1, e.size(1), dtype=e.dtype, device=act.device)
        pending = state.pending if state.pending is not None else slot.dummy_pending
        captured = slot.graphs.get(key)
        if captured is None:
            captured = slot.graphs[key] = self._capture(slot, key, state, act, pending)
        obs, new_pending, rew, end, new_offset = captured.step(state.obs, act, pending, offset)
        slot.cache.size = captured.size_after
        new = WorldModelState(
            slot.cache, obs.clone(), new_pending.clone(), new_offset.clone(), state.row_offset
        )
        return new, rew.clone(), end.clone()

    def _capture(
        self,
        slot: _Slot,
        key: tuple[int, bool, int, bool],
        state: WorldModelState,
        act: torch.Tensor,
        pending: torch.Tensor,
    ) -> _Captured:
        size0, has_pending, row_offset, _ = key
        cache = slot.cache
        lens0 = cache.lens.clone()
        result = {}

        def fn(obs: torch.Tensor, a: torch.Tensor, pending: torch.Tensor, off: torch.Tensor):
            cache.size = size0  # every (warm-up or captured) run starts from the same position
            st = WorldModelState(cache, obs, pending if has_pending else None, off, row_offset)
            new, rew, end = self.step_body(st, a)
            result["size_after"] = cache.size
            return new.obs, new.pending, rew, end, new.offset

        step = CapturedStep(fn, state.obs, act, pending, state.offset, warmup=1)
        cache.lens.copy_(lens0)  # undo the warm-up run's advance (its KV writes are rewritten on replay)
        cache.size = size0
        # A first CUDA forward (the warm-up) may have moved conv weights to channels_last: this graph reads
        # the new storages, graphs captured before it would read freed ones.
        self._check_fingerprint()  # (the caller stores this graph after the check)
        return _Captured(step, result["size_after"])


__all__ = ["WorldModelEnv", "WorldModelState"]
