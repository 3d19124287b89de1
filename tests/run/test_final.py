"""aeatrain.run.final: write_run_files / load_run round trip, EMA choice and bad run folders."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from torch.optim.swa_utils import AveragedModel

from aeatrain.models import build_model
from aeatrain.run.final import RunError, load_run, unwrap_model, write_run_files
from tests.eval.helpers import make_model, make_run


def test_round_trip_restores_the_same_outputs_and_metadata(tmp_path):
    run = make_run(tmp_path / "run", model_name="aeanet", num_refs=16, pairs=["pair01"], step=123)
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "model.safetensors", "run.json"]
    info = json.loads((run / "run.json").read_text())
    assert info["model"] == {"name": "aeanet", "kwargs": {"num_refs": 16, "base_channels": 4}}
    assert info["weights"] == {"raw": "model.safetensors", "ema": None}
    with safe_open(str(run / "model.safetensors"), framework="pt") as handle:
        assert handle.metadata() == {"model": "aeanet", "step": "123", "kind": "raw"}

    model, run_info = load_run(run)
    assert not model.training
    assert run_info.step == 123 and run_info.scale == 2.0 and run_info.bit_depths == [8]
    assert run_info.weights_kind == "raw" and run_info.model_name == "aeanet"
    assert run_info.train_pairs == ["pair01"]
    saved = make_model("aeanet", seed=0, num_refs=16, base_channels=4).state_dict()
    loaded = model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)


def test_auto_prefers_ema_and_raw_can_be_forced(tmp_path):
    run = make_run(tmp_path / "run", ema=True)
    x = torch.rand(1, 1, 16, 16)
    auto, auto_info = load_run(run)
    raw, raw_info = load_run(run, weights="raw")
    ema, _ = load_run(run, weights="ema")
    assert auto_info.weights_kind == "ema" and raw_info.weights_kind == "raw"
    with torch.no_grad():
        assert torch.equal(auto(x), ema(x))
        assert not torch.allclose(auto(x), raw(x))
    with safe_open(str(run / "model_ema.safetensors"), framework="pt") as handle:
        assert handle.metadata()["kind"] == "ema"


def test_wrapped_models_are_saved_as_plain_state_dicts(tmp_path):
    model = build_model("unet", base_channels=4)
    ema = AveragedModel(model)
    assert unwrap_model(ema) is ema.module
    write_run_files(
        tmp_path / "run",
        model=model,
        model_name="unet",
        model_kwargs={"base_channels": 4},
        scale=2,
        bit_depths=[8, 16],
        dataset={"path": "D"},
        step=5,
        config_yaml="data: {pairs: null}\n",
        ema_model=ema,
    )
    _, info = load_run(tmp_path / "run")
    assert info.weights_kind == "ema" and info.bit_depths == [8, 16] and info.train_pairs is None


def test_a_resumed_run_replaces_its_files(tmp_path):
    run = make_run(tmp_path / "run", step=10, seed=0)
    make_run(run, step=20, seed=1)
    _, info = load_run(run)
    assert info.step == 20
    assert not list(run.glob(".*.tmp*"))  # no temporary files left


def test_missing_run_folder(tmp_path):
    with pytest.raises(RunError, match="no such run folder"):
        load_run(tmp_path / "nope")


def test_unfinished_run_folder_says_so(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(RunError, match=r"run.json is missing \(training has not finished"):
        load_run(tmp_path / "run")


def test_run_without_weights(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "model.safetensors").unlink()
    with pytest.raises(RunError, match=r"model\.safetensors: weights file missing"):
        load_run(run)
    with pytest.raises(RunError, match="no ema weights"):
        load_run(make_run(tmp_path / "run2"), weights="ema")


def test_weights_that_do_not_match_the_model(tmp_path):
    run = make_run(tmp_path / "run")
    info = json.loads((run / "run.json").read_text())
    info["model"]["kwargs"]["base_channels"] = 8
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(RunError, match=r"weights do not match the model: .*of another shape"):
        load_run(run)
    info["model"]["name"] = "aeanet"
    (run / "run.json").write_text(json.dumps(info))
    with pytest.raises(RunError, match="holds weights of model 'unet'"):
        load_run(run)


def test_corrupt_weights_and_run_json(tmp_path):
    run = make_run(tmp_path / "run")
    data = (run / "model.safetensors").read_bytes()
    (run / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(RunError, match="not a readable safetensors file"):
        load_run(run)
    (run / "run.json").write_text("{not json")
    with pytest.raises(RunError, match=r"run\.json: not an aeatrain run file \(not valid JSON"):
        load_run(run)


def _absent_device() -> str:
    """A CUDA device this machine lacks: cuda without GPUs, else one past the last GPU."""
    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


@pytest.mark.parametrize("tool", ["evaluate", "predict", "refmaps"])
@pytest.mark.parametrize("device", ["banana", _absent_device()])
def test_a_bad_or_absent_device_is_one_line_exit_2_before_any_work(tool, device, tmp_path, capsys):
    import importlib

    from aeatrain.errors import EXIT_USER_ERROR, run_cli

    module = importlib.import_module(f"aeatrain.{tool}")
    run = tmp_path / "no-run"  # never opened: the device is checked while parsing
    args = {
        "evaluate": ["--run", str(run), "--data", str(tmp_path / "no-data")],
        "predict": ["--run", str(run), "--input", "x.png", "--output", str(tmp_path / "o")],
        "refmaps": ["--run", str(run), "--input", "x.png", "--output", str(tmp_path / "o")],
    }[tool]
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: module.main([*args, "--device", device]))
    err = capsys.readouterr().err
    assert stop.value.code == EXIT_USER_ERROR
    assert err.startswith(f"error: --device {device}: ") and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()
