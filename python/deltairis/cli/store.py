"""``deltairis-store``: tools for replay stores.

``deltairis-store convert PATH --compression {none,lz4}`` rewrites the replay stores of a run folder (its
``checkpoints/dataset/train`` and ``test``), or one store folder, with another frame setting
(``data.compression``; a store is never opened with a setting it was not written with). For a run folder
the train store is first rolled back to the checkpoint, as a resume would do, then converted; the
checkpoint's copy of the store index and the run's ``config/trainer.yaml`` (``data.compression``) are
updated, so that ``scripts/resume.sh`` goes on with the converted store. The run must not be running.
Interrupted, the command can be run again: it completes the conversion. Exit status 0 when done (or
nothing to do), 1 on an error (named), 2 for a bad command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from deltairis.checkpoint import load_torch_file, torch_bytes, write_checkpoint_set
from deltairis.data import frame_codec
from deltairis.data.replay_store import INDEX_NAME
from deltairis.data.store_convert import ConvertProgress, convert_store, finish_conversion
from deltairis.errors import DeltaIrisError
from deltairis.train.configuration import load_run_config, save_config
from deltairis.train.run_folder import RunFolderLock, read_checkpoint, restore_store_index

logger = logging.getLogger("deltairis.cli.store")

CHECKPOINT_FILES = ("last.pt", "optimizer.pt", "trainer_state.pt")


class _Bar:
    """One tqdm bar per store being rewritten (steps), or nothing."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.bar, self.desc = enabled, None, ""

    def start(self, desc: str) -> ConvertProgress | None:
        self.close()
        self.desc = desc
        return self.update if self.enabled else None

    def update(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="step", dynamic_ncols=True, leave=False)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def convert_run(run_dir: Path, compression: str, bar: _Bar | None = None) -> list[str]:
    """Convert the stores of the run folder ``run_dir`` (see the module docstring); returns what was done."""
    bar = bar or _Bar(False)
    done: list[str] = []
    lock = RunFolderLock(run_dir).acquire()
    try:
        ckpt_dir = run_dir / "checkpoints"
        train = ckpt_dir / "dataset" / "train"
        has_checkpoint = (ckpt_dir / "trainer_state.pt").exists()
        saved = read_checkpoint(run_dir) if has_checkpoint else None
        index = saved.trainer.dataset_index.get("train") if saved is not None else None
        if index is not None and not train.with_name("train.old").exists():
            restore_store_index(train, index)  # the checkpointed state, as a resume would take it
        for split in ("train", "test"):
            store = ckpt_dir / "dataset" / split
            present = (store / INDEX_NAME).exists() or store.with_name(split + ".converting").exists()
            if present and convert_store(store, compression, bar.start(f"{split} store")):
                done.append(f"{split} store converted to {compression}")
        if saved is not None and (train / INDEX_NAME).exists():
            new_index = (train / INDEX_NAME).read_bytes()
            if new_index != index:  # the checkpoint names the converted store
                state = load_torch_file(ckpt_dir / "trainer_state.pt", "trainer state")
                state["dataset_index"] = {**state.get("dataset_index", {}), "train": new_index}
                members = {name: (ckpt_dir / name).read_bytes() for name in CHECKPOINT_FILES}
                members["trainer_state.pt"] = torch_bytes(state)
                write_checkpoint_set(ckpt_dir, members, int(state["epoch"]))
                done.append("checkpoint's store index updated")
        config = run_dir / "config" / "trainer.yaml"
        cfg = load_run_config(config)
        if cfg.data.compression != compression:
            OmegaConf.update(cfg, "data.compression", compression)
            save_config(cfg, config)
            done.append(f"config/trainer.yaml: data.compression={compression}")
        for split in ("train", "test"):
            finish_conversion(ckpt_dir / "dataset" / split)
    finally:
        lock.release()
    return done


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deltairis-store", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="rewrite replay stores with another frame setting")
    convert.add_argument("path", type=Path, help="a run folder, or one replay store folder")
    convert.add_argument("--compression", required=True, choices=frame_codec.COMPRESSIONS)
    convert.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    bar = _Bar(not args.no_progress)
    logging.basicConfig(level=logging.INFO, format="[%(levelname)s] %(message)s")
    path: Path = args.path
    try:
        if (path / "config" / "trainer.yaml").exists():
            done = convert_run(path, args.compression, bar)
        elif (path / INDEX_NAME).exists() or path.with_name(path.name + ".converting").exists():
            converted = convert_store(path, args.compression, bar.start(path.name))
            done = [f"store converted to {args.compression}"] if converted else []
            finish_conversion(path)
        else:
            print(
                f"deltairis-store: error: {path} is neither a run folder nor a replay store", file=sys.stderr
            )
            return 1
    except (DeltaIrisError, OSError, ValueError) as exc:
        print(f"deltairis-store: error: {exc}", file=sys.stderr)
        return 1
    finally:
        bar.close()
    print("; ".join(done) if done else f"{path}: already stored with compression {args.compression}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
