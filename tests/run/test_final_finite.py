"""aeatrain.run.final: weights holding nan or inf are refused wherever a run's weights are
loaded (issue 23 item 6: predict wrote an all-black image with exit 0)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from aeatrain import evaluate, export, predict
from aeatrain.config.load import load_config
from aeatrain.errors import UserError
from aeatrain.train import main as train_main
from tests.datasets import make_dataset
from tests.eval.helpers import make_run
from tests.train.helpers import DEBUG_CONFIG


def _poison(run_dir, value: float, suffix: str = ""):
    """Set the first value of the first float tensor of RUN/model.safetensors (whose name
    ends with ``suffix``) to ``value``, metadata kept."""
    path = run_dir / "model.safetensors"
    state = load_file(str(path))
    with safe_open(str(path), framework="pt") as opened:  # model name, step, kind
        metadata = opened.metadata()
    name = sorted(k for k, v in state.items() if v.is_floating_point() and k.endswith(suffix))[0]
    state[name].view(-1)[0] = value
    save_file(state, str(path), metadata=metadata)
    return path, name


def _tool(tool: str, run, data, tmp_path):
    """(main, argv) of a tool that loads ``run``, writing under tmp_path/out."""
    image = tmp_path / "in.png"
    cv2.imwrite(str(image), np.full((32, 32), 100, np.uint8))
    out = tmp_path / "out"
    argv = {
        "predict": ["--run", str(run), "--input", str(image), "--output", str(out)],
        "evaluate": ["--run", str(run), "--data", str(data), "--out", str(out)],
        "export": ["--run", str(run), "--data", str(data), "--out", str(out / "model.zip")],
    }[tool]
    return {"predict": predict.main, "evaluate": evaluate.main, "export": export.main}[tool], argv


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "DATA", pairs=1)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("tool", ["predict", "evaluate", "export"])
def test_non_finite_weights_stop_every_tool_naming_the_file(tmp_path, data, tool, value):
    run = make_run(tmp_path / "RUN", model_name="unet", base_channels=4)
    path, name = _poison(run, value)
    main, argv = _tool(tool, run, data, tmp_path)
    with pytest.raises(UserError) as info:
        main(argv)
    assert str(info.value) == (
        f"{path}: 1 weights are nan or inf (in 1 tensors, e.g. {name}): the run diverged or "
        f"the file is damaged; use weights of an earlier checkpoint"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tool", ["predict", "evaluate", "export"])
def test_a_non_finite_output_of_finite_weights_stops_every_tool_naming_the_run(
    tmp_path, data, tool
):
    """A negative BatchNorm variance (a damaged file) is finite, its output is not."""
    run = make_run(tmp_path / "RUN", model_name="unet", base_channels=4)
    _poison(run, -5.0, suffix="running_var")
    main, argv = _tool(tool, run, data, tmp_path)
    with pytest.raises(UserError, match=rf"^{run}: the network's output holds \d+ nan or inf "
                       r"values \(of \d+\) although its weights are finite"):  # fmt: skip
        main(argv)
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == []  # nothing written


def test_init_from_non_finite_weights_is_refused_at_the_check(tmp_path, data):
    kwargs = load_config(DEBUG_CONFIG, ["--data.root", str(data)]).model.build_kwargs()
    source = make_run(tmp_path / "A", model_name="aeanet", **kwargs)
    _poison(source, float("nan"))
    argv = ["--config", str(DEBUG_CONFIG), "--data.root", str(data), "--train.run_dir",
            str(tmp_path / "B"), "--train.init_from", str(source), "--check"]  # fmt: skip
    with pytest.raises(UserError, match=rf"^{source}: 1 weights are nan or inf"):
        train_main(argv)
    assert not (tmp_path / "B").exists()
