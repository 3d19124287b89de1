"""VDSR, EDSR and RCAN: published sizes, docs/models.md's table, shapes, keywords."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from aeatrain.models import SR_NETWORKS, build_model

MODELS_DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"
PUBLISHED = {"vdsr": 665_921, "edsr": 1_219_841, "rcan": 15_294_625}


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def documented_counts() -> dict[str, int]:
    """``| `name` | ... | 1,234 | ...`` rows of docs/models.md's model tables."""
    counts = {}
    for name, count in re.findall(
        r"^\| `(\w+)` \|[^|\n]*\| ([\d,]+) \|", MODELS_DOC.read_text(), re.M
    ):
        counts[name] = int(count.replace(",", ""))
    return counts


@pytest.mark.parametrize("name", SR_NETWORKS)
def test_published_size_and_documented(name):
    count = parameters(build_model(name))
    assert count == PUBLISHED[name]
    assert documented_counts()[name] == count


def test_documented_counts_of_the_unet_family_too():
    counts = documented_counts()
    for name in ("unet", "gvtnet", "aeanet"):
        assert re.search(
            rf"\| `{name}` \|[^\n]*\| {parameters(build_model(name)):,}", MODELS_DOC.read_text()
        )
    assert set(PUBLISHED) <= set(counts)


SMALL = {
    "vdsr": {"width": 8, "depth": 4},
    "edsr": {"width": 8, "depth": 2, "res_scale": 0.1, "residual": True},
    "rcan": {"width": 8, "depth": 2, "groups": 2, "reduction": 4},
}


@pytest.mark.parametrize("name", SR_NETWORKS)
@pytest.mark.parametrize("size", [(7, 13), (16, 5), (1, 1)])
def test_forward_keeps_any_size(name, size):
    torch.manual_seed(0)
    model = build_model(name, **SMALL[name])
    assert model.input_multiple == 1
    x = torch.rand(2, 1, *size)
    out = model(x)
    assert out.shape == x.shape
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_depth_and_width_keywords_change_the_size():
    # VDSR: first (1->w) + (depth - 2) (w->w) + last (w->1) convs, each with bias.
    w, d = 16, 5
    expected = (9 * w + w) + (d - 2) * (9 * w * w + w) + (9 * w + 1)
    assert parameters(build_model("vdsr", width=w, depth=d)) == expected
    assert parameters(build_model("rcan", groups=1, depth=1, width=16, reduction=4)) < 20_000
    assert parameters(build_model("edsr", depth=4)) < parameters(build_model("edsr"))


def test_vdsr_adds_its_input():
    model = build_model("vdsr", width=4, depth=3)
    for p in model.parameters():
        torch.nn.init.zeros_(p)
    x = torch.rand(1, 1, 6, 6)
    assert torch.equal(model(x), x)


def test_edsr_residual_option():
    torch.manual_seed(0)
    plain = build_model("edsr", width=4, depth=1)
    with_input = build_model("edsr", width=4, depth=1, residual=True)
    with_input.load_state_dict(plain.state_dict())
    x = torch.rand(1, 1, 5, 5)
    assert torch.allclose(with_input(x), plain(x) + x)


def test_rcan_channel_attention_scales_channels():
    torch.manual_seed(0)
    model = build_model("rcan", width=8, groups=1, depth=1, reduction=4)
    block = model.groups[0].blocks[0]
    h = torch.rand(2, 8, 5, 5)
    gate = block.attention(h) / h  # the per-channel gate in (0, 1), constant over pixels
    assert torch.allclose(gate, gate[..., :1, :1].expand_as(gate), atol=1e-6)
    assert gate.min() > 0 and gate.max() < 1


def test_options_of_other_models_are_refused():
    with pytest.raises(ValueError, match="num_refs"):
        build_model("vdsr", num_refs=8)
    with pytest.raises(ValueError, match="width"):
        build_model("unet", width=32)
    with pytest.raises(ValueError, match="residual"):
        build_model("vdsr", residual=True)  # VDSR always adds its input
    with pytest.raises(ValueError, match="shape"):
        build_model("edsr", width=4, depth=1)(torch.rand(1, 3, 8, 8))
