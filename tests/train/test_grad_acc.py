"""Gradient accumulation (``training.<component>.grad_acc_steps``, the reference's ``grad_acc_steps``).

The reference's rule, restated by :func:`_plain_loop` below: an epoch draws ``steps * k`` batches; each
batch's loss over ``k`` is backpropagated (the reference's per-forward effects: the codebook EMA inside the
tokenizer's loss, the actor-critic's target EMA inside its loss, the imagination's random draws), and after
every ``k`` batches the gradient is clipped and the optimizer steps. The logged metrics are the means over
all batches of the epoch; the gradient norm's over the optimizer steps.

Run as a script, this file is one rank of the two-rank test (:func:`rank_main`).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import torch
from dist_step_lib import NUM_ACTIONS, SEQ_LEN, _training_config, initial_agent
from models.helpers import make_batch
from test_distributed_step import _free_port, _rel
from test_guards import _poison_batches
from test_preemption import _assert_same_tree

from deltairis import distributed
from deltairis.data.batch import Batch
from deltairis.errors import ConfigError
from deltairis.seeding import derive_seed
from deltairis.train.components import COMPONENT_NAMES, build_components, epoch_steps
from deltairis.train.step import accumulated_step, sync_torch_rng
from deltairis.train.trainer import Trainer

EPOCH = 2  # visit counts move from epoch 2 on


def _with_k(k: int) -> list[str]:
    return [f"training.{n}.grad_acc_steps={k}" for n in COMPONENT_NAMES]


@pytest.fixture(scope="module", params=[1, 2], ids=["k1", "k2"])
def trainer(request, tiny_config, tmp_path_factory):
    """A tiny run after epoch 1's collection, every component at ``grad_acc_steps`` = the param."""
    t = Trainer(tiny_config(*_with_k(request.param)), tmp_path_factory.mktemp("grad_acc") / "run")
    t.collect(1)
    yield t
    t.close()


def _snapshot(t: Trainer, name: str) -> tuple:
    return (
        copy.deepcopy(t.agent.state_dict()),
        copy.deepcopy(t.components[name].optimizer.state_dict()),
        torch.get_rng_state(),
    )


def _restore(t: Trainer, name: str, snap: tuple) -> None:
    agent, optim, rng = snap
    t.agent.load_state_dict(agent)
    t.components[name].optimizer.load_state_dict(optim)
    torch.set_rng_state(rng)


def _plain_loop(t: Trainer, name: str, epoch: int, consumer: str) -> dict[str, float]:
    """The reference's train_component for ``name``, written out (batches counted under ``consumer``)."""
    component = t.components[name]
    c, k, store = component.config, component.config.grad_acc_steps, t.stores["train"]
    steps = epoch_steps(c, epoch)
    t.agent.eval()
    component.train_module.train()
    logged: dict[str, float] = defaultdict(float)
    component.optimizer.zero_grad()
    for i in range(steps * k):
        batch = store.sample(
            consumer,
            c.batch_size,
            component.seq_len,
            pad_mode=component.pad_mode,
            alpha=c.sampling_alpha,
            seed=derive_seed(t.seed, name, epoch, i),
            update_counts=epoch > 1,
        ).to(t.device)
        out = component.loss(batch, derive_seed(t.seed, name, "imagine", epoch, i))
        if component.after_loss is not None:
            component.after_loss()  # the reference updates the target inside the actor-critic's loss
        (out.loss / k).backward()
        for key, v in out.metrics.items():
            logged[key] += float(v) / (k * steps)
        if (i + 1) % k == 0:
            norm = torch.nn.utils.clip_grad_norm_(component.parameters, c.max_grad_norm)
            logged[f"{name}/grad_norm"] += float(norm) / steps
            component.optimizer.step()
            component.optimizer.zero_grad()
    t.agent.eval()
    return dict(logged)


@pytest.mark.parametrize("name", COMPONENT_NAMES)
def test_the_trainer_follows_the_reference_rule(trainer: Trainer, name: str) -> None:
    """(a) weights, buffers (codebook EMA, target critic), optimizer state, visit counts and metrics of a
    phase equal the plain loop's; at k = 1 (c) this is the step of before gradient accumulation existed,
    bit for bit (the plain loop at k = 1 is that step written out: the loss over 1 is the loss)."""
    k = trainer.components[name].config.grad_acc_steps
    snap = _snapshot(trainer, name)
    try:
        got_metrics = trainer.train_component(name, EPOCH)
        got = _snapshot(trainer, name)[:2]
        got_counts = trainer.stores["train"].visit_counts(name)
        _restore(trainer, name, snap)
        want_metrics = _plain_loop(trainer, name, EPOCH, consumer=f"plain-{name}-{k}")
        want = _snapshot(trainer, name)[:2]
        want_counts = trainer.stores["train"].visit_counts(f"plain-{name}-{k}")
    finally:
        _restore(trainer, name, snap)
    _assert_same_tree(got[0], want[0], "agent")
    _assert_same_tree(got[1], want[1], "optimizer")
    assert (got_counts == want_counts).all()
    steps = epoch_steps(trainer.components[name].config, EPOCH)
    rows = steps * k * trainer.components[name].config.batch_size
    assert got_counts.sum() == rows  # every micro-batch counted once
    moved = [key for key, v in got[0].items() if not torch.equal(v, snap[0][key])]
    assert moved and all(key.startswith(name) for key in moved)
    assert got_metrics[f"{name}/num_updates"] >= steps and got_metrics[f"{name}/skipped_steps"] == 0
    for key, v in want_metrics.items():
        assert got_metrics[key] == pytest.approx(v, rel=1e-5, abs=1e-7), key


def _grads(component) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in component.parameters]


def _double(batch: Batch) -> Batch:
    """The batch with float64 frames and rewards (the package runs in float64 too)."""
    values = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
    return Batch(**{k: v.double() if v.is_floating_point() else v for k, v in values.items()})


@pytest.mark.parametrize("name", ["tokenizer", "world_model"])
def test_two_half_batches_give_the_gradient_of_the_whole_batch(name: str, monkeypatch) -> None:
    """(b) without padding every micro-batch's normaliser is the same: two micro-batches of B/2 give the
    gradient (and the metrics) of one batch of B, in float64 to 1e-9 (float32 metrics to 1e-6). The codebook EMA is held still
    here: it runs per forward (the second half quantizes with the codebook the first half updated), as in
    the reference, and is not part of the gradient."""
    size = 6
    batch = _double(make_batch(size, SEQ_LEN[name], NUM_ACTIONS, seed=3))  # no padding
    halves = [batch.rows(slice(0, size // 2)), batch.rows(slice(size // 2, size))]
    results = []
    for micro in ([batch], halves):
        agent = initial_agent().double()
        monkeypatch.setattr(agent.tokenizer.quantizer, "update_codebook", lambda *a, **k: None)
        component = build_components(agent, _training_config())[name]
        agent.eval()
        component.train_module.train()
        res = accumulated_step(component, [(b, 0) for b in micro], len(micro), max_grad_norm=1e9)
        assert res.applied
        grads = [p.grad.detach().clone() for p in component.parameters]
        results.append((grads, res.metrics))
    (g1, m1), (g2, m2) = results
    assert len(g1) == len(g2) and any(bool(g.abs().max() > 0) for g in g1)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    assert m1.keys() == m2.keys()
    for key in m1:
        # the world model takes its cross-entropies in float32 (for bf16 autocast): float32 tolerance
        tol = 1e-6 if m1[key].dtype == torch.float32 else 1e-9
        torch.testing.assert_close(m2[key].double(), m1[key].double(), rtol=tol, atol=tol * 1e-3)


def test_a_non_finite_micro_batch_skips_the_whole_step(tiny_config, run_dir, monkeypatch) -> None:
    """(d) one bad micro-batch skips its optimizer step: the weights, the optimizer state and the codebook
    statistics stay as they were before the step's first (clean) micro-batch, which did update the codebook;
    every micro-batch is still drawn and counted."""
    t = Trainer(tiny_config(*_with_k(2), "training.max_consecutive_skips=4"), run_dir)
    try:
        t.collect(1)
        tok, component = t.agent.tokenizer, t.components["tokenizer"]
        before = copy.deepcopy(tok.state_dict())
        after_each_loss: list[torch.Tensor] = []
        real_loss = component.loss

        def loss(batch, seed):
            out = real_loss(batch, seed)
            after_each_loss.append(tok.quantizer.codebook.detach().clone())
            return out

        monkeypatch.setattr(component, "loss", loss)
        _poison_batches(monkeypatch, t, {1, 3})  # the second micro-batch of both steps
        m = t.train_component("tokenizer", EPOCH)
        assert m["tokenizer/skipped_steps"] == 2.0 and t.num_updates["tokenizer"] == 0
        assert "tokenizer/loss" not in m
        assert len(after_each_loss) == 4  # every micro-batch ran
        assert not torch.equal(after_each_loss[0], before["quantizer.codebook"])  # the clean one's EMA
        _assert_same_tree(tok.state_dict(), before, "tokenizer")  # ... was put back with the rest
        assert len(component.optimizer.state) == 0
        assert t.stores["train"].visit_counts("tokenizer").sum() == 2 * 2 * component.config.batch_size
        # a bad first micro-batch skips its step too; the next step applies
        _poison_batches(monkeypatch, t, {0})
        m = t.train_component("tokenizer", EPOCH + 1)
        assert m["tokenizer/skipped_steps"] == 1.0 and t.num_updates["tokenizer"] == 1
        assert torch.isfinite(torch.tensor(m["tokenizer/loss"]))
        assert all(torch.isfinite(p).all() for p in tok.parameters())
    finally:
        t.close()


def test_grad_acc_steps_must_be_a_positive_integer(tiny_config) -> None:
    assert tiny_config().training.world_model.grad_acc_steps == 1  # the presets' value
    assert tiny_config("training.actor_critic.grad_acc_steps=4").training.actor_critic.grad_acc_steps == 4
    with pytest.raises(ConfigError, match=r"training\.world_model\.grad_acc_steps must be an integer >= 1"):
        tiny_config("training.world_model.grad_acc_steps=0")
    with pytest.raises(ConfigError, match=r"training\.tokenizer\.grad_acc_steps"):
        tiny_config("training.tokenizer.grad_acc_steps=1.5")
    component = build_components(initial_agent(), _training_config())["world_model"]
    batch = make_batch(2, SEQ_LEN["world_model"], NUM_ACTIONS)
    with pytest.raises(ValueError, match="2 micro-batches for grad_acc_steps=3"):
        accumulated_step(component, [(batch, 0), (batch, 0)], 3, 10.0)
    with pytest.raises(ValueError, match="more than grad_acc_steps=1"):
        accumulated_step(component, [(batch, 0), (batch, 0)], 1, 10.0)


# -- (f) two ranks vs one process -------------------------------------------------------------------------

DIST_K = 2
DIST_SIZES = (5,)  # the odd split 2 + 3 of every micro-batch (2 + 2 is the easier case)


def accumulated_step_each(batch_size: int, k: int = DIST_K) -> dict[str, Any]:
    """From the same initial agent, one optimizer step of each component over ``k`` fixed micro-batches of
    ``batch_size`` rows (padding on both sides); at world size W > 1 this rank trains its rows of each.

    Returns what dist_step_lib.one_step_each returns: per component the state dict after the step, the
    applied gradients and the metrics (averaged over ranks)."""
    ctx = distributed.current()
    rows = ctx.row_slice(batch_size) if ctx.is_distributed else slice(0, batch_size)
    training = _training_config()
    out: dict[str, Any] = {"rows": (rows.start, rows.stop)}
    for name in COMPONENT_NAMES:
        agent = initial_agent()
        component = build_components(agent, training)[name]
        seq_len = SEQ_LEN.get(name, component.seq_len)
        micro = [
            make_batch(batch_size, seq_len, NUM_ACTIONS, pad_left=2, pad_right=1, seed=7 + j)
            for j in range(k)
        ]
        for group in component.optimizer.param_groups:
            group["eps"] = 1e-3  # as in dist_step_lib: Adam's first step stays smooth in the gradient
        agent.eval()
        component.train_module.train()
        torch.manual_seed(99)
        sync_torch_rng(torch.device("cpu"))
        pairs = [(b.rows(rows), 321 + j) for j, b in enumerate(micro)]
        res = accumulated_step(
            component, pairs, k, float(component.config.max_grad_norm), row_offset=rows.start
        )
        assert res.applied, name
        out[name] = {
            "state": {key: v.detach().clone() for key, v in agent.state_dict().items()},
            "grads": {
                n: p.grad.detach().clone()
                for n, p in component.train_module.named_parameters()
                if p.grad is not None
            },
            "metrics": {key: v.detach().float().clone() for key, v in res.metrics.items()},
        }
    return out


def rank_main() -> None:
    """One rank: ``python test_grad_acc.py OUT`` with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT set."""
    torch.set_num_threads(1)
    distributed.init("cpu", timeout_s=120)
    try:
        torch.save({b: accumulated_step_each(b) for b in DIST_SIZES}, sys.argv[1])
    finally:
        distributed.shutdown()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[list[dict], dict]:
    """Both sizes stepped by two gloo ranks (one launch) and by this process (world size 1) meanwhile."""
    tmp, port, procs, outs = tmp_path_factory.mktemp("grad_acc_dist"), _free_port(), [], []
    for rank in range(2):
        env = dict(
            os.environ,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            OMP_NUM_THREADS="1",
        )
        outs.append(tmp / f"rank{rank}.pt")
        cmd = [sys.executable, str(Path(__file__).resolve()), str(outs[-1])]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    logs = []
    try:
        single = {b: accumulated_step_each(b) for b in DIST_SIZES}
        logs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, p in enumerate(procs):
        assert p.returncode == 0, f"rank {rank} failed:\n{logs[rank]}"
    return [torch.load(o, weights_only=False) for o in outs], single


def _step_errors(got: dict, want: dict) -> dict[str, tuple[float, str]]:
    """Per component and kind, the largest relative error and where: gradients against the component's
    largest gradient (as in test_distributed_step); weights and buffers against the larger of their own
    size and the step's largest move. A parameter that starts at zero and whose gradient is zero in exact
    arithmetic (an attention key bias) moves by rounding noise only (about 1e-10 here), which has no size
    of its own to compare with."""
    before = initial_agent().state_dict()
    out = {}
    for name in COMPONENT_NAMES:
        after = want[name]["state"]
        moves = [(after[k].float() - v.float()).abs().max().item() for k, v in before.items() if v.numel()]
        floors = {
            "state": max(moves),
            "grads": max(v.abs().max().item() for v in want[name]["grads"].values() if v.numel()),
            "metrics": 0.0,
        }
        for kind, floor in floors.items():
            g, w = got[name][kind], want[name][kind]
            assert set(g) == set(w), (name, kind)
            errs = {k: _rel(g[k].float(), w[k].float(), floor) for k in w}
            worst = max(errs, key=errs.get)
            out[f"{name}/{kind}"] = (errs[worst], worst)
    return out


@pytest.mark.parametrize("batch_size", DIST_SIZES, ids=["odd-2+3"])
def test_two_ranks_with_grad_acc_equal_one_process(two_ranks: tuple, batch_size: int) -> None:
    """(f) at world size 2, each rank on its rows of both micro-batches (gradients averaged over ranks once
    per optimizer step), the step equals the single-process one to 1e-5 relative (as without
    accumulation, tests/train/test_distributed_step.py), and the ranks end bit-identical."""
    ranks, single = two_ranks
    got, want = [r[batch_size] for r in ranks], single[batch_size]
    assert [r["rows"] for r in got] == [(0, batch_size // 2), (batch_size // 2, batch_size)]
    for name in COMPONENT_NAMES:
        _assert_same_tree(got[0][name]["state"], got[1][name]["state"], name)
    errors = _step_errors(got[0], want)
    print(f"\nbatch {batch_size} x {DIST_K} micro-batches over 2 ranks, max relative error:")
    for key, (err, where) in errors.items():
        print(f"  {key:28s} {err:.2e}  ({where})")
    bad = {key: v for key, v in errors.items() if not v[0] <= 1e-5}
    assert not bad, bad
    # both micro-batches counted in the buffers the losses update: two codebook EMA updates, two target EMAs
    assert want["tokenizer"]["state"]["tokenizer.quantizer.num_codebook_updates"] == DIST_K
    before = initial_agent().state_dict()
    assert any(
        not torch.equal(v, before[key])
        for key, v in want["actor_critic"]["state"].items()
        if key.startswith("actor_critic.target_model")
    )


if __name__ == "__main__":
    rank_main()
