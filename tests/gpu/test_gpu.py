"""What only a CUDA GPU can show: bf16/fp16 autocast, the SDPA kernels, GPU inference and
a bf16 training run. Every test is marked ``gpu`` and skips, saying so, without a GPU
(tests/conftest.py); none has run in this project's sessions yet (no GPU was lent)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aeatrain.models import build_model
from aeatrain.models.attention import AugmentedAttention
from aeatrain.protocol.inference import predict_full
from tests.datasets import make_dataset

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parents[2]


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("normalize", ["linear", "softmax"])
def test_autocast_on_cuda_matches_float32(normalize, dtype):
    """Full-resolution token count (the bottom of a 944 x 960 image), both branches."""
    torch.manual_seed(0)
    op = AugmentedAttention(128, normalize=normalize).train().cuda()
    x = torch.randn(2, 128, 236, 240, device="cuda").clamp(0, 6).requires_grad_()
    out32 = op(x)
    (grad32,) = torch.autograd.grad(out32.square().mean(), x)
    with torch.autocast("cuda", dtype=dtype):
        out16 = op(x)
    (grad16,) = torch.autograd.grad(out16.float().square().mean(), x)
    assert torch.isfinite(out16).all() and torch.isfinite(grad16).all()
    assert _relative(out16, out32) < 3e-2 and _relative(grad16, grad32) < 5e-2


def test_cuda_equals_cpu_float64_formula():
    """The same weights on CUDA (float32, SDPA for softmax) and on the CPU in float64."""
    for normalize in ("linear", "softmax"):
        torch.manual_seed(1)
        op = AugmentedAttention(64, num_refs=16, normalize=normalize).train()
        x = torch.rand(4, 64, 24, 20)
        expected = op.double()(x.double())
        got = op.float().cuda()(x.cuda()).cpu()
        assert _relative(got, expected) < 1e-4, normalize


def test_aeanet_full_resolution_bf16_step_memory(record_property):
    model = build_model("aeanet").cuda().train()
    x = torch.rand(1, 1, 944, 960, device="cuda")
    torch.cuda.reset_peak_memory_stats()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = (model(x) - x).abs().mean()
    loss.backward()
    peak_gib = torch.cuda.max_memory_allocated() / 2**30
    record_property("aeanet_944x960_bf16_peak_gib", peak_gib)
    print(f"aeanet 944x960 bf16 forward+backward: peak {peak_gib:.2f} GiB on "
          f"{torch.cuda.get_device_name()}")  # fmt: skip
    assert torch.isfinite(loss) and all(
        torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None
    )


def test_whole_image_prediction_on_gpu_equals_cpu():
    torch.manual_seed(2)
    model = build_model("aeanet", base_channels=8, num_refs=8).eval()
    image = np.random.default_rng(0).random((300, 452), dtype=np.float32)
    on_cpu = predict_full(model, image, device=torch.device("cpu"))
    on_gpu = predict_full(model, image, device=torch.device("cuda"))
    assert np.abs(on_gpu - on_cpu).max() < 1e-4


def test_bf16_training_run_on_gpu(tmp_path):
    data = make_dataset(tmp_path / "DATA", pairs=2)
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(REPO / "aeatrain/train.py"), "--config", "configs/debug.yaml",
         "--data.root", str(data), "--train.run_dir", str(run_dir),
         "--train.mixed_precision", "bf16", "--train.steps", "20"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HOME": "/nonexistent"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mixed precision bf16" in result.stderr
    assert json.loads((run_dir / "run.json").read_text())["step"] == 20


def test_pinned_batches_reach_the_gpu_unchanged(tmp_path):
    from aeatrain.data.loader import train_loader

    data = make_dataset(tmp_path / "DATA", pairs=2)
    options = {"crop_size": 32, "batch_size": 4, "seed": 0, "num_workers": 2}
    pinned = train_loader(data, pin_memory=True, **options)
    plain = train_loader(data, **options)
    for _ in range(3):
        batch, reference = next(pinned), next(plain)
        assert batch["lr"].is_pinned() and not reference["lr"].is_pinned()
        on_gpu = batch["lr"].to("cuda", non_blocking=True)
        torch.cuda.synchronize()
        assert torch.equal(on_gpu.cpu(), reference["lr"])
    pinned.close()
    plain.close()


def test_training_steps_make_no_synchronizing_cuda_call(tmp_path, monkeypatch):
    """CUDA's own sync detector (torch.cuda.set_sync_debug_mode) watches every step after
    the first two (lazy initialisation); log steps, validation and checkpoints excepted."""
    import warnings

    from aeatrain import train

    data = make_dataset(tmp_path / "DATA", pairs=2)
    steps, caught = [], []
    original = train.train_step

    def watched(t, batch):
        if len(steps) < 2:
            steps.append(0)
            return original(t, batch)
        with warnings.catch_warnings(record=True) as found:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                return original(t, batch)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                steps.append(0)
                caught.extend(str(w.message) for w in found if "synchroniz" in str(w.message))

    monkeypatch.setattr(train, "train_step", watched)
    argv = ["--config", str(REPO / "configs/debug.yaml"), "--data.root", str(data),
            "--train.run_dir", str(tmp_path / "run"), "--train.steps", "10",
            "--train.mixed_precision", "bf16", "--logging.log_every", "5",
            "--logging.progress_bar", "false"]  # fmt: skip
    assert train.main(argv) == 0
    assert len(steps) == 10
    assert caught == [], caught[:3]
