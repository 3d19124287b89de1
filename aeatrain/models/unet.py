"""The U-Net shared by "unet", "gvtnet" and "aeanet" (docs/method.md section 2).

Depth 3, as the published TensorFlow code (divelab/AEANets, ``network.py`` with
``network_configure.py``), channels c = base_channels:

    first conv 3x3, 1 -> c                            (H, W)
    encoder 1: 1 residual block, c                    (H, W)      -> skip 1
    down: 3x3 stride-2 conv, c -> 2c                  (H/2, W/2)
    encoder 2: 1 residual block, 2c                   (H/2, W/2)  -> skip 2
    down: 3x3 stride-2 conv, 2c -> 4c                 (H/4, W/4)
    bottom: residual block | attention block, 4c      (H/4, W/4)
    up: 4x4 stride-2 transposed conv, 4c -> 2c; concat skip 2; residual block 4c -> 2c
    up: 4x4 stride-2 transposed conv, 2c -> c;  concat skip 1; residual block 2c -> c
    head: BN -> ReLU6 -> 1x1 conv, c -> 1

All convolutions have no bias except the attention projections. Residual blocks are
pre-activation (BN -> ReLU6 -> conv, twice); a block that changes the channel count takes
its shortcut through a 1x1 conv of the first activation. The published network does NOT
add its input to its output; ``residual=True`` is an option that does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aeatrain.models.attention import AugmentedAttention

BOTTOMS = ("res", "attention")


class ConvBN(nn.Module):
    """Pre-activation unit: BatchNorm -> ReLU6 (the conv follows in the caller)."""

    def __init__(self, channels: int, momentum: float, eps: float) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=eps, momentum=momentum)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu6(self.bn(x))


class ResBlock(nn.Module):
    """Pre-activation residual block: (BN -> ReLU6 -> 3x3 conv) x 2, plus the shortcut."""

    def __init__(self, in_ch: int, out_ch: int, momentum: float, eps: float) -> None:
        super().__init__()
        self.act1 = ConvBN(in_ch, momentum, eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.act2 = ConvBN(out_ch, momentum, eps)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        # Projection of the first ACTIVATION (not the raw input) when channels change.
        self.shortcut = None if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act1(x)
        shortcut = x if self.shortcut is None else self.shortcut(h)
        h = self.conv2(self.act2(self.conv1(h)))
        return shortcut + h


class AttentionBlock(nn.Module):
    """The augmented attention block: BN -> ReLU6 -> attention operator -> + input."""

    def __init__(self, channels: int, momentum: float, eps: float, **attention_kw) -> None:
        super().__init__()
        self.act = ConvBN(channels, momentum, eps)
        self.attention = AugmentedAttention(channels, **attention_kw)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.attention(self.act(x))


class DownConv(nn.Module):
    """3x3 stride-2 conv with TensorFlow's 'same' padding (one row/column after, none before).

    PyTorch's symmetric padding=1 would sample pixels shifted by one; padding like TF keeps
    the published network's alignment (H/2 outputs centred on odd input rows).
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, stride=2, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class UNet(nn.Module):
    """The depth-3 U-Net; ``bottom`` picks the baseline ("res") or attention ("attention").

    Input (N, 1, H, W) float in [0, 1] with H, W multiples of 4; output (N, 1, H, W).
    Parameter counts with base_channels=32 (from ``sum(p.numel() for p in parameters())``):
    "unet" 793,408; "gvtnet" 564,288; "aeanet" (r = 64) 572,480, r = 32: 568,384,
    r = 16: 566,336 (the attention block replaces the bottom residual block).
    """

    input_multiple = 4  # two stride-2 levels: H and W must be multiples of 4 (check_input)

    def __init__(
        self,
        *,
        bottom: str = "res",
        base_channels: int = 32,
        bn_momentum: float = 0.003,
        bn_eps: float = 1e-5,
        residual: bool = False,
        **attention_kw,
    ) -> None:
        super().__init__()
        if bottom not in BOTTOMS:
            raise ValueError(f"bottom must be one of {BOTTOMS}, got {bottom!r}")
        if bottom == "res" and attention_kw:
            raise ValueError(f"attention options {sorted(attention_kw)} need bottom='attention'")
        c, bn = base_channels, {"momentum": bn_momentum, "eps": bn_eps}
        self.residual = residual
        self.first_conv = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.enc1 = ResBlock(c, c, **bn)
        self.down1 = DownConv(c, 2 * c)
        self.enc2 = ResBlock(2 * c, 2 * c, **bn)
        self.down2 = DownConv(2 * c, 4 * c)
        if bottom == "res":
            self.bottom = ResBlock(4 * c, 4 * c, **bn)
        else:
            self.bottom = AttentionBlock(4 * c, **bn, **attention_kw)
        self.up2 = nn.ConvTranspose2d(4 * c, 2 * c, 4, stride=2, padding=1, bias=False)
        self.dec2 = ResBlock(4 * c, 2 * c, **bn)
        self.up1 = nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1, bias=False)
        self.dec1 = ResBlock(2 * c, c, **bn)
        self.head_act = ConvBN(c, **bn)
        self.head = nn.Conv2d(c, 1, 1, bias=False)
        self._init_convs()

    def _init_convs(self) -> None:
        """Glorot-uniform conv kernels (TF's fans equal PyTorch's for both conv kinds)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @property
    def attention(self) -> AugmentedAttention | None:
        """The bottom attention operator, or None for the "unet" baseline."""
        return self.bottom.attention if isinstance(self.bottom, AttentionBlock) else None

    def forward(self, x: Tensor) -> Tensor:
        """Super-resolve (N, 1, H, W) -> (N, 1, H, W)."""
        skip1, skip2, h = self._encode(x)
        h = self.bottom(h)  # (N, 4c, H/4, W/4)
        h = self.dec2(torch.cat([self.up2(h), skip2], dim=1))  # (N, 2c, H/2, W/2)
        h = self.dec1(torch.cat([self.up1(h), skip1], dim=1))  # (N, c, H, W)
        out = self.head(self.head_act(h))  # (N, 1, H, W)
        return out + x if self.residual else out

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Skips at full and half resolution and the (N, 4c, H/4, W/4) bottom input."""
        check_input(x, self.input_multiple)
        skip1 = self.enc1(self.first_conv(x))  # (N, c, H, W)
        skip2 = self.enc2(self.down1(skip1))  # (N, 2c, H/2, W/2)
        return skip1, skip2, self.down2(skip2)  # (N, 4c, H/4, W/4)

    def reference_maps(self, x: Tensor, refs: Sequence[int]) -> Tensor:
        """Where each chosen shared reference is relevant: (N, len(refs), H, W).

        For reference i the map is :meth:`AugmentedAttention.reference_scores` at the
        bottom (H/4 x W/4), i.e. <q(x_j), k(R_i)> / sqrt(d) for the attention input of
        pixel j (after the block's BN -> ReLU6), averaged over heads and upsampled
        bilinearly (align_corners=False) to H x W: the paper's Fig. 6. It runs the encoder
        in the module's current mode; call it under ``model.eval()`` (and ``no_grad``) so
        BatchNorm uses its running statistics and leaves them alone.
        """
        attention = self.attention
        if attention is None or attention.refs is None:
            raise ValueError("reference_maps needs an attention bottom with num_refs > 0")
        index = list(refs)
        bad = [i for i in index if not 0 <= i < attention.num_refs]
        if bad:
            raise ValueError(f"references {bad} out of range [0, {attention.num_refs})")
        _, _, bottom_in = self._encode(x)
        scores = attention.reference_scores(self.bottom.act(bottom_in))  # (N, heads, r, h, w)
        maps = scores[:, :, index].mean(dim=1)  # (N, len(refs), H/4, W/4)
        return F.interpolate(maps, size=x.shape[-2:], mode="bilinear", align_corners=False)


def check_input(x: Tensor, multiple: int) -> None:
    """Raise a ValueError naming the shape unless x is (N, 1, H, W) with H, W multiples of
    ``multiple`` (the model's ``input_multiple``)."""
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected an (N, 1, H, W) batch, got shape {tuple(x.shape)}")
    if x.shape[2] % multiple or x.shape[3] % multiple:
        raise ValueError(
            f"height and width must be multiples of {multiple} (the model's input_multiple), "
            f"got shape {tuple(x.shape)}; pad the image (prediction reflect-pads) first"
        )
