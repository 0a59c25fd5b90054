"""Importing a dataset saved in the reference layout (one torch.save file per episode plus info.pt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from replay_testlib import BACKENDS

from deltairis.data import ReplayStore, import_reference_dataset


def write_reference_dataset(root: Path, lengths: list[int], seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Episodes as the reference saves them: nested folders by id digits, LongTensor ends, info.pt."""
    gen = torch.Generator().manual_seed(seed)
    episodes = []
    for i, t in enumerate(lengths):
        ep = {
            "observations": torch.randint(0, 256, (t, 3, 64, 64), generator=gen, dtype=torch.uint8),
            "actions": torch.randint(0, 17, (t,), generator=gen),
            "rewards": torch.randn(t, generator=gen),
            "ends": torch.zeros(t, dtype=torch.long),
        }
        ep["ends"][-1] = int(i % 2 == 0)
        folder = (
            root / f"{i % 10}" / f"{i % 100:02d}"
        )  # ids 2 and 12 in different folders, 10 before 2 lexically
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(ep, folder / f"{i}.pt")
        episodes.append(ep)
    torch.save(
        {"num_episodes": len(lengths), "num_steps": sum(lengths), "lengths": lengths}, root / "info.pt"
    )
    return episodes


@pytest.mark.parametrize("backend", BACKENDS)
def test_import_reference_dataset(backend: str, tmp_path: Path) -> None:
    lengths = [7, 1, 12, 3, 5, 9, 2, 4, 6, 8, 10, 11, 3]
    episodes = write_reference_dataset(tmp_path / "ref", lengths)
    store = ReplayStore(tmp_path / "store", backend=backend)
    store.add_episode(  # an episode already in the store keeps its id
        obs=np.zeros((2, 3, 64, 64), np.uint8),
        act=np.zeros(2, np.int64),
        rew=np.zeros(2, np.float32),
        end=np.zeros(2, np.uint8),
        trunc=np.zeros(2, np.uint8),
    )
    ids = import_reference_dataset(tmp_path / "ref", store)
    assert ids == list(range(1, 1 + len(lengths)))
    store.close()
    with ReplayStore(tmp_path / "store", backend=backend, read_only=True) as again:  # committed
        np.testing.assert_array_equal(again.lengths[1:], lengths)
        for i, ep in zip(ids, episodes):
            got = again.load_episode(i)
            np.testing.assert_array_equal(got.obs, ep["observations"].numpy())
            np.testing.assert_array_equal(got.act, ep["actions"].numpy())
            np.testing.assert_array_equal(got.rew, ep["rewards"].numpy())
            np.testing.assert_array_equal(got.end, ep["ends"].numpy().astype(np.uint8))
            np.testing.assert_array_equal(got.trunc, np.zeros(len(got), np.uint8))


def test_import_rejects_bad_files(tmp_path: Path) -> None:
    write_reference_dataset(tmp_path / "ref", [3, 4])
    info = torch.load(tmp_path / "ref" / "info.pt")
    torch.save({**info, "num_episodes": 5}, tmp_path / "ref" / "info.pt")
    store = ReplayStore(tmp_path / "store")
    with pytest.raises(ValueError, match="num_episodes=5 but 2 episode files"):
        import_reference_dataset(tmp_path / "ref", store)
    torch.save(info, tmp_path / "ref" / "info.pt")
    path = tmp_path / "ref" / "1" / "01" / "1.pt"
    ep = torch.load(path)
    torch.save({k: v for k, v in ep.items() if k != "rewards"}, path)
    with pytest.raises(ValueError, match=r"1\.pt: missing 'rewards'"):
        import_reference_dataset(tmp_path / "ref", store)
    torch.save({**ep, "observations": ep["observations"].float()}, path)
    with pytest.raises(ValueError, match=r"1\.pt: obs must have dtype uint8"):
        import_reference_dataset(tmp_path / "ref", store)
    torch.save({**ep, "ends": ep["ends"] + 3}, path)
    with pytest.raises(ValueError, match=r"1\.pt: ends must hold only 0 and 1"):
        import_reference_dataset(tmp_path / "ref", store)
    with pytest.raises(FileNotFoundError, match="no reference dataset folder"):
        import_reference_dataset(tmp_path / "nothing", store)
