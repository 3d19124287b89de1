"""train.init_from: a new run starts from another run's (or an exported package's) weights,
optimizer fresh; a different model is refused; the source is recorded in run.json."""

from __future__ import annotations

import hashlib
import importlib.util
import json

import pytest
import torch
import yaml
from accelerate.state import AcceleratorState

from aeatrain import export
from aeatrain.config.load import ConfigError, load_config
from aeatrain.errors import UserError
from aeatrain.run.final import write_run_files
from aeatrain.train import build_trainer, make_accelerator
from tests.datasets import make_dataset
from tests.eval.helpers import make_model
from tests.train.helpers import DEBUG_CONFIG, REPO, assert_same_weights, check, run, train_command
from tests.train.helpers import weights as read_weights


@pytest.fixture()
def source(tmp_path):
    """(DATA, run A): a finished run of the debug config's model, not its initialisation."""
    data = make_dataset(tmp_path / "DATA", pairs=2)
    kwargs = load_config(DEBUG_CONFIG, ["--data.root", str(data)]).model.build_kwargs()
    model = make_model("aeanet", seed=7, **kwargs)
    with torch.no_grad():  # outputs above 0, so that an exported package is testable
        model.head.weight.abs_()
        model.head_act.bn.bias.fill_(0.5)
    run_a = tmp_path / "A"
    write_run_files(
        run_a, model=model, model_name="aeanet", model_kwargs=kwargs, scale=2.0,
        bit_depths=[8], dataset={"path": str(data), "manifest_sha256": None}, step=10,
        config_yaml=yaml.safe_dump({"model": {"name": "aeanet", **kwargs}}),
    )  # fmt: skip
    return data, run_a


@pytest.fixture()
def trainers():
    """build_trainer in this process; closes what it opened and forgets accelerate's state."""
    built = []

    def build(cfg):
        accelerator = make_accelerator(cfg)
        built.append(accelerator)
        trainer, _ = build_trainer(cfg, accelerator)
        built.append(trainer)
        return trainer

    yield build
    for thing in built:
        if hasattr(thing, "batches"):
            thing.batches.close()
        else:
            thing.end_training()
    AcceleratorState._reset_state(reset_partial_state=True)


def config_b(data, run_b, init_from, *extra):
    return load_config(
        DEBUG_CONFIG,
        ["--data.root", str(data), "--train.run_dir", str(run_b), "--train.init_from",
         str(init_from), *extra],
    )  # fmt: skip


def test_a_run_started_from_run_a_holds_exactly_as_weights_before_its_first_step(
    source, tmp_path, trainers
):
    data, run_a = source
    trainer = trainers(config_b(data, tmp_path / "B", run_a))
    assert trainer.step == 0
    assert not trainer.optimizer.state  # fresh: no Adam moments carried over
    state = {k: v.detach().cpu() for k, v in trainer.module.state_dict().items()}
    assert_same_weights(state, read_weights(run_a / "model.safetensors"))  # buffers too
    assert trainer.init_from["kind"] == "run" and trainer.init_from["weights"] == "raw"


def test_a_different_model_is_refused_before_anything_is_written(source, tmp_path, trainers):
    data, run_a = source
    run_b = tmp_path / "B"
    with pytest.raises(ConfigError, match=r"model\.base_channels is 8 there and 4 here"):
        trainers(config_b(data, run_b, run_a, "--model.base_channels", "4"))
    with pytest.raises(ConfigError, match=r"model\.name is 'aeanet' there and 'unet' here"):
        trainers(config_b(data, run_b, run_a, "--model.name", "unet", "--model.num_refs", "64"))
    assert not run_b.exists()


def test_init_from_something_else_is_refused(source, tmp_path, trainers):
    data, _ = source
    junk = tmp_path / "junk.txt"
    junk.write_text("x")
    with pytest.raises(UserError, match=r"finished run folder or a MODEL\.zip"):
        trainers(config_b(data, tmp_path / "B", junk))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("bioimageio") is None,
                    reason="bioimageio.spec is not installed (.[export]): no package to start from")  # fmt: skip
def test_run_json_records_the_source_and_a_package_gives_the_same_weights(
    source, tmp_path, trainers
):
    data, run_a = source
    run_b = tmp_path / "B"
    result = run(
        train_command(
            "--data.root", str(data), "--train.run_dir", str(run_b), "--train.init_from",
            str(run_a), "--train.steps", "1", "--logging.eval_max_pairs", "1",
        )
    )  # fmt: skip
    check(result)
    record = json.loads((run_b / "run.json").read_text())["init_from"]
    a_sha = hashlib.sha256((run_a / "model.safetensors").read_bytes()).hexdigest()
    assert record == {
        "path": str(run_a.resolve()), "kind": "run", "weights": "raw", "step": 10,
        "sha256": a_sha,
    }  # fmt: skip
    package = tmp_path / "A.zip"
    export.main(["--run", str(run_a), "--out", str(package), "--data", str(data)])
    trainer = trainers(config_b(data, tmp_path / "C", package))
    state = {k: v.detach().cpu() for k, v in trainer.module.state_dict().items()}
    assert_same_weights(state, read_weights(run_a / "model.safetensors"))
    assert trainer.init_from["kind"] == "bioimageio" and trainer.init_from["step"] == 10


def test_finetune_config_fits_a_run_of_the_paper_config():
    """configs/finetune.yaml starts from configs/aeanet.yaml runs: the same model section,
    a lower rate, one pair."""
    configs = REPO / "configs"
    paper, finetune = (load_config(configs / f"{n}.yaml") for n in ("aeanet", "finetune"))
    assert finetune.model == paper.model
    assert finetune.optim.lr < paper.optim.lr / 5
    assert finetune.data.pairs is not None and len(finetune.data.pairs) == 1
    assert finetune.train.init_from is not None
