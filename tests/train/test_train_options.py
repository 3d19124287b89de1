"""Single-process runs of the options: EMA + channels_last, and a diverging run."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from aeatrain.models import build_model
from aeatrain.run import checkpoint as ckpt
from tests.datasets import make_dataset
from tests.train.helpers import DEBUG_CONFIG, check, events, run, scalar, train_command


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "DATA", pairs=2)


def test_ema_and_channels_last_are_validated_and_exported_separately(data, tmp_path):
    run_dir = tmp_path / "ema"
    result = run(
        train_command(
            "--data.root", str(data), "--train.run_dir", str(run_dir), "--train.steps", "10",
            "--train.ema", "true", "--train.ema_decay", "0.8", "--train.channels_last", "true",
            "--logging.eval_every", "10", "--logging.log_every", "5",
            "--logging.progress_bar", "false",
        )
    )  # fmt: skip
    check(result)
    raw = load_file(str(run_dir / "model.safetensors"))
    averaged = load_file(str(run_dir / "model_ema.safetensors"))
    kwargs = json.loads((run_dir / "run.json").read_text())["model"]["kwargs"]
    model = build_model("aeanet", **kwargs)
    model.load_state_dict(averaged)  # strict: the EMA file is a whole state_dict too
    weight = "first_conv.weight"
    assert not torch.equal(raw[weight], averaged[weight])
    for name in ("bn.running_mean", "running_var"):  # buffers are the live ones
        key = next(k for k in raw if k.endswith(name))
        assert torch.equal(raw[key], averaged[key])
    run_json = json.loads((run_dir / "run.json").read_text())
    assert run_json["weights"] == {"raw": "model.safetensors", "ema": "model_ema.safetensors"}
    # The average is registered with accelerate's checkpointing: save_state kept it.
    ema_state = ckpt.checkpoint_path(run_dir, 10) / "custom_checkpoint_1.pkl"
    saved = torch.load(ema_state, weights_only=True)
    assert saved["updates"] == 10 and torch.equal(saved["shadow"][weight], averaged[weight])
    accumulator = events(run_dir)
    tags = accumulator.Tags()
    assert [step for step, _ in scalar(accumulator, "val_ema/dpsnr")] == [10]
    assert any(tag.startswith("val_ema_images/") for tag in tags["images"])
    assert scalar(accumulator, "val_ema/dpsnr") != scalar(accumulator, "val/dpsnr")


def test_a_diverging_run_stops_naming_the_steps_without_nan_checkpoints(data, tmp_path):
    run_dir = tmp_path / "diverged"
    result = run(
        train_command(
            "--data.root", str(data), "--train.run_dir", str(run_dir), "--train.steps", "20",
            "--optim.lr", "1e30", "--train.max_skipped_steps", "3",
            "--train.checkpoint_every", "1", "--train.keep_checkpoints", "10",
            "--logging.progress_bar", "false",
        )
    )  # fmt: skip
    check(result, 2)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training diverged: steps 1..3 were all skipped"), last
    assert "train.max_skipped_steps=3" in last
    written = ckpt.complete_checkpoints(run_dir)
    assert [step for step, _ in written] == [1, 2, 3]  # skipped steps left the weights alone
    for _, folder in written:
        tensors = load_file(str(folder / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    assert not (run_dir / "model.safetensors").exists()


def _small_vdsr_config(tmp_path):
    """debug.yaml with a 3-layer, 8-channel VDSR: the compile path is the trainer's, and a
    small graph halves inductor's cold compile (94 s -> 50 s for AEANet -> this, 2 cores)."""
    config = yaml.safe_load(DEBUG_CONFIG.read_text())
    config["model"] = {"name": "vdsr", "width": 8, "depth": 3}
    path = tmp_path / "vdsr_debug.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow  # torch.compile on CPU: ~50 s with a cold inductor cache
def test_torch_compile_option_trains_and_exports_plain_weights(data, tmp_path):
    run_dir = tmp_path / "compiled"
    result = run(
        train_command(
            "--data.root", str(data), "--train.run_dir", str(run_dir), "--train.steps", "4",
            "--train.compile", "true", "--logging.log_every", "2",
            "--logging.progress_bar", "false", config=_small_vdsr_config(tmp_path),
        ),
        timeout=600,
    )  # fmt: skip
    check(result)
    assert "torch.compile: training OptimizedModule" in result.stderr
    run_json = json.loads((run_dir / "run.json").read_text())
    model = build_model("vdsr", **run_json["model"]["kwargs"])
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")))  # no _orig_mod. keys
    saved = load_file(str(ckpt.checkpoint_path(run_dir, 4) / "model.safetensors"))
    assert not [key for key in saved if "_orig_mod" in key]
