"""Training under torch.distributed on CPUs (gloo), end to end through ``deltairis-train`` (issue #13).

- ``torchrun --nproc_per_node=2``: one epoch ends with the same weights on both ranks (the end-of-epoch
  digest check, ``distributed/weights_in_sync``) and rank 0's ``last.pt`` equals a single-process run of
  the same seed to 1e-4;
- resume with 1 rank from a 2-rank checkpoint and the reverse (a fresh replica is filled from rank 0);
- a rank killed with SIGKILL mid-epoch: the survivor exits with the distributed exit code and a message
  naming the rank well within the timeout; the last checkpoint is intact and resuming finishes the run;
- two "nodes": two processes (``RANK``/``WORLD_SIZE`` env, ``LOCAL_RANK=0`` on both) with separate replica
  folders, where the second process cannot see rank 0's folder at all when mount namespaces are available;
- one replica per node: ``torchrun --nproc_per_node=2`` is one node, where rank 1 reads rank 0's store and
  no replica is written; 3 ranks as 2 "nodes" (rank 0; ranks 1 and 2 sharing one replica that rank 1
  writes), rank 1 killed with SIGKILL in the middle of a replica sync, then resumed.

Every subprocess has a hard timeout, and every collective a short one (``distributed.timeout_s``), so a
failing case never hangs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from deltairis.checkpoint import load_torch_file
from deltairis.data import ReplayStore
from deltairis.train.run_folder import read_checkpoint

pytestmark = pytest.mark.slow

TIMEOUT_S = 20  # distributed.timeout_s of these runs
HARD_TIMEOUT = 300  # seconds any subprocess may run
DISTRIBUTED_EXIT_CODE = 69
TOL = 1e-4
#: the largest |distributed - single| weight difference of each comparison (printed for the closing note)
MEASURED: dict[str, float] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def _args(tiny: list[str], run_dir: Path, *extra: str) -> list[str]:
    return [f"hydra.run.dir={run_dir}", *tiny, f"distributed.timeout_s={TIMEOUT_S}", *extra]


def _resume_args(run_dir: Path, epochs: int, *extra: str) -> list[str]:
    """A resume takes the run folder's config; the device and timeout are given for the group."""
    return [
        f"hydra.run.dir={run_dir}",
        "common.resume=true",
        f"common.epochs={epochs}",
        "common.device=cpu",
        f"distributed.timeout_s={TIMEOUT_S}",
        *extra,
    ]


def _single(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deltairis.cli.train", *args],
        capture_output=True,
        text=True,
        timeout=HARD_TIMEOUT,
        env=_env(),
        check=False,
    )


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "deltairis.cli.train",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=HARD_TIMEOUT, env=_env(), check=False)


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_torch_file(run_dir / "checkpoints" / "last.pt", "agent")["state_dict"]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, tuple[float, int, int]]:
    """Per component (tokenizer, world_model, actor_critic): the largest |a - b|, how many weights differ
    by more than TOL, and how many weights there are. Non-float tensors must be equal."""
    assert a.keys() == b.keys()
    out: dict[str, tuple[float, int, int]] = {}
    for k, x in a.items():
        y = b[k]
        if not x.is_floating_point():
            assert torch.equal(x, y), k
            continue
        d = (x.double() - y.double()).abs()
        part = k.split(".", 1)[0]
        worst, over, total = out.get(part, (0.0, 0, 0))
        out[part] = (
            max(worst, float(d.max()) if d.numel() else 0.0),
            over + int((d > TOL).sum()),
            total + d.numel(),
        )
    return out


#: Adam's first steps move a weight by about the learning rate whatever the size of its gradient, so a
#: near-zero gradient entry whose sign another summation order flips moves by up to 2 * lr per step.
#: How many such entries a run has depends on its random draws (mostly the actor-critic's LSTM input
#: weights of CNN features that are ~0 on the batch, then a few conv weights), not on the world size.
#: Measured at the tiny epoch, per component (tokenizer / world model / actor-critic) weights over 1e-4
#: and the largest difference, since the reference initialisation of the tokenizer and world model:
#: - the noise floor, one process with 2 threads against 1 thread (same seed 7): 0 / 0 / 203 of 442,804
#:   (0.05%; largest 7.5e-7 / 5.1e-6 / 1.8e-3); at seeds 8-11 the actor-critic has 0, 40, 1,739 (0.39%)
#:   and 366 weights over 1e-4, never more than 2.1e-3 apart;
#: - 2 ranks against 1 process: seed 7: 0 / 0 / 444 (0.10%; 3.2e-6 / 1.1e-5 / 2.0e-3); seeds 8-11: at
#:   most 16 tokenizer weights (0.015%), 1 world-model weight and 0, 46, 1,953 (0.44%), 389 actor-critic
#:   weights, never more than 2.1e-3 apart (before it, with PyTorch's default initialisation, seed 7 gave
#:   84 and 255 actor-critic weights: the count moves with the draws, the 2 * lr bound does not); 2 ranks
#:   then 1 (resume, 2 epochs, seed 7): 850 actor-critic weights (0.19%), within 2.0e-3;
#: - a real bug, loss means with each rank's own denominator instead of the global one (2 ranks, seed 7):
#:   63,199 of 109,335 / 331,042 of 510,899 / 167,020 of 442,804 weights over 1e-4 (58% / 65% / 38%).
#:   (Gradients not averaged at all: the ranks diverge and the end-of-epoch hash check stops the run.)
#: So: every weight within TOL except at most FLIP_FRACTION of a component's weights (0.5%: above every
#: noise count measured, 0.44%, and 75x below the bug's 38%), which stay within FLIP_BOUND. A bug
#: confined to one small tensor (fewer weights than 0.5% of its component) is for
#: tests/train/test_distributed_step.py, which compares every tensor after one step to 1e-5.
FLIP_FRACTION = 5e-3
FLIP_BOUND = 2 * 1e-3 * 2  # 2 * lr (tiny preset: 1e-3) * the 2 steps of the first epoch


def _check_close(what: str, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    diff = _max_diff(a, b)
    MEASURED[what] = max(v[0] for v in diff.values())
    print(
        f"\n{what}: per component max |w - w_single|, weights over {TOL}: "
        + ", ".join(f"{k} {v[0]:.3g} ({v[1]} of {v[2]})" for k, v in diff.items())
    )
    for part, (worst, over, total) in diff.items():
        assert worst <= FLIP_BOUND and over <= FLIP_FRACTION * total, f"{what}: {part} differs: {diff}"


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _episodes(directory: Path) -> list[tuple]:
    with ReplayStore(directory, read_only=True, create=False) as s:
        return [
            tuple(getattr(s.load_episode(i), f) for f in ("obs", "act", "rew", "end", "trunc"))
            for i in range(s.num_episodes)
        ]


def _same_episodes(a: list[tuple], b: list[tuple]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            assert np.array_equal(u, v)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_overrides):
    """Single-process runs of 1 and 2 epochs, and a 2-rank torchrun run of 1 epoch (same seed)."""
    base = tmp_path_factory.mktemp("dist")
    out = {"base": base}
    for name, epochs in (("single1", 1), ("single2", 2)):
        _ok(_single(_args(tiny_overrides, base / name, f"common.epochs={epochs}")))
        out[name] = base / name
    _ok(
        _torchrun(
            _args(
                tiny_overrides, base / "ddp1", "common.epochs=1", f"distributed.store_dir={base / 'replicas'}"
            )
        )
    )
    out["ddp1"] = base / "ddp1"
    return out


def test_torchrun_two_ranks_equal_a_single_process(runs) -> None:
    _check_close("torchrun 2 ranks vs 1 process, 1 epoch", _weights(runs["ddp1"]), _weights(runs["single1"]))
    (record,) = _records(runs["ddp1"])
    assert record["distributed/world_size"] == 2.0
    assert (
        record["distributed/weights_in_sync"] == 1.0
    )  # every rank's weights, optimizers and counts hash alike
    for rank in (0, 1):
        for phase in ("tokenizer", "world_model", "actor_critic"):
            assert record[f"perf/rank{rank}/{phase}/steps_per_s"] > 0
            assert record[f"perf/rank{rank}/{phase}/samples_per_s"] > 0
    assert record["perf/rank0/collect/steps_per_s"] > 0 and "perf/rank1/collect/steps_per_s" not in record
    assert _records(runs["single1"])[0]["distributed/world_size"] == 1.0
    # one node: rank 1 read rank 0's store, no replica was written
    assert record["distributed/replicas"] == 0.0
    assert not (runs["base"] / "replicas").exists()
    # rank 1 wrote nothing in the run folder: one train.log, rank 0's
    assert not list(runs["ddp1"].glob("**/*rank1*"))


def test_resume_with_one_rank_from_a_two_rank_checkpoint(runs, tiny_overrides) -> None:
    run = runs["base"] / "ddp_then_single"
    shutil.copytree(runs["ddp1"], run)
    _ok(_single(_resume_args(run, 2)))
    _check_close("2 ranks, then 1 (resume) vs 1 process, 2 epochs", _weights(run), _weights(runs["single2"]))
    assert [r["distributed/world_size"] for r in _records(run)] == [2.0, 1.0]


def test_resume_with_two_ranks_from_a_one_rank_checkpoint(runs, tiny_overrides) -> None:
    run = runs["base"] / "single_then_ddp"
    shutil.copytree(runs["single1"], run)
    fresh = runs["base"] / "fresh-replicas"  # one node: rank 1 reads rank 0's store, no replica
    _ok(_torchrun(_resume_args(run, 2, f"distributed.store_dir={fresh}")))
    _check_close("1 rank, then 2 (resume) vs 1 process, 2 epochs", _weights(run), _weights(runs["single2"]))
    records = _records(run)
    assert [r["distributed/world_size"] for r in records] == [1.0, 2.0]
    assert records[1]["distributed/weights_in_sync"] == 1.0
    assert records[1]["distributed/replicas"] == 0.0 and not fresh.exists()


# A rank that kills itself (SIGKILL, no cleanup) at a fixed point of epoch 2 (rank 0: once the checkpoint
# of epoch 1, which a background thread writes, is on disk).
KILL_SCRIPT = """
import os, signal, sys
from deltairis.cli import train as cli
import deltairis.train.trainer as tr
victim, phase = int(sys.argv[1]), sys.argv[2]
rank = int(os.environ["RANK"])
if phase == "collect":
    real = tr.Trainer.collect
    def hook(self, epoch):
        if rank == victim and epoch == 2:
            self.wait_for_checkpoint()  # epoch 1's checkpoint is on disk (it is written on a thread)
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, epoch)
    tr.Trainer.collect = hook
else:
    real = tr.Trainer.train_component
    def hook(self, name, epoch, *a, **k):
        if rank == victim and name == phase and epoch == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, name, epoch, *a, **k)
    tr.Trainer.train_component = hook
sys.exit(cli.main(sys.argv[3:]))
"""


def _start_ranks(
    argv_of_rank, port: int, cwd_of_rank=None, prefix_of_rank=None, local_ranks=(0, 1)
) -> list[subprocess.Popen]:
    """One process per entry of ``local_ranks`` (its ``LOCAL_RANK``: a 0 starts a new "node")."""
    procs = []
    for rank, local in enumerate(local_ranks):
        env = _env(
            RANK=str(rank),
            LOCAL_RANK=str(local),
            WORLD_SIZE=str(len(local_ranks)),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        cmd = [*(prefix_of_rank(rank) if prefix_of_rank else []), *argv_of_rank(rank)]
        procs.append(
            subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=cwd_of_rank(rank) if cwd_of_rank else None,
            )
        )
    return procs


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str, float]]:
    out = []
    t0 = time.monotonic()
    for p in procs:
        try:
            _, err = p.communicate(timeout=HARD_TIMEOUT)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        out.append((p.returncode, err, time.monotonic() - t0))
    return out


@pytest.mark.parametrize("victim, phase", [(1, "world_model"), (0, "collect")])
def test_a_killed_rank_stops_the_other_with_a_message_and_the_checkpoint_survives(
    tmp_path, tiny_overrides, victim: int, phase: str
) -> None:
    run = tmp_path / "run"
    args = _args(tiny_overrides, run, "common.epochs=2", f"distributed.store_dir={tmp_path / 'replicas'}")
    procs = _start_ranks(
        lambda rank: [sys.executable, "-c", KILL_SCRIPT, str(victim), phase, *args], _free_port()
    )
    results = _finish(procs)
    survivor = 1 - victim
    assert results[victim][0] == -signal.SIGKILL
    code, err, _ = results[survivor]
    assert code == DISTRIBUTED_EXIT_CODE, err[-4000:]
    assert "distributed error" in err and f"rank {survivor} of 2" in err, err[-4000:]
    if victim == 0:  # rank 0 hosted the group's store: rank 1 says it lost rank 0
        assert "rank 0" in err.split("distributed error", 1)[1]
    else:
        assert "rank 1" in err.split("distributed error", 1)[1]
    # the checkpoint of epoch 1 is intact, and resuming (one rank) finishes the run
    assert read_checkpoint(run).trainer.epoch == 1
    _ok(_single(_resume_args(run, 2)))
    assert load_torch_file(run / "checkpoints" / "trainer_state.pt", "state")["epoch"] == 2


# Rank 1, the writer of node 1's replica, kills itself (SIGKILL) in the sync of epoch 2, once it appended
# steps to the replica and before it commits them.
KILL_IN_SYNC_SCRIPT = """
import os, signal, sys
from deltairis.cli import train as cli
import deltairis.train.replicas as rp
syncs, real_sync, real_append = [0], rp.sync_replicas, rp._append
def sync(*a, **k):
    syncs[0] += 1
    return real_sync(*a, **k)
def append(*a, **k):
    real_append(*a, **k)
    if int(os.environ["RANK"]) == 1 and syncs[0] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
rp.sync_replicas, rp._append = sync, append
import deltairis.train.trainer as tr
tr.sync_replicas = sync
sys.exit(cli.main(sys.argv[1:]))
"""

#: frames and the other fields of one stored step (toy env frames are 3x64x64)
STEP_BYTES = 3 * 64 * 64 + 8 + 4 + 1 + 1
#: 3 ranks need a batch of at least 3 rows
THREE_RANK_BATCHES = [f"training.{c}.batch_size=3" for c in ("tokenizer", "world_model", "actor_critic")]


def test_ranks_of_a_node_share_one_replica_through_a_kill_and_a_resume(tmp_path, tiny_overrides) -> None:
    """Node 0: rank 0. Node 1: ranks 1 (writes the replica) and 2 (reads it). Frames compressed (LZ4): the
    sync sends rank 0's blocks as they are."""
    run, local = tmp_path / "run", tmp_path / "node1"
    store = f"distributed.store_dir={local}"

    def argv(rank: int) -> list[str]:
        args = _args(
            tiny_overrides, run, "common.epochs=2", store, "data.compression=lz4", *THREE_RANK_BATCHES
        )
        return [sys.executable, "-c", KILL_IN_SYNC_SCRIPT, *args]

    results = _finish(_start_ranks(argv, _free_port(), local_ranks=(0, 0, 1)))
    assert results[1][0] == -signal.SIGKILL, results[1][1][-4000:]
    for rank in (0, 2):
        code, err, _ = results[rank]
        assert code == DISTRIBUTED_EXIT_CODE, err[-4000:]
        assert "rank 1" in err.split("distributed error", 1)[1], err[-4000:]
    assert read_checkpoint(run).trainer.epoch == 1
    # the killed writer left uncommitted steps in the replica; its committed state is epoch 1's
    with ReplayStore(local / "rank1" / "train", read_only=True, create=False) as replica:
        committed_bytes = replica.data_files()["obs"][1]
    assert (local / "rank1" / "train" / "obs.lz4").stat().st_size > committed_bytes
    # resume on the same 3 ranks: the replica drops the partial sync and is filled again
    resume = _resume_args(run, 2, store)
    cli = [sys.executable, "-m", "deltairis.cli.train", *resume]
    results = _finish(_start_ranks(lambda rank: cli, _free_port(), local_ranks=(0, 0, 1)))
    for code, err, _ in results:
        assert code == 0, err[-6000:]
    record = _records(run)[-1]
    assert record["distributed/world_size"] == 3.0 and record["distributed/weights_in_sync"] == 1.0
    assert record["distributed/replicas"] == 1.0  # node 1's, shared by ranks 1 and 2
    assert 0 < record["distributed/synced_bytes"] < record["distributed/synced_steps"] * STEP_BYTES
    assert sorted(p.name for p in local.iterdir()) == ["rank1"]
    assert (local / "rank1" / "train" / "obs.lz4").exists() and not (
        local / "rank1" / "train" / "obs.u8"
    ).exists()
    _same_episodes(_episodes(local / "rank1" / "train"), _episodes(run / "checkpoints" / "dataset" / "train"))


def _can_hide_folders() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=30, check=False)
    return probe.returncode == 0


def test_two_nodes_without_a_shared_folder(tmp_path, tiny_overrides, runs) -> None:
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    node0.mkdir()
    node1.mkdir()
    run = node0 / "run"
    hide = _can_hide_folders()

    def argv(rank: int) -> list[str]:
        own = node0 / "replicas" if rank == 0 else node1 / "local"
        return [
            sys.executable,
            "-m",
            "deltairis.cli.train",
            *_args(tiny_overrides, run, "common.epochs=1", f"distributed.store_dir={own}"),
        ]

    def prefix(rank: int) -> list[str]:
        if rank == 0 or not hide:
            return []
        # "node 1" runs in its own mount namespace where node 0's folder is an empty tmpfs
        return ["unshare", "-m", "sh", "-c", f'mount -t tmpfs none "{node0}" && exec "$0" "$@"']

    results = _finish(
        _start_ranks(
            argv,
            _free_port(),
            cwd_of_rank=lambda r: node0 if r == 0 else node1,
            prefix_of_rank=prefix,
            local_ranks=(0, 0),  # two nodes of one rank each
        )
    )
    for code, err, _ in results:
        assert code == 0, err[-6000:]
    (record,) = _records(run)
    assert record["distributed/world_size"] == 2.0 and record["distributed/weights_in_sync"] == 1.0
    _same_episodes(
        _episodes(node1 / "local" / "rank1" / "train"), _episodes(run / "checkpoints" / "dataset" / "train")
    )
    assert not (node0 / "replicas" / "rank1").exists()
    assert record["distributed/replicas"] == 1.0
    print(f"\nrun folder hidden from rank 1: {hide}")
    _check_close("2 'nodes' vs 1 process, 1 epoch", _weights(run), _weights(runs["single1"]))


# A rank that stops (SIGSTOP: alive but silent, like a hung process) at a fixed point of epoch 2.
HANG_SCRIPT = KILL_SCRIPT.replace("signal.SIGKILL", "signal.SIGSTOP")


@pytest.mark.parametrize("victim, phase", [(0, "collect"), (1, "actor_critic")])
def test_a_hung_rank_stops_the_other_within_the_timeout(
    tmp_path, tiny_overrides, victim: int, phase: str
) -> None:
    run = tmp_path / "run"
    args = _args(tiny_overrides, run, "common.epochs=2", f"distributed.store_dir={tmp_path / 'replicas'}")
    procs = _start_ranks(
        lambda rank: [sys.executable, "-c", HANG_SCRIPT, str(victim), phase, *args], _free_port()
    )
    survivor = 1 - victim
    t0 = time.monotonic()
    try:
        _, err = procs[survivor].communicate(timeout=HARD_TIMEOUT)
    finally:
        procs[victim].kill()
        procs[victim].communicate()
    waited = time.monotonic() - t0
    assert procs[survivor].returncode == DISTRIBUTED_EXIT_CODE, err[-4000:]
    message = err.split("distributed error", 1)[1]
    assert f"rank {survivor} of 2" in message
    if victim == 0:  # rank 1 waits for rank 0 on its heartbeat
        assert f"no heartbeat from rank 0 for {TIMEOUT_S}s" in message, message
    else:  # rank 0 waits in a collective; the message names the silent rank
        assert "no heartbeat from rank 1" in message, message
    assert waited < HARD_TIMEOUT
    assert read_checkpoint(run).trainer.epoch == 1


# Rank 0 sends itself SIGTERM during its first world-model step (as test_preemption.py's CLI test does).
SIGTERM_SCRIPT = """
import os, signal, sys
from deltairis.cli import train as cli
import deltairis.train.trainer as tr
real = tr.Trainer.train_component
def hook(self, name, epoch, *a, **k):
    if int(os.environ["RANK"]) == 0 and name == "world_model" and epoch == 1:
        os.kill(os.getpid(), signal.SIGTERM)
    return real(self, name, epoch, *a, **k)
tr.Trainer.train_component = hook
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigterm_on_rank_0_checkpoints_mid_epoch_and_two_ranks_resume_from_there(
    tmp_path, tiny_overrides, runs
) -> None:
    run = tmp_path / "run"
    args = _args(tiny_overrides, run, "common.epochs=1", f"distributed.store_dir={tmp_path / 'replicas'}")
    results = _finish(_start_ranks(lambda rank: [sys.executable, "-c", SIGTERM_SCRIPT, *args], _free_port()))
    (code0, err0, _), (code1, err1, _) = results
    assert code0 == 75, err0[-4000:]  # rank 0: mid-epoch checkpoint, the preemption status
    assert "stopped by SIGTERM at epoch 1, world_model step 1" in err0
    assert code1 == DISTRIBUTED_EXIT_CODE, err1[-4000:]  # rank 1 lost rank 0 and says so
    position = load_torch_file(run / "checkpoints" / "trainer_state.pt", "state")["position"]
    assert position["phase"] == "world_model" and position["step"] == 1
    # two ranks go on from the mid-epoch position (rank 1 with a fresh replica) and end as one process
    _ok(_torchrun(_resume_args(run, 1, f"distributed.store_dir={tmp_path / 'fresh'}")))
    _check_close(
        "SIGTERM mid-epoch, resumed on 2 ranks vs 1 process, 1 epoch",
        _weights(run),
        _weights(runs["single1"]),
    )
    assert load_torch_file(run / "checkpoints" / "trainer_state.pt", "state")["position"] is None


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs two GPUs (one per rank)")
def test_torchrun_on_two_gpus_with_nccl(tmp_path, tiny_overrides) -> None:
    run = tmp_path / "run"
    tiny = [o for o in tiny_overrides if o != "common.device=cpu"]
    _ok(_torchrun(_args(tiny, run, "common.device=cuda", "common.epochs=1")))
    (record,) = _records(run)
    assert record["distributed/world_size"] == 2.0 and record["distributed/weights_in_sync"] == 1.0
