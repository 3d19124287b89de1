"""The model table: a model added as one module and one ``MODELS`` entry builds, passes the
config's checks and trains, with no other table touched (``ToyNet`` lives only here)."""

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from aeatrain.config.load import ConfigError, load_config
from aeatrain.models import DEFAULTS, MODELS, ModelSpec, build_model, input_multiple
from aeatrain.run.final import load_run
from tests.datasets import make_dataset
from tests.train.helpers import DEBUG_CONFIG, events, scalar, train_in_process


class ToyNet(nn.Module):
    """(N, 1, H, W) -> (N, 1, H, W): the input plus two 3x3 convolutions."""

    input_multiple = 2

    def __init__(self, *, width: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 1, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)  # (N, 1, H, W)


TOY = ModelSpec(
    build=ToyNet,
    options={"width": DEFAULTS["width"]},
    input_multiple=ToyNet.input_multiple,
    label="Toy",
    summary="two convolutions added to the input",
    family="toy",
)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(MODELS, "toy", TOY)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "DATA", pairs=1, width=96, height=64)


def toy_config(tmp_path, data, **model):
    """The debug config with a model section of the toy's own options only."""
    tree = yaml.safe_load(DEBUG_CONFIG.read_text())
    tree["model"] = {"name": "toy", **model}
    tree["data"]["root"] = str(data)
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_a_model_not_in_the_table_is_no_choice(tmp_path, data):
    with pytest.raises(ConfigError, match=r"model\.name: Input should be 'unet', .*'toy'"):
        load_config(toy_config(tmp_path, data))


def test_a_toy_model_added_to_the_table_builds_and_validates(toy, tmp_path, data):
    model = build_model("toy", width=3)
    assert isinstance(model, ToyNet) and model.body[0].out_channels == 3
    assert input_multiple("toy") == 2
    # The whole config section passes; options of other models must keep their defaults.
    build_model("toy", **{**DEFAULTS, "width": 3})
    with pytest.raises(ValueError, match=r"\['num_refs'\].*'toy'"):
        build_model("toy", num_refs=8)
    cfg = load_config(toy_config(tmp_path, data, width=3), ["--data.crop_size", "34"])
    assert cfg.model.name == "toy" and cfg.model.width == 3
    with pytest.raises(ConfigError, match="multiple of 2, the input multiple of model 'toy'"):
        load_config(toy_config(tmp_path, data), ["--data.crop_size", "33"])


def test_a_toy_model_added_to_the_table_trains(toy, tmp_path, data):
    run_dir = tmp_path / "run"
    argv = [
        "--config", str(toy_config(tmp_path, data, width=4)), "--train.run_dir", str(run_dir),
        "--train.steps", "2", "--train.checkpoint_every", "2", "--logging.eval_every", "100",
        "--logging.eval_max_pairs", "1", "--logging.image_tiles", "0", "--logging.log_every",
        "1", "--logging.progress_bar", "false",
    ]  # fmt: skip
    assert train_in_process(argv) == 0
    trained = load_file(str(run_dir / "model.safetensors"))
    assert trained["body.0.weight"].shape == (4, 1, 3, 3)
    model, run = load_run(run_dir)  # run.json names the toy; the table rebuilds it
    assert isinstance(model, ToyNet) and run.model_name == "toy" and run.step == 2
    accumulator = events(run_dir)
    losses = scalar(accumulator, "train/loss")
    assert [step for step, _ in losses] == [1, 2] and all(0 < loss < 1 for _, loss in losses)
    assert all(norm > 0 for _, norm in scalar(accumulator, "train/grad_norm"))
