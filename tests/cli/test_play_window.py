"""The live play window of deltairis-play: keys -> actions, reset / pause / quit / record, drawing.

The window runs under SDL's dummy video driver; key presses are posted to pygame's event queue and
each ``tick()`` is one frame. One test opens a real X window under Xvfb (skipped without ``Xvfb``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pygame = pytest.importorskip("pygame")

from deltairis.agent import Agent, make_agent_config
from deltairis.cli import keymaps
from deltairis.cli import play as play_cli
from deltairis.cli import play_window as pw
from deltairis.cli.video import read_mp4
from deltairis.envs.toy import ACTION_NAMES, ToyVectorEnv
from deltairis.rl.world_model_env import WorldModelEnv

K = pygame


@pytest.fixture(scope="module")
def agent() -> Agent:
    torch.manual_seed(0)
    a = Agent(make_agent_config("tiny", len(ACTION_NAMES))).eval()
    with torch.no_grad():  # an untrained end head ends half the imagined steps: make it never end
        last = a.world_model.head_ends.head_module[2]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([20.0, -20.0]))
    return a


@pytest.fixture
def dummy_video(monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    yield
    pygame.display.quit()


def _post(*keys: int) -> None:
    for k in keys:
        pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=k, mod=0, unicode="", scancode=0))


def _tick(window: pw.PlayWindow, *keys: int) -> bool:
    _post(*keys)
    return window.tick()


def _toy_window(source, tmp_path: Path, **kw) -> pw.PlayWindow:
    kw.setdefault("scale", 2)
    kw.setdefault("header", True)
    return pw.PlayWindow(source, keymaps.keymap_for("toy", ACTION_NAMES), record_dir=tmp_path / "rec", **kw).open()


# -- keymaps --------------------------------------------------------------------------------------------
def test_keymaps_per_env_family() -> None:
    import crafter

    names = crafter.Env().action_names
    km = keymaps.keymap_for("crafter", names)
    expect = {K.K_a: "move_left", K.K_d: "move_right", K.K_w: "move_up", K.K_s: "move_down", K.K_SPACE: "do",
              K.K_TAB: "sleep", K.K_t: "place_table", K.K_1: "make_wood_pickaxe", K.K_6: "make_iron_sword"}
    for key, name in expect.items():
        assert names[km.action([key])] == name
    assert len(km.keys) == 16 and km.action([]) is None and km.action([K.K_UP]) is None

    breakout = ["noop", "fire", "right", "left"]
    km = keymaps.keymap_for("atari", breakout)
    assert breakout[km.action([K.K_SPACE])] == "fire"
    assert breakout[km.action([K.K_RIGHT])] == "right" and breakout[km.action([K.K_a])] == "left"
    assert breakout[km.action([K.K_UP, K.K_SPACE])] == "fire"  # no upfire in Breakout
    assert km.action([K.K_UP]) is None
    full = ["noop", "fire", "up", "right", "left", "down", "upright", "upleft", "downright", "downleft", "upfire",
            "rightfire", "leftfire", "downfire", "uprightfire", "upleftfire", "downrightfire", "downleftfire"]
    km = keymaps.keymap_for("atari", [n.upper() for n in full])
    assert full[km.action([K.K_UP, K.K_RIGHT, K.K_SPACE])] == "uprightfire"
    assert full[km.action([K.K_s, K.K_a])] == "downleft"
    assert full[km.action([K.K_RIGHT, K.K_SPACE])] == "rightfire"

    km = keymaps.keymap_for("toy", ACTION_NAMES)
    for keys, name in (([K.K_UP], "up"), ([K.K_s], "down"), ([K.K_LEFT], "left"), ([K.K_d], "right"),
                       ([K.K_UP, K.K_RIGHT], "right")):  # last key wins
        assert ACTION_NAMES[km.action(keys)] == name
    assert not set(km.keys) & keymaps.CONTROL_KEYS


# -- keys reach the env and the world model --------------------------------------------------------------
KEYS = [K.K_RIGHT, K.K_UP, K.K_DOWN, K.K_LEFT, K.K_w, K.K_s, K.K_a, K.K_d, None]
ACTIONS = [4, 1, 2, 3, 1, 2, 3, 4, 0]


def test_keys_reach_the_env_as_actions(dummy_video, agent, tmp_path) -> None:
    src = pw.EnvSource(ToyVectorEnv(1, seed=0), agent, seed=0, human=True)
    window = _toy_window(src, tmp_path)
    ref = ToyVectorEnv(1, seed=0)
    ref.reset(0)
    for key, a in zip(KEYS, ACTIONS):
        assert _tick(window, *([] if key is None else [key]))
        obs = ref.step(np.array([a]))[0]
        np.testing.assert_array_equal(src.frame(), obs[0])  # the env received the action
    assert src.actions_taken == ACTIONS
    assert src.header_lines()[1] == f"step {len(ACTIONS)}  noop"
    window.close()


def test_m_switches_between_you_and_the_agent_in_the_env(dummy_video, agent, tmp_path) -> None:
    alone = pw.EnvSource(ToyVectorEnv(1, seed=0), agent, seed=0)
    for _ in range(4):
        alone.step(None)
    src = pw.EnvSource(ToyVectorEnv(1, seed=0), agent, seed=0)
    window = _toy_window(src, tmp_path)
    assert src.controller() == "agent"
    # The value estimate shown is the critic's on the frame on screen.
    x = torch.from_numpy(src.frame()).permute(2, 0, 1)[None].float() / 255
    _, v, _ = agent.actor_critic.step(x, agent.actor_critic.initial_state(1, "cpu"))
    assert src.header_lines()[2].endswith(f"V {float(v.detach()[0]):+.2f}")
    for _ in range(4):
        _tick(window, K.K_LEFT)  # ignored while the agent plays
    assert src.actions_taken == alone.actions_taken
    _tick(window, K.K_m)
    assert src.controller() == "you" and src.actions_taken[-1] == 0
    _tick(window, K.K_RIGHT)
    _tick(window, K.K_m, K.K_RIGHT)  # back to the agent in the same frame: the key is ignored
    assert src.controller() == "agent"
    assert src.actions_taken[4:6] == [0, 4]
    assert "[agent]" in src.header_lines()[0]
    window.close()


def _wm_reference(agent, actions: list[int], seed: int = 0) -> list[np.ndarray]:
    from deltairis.train.logging_utils import to_uint8_hwc

    obs = ToyVectorEnv(1, seed=seed).reset(seed)
    x = torch.from_numpy(obs).permute(0, 3, 1, 2).float().div(255)
    env = WorldModelEnv(agent.tokenizer, agent.world_model)
    env.reset(x, seed=seed)
    frames = []
    for a in actions:
        obs, _, _ = env.step(torch.tensor([a]))
        frames.append(to_uint8_hwc(obs[0]))
    return frames


@pytest.mark.parametrize("with_agent", [False, True])
def test_play_gif_export_steps_the_world_model_env(agent, monkeypatch, with_agent: bool) -> None:
    """deltairis-play -w / -a without a window: the frames are those of a WorldModelEnv reset on the env's
    first frame and stepped with the scripted actions (-w) or the agent's policy (-a)."""
    import types

    import deltairis.train.env_config as env_config
    from deltairis.rl.policy import Policy
    from deltairis.train.logging_utils import to_uint8_hwc

    monkeypatch.setattr(env_config, "make_env", lambda env_cfg, split, n, seed: ToyVectorEnv(n, seed=seed))
    test = types.SimpleNamespace(temperature=1.0)
    cfg = types.SimpleNamespace(env=None, collection=types.SimpleNamespace(test=test))
    args = types.SimpleNamespace(actions="1,2,3,4,0,2", seed=3, temperature=None, steps=6)
    frames, texts = play_cli.play_world_model(agent, cfg, args, "cpu", with_agent=with_agent)
    assert len(frames) == 7 and texts[0] == "step 0 (real frame)"
    obs = ToyVectorEnv(1, seed=3).reset(3)
    np.testing.assert_array_equal(frames[0], obs[0])
    env = WorldModelEnv(agent.tokenizer, agent.world_model)
    x = env.reset(torch.from_numpy(obs).permute(0, 3, 1, 2).float().div(255), seed=3)
    policy = Policy(agent.actor_critic, len(ACTION_NAMES), "cpu", temperature=1.0, seed=3)
    for t, a in enumerate([1, 2, 3, 4, 0, 2]):
        a = int(policy.act(x)[0]) if with_agent else a
        x, _, _ = env.step(torch.tensor([a]))
        np.testing.assert_array_equal(frames[t + 1], to_uint8_hwc(x[0]))
        assert texts[t + 1].startswith(f"step {t + 1} {ACTION_NAMES[a]} ")


def test_keys_reach_the_world_model_and_m_hands_over(dummy_video, agent, tmp_path) -> None:
    src = pw.WorldModelSource(ToyVectorEnv(1, seed=0), agent, seed=0, human=True)
    window = _toy_window(src, tmp_path)
    ref = _wm_reference(agent, ACTIONS)
    for key, expected in zip(KEYS, ref):
        _tick(window, *([] if key is None else [key]))
        np.testing.assert_array_equal(src.frame(), expected)  # the imagined frame of that action
    assert src.actions_taken == ACTIONS
    other = _wm_reference(agent, [0, 2, 2])[-1]
    assert not np.array_equal(ref[2], other)  # the actions do change the imagined frames
    _tick(window, K.K_m)
    _tick(window, K.K_RIGHT)
    assert src.controller() == "agent" and len(src.actions_taken) == len(ACTIONS) + 2
    window.close()


def test_world_model_memory_is_flushed(dummy_video, agent, tmp_path) -> None:
    src = pw.WorldModelSource(ToyVectorEnv(1, seed=0), agent, seed=0)
    assert src.flush_steps == agent.world_model.config.transformer.max_blocks - 1 == 20
    src = pw.WorldModelSource(ToyVectorEnv(1, seed=0), agent, seed=0, flush_steps=3)
    window = _toy_window(src, tmp_path)
    block = agent.world_model.config.transformer.tokens_per_block
    offsets = []
    for _ in range(7):
        _tick(window, K.K_RIGHT)
        offsets.append(int(src.wm_env.state.offset))
    assert src.flushes == 2 and src.since_flush == 1
    # one step since the context restarted from the current frame
    assert src.wm_env.state.cache.size == block - 1
    assert offsets == sorted(set(offsets))  # the random streams run on across flushes
    assert "mem 1/3" in src.header_lines()[0]
    window.close()


# -- reset, pause, quit, record ------------------------------------------------------------------------
def test_reset_pause_and_quit(dummy_video, agent, tmp_path) -> None:
    env = ToyVectorEnv(1, seed=0)
    src = pw.EnvSource(env, agent, seed=0, human=True)
    first = src.frame().copy()
    window = _toy_window(src, tmp_path)
    _tick(window, K.K_RIGHT)
    _tick(window, K.K_DOWN)
    assert src.t == 2
    _tick(window, K.K_RETURN)
    assert src.t == 0 and src.ret == 0.0 and src.actions_taken == [4, 2]
    np.testing.assert_array_equal(src.frame(), first)
    _tick(window, K.K_PERIOD, K.K_RIGHT)
    _tick(window, K.K_LEFT)
    assert window.paused and src.t == 0 and src.actions_taken == [4, 2]
    header_paused = window.screen_array()[: pw.header_height(True)]
    _tick(window, K.K_PERIOD)
    assert not window.paused and src.t == 1
    assert not np.array_equal(header_paused, window.screen_array()[: pw.header_height(True)])
    assert _tick(window, K.K_q) is False and not window.running
    window = _toy_window(src, tmp_path)
    assert _tick(window, K.K_ESCAPE) is False
    window = _toy_window(src, tmp_path)
    pygame.event.post(pygame.event.Event(pygame.QUIT))
    assert window.tick() is False
    window = _toy_window(src, tmp_path, fps=1000)
    n = src.t
    assert window.run(max_frames=3) == 3 and src.t == n + 3


def test_recording_writes_mp4_and_npz(dummy_video, agent, tmp_path) -> None:
    src = pw.EnvSource(ToyVectorEnv(1, seed=0), agent, seed=0, human=True)
    window = _toy_window(src, tmp_path, scale=2)
    _tick(window, K.K_RIGHT)
    shown = []
    _tick(window, K.K_COMMA)  # starts with the frame on screen, then this frame's step
    shown.append(window.screen_array())
    for key in (K.K_RIGHT, K.K_DOWN, K.K_LEFT):
        _tick(window, key)
        shown.append(window.screen_array())
    assert window.recording and "REC" in window.status()
    _tick(window, K.K_COMMA)
    assert not window.recording
    mp4, npz = window.saved
    assert mp4.suffix == ".mp4" and npz.suffix == ".npz" and mp4.parent == tmp_path / "rec"
    with np.load(npz) as rec:
        assert rec["frames"].shape == (5, 64, 64, 3)
        assert rec["actions"].tolist() == [-1, 0, 4, 2, 3]
        np.testing.assert_array_equal(rec["frames"][-1], np.asarray(shown[-1][-128::2, ::2]))
    video = read_mp4(mp4)
    w, h = window.size
    assert video.shape == (5, h, w, 3)
    assert np.abs(video[1:].astype(float) - np.stack(shown).astype(float)).mean() < 6  # lossy H.264
    # Quitting while recording saves the recording.
    _tick(window, K.K_COMMA)
    _tick(window, K.K_UP)
    _tick(window, K.K_ESCAPE)
    assert len(window.saved) == 4
    with np.load(window.saved[-1]) as rec:
        assert rec["frames"].shape[0] == 3


# -- drawing -------------------------------------------------------------------------------------------
def test_window_shows_the_scaled_frame_under_the_header(dummy_video, agent, tmp_path) -> None:
    src = pw.EnvSource(ToyVectorEnv(1, seed=0), agent, seed=0, human=True)
    window = _toy_window(src, tmp_path, scale=3)
    hh = pw.header_height(True)
    assert window.size == (192, 192 + hh)
    for key in (K.K_RIGHT, K.K_UP):
        _tick(window, key)
        screen = window.screen_array()
        assert screen.shape == (192 + hh, 192, 3)
        np.testing.assert_array_equal(screen[hh:], src.frame().repeat(3, 0).repeat(3, 1))
        np.testing.assert_array_equal(screen, window.compose())
        assert (screen[:hh] == 255).all(axis=-1).sum() > 100  # white header text
    header_before = screen[:hh].copy()
    _tick(window, K.K_DOWN)
    assert not np.array_equal(header_before, window.screen_array()[:hh])  # step and action changed
    window.close()
    window = _toy_window(src, tmp_path, scale=2, header=False)
    _tick(window, K.K_LEFT)
    np.testing.assert_array_equal(window.screen_array(), src.frame().repeat(2, 0).repeat(2, 1))
    window.close()


# -- saved episodes ------------------------------------------------------------------------------------
def _episodes(root: Path, n: int = 2, t: int = 15) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        p = root / "media" / "episodes" / "test" / f"epoch_00001_episode_{i:06d}.npz"
        p.parent.mkdir(parents=True, exist_ok=True)
        np.savez(p, obs=rng.integers(0, 256, (t, 3, 64, 64), dtype=np.uint8), act=rng.integers(0, 5, t),
                 rew=np.ones(t, np.float32), end=np.zeros(t, bool), trunc=np.zeros(t, bool))
        files.append(p)
    return files


def test_episode_replay_keys(dummy_video, tmp_path) -> None:
    files = _episodes(tmp_path, n=3)
    src = pw.EpisodeSource(files, list(ACTION_NAMES))
    window = pw.PlayWindow(src, keymaps.episode_keymap(), scale=1, header=True, record_dir=tmp_path).open()
    obs = []
    for f in files:
        with np.load(f) as ep:
            obs.append(np.moveaxis(ep["obs"], 1, -1))
    hh = pw.header_height(True)
    steps = [(K.K_RIGHT, 0, 1), (K.K_RIGHT, 0, 2), (K.K_LEFT, 0, 1), (K.K_PAGEDOWN, 0, 11), (K.K_PAGEDOWN, 0, 14),
             (K.K_PAGEUP, 0, 4), (K.K_HOME, 0, 0), (K.K_LEFT, 0, 0), (K.K_DOWN, 1, 0), (K.K_RIGHT, 1, 1),
             (K.K_DOWN, 2, 0), (K.K_UP, 1, 0), (K.K_UP, 0, 0), (K.K_UP, 2, 0), (None, 2, 0)]
    for key, ep, t in steps:
        _tick(window, *([] if key is None else [key]))
        assert (src.index, src.t) == (ep, t), key
        np.testing.assert_array_equal(window.screen_array()[hh:], obs[ep][t])
    _tick(window, K.K_RIGHT)
    _tick(window, K.K_RIGHT)
    _tick(window, K.K_RETURN)
    assert src.t == 0
    assert src.header_lines()[1] == "episode 3/3  frame 0/14"
    assert _tick(window, K.K_q) is False


# -- the command line ----------------------------------------------------------------------------------
@pytest.fixture
def fake_run(monkeypatch, agent, tmp_path):
    """load_run returns the tiny agent and the toy config (no training needed)."""
    from deltairis.cli import common
    from deltairis.train.configuration import compose_config

    cfg = compose_config(["env=toy", "params=tiny"])
    monkeypatch.setattr(common, "load_run", lambda run_dir, checkpoint, device, **kw: (cfg, agent))
    return tmp_path / "run"


@pytest.mark.parametrize(("flags", "kind", "human"), [([], pw.EnvSource, False), (["-w"], pw.WorldModelSource, True),
                                                      (["-a"], pw.WorldModelSource, False)])
def test_play_opens_the_window_with_a_display(dummy_video, fake_run, monkeypatch, flags, kind, human) -> None:
    seen = []

    def run(self, max_frames=None):
        self.open()
        seen.append((self, type(self.source), self.source.controller()))
        _tick(self, K.K_RIGHT)
        _tick(self, K.K_COMMA)
        _tick(self, K.K_COMMA)
        return 3

    monkeypatch.setattr(pw.PlayWindow, "run", run)
    assert play_cli.main(["--run-dir", str(fake_run), "-h", "--scale", "2", *flags]) == 0
    window, source_type, who = seen[0]
    assert source_type is kind and who == ("you" if human else "agent")
    assert window.header and window.scale == 2 and window.fps == 5
    assert window.source.actions_taken[0] == (4 if human else window.source.actions_taken[0])
    assert sorted(p.suffix for p in (fake_run / "media" / "recordings").iterdir()) == [".mp4", ".npz"]
    assert not (fake_run / "media" / "play").exists()  # no GIF export


def test_play_window_runs_until_escape(dummy_video, fake_run) -> None:
    _episodes(fake_run)
    pygame.display.init()
    _post(K.K_RIGHT, K.K_ESCAPE)
    assert play_cli.main(["--run-dir", str(fake_run), "-e"]) == 0
    assert not (fake_run / "media" / "play").exists()


def test_headless_writes_gif_and_mp4(monkeypatch, fake_run, capsys) -> None:
    from PIL import Image

    for var in ("DISPLAY", "WAYLAND_DISPLAY", "SDL_VIDEODRIVER"):
        monkeypatch.delenv(var, raising=False)
    assert play_cli.main(["--run-dir", str(fake_run), "-h", "--steps", "3"]) == 0
    gif = fake_run / "media" / "play" / "env.gif"
    assert capsys.readouterr().out.split() == [str(gif)]
    with Image.open(gif) as img:
        n = img.n_frames
        assert (img.width, img.height) == (256, 256 + 14)
    video = read_mp4(gif.with_suffix(".mp4"))
    assert video.shape == (n, 256 + 14, 256, 3)
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")  # a display, but --headless
    _episodes(fake_run, n=1)
    assert play_cli.main(["--run-dir", str(fake_run), "-e", "--headless"]) == 0
    out = capsys.readouterr().out.split()
    assert len(out) == 1 and out[0].endswith(".gif") and Path(out[0]).with_suffix(".mp4").is_file()


def test_help_lists_the_keys(capsys) -> None:
    with pytest.raises(SystemExit):
        play_cli.main(["--help"])
    out = capsys.readouterr().out
    for needle in ("Enter reset", ". pause", "Esc or q quit", "m switches", "page down/up", "--headless", "--fps",
                   "--scale", "MP4"):
        assert needle in out, needle


# -- a real window under Xvfb --------------------------------------------------------------------------
def _free_display() -> int:
    for n in range(91, 200):
        if not Path(f"/tmp/.X{n}-lock").exists() and not Path(f"/tmp/.X11-unix/X{n}").exists():
            return n
    raise RuntimeError("no free X display number")


@pytest.fixture
def xvfb(monkeypatch):
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed")
    n = _free_display()
    proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "640x480x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if Path(f"/tmp/.X11-unix/X{n}").exists():
                break
            if proc.poll() is not None:
                pytest.skip("Xvfb did not start")
            time.sleep(0.05)
        monkeypatch.setenv("DISPLAY", f":{n}")
        monkeypatch.delenv("SDL_VIDEODRIVER", raising=False)
        monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
        yield f":{n}"
    finally:
        pygame.display.quit()
        proc.terminate()
        proc.wait(timeout=10)


def test_real_window_under_xvfb_shows_the_frame(xvfb, agent, tmp_path) -> None:
    from PIL import ImageGrab

    src = pw.EnvSource(ToyVectorEnv(1, seed=0), agent, seed=0, human=True)
    window = _toy_window(src, tmp_path, scale=3)
    assert pygame.display.get_driver() == "x11"
    for key in (K.K_RIGHT, K.K_DOWN):
        _tick(window, key)
    expected = window.compose()
    from pygame._sdl2.video import Window

    x0, y0 = Window.from_display_module().position  # where the X server placed the window
    h, w = expected.shape[:2]
    shot = None
    for _ in range(50):  # the X server draws asynchronously: wait until the window shows the frame
        pygame.display.flip()
        grab = np.asarray(ImageGrab.grab(xdisplay=xvfb).convert("RGB"))
        for dy in range(41):  # a window manager could add a title bar
            crop = grab[y0 + dy : y0 + dy + h, x0 : x0 + w]
            if crop.shape == expected.shape and np.array_equal(crop, expected):
                shot = crop
                break
        if shot is not None:
            break
        time.sleep(0.1)
    assert shot is not None, "the window's pixels on the X screen differ from the composed frame"
    np.testing.assert_array_equal(shot[pw.header_height(True) :], src.frame().repeat(3, 0).repeat(3, 1))
    if os.environ.get("DELTAIRIS_SAVE_SCREENSHOT"):
        from PIL import Image

        Image.fromarray(shot).save(os.environ["DELTAIRIS_SAVE_SCREENSHOT"])
    window.close()
