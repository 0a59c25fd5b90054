"""#14 item 2: the trainer trains from the prefetching sampler, and its batches and visit counts are
those of the former synchronous loop (``store.sample(name, ..., seed=derive_seed(seed, name, epoch,
step))`` per step), seed for seed and bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deltairis.data import ReplayStore
from deltairis.seeding import derive_seed
from deltairis.train.components import COMPONENT_NAMES
from deltairis.train.trainer import Trainer

FIELDS = ("obs", "act", "rew", "end", "trunc", "mask_padding", "episode_id", "start", "stop")


@pytest.fixture()
def trainer(tiny_config, run_dir):
    steps = [f"training.{n}.steps_per_epoch=4" for n in COMPONENT_NAMES]
    alpha = [f"training.{n}.sampling_alpha=1.0" for n in COMPONENT_NAMES]
    t = Trainer(tiny_config("common.epochs=2", *steps, *alpha), run_dir)
    t.collect(1)
    t.stores["train"].commit()
    yield t
    t.close()


def test_trainer_batches_equal_the_synchronous_sampling(trainer: Trainer, monkeypatch) -> None:
    store = trainer.stores["train"]
    reference = ReplayStore(store.directory, read_only=True)
    try:
        for name in COMPONENT_NAMES:
            component = trainer.components[name]
            seen: list[dict[str, torch.Tensor]] = []
            real_loss = component.loss

            def loss(batch, seed, real_loss=real_loss, seen=seen):
                seen.append({f: getattr(batch, f).detach().cpu().clone() for f in FIELDS})
                return real_loss(batch, seed)

            monkeypatch.setattr(component, "loss", loss)
            reference.counts_for(name)[:] = store.visit_counts(name)  # the counts the phase starts from
            trainer.train_component(name, 2)  # epoch 2: counts are updated after every batch
            c = component.config
            assert len(seen) == 4
            for step, got in enumerate(seen):
                want = reference.sample(
                    name,
                    int(c.batch_size),
                    component.seq_len,
                    pad_mode=component.pad_mode,
                    alpha=float(c.sampling_alpha),
                    seed=derive_seed(trainer.seed, name, 2, step),
                    update_counts=True,
                ).to("cpu")
                for f in FIELDS:
                    assert torch.equal(got[f], getattr(want, f)), (name, step, f)
            np.testing.assert_array_equal(store.visit_counts(name), reference.visit_counts(name))
            assert store.visit_counts(name).sum() == 4 * int(c.batch_size)
    finally:
        reference.close()


def test_a_failing_step_closes_the_prefetcher_and_counts_only_taken_batches(
    trainer: Trainer, monkeypatch
) -> None:
    component = trainer.components["world_model"]
    calls = [0]

    def loss(batch, seed):
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("boom")
        return real(batch, seed)

    real = component.loss
    monkeypatch.setattr(component, "loss", loss)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train_component("world_model", 2)
    # two batches were taken (the second one's step failed), the third was drawn ahead and not counted
    assert trainer.stores["train"].visit_counts("world_model").sum() == 2 * int(component.config.batch_size)
