"""``deltairis-play``: play, or watch the agent, in the real environment or in its world model.

From a run folder (``scripts/play.sh`` passes ``--run-dir``)::

    deltairis-play              the agent plays in the real environment (test settings)
    deltairis-play -a           the agent plays in its world model (imagination from a real first frame)
    deltairis-play -w           you play in the world model
    deltairis-play -e           replay the episodes saved in media/episodes
    add -h                      a header: step, action, reward, return and the agent's value estimate

With a display (DISPLAY / WAYLAND_DISPLAY, or SDL_VIDEODRIVER set) a pygame window opens. Keys:

    every mode      Enter reset, . pause, , start/stop a recording (MP4 + NPZ in RUN/media/recordings),
                    Esc or q quit
    env, -w, -a     m switches control between you and the agent
                    Crafter: crafter's own keys (WASD move, space do, tab sleep, R/T/F/P place
                    stone/table/furnace/plant, 1-6 make wood/stone/iron pickaxe and sword);
                    Atari: arrows or WASD for the direction, space for FIRE (combined, e.g.
                    up+right+space -> UPRIGHTFIRE, within the game's minimal action set);
                    toy: arrows or WASD; no key: noop
    -e              right/left next/previous frame, page down/up 10 frames forward/back, home first
                    frame, down/up next/previous episode

The world model's memory is flushed as in the reference: its context restarts from the current frame
once full (after max_blocks - 1 = 20 steps with the Crafter preset, 4 s at the default 5 fps).

Without a display, or with --headless, frames are written as animated GIFs and MP4s to
``RUN/media/play/`` (or ``--output``); ``-w`` then reads one action per line from a terminal, or takes
them from --actions, or plays random actions.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger("deltairis.play")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deltairis-play",
        description=__doc__,
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "-w", dest="mode", action="store_const", const="world_model", help="play in the world model"
    )
    mode.add_argument(
        "-a",
        dest="mode",
        action="store_const",
        const="agent_world_model",
        help="watch the agent play in the world model",
    )
    mode.add_argument("-e", dest="mode", action="store_const", const="episodes", help="render saved episodes")
    p.add_argument(
        "-h", "--header", action="store_true", help="draw a header with step, action, reward, return"
    )
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("--run-dir", type=Path, default=Path("."), help="run folder (default: current directory)")
    p.add_argument("--checkpoint", type=Path, help="agent checkpoint (default: RUN/checkpoints/last.pt)")
    p.add_argument(
        "--preset",
        choices=["crafter", "atari", "tiny"],
        default=None,
        help="outside a run folder: model preset of a reference-layout checkpoint (default: crafter)",
    )
    p.add_argument(
        "--env-id", help="outside a run folder, with --preset atari: the game, e.g. BreakoutNoFrameskip-v4"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=200,
        help="maximum steps per rollout (GIF/MP4 export; the window runs until you quit)",
    )
    p.add_argument("--actions", help="comma-separated actions (indices or names) for -w without a terminal")
    p.add_argument("--episodes", type=int, default=4, help="number of saved episodes to render with -e")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--temperature", type=float, default=None, help="policy temperature (default: the run's test one)"
    )
    p.add_argument("--fps", type=int, default=5, help="frames per second (window and videos; default 5)")
    p.add_argument(
        "--scale",
        type=int,
        default=None,
        help="pixel upscaling of the 64x64 frames (default: 8 in the window, 4 in GIFs and MP4s)",
    )
    p.add_argument("--headless", action="store_true", help="write GIFs and MP4s instead of opening a window")
    p.add_argument("--record-dir", type=Path, help="window recordings (default: RUN/media/recordings)")
    p.add_argument(
        "--flush-steps",
        type=int,
        default=None,
        help="window: world-model steps between memory flushes (default: max_blocks - 1)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--output", type=Path, help="GIF path (or folder with -e); the MP4 is written next to it")
    p.set_defaults(mode="env")
    return p


def _header(frame: np.ndarray, text: str, scale: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.fromarray(frame.repeat(scale, 0).repeat(scale, 1))
    canvas = Image.new("RGB", (img.width, img.height + 14), (0, 0, 0))
    canvas.paste(img, (0, 14))
    ImageDraw.Draw(canvas).text((2, 1), text, fill=(255, 255, 255))
    return np.asarray(canvas)


def _frames_to_gif(
    frames: list[np.ndarray], texts: list[str] | None, path: Path, fps: int, scale: int
) -> Path:
    """The GIF at ``path`` and the same frames as an MP4 next to it (``path`` with ``.mp4``); returns the GIF."""
    from deltairis.cli.video import save_mp4
    from deltairis.train.logging_utils import save_gif

    if texts is not None:
        out = np.stack([_header(f, t, scale) for f, t in zip(frames, texts)])
    else:
        out = np.stack(frames).repeat(scale, axis=1).repeat(scale, axis=2)
    save_gif(out, path, fps=fps, scale=1)
    mp4 = save_mp4(out, path.with_suffix(".mp4"), fps=fps)
    logger.info("wrote %s", mp4)
    return path


def _hwc(obs: torch.Tensor) -> np.ndarray:
    """float (3, H, W) in [0, 1] -> uint8 (H, W, 3)."""
    from deltairis.train.logging_utils import to_uint8_hwc

    return to_uint8_hwc(obs)


def _parse_action(token: str, names: list[str], num_actions: int) -> int:
    token = token.strip().lower()
    if token.isdigit() and int(token) < num_actions:
        return int(token)
    if token in names:
        return names.index(token)
    raise ValueError(f"unknown action {token!r}; use 0..{num_actions - 1} or one of {names}")


def play_env(
    agent: Any, cfg: Any, args: argparse.Namespace, device: str
) -> tuple[list[np.ndarray], list[str]]:
    from deltairis.rl.policy import Policy
    from deltairis.train.env_config import make_env

    env = make_env(cfg.env, "test", 1, seed=args.seed)
    names = list(env.action_names)
    temperature = args.temperature if args.temperature is not None else float(cfg.collection.test.temperature)
    frames, texts = [], []
    try:
        obs = env.reset(args.seed)
        policy = Policy(agent.actor_critic, len(names), device, temperature=temperature, seed=args.seed)
        ret = 0.0
        frames.append(obs[0])
        texts.append("step 0")
        for t in range(args.steps):
            x = torch.from_numpy(obs).to(device).permute(0, 3, 1, 2).float().div_(255.0)  # (1, 3, H, W)
            a = int(policy.act(x)[0])
            obs, rew, term, trunc, info = env.step(np.array([a]))
            ret += float(rew[0])
            done = bool(term[0] or trunc[0])
            frames.append(info["final_obs"][0] if done else obs[0])
            texts.append(f"step {t + 1} {names[a]} r={float(rew[0]):+.2f} R={ret:.2f}")
            if done:
                break
    finally:
        env.close()
    return frames, texts


@torch.no_grad()
def play_world_model(
    agent: Any, cfg: Any, args: argparse.Namespace, device: str, with_agent: bool
) -> tuple[list[np.ndarray], list[str]]:
    from deltairis.rl.policy import Policy
    from deltairis.rl.world_model_env import WorldModelEnv
    from deltairis.train.env_config import make_env

    env = make_env(cfg.env, "test", 1, seed=args.seed)
    names = list(env.action_names)
    try:
        obs0 = env.reset(args.seed)
    finally:
        env.close()
    num_actions = agent.config.num_actions
    interactive = not with_agent and sys.stdin.isatty() and args.actions is None
    scripted = (
        []
        if args.actions is None
        else [_parse_action(a, names, num_actions) for a in args.actions.split(",")]
    )
    rng = np.random.default_rng(args.seed)
    temperature = args.temperature if args.temperature is not None else float(cfg.collection.test.temperature)
    x = torch.from_numpy(obs0).to(device).permute(0, 3, 1, 2).float().div_(255.0)  # (1, 3, H, W)
    world = WorldModelEnv(agent.tokenizer, agent.world_model)
    obs = world.reset(x, seed=args.seed)
    policy = Policy(agent.actor_critic, num_actions, device, temperature=temperature, seed=args.seed)
    frames, texts = [obs0[0]], ["step 0 (real frame)"]
    ret = 0.0
    for t in range(args.steps):
        if with_agent:
            a = int(policy.act(obs)[0])
        elif interactive:
            line = input(f"action ({', '.join(f'{i}:{n}' for i, n in enumerate(names))}; q quits)> ")
            if line.strip().lower() in ("q", "quit"):
                break
            try:
                a = _parse_action(line or "0", names, num_actions)
            except ValueError as exc:
                print(exc)
                continue
        elif scripted:
            if t >= len(scripted):
                break
            a = scripted[t]
        else:
            a = int(rng.integers(num_actions))
        obs, rew, end = world.step(torch.tensor([a], device=device))
        r = float(rew[0])
        ret += r
        frames.append(_hwc(obs[0]))
        texts.append(f"step {t + 1} {names[a]} r={r:+.2f} R={ret:.2f}" + (" END" if int(end[0]) else ""))
        if int(end[0]):
            break
    return frames, texts


def play_episodes(run_dir: Path, args: argparse.Namespace) -> list[Path]:
    files = sorted((run_dir / "media" / "episodes").rglob("*.npz"))
    if not files:
        raise FileNotFoundError(f"no saved episodes in {run_dir / 'media' / 'episodes'}")
    out_dir = args.output or run_dir / "media" / "play" / "episodes"
    written = []
    for f in files[-args.episodes :]:
        with np.load(f) as ep:
            obs = np.moveaxis(ep["obs"], 1, -1)  # (T, H, W, 3)
            rew = ep["rew"]
        texts = (
            [f"{f.stem} step {t} R={float(rew[:t].sum()):.2f}" for t in range(obs.shape[0])]
            if args.header
            else None
        )
        written.append(
            _frames_to_gif(list(obs), texts, out_dir / f"{f.parent.name}_{f.stem}.gif", args.fps, args.scale)
        )
    return written


def _window_possible() -> bool:
    """A display to open (DISPLAY / WAYLAND_DISPLAY, or SDL_VIDEODRIVER set) and pygame installed."""
    import importlib.util
    import os

    if not any(os.environ.get(v) for v in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER")):
        return False
    if importlib.util.find_spec("pygame") is None:
        logger.warning("pygame is not installed: writing GIFs and MP4s instead of opening a window")
        return False
    return True


def _episode_files(run_dir: Path) -> list[Path]:
    files = sorted((run_dir / "media" / "episodes").rglob("*.npz"))
    if not files:
        raise FileNotFoundError(f"no saved episodes in {run_dir / 'media' / 'episodes'}")
    return files


def _play_window(run_dir: Path, args: argparse.Namespace, device: str) -> int:
    """The live pygame window (see the module docstring for the keys)."""
    from deltairis.cli import keymaps
    from deltairis.cli import play_window as pw
    from deltairis.cli.common import load_run
    from deltairis.train.env_config import make_env
    from deltairis.train.run_checks import preflight_for_inference

    record_dir = args.record_dir or run_dir / "media" / "recordings"
    scale = 8 if args.scale is None else args.scale
    if args.mode == "episodes":
        files = _episode_files(run_dir)
        source: Any = pw.EpisodeSource(files, _saved_action_names(run_dir))
        keymap = keymaps.episode_keymap()
    else:
        # The same loading options as the GIF export (--preset / --env-id outside a run folder).
        options = {k: getattr(args, k) for k in ("preset", "env_id") if hasattr(args, k)}
        cfg, agent = load_run(run_dir, args.checkpoint, device, **options)
        preflight_for_inference(agent, cfg, device)  # CUDA: a failing fast path falls back to the reference
        temperature = (
            args.temperature if args.temperature is not None else float(cfg.collection.test.temperature)
        )
        env = make_env(cfg.env, "test", 1, seed=args.seed)
        keymap = keymaps.keymap_for(str(cfg.env.name), list(env.action_names))
        if args.mode == "env":
            source = pw.EnvSource(env, agent, device=device, temperature=temperature, seed=args.seed)
        else:
            source = pw.WorldModelSource(
                env,
                agent,
                device=device,
                temperature=temperature,
                seed=args.seed,
                human=args.mode == "world_model",
                flush_steps=args.flush_steps,
            )
    try:
        window = pw.PlayWindow(
            source, keymap, fps=args.fps, scale=scale, header=args.header, record_dir=record_dir
        )
        window.run()
    finally:
        source.close()
    return 0


def _saved_action_names(run_dir: Path) -> list[str] | None:
    """The env's action names for the header of -e (None when the run's config cannot be read)."""
    try:
        from deltairis.train.configuration import load_run_config
        from deltairis.train.env_config import make_env

        env = make_env(load_run_config(run_dir / "config" / "trainer.yaml").env, "test", 1, seed=0)
        try:
            return list(env.action_names)
        finally:
            env.close()
    except Exception as exc:  # noqa: BLE001 - the header falls back to action indices
        logger.info("action names unavailable (%s): showing indices", exc)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    from deltairis.cli.common import load_run
    from deltairis.errors import CheckpointError, ConfigError
    from deltairis.runtime import resolve_device
    from deltairis.train.run_checks import preflight_for_inference

    run_dir = args.run_dir.resolve()
    try:
        device = str(resolve_device(args.device, "--device"))
    except ConfigError as exc:
        print(f"deltairis-play: error: {exc}", file=sys.stderr)
        return 2
    if not args.headless and _window_possible():
        try:
            return _play_window(run_dir, args, device)
        except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as exc:
            print(f"deltairis-play: error: {exc}", file=sys.stderr)
            return 2
    if args.scale is None:
        args.scale = 4
    try:
        if args.mode == "episodes":
            paths = play_episodes(run_dir, args)
        else:
            cfg, agent = load_run(run_dir, args.checkpoint, device, preset=args.preset, env_id=args.env_id)
            preflight_for_inference(agent, cfg, device)  # CUDA: failing fast paths fall back
            if args.mode == "env":
                frames, texts = play_env(agent, cfg, args, device)
            else:
                frames, texts = play_world_model(
                    agent, cfg, args, device, with_agent=args.mode == "agent_world_model"
                )
            path = args.output or run_dir / "media" / "play" / f"{args.mode}.gif"
            paths = [_frames_to_gif(frames, texts if args.header else None, path, args.fps, args.scale)]
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as exc:
        print(f"deltairis-play: error: {exc}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
