"""Helpers of the replay-store tests: backends, random episodes, a plain-Python model of a gather."""

from __future__ import annotations

import numpy as np
import pytest

from deltairis.data import ReplayStore
from deltairis.data.sampler_backends import cpp_available

BACKENDS = [
    "numpy",
    pytest.param("cpp", marks=pytest.mark.skipif(not cpp_available(), reason="deltairis._core not built")),
]
FIELDS = ("obs", "act", "rew", "end", "trunc")


def random_steps(
    rng: np.random.Generator, t: int, obs_shape: tuple[int, ...] = (3, 64, 64)
) -> dict[str, np.ndarray]:
    """T random steps with the dtypes the store expects."""
    return {
        "obs": rng.integers(0, 256, (t, *obs_shape), dtype=np.uint8),
        "act": rng.integers(-5, 20, t, dtype=np.int64),
        "rew": rng.standard_normal(t).astype(np.float32),
        "end": (rng.random(t) < 0.3).astype(np.uint8),
        "trunc": (rng.random(t) < 0.3).astype(np.uint8),
    }


def fill_store(
    store: ReplayStore,
    rng: np.random.Generator,
    num_episodes: int,
    max_len: int = 30,
    num_extends: int = 20,
) -> list[dict[str, np.ndarray]]:
    """Add episodes and grow random ones in between (interleaved chunks); returns the expected contents."""
    model: list[dict[str, np.ndarray]] = []
    for _ in range(num_episodes):
        steps = random_steps(rng, int(rng.integers(1, max_len + 1)), store.obs_shape)
        assert store.add_episode(**steps) == len(model)
        model.append(steps)
        for _ in range(int(rng.integers(0, 1 + 2 * num_extends // max(num_episodes, 1)))):
            ep = int(rng.integers(0, len(model)))
            more = random_steps(rng, int(rng.integers(0, 6)), store.obs_shape)
            store.extend_episode(ep, **more)
            model[ep] = {k: np.concatenate([model[ep][k], more[k]]) for k in FIELDS}
    return model


def expected_segments(
    model: list[dict[str, np.ndarray]],
    ep: np.ndarray,
    start: np.ndarray,
    seq_len: int,
    obs_shape: tuple[int, ...],
) -> dict[str, np.ndarray]:
    """The batch a gather must produce, built with plain loops over the in-memory episodes."""
    b = len(ep)
    out = {
        "obs": np.zeros((b, seq_len, *obs_shape), np.uint8),
        "act": np.zeros((b, seq_len), np.int64),
        "rew": np.zeros((b, seq_len), np.float32),
        "end": np.zeros((b, seq_len), np.uint8),
        "trunc": np.zeros((b, seq_len), np.uint8),
        "mask_padding": np.zeros((b, seq_len), bool),
    }
    for i in range(b):
        episode = model[int(ep[i])]
        for j in range(seq_len):
            step = int(start[i]) + j
            if 0 <= step < len(episode["act"]):
                for k in FIELDS:
                    out[k][i, j] = episode[k][step]
                out["mask_padding"][i, j] = True
    return out
