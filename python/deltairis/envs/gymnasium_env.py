"""Any registered gymnasium environment with pixels and discrete actions (``env=gymnasium
env.train.id=<id>``), behind the :class:`~deltairis.envs.vector.VectorEnv` interface.

Accepted: a ``Discrete`` action space (actions ``0..n-1`` are sent as ``start + i``), and observations
that are images (a ``uint8`` ``Box`` of shape ``(H, W, 3)``, or ``(H, W)`` / ``(H, W, 1)`` grey frames,
repeated to RGB) or, for any other observation space, the env's ``render_mode="rgb_array"`` frames. Any
other action space (``Box``: continuous actions, ``MultiDiscrete``, ...) or an env with neither image
observations nor ``rgb_array`` rendering is a ``ValueError`` naming the space.

Frames are resized to 64x64 RGB with PIL's bilinear filter (``Image.BILINEAR``, the resize of the
reference's Atari wrapper; when shrinking, PIL widens the filter's support with the scale factor, so it
averages over the source pixels instead of sampling them). The aspect ratio is not kept.

Options (per split, from ``env.train`` / ``env.test``):

* ``frame_skip`` (default 1): each agent step repeats the action on that many env steps and sums their
  rewards; the episode ends at the first env step that ends it.
* ``max_pool`` (default false, needs ``frame_skip >= 2``): the frame is the pixel-wise maximum of the
  last two raw frames of the step (against flicker, as in Atari), taken before resizing.
* ``max_episode_steps`` (default none): a time limit in agent steps, reported as ``truncated``; the env's
  own limit (``gymnasium.make``'s ``TimeLimit``) still applies and is reported as ``truncated`` too.

A custom env is found like ``gymnasium.make`` finds it: registered in the process (``gymnasium.register``)
or named ``module.path:EnvId-v0``, which imports ``module.path`` (where the env registers itself) first.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np

from deltairis.envs.vector import OBS_SHAPE, SyncVectorEnv, check_positive_int

logger = logging.getLogger(__name__)

SIZE = OBS_SHAPE[0]


def _is_image_space(space: object) -> bool:
    from gymnasium import spaces

    if not isinstance(space, spaces.Box) or space.dtype != np.uint8:
        return False
    shape = tuple(space.shape)
    return len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3))


def to_rgb64(frame: np.ndarray) -> np.ndarray:
    """An image (H, W), (H, W, 1) or (H, W, 3) as uint8 (64, 64, 3), resized with PIL's bilinear filter."""
    from PIL import Image

    arr = np.asarray(frame)
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and float(arr.max()) <= 1.0:
            arr = arr * 255.0  # rgb_array renders in [0, 1]
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an RGB frame (H, W, 3), got shape {arr.shape}")
    arr = arr[:, :, :3]
    if arr.shape[:2] == (SIZE, SIZE):
        return np.ascontiguousarray(arr)
    return np.asarray(Image.fromarray(np.ascontiguousarray(arr)).resize((SIZE, SIZE), Image.BILINEAR))


class GymnasiumEnv:
    """One gymnasium env as a :class:`~deltairis.envs.vector.SingleEnv` (64x64 RGB frames, discrete
    actions)."""

    def __init__(
        self,
        env_id: str,
        frame_skip: int = 1,
        max_pool: bool = False,
        max_episode_steps: int | None = None,
        make_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        import gymnasium
        from gymnasium import spaces

        check_positive_int(frame_skip, "frame_skip")
        check_positive_int(max_episode_steps, "max_episode_steps", allow_none=True)
        if max_pool and frame_skip < 2:
            raise ValueError(
                "max_pool needs frame_skip >= 2 (it takes the maximum of the last two frames of a step)"
            )
        kwargs = dict(make_kwargs or {})
        try:
            env = gymnasium.make(env_id, **kwargs)
        except Exception as exc:
            raise ValueError(f"gymnasium cannot make env {env_id!r}: {exc}") from exc
        if not isinstance(env.action_space, spaces.Discrete):
            env.close()
            raise ValueError(
                f"env {env_id!r} has action space {env.action_space}: only Discrete action spaces are "
                "supported "
                "(continuous or multi-discrete actions would need another policy head)"
            )
        self.render = not _is_image_space(env.observation_space)
        if self.render:
            modes = list((env.metadata or {}).get("render_modes", []))
            if "rgb_array" not in modes:
                space = env.observation_space
                env.close()
                raise ValueError(
                    f"env {env_id!r} has observation space {space}, which is not an image "
                    "(uint8 (H, W, 3)), and "
                    f"it does not render rgb_array (render modes: {modes}): no frames to learn from"
                )
            env.close()
            env = gymnasium.make(env_id, **{**kwargs, "render_mode": "rgb_array"})
        self.env = env
        self.env_id = env_id
        self.frame_skip = frame_skip
        self.max_pool = max_pool
        self.max_episode_steps = max_episode_steps
        space = env.action_space
        assert isinstance(space, spaces.Discrete)
        self._start = int(space.start)
        n = int(space.n)
        meanings = getattr(env.unwrapped, "get_action_meanings", None)
        names = list(meanings()) if callable(meanings) else []
        self.action_names = [str(x) for x in names] if len(names) == n else [f"action_{i}" for i in range(n)]
        self._steps = 0

    def _frame(self, obs: object) -> np.ndarray:
        frame = self.env.render() if self.render else obs
        if frame is None:
            raise ValueError(f"env {self.env_id!r} rendered no frame (render_mode rgb_array returned None)")
        return np.asarray(frame)

    def reset(self, seed: int | None = None) -> np.ndarray:
        obs, _ = self.env.reset(seed=seed)
        self._steps = 0
        return to_rgb64(self._frame(obs))

    def step(self, action: int) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
        total = 0.0
        frames: list[np.ndarray] = []
        terminated = truncated = False
        info: dict[str, Any] = {}
        for _ in range(self.frame_skip):
            obs, reward, terminated, truncated, info = self.env.step(self._start + int(action))
            total += float(reward)
            frames.append(self._frame(obs))
            if len(frames) > 2:
                frames.pop(0)
            if terminated or truncated:
                break
        frame = np.maximum(frames[-2], frames[-1]) if self.max_pool and len(frames) == 2 else frames[-1]
        self._steps += 1
        limit = self.max_episode_steps is not None and self._steps >= self.max_episode_steps
        truncated = bool(truncated or (limit and not terminated))
        out = {k: v for k, v in dict(info).items() if k != "truncated"}
        out["truncated"] = truncated
        return to_rgb64(frame), total, bool(terminated) or truncated, out

    def close(self) -> None:
        self.env.close()


class GymnasiumVectorEnv(SyncVectorEnv):
    """``num_envs`` :class:`GymnasiumEnv` stepped in the calling thread (env ``i`` seeded ``seed + i``)."""

    def __init__(
        self,
        num_envs: int,
        seed: int = 0,
        id: str | None = None,
        frame_skip: int = 1,
        max_pool: bool = False,
        max_episode_steps: int | None = None,
        make_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if not id:
            raise ValueError("env id is required for gymnasium envs (env.train.id=<registered id>)")
        check_positive_int(num_envs, "num_envs")
        env_id = str(id)
        super().__init__(
            [
                lambda: GymnasiumEnv(env_id, frame_skip, max_pool, max_episode_steps, make_kwargs)
                for _ in range(num_envs)
            ],
            seed=seed,
        )
        self.env_id = env_id


__all__ = ["GymnasiumEnv", "GymnasiumVectorEnv", "to_rgb64"]
