"""Replay sampling throughput: C++ sampler vs NumPy reference vs a reference-style loader vs memcpy.

One store of at least 200k frames (``DELTAIRIS_BENCH_FRAMES``, default 200_000; ~2.5 GB) is built once
per session in a temporary folder, next to the same episodes saved the way the reference does (one
``torch.save`` file per episode); both are deleted at the end. For each batch shape (32×21, 86×6,
64×26), the group ``replay-<B>x<L>`` holds:

* ``cpp``: ``ReplayStore.sample`` with the C++ backend (ids, counts, gather into preallocated buffers),
  all hardware threads; ``cpp_1thread``: the same on one thread;
* ``numpy``: the same call on the NumPy reference backend;
* ``reference_loader``: per segment, ``torch.load`` of the whole episode file, slice, pad, stack;
* ``memcpy``: one ``np.copyto`` of the same number of bytes from a random offset of a 1 GiB array into
  a preallocated buffer (a plain memory-to-memory copy, out of the CPU caches).

``extra_info``: ``bytes_per_batch``, ``gb_per_s`` and ``batches_per_s`` (from the median time; frames +
actions/rewards/flags), the store size. ``test_store_footprint`` records the on-disk size against the raw bytes and the resident memory
growth while sampling.

Compressed frames (``data.compression``): two stores of the same real Crafter frames (native engine,
random actions; ``DELTAIRIS_BENCH_REAL_FRAMES`` steps, default 20_000), one per setting, written by the same
appends (an episode in 4 appends, one commit). Group ``replay-frames-<B>x<L>``: ``compressed[none]`` and
``compressed[lz4]`` (C++, 2 gather threads); group ``replay-append``: one episode appended and committed;
``test_compressed_footprint``: bytes per stored step and per step a replica sync sends, per setting. Run: ``python -m pytest benchmarks/bench_replay.py --benchmark-only``
(``--benchmark-json=out.json`` keeps the figures).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from deltairis.data import ReplayStore
from deltairis.data import segment_rule as ref_sampling
from deltairis.data.sampler_backends import cpp_available
from deltairis.envs import make_vector_env
from deltairis.train.replicas import _nbytes, _part

FRAMES = int(os.environ.get("DELTAIRIS_BENCH_FRAMES", "200000"))
FRAME_BYTES = 3 * 64 * 64
STEP_BYTES = FRAME_BYTES + 8 + 4 + 1 + 1
SHAPES = [(32, 21), (86, 6), (64, 26)]
ALPHA = 1.0
MEMCPY_SOURCE_BYTES = 1 << 30


class Fixture:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.store_dir = root / "store"
        self.ref_dir = root / "reference"
        self.ref_paths: list[Path] = []
        self.lengths: np.ndarray = np.zeros(0, np.int64)


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fixture]:
    root = tmp_path_factory.mktemp("replay_bench")
    need = 2.3 * FRAMES * STEP_BYTES
    if shutil.disk_usage(root).free < need:
        pytest.skip(f"needs {need / 1e9:.1f} GB free in {root}")
    fx = Fixture(root)
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, (4096, 3, 64, 64), dtype=np.uint8)  # frame contents do not matter
    fx.ref_dir.mkdir()
    lengths = []
    with ReplayStore(fx.store_dir) as store:
        total = 0
        while total < FRAMES:
            t = int(min(rng.integers(100, 1000), max(FRAMES - total, 1)))
            first = int(rng.integers(0, pool.shape[0] - t))
            ep = {
                "obs": pool[first : first + t],
                "act": rng.integers(0, 17, t),
                "rew": rng.standard_normal(t).astype(np.float32),
                "end": np.zeros(t, np.uint8),
                "trunc": np.zeros(t, np.uint8),
            }
            ep["end"][-1] = 1
            i = store.add_episode(**ep)
            path = fx.ref_dir / f"{i}.pt"
            torch.save(
                {
                    "observations": torch.from_numpy(ep["obs"].copy()),
                    "actions": torch.from_numpy(ep["act"]),
                    "rewards": torch.from_numpy(ep["rew"]),
                    "ends": torch.from_numpy(ep["end"].astype(np.int64)),
                },
                path,
            )
            fx.ref_paths.append(path)
            lengths.append(t)
            total += t
        store.commit()
    fx.lengths = np.asarray(lengths, np.int64)
    yield fx
    shutil.rmtree(root, ignore_errors=True)


def _record(benchmark, batch_size: int, seq_len: int, fx: Fixture) -> None:
    nbytes = batch_size * seq_len * STEP_BYTES
    benchmark.extra_info["bytes_per_batch"] = nbytes
    benchmark.extra_info["store_frames"] = int(fx.lengths.sum())
    benchmark.extra_info["store_episodes"] = int(fx.lengths.size)
    # Medians: this figure must survive other processes sharing the CPUs (the mean does not).
    benchmark.extra_info["gb_per_s"] = nbytes / benchmark.stats.stats.median / 1e9
    benchmark.extra_info["batches_per_s"] = 1.0 / benchmark.stats.stats.median


def _bench_store(
    benchmark, fx: Fixture, backend: str, batch_size: int, seq_len: int, num_threads: int | None = None
) -> None:
    store = ReplayStore(fx.store_dir, backend=backend, read_only=True, num_threads=num_threads)
    out = store.allocate_batch(batch_size, seq_len)
    rng = np.random.default_rng(1)
    for _ in range(3):  # warm-up: page cache, first allocations
        store.sample("bench", batch_size, seq_len, alpha=ALPHA, seed=rng, out=out)
    benchmark.group = f"replay-{batch_size}x{seq_len}"
    benchmark(store.sample, "bench", batch_size, seq_len, alpha=ALPHA, seed=rng, out=out)
    benchmark.extra_info["backend"] = store.backend
    benchmark.extra_info["num_threads"] = store.num_threads
    _record(benchmark, batch_size, seq_len, fx)
    store.close()


@pytest.mark.skipif(not cpp_available(), reason="deltairis._core not built")
@pytest.mark.parametrize(("batch_size", "seq_len"), SHAPES)
def test_cpp(benchmark, data: Fixture, batch_size: int, seq_len: int) -> None:
    _bench_store(benchmark, data, "cpp", batch_size, seq_len)


@pytest.mark.skipif(not cpp_available(), reason="deltairis._core not built")
@pytest.mark.parametrize(("batch_size", "seq_len"), SHAPES)
def test_cpp_1thread(benchmark, data: Fixture, batch_size: int, seq_len: int) -> None:
    _bench_store(benchmark, data, "cpp", batch_size, seq_len, num_threads=1)


@pytest.mark.parametrize(("batch_size", "seq_len"), SHAPES)
def test_numpy(benchmark, data: Fixture, batch_size: int, seq_len: int) -> None:
    _bench_store(benchmark, data, "numpy", batch_size, seq_len)


def _reference_batch(fx: Fixture, rng: np.random.Generator, batch_size: int, seq_len: int) -> dict:
    """What the reference does: load the whole episode file for every segment, slice, pad, stack."""
    counts = np.zeros(fx.lengths.size, np.int64)
    u = ref_sampling.draw_uniforms(rng, batch_size)
    ep, start, _ = ref_sampling.draw_segments(counts, fx.lengths, ALPHA, u, seq_len, "both")
    segs: dict[str, list[torch.Tensor]] = {"obs": [], "act": [], "rew": [], "end": [], "mask": []}
    for e, s in zip(ep.tolist(), start.tolist()):
        d = torch.load(fx.ref_paths[e], weights_only=True)
        length = d["actions"].shape[0]
        lo, hi = max(s, 0), min(s + seq_len, length)
        left, right = lo - s, s + seq_len - hi
        for key, name in (("observations", "obs"), ("actions", "act"), ("rewards", "rew"), ("ends", "end")):
            x = d[key][lo:hi]
            zeros_left = torch.zeros((left, *x.shape[1:]), dtype=x.dtype)
            zeros_right = torch.zeros((right, *x.shape[1:]), dtype=x.dtype)
            segs[name].append(torch.cat([zeros_left, x, zeros_right]))
        segs["mask"].append(torch.cat([torch.zeros(left), torch.ones(hi - lo), torch.zeros(right)]).bool())
    return {k: torch.stack(v) for k, v in segs.items()}


@pytest.mark.parametrize(("batch_size", "seq_len"), SHAPES)
def test_reference_loader(benchmark, data: Fixture, batch_size: int, seq_len: int) -> None:
    rng = np.random.default_rng(1)
    _reference_batch(data, rng, batch_size, seq_len)  # warm-up
    benchmark.group = f"replay-{batch_size}x{seq_len}"
    benchmark.pedantic(_reference_batch, args=(data, rng, batch_size, seq_len), rounds=3, iterations=1)
    _record(benchmark, batch_size, seq_len, data)


@pytest.fixture(scope="module")
def memcpy_source() -> np.ndarray:
    """1 GiB in RAM, so that copies read from memory, not from the CPU caches (like the store's pages)."""
    return np.random.default_rng(2).integers(0, 256, MEMCPY_SOURCE_BYTES, dtype=np.uint8)


@pytest.mark.parametrize(("batch_size", "seq_len"), SHAPES)
def test_memcpy(benchmark, data: Fixture, memcpy_source: np.ndarray, batch_size: int, seq_len: int) -> None:
    nbytes = batch_size * seq_len * STEP_BYTES
    dst = np.zeros(nbytes, np.uint8)  # pages faulted in, like the preallocated batch buffers
    rng = np.random.default_rng(3)

    def copy() -> None:
        first = int(rng.integers(0, memcpy_source.size - nbytes))
        np.copyto(dst, memcpy_source[first : first + nbytes])

    benchmark.group = f"replay-{batch_size}x{seq_len}"
    benchmark(copy)
    _record(benchmark, batch_size, seq_len, data)


def test_store_footprint(benchmark, data: Fixture) -> None:
    """On-disk size vs raw bytes, and resident memory growth over many batches (C++ and NumPy)."""
    on_disk = sum(p.stat().st_size for p in data.store_dir.iterdir())
    raw = int(data.lengths.sum()) * STEP_BYTES
    benchmark.extra_info["disk_bytes"] = on_disk
    benchmark.extra_info["raw_bytes"] = raw
    benchmark.extra_info["disk_over_raw"] = on_disk / raw
    assert on_disk <= 1.05 * raw
    backends = ["numpy"] + (["cpp"] if cpp_available() else [])
    for backend in backends:
        store = ReplayStore(data.store_dir, backend=backend, read_only=True)
        out = store.allocate_batch(64, 26)
        rng = np.random.default_rng(3)
        store.sample("rss", 64, 26, seed=rng, out=out)
        before = _rss_bytes()
        for _ in range(300):  # 300 x 64 x 26 segments: touches most of the store
            store.sample("rss", 64, 26, seed=rng, out=out)
        benchmark.extra_info[f"rss_growth_mb_{backend}"] = (_rss_bytes() - before) / 1e6
        store.close()
    store = ReplayStore(data.store_dir, read_only=True)
    benchmark.group = "replay-footprint"
    benchmark(store.load_episode, 0)
    store.close()


REAL_FRAMES = int(os.environ.get("DELTAIRIS_BENCH_REAL_FRAMES", "20000"))
COMPRESSIONS = ("none", "lz4")


def _crafter_frames(n: int) -> np.ndarray:
    env = make_vector_env("crafter", 1, seed=1)
    rng = np.random.default_rng(0)
    out = [env.reset()[0]]
    for _ in range(min(n, 3000) - 1):  # distinct frames; longer stores cycle through them
        out.append(env.step(rng.integers(0, env.num_actions, 1))[0][0])
    env.close()
    return np.ascontiguousarray(np.stack(out).transpose(0, 3, 1, 2))


def _episode_parts(frames: np.ndarray, rng: np.random.Generator, first: int, t: int) -> list[tuple]:
    idx = (np.arange(t) + first) % frames.shape[0]
    return [
        (
            frames[p],
            rng.integers(0, 17, len(p)),
            rng.standard_normal(len(p)).astype(np.float32),
            np.zeros(len(p), np.uint8),
            np.zeros(len(p), np.uint8),
        )
        for p in np.array_split(idx, 4)
    ]


def _add(store: ReplayStore, parts: list[tuple]) -> None:
    ep = store.add_episode(*parts[0])
    for part in parts[1:]:
        store.extend_episode(ep, *part)
    store.commit()


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("replay_real")
    frames = _crafter_frames(REAL_FRAMES)
    rng = np.random.default_rng(0)
    stores = {c: ReplayStore(root / c, compression=c) for c in COMPRESSIONS}
    total = 0
    while total < REAL_FRAMES:
        t = int(rng.integers(100, 1000))
        parts = _episode_parts(frames, rng, total, t)
        for store in stores.values():
            _add(store, parts)
        total += t
    for store in stores.values():
        store.close()
    yield {"root": root, "frames": frames, "steps": total}
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(not cpp_available(), reason="deltairis._core not built")
@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize(("batch_size", "seq_len"), SHAPES)
def test_compressed(benchmark, real: dict, compression: str, batch_size: int, seq_len: int) -> None:
    store = ReplayStore(real["root"] / compression, backend="cpp", num_threads=2, read_only=True)
    out = store.allocate_batch(batch_size, seq_len)
    rng = np.random.default_rng(1)
    for _ in range(3):
        store.sample("bench", batch_size, seq_len, alpha=ALPHA, seed=rng, out=out)
    benchmark.group = f"replay-frames-{batch_size}x{seq_len}"
    benchmark(store.sample, "bench", batch_size, seq_len, alpha=ALPHA, seed=rng, out=out)
    benchmark.extra_info.update(
        compression=compression, num_threads=store.num_threads, store_steps=real["steps"]
    )
    benchmark.extra_info["batches_per_s"] = 1.0 / benchmark.stats.stats.median
    store.close()


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_append_commit(benchmark, real: dict, tmp_path: Path, compression: str) -> None:
    store = ReplayStore(tmp_path / compression, compression=compression)
    rng = np.random.default_rng(2)
    parts = _episode_parts(real["frames"], rng, 0, 500)
    benchmark.group = "replay-append"
    benchmark.pedantic(_add, args=(store, parts), rounds=10, iterations=1)
    benchmark.extra_info.update(compression=compression, steps_per_round=500)
    benchmark.extra_info["us_per_step"] = benchmark.stats.stats.median / 500 * 1e6
    store.close()


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_compressed_footprint(benchmark, real: dict, compression: str) -> None:
    directory = real["root"] / compression
    store = ReplayStore(directory, backend="numpy", read_only=True)
    on_disk = sum(p.stat().st_size for p in directory.iterdir() if p.name != "index.npz")
    sent = sum(_nbytes(_part(store, e, 0, int(n))) for e, n in enumerate(store.lengths.tolist()))
    benchmark.extra_info.update(
        compression=compression,
        bytes_per_step=on_disk / store.num_steps,
        sync_bytes_per_step=sent / store.num_steps,
    )
    benchmark.group = "replay-footprint"
    benchmark(store.load_episode, 0)
    store.close()
