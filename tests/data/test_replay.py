"""ReplayStore: contents, segment semantics (docs/algorithm.md section 6), priorities, backends agreeing byte for byte."""

from __future__ import annotations

import bisect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from replay_testlib import BACKENDS, FIELDS, expected_segments, fill_store, random_steps

from deltairis.data import Batch, Episode, ReplayStore, StepPrefetcher
from deltairis.data.prefetch import BackgroundWorker
from deltairis.data.sampler_backends import cpp_available

BATCH_FIELDS = (*FIELDS, "mask_padding", "episode_id", "start", "stop")
SMALL = (2, 3, 5)  # an odd frame shape keeps the many-input tests fast


def assert_batches_equal(a: Batch, b: Batch) -> None:
    for f in BATCH_FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and x.shape == y.shape, f
        assert torch.equal(x, y), f


def oracle_draw(
    counts: np.ndarray, lengths: np.ndarray, alpha: float, u: np.ndarray, seq_len: int, mode: str
) -> tuple[list[int], list[int], list[int]]:
    """docs/algorithm.md section 6 written with plain Python floats and loops, from the documented uniforms."""
    cdf, acc = [], 0.0
    for n in counts:
        acc += math.pow(1.0 / (1.0 + float(n)), alpha)
        cdf.append(acc)
    eps, starts, stops = [], [], []
    for b in range(u.shape[1]):
        e = min(bisect.bisect_right(cdf, float(u[0, b]) * cdf[-1]), len(cdf) - 1)
        length = int(lengths[e])
        t = min(math.floor(float(u[1, b]) * length), length - 1)
        k = min(math.floor(float(u[2, b]) * seq_len), seq_len - 1)
        if mode == "both":
            start = t - k
            stop = start + seq_len
        else:
            stop = min(length, t + 1 + k)
            start = stop - seq_len
        eps.append(e)
        starts.append(start)
        stops.append(stop)
    return eps, starts, stops


@pytest.mark.parametrize("backend", BACKENDS)
def test_contents_roundtrip_and_reopen(backend: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    store = ReplayStore(tmp_path, backend=backend)
    model = fill_store(store, rng, num_episodes=9, max_len=17, num_extends=25)
    assert store.num_episodes == len(model)
    assert store.num_steps == sum(len(m["act"]) for m in model)
    np.testing.assert_array_equal(store.lengths, [len(m["act"]) for m in model])
    for i, m in enumerate(model):
        ep = store.load_episode(i)
        assert isinstance(ep, Episode) and len(ep) == len(m["act"])
        for f in FIELDS:
            np.testing.assert_array_equal(getattr(ep, f), m[f], err_msg=f)
    store.commit()
    # Appended after the commit and never committed: gone after reopening.
    more, new = random_steps(rng, 4), random_steps(rng, 3)
    store.extend_episode(0, **more)
    new_id = store.add_episode(**new)
    # Visible at once in this process (the readers follow the growing files).
    np.testing.assert_array_equal(store.load_episode(0).obs, np.concatenate([model[0]["obs"], more["obs"]]))
    np.testing.assert_array_equal(store.load_episode(new_id).rew, new["rew"])
    store.close()
    with ReplayStore(tmp_path, backend=backend) as again:
        assert again.num_episodes == len(model)
        np.testing.assert_array_equal(again.lengths, [len(m["act"]) for m in model])
        ep0 = again.load_episode(0)
        np.testing.assert_array_equal(ep0.obs, model[0]["obs"])
        # The dropped rows are really gone: new appends land where they were.
        new_id = again.add_episode(**random_steps(rng, 2))
        assert new_id == len(model)
        assert again.num_steps == sum(len(m["act"]) for m in model) + 2


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("obs_shape", [(3, 64, 64), SMALL])
def test_gather_matches_plain_loop(backend: str, obs_shape: tuple[int, ...], tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    store = ReplayStore(tmp_path, backend=backend, obs_shape=obs_shape)
    model = fill_store(store, rng, num_episodes=7, max_len=12, num_extends=30)
    for seq_len in (1, 2, 5, 13, 40):
        b = int(rng.integers(1, 9))
        ep = rng.integers(0, len(model), b)
        lengths = store.lengths[ep]
        start = rng.integers(-seq_len - 2, lengths + 2)  # inside, overlapping either end, and fully outside
        batch = store.gather(ep, start, start + seq_len)
        expected = expected_segments(model, ep, start, seq_len, obs_shape)
        for f, want in expected.items():
            np.testing.assert_array_equal(getattr(batch, f).numpy(), want, err_msg=f"{f} L={seq_len}")
        np.testing.assert_array_equal(batch.episode_id.numpy(), ep)
        np.testing.assert_array_equal(batch.stop.numpy() - batch.start.numpy(), seq_len)


@pytest.mark.skipif(not cpp_available(), reason="deltairis._core not built")
def test_backends_byte_identical_for_any_thread_count(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    with ReplayStore(tmp_path, backend="numpy") as writer:
        fill_store(writer, rng, num_episodes=12, max_len=40, num_extends=40)
        writer.commit()
    ref = ReplayStore(tmp_path, backend="numpy", read_only=True)
    fast = {n: ReplayStore(tmp_path, backend="cpp", read_only=True, num_threads=n) for n in (1, 2, 3, 8)}
    for trial in range(12):
        seq_len = int(rng.integers(1, 30))
        b = int(rng.integers(1, 20))
        ep = rng.integers(0, ref.num_episodes, b)
        start = rng.integers(-seq_len, ref.lengths[ep] + 1)
        want = ref.gather(ep, start, start + seq_len)
        for store in fast.values():
            assert_batches_equal(store.gather(ep, start, start + seq_len), want)
        # Same seed -> same batch, ids and counts, whatever the backend and thread count.
        mode = ("both", "left")[trial % 2]
        alpha = (0.0, 1.0, 5.0, 0.37)[trial % 4]
        want = ref.sample("wm", b, seq_len, pad_mode=mode, alpha=alpha, seed=trial)
        for store in fast.values():
            assert_batches_equal(store.sample("wm", b, seq_len, pad_mode=mode, alpha=alpha, seed=trial), want)
    for store in fast.values():
        np.testing.assert_array_equal(store.visit_counts("wm"), ref.visit_counts("wm"))
        assert store.visit_counts("wm").sum() > 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["both", "left"])
def test_sample_follows_spec_draws(backend: str, mode: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    store = ReplayStore(tmp_path, backend=backend, obs_shape=SMALL)
    model = fill_store(store, rng, num_episodes=10, max_len=25, num_extends=20)
    for call in range(15):
        seq_len = int(rng.integers(1, 12))
        b = int(rng.integers(1, 12))
        alpha = float(rng.choice([0.0, 0.5, 1.0, 5.0]))
        counts_before = store.visit_counts("tokenizer")
        u = np.random.default_rng(call).random((3, b))
        eps, starts, stops = oracle_draw(counts_before, store.lengths, alpha, u, seq_len, mode)
        batch = store.sample("tokenizer", b, seq_len, pad_mode=mode, alpha=alpha, seed=call)
        assert batch.episode_id.tolist() == eps
        assert batch.start.tolist() == starts
        assert batch.stop.tolist() == stops
        lengths = store.lengths[np.array(eps)]
        if mode == "left":  # never padded on the right; real steps end the segment
            assert np.all(np.array(stops) <= lengths)
        else:  # the picked step is inside, so every segment holds at least one real step
            assert np.all(batch.mask_padding.numpy().any(axis=1))
        want = expected_segments(model, np.array(eps), np.array(starts), seq_len, SMALL)
        for f, arr in want.items():
            np.testing.assert_array_equal(getattr(batch, f).numpy(), arr, err_msg=f)
        # Counts go up once per sampled segment (repeats included).
        np.testing.assert_array_equal(
            store.visit_counts("tokenizer") - counts_before, np.bincount(eps, minlength=store.num_episodes)
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_probabilities_exact(backend: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    store = ReplayStore(tmp_path, backend=backend, obs_shape=SMALL)
    fill_store(store, rng, num_episodes=23, max_len=5, num_extends=0)
    np.testing.assert_allclose(
        store.sampling_probabilities("ac", 3.0), np.full(23, 1 / 23), rtol=0, atol=1e-15
    )
    for _ in range(6):
        store.sample(
            "ac", int(rng.integers(1, 40)), 3, alpha=float(rng.random()), seed=int(rng.integers(1 << 30))
        )
    counts = store.visit_counts("ac")
    assert counts.max() > counts.min()
    for alpha in (0.0, 0.5, 1.0, 5.0, 11.3):
        p = store.sampling_probabilities("ac", alpha)
        w = np.array([(1.0 / (1.0 + n)) ** alpha for n in counts.tolist()])
        np.testing.assert_allclose(p, w / w.sum(), rtol=0, atol=1e-12)
        assert abs(p.sum() - 1.0) < 1e-12
    np.testing.assert_array_equal(store.sampling_probabilities("ac", 0.0), np.full(23, 1 / 23))
    # A consumer that never sampled sees uniform probabilities and zero counts.
    np.testing.assert_array_equal(store.visit_counts("other"), np.zeros(23, np.int64))


@pytest.mark.skipif(not cpp_available(), reason="deltairis._core not built")
def test_probabilities_equal_between_backends(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    with ReplayStore(tmp_path, backend="numpy", obs_shape=SMALL) as w:
        fill_store(w, rng, num_episodes=50, max_len=4, num_extends=0)
        for i in range(10):
            w.sample("wm", 64, 2, alpha=1.0, seed=i)
        w.commit()
    a = ReplayStore(tmp_path, backend="numpy", read_only=True)
    c = ReplayStore(tmp_path, backend="cpp", read_only=True)
    for alpha in (0.0, 0.25, 1.0, 2.0, 5.0, 17.0):
        np.testing.assert_allclose(
            a.sampling_probabilities("wm", alpha), c.sampling_probabilities("wm", alpha), rtol=0, atol=1e-12
        )


def _chi2_z(observed: np.ndarray, expected: np.ndarray) -> float:
    """Wilson-Hilferty z-score of Pearson's chi-square statistic (about N(0, 1) under the null)."""
    df = observed.size - 1
    x = float(((observed - expected) ** 2 / expected).sum())
    return ((x / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampled_ids_follow_probabilities(backend: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    store = ReplayStore(tmp_path, backend=backend, obs_shape=(1,))
    for _ in range(12):
        store.add_episode(**random_steps(rng, int(rng.integers(1, 20)), (1,)))
    for i in range(8):  # uneven counts
        store.sample("wm", 5 * (i + 1), 1, alpha=0.0, seed=100 + i)
    alpha = 1.5
    p = store.sampling_probabilities("wm", alpha)
    assert p.max() / p.min() > 2.0
    n = 40_000
    batch = store.sample("wm", n, 1, alpha=alpha, seed=11, update_counts=False)
    observed = np.bincount(batch.episode_id.numpy(), minlength=12).astype(np.float64)
    assert _chi2_z(observed, n * p) < 4.0
    # Under uniform sampling the same statistic is far off: the test can fail.
    assert _chi2_z(observed, np.full(12, n / 12)) > 10.0
    # The timestep is uniform inside the episode: with seq_len 1 and "both", start = t.
    longest = int(np.argmax(store.lengths))
    t = batch.start.numpy()[batch.episode_id.numpy() == longest]
    length = int(store.lengths[longest])
    observed_t = np.bincount(t, minlength=length).astype(np.float64)
    assert _chi2_z(observed_t, np.full(length, t.size / length)) < 4.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_counts_persist_with_commit(backend: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    store = ReplayStore(tmp_path, backend=backend, obs_shape=SMALL)
    fill_store(store, rng, num_episodes=6, max_len=10, num_extends=0)
    store.sample("tokenizer", 17, 4, seed=0)
    store.sample("actor_critic", 9, 4, pad_mode="left", seed=1)
    frozen = store.visit_counts("tokenizer")
    store.sample("tokenizer", 5, 4, seed=2, update_counts=False)
    np.testing.assert_array_equal(store.visit_counts("tokenizer"), frozen)
    store.commit()
    committed = {c: store.visit_counts(c) for c in ("tokenizer", "actor_critic")}
    store.sample("tokenizer", 50, 4, seed=3)  # not committed
    store.close()
    with ReplayStore(tmp_path, backend=backend) as again:
        assert again.consumers == ["actor_critic", "tokenizer"]
        for c, want in committed.items():
            np.testing.assert_array_equal(again.visit_counts(c), want)
        assert committed["tokenizer"].sum() == 17 and committed["actor_critic"].sum() == 9
        # Counts of episodes added later start at zero.
        again.add_episode(**random_steps(rng, 3, SMALL))
        assert again.visit_counts("tokenizer")[-1] == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_buffers_background_worker_and_prefetcher(backend: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    with ReplayStore(tmp_path, backend=backend, obs_shape=SMALL) as w:
        fill_store(w, rng, num_episodes=8, max_len=20)
        w.commit()
    sync = ReplayStore(tmp_path, backend=backend, read_only=True)
    other = ReplayStore(tmp_path, backend=backend, read_only=True)
    out = other.allocate_batch(6, 7)
    ptr = out.obs.data_ptr()
    got = other.sample("wm", 6, 7, alpha=1.0, seed=5, out=out)
    assert got is out and out.obs.data_ptr() == ptr
    assert_batches_equal(out, sync.sample("wm", 6, 7, alpha=1.0, seed=5))
    # The worker runs its calls one at a time in submission order: the same batches and counts as the
    # same calls made in turn.
    worker = BackgroundWorker("test-worker")
    try:
        futures = [worker.submit(other.sample, "wm", 6, 7, alpha=1.0, seed=s) for s in range(6, 10)]
        for s, fut in zip(range(6, 10), futures):
            assert_batches_equal(fut.result(), sync.sample("wm", 6, 7, alpha=1.0, seed=s))
    finally:
        worker.shutdown()
    np.testing.assert_array_equal(other.visit_counts("wm"), sync.visit_counts("wm"))
    # The prefetcher reproduces plain calls with the seeds it is given, step by step.
    seeds = [int(s) for s in np.random.default_rng(42).integers(0, 2**63 - 1, size=5)]
    pre = StepPrefetcher(other, "ac", 4, 5, range(5), seeds.__getitem__, "cpu", pad_mode="left", alpha=2.0)
    try:
        for step in range(5):
            batch = pre.take(step)
            want = sync.sample("ac", 4, 5, pad_mode="left", alpha=2.0, seed=seeds[step]).to("cpu")
            assert_batches_equal(batch, want)
            np.testing.assert_array_equal(other.visit_counts("ac"), sync.visit_counts("ac"))
    finally:
        pre.close()
    assert other.visit_counts("ac").sum() == sync.visit_counts("ac").sum() == 5 * 4
    assert want.obs.dtype == torch.float32 and float(want.obs.max()) <= 1.0


@pytest.mark.gpu
def test_pinned_buffers(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    store = ReplayStore(tmp_path, obs_shape=SMALL)
    fill_store(store, rng, num_episodes=4)
    out = store.allocate_batch(3, 4, pin_memory=True)
    assert out.obs.is_pinned()
    store.sample("wm", 3, 4, seed=0, out=out)
    assert_batches_equal(out, store.sample("wm", 3, 4, seed=0, update_counts=False))
    assert out.to("cuda", non_blocking=True).obs.is_cuda


@pytest.mark.parametrize("backend", BACKENDS)
def test_reused_and_swapped_out_buffers(backend: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    store = ReplayStore(tmp_path, backend=backend, obs_shape=SMALL)
    model = fill_store(store, rng, num_episodes=5, max_len=9)
    assert store.sampling_probabilities("wm", 1.0).shape == (5,)
    out = store.allocate_batch(3, 4)
    for seed in range(4):  # the same buffers, refilled every call
        store.sample("wm", 3, 4, seed=seed, out=out)
        want = expected_segments(model, out.episode_id.numpy(), out.start.numpy(), 4, SMALL)
        for f, arr in want.items():
            np.testing.assert_array_equal(getattr(out, f).numpy(), arr, err_msg=f)
    old_obs = out.obs.clone()
    out.obs = torch.zeros_like(out.obs)  # a new tensor in the same Batch object is written, not the old one
    store.sample("wm", 3, 4, seed=0, out=out)
    assert out.obs.any()
    out.act.set_(torch.zeros(3, 5, dtype=torch.int64))  # same tensor object, new storage and shape
    with pytest.raises(ValueError, match="out.act must be torch.int64"):
        store.sample("wm", 3, 4, seed=0, out=out)
    assert old_obs.shape == out.obs.shape


def test_empty_store_probabilities(tmp_path: Path) -> None:
    for backend in ["numpy"] + (["cpp"] if cpp_available() else []):
        with ReplayStore(tmp_path / backend, backend=backend) as store:
            assert store.sampling_probabilities("wm", 1.0).shape == (0,)
            assert store.visit_counts("wm").shape == (0,)
            assert store.num_steps == 0 and store.lengths.shape == (0,)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("batch_size", "world_size"), [(7, 2), (5, 2), (86, 3), (6, 6)])
def test_rank_slices_concatenate_to_the_full_batch(
    backend: str, batch_size: int, world_size: int, tmp_path: Path
) -> None:
    """#13: every rank draws the global batch's segments and gathers its rows; the slices of all ranks
    concatenated are the full batch bit for bit, and every rank's counts equal the full call's."""
    rng = np.random.default_rng(12)
    with ReplayStore(tmp_path, backend=backend, obs_shape=SMALL) as w:
        fill_store(w, rng, num_episodes=9, max_len=15)
        w.commit()
    full_store = ReplayStore(tmp_path, backend=backend, read_only=True)
    ranks = [ReplayStore(tmp_path, backend=backend, read_only=True) for _ in range(world_size)]
    for call in range(3):  # counts of one call change the next call's priorities (alpha > 0)
        kw = {"pad_mode": ("both", "left")[call % 2], "alpha": 1.0, "seed": 100 + call}
        full = full_store.sample("wm", batch_size, 4, **kw)
        parts = []
        for r, store in enumerate(ranks):
            rows = slice(r * batch_size // world_size, (r + 1) * batch_size // world_size)
            ids = np.zeros(batch_size, dtype=np.int64)
            parts.append(store.sample("wm", batch_size, 4, rows=rows, episode_ids_out=ids, **kw))
            np.testing.assert_array_equal(ids, full.episode_id.numpy())
        for f in BATCH_FIELDS:
            assert torch.equal(torch.cat([getattr(p, f) for p in parts]), getattr(full, f)), f
        for store in ranks:
            np.testing.assert_array_equal(store.visit_counts("wm"), full_store.visit_counts("wm"))
    assert full_store.visit_counts("wm").sum() == 3 * batch_size


@pytest.mark.parametrize("backend", BACKENDS)
def test_uncounted_draw_then_add_visits_equals_a_counted_draw(backend: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    with ReplayStore(tmp_path, backend=backend, obs_shape=SMALL) as w:
        fill_store(w, rng, num_episodes=6, max_len=12)
        w.commit()
    counted = ReplayStore(tmp_path, backend=backend, read_only=True)
    deferred = ReplayStore(tmp_path, backend=backend, read_only=True)
    for seed in range(4):
        want = counted.sample("ac", 5, 3, alpha=2.0, seed=seed)
        ids = np.zeros(5, dtype=np.int64)
        got = deferred.sample("ac", 5, 3, alpha=2.0, seed=seed, update_counts=False, episode_ids_out=ids)
        assert_batches_equal(got, want)
        assert deferred.visit_counts("ac").sum() == 5 * seed  # not counted yet
        deferred.add_visits("ac", ids)
        np.testing.assert_array_equal(deferred.visit_counts("ac"), counted.visit_counts("ac"))


def test_bad_rows_and_episode_ids_out_are_rejected(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    store = ReplayStore(tmp_path, obs_shape=SMALL)
    fill_store(store, rng, num_episodes=3)
    for rows in (slice(2, 2), slice(0, 5), slice(-1, 3), slice(0, 3, 2), slice(None, 2)):
        with pytest.raises(ValueError, match="rows must be a non-empty slice"):
            store.sample("wm", 4, 3, rows=rows)
    with pytest.raises(TypeError, match="rows must be a slice"):
        store.sample("wm", 4, 3, rows=[0, 1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="episode_ids_out"):
        store.sample("wm", 4, 3, episode_ids_out=np.zeros(3, dtype=np.int64))
    with pytest.raises(KeyError, match="outside"):
        store.add_visits("wm", np.array([0, 3]))
    assert store.visit_counts("wm").sum() == 0  # nothing was counted by the refused calls
