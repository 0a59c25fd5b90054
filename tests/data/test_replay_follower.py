"""Followers (``ReplayStore(follow=True)``): the read-only view a node's other ranks have of the store one
process writes. A follower shows only complete commits, also while the writer is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from replay_testlib import BACKENDS, FIELDS, fill_store, random_steps

from deltairis.data import ReplayStore, ReplayStoreError

OBS = (3, 8, 8)

# Round i adds episode i (20 + i % 7 steps of a deterministic function of i) in two halves: its first
# half, then the second half with the first half of episode i + 1, committing after each append.
WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from deltairis.data import ReplayStore

    def episode(i):
        rng = np.random.default_rng(i)
        t = 20 + i % 7
        return dict(obs=rng.integers(0, 256, (t, 3, 8, 8), dtype=np.uint8), act=rng.integers(0, 9, t),
                    rew=rng.standard_normal(t).astype(np.float32), end=np.zeros(t, np.uint8),
                    trunc=np.zeros(t, np.uint8))

    store = ReplayStore(sys.argv[1], backend="numpy", obs_shape=(3, 8, 8))
    print("ready", flush=True)
    i = 0
    while True:
        ep = episode(i)
        half = len(ep["act"]) // 2
        store.add_episode(**{k: v[:half] for k, v in ep.items()})
        store.commit()
        store.extend_episode(i, **{k: v[half:] for k, v in ep.items()})
        store.commit()
        i += 1
    """
)


def episode(i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    t = 20 + i % 7
    return {
        "obs": rng.integers(0, 256, (t, *OBS), dtype=np.uint8),
        "act": rng.integers(0, 9, t),
        "rew": rng.standard_normal(t).astype(np.float32),
        "end": np.zeros(t, np.uint8),
        "trunc": np.zeros(t, np.uint8),
    }


def check_a_commit(store: ReplayStore) -> None:
    """The follower holds a state the writer committed: whole episodes, the newest maybe half."""
    n = store.num_episodes
    for i in range(n):
        full = episode(i)
        t = len(full["act"])
        assert store.lengths[i] in ((t, t // 2) if i == n - 1 else (t,))
    if n:  # the frames of the newest episode, gathered by the sampler, are the writer's
        t = int(store.lengths[n - 1])
        batch = store.gather(np.array([n - 1]), np.array([0]), np.array([t]))
        np.testing.assert_array_equal(batch.obs[0].numpy(), episode(n - 1)["obs"][:t])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_follower_sees_only_complete_commits_of_a_writer_killed_at_random(
    backend: str, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    follower = ReplayStore(tmp_path, backend=backend, follow=True, obs_shape=OBS)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        seen, t_end = set(), time.monotonic() + 1.5
        while time.monotonic() < t_end:
            if follower.refresh():
                check_a_commit(follower)
                seen.add(follower.num_steps)
        assert len(seen) >= 2, "the follower saw fewer than 2 commits: the writer is too slow"
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        # after the kill: the last commit, however much the writer appended past it
        follower.refresh()
        check_a_commit(follower)
        assert os.path.getsize(tmp_path / "obs.u8") >= follower.num_steps * int(np.prod(OBS))
        with ReplayStore(tmp_path, backend=backend, read_only=True, create=False) as fresh:
            assert np.array_equal(fresh.lengths, follower.lengths)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        follower.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_follower_samples_the_batches_of_the_writer(backend: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    writer = ReplayStore(tmp_path / "s", backend=backend, obs_shape=OBS)
    follower = ReplayStore(tmp_path / "s", backend=backend, follow=True)  # nothing on disk yet
    assert follower.num_episodes == 0 and not follower.refresh()
    fill_store(writer, rng, 6)
    assert not follower.refresh()  # appended, not committed: nothing to see
    writer.commit()
    assert follower.refresh() and not follower.refresh()  # once per commit
    assert follower.obs_shape == OBS  # the writer's frames, not the default
    for consumer in ("a", "b"):
        want = writer.sample(consumer, 5, 4, seed=11, alpha=1.0)
        got = follower.sample(consumer, 5, 4, seed=11, alpha=1.0)
        for f in (*FIELDS, "mask_padding", "episode_id", "start"):
            assert np.array_equal(getattr(want, f).numpy(), getattr(got, f).numpy()), f
        assert np.array_equal(writer.visit_counts(consumer), follower.visit_counts(consumer))
    # the writer grows an episode and adds one: the follower takes both at the next refresh
    writer.extend_episode(2, **random_steps(rng, 3, OBS))
    writer.add_episode(**random_steps(rng, 2, OBS))
    writer.commit()
    assert follower.refresh()
    assert np.array_equal(follower.lengths, writer.lengths)
    for i in range(writer.num_episodes):
        x, y = writer.load_episode(i), follower.load_episode(i)
        assert all(np.array_equal(getattr(x, f), getattr(y, f)) for f in FIELDS)
    # a follower never writes
    with pytest.raises(ReplayStoreError, match="read-only"):
        follower.add_episode(**random_steps(rng, 2, OBS))
    with pytest.raises(ReplayStoreError, match="read-only"):
        follower.commit()
    # the writer empties the store (its files shrink): the follower follows
    writer.clear()
    assert follower.refresh() and follower.num_episodes == 0
    with pytest.raises(ValueError, match="empty"):
        follower.sample("a", 2, 2, seed=0)
    writer.close()
    follower.close()
    with (
        ReplayStore(tmp_path / "plain", backend=backend, obs_shape=OBS) as plain,
        pytest.raises(ReplayStoreError, match="for followers"),
    ):
        plain.refresh()
