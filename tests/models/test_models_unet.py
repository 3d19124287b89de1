"""build_model and the U-Net: names, options, shapes, errors, the published architecture,
initialisation, equivariance of the whole bottom, reference maps, full resolution."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from aeatrain.collective import use_batch_group
from aeatrain.models import DEFAULTS, MODEL_NAMES, build_model, input_multiple
from aeatrain.models.attention import AugmentedAttention
from aeatrain.models.unet import AttentionBlock, DownConv, ResBlock
from aeatrain.protocol.inference import padding_multiple
from tests.models.reference import FixedSplit

UNET_FAMILY = ("unet", "gvtnet", "aeanet")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_docstrings():
    assert n_params(build_model("unet")) == 793_408
    assert n_params(build_model("gvtnet")) == 564_288
    assert n_params(build_model("aeanet")) == 572_480
    assert n_params(build_model("aeanet", num_refs=32)) == 568_384
    assert n_params(build_model("aeanet", num_refs=16)) == 566_336
    # the bottom attention operator alone: 4 c (c + 1) + r c with c = 128, r = 64
    assert n_params(build_model("aeanet").attention) == 4 * 128 * 129 + 64 * 128


@pytest.mark.parametrize("name", ["unet", "gvtnet", "aeanet"])
@pytest.mark.parametrize("train", [True, False])
def test_forward_shape_and_backward(name, train):
    torch.manual_seed(0)
    model = build_model(name).train(train)
    x = torch.rand(3, 1, 20, 28)
    out = model(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_published_architecture():
    model = build_model("aeanet")
    attention = model.attention
    assert isinstance(attention, AugmentedAttention)
    assert (attention.channels, attention.heads, attention.num_refs) == (128, 2, 64)
    assert attention.batch_aware and attention.normalize == "linear"
    assert isinstance(model.bottom, AttentionBlock)
    assert isinstance(model.enc1, ResBlock) and isinstance(model.down1, DownConv)
    assert model.up2.kernel_size == (4, 4) and model.up2.stride == (2, 2)
    assert model.dec2.shortcut is not None and model.enc1.shortcut is None
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    # 2 per residual block (enc1, enc2, dec2, dec1), 1 in the attention block, 1 in the head
    assert len(bns) == 10 and all(bn.momentum == 0.003 and bn.eps == 1e-5 for bn in bns)
    assert all(
        m.bias is None
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
        and not any(m is c for c in attention.modules())
    )
    assert not model.residual


def test_variants_by_keyword():
    assert build_model("unet").attention is None
    gvt = build_model("gvtnet").attention
    assert gvt.refs is None and not gvt.batch_aware
    refs_only = build_model("aeanet", batch_aware=False).attention
    assert refs_only.refs.shape == (64, 128) and not refs_only.batch_aware
    batch_only = build_model("aeanet", num_refs=0).attention
    assert batch_only.refs is None and batch_only.batch_aware
    small = build_model("aeanet", base_channels=8, heads=4, normalize="softmax")
    assert small.attention.channels == 32 and small.attention.heads == 4
    model = build_model("unet", bn_momentum=0.1, bn_eps=1e-3)
    assert model.enc1.act1.bn.momentum == 0.1 and model.enc1.act1.bn.eps == 1e-3


def test_build_model_errors_name_the_problem():
    with pytest.raises(ValueError, match="'resnet'"):
        build_model("resnet")
    with pytest.raises(ValueError, match="num_ref"):
        build_model("aeanet", num_ref=64)
    with pytest.raises(ValueError, match=r"\['num_refs'\].*'unet'"):
        build_model("unet", num_refs=16)
    with pytest.raises(ValueError, match="batch_aware"):
        build_model("gvtnet", batch_aware=False)
    with pytest.raises(ValueError, match="normalize"):
        build_model("aeanet", normalize="relu")
    with pytest.raises(TypeError):
        build_model("aeanet", 32)  # keyword-only
    build_model("unet", **DEFAULTS)  # a whole config section at defaults is fine


@pytest.mark.parametrize("shape", [(1, 1, 30, 32), (1, 1, 32, 18), (2, 3, 32, 32), (32, 32)])
def test_bad_input_shape_is_named(shape):
    model = build_model("aeanet")
    with pytest.raises(ValueError, match=str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")):
        model(torch.rand(shape))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_input_multiple_is_the_models_own_declaration(name):
    """One source: the class attribute, read by the shape check, the loader and padding."""
    model = build_model(name, **({"neighbours": 1} if name == "lbnlm" else {}))
    assert input_multiple(name) == model.input_multiple == (4 if name in UNET_FAMILY else 1)
    assert padding_multiple(model) == 16  # the published pad is a multiple of every model's


def test_the_shape_check_follows_the_declared_multiple(monkeypatch):
    model = build_model("unet", base_channels=4).eval()
    model(torch.rand(1, 1, 12, 20))  # multiples of 4
    monkeypatch.setattr(model, "input_multiple", 8)
    with pytest.raises(ValueError, match=r"multiples of 8 .*\(1, 1, 12, 20\)"):
        model(torch.rand(1, 1, 12, 20))


def test_glorot_uniform_init():
    torch.manual_seed(0)
    model = build_model("aeanet")
    for conv in (model.dec2.conv1, model.up2, model.attention.q_proj):
        weight = conv.weight
        receptive = weight[0, 0].numel()
        fans = (weight.shape[0] + weight.shape[1]) * receptive
        bound = math.sqrt(6 / fans)
        assert weight.abs().max() <= bound
        assert weight.abs().max() > 0.95 * bound  # uniform up to the bound
        assert abs(float(weight.detach().std()) - bound / math.sqrt(3)) < 0.05 * bound
    assert float(model.attention.q_proj.bias.abs().max()) == 0.0


def test_residual_option_adds_the_input():
    torch.manual_seed(0)
    plain = build_model("aeanet").eval()
    torch.manual_seed(0)
    residual = build_model("aeanet", residual=True).eval()
    x = torch.rand(2, 1, 16, 16)
    assert torch.allclose(residual(x), plain(x) + x, atol=1e-6)


def test_the_batch_group_reaches_the_attention():
    torch.manual_seed(0)
    model = build_model("aeanet").double().train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
    x = torch.rand(4, 1, 16, 16, dtype=torch.float64)
    default = model(x)
    assert use_batch_group(model, FixedSplit([True, True, False, False])) == 1
    assert torch.equal(model(x), default)
    use_batch_group(model, FixedSplit([False, False, True, True]))
    assert (model(x) - default).abs().max() > 1e-6
    assert use_batch_group(build_model("unet"), FixedSplit([False] * 4)) == 0  # no attention


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_attention_block_equivariance_inside_the_model(mode):
    """The whole bottom block (BN, ReLU6, operator, residual) is pixel-permutation
    equivariant: it has no convolution, so Theorems 1-2 carry over (float64)."""
    torch.manual_seed(0)
    block = build_model("aeanet").double().bottom.train(mode == "train")
    x = torch.randn(4, 128, 6, 5, dtype=torch.float64)
    perm = torch.randperm(30)
    permuted_in = x.flatten(2)[:, :, perm].reshape(x.shape)
    out_perm = block(permuted_in).flatten(2)
    assert (out_perm - block(x).flatten(2)[:, :, perm]).abs().max() <= 1e-9


def test_reference_maps():
    torch.manual_seed(0)
    model = build_model("aeanet").eval()
    x = torch.rand(2, 1, 32, 40)
    with torch.no_grad():
        maps = model.reference_maps(x, [0, 5, 63])
        _, _, bottom_in = model._encode(x)
        scores = model.attention.reference_scores(model.bottom.act(bottom_in))
    assert maps.shape == (2, 3, 32, 40)
    assert scores.shape == (2, 2, 64, 8, 10)
    # bilinear upsampling by 4 of a constant-free map: its mean is close to the bottom mean
    expected = scores[:, :, [0, 5, 63]].mean(1)  # (N, 3, 8, 10)
    down = nn.functional.avg_pool2d(maps, 4)
    assert (down - expected).abs().max() < 0.5 * expected.abs().max()
    with pytest.raises(ValueError, match="64"):
        model.reference_maps(x, [64])
    with pytest.raises(ValueError, match="num_refs"):
        build_model("gvtnet").reference_maps(x, [0])


def _memory_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


@pytest.mark.slow  # ~25 s alone on 2 cores, over a minute on the shared machine
@pytest.mark.timeout(900)
def test_aeanet_full_resolution_forward_backward(record_property):
    """One 944 x 960 image, training mode, float32, CPU: works; time and peak memory."""
    torch.manual_seed(0)
    model = build_model("aeanet").train()
    x = torch.rand(1, 1, 944, 960)
    with open("/proc/self/clear_refs", "w") as refs:  # reset the RSS high-water mark
        refs.write("5")
    before = _memory_bytes("VmRSS:")
    start, start_cpu = time.perf_counter(), time.process_time()
    out = model(x)
    out.abs().mean().backward()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    peak = _memory_bytes("VmHWM:") - before
    record_property("seconds", seconds)
    record_property("cpu_seconds", cpu_seconds)
    record_property("peak_bytes", peak)
    print(
        f"aeanet 944x960 fwd+bwd: {seconds:.1f} s wall, {cpu_seconds:.1f} s CPU "
        f"({torch.get_num_threads()} threads), peak {peak / 2**30:.2f} GiB above start"
    )
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.isfinite(model.attention.refs.grad).all()
    assert peak < 6 * 2**30


@pytest.mark.slow  # importing and running dynamo's tracer: ~50 s on the shared 2-core VM
def test_aeanet_training_forward_is_one_graph_for_torch_compile():
    """No graph break (no tensor read on the host): torch.compile and CUDA graphs take the
    whole forward, the batch-aware split included (benchmarks/bench_gpu.py)."""
    model = build_model("aeanet", base_channels=8, num_refs=8).train()
    explained = torch._dynamo.explain(model)(torch.rand(4, 1, 32, 32))
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1
