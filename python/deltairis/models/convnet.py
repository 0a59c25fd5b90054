"""Frame CNNs shared by the tokenizer, the world model and the actor-critic (docs/algorithm.md section 2).

The layer order inside each ``nn.Sequential`` is part of the checkpoint layout: the reference's keys
are ``encoder.N.*`` / ``decoder.N.*`` with N counting the layers below.

Two fast paths, both on by default and both used only for CUDA inputs (CPU results are those of the
plain layers), each switchable per module tree with :func:`set_frame_cnn_options`:

* ``fused_norm``: every ``GroupNorm`` followed by ``SiLU`` runs as one :func:`deltairis.ops.group_norm_silu`
  (a Triton kernel on CUDA, ``F.silu(F.group_norm(...))`` otherwise); the modules stay ``nn.GroupNorm``
  and ``nn.SiLU`` (same checkpoint keys);
* ``channels_last``: a CNN converts its input once to channels_last (NHWC) and keeps its convolution
  weights in that layout (converted in place at the first CUDA forward, and back if the module later
  runs on CPU), so cuDNN, the fused norm, the upsampling and the residual additions all run NHWC with no
  layout conversion in between, and :class:`FlattenHWC` of the output is a free view.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from deltairis import ops
from deltairis.config.models import FrameCnnConfig


class FrameLayers(nn.Sequential):
    """``nn.Sequential`` that runs each GroupNorm -> SiLU pair as one fused op when ``fused_norm``."""

    fused_norm: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mods = list(self._modules.values())
        i, n = 0, len(mods)
        while i < n:
            m = mods[i]
            if (
                self.fused_norm
                and type(m) is nn.GroupNorm
                and i + 1 < n
                and type(mods[i + 1]) is nn.SiLU
                and m.affine
            ):
                x = ops.group_norm_silu(x, m.num_groups, m.weight, m.bias, m.eps)
                i += 2
            else:
                x = m(x)
                i += 1
        return x


def _conv_weights(module: nn.Module) -> list[nn.Parameter]:
    return [p for m in module.modules() if isinstance(m, nn.Conv2d) for p in (m.weight,)]


class _LayoutMixin:
    """Input and weight layout of a frame CNN (see the module docstring)."""

    channels_last: bool = True
    cuda_only: bool = True  # tests set it False (on the class) to run the NHWC layout on CPU
    _weights_nhwc: bool = False

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        want = self.channels_last and (x.is_cuda or not self.cuda_only)
        if want != self._weights_nhwc:
            fmt = torch.channels_last if want else torch.contiguous_format
            with torch.no_grad():
                for w in _conv_weights(self):  # type: ignore[arg-type]
                    w.data = w.data.contiguous(memory_format=fmt)
            self._weights_nhwc = want
        return x.contiguous(memory_format=torch.channels_last) if want else x


class ResidualBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3 -> GroupNorm -> SiLU -> conv3x3, plus a (1x1-projected) skip."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int = 32) -> None:
        super().__init__()
        self.f = FrameLayers(
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


class FrameEncoder(_LayoutMixin, nn.Module):
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
        self.encoder = FrameLayers(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, lead = _fold(x)  # (B*T, C, H, W)
        x = self._prepare(x)
        return _unfold(self.encoder(x), lead)  # (B, T, latent, H/8, W/8)


class FrameDecoder(_LayoutMixin, nn.Module):
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
        self.decoder = FrameLayers(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, lead = _fold(x)  # (B*T, latent, h, w)
        x = self._prepare(x)
        return _unfold(self.decoder(x), lead)  # (B, T, C, H, W)


class FlattenHWC(nn.Module):
    """(..., C, H, W) -> (..., H*W*C), flattened in (h, w, c) order (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "... c h w -> ... (h w c)")


def set_frame_cnn_options(
    module: nn.Module, *, channels_last: bool | None = None, fused_norm: bool | None = None
) -> nn.Module:
    """Switch the fast paths of every frame CNN inside ``module`` (None leaves a switch as it is).

    ``channels_last=False, fused_norm=False`` gives the plain layers (the path before these fast paths);
    both only ever change CUDA runs. Returns ``module``.
    """
    for m in module.modules():
        if channels_last is not None and isinstance(m, _LayoutMixin):
            m.channels_last = bool(channels_last)
        if fused_norm is not None and isinstance(m, FrameLayers):
            m.fused_norm = bool(fused_norm)
    return module
