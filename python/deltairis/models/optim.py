"""Optimizers as in the reference: weight decay only on Linear/Conv1d weights.

Every optimizer of a training run comes from :func:`configure_optimizer`, with the settings of its
``training.<component>`` config (learning rate, weight decay, kind).
"""

from __future__ import annotations

import torch
from torch import nn

from deltairis.config.schema import OPTIMIZERS


def decay_parameter_names(module: nn.Module) -> set[str]:
    """Names of the parameters that get weight decay: the weights of Linear and Conv1d layers."""
    names = set()
    for mod_name, mod in module.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv1d)):
            for p_name, _ in mod.named_parameters(recurse=False):
                if p_name == "weight":
                    names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def configure_optimizer(
    module: nn.Module, lr: float, weight_decay: float = 0.0, kind: str = "adamw"
) -> torch.optim.Optimizer:
    """AdamW (decoupled decay) or Adam (L2 decay) over the trainable parameters of ``module``.

    Weight decay applies to Linear/Conv1d weights only (biases, norms, embeddings, Conv2d: none). With
    ``weight_decay == 0`` Adam gets one parameter group, exactly the reference's actor-critic optimizer.
    """
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer kind {kind!r}; expected one of {', '.join(OPTIMIZERS)}")
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    if kind == "adam" and weight_decay == 0:
        return torch.optim.Adam(list(params.values()), lr=lr)
    decay = decay_parameter_names(module)
    groups = [
        {"params": [p for n, p in params.items() if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in params.items() if n not in decay], "weight_decay": 0.0},
    ]
    return (torch.optim.AdamW if kind == "adamw" else torch.optim.Adam)(groups, lr=lr)
