"""Atari behind the :class:`~deltairis.envs.vector.VectorEnv` interface: a reference path and a fast path.

Settings (docs/algorithm.md section 6, the reference's ``env/atari.yaml``):

===========================  =====================  =====================
setting                      train (``train=True``)  test (``train=False``)
===========================  =====================  =====================
frame size                   64×64 RGB              64×64 RGB
frame skip / max-pool        4, max of last 2       4, max of last 2
random no-ops at reset       1..30 raw frames       1 raw frame
end of life                  ends the episode       ignored
reward clipping              none                   none
time limit (raw frames)      20,000                 108,000
action set                   minimal                minimal
===========================  =====================  =====================

Time limits are counted in raw emulator frames, as in the reference, whose ``TimeLimit`` wraps the raw
``NoFrameskip`` env *inside* the frame-skip wrapper (and counts the reset no-ops): 20,000 frames are
5,000 agent steps, 108,000 frames (30 minutes of play) are 27,000 agent steps. ALE's vector env counts
``max_num_frames_per_episode`` in raw frames too. Pass ``max_episode_frames=`` to change it.

``backend="python"`` (:class:`AtariPythonVectorEnv`) reproduces the reference preprocessing: per raw
frame, PIL bilinear resize of the 210×160 RGB screen to 64×64, THEN the max over the last two resized
frames of the 4 skipped ones (resize-then-max, the reference's wrapper order). No-ops at reset are raw
frames drawn uniformly in ``1..noop_max``. With the life-loss rule (training), a lost life terminates
the episode; the next "episode" continues the same game after one no-op agent step (4 frames, reward
discarded), and only a real game over (or the time limit) resets the emulator. The reference's
two-frame buffer persists across steps, so an episode that ends on the first or second of the 4
skipped frames max-pools with a frame of the previous step; this is reproduced.

``backend="ale_vector"`` (:class:`AleVectorEnv`) is ale-py's C++ ``AtariVectorEnv`` (threads, one batch
call per step), configured as close as it allows: 64×64 RGB, frame skip 4 with max-pooling, no FIRE
reset, no reward clipping, life loss reported as termination without resetting the game
(``life_loss_info=True``) for training, frame-counted time limits. Known differences from the
reference path, measured in ``tests/envs/test_atari.py`` and ``benchmarks/bench_envs.py``:

* pre-processing order and filter: ALE max-pools the two last raw frames and then resizes the result
  with OpenCV, the reference resizes each raw frame with PIL's bilinear filter and then max-pools.
  With aligned emulator states (same actions, same no-op count; 2 envs × 300 random steps, test
  settings) rewards and terminations are identical and the frames differ by a mean absolute pixel
  difference of 0.87 (Breakout), 0.53 (Pong) and 3.2 (MsPacman) intensity levels out of 255, up to
  ~100 levels on a few pixels at sharp moving edges;
* no-ops: ALE draws ``0 .. noop_max - 1`` raw no-op frames (so the test setting ``noop_max=1`` means no
  no-op at all), the reference ``1 .. noop_max``; the random streams differ, so the two paths cannot be
  aligned by seed alone (the tests align them by forcing the python path's no-op count);
* after a lost life ALE continues without the extra no-op agent step of the reference.

``backend="auto"`` is ``python``, the reference's frames and reset rules; ``ale_vector`` is the opt-in
fast path with the differences above.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np

from deltairis.envs.vector import (
    OBS_SHAPE,
    StepResult,
    SyncVectorEnv,
    VectorEnv,
    check_positive_int,
    check_seed,
    empty_step_info,
)

logger = logging.getLogger(__name__)

FRAME_SKIP = 4
TRAIN_NOOP_MAX = 30
TEST_NOOP_MAX = 1
TRAIN_MAX_EPISODE_FRAMES = 20_000
TEST_MAX_EPISODE_FRAMES = 108_000

_GYM_ID = re.compile(r"^(?:ALE/)?([A-Za-z0-9]+?)(?:NoFrameskip)?(?:-v\d+)?$")


def atari_rom_name(env_id: str) -> str:
    """Map ``BreakoutNoFrameskip-v4``, ``ALE/Breakout-v5``, ``Breakout``, ``MsPacman`` or ``ms_pacman`` to
    ALE's ROM name (``breakout``, ``ms_pacman``).

    Raises:
        ValueError: for an id that names no ROM shipped with ale-py, or a gym id with built-in frame
            skipping (``Breakout-v4``), which the frame-skip wrapper would compound.
    """
    from ale_py import roms

    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"id must be a non-empty string, got {env_id!r}")
    known = set(roms.get_all_rom_ids())
    if env_id in known:
        return env_id
    if re.fullmatch(r"[A-Za-z0-9]+-v[0-4]", env_id) and "NoFrameskip" not in env_id:
        raise ValueError(
            f"id {env_id!r} has ALE's own frame skipping; use '{env_id.split('-')[0]}NoFrameskip-v4' "
            "or the ALE name"
        )
    match = _GYM_ID.match(env_id)
    if match is not None:
        # Compare without case and underscores: "UpNDown" -> "upndown" <- "up_n_down".
        by_key = {rom.replace("_", ""): rom for rom in known}
        rom = by_key.get(match.group(1).lower())
        if rom is not None:
            return rom
    raise ValueError(f"id {env_id!r} names no Atari ROM shipped with ale-py (e.g. 'BreakoutNoFrameskip-v4')")


def _resize(frame: np.ndarray) -> np.ndarray:
    from PIL import Image

    img = Image.fromarray(frame).resize((OBS_SHAPE[1], OBS_SHAPE[0]), Image.Resampling.BILINEAR)
    return np.asarray(img)


def _check_settings(noop_max: int, max_episode_frames: int) -> None:
    if not isinstance(noop_max, (int, np.integer)) or noop_max < 1:
        raise ValueError(f"noop_max must be an int >= 1, got {noop_max!r}")
    if not isinstance(max_episode_frames, (int, np.integer)) or max_episode_frames < FRAME_SKIP:
        raise ValueError(f"max_episode_frames must be an int >= {FRAME_SKIP}, got {max_episode_frames!r}")


def _raw_env(rom: str) -> Any:
    """ale-py's gymnasium ``AtariEnv`` with the NoFrameskip-v4 settings: one raw frame per step, no
    sticky actions, minimal action set."""
    from ale_py.env import AtariEnv

    return AtariEnv(
        game=rom, obs_type="rgb", frameskip=1, repeat_action_probability=0.0, full_action_space=False
    )


class AtariPreprocessedEnv:
    """One Atari game with the reference preprocessing, crafter-style ``step`` → ``(obs, reward, done, info)``.

    Args:
        env_id: gym or ALE name of the game.
        train: training settings (life loss ends episodes) or test settings.
        noop_max: no-ops at reset are drawn in ``1..noop_max`` raw frames (default 30 train / 1 test).
        max_episode_frames: time limit in raw frames (default 20,000 train / 108,000 test).
        override_num_noops: force this many no-op frames at every full reset (0 allowed; used to align
            trajectories with ALE's vector env).
        seed: seed of the first reset when ``reset()`` is called without one.

    ``info`` holds ``lives``, ``episode_frame_number`` (raw frames since the last emulator reset),
    ``life_loss``, ``game_over`` and ``truncated``.

    Picklable (checkpoints): the pickle holds the emulator's state with its random generator
    (``cloneState(include_rng=True)``), the ``AtariEnv``'s numpy generator, this wrapper's no-op generator,
    two-frame buffer, lives, frame counter, pending seed and life-loss flag; the restored env continues
    byte for byte.
    """

    def __init__(
        self,
        env_id: str = "BreakoutNoFrameskip-v4",
        train: bool = True,
        noop_max: int | None = None,
        max_episode_frames: int | None = None,
        override_num_noops: int | None = None,
        seed: int | None = None,
    ) -> None:
        self.rom = atari_rom_name(env_id)
        self.train = bool(train)
        self.noop_max = (TRAIN_NOOP_MAX if train else TEST_NOOP_MAX) if noop_max is None else noop_max
        self.max_episode_frames = (
            (TRAIN_MAX_EPISODE_FRAMES if train else TEST_MAX_EPISODE_FRAMES)
            if max_episode_frames is None
            else max_episode_frames
        )
        _check_settings(self.noop_max, self.max_episode_frames)
        self.override_num_noops = override_num_noops
        self.env = _raw_env(self.rom)
        meanings = self.env.get_action_meanings()
        if meanings[0] != "NOOP":
            raise ValueError(f"game {self.rom!r}: action 0 is {meanings[0]}, the no-op resets need NOOP")
        self.action_names = [m.lower() for m in meanings]
        self._rng = np.random.default_rng(seed)
        self._pending_seed = seed
        self._buf = np.zeros((2, *OBS_SHAPE), dtype=np.uint8)  # last two resized frames, kept across steps
        self._lives = 0
        self._frames = 0
        self._continue_game = False  # the last step ended an episode by a life loss only

    @property
    def episode_frame_number(self) -> int:
        """Raw frames since the last emulator reset (no-ops included), the time limit's counter."""
        return self._frames

    def _raw_step(self, action: int) -> tuple[np.ndarray, float, bool]:
        raw, reward, terminal, _, _ = self.env.step(action)
        self._frames += 1
        return raw, float(reward), bool(terminal)

    def _full_reset(self, seed: int | None) -> np.ndarray:
        raw, _ = self.env.reset(seed=seed)
        self._frames = 0
        if self.override_num_noops is not None:
            noops = int(self.override_num_noops)
        else:
            noops = int(self._rng.integers(1, self.noop_max + 1))
        for _ in range(noops):
            raw, _, terminal = self._raw_step(0)
            if terminal:
                raw, _ = self.env.reset()
                self._frames = 0
        return _resize(raw)

    def reset(self, seed: int | None = None) -> np.ndarray:
        if seed is None and self._pending_seed is not None:
            seed = self._pending_seed
        self._pending_seed = None
        if seed is not None:
            self._rng = np.random.default_rng(seed)
            obs = self._full_reset(seed)
        elif self._continue_game:
            # Life lost while training: continue the game after one no-op agent step (reward discarded).
            obs, _, terminal, truncated = self._skip_step(0)
            if terminal or truncated:
                obs = self._full_reset(None)
        else:
            obs = self._full_reset(None)
        self._lives = self.env.ale.lives()
        self._continue_game = False
        return obs

    def _skip_step(self, action: int) -> tuple[np.ndarray, float, bool, bool]:
        total = 0.0
        terminal = truncated = False
        for k in range(FRAME_SKIP):
            raw, reward, terminal = self._raw_step(action)
            total += reward
            truncated = self._frames >= self.max_episode_frames
            if k >= FRAME_SKIP - 2:
                self._buf[k - (FRAME_SKIP - 2)] = _resize(raw)
            if terminal or truncated:
                break  # slots not written this step keep the previous step's frames (reference)
        return self._buf.max(axis=0), total, terminal, truncated and not terminal

    def step(self, action: int) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
        obs, reward, terminal, truncated = self._skip_step(int(action))
        lives = self.env.ale.lives()
        life_loss = self.train and 0 < lives < self._lives
        self._lives = lives
        done = terminal or truncated or life_loss
        self._continue_game = life_loss and not (terminal or truncated)
        info = {
            "lives": lives,
            "episode_frame_number": self._frames,
            "life_loss": life_loss,
            "game_over": terminal,
            "truncated": truncated and not life_loss,
        }
        return obs, reward, done, info

    def close(self) -> None:
        self.env.close()

    def env_state(self) -> dict[str, Any]:
        """The exact state as plain data: ALE's ``cloneState(include_rng=True)`` bytes, the ``AtariEnv``'s
        generator state, and this wrapper's settings, generator, frame buffer and counters."""
        np_random = self.env._np_random
        seed = getattr(self.env, "_np_random_seed", None)
        return {
            "rom": self.rom,
            "train": self.train,
            "noop_max": self.noop_max,
            "max_episode_frames": self.max_episode_frames,
            "override_num_noops": self.override_num_noops,
            "rng": self._rng.bit_generator.state,
            "pending_seed": self._pending_seed,
            "buf": self._buf.copy(),
            "lives": self._lives,
            "frames": self._frames,
            "continue_game": self._continue_game,
            "ale_state": self.env.clone_state(include_rng=True).__getstate__(),  # ALE's serialized bytes
            "ale_np_random": None if np_random is None else np_random.bit_generator.state,
            "ale_np_random_seed": None if seed is None else int(seed),
        }

    def load_env_state(self, state: dict[str, Any]) -> None:
        """Take what :meth:`env_state` returned; this env then continues byte for byte as the saved one."""
        from ale_py import ALEState

        rom = str(state["rom"])
        noop_max, max_frames = int(state["noop_max"]), int(state["max_episode_frames"])
        _check_settings(noop_max, max_frames)
        ale_state = ALEState.__new__(ALEState)
        ale_state.__setstate__(bytes(state["ale_state"]))
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        if rom != self.rom:
            self.env.close()
            self.env = _raw_env(rom)
            self.rom = rom
            self.action_names = [m.lower() for m in self.env.get_action_meanings()]
        self.env.restore_state(ale_state)
        if state["ale_np_random"] is not None:
            np_random = np.random.default_rng()
            np_random.bit_generator.state = state["ale_np_random"]
            self.env._np_random = np_random
        if state["ale_np_random_seed"] is not None:
            self.env._np_random_seed = int(state["ale_np_random_seed"])
        self.train, self.noop_max, self.max_episode_frames = bool(state["train"]), noop_max, max_frames
        noops = state["override_num_noops"]
        self.override_num_noops = None if noops is None else int(noops)
        self._rng = rng
        seed = state["pending_seed"]
        self._pending_seed = None if seed is None else int(seed)
        self._buf[:] = np.asarray(state["buf"], dtype=np.uint8)
        self._lives, self._frames = int(state["lives"]), int(state["frames"])
        self._continue_game = bool(state["continue_game"])

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k != "env"}
        state["_ale_state"] = self.env.clone_state(include_rng=True)  # an ALEState, picklable
        state["_ale_np_random"] = self.env._np_random
        state["_ale_np_random_seed"] = getattr(self.env, "_np_random_seed", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        ale_state = state.pop("_ale_state")
        np_random = state.pop("_ale_np_random")
        np_random_seed = state.pop("_ale_np_random_seed")
        self.__dict__.update(state)
        self.env = _raw_env(self.rom)
        self.env.restore_state(ale_state)
        self.env._np_random = np_random
        if np_random_seed is not None:
            self.env._np_random_seed = np_random_seed


class AtariPythonVectorEnv(SyncVectorEnv):
    """``num_envs`` :class:`AtariPreprocessedEnv` stepped in the calling thread (the reference path).

    Checkpointed exactly (``env_state`` / ``load_env_state``, plain data; also picklable): every env's
    emulator and wrapper state (see :class:`AtariPreprocessedEnv`), with the vector env's episode
    returns, lengths and last observations, so the restored env continues byte for byte.
    """

    state_kind = "atari-python"

    def __init__(
        self,
        num_envs: int,
        seed: int = 0,
        id: str = "BreakoutNoFrameskip-v4",  # shadows the builtin: the reference's config key
        train: bool = True,
        noop_max: int | None = None,
        max_episode_frames: int | None = None,
        override_num_noops: int | None = None,
    ) -> None:
        check_positive_int(num_envs, "num_envs")
        super().__init__(
            [
                lambda: AtariPreprocessedEnv(
                    id,
                    train=train,
                    noop_max=noop_max,
                    max_episode_frames=max_episode_frames,
                    override_num_noops=override_num_noops,
                )
                for _ in range(int(num_envs))
            ],
            seed=seed,
        )
        self.rom = self.envs[0].rom  # type: ignore[attr-defined]
        self.train = bool(train)


def ale_vector_available() -> bool:
    """True when the installed ale-py provides the C++ ``AtariVectorEnv``."""
    try:
        from ale_py.vector_env import AtariVectorEnv  # noqa: F401
    except ImportError:
        return False
    return True


class AleVectorEnv(VectorEnv):
    """ale-py's C++ ``AtariVectorEnv`` behind :class:`~deltairis.envs.vector.VectorEnv` (the fast path).

    Same arguments as :class:`AtariPythonVectorEnv`, plus ``num_threads`` (``None``: one per env, capped
    by ale-py). ``final_info[i]`` holds ALE's per-env step info of the finishing step (``lives``,
    ``frame_number``, ``episode_frame_number``), reported after ALE's own reset of that env.

    Not picklable: ale-py's C++ vector env gives no access to its emulators' states (nor to its no-op
    generators, its frame stacks or the threads' pending work), so it cannot be checkpointed exactly;
    ``pickle.dumps`` raises ``TypeError`` saying so, and a resumed training run restarts its episodes
    (the collector warns). Use ``backend="python"`` (:class:`AtariPythonVectorEnv`) for exact resumes.
    """

    def __init__(
        self,
        num_envs: int,
        seed: int = 0,
        id: str = "BreakoutNoFrameskip-v4",  # shadows the builtin: the reference's config key
        train: bool = True,
        noop_max: int | None = None,
        max_episode_frames: int | None = None,
        num_threads: int | None = None,
    ) -> None:
        from ale_py.env import AtariEnv
        from ale_py.vector_env import AtariVectorEnv

        check_positive_int(num_envs, "num_envs")
        check_positive_int(num_threads, "num_threads", allow_none=True)
        self.rom = atari_rom_name(id)
        self.train = bool(train)
        noop_max = (TRAIN_NOOP_MAX if train else TEST_NOOP_MAX) if noop_max is None else noop_max
        check_seed(seed)
        max_frames = (
            (TRAIN_MAX_EPISODE_FRAMES if train else TEST_MAX_EPISODE_FRAMES)
            if max_episode_frames is None
            else max_episode_frames
        )
        _check_settings(noop_max, max_frames)
        self.num_envs = int(num_envs)
        self._env = AtariVectorEnv(
            self.rom,
            self.num_envs,
            num_threads=0 if num_threads is None else int(num_threads),
            max_num_frames_per_episode=int(max_frames),
            repeat_action_probability=0.0,
            full_action_space=False,
            autoreset_mode="SameStep",
            img_height=OBS_SHAPE[0],
            img_width=OBS_SHAPE[1],
            grayscale=False,
            stack_num=1,
            frameskip=FRAME_SKIP,
            maxpool=True,
            noop_max=int(noop_max),
            episodic_life=False,  # would reset the whole game on a life loss
            life_loss_info=self.train,  # terminate on life loss, keep playing the same game
            reward_clipping=False,
            use_fire_reset=False,
        )
        # Names of the minimal action set, in ALE's order (same as the python path).
        probe = AtariEnv(game=self.rom, frameskip=1, repeat_action_probability=0.0, full_action_space=False)
        self.action_names = [m.lower() for m in probe.get_action_meanings()]
        probe.close()
        self.num_actions = int(self._env.single_action_space.n)
        if self.num_actions != len(self.action_names):
            raise RuntimeError(
                f"ALE vector env has {self.num_actions} actions but the game's minimal set has "
                f"{len(self.action_names)}"
            )
        self._default_seed: int | None = int(seed)
        self._ep_return = np.zeros(self.num_envs, dtype=np.float64)
        self._ep_length = np.zeros(self.num_envs, dtype=np.int64)
        self._needs_reset = True
        self._closed = False
        self.reset_info: dict[str, np.ndarray] = {}  # ALE's info of the last reset (lives, frame numbers)

    @staticmethod
    def _frames(obs: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(obs.reshape(obs.shape[0], *OBS_SHAPE))  # (N, 1, H, W, C) -> (N, H, W, C)

    def reset(self, seed: int | None = None) -> np.ndarray:
        if self._closed:
            raise RuntimeError("reset() called on a closed env")
        seed = check_seed(seed)
        if seed is None and self._needs_reset:
            seed = self._default_seed
        obs, self.reset_info = self._env.reset(seed=None if seed is None else int(seed))
        self._ep_return[:] = 0.0
        self._ep_length[:] = 0
        self._needs_reset = False
        return self._frames(obs)

    def step(self, actions: np.ndarray) -> StepResult:
        acts = self._check_step(actions)
        obs, rew, term, trunc, ale_info = self._env.step(acts)
        env_ids = ale_info["env_id"]
        if not np.array_equal(env_ids, np.arange(self.num_envs)):
            raise RuntimeError(f"ALE vector env answered out of order: env_id {env_ids}")
        rew = np.asarray(rew, dtype=np.float32)
        term = np.asarray(term, dtype=bool)
        trunc = np.asarray(trunc, dtype=bool) & ~term
        done = term | trunc
        self._ep_return += rew
        self._ep_length += 1
        info = empty_step_info(self.num_envs)
        if done.any():
            final = self._frames(ale_info["final_obs"])
            for i in np.flatnonzero(done):
                info["final_obs"][i] = final[i]
                info["episode_return"][i] = self._ep_return[i]
                info["episode_length"][i] = self._ep_length[i]
                info["final_info"][i] = {
                    key: int(ale_info[key][i]) for key in ("lives", "frame_number", "episode_frame_number")
                }
            self._ep_return[done] = 0.0
            self._ep_length[done] = 0
        return self._frames(obs), rew, term, trunc, info

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._env.close()

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError(
            "AleVectorEnv (ale-py's C++ AtariVectorEnv) cannot be pickled: its emulator states are not "
            "accessible, so this backend cannot be checkpointed exactly; use backend='python' "
            "(AtariPythonVectorEnv) for exact resumes"
        )
