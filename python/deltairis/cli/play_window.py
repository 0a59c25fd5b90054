"""The live play window of ``deltairis-play`` (pygame).

:class:`PlayWindow` runs a game loop over a *source*: :class:`EnvSource` (the real env),
:class:`WorldModelSource` (the world model, imagining from a real first frame) or
:class:`EpisodeSource` (saved episodes). A source has ``reset()``, ``step(action)``, ``frame()`` and
``header_lines()``; the window maps the keys of each frame to an action through a
:class:`~deltairis.cli.keymaps.Keymap`, steps the source (unless paused), and draws the frame scaled
by ``scale`` under an optional header.

Keys in every mode: Enter resets, ``.`` pauses, ``,`` starts / stops a recording, Esc or q quits, and
``m`` hands control between you and the agent where both can act. A recording is written to
``record_dir`` as ``<time>.mp4`` (what the window showed) and ``<time>.npz`` (``frames`` (T, H, W, 3)
uint8 without header, ``actions`` (T,) with -1 where no step led to the frame, ``rewards`` (T,)).

World-model memory: as in the reference, the world model's context (its KV cache) is restarted from
the current frame once it is full, i.e. after ``max_blocks - 1`` steps (20 steps with the Crafter and
tiny presets, 25 with Atari; 4-5 s at the default 5 fps), so each imagined step stays cheap.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deltairis.cli import keymaps
from deltairis.cli.keymaps import Keymap
from deltairis.rl.policy import Policy
from deltairis.rl.world_model_env import WorldModelEnv

pygame = keymaps.pygame
logger = logging.getLogger("deltairis.play")

HEADER_LINES = 3
FONT_SIZE = 16
LINE_HEIGHT = 16


def header_height(enabled: bool) -> int:
    return HEADER_LINES * LINE_HEIGHT + 6 if enabled else 0


def display_available() -> bool:
    """True when pygame can open a window: a DISPLAY / WAYLAND_DISPLAY, or SDL_VIDEODRIVER set explicitly."""
    return any(os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER"))


def _to_float(obs: np.ndarray, device: str | torch.device) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(obs)).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def _agent_policy(agent: Any, device: str | torch.device, temperature: float, seed: int) -> Policy:
    """The agent's policy on one stream of frames. The window observes every new frame (so the value on
    screen is that of the frame shown) and samples only when the agent is in control."""
    return Policy(agent.actor_critic, agent.config.num_actions, device, temperature=temperature, seed=seed)


class _Source:
    """Shared bookkeeping: step counter, last action and reward, return, who is in control."""

    mode = "?"
    can_switch = False

    def __init__(self, action_names: list[str], human: bool) -> None:
        self.action_names = list(action_names)
        self.human = human
        self.t = 0
        self.episode = 0
        self.ret = 0.0
        self.last_action: int | None = None
        self.last_reward = 0.0
        self.policy: Policy | None = None
        self.actions_taken: list[
            int
        ] = []  # every action passed to the env / world model (for tests and logs)

    def toggle_control(self) -> bool:
        if self.can_switch:
            self.human = not self.human
        return self.can_switch

    def _start_episode(self) -> None:
        self.t, self.ret, self.last_action, self.last_reward = 0, 0.0, None, 0.0

    def _choose(self, action: int | None) -> int:
        """Your action (noop when none) or the agent's."""
        if self.human or self.policy is None:
            return 0 if action is None else int(action)
        return int(self.policy.sample()[0])

    def _record(self, a: int, r: float) -> None:
        self.actions_taken.append(a)
        self.last_action, self.last_reward = a, r
        self.ret += r
        self.t += 1

    def controller(self) -> str:
        return "you" if self.human or self.policy is None else "agent"

    def header_lines(self) -> list[str]:
        act = "-" if self.last_action is None else self.action_names[self.last_action]
        value = (
            ""
            if self.policy is None or self.policy.value is None
            else f"  V {float(self.policy.value[0]):+.2f}"
        )
        return [
            f"{self.mode}  ep {self.episode}  [{self.controller()}]",
            f"step {self.t}  {act}",
            f"r {self.last_reward:+.2f}  R {self.ret:.2f}{value}",
        ]


class EnvSource(_Source):
    """The real env (a vector env with one env); the agent acts unless ``human`` (``m`` switches)."""

    mode = "env"

    def __init__(
        self,
        env: Any,
        agent: Any | None = None,
        *,
        device: str | torch.device = "cpu",
        temperature: float = 1.0,
        seed: int = 0,
        human: bool = False,
    ) -> None:
        super().__init__(list(env.action_names), human or agent is None)
        self.env = env
        self.device = device
        self.seed = int(seed)
        self.can_switch = agent is not None
        self.policy = None if agent is None else _agent_policy(agent, device, temperature, seed)
        self.obs: np.ndarray | None = None
        self.reset()

    def reset(self) -> None:
        self.obs = self.env.reset(self.seed + self.episode)
        self._new_episode()

    def _new_episode(self) -> None:
        self._start_episode()
        if self.policy is not None:
            self.policy.reset()
            self.policy.observe(_to_float(self.obs, self.device))

    def step(self, action: int | None) -> None:
        a = self._choose(action)
        obs, rew, term, trunc, _ = self.env.step(np.array([a], dtype=np.int64))
        self._record(a, float(rew[0]))
        self.obs = obs
        if bool(term[0] or trunc[0]):  # the vector env has already reset this env: a new episode starts
            logger.info("episode %d: return %.2f in %d steps", self.episode, self.ret, self.t)
            self.episode += 1
            self._new_episode()
        elif self.policy is not None:
            self.policy.observe(_to_float(obs, self.device))

    def frame(self) -> np.ndarray:
        return self.obs[0]

    def close(self) -> None:
        self.env.close()


class WorldModelSource(_Source):
    """The world model, started from a real first frame of ``env``; you act unless ``human`` is False.

    The world model's memory is flushed every ``flush_steps`` steps (default: its context length in
    blocks minus one, when the reference restarts its full KV cache): the context restarts from the
    current frame, with the random streams running on.
    """

    mode = "world model"
    can_switch = True

    def __init__(
        self,
        env: Any,
        agent: Any,
        *,
        device: str | torch.device = "cpu",
        temperature: float = 1.0,
        seed: int = 0,
        human: bool = True,
        flush_steps: int | None = None,
    ) -> None:
        super().__init__(list(env.action_names), human)
        self.env = env
        self.agent = agent
        self.device = device
        self.seed = int(seed)
        self.policy = _agent_policy(agent, device, temperature, seed)
        max_blocks = int(agent.world_model.config.transformer.max_blocks)
        self.flush_steps = max(1, max_blocks - 1) if flush_steps is None else int(flush_steps)
        self.flushes = 0
        self.since_flush = 0
        self.wm_env = WorldModelEnv(agent.tokenizer, agent.world_model)  # the imagined env
        self.reset()

    def _burn_in(self, x: torch.Tensor) -> None:
        """Restart the world model's context from frames (1, 3, H, W). After the first burn-in the sampler's
        counter keeps running: no stream is drawn twice."""
        self.wm_env.reset(x, seed=self.seed if self.wm_env.state is None else None)
        self.since_flush = 0

    def reset(self) -> None:
        self._burn_in(_to_float(self.env.reset(self.seed + self.episode), self.device))
        self._start_episode()
        self.policy.reset()
        self.policy.observe(self.wm_env.obs)

    def step(self, action: int | None) -> None:
        if self.since_flush >= self.flush_steps:
            self._burn_in(self.wm_env.obs)
            self.flushes += 1
        a = self._choose(action)
        obs, rew, end = self.wm_env.step(torch.tensor([a], device=self.device))
        self.since_flush += 1
        self._record(a, float(rew[0]))
        if int(end[0]):
            logger.info("imagined episode %d ended: return %.2f in %d steps", self.episode, self.ret, self.t)
            self.episode += 1
            self.reset()
        else:
            self.policy.observe(obs)

    def frame(self) -> np.ndarray:
        from deltairis.train.logging_utils import to_uint8_hwc

        return to_uint8_hwc(self.wm_env.obs[0])

    def header_lines(self) -> list[str]:
        lines = super().header_lines()
        lines[0] += f"  mem {self.since_flush}/{self.flush_steps}"
        return lines

    def close(self) -> None:
        self.env.close()


class EpisodeSource(_Source):
    """Saved episodes (NPZ files with obs (T, 3, H, W) uint8, act, rew): keys move through frames and files."""

    mode = "episodes"

    def __init__(self, files: list[Path], action_names: list[str] | None = None) -> None:
        if not files:
            raise FileNotFoundError("no saved episodes")
        super().__init__(list(keymaps.EPISODE_COMMANDS), human=True)
        self.files = list(files)
        self.env_action_names = action_names
        self.index = 0
        self._load()

    def _load(self) -> None:
        with np.load(self.files[self.index]) as ep:
            self.obs = np.moveaxis(ep["obs"], 1, -1)  # (T, H, W, 3)
            self.act = np.asarray(ep["act"]).astype(np.int64)
            self.rew = np.asarray(ep["rew"], dtype=np.float64)
        self.t = 0
        self.episode = self.index

    def reset(self) -> None:
        self.t = 0

    def step(self, action: int | None) -> None:
        cmd = keymaps.EPISODE_COMMANDS[0 if action is None else action]
        n = len(self.obs)
        if cmd == "previous_frame":
            self.t = max(0, self.t - 1)
        elif cmd == "next_frame":
            self.t = min(n - 1, self.t + 1)
        elif cmd == "back_10":
            self.t = max(0, self.t - 10)
        elif cmd == "forward_10":
            self.t = min(n - 1, self.t + 10)
        elif cmd == "first_frame":
            self.t = 0
        elif cmd in ("previous_episode", "next_episode"):
            self.index = (self.index + (1 if cmd == "next_episode" else -1)) % len(self.files)
            self._load()
        if action:
            self.actions_taken.append(int(action))

    def frame(self) -> np.ndarray:
        return self.obs[self.t]

    def _act_name(self, t: int) -> str:
        if t >= len(self.act):
            return "-"
        a = int(self.act[t])
        names = self.env_action_names
        return names[a] if names is not None and 0 <= a < len(names) else str(a)

    def header_lines(self) -> list[str]:
        f = self.files[self.index]
        r = float(self.rew[self.t]) if self.t < len(self.rew) else 0.0
        return [
            f"{f.parent.name}/{f.stem}"[-40:],
            f"episode {self.index + 1}/{len(self.files)}  frame {self.t}/{len(self.obs) - 1}",
            f"next {self._act_name(self.t)}  r {r:+.2f}  R {float(self.rew[: self.t].sum()):.2f}",
        ]

    def close(self) -> None:
        pass


class PlayWindow:
    """A pygame window over a source. ``tick()`` runs one frame; ``run()`` loops at ``fps`` until quit."""

    def __init__(
        self,
        source: Any,
        keymap: Keymap,
        *,
        fps: int = 5,
        scale: int = 8,
        header: bool = True,
        record_dir: Path = Path("media/recordings"),
        caption: str = "deltairis-play",
    ) -> None:
        self.source = source
        self.keymap = keymap
        self.fps = int(fps)
        self.scale = int(scale)
        self.header = bool(header)
        self.record_dir = Path(record_dir)
        self.caption = caption
        self.paused = False
        self.recording = False
        self.running = False
        self.frames_drawn = 0
        self.saved: list[Path] = []
        self._rec_frames: list[np.ndarray] = []
        self._rec_screens: list[np.ndarray] = []
        self._rec_actions: list[int] = []
        self._rec_rewards: list[float] = []
        self.screen: Any = None
        self.font: Any = None

    # -- setup --------------------------------------------------------------------------------------
    @property
    def size(self) -> tuple[int, int]:
        h, w = self.source.frame().shape[:2]
        return w * self.scale, h * self.scale + header_height(self.header)

    def open(self) -> PlayWindow:
        pygame.display.init()  # display and fonts only: no audio device is opened
        pygame.font.init()
        pygame.display.set_caption(self.caption)
        self.screen = pygame.display.set_mode(self.size)
        self.font = pygame.font.Font(None, FONT_SIZE)
        self.running = True
        self.draw()
        return self

    def close(self) -> None:
        if self.recording:
            self.toggle_recording()
        self.running = False
        pygame.display.quit()

    # -- drawing ------------------------------------------------------------------------------------
    def status(self) -> str:
        flags = []
        if self.paused:
            flags.append("PAUSED")
        if self.recording:
            flags.append("REC")
        return "  ".join(flags)

    def compose(self) -> np.ndarray:
        """What the window shows now, uint8 (H, W, 3): the header over the frame scaled by ``scale``."""
        frame = self.source.frame()
        big = frame.repeat(self.scale, 0).repeat(self.scale, 1)
        if not self.header:
            return np.ascontiguousarray(big)
        w, hh = big.shape[1], header_height(True)
        surf = pygame.Surface((w, hh))
        surf.fill((0, 0, 0))
        lines = list(self.source.header_lines())
        status = self.status()
        for i, text in enumerate(lines[:HEADER_LINES]):
            surf.blit(self.font.render(text, True, (255, 255, 255)), (4, 3 + i * LINE_HEIGHT))
        if status:
            img = self.font.render(status, True, (255, 80, 80))
            surf.blit(img, (w - img.get_width() - 4, 3 + LINE_HEIGHT))
        head = pygame.surfarray.array3d(surf).transpose(1, 0, 2)
        return np.concatenate([head, big], axis=0)

    def draw(self) -> np.ndarray:
        img = self.compose()
        pygame.surfarray.blit_array(self.screen, img.transpose(1, 0, 2))
        pygame.display.flip()
        self.frames_drawn += 1
        return img

    def screen_array(self) -> np.ndarray:
        """The window surface, uint8 (H, W, 3)."""
        return pygame.surfarray.array3d(self.screen).transpose(1, 0, 2).copy()

    # -- recording ----------------------------------------------------------------------------------
    def _capture(self, img: np.ndarray, action: int) -> None:
        self._rec_frames.append(np.array(self.source.frame(), dtype=np.uint8))
        self._rec_screens.append(img)
        self._rec_actions.append(action)
        self._rec_rewards.append(float(getattr(self.source, "last_reward", 0.0)) if action >= 0 else 0.0)

    def toggle_recording(self) -> list[Path]:
        """Start a recording (from the frame on screen), or stop it and write its MP4 and NPZ."""
        if not self.recording:
            self.recording = True
            self._rec_frames, self._rec_screens, self._rec_actions, self._rec_rewards = [], [], [], []
            self._capture(self.compose(), -1)
            logger.info("recording started")
            return []
        from deltairis.cli.video import save_mp4

        self.recording = False
        stem = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        k = 0
        while (self.record_dir / f"{stem}_{k:02d}.mp4").exists() or (
            self.record_dir / f"{stem}_{k:02d}.npz"
        ).exists():
            k += 1
        base = self.record_dir / f"{stem}_{k:02d}"
        self.record_dir.mkdir(parents=True, exist_ok=True)
        npz = base.with_suffix(".npz")
        np.savez_compressed(
            npz,
            frames=np.stack(self._rec_frames),
            actions=np.array(self._rec_actions, np.int64),
            rewards=np.array(self._rec_rewards, np.float32),
        )
        mp4 = save_mp4(self._rec_screens, base.with_suffix(".mp4"), fps=self.fps)
        self._rec_frames, self._rec_screens = [], []
        self.saved += [mp4, npz]
        logger.info("recording saved: %s (%s)", mp4, npz.name)
        print(f"recording: {mp4} {npz}")
        return [mp4, npz]

    # -- the loop -----------------------------------------------------------------------------------
    def tick(self) -> bool:
        """One frame: handle the pending events, step the source unless paused, draw. False once quitting."""
        if not self.running:
            return False
        pressed: list[int] = []
        quit_ = reset = False
        for event in pygame.event.get():
            if event.type == pygame.QUIT:
                quit_ = True
            elif event.type == pygame.KEYDOWN:
                k = event.key
                if k in keymaps.QUIT_KEYS:
                    quit_ = True
                elif k in keymaps.RESET_KEYS:
                    reset = True
                elif k == keymaps.PAUSE_KEY:
                    self.paused = not self.paused
                elif k == keymaps.RECORD_KEY:
                    self.toggle_recording()
                elif k == keymaps.SWITCH_KEY:
                    if self.source.toggle_control():
                        logger.info("control: %s", self.source.controller())
                else:
                    pressed.append(k)
        if quit_:
            self.close()
            return False
        stepped = None
        if reset:
            self.source.reset()
            stepped = -1
        elif not self.paused:
            held = pygame.key.get_pressed()
            keys = [k for k in self.keymap.mapped_keys if held[k]] + pressed
            action = self.keymap.action(keys)
            self.source.step(action)
            stepped = getattr(self.source, "last_action", None)
            stepped = 0 if stepped is None else int(stepped)
            if isinstance(self.source, EpisodeSource):
                stepped = 0 if action is None else int(action)
        img = self.draw()
        if self.recording and stepped is not None:
            self._capture(img, stepped)
        return True

    def run(self, max_frames: int | None = None) -> int:
        """Loop at ``fps`` frames per second until Esc / q / the window closes; returns the frames run."""
        if not self.running:
            self.open()
        for key, name in self.keymap.describe():
            print(f"  {key}: {name}")
        clock = pygame.time.Clock()
        n = 0
        while (max_frames is None or n < max_frames) and self.tick():
            n += 1
            clock.tick(self.fps)
        if self.running:
            self.close()
        return n


__all__ = [
    "EnvSource",
    "EpisodeSource",
    "PlayWindow",
    "WorldModelSource",
    "display_available",
    "header_height",
]
