"""Opening a run folder never runs its code (issue 25).

A crafted pickle whose ``__reduce__`` would create a marker file is put, in turn, in place of each file of
the checkpoint set and of the env state inside ``trainer_state.pt``: resuming, ``deltairis-play`` and
``deltairis-eval`` each exit with an error naming the file, the marker is never created and no other file
of the run folder changes. A set in the previous format (pickled NumPy arrays and env) is refused with the
``common.trust_checkpoint=true`` hint; that override loads it once, rewrites it in the safe format and
resumes bit for bit as the safe set does. No module of the package unpickles outside an allow-list.
"""

from __future__ import annotations

import ast
import io
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_run import run_folder_snapshot

import deltairis
from deltairis.checkpoint import LegacyCheckpointError, load_safe
from deltairis.cli import eval as eval_cli
from deltairis.cli import play as play_cli
from deltairis.cli import train as train_cli
from deltairis.envs.state_blob import restore_env_state
from deltairis.errors import CheckpointWriteError
from deltairis.train.checkpointing import upgrade_legacy_set
from deltairis.train.collector import paused_from_plain
from deltairis.train.configuration import load_run_config
from deltairis.train.env_config import make_env
from deltairis.train.state import TrainerState
from deltairis.train.trainer import train

MEMBERS = ("trainer_state.pt", "optimizer.pt", "last.pt")


class Crafted:
    """What a crafted checkpoint holds: unpickling it calls ``open(marker, "w")``, creating the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_config) -> Path:
    """One tiny 1-epoch toy run, copied by every test."""
    run = tmp_path_factory.mktemp("safe") / "run"
    train(tiny_config("common.epochs=1"), run)
    return run


def _plant(run: Path, where: str, marker: Path) -> str:
    """Put the crafted pickle at ``where`` (a member's name, or ``env``); return the file it is in."""
    ckpt = run / "checkpoints"
    if where == "env":
        state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
        state["collector"]["env"] = pickle.dumps(Crafted(marker))
        torch.save(state, ckpt / "trainer_state.pt")
        return "trainer_state.pt"
    torch.save({"version": 2, "epoch": 1, "payload": Crafted(marker)}, ckpt / where)
    return where


def _resume(run: Path) -> int:
    return train_cli.main(["common.resume=true", f"hydra.run.dir={run}", "common.epochs=2"])


def _play(run: Path) -> int:
    return play_cli.main(
        ["--run-dir", str(run), "--headless", "--steps", "2", "--output", str(run.parent / "p.gif")]
    )


def _eval(run: Path) -> int:
    return eval_cli.main(["--run-dir", str(run), "--episodes", "1", "--num-envs", "1"])


ENTRY_POINTS = {"resume": (_resume, 1), "play": (_play, 2), "eval": (_eval, 2)}


@pytest.mark.parametrize("where", [*MEMBERS, "env"])
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_a_crafted_file_is_refused_by_name_and_never_runs(
    finished_run: Path, tmp_path: Path, capsys, entry: str, where: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    marker = tmp_path / "marker"
    name = _plant(run, where, marker)
    before = run_folder_snapshot(run)
    call, status = ENTRY_POINTS[entry]
    assert call(run) == status
    err = capsys.readouterr().err
    assert str(run / "checkpoints" / name) in err, err[-2000:]
    assert ("env state" in err) if where == "env" else ("not plain data" in err), err[-2000:]
    assert not marker.exists()
    assert run_folder_snapshot(run) == before


def test_resume_sh_refuses_a_crafted_trainer_state(finished_run: Path, tmp_path: Path) -> None:
    """The run folder's own script, in a fresh interpreter (what a user of a shared folder runs)."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    marker = tmp_path / "marker"
    raw = pickle.dumps(Crafted(marker))  # a bare pickle, not even a torch file
    (run / "checkpoints" / "trainer_state.pt").write_bytes(raw)
    before = run_folder_snapshot(run)
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    r = subprocess.run(
        ["bash", str(run / "scripts" / "resume.sh"), "common.epochs=2"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 1, r.stderr[-2000:]
    assert "trainer_state.pt is not plain data: loading it would call io.open" in r.stderr, r.stderr[-2000:]
    assert not marker.exists() and run_folder_snapshot(run) == before


# -- the previous format ---------------------------------------------------------------------------------


def _write_previous_format(run: Path) -> None:
    """Turn a run folder's set into the format earlier versions wrote: NumPy arrays, the env pickled
    whole, the paused collection's objects, version 1 (torch.save's default pickle protocol)."""
    ckpt = run / "checkpoints"
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    trainer = TrainerState.from_state_dict(state)
    collector = dict(state["collector"])
    cfg = load_run_config(run / "config" / "trainer.yaml")
    env = make_env(cfg.env, "train", cfg.collection.train.num_envs, seed=0)
    restore_env_state(env, collector["env"], "test")
    collector.update(
        env=pickle.dumps(env),
        paused=paused_from_plain(collector["paused"]),
        **{k: collector[k].numpy().copy() for k in ("obs", "episode_ids", "recent", "recent_len")},
    )
    env.close()
    torch.save({**state, "version": 1, "rng": trainer.rng, "collector": collector}, ckpt / "trainer_state.pt")
    optim = torch.load(ckpt / "optimizer.pt", weights_only=True)
    torch.save({**optim, "version": 1}, ckpt / "optimizer.pt")


@pytest.fixture(scope="module")
def previous_format_run(finished_run: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("previous") / "run"
    shutil.copytree(finished_run, run)
    _write_previous_format(run)
    with pytest.raises(pickle.UnpicklingError):  # what this issue is about: it needs full unpickling
        torch.load(run / "checkpoints" / "trainer_state.pt", weights_only=True)
    return run


def test_a_previous_format_set_is_refused_naming_the_override(
    previous_format_run: Path, tmp_path, capsys
) -> None:
    run = tmp_path / "run"
    shutil.copytree(previous_format_run, run)
    before = run_folder_snapshot(run)
    assert _resume(run) == 1
    err = capsys.readouterr().err
    assert "trainer_state.pt was written by an earlier delta-iris version" in err
    assert "common.trust_checkpoint=true" in err and "runs any code a crafted file holds" in err
    assert run_folder_snapshot(run) == before
    # play and eval only read last.pt (data in both formats): they go on, with a warning
    assert _play(run) == 0


def test_trust_checkpoint_rewrites_the_set_safely_and_resumes_bit_identically(
    finished_run: Path, previous_format_run: Path, tmp_path: Path, capsys
) -> None:
    safe, old = tmp_path / "safe", tmp_path / "old"
    shutil.copytree(finished_run, safe)
    shutil.copytree(previous_format_run, old)
    assert _resume(safe) == 0
    assert (
        train_cli.main(
            ["common.resume=true", f"hydra.run.dir={old}", "common.epochs=2", "common.trust_checkpoint=true"]
        )
        == 0
    )
    assert "full unpickling" in capsys.readouterr().err
    for name in MEMBERS:  # the rewritten (then resumed) set is data
        load_safe(old / "checkpoints" / name, name)
    assert (
        not list((old / "checkpoints").glob("*.next"))
        and not (old / "checkpoints" / ".journal.json").exists()
    )
    a = load_safe(safe / "checkpoints" / "last.pt")["state_dict"]
    b = load_safe(old / "checkpoints" / "last.pt")["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = load_safe(safe / "checkpoints" / "trainer_state.pt")
    sb = load_safe(old / "checkpoints" / "trainer_state.pt")
    assert sa["collector"]["env"] == sb["collector"]["env"] and torch.equal(
        sa["rng"]["torch"], sb["rng"]["torch"]
    )


@pytest.mark.parametrize("where", ["trainer_state.pt", "optimizer.pt", "env"])
def test_even_trust_checkpoint_refuses_what_no_version_wrote(
    previous_format_run: Path, tmp_path: Path, capsys, where: str
) -> None:
    """The override only unpickles the names an earlier version's files and envs held: a crafted file
    (or a crafted env pickle inside an earlier version's trainer_state.pt) is still refused unread."""
    run = tmp_path / "run"
    shutil.copytree(previous_format_run, run)
    marker = tmp_path / "marker"
    if where == "env":
        path = run / "checkpoints" / "trainer_state.pt"
        state = torch.load(path, weights_only=False)  # the test's own file
        state["collector"]["env"] = pickle.dumps(Crafted(marker))
        torch.save(state, path)
    else:
        _plant(run, where, marker)
    before = run_folder_snapshot(run)
    assert (
        train_cli.main(
            ["common.resume=true", f"hydra.run.dir={run}", "common.epochs=2", "common.trust_checkpoint=true"]
        )
        == 1
    )
    err = capsys.readouterr().err
    refusal = (
        "not plain data: loading it would call io.open"
        if where == "trainer_state.pt"
        else ("names io.open, which no delta-iris version wrote")
    )
    assert refusal in err, err[-2000:]
    assert not marker.exists() and run_folder_snapshot(run) == before


def test_the_upgrade_is_atomic(previous_format_run: Path, tmp_path: Path, monkeypatch) -> None:
    """A write that fails half way leaves the previous set as it was (the journaled set writer)."""
    import deltairis.checkpoint as ck

    run = tmp_path / "run"
    shutil.copytree(previous_format_run, run)
    before = run_folder_snapshot(run)
    calls = [0]
    real = ck._write_synced

    def failing(path: Path, data: bytes) -> None:
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(ck, "_write_synced", failing)
    with pytest.raises(CheckpointWriteError, match="the previous checkpoint set is intact"):
        upgrade_legacy_set(run / "checkpoints")
    assert run_folder_snapshot(run) == before
    with pytest.raises(LegacyCheckpointError, match="trust_checkpoint"):
        load_safe(run / "checkpoints" / "trainer_state.pt", "trainer state")


# -- no unpickling in the package ------------------------------------------------------------------------

#: (module, function) allowed to unpickle: the trusted upgrade of an earlier version's set only
#: (messages between our own ranks go through torch.distributed's object collectives)
ALLOWED = {
    ("deltairis/checkpoint.py", "load_trusted"): "torch.load",
    ("deltairis/train/checkpointing.py", "_upgrade_collector"): "pickle.loads",
}


def _unsafe_calls(path: Path) -> list[tuple[str, str, int]]:
    """(function, call, line) of every ``pickle.load(s)``/``Unpickler`` call and every ``torch.load``
    without a literal ``weights_only=True``."""
    tree = ast.parse(path.read_text())
    out = []

    def visit(node: ast.AST, func: str) -> None:
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else func
            if isinstance(child, ast.Call):
                f = child.func
                dotted = ast.unparse(f)
                if dotted in (
                    "pickle.load",
                    "pickle.loads",
                    "pickle.Unpickler",
                    "cloudpickle.loads",
                    "dill.loads",
                ):
                    out.append((func, dotted, child.lineno))
                elif dotted == "torch.load" or dotted.endswith("serialization.load"):
                    kw = {k.arg: k.value for k in child.keywords}
                    wo = kw.get("weights_only")
                    if not (isinstance(wo, ast.Constant) and wo.value is True):
                        out.append((func, "torch.load", child.lineno))
            visit(child, name)

    visit(tree, "<module>")
    return out


def test_no_module_unpickles_outside_the_allow_list() -> None:
    root = Path(deltairis.__file__).resolve().parent
    found = {}
    for path in sorted(root.rglob("*.py")):
        rel = str(path.relative_to(root.parent))
        text = path.read_text()
        assert "weights_only=False" not in text or rel == "deltairis/checkpoint.py", rel
        for func, call, line in _unsafe_calls(path):
            found[(rel, func)] = (call, line)
    unexpected = {k: v for k, v in found.items() if ALLOWED.get(k) != v[0]}
    assert not unexpected, f"unpickling outside the allow-list: {unexpected}"
    assert set(found) == set(ALLOWED), "the allow-list names a call that is gone: shrink it"


def test_the_checker_sees_an_unsafe_call(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle, torch\ndef f(p):\n    torch.load(p)\n    return pickle.loads(b'')\n")
    assert [c for _, c, _ in _unsafe_calls(bad)] == ["torch.load", "pickle.loads"]


def test_plain_values_round_trip_bit_for_bit() -> None:
    from deltairis.checkpoint import from_plain, to_plain

    value = {
        "a": np.arange(5, dtype=np.uint16),
        "s": np.float32(0.1),
        "rng": np.random.get_state(),
        "t": (1, b"x"),
    }
    buf = io.BytesIO()
    torch.save(to_plain(value), buf)
    back = from_plain(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert back["a"].dtype == np.uint16 and np.array_equal(back["a"], value["a"])
    assert type(back["s"]) is np.float32 and back["s"].tobytes() == value["s"].tobytes()
    assert (
        back["rng"][0] == "MT19937"
        and np.array_equal(back["rng"][1], value["rng"][1])
        and back["t"] == (1, b"x")
    )
    with pytest.raises(TypeError, match="cannot store a Crafted"):
        to_plain({"x": Crafted(Path("nowhere"))})


def test_a_crafted_reference_episode_is_refused_by_name(tmp_path: Path) -> None:
    from deltairis.data import ReplayStore
    from deltairis.data.reference_import import import_reference_dataset

    src = tmp_path / "ref"
    src.mkdir()
    marker = tmp_path / "marker"
    torch.save({"observations": Crafted(marker)}, src / "0.pt")
    store = ReplayStore(tmp_path / "store", create=True)
    with pytest.raises(ValueError, match=r"0\.pt is not plain data"):
        import_reference_dataset(src, store)
    assert not marker.exists() and store.num_episodes == 0
    store.close()
