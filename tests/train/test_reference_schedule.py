"""The reference's schedule and evaluation protocol, restated and compared with the trainer's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deltairis.train.components import component_config
from deltairis.train.configuration import compose_config, typed_config
from deltairis.train.trainer import Trainer, epoch_steps, eval_chunks


def _reference_steps(cfg, epoch: int) -> int:
    """The reference's train_agent: a component trains when epoch > start_after_epochs, with
    steps_first_epoch when epoch == 1 (and only then), else steps_per_epoch."""
    if not epoch > cfg.start_after_epochs:
        return 0
    if epoch == 1 and cfg.steps_first_epoch is not None:
        return cfg.steps_first_epoch
    return cfg.steps_per_epoch


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["params=crafter"], {1: (5000, 2500, 500), 2: (500, 500, 500), 1000: (500, 500, 500)}),
        (
            ["env=atari", "params=atari", "env.train.id=BreakoutNoFrameskip-v4"],
            {
                1: (0, 0, 0),
                5: (0, 0, 0),
                6: (200, 0, 0),
                50: (200, 0, 0),
                51: (200, 120, 0),
                75: (200, 120, 0),
                76: (200, 120, 200),
                600: (200, 120, 200),
            },
        ),
    ],
)
def test_steps_per_epoch_follow_the_reference(overrides: list[str], expected: dict) -> None:
    cfg = typed_config(compose_config(overrides))
    sections = [component_config(cfg.training, n) for n in ("tokenizer", "world_model", "actor_critic")]
    for epoch in range(1, cfg.common.epochs + 1):
        got = tuple(epoch_steps(c, epoch) for c in sections)
        assert got == tuple(_reference_steps(c, epoch) for c in sections), epoch
        if epoch in expected:
            assert got == expected[epoch], epoch


def _reference_chunks(lengths, chunk: int) -> list[tuple[int, int]]:
    """The reference's DatasetTraverser: consecutive chunks of every episode, the last one dropped when
    it holds a single real step."""
    out = []
    for ep, n in enumerate(lengths):
        chunks = [(ep, i * chunk, (i + 1) * chunk) for i in range(math.ceil(n / chunk))]
        if min(chunks[-1][2], n) - chunks[-1][1] < 2:
            chunks.pop()
        out.extend((e, s) for e, s, _ in chunks)
    return out


def test_eval_chunks_traverse_every_episode_like_the_reference() -> None:
    rng = np.random.default_rng(0)
    for chunk in (1, 2, 5, 21):
        for _ in range(30):
            lengths = rng.integers(1, 70, size=rng.integers(1, 9))
            eps, starts = eval_chunks(lengths, chunk)
            ref = _reference_chunks(lengths.tolist(), chunk)
            assert list(zip(eps.tolist(), starts.tolist())) == ref


@pytest.fixture()
def trainer(tiny_config, run_dir):
    t = Trainer(tiny_config("common.epochs=2", "evaluation.num_batches=null"), run_dir)
    yield t
    t.close()


def test_counts_from_epoch_two_and_test_store_emptied_per_evaluation(trainer: Trainer) -> None:
    store, test = trainer.stores["train"], trainer.stores["test"]
    m1 = trainer.run_epoch(1)
    for name in ("tokenizer", "world_model", "actor_critic"):
        assert store.visit_counts(name).sum() == 0, name  # never in epoch 1
    first_test = [test.load_episode(i).obs.copy() for i in range(test.num_episodes)]
    assert test.num_episodes == 2 and "eval/tokenizer/loss" in m1
    trainer.run_epoch(2)
    for name in ("tokenizer", "world_model", "actor_critic"):
        c = component_config(trainer.cfg.training, name)
        assert store.visit_counts(name).sum() == c.steps_per_epoch * c.batch_size, name
    # the second evaluation replaced the first one's episodes instead of adding to them
    assert test.num_episodes == 2
    assert not all(
        a.shape == test.load_episode(i).obs.shape and np.array_equal(a, test.load_episode(i).obs)
        for i, a in enumerate(first_test)
    )


def _reference_eval_loss(trainer: Trainer, name: str, key: str) -> float:
    """Mean over batches of the loss, batches of consecutive chunks of every test episode in order."""
    store = trainer.stores["test"]
    seq = trainer.components[name].seq_len
    bs = getattr(trainer.cfg.training, name).batch_size
    chunks = _reference_chunks(store.lengths.tolist(), seq)
    values = []
    for b in range(0, len(chunks), bs):
        part = chunks[b : b + bs]
        obs = np.zeros((len(part), seq, 3, 64, 64), dtype=np.float32)
        act = np.zeros((len(part), seq), dtype=np.int64)
        rew = np.zeros((len(part), seq), dtype=np.float32)
        end = np.zeros((len(part), seq), dtype=np.uint8)
        trunc = np.zeros((len(part), seq), dtype=np.uint8)
        mask = np.zeros((len(part), seq), dtype=bool)
        for j, (ep, start) in enumerate(part):
            e = store.load_episode(ep)
            k = min(seq, len(e.act) - start)
            obs[j, :k] = e.obs[start : start + k] / 255.0
            act[j, :k], rew[j, :k] = e.act[start : start + k], e.rew[start : start + k]
            end[j, :k], trunc[j, :k] = e.end[start : start + k], e.trunc[start : start + k]
            mask[j, :k] = True
        from deltairis.data.batch import Batch

        batch = Batch(
            obs=torch.from_numpy(obs),
            act=torch.from_numpy(act),
            rew=torch.from_numpy(rew),
            end=torch.from_numpy(end),
            trunc=torch.from_numpy(trunc),
            mask_padding=torch.from_numpy(mask),
            episode_id=torch.zeros(len(part), dtype=torch.long),
            start=torch.zeros(len(part), dtype=torch.long),
            stop=torch.zeros(len(part), dtype=torch.long),
        )
        with torch.no_grad():
            values.append(float(trainer.components[name].loss(batch, 0).metrics[key]))
    return float(np.mean(values))


def test_eval_losses_cover_the_evaluations_episodes(trainer: Trainer) -> None:
    metrics = trainer.run_epoch(1)
    trainer._set_modes(None)
    for name in ("tokenizer", "world_model"):
        expected = _reference_eval_loss(trainer, name, f"{name}/loss")
        assert metrics[f"eval/{name}/loss"] == pytest.approx(expected, rel=1e-5)


def test_target_update_happens_before_the_optimizer_step(trainer: Trainer, monkeypatch) -> None:
    trainer.run_epoch(1)
    log: list[str] = []
    ac = trainer.agent.actor_critic
    online_at_update: list[list[torch.Tensor]] = []
    real_update, opt = ac.update_target, trainer.optimizers["actor_critic"]
    real_step = opt.step

    def update() -> None:
        log.append("target")
        online_at_update.append([p.detach().clone() for p in ac.model.parameters()])
        real_update()

    def step(*a, **k):
        log.append("step")
        return real_step(*a, **k)

    monkeypatch.setattr(ac, "update_target", update)
    monkeypatch.setattr(opt, "step", step)
    before = [p.detach().clone() for p in ac.model.parameters()]
    trainer.train_component("actor_critic", 2)
    assert log == ["target", "step"] * trainer.cfg.training.actor_critic.steps_per_epoch
    for a, b in zip(online_at_update[0], before):  # the first update saw the weights before any step
        assert torch.equal(a, b)
