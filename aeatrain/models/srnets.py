"""The classic super-resolution networks of the paper's Table 1: VDSR, EDSR and RCAN.

Every model here takes the registered LR at the HR frame (the bicubic-upsampled LR) and
returns an image of the same size, so EDSR and RCAN run without their upsampler: their
body works at scale 1. One input and one output channel (SEM images are grey); no mean
shift (the papers subtract the DIV2K RGB mean). Convolutions are 3x3 with zero padding 1
and bias, as in the published code, so any H x W works (``input_multiple = 1``).

- ``VDSR`` (Kim et al., CVPR 2016): ``depth`` 3x3 conv layers of ``width`` channels with
  ReLU between them, the input added to the output (global residual). 20 x 64: 665,921
  parameters.
- ``EDSR`` (Lim et al., CVPRW 2017), the EDSR-baseline body: head conv, ``depth``
  residual blocks (conv-ReLU-conv, no BatchNorm, output scaled by ``res_scale``), body
  conv and the long skip from the head, tail conv. 16 x 64: 1,219,841 parameters.
- ``RCAN`` (Zhang et al., ECCV 2018): head conv, ``groups`` residual groups of ``depth``
  residual channel-attention blocks (conv-ReLU-conv, channel attention with reduction
  ``reduction``, short skip) and a group conv with the group skip, body conv with the long
  skip, tail conv. 10 x 20 x 64, reduction 16: 15,294,625 parameters.

``residual=True`` adds the input image to the output of EDSR and RCAN (VDSR always does).
"""

from __future__ import annotations

from torch import Tensor, nn


def conv3x3(in_ch: int, out_ch: int) -> nn.Conv2d:
    """3x3 conv, zero padding 1, with bias (all three published networks)."""
    return nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=True)


def check_image_batch(x: Tensor) -> None:
    """Raise a ValueError naming the shape unless x is (N, 1, H, W)."""
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected an (N, 1, H, W) batch, got shape {tuple(x.shape)}")


def _long_skip_forward(model: nn.Module, body: nn.Module, x: Tensor) -> Tensor:
    """EDSR's and RCAN's shared frame: head conv, ``body`` plus body conv with the long
    skip around both, tail conv, and the input added back when ``model.residual``."""
    check_image_batch(x)
    features = model.head(x)  # (N, width, H, W)
    features = features + model.body_conv(body(features))  # the long skip
    out = model.tail(features)  # (N, 1, H, W)
    return out + x if model.residual else out


class VDSR(nn.Module):
    """``depth`` conv layers (the first 1 -> width, the last width -> 1), ReLU, + input."""

    input_multiple = 1

    def __init__(self, *, width: int = 64, depth: int = 20) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"vdsr needs depth >= 2 conv layers, got {depth}")
        layers: list[nn.Module] = [conv3x3(1, width), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [conv3x3(width, width), nn.ReLU(inplace=True)]
        layers.append(conv3x3(width, 1))
        self.body = nn.Sequential(*layers)
        for module in self.modules():  # He initialisation, as the paper
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        check_image_batch(x)
        return x + self.body(x)


class ResBlock(nn.Module):
    """EDSR's residual block: conv -> ReLU -> conv, scaled by ``res_scale``, + input."""

    def __init__(self, width: int, res_scale: float) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv3x3(width, width), conv3x3(width, width)
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        return x + self.res_scale * self.conv2(self.conv1(x).relu())


class EDSR(nn.Module):
    """Head conv, ``depth`` residual blocks, body conv + long skip, tail conv (scale 1)."""

    input_multiple = 1

    def __init__(
        self, *, width: int = 64, depth: int = 16, res_scale: float = 1.0, residual: bool = False
    ) -> None:
        super().__init__()
        self.head = conv3x3(1, width)
        self.blocks = nn.Sequential(*(ResBlock(width, res_scale) for _ in range(depth)))
        self.body_conv = conv3x3(width, width)
        self.tail = conv3x3(width, 1)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        return _long_skip_forward(self, self.blocks, x)


class ChannelAttention(nn.Module):
    """RCAN's channel attention: global average pool -> 1x1 down -> ReLU -> 1x1 up -> sigmoid."""

    def __init__(self, width: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, width // reduction)
        self.down = nn.Conv2d(width, hidden, 1, bias=True)
        self.up = nn.Conv2d(hidden, width, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        pooled = x.mean(dim=(2, 3), keepdim=True)  # (N, width, 1, 1)
        return x * self.up(self.down(pooled).relu()).sigmoid()


class RCAB(nn.Module):
    """Residual channel-attention block: conv -> ReLU -> conv -> channel attention, + input."""

    def __init__(self, width: int, reduction: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv3x3(width, width), conv3x3(width, width)
        self.attention = ChannelAttention(width, reduction)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.attention(self.conv2(self.conv1(x).relu()))


class ResidualGroup(nn.Module):
    """``depth`` RCABs and a conv, with the group's (short) skip."""

    def __init__(self, width: int, depth: int, reduction: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(RCAB(width, reduction) for _ in range(depth)))
        self.conv = conv3x3(width, width)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(self.blocks(x))


class RCAN(nn.Module):
    """Head conv, ``groups`` residual groups, body conv + long skip, tail conv (scale 1)."""

    input_multiple = 1

    def __init__(
        self,
        *,
        width: int = 64,
        groups: int = 10,
        depth: int = 20,
        reduction: int = 16,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.head = conv3x3(1, width)
        self.groups = nn.Sequential(
            *(ResidualGroup(width, depth, reduction) for _ in range(groups))
        )
        self.body_conv = conv3x3(width, width)
        self.tail = conv3x3(width, 1)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        return _long_skip_forward(self, self.groups, x)
