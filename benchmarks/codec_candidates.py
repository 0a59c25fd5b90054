"""Frame codecs for a compressed replay store: ratio and decode speed on real Crafter and Atari frames.

Frames come from the envs themselves (random actions): native Crafter, and Atari Breakout and Ms. Pac-Man
when ``ale_py`` is installed. They are stored as the replay store stores them, (T, 3, 64, 64) uint8, and
compressed in blocks of ``--block`` consecutive steps (a sampled segment decodes only the blocks it
touches). Codecs: zlib (stdlib) and, when installed, zstd (``zstandard``), lz4 (``lz4``). Decoding is
timed on one thread; "µs/frame" is the decode time per stored frame.

Run: ``python benchmarks/codec_candidates.py --block 8`` (none of the codec packages is a dependency).
"""

from __future__ import annotations

import argparse
import importlib
import time
import zlib
from collections.abc import Callable

import numpy as np

from deltairis.envs import make_vector_env

Codec = tuple[Callable[[bytes], bytes], Callable[[bytes, int], bytes]]


def frames(name: str, steps: int, **kwargs: object) -> np.ndarray:
    """``steps`` frames of one env under random actions, (T, 3, 64, 64) uint8."""
    env = make_vector_env(name, 1, seed=1, **kwargs)
    rng = np.random.default_rng(0)
    out = [env.reset()[0]]
    for _ in range(steps - 1):
        out.append(env.step(rng.integers(0, env.num_actions, 1))[0][0])
    env.close()
    return np.ascontiguousarray(np.stack(out).transpose(0, 3, 1, 2))


def codecs() -> dict[str, Codec]:
    out: dict[str, Codec] = {"zlib-1": (lambda b: zlib.compress(b, 1), lambda c, n: zlib.decompress(c))}
    try:
        zstd = importlib.import_module("zstandard")
        decompressor = zstd.ZstdDecompressor()
        for level in (1, 3):
            out[f"zstd-{level}"] = (
                zstd.ZstdCompressor(level=level).compress,
                lambda c, n: decompressor.decompress(c),
            )
    except ImportError:
        print("zstandard not installed: no zstd")
    try:
        lz4 = importlib.import_module("lz4.block")
        out["lz4"] = (
            lambda b: lz4.compress(b, store_size=False),
            lambda c, n: lz4.decompress(c, uncompressed_size=n),
        )
    except ImportError:
        print("lz4 not installed: no lz4")
    return out


def measure(codec: Codec, data: np.ndarray, block: int) -> tuple[float, float, float]:
    """(ratio, decode MB/s of raw output, decode µs per frame)."""
    comp, decomp = codec
    raw = [data[i : i + block].tobytes() for i in range(0, len(data), block)]
    packed = [comp(b) for b in raw]
    t0 = time.perf_counter()
    for c, b in zip(packed, raw):
        if decomp(c, len(b)) != b:
            raise AssertionError("the codec did not give the frames back")
    dt = time.perf_counter() - t0
    size = sum(map(len, raw))
    return size / sum(map(len, packed)), size / dt / 1e6, dt / len(data) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--block", type=int, default=8, help="steps per compressed block")
    parser.add_argument("--steps", type=int, default=1500, help="frames per env")
    args = parser.parse_args()
    sets = {"crafter": frames("crafter", 2 * args.steps)}
    try:
        importlib.import_module("ale_py")
        for game in ("BreakoutNoFrameskip-v4", "MsPacmanNoFrameskip-v4"):
            sets[game.split("NoFrameskip")[0]] = frames("atari", args.steps, id=game)
    except ImportError:
        print("ale_py not installed: no Atari frames")
    print(f"blocks of {args.block} steps; ratio, decode MB/s (1 thread), decode µs/frame")
    for name, codec in codecs().items():
        cells = [
            f"{k}: {r:.2f}x {mb:.0f} MB/s {us:.1f} µs"
            for k, (r, mb, us) in ((k, measure(codec, d, args.block)) for k, d in sets.items())
        ]
        print(f"{name:8s} " + " | ".join(cells))


if __name__ == "__main__":
    main()
