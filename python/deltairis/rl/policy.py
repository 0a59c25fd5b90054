"""The policy step in real environments: one piece of code for collection, test episodes and the play
tool.

An env step ``t`` of a stream seeded ``seed`` draws from the named counter streams of
:data:`deltairis.seeding.POLICY_STREAMS`: the action at ``temperature``, then (only when ``epsilon > 0``)
one ε coin for every env at once, as in the reference collector, and uniformly random actions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from deltairis import ops
from deltairis.seeding import POLICY_STREAMS

State = tuple[torch.Tensor, torch.Tensor]


def sample_actions(
    logits: torch.Tensor, *, epsilon: float = 0.0, temperature: float = 1.0, seed: int, step: int
) -> torch.Tensor:
    """ε-greedy actions (N,) int64 from policy logits (N, A) for env step ``step``."""
    n, a = logits.shape
    actions = ops.sample_categorical(
        logits, temperature=temperature, seed=seed, offset=POLICY_STREAMS.offset(step, "action")
    )
    if epsilon > 0:
        coin = ops.counter_uniform(1, seed, POLICY_STREAMS.offset(step, "epsilon_coin"), logits.device)
        uniform = ops.sample_categorical(
            torch.zeros(n, a, device=logits.device),
            seed=seed,
            offset=POLICY_STREAMS.offset(step, "epsilon_action"),
        )
        actions = torch.where(coin < epsilon, uniform, actions)  # one coin for all rows
    return actions


@torch.no_grad()
def policy_step(
    actor_critic: Any,
    obs: torch.Tensor,
    state: State,
    *,
    epsilon: float = 0.0,
    temperature: float = 1.0,
    seed: int,
    step: int,
) -> tuple[torch.Tensor, State]:
    """Online policy on frames (N, 3, H, W) in [0, 1]: (actions (N,), new LSTM state)."""
    out = actor_critic.model(obs, state)
    return sample_actions(
        out.logits, epsilon=epsilon, temperature=temperature, seed=seed, step=step
    ), out.state


class Policy:
    """Acts for ``num_envs`` envs, step after step, keeping the LSTM state and the step counter.

    ``actor_critic=None`` plays uniformly random actions (NumPy generator seeded ``seed``). Use
    :meth:`act_frames` on uint8 frames from an env, or :meth:`observe` then :meth:`sample` when the
    value of the frame on screen is wanted before acting (the play window).
    """

    def __init__(
        self,
        actor_critic: Any | None,
        num_actions: int,
        device: torch.device | str,
        *,
        epsilon: float = 0.0,
        temperature: float = 1.0,
        seed: int,
        state: State | None = None,
    ) -> None:
        self.actor_critic = actor_critic
        self.num_actions = int(num_actions)
        self.device = torch.device(device)
        self.epsilon = float(epsilon)
        self.temperature = float(temperature)
        self.seed = int(seed)
        self.state = state
        self.t = 0
        self.logits: torch.Tensor | None = None
        self.value: torch.Tensor | None = None
        self._rng = np.random.default_rng(seed) if actor_critic is None else None
        # CUDA: pinned staging buffers for the per-step host-to-device copies (frames, done flags), so
        # they are asynchronous; the only per-step host synchronisation is the copy of the actions back.
        self._staging: dict[str, tuple[torch.Tensor, torch.cuda.Event]] = {}

    def _to_device(self, array: np.ndarray, name: str) -> torch.Tensor:
        """``array`` on the device. On CUDA through a pinned buffer with a non-blocking copy: no host
        synchronisation (a plain copy from pageable memory waits for the stream)."""
        host = torch.from_numpy(array)
        if self.device.type != "cuda":
            return host.to(self.device)
        staged = self._staging.get(name)
        if staged is None or staged[0].shape != host.shape or staged[0].dtype != host.dtype:
            staged = (torch.empty(host.shape, dtype=host.dtype, pin_memory=True), torch.cuda.Event())
            self._staging[name] = staged
        buf, copied = staged
        copied.synchronize()  # the previous copy out of this buffer is done (it is, after an action copy)
        buf.copy_(host)
        out = buf.to(self.device, non_blocking=True)
        copied.record()
        return out

    @torch.no_grad()
    def observe(self, obs: torch.Tensor) -> None:
        """Run the policy on frames (N, 3, H, W) in [0, 1]; keeps its logits, values and new state."""
        if self.actor_critic is None:
            raise ValueError("a random policy has no network to observe frames with")
        if self.state is None:
            self.state = self.actor_critic.initial_state(obs.size(0), obs.device)
        self.logits, self.value, self.state = self.actor_critic.step(obs, self.state)

    def sample(self) -> torch.Tensor:
        """Actions (N,) from the last observed frames; advances the step counter."""
        if self.logits is None:
            raise ValueError("observe() a frame before sampling an action")
        a = sample_actions(
            self.logits, epsilon=self.epsilon, temperature=self.temperature, seed=self.seed, step=self.t
        )
        self.t += 1
        return a

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """observe + sample: actions (N,) on the device."""
        self.observe(obs)
        return self.sample()

    def act_frames(self, obs_chw: np.ndarray) -> np.ndarray:
        """Actions int64 (N,) for uint8 frames (N, 3, H, W) from an env."""
        if self.actor_critic is None:
            return self._rng.integers(self.num_actions, size=obs_chw.shape[0], dtype=np.int64)
        x = self._to_device(obs_chw, "obs").float().div_(255.0)
        return self.act(x).cpu().numpy().astype(np.int64)  # the step's one host synchronisation

    def reset_rows(self, done: np.ndarray) -> None:
        """Zero the LSTM state of the envs whose episode just ended (``done`` bool (N,))."""
        if self.state is not None and done.any():
            self.state = self.actor_critic.reset_state_rows(self.state, self._to_device(done, "done"))

    def state_dict(self) -> dict[str, Any]:
        """What continues this policy exactly: the LSTM state (on the CPU), step counter, NumPy generator."""
        return {
            "state": None if self.state is None else tuple(t.detach().cpu() for t in self.state),
            "t": self.t,
            "rng": None if self._rng is None else self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = None if state["state"] is None else tuple(t.to(self.device) for t in state["state"])
        self.t = int(state["t"])
        if self._rng is not None and state["rng"] is not None:
            self._rng.bit_generator.state = state["rng"]
        self.logits = self.value = None

    def reset(self) -> None:
        """Forget the LSTM state and the last frame (the step counter keeps counting)."""
        self.state = None
        self.logits = None
        self.value = None


__all__ = ["Policy", "policy_step", "sample_actions"]
