"""benchmarks/plot_curves.py: checkpoints become run folders evaluate can load (raw and EMA
weights), and the table's best point and fall are the curve's."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from aeatrain.errors import UserError
from aeatrain.models import build_model
from aeatrain.run import checkpoint as ckpt
from aeatrain.run.final import load_run, write_run_files
from aeatrain.training.ema import WeightEMA

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("plot_curves", REPO / "benchmarks" / "plot_curves.py")
plot_curves = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plot_curves)

KWARGS = {"base_channels": 4, "bn_momentum": 0.1}


def fake_run(root: Path) -> tuple[Path, dict[int, torch.nn.Module]]:
    """A finished unet run with checkpoints of steps 1 and 2, each of its own weights;
    step 2 also holds EMA parameters."""
    run = root / "run"
    models = {}
    for step in (1, 2):
        torch.manual_seed(step)
        model = build_model("unet", **KWARGS)
        for buffer in model.buffers():  # BatchNorm statistics of this checkpoint
            buffer.add_(step)
        folder = ckpt.checkpoint_path(run, step)
        folder.mkdir(parents=True)
        save_file(model.state_dict(), str(folder / "model.safetensors"))
        (folder / ckpt.STATE_FILE).write_text(json.dumps({"step": step}))
        models[step] = model
    ema = WeightEMA(models[2], decay=0.9)  # as the trainer registers it with accelerate
    for tensor in ema.shadow.values():
        tensor.mul_(0.5)
    torch.save(ema.state_dict(), ckpt.checkpoint_path(run, 2) / "custom_checkpoint_1.pkl")
    write_run_files(
        run, model=models[2], model_name="unet", model_kwargs=build_kwargs(), scale=2.0,
        bit_depths=[8], dataset={}, step=2, config_yaml="model:\n  name: unet\n",
    )  # fmt: skip
    return run, models


def build_kwargs() -> dict:
    from aeatrain.config.schema import ModelConfig

    return ModelConfig(name="unet", **KWARGS).build_kwargs()


def test_snapshots_hold_each_checkpoints_weights(tmp_path):
    run, models = fake_run(tmp_path)
    found = plot_curves.checkpoints_of(run)
    assert [step for step, _ in found] == [1, 2]
    assert [step for step, _ in plot_curves.checkpoints_of(run, every=5)] == [2]  # the last
    for step, folder in found:
        snap = plot_curves.snapshot(run, step, folder, tmp_path / "snap" / folder.name)
        model, info = load_run(snap, weights="raw")
        assert info.step == step
        for key, value in models[step].state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key
    averaged, info = load_run(tmp_path / "snap" / "step_2", weights="ema")
    assert info.weights_kind == "ema"
    for name, param in models[2].named_parameters():  # EMA parameters ...
        assert torch.equal(averaged.get_parameter(name), param.detach() * 0.5)
    for name, buffer in models[2].named_buffers():  # ... with the checkpoint's statistics
        assert torch.equal(averaged.get_buffer(name), buffer)
    with pytest.raises(UserError, match="no ema weights"):
        load_run(tmp_path / "snap" / "step_1", weights="ema")


def test_table_gives_best_point_and_fall():
    curves = {"a-seed0": {100: 1.0, 200: 1.5, 300: 1.25}, "b-seed0": {100: 0.5, 300: 0.75}}
    assert plot_curves.fall(curves["a-seed0"]) == (200, 1.5, 0.25)
    assert plot_curves.fall(curves["b-seed0"]) == (300, 0.75, 0.0)
    table = plot_curves.markdown(curves).splitlines()
    assert table[0] == "| step | a-seed0 | b-seed0 |"
    assert table[3] == "| 200 | +1.500 | - |"
    assert table[-2] == "| best (step) | +1.500 (200) | +0.750 (300) |"
    assert table[-1] == "| best - end | 0.250 | 0.000 |"


def test_refuses_two_runs_of_one_name_and_unfinished_runs(tmp_path):
    with pytest.raises(UserError, match="named 'r' twice"):
        plot_curves.parse_args(["a/r", "b/r", "--data", "D", "--out", "C"])
    (tmp_path / "unfinished" / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match=r"run\.json is missing"):
        plot_curves.checkpoints_of(tmp_path / "unfinished")


def test_runs_of_one_model_share_a_colour_seeds_a_line_style():
    assert plot_curves.model_and_seed("unet-pooled-seed2") == ("unet-pooled", 2)
    assert plot_curves.model_and_seed("A-aeanet-s1") == ("A-aeanet", 1)
    assert plot_curves.model_and_seed("my_run") == ("my_run", 0)
