"""Crash safety and write failures: a killed writer, a full disk, a read-only directory, a corrupt index."""

from __future__ import annotations

import errno
import json
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
from deltairis.data.replay_store import DATA_FILES, INDEX_NAME
from deltairis.data.sampler_backends import cpp_available

# A writer whose episode i is a deterministic function of i: it is added with its first part, and the
# previous episode gets its second part, then everything is committed and the episode count printed.
WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    from deltairis.data import ReplayStore
    import deltairis.data.episode_store as replay  # the module that writes the files

    def episode(i):
        rng = np.random.default_rng(i)
        t = 20 + i % 13
        return {
            "obs": rng.integers(0, 256, (t, 3, 64, 64), dtype=np.uint8),
            "act": rng.integers(0, 17, t),
            "rew": rng.standard_normal(t).astype(np.float32),
            "end": np.zeros(t, np.uint8),
            "trunc": np.zeros(t, np.uint8),
        }

    directory, inject, rounds, pre_rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    compression = sys.argv[5]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    store = ReplayStore(directory, backend="numpy", compression=compression)

    def one_round(i):
        ep = episode(i)
        cut = len(ep["act"]) // 2
        store.add_episode(**{k: v[:cut] for k, v in ep.items()})
        if i > 0:
            prev = episode(i - 1)
            cut_prev = len(prev["act"]) // 2
            store.extend_episode(i - 1, **{k: v[cut_prev:] for k, v in prev.items()})
        store.commit()

    for i in range(store.num_episodes, store.num_episodes + pre_rounds):
        one_round(i)
    if inject == "append":  # die in the middle of an append: some files written, others not
        real, calls = replay._pwrite_all, [0]
        def pwrite(*args):
            calls[0] += 1
            if calls[0] == 3:
                die()
            real(*args)
        replay._pwrite_all = pwrite
    elif inject in ("before_rename", "after_rename"):
        real_replace = os.replace
        def replace(src, dst):
            if inject == "after_rename":
                real_replace(src, dst)
            die()
        replay.os.replace = replace
    print("ready", flush=True)
    i = store.num_episodes
    for _ in range(rounds):
        one_round(i)
        i += 1
        print(i, flush=True)
    """
)


def episode(i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    t = 20 + i % 13
    return {
        "obs": rng.integers(0, 256, (t, 3, 64, 64), dtype=np.uint8),
        "act": rng.integers(0, 17, t),
        "rew": rng.standard_normal(t).astype(np.float32),
        "end": np.zeros(t, np.uint8),
        "trunc": np.zeros(t, np.uint8),
    }


def run_writer(
    directory: Path,
    inject: str,
    rounds: int,
    kill_after: float | None = None,
    pre_rounds: int = 0,
    compression: str = "none",
) -> list[int]:
    """Runs the writer; kills it (SIGKILL) ``kill_after`` seconds after it is ready. Returns printed counts."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory), inject, str(rounds), str(pre_rounds), compression],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.strip() == "ready", proc.stderr.read() if proc.stderr else first
    if kill_after is not None:
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    if kill_after is None and inject == "none":
        assert proc.returncode == 0, err
    return [int(line) for line in out.split()]


def check_committed(directory: Path, backend: str, at_least: int, at_most: int) -> int:
    """Reopens the store and checks it is a state the writer committed; returns its episode count."""
    with ReplayStore(directory, backend=backend) as store:
        n = store.num_episodes
        assert at_least <= n <= at_most
        for i in range(n):
            full = episode(i)
            length = len(full["act"])
            # Every committed round leaves all episodes complete except the newest, which holds its first half.
            want = length // 2 if i == n - 1 else length
            assert store.lengths[i] == want
            got = store.load_episode(i)
            for f in FIELDS:
                np.testing.assert_array_equal(getattr(got, f), full[f][:want], err_msg=f"episode {i} {f}")
            if i >= n - 2:  # the newest episodes through the backend's gather too
                batch = store.gather(np.array([i]), np.array([0]), np.array([want]))
                np.testing.assert_array_equal(batch.obs[0].numpy(), full["obs"][:want], err_msg=f"gather {i}")
        assert store.num_steps == int(store.lengths.sum())
        if store.compression == "none":
            for field, (name, dtype) in DATA_FILES.items():
                row = dtype.itemsize * (3 * 64 * 64 if field == "obs" else 1)
                assert (directory / name).stat().st_size == store.num_steps * row
        for name, size in store.data_files().values():  # the writer's open trimmed every file
            assert (directory / name).stat().st_size == size, name
    return n


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_kill_at_random_times(compression: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for _ in range(2):
        printed = run_writer(
            tmp_path, "none", rounds=10_000, kill_after=float(rng.uniform(0.1, 0.6)), compression=compression
        )
        assert printed, "the writer was killed before its first commit; raise kill_after"
        # The kill may land after a commit but before its line was printed: one more round at most.
        for backend in [b if isinstance(b, str) else b.values[0] for b in BACKENDS]:
            if backend == "cpp" and not cpp_available():
                continue
            check_committed(tmp_path, backend, at_least=printed[-1], at_most=printed[-1] + 1)


def one_round(store: ReplayStore, i: int) -> None:
    ep = episode(i)
    store.add_episode(**{k: v[: len(v) // 2] for k, v in ep.items()})
    prev = episode(i - 1)
    store.extend_episode(i - 1, **{k: v[len(v) // 2 :] for k, v in prev.items()})
    store.commit()


@pytest.mark.parametrize("compression", ["none", "lz4"])
@pytest.mark.parametrize(
    ("inject", "survives"), [("append", False), ("before_rename", False), ("after_rename", True)]
)
def test_kill_at_injected_points(inject: str, survives: bool, compression: str, tmp_path: Path) -> None:
    printed = run_writer(tmp_path, inject, rounds=5, pre_rounds=3, compression=compression)
    assert printed == []  # died inside the first round after the 3 clean ones
    n = check_committed(tmp_path, "numpy", at_least=3, at_most=4)
    assert n == (4 if survives else 3)
    if compression != "none":  # the C++ sampler decodes the same committed blocks
        for backend in [b if isinstance(b, str) else b.values[0] for b in BACKENDS]:
            if backend == "cpp" and cpp_available():
                check_committed(tmp_path, "cpp", at_least=n, at_most=n)
    # The store keeps working after the crash, and the temp index is cleaned up.
    with ReplayStore(tmp_path, compression=compression) as store:
        assert not (tmp_path / (INDEX_NAME + ".tmp")).exists()
        one_round(store, n)
    check_committed(tmp_path, "numpy", at_least=n + 1, at_most=n + 1)


FSIZE_CHILD = textwrap.dedent(
    """
    import json, os, resource, signal, sys
    import numpy as np
    from deltairis.data import ReplayStore, ReplayStoreError

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed
    directory = sys.argv[1]
    rng = np.random.default_rng(0)
    def steps(t):
        return dict(obs=rng.integers(0, 256, (t, 3, 64, 64), dtype=np.uint8), act=np.arange(t),
                    rew=np.ones(t, np.float32), end=np.zeros(t, np.uint8), trunc=np.zeros(t, np.uint8))
    store = ReplayStore(directory)
    store.add_episode(**steps(5))
    store.commit()
    limit = os.path.getsize(os.path.join(directory, "obs.u8")) + 30000
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    result = {"num_steps_before": store.num_steps}
    try:
        store.add_episode(**steps(10))
        result["error"] = None
    except ReplayStoreError as exc:
        result["error"] = str(exc)
    result["num_steps_after"] = store.num_steps
    result["obs_size"] = os.path.getsize(os.path.join(directory, "obs.u8"))
    store.add_episode(**steps(1))  # still fits under the limit
    store.commit()
    result["num_episodes"] = store.num_episodes
    print(json.dumps(result))
    """
)


def test_file_size_limit_in_subprocess(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", FSIZE_CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["error"] is not None and "file size limit" in result["error"]
    assert "committed state is intact" in result["error"]
    assert result["num_steps_after"] == result["num_steps_before"] == 5
    assert result["obs_size"] == 5 * 3 * 64 * 64  # the partial write was trimmed
    assert result["num_episodes"] == 2
    with ReplayStore(tmp_path) as store:
        np.testing.assert_array_equal(store.lengths, [5, 1])
        np.testing.assert_array_equal(store.load_episode(0).act, np.arange(5))


@pytest.mark.parametrize("backend", BACKENDS)
def test_disk_full_during_append(backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    store = ReplayStore(tmp_path, backend=backend)
    model = fill_store(store, rng, num_episodes=3, max_len=8, num_extends=4)
    store.commit()
    sizes = {name: (tmp_path / name).stat().st_size for name, _ in DATA_FILES.values()}
    real = os.pwrite
    calls = [0]

    def full_disk(fd: int, data: memoryview, offset: int) -> int:
        calls[0] += 1
        if calls[0] == 2:  # obs went through, act fails halfway
            real(fd, bytes(data)[: len(data) // 2], offset)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full_disk)
    with pytest.raises(ReplayStoreError, match="disk is full"):
        store.add_episode(**random_steps(rng, 6))
    calls[0] = 0
    with pytest.raises(ReplayStoreError, match="disk is full"):
        store.extend_episode(1, **random_steps(rng, 6))
    monkeypatch.undo()
    assert store.num_episodes == 3
    np.testing.assert_array_equal(store.lengths, [len(m["act"]) for m in model])
    assert {name: (tmp_path / name).stat().st_size for name in sizes} == sizes
    # Later appends land in the right rows and read back correctly.
    extra = random_steps(rng, 4)
    assert store.add_episode(**extra) == 3
    np.testing.assert_array_equal(store.load_episode(3).obs, extra["obs"])
    np.testing.assert_array_equal(store.load_episode(1).obs, model[1]["obs"])
    store.commit()


@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_commit_keeps_previous_state(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(2)
    store = ReplayStore(tmp_path, backend=backend)
    fill_store(store, rng, num_episodes=2, max_len=5, num_extends=0)
    store.commit()
    store.add_episode(**random_steps(rng, 3))

    def read_only_fs(src: object, dst: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "replace", read_only_fs)
    with pytest.raises(ReplayStoreError, match="Read-only file system"):
        store.commit()
    monkeypatch.undo()
    assert not (tmp_path / (INDEX_NAME + ".tmp")).exists()
    with ReplayStore(tmp_path, backend=backend, read_only=True) as reader:
        assert reader.num_episodes == 2
    store.commit()  # the pending episode is committed once the file system allows it
    store.close()
    with ReplayStore(tmp_path, backend=backend, read_only=True) as reader:
        assert reader.num_episodes == 3


def test_read_only_store_and_directory(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    with ReplayStore(tmp_path) as w:
        fill_store(w, rng, num_episodes=2, max_len=5, num_extends=0)
        w.commit()
    reader = ReplayStore(tmp_path, read_only=True)
    with pytest.raises(ReplayStoreError, match="read-only"):
        reader.add_episode(**random_steps(rng, 2))
    with pytest.raises(ReplayStoreError, match="read-only"):
        reader.commit()
    assert reader.sample("wm", 2, 3, seed=0).obs.shape == (2, 3, 3, 64, 64)
    with pytest.raises(FileNotFoundError, match="no replay store"):
        ReplayStore(tmp_path / "missing", create=False)
    (tmp_path / "a_file").write_bytes(b"x")
    with pytest.raises(ReplayStoreError, match="cannot create replay store directory"):
        ReplayStore(tmp_path / "a_file" / "store")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_permissions(tmp_path: Path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o555)
    try:
        with pytest.raises(ReplayStoreError, match="not writable"):
            ReplayStore(directory)
    finally:
        directory.chmod(0o755)


def test_single_writer_lock(tmp_path: Path) -> None:
    first = ReplayStore(tmp_path)
    with pytest.raises(ReplayStoreError, match="already open for writing"):
        ReplayStore(tmp_path)
    ReplayStore(tmp_path, read_only=True).close()  # readers are fine
    first.close()
    ReplayStore(tmp_path).close()


def test_corrupt_index_is_reported(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    with ReplayStore(tmp_path) as w:
        fill_store(w, rng, num_episodes=2, max_len=5, num_extends=0)
        w.commit()
    good = (tmp_path / INDEX_NAME).read_bytes()
    (tmp_path / INDEX_NAME).write_bytes(good[: len(good) // 2])
    with pytest.raises(ReplayStoreError, match="corrupt replay index"):
        ReplayStore(tmp_path)
    (tmp_path / INDEX_NAME).write_bytes(good)
    os.truncate(tmp_path / "act.i64", 8)  # a data file shorter than the index says
    with pytest.raises(ReplayStoreError, match="act.i64 holds 8 bytes"):
        ReplayStore(tmp_path)
