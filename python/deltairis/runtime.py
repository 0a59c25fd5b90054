"""Where a run computes: the torch device named by a setting (``auto``, ``cpu``, ``cuda``, ``cuda:1``)."""

from __future__ import annotations

import torch

from deltairis.errors import ConfigError


def resolve_device(spec: str, setting: str = "common.device") -> torch.device:
    """``auto``: CUDA when available, else CPU; otherwise the given torch device.

    Raises :class:`~deltairis.errors.ConfigError` naming ``setting`` when the device is not valid or
    CUDA is asked for on a machine without it.
    """
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ConfigError(f"{setting}: invalid device {spec!r} ({exc})") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{setting}={spec} but CUDA is not available (use {setting}=cpu or auto)")
    return device


__all__ = ["resolve_device"]
