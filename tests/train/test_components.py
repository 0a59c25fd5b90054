"""The trainer's component table: one record per component, optimizers from their config, and a
training loop without component-name switches."""

from __future__ import annotations

import ast
import inspect

import pytest
import torch

import deltairis.train.trainer as trainer_module
from deltairis.agent import Agent
from deltairis.config import make_agent_config
from deltairis.errors import ConfigError
from deltairis.models.optim import decay_parameter_names
from deltairis.train.components import COMPONENT_NAMES, COMPONENTS, build_components
from deltairis.train.configuration import typed_config


@pytest.fixture(scope="module")
def agent() -> Agent:
    torch.manual_seed(0)
    return Agent(make_agent_config("tiny", num_actions=5))


def test_table_holds_the_three_components_in_training_order() -> None:
    assert COMPONENT_NAMES == ("tokenizer", "world_model", "actor_critic")
    assert [s.pad_mode for s in COMPONENTS] == ["both", "both", "left"]
    assert [s.evaluated for s in COMPONENTS] == [True, True, False]


def test_default_optimizers_are_the_references(agent: Agent, tiny_config) -> None:
    comps = build_components(agent, typed_config(tiny_config()).training)
    ac = comps["actor_critic"].optimizer
    # torch.optim.Adam over the online network only, in one group (the reference's actor-critic optimizer)
    assert type(ac) is torch.optim.Adam and len(ac.param_groups) == 1
    assert [id(p) for p in ac.param_groups[0]["params"]] == [
        id(p) for p in agent.actor_critic.model.parameters()
    ]
    assert not any(
        p is q for p in agent.actor_critic.target_model.parameters() for q in comps["actor_critic"].parameters
    )
    for name in ("tokenizer", "world_model"):
        opt = comps[name].optimizer
        module = getattr(agent, name)
        assert type(opt) is torch.optim.AdamW
        decay = {id(p) for n, p in module.named_parameters() if n in decay_parameter_names(module)}
        assert {id(p) for p in opt.param_groups[0]["params"]} == decay
        assert opt.param_groups[0]["weight_decay"] == 0.01 and opt.param_groups[1]["weight_decay"] == 0.0
        assert comps[name].parameters == [p for p in module.parameters() if p.requires_grad]


def test_every_optimizer_honours_its_config(agent: Agent, tiny_config) -> None:
    cfg = tiny_config(
        *[
            "training.actor_critic.weight_decay=0.25",
            "training.actor_critic.learning_rate=3e-3",
            "training.tokenizer.optimizer=adam",
            "training.world_model.weight_decay=0.5",
        ]
    )
    comps = build_components(agent, typed_config(cfg).training)
    ac = comps["actor_critic"].optimizer
    assert type(ac) is torch.optim.Adam and ac.param_groups[0]["lr"] == 3e-3
    assert ac.param_groups[0]["weight_decay"] == 0.25 and ac.param_groups[1]["weight_decay"] == 0.0
    decayed = {id(p) for p in ac.param_groups[0]["params"]}
    lstm_and_convs = {
        id(p) for n, p in agent.actor_critic.model.named_parameters() if not n.endswith("linear.weight")
    }
    assert decayed and not decayed & lstm_and_convs  # only the Linear weights decay
    assert type(comps["tokenizer"].optimizer) is torch.optim.Adam
    assert comps["world_model"].optimizer.param_groups[0]["weight_decay"] == 0.5


def test_unknown_optimizer_is_a_config_error_naming_the_key(tiny_config) -> None:
    with pytest.raises(ConfigError, match=r"training\.world_model\.optimizer.*'sgd'"):
        tiny_config("training.world_model.optimizer=sgd")


def test_seq_len_defaults_to_burn_in_plus_one(agent: Agent, tiny_config) -> None:
    comps = build_components(agent, typed_config(tiny_config()).training)
    assert comps["actor_critic"].seq_len == agent.config.actor_critic.burn_in + 1
    assert comps["tokenizer"].seq_len == 3 and comps["world_model"].seq_len == 4


def test_loss_calls_are_the_components_own(agent: Agent, tiny_config) -> None:
    from models.helpers import make_batch

    comps = build_components(agent, typed_config(tiny_config()).training)
    agent.eval()  # no codebook updates between the two calls
    batch = make_batch(2, 4, 5)
    torch.testing.assert_close(
        comps["tokenizer"].loss(batch, 123).loss, agent.tokenizer.compute_loss(batch).loss
    )
    torch.testing.assert_close(
        comps["world_model"].loss(batch, 5).loss, agent.world_model.compute_loss(batch, agent.tokenizer).loss
    )
    ac_batch = make_batch(2, agent.config.actor_critic.burn_in + 1, 5)
    a, b = comps["actor_critic"].loss(ac_batch, 3), comps["actor_critic"].loss(ac_batch, 3)
    torch.testing.assert_close(a.loss, b.loss)  # same seed, same imagination


def test_training_loop_has_no_component_name_switches() -> None:
    """No comparison of a value with a component name in the trainer (the table decides)."""
    tree = ast.parse(inspect.getsource(trainer_module))
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for part in [node.left, *node.comparators]:
                if isinstance(part, ast.Constant) and part.value in COMPONENT_NAMES:
                    hits.append(f"line {node.lineno}: {ast.unparse(node)}")
    assert not hits, hits
    # the check can fail: the same walk finds a switch in code that has one
    sample = ast.parse("if name == 'actor_critic':\n    pass\n")
    assert any(
        isinstance(n, ast.Compare) and n.comparators[0].value == "actor_critic" for n in ast.walk(sample)
    )
