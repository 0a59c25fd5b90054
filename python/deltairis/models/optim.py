"""Optimizers as in the reference: weight decay only on Linear/Conv1d weights."""

from __future__ import annotations

import torch
from torch import nn


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
    """AdamW with decay on Linear/Conv1d weights only (biases, norms, embeddings, Conv2d: none), or Adam."""
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    if kind == "adam":
        return torch.optim.Adam(list(params.values()), lr=lr)
    if kind != "adamw":
        raise ValueError(f"unknown optimizer kind {kind!r}; expected 'adamw' or 'adam'")
    decay = decay_parameter_names(module)
    groups = [
        {"params": [p for n, p in params.items() if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in params.items() if n not in decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr)
