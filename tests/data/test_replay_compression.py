"""Compressed frames (``compression="lz4"``): the same batches as an uncompressed store, on both backends,
never mixed with another setting. Crash safety: tests/data/test_replay_durability.py runs its SIGKILL tests
with both settings."""

from __future__ import annotations

import numpy as np
import pytest
from replay_testlib import BACKENDS, FIELDS, random_steps

from deltairis.data import ReplayStore, ReplayStoreError, frame_codec

OBS = (3, 16, 16)
ALL = (*FIELDS, "mask_padding", "episode_id", "start", "stop")


def frames_like_a_game(rng: np.random.Generator, t: int) -> np.ndarray:
    """Frames of flat tiles that move a little from step to step (they compress, as game frames do)."""
    tiles = rng.integers(0, 8, (4, 4)).repeat(4, 0).repeat(4, 1) * 30
    out = np.empty((t, *OBS), np.uint8)
    for i in range(t):
        out[i] = (
            np.roll(tiles, i % 5, axis=1)[None].astype(np.uint8) + np.arange(3, dtype=np.uint8)[:, None, None]
        )
    out[:, :, 0, 0] = rng.integers(0, 256, (t, 3))  # a little noise
    return out


def fill(store: ReplayStore, seed: int) -> None:
    """Episodes added and grown in interleaved appends, some longer than a block, some of one step."""
    rng = np.random.default_rng(seed)
    for e in range(10):
        t = int(rng.choice([1, 3, 8, 9, 21]))
        steps = random_steps(rng, t, OBS)
        if e % 2:
            steps["obs"] = frames_like_a_game(rng, t)
        store.add_episode(**steps)
        if e % 3 == 2:
            more = random_steps(rng, int(rng.integers(1, 12)), OBS)
            more["obs"] = frames_like_a_game(rng, more["obs"].shape[0])
            store.extend_episode(int(rng.integers(0, e + 1)), **more)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, object]:
    """The same appends into an uncompressed and a compressed store (committed, then closed)."""
    root = tmp_path_factory.mktemp("compression")
    for compression in ("none", "lz4"):
        with ReplayStore(root / compression, backend="numpy", obs_shape=OBS, compression=compression) as s:
            fill(s, seed=5)
            s.commit()
    return {"root": root}


def _same(a, b, what: str) -> None:
    for f in ALL:
        assert np.array_equal(getattr(a, f).numpy(), getattr(b, f).numpy()), f"{what}: {f} differs"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("threads", [1, 2])
def test_compressed_batches_are_byte_identical(stores, backend: str, threads: int) -> None:
    root = stores["root"]
    opened = {
        c: ReplayStore(root / c, backend=backend, num_threads=threads, read_only=True, create=False)
        for c in ("none", "lz4")
    }
    none, lz4 = opened["none"], opened["lz4"]
    assert lz4.compression == "lz4" and none.compression == "none"
    assert not (root / "lz4" / "obs.u8").exists() and (root / "lz4" / frame_codec.BLOCKS_FILE).exists()
    for i, (b, l, pad) in enumerate([(32, 21, "both"), (86, 6, "left"), (64, 26, "both"), (5, 1, "left")]):
        for consumer in ("tokenizer", "world_model"):
            x = none.sample(consumer, b, l, pad_mode=pad, alpha=1.0, seed=i)
            y = lz4.sample(consumer, b, l, pad_mode=pad, alpha=1.0, seed=i)
            _same(x, y, f"{b}x{l} {pad}")
            assert np.array_equal(none.visit_counts(consumer), lz4.visit_counts(consumer))
    # segments past both ends of episodes (padding), and one rank's rows of a batch
    ep, start = np.arange(10) % none.num_episodes, np.arange(10) - 4
    _same(none.gather(ep, start, start + 9), lz4.gather(ep, start, start + 9), "explicit")
    _same(
        none.sample("c", 12, 4, seed=3, rows=slice(4, 9)),
        lz4.sample("c", 12, 4, seed=3, rows=slice(4, 9)),
        "rows",
    )
    for e in range(none.num_episodes):
        x, y = none.load_episode(e), lz4.load_episode(e)
        assert all(np.array_equal(getattr(x, f), getattr(y, f)) for f in FIELDS)
    for s in opened.values():
        s.close()


def test_frames_take_fewer_bytes_and_a_segment_decodes_only_its_blocks(stores, monkeypatch) -> None:
    root = stores["root"]
    with ReplayStore(root / "lz4", backend="numpy", read_only=True, create=False) as s:
        blocks = s.compressed_blocks()
        assert blocks.shape[0] >= s.num_steps / frame_codec.BLOCK_STEPS
        assert int(blocks[:, 1].max()) <= frame_codec.BLOCK_STEPS
        # the game-like episodes compress
        raw, packed = s.num_steps * int(np.prod(OBS)), (root / "lz4" / "obs.lz4").stat().st_size
        assert packed < raw
        decoded = []
        real = frame_codec.decode

        def counting(data, n, fb):
            decoded.append(n)
            return real(data, n, fb)

        monkeypatch.setattr(frame_codec, "decode", counting)
        longest = int(np.argmax(s.lengths))
        assert s.lengths[longest] > 2 * frame_codec.BLOCK_STEPS
        s.gather(np.array([longest]), np.array([0]), np.array([3]))
        assert len(decoded) == 1  # 3 steps inside one block: that block alone


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_setting_is_refused_by_name_and_followers_take_the_writers(tmp_path, backend: str) -> None:
    rng = np.random.default_rng(0)
    with ReplayStore(tmp_path / "z", backend=backend, obs_shape=OBS, compression="lz4") as s:
        s.add_episode(**random_steps(rng, 10, OBS))
        s.commit()
    with pytest.raises(
        ReplayStoreError, match="written with compression 'lz4', not 'none'.*deltairis-store convert"
    ):
        ReplayStore(tmp_path / "z", backend=backend, compression="none")
    with ReplayStore(tmp_path / "n", backend=backend, obs_shape=OBS) as s:  # a new store: "none"
        assert s.compression == "none"
        s.commit()
    with pytest.raises(ReplayStoreError, match="written with compression 'none', not 'lz4'"):
        ReplayStore(tmp_path / "n", backend=backend, compression="lz4")
    with pytest.raises(ValueError, match="compression must be one of none, lz4"):
        ReplayStore(tmp_path / "x", backend=backend, compression="zip")
    with ReplayStore(tmp_path / "z", backend=backend) as s:  # None: the store's own
        assert s.compression == "lz4" and s.num_steps == 10
    follower = ReplayStore(tmp_path / "z", backend=backend, follow=True)
    assert follower.refresh() and follower.compression == "lz4"
    assert follower.gather(np.array([0]), np.array([0]), np.array([10])).mask_padding.all()
    follower.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_damaged_block_is_an_error(tmp_path, backend: str) -> None:
    rng = np.random.default_rng(1)
    with ReplayStore(tmp_path, backend="numpy", obs_shape=OBS, compression="lz4") as s:
        s.add_episode(**random_steps(rng, 5, OBS))
        s.commit()
    with open(tmp_path / "obs.lz4", "r+b") as f:  # no literals, then a match at offset 0: invalid
        f.write(b"\x00\x00\x00\x00")
    with (
        ReplayStore(tmp_path, backend=backend, read_only=True, create=False) as s,
        pytest.raises((ReplayStoreError, RuntimeError), match="does not decode"),
    ):
        s.gather(np.array([0]), np.array([0]), np.array([5]))
    # a block table that does not tile the frames is refused when the store opens
    blocks = np.fromfile(tmp_path / frame_codec.BLOCKS_FILE, dtype=np.int64)
    blocks[1] += 1  # the first block's rows
    blocks.tofile(tmp_path / frame_codec.BLOCKS_FILE)
    with pytest.raises(ReplayStoreError, match="block table of the compressed frames is inconsistent"):
        ReplayStore(tmp_path, backend=backend, read_only=True, create=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_damage_never_crashes_the_decoder(tmp_path, backend: str) -> None:
    """Bytes of the blocks flipped at random: each gather decodes or raises, never reads or writes out of
    bounds (the decoders check every length and offset against both buffers)."""
    rng = np.random.default_rng(2)
    with ReplayStore(tmp_path, backend="numpy", obs_shape=OBS, compression="lz4") as s:
        for _ in range(3):
            s.add_episode(**{**random_steps(rng, 12, OBS), "obs": frames_like_a_game(rng, 12)})
        s.commit()
    good = (tmp_path / "obs.lz4").read_bytes()
    errors = 0
    with ReplayStore(tmp_path, backend=backend, read_only=True, create=False) as s:
        ep, start = np.arange(3), np.zeros(3, np.int64)
        for _ in range(150):
            bad = bytearray(good)
            for i in rng.integers(0, len(bad), int(rng.integers(1, 4))):
                bad[i] = int(rng.integers(0, 256))
            (tmp_path / "obs.lz4").write_bytes(bytes(bad))
            try:
                s.gather(ep, start, start + 12)
            except (ReplayStoreError, RuntimeError) as exc:
                assert "does not decode" in str(exc)
                errors += 1
    assert errors > 0
