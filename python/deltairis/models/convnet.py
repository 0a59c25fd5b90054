"""Frame CNNs shared by the tokenizer, the world model and the actor-critic (SPEC section 2).

The layer order inside each ``nn.Sequential`` is part of the checkpoint layout: the reference's keys
are ``encoder.N.*`` / ``decoder.N.*`` with N counting the layers below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from deltairis.config.models import FrameCnnConfig


class ResidualBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3 -> GroupNorm -> SiLU -> conv3x3, plus a (1x1-projected) skip."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int = 32) -> None:
        super().__init__()
        self.f = nn.Sequential(
            nn.GroupNorm(num_groups, in_channels),
            nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.GroupNorm(num_groups, out_channels),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_projection = (
            nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip_projection(x) + self.f(x)


class Downsample(nn.Module):
    """2x2 stride-2 convolution (halves H and W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest x2 upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _fold(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(B, T, C, H, W) -> (B*T, C, H, W); 4-D inputs pass through."""
    if x.dim() == 5:
        return rearrange(x, "b t c h w -> (b t) c h w"), tuple(x.shape[:2])
    if x.dim() == 4:
        return x, ()
    raise ValueError(f"frame CNN expects (B, T, C, H, W) or (N, C, H, W), got shape {tuple(x.shape)}")


def _unfold(x: torch.Tensor, lead: tuple[int, ...]) -> torch.Tensor:
    return x.view(*lead, *x.shape[1:]) if lead else x


class FrameEncoder(nn.Module):
    """conv3x3 -> [ResidualBlock (+ Downsample)]* -> GroupNorm -> SiLU -> conv3x3 to latent_dim."""

    def __init__(self, config: FrameCnnConfig) -> None:
        super().__init__()
        self.config = config
        n, g = config.num_channels, config.num_groups
        layers: list[nn.Module] = [nn.Conv2d(config.image_channels, n, 3, padding=1)]
        ch = n
        for m, d in zip(config.mult, config.down):
            layers.append(ResidualBlock(ch, m * n, g))
            ch = m * n
            if d:
                layers.append(Downsample(ch))
        layers += [nn.GroupNorm(g, ch), nn.SiLU(), nn.Conv2d(ch, config.latent_dim, 3, padding=1)]
        self.encoder = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, lead = _fold(x)  # (B*T, C, H, W)
        return _unfold(self.encoder(x), lead)  # (B, T, latent, H/8, W/8)


class FrameDecoder(nn.Module):
    """Mirror of :class:`FrameEncoder`: conv3x3 -> [ResidualBlock (+ Upsample)]* -> GroupNorm -> SiLU -> conv3x3."""

    def __init__(self, config: FrameCnnConfig) -> None:
        super().__init__()
        self.config = config
        n, g = config.num_channels, config.num_groups
        mult, down = config.mult, config.down
        if down and down[-1]:
            raise ValueError(
                f"decoder needs down[-1] == 0 to mirror the encoder's {sum(down)} downsamplings, got down={down}"
            )
        ch = mult[-1] * n
        layers: list[nn.Module] = [nn.Conv2d(config.latent_dim, ch, 3, padding=1)]
        for j in reversed(range(len(mult))):
            out = mult[j - 1] * n if j > 0 else n
            layers.append(ResidualBlock(ch, out, g))
            ch = out
            if j > 0 and down[j - 1]:
                layers.append(Upsample(ch))
        layers += [nn.GroupNorm(g, ch), nn.SiLU(), nn.Conv2d(ch, config.image_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, lead = _fold(x)  # (B*T, latent, h, w)
        return _unfold(self.decoder(x), lead)  # (B, T, C, H, W)


class FlattenHWC(nn.Module):
    """(..., C, H, W) -> (..., H*W*C), flattened in (h, w, c) order (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "... c h w -> ... (h w c)")
