from __future__ import annotations

import pytest
import torch

from deltairis.config.models import FrameCnnConfig
from deltairis.models.convnet import Downsample, FrameDecoder, FrameEncoder, ResidualBlock, Upsample

# docs/algorithm.md section 2, written out by hand: (kind, in_mult, out_mult) with n = num_channels.
ENCODER_LAYOUT = [
    ("conv", None, 1),
    ("rb", 1, 1),
    ("down", 1, 1),
    ("rb", 1, 1),
    ("rb", 1, 2),
    ("down", 2, 2),
    ("rb", 2, 2),
    ("down", 2, 2),
    ("rb", 2, 4),
    ("gn", 4, 4),
    ("silu", 4, 4),
    ("conv", 4, None),
]
DECODER_LAYOUT = [
    ("conv", None, 4),
    ("rb", 4, 2),
    ("up", 2, 2),
    ("rb", 2, 2),
    ("up", 2, 2),
    ("rb", 2, 1),
    ("rb", 1, 1),
    ("up", 1, 1),
    ("rb", 1, 1),
    ("gn", 1, 1),
    ("silu", 1, 1),
    ("conv", 1, None),
]


def _check_layout(seq: torch.nn.Sequential, layout: list, n: int) -> None:
    assert len(seq) == len(layout)
    for layer, (kind, cin, cout) in zip(seq, layout):
        if kind == "rb":
            assert isinstance(layer, ResidualBlock)
            assert layer.f[2].in_channels == cin * n and layer.f[2].out_channels == cout * n
            assert isinstance(layer.skip_projection, torch.nn.Conv2d) == (cin != cout)
        elif kind == "down":
            assert (
                isinstance(layer, Downsample)
                and layer.conv.kernel_size == (2, 2)
                and layer.conv.stride == (2, 2)
            )
        elif kind == "up":
            assert isinstance(layer, Upsample) and layer.conv.kernel_size == (3, 3)
        elif kind == "gn":
            assert (
                isinstance(layer, torch.nn.GroupNorm)
                and layer.num_channels == cin * n
                and layer.num_groups == 32
            )
        elif kind == "silu":
            assert isinstance(layer, torch.nn.SiLU)
        else:
            assert (
                isinstance(layer, torch.nn.Conv2d) and layer.kernel_size == (3, 3) and layer.bias is not None
            )


@pytest.mark.parametrize("n", [32, 64])
def test_layer_order_matches_spec(n: int) -> None:
    _check_layout(FrameEncoder(FrameCnnConfig(7, 64, n)).encoder, ENCODER_LAYOUT, n)
    _check_layout(FrameDecoder(FrameCnnConfig(3, 76, n)).decoder, DECODER_LAYOUT, n)


@pytest.mark.parametrize("b,t", [(1, 1), (2, 3)])
def test_shapes_fold_time(b: int, t: int) -> None:
    enc = FrameEncoder(FrameCnnConfig(3, 8, 32))
    dec = FrameDecoder(FrameCnnConfig(3, 8, 32))
    x = torch.rand(b, t, 3, 64, 64)
    z = enc(x)
    assert z.shape == (b, t, 8, 8, 8)
    assert dec(z).shape == (b, t, 3, 64, 64)
    # folding B and T is the same as running frames one by one
    torch.testing.assert_close(z[-1, -1], enc(x[-1, -1][None])[0], rtol=1e-4, atol=1e-5)


def test_bad_input_shape() -> None:
    with pytest.raises(ValueError, match="frame CNN expects"):
        FrameEncoder(FrameCnnConfig(3, 8, 32))(torch.rand(3, 64, 64))
    with pytest.raises(ValueError, match="divisible"):
        FrameCnnConfig(3, 8, 20)
