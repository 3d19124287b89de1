"""One plan: ``train.py --check`` and training refuse the same mistakes with the same line.

Each mistake is run through the real command-line contract (``run_cli(main)``: one line
``error: ...`` on stderr, exit 2) twice, in this process: once with ``--check``, once as
training (an Accelerator of one CPU process). Both must print the same line, and neither
may write into the run folder. The mistakes that need several processes (the batch
split, SyncBatchNorm on CPU) go through ``--check --processes N`` and through
build_trainer for an accelerator of N.
"""

from __future__ import annotations

import json
import socket
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from aeatrain.config.load import load_config
from aeatrain.errors import EXIT_USER_ERROR, UserError, run_cli
from aeatrain.run import checkpoint as ckpt
from aeatrain.train import build_trainer, main
from tests.datasets import make_dataset
from tests.eval.helpers import make_run
from tests.train.helpers import DEBUG_CONFIG, train_in_process


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "DATA", pairs=2)


def _saved_run(run_dir, data):
    """RUN/config.yaml as a started run of the debug config on ``data`` leaves it."""
    cfg = load_config(DEBUG_CONFIG, ["--data.root", str(data), "--train.run_dir", str(run_dir)])
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(cfg.to_yaml())


def _checkpoint(run_dir, step, text=None, **changes):
    """A complete checkpoint folder holding only its trainer_state.json."""
    folder = ckpt.checkpoint_path(run_dir, step)
    folder.mkdir(parents=True)
    state = {
        "format": ckpt.STATE_FORMAT, "version": ckpt.STATE_VERSION, "step": step,
        "data_position": step, "world_size": 1, "seed": 0, "files": {},
        "dataset": {"identity": "0" * 64, "path": "/elsewhere/DATA", "manifest_sha256": "x"},
    }  # fmt: skip
    state.update(changes)
    (folder / ckpt.STATE_FILE).write_text(text if text is not None else json.dumps(state))


def _foreign_folder(run_dir, data):
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")


def _locked_run(run_dir, data):
    _saved_run(run_dir, data)
    owner = {"pid": 1, "host": "another-node", "start_ticks": None, "since": "earlier"}
    assert socket.gethostname() != "another-node"
    (run_dir / "trainer.lock").write_text(json.dumps(owner))


def _other_models_run(tmp_path, data):
    """A finished run folder of the debug model with base_channels 4 (here: 8)."""
    kwargs = load_config(DEBUG_CONFIG, ["--data.root", str(data)]).model.build_kwargs()
    kwargs["base_channels"] = 4
    return make_run(tmp_path / "A", model_name="aeanet", **kwargs)


# name: (what to prepare, its arguments, a phrase of the expected line)
MISTAKES = {
    "unknown config key": (None, ["--train.stepz", "5"], "train.stepz: unknown key"),
    "one image per process for batch-aware": (
        None, ["--data.global_batch_size", "1"], "model.batch_aware needs at least 2",
    ),
    "no data folder": (None, ["--data.root", "{tmp}/absent"], "no such manifest"),
    "crop larger than the training region": (
        None, ["--data.crop_size", "256"], "is larger than the training region",
    ),
    "pair not in the data": (None, ["--data.pairs", "pair77"], "no pair named 'pair77'"),
    "run_dir is a file": (
        lambda run, data: run.write_text("x"), [], "train.run_dir exists and is not a folder",
    ),
    "run_dir inside a file": (
        lambda run, data: None, ["--train.run_dir", "{tmp}/notes.txt/run"],
        "train.run_dir cannot be created",
    ),
    "foreign non-empty folder": (_foreign_folder, ["--resume"], "holds no aeatrain run"),
    "a run there, no --resume": (_saved_run, [], "holds a run already"),
    "resume with another model": (
        _saved_run, ["--resume", "--model.num_refs", "4"], "started with model.num_refs=8",
    ),
    "resume on another dataset": (
        lambda run, data: (_saved_run(run, data), _checkpoint(run, 8)),
        ["--resume"], "another dataset",
    ),
    "no intact checkpoint": (
        lambda run, data: (_saved_run(run, data), _checkpoint(run, 8, text='{"for')),
        ["--resume"], "and no older checkpoint is intact",
    ),
    "checkpoint of an older aeatrain": (
        lambda run, data: (_saved_run(run, data), _checkpoint(run, 8, version=1)),
        ["--resume"], "written by an older aeatrain (trainer state version 1",
    ),
    "another live trainer": (_locked_run, ["--resume"], "in use by another trainer"),
    "init_from is neither a run nor a package": (
        None, ["--train.init_from", "{tmp}/absent.txt"], "finished run folder or a MODEL.zip",
    ),
    "init_from another model": (
        None, ["--train.init_from", "{tmp}/A"], "model.base_channels is 4 there and 8 here",
    ),
}  # fmt: skip


def _refusal(argv, capsys) -> tuple[int, list[str]]:
    """Exit status and stderr's ``error:`` lines of ``run_cli(main)`` on ``argv``."""
    try:
        with pytest.raises(SystemExit) as stopped:
            run_cli(lambda: main(argv))
    finally:
        AcceleratorState._reset_state(True)
    lines = capsys.readouterr().err.splitlines()
    return stopped.value.code, [line for line in lines if line.startswith("error: ")]


def _tree(folder):
    return sorted((str(p), p.stat().st_size) for p in folder.rglob("*"))


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_check_and_training_refuse_the_same_mistake_with_the_same_line(
    data, tmp_path, capsys, mistake
):
    prepare, extra, expected = MISTAKES[mistake]
    run_dir = tmp_path / "run"
    if prepare is not None:
        prepare(run_dir, data)
    if "{tmp}/A" in extra:
        _other_models_run(tmp_path, data)
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    extra = [arg.replace("{tmp}", str(tmp_path)) for arg in extra]
    # a case's own --train.run_dir comes later and wins
    argv = ["--config", str(DEBUG_CONFIG), "--data.root", str(data),
            "--train.run_dir", str(run_dir), *extra]  # fmt: skip
    before = _tree(tmp_path)

    checked = _refusal([*argv, "--check"], capsys)
    trained = _refusal(argv, capsys)

    assert checked[0] == trained[0] == EXIT_USER_ERROR
    assert len(checked[1]) == 1 and expected in checked[1][0], checked[1]
    assert trained[1] == checked[1]
    assert _tree(tmp_path) == before, "a refused run wrote into its folder"


@pytest.mark.parametrize(
    ("processes", "extra", "expected"),
    [
        (3, [], "data.global_batch_size=4 does not divide over 3 processes"),
        (2, ["--train.sync_batchnorm", "true"], "SyncBatchNorm needs GPUs; this run is on cpu"),
    ],
)
def test_mistakes_of_several_processes_are_refused_alike(
    data, tmp_path, capsys, processes, extra, expected
):
    """``--check --processes N`` and training's build_trainer under an accelerator of N CPU
    processes (a stand-in: the plan refuses before anything of it but its size is used)."""
    argv = ["--config", str(DEBUG_CONFIG), "--data.root", str(data),
            "--train.run_dir", str(tmp_path / "run"), *extra]  # fmt: skip
    checked = _refusal([*argv, "--check", "--processes", str(processes)], capsys)
    cfg = load_config(argv[1], argv[2:])
    accelerator = SimpleNamespace(num_processes=processes, device=torch.device("cpu"))
    with pytest.raises(UserError) as refused:
        build_trainer(cfg, accelerator)
    assert checked[0] == EXIT_USER_ERROR and expected in checked[1][0]
    assert checked[1] == [f"error: {refused.value}"]
    assert not (tmp_path / "run").exists()


def _train(data, run_dir, steps, *extra):
    argv = [
        "--config", str(DEBUG_CONFIG), "--data.root", str(data), "--train.run_dir",
        str(run_dir), "--train.steps", str(steps), "--train.checkpoint_every", "2",
        "--train.ema", "true", "--train.ema_decay", "0.5", "--logging.eval_every", "100",
        "--logging.eval_max_pairs", "1", "--logging.image_tiles", "0",
        "--logging.progress_bar", "false", *extra,
    ]  # fmt: skip
    return train_in_process(argv)


@pytest.mark.slow  # three short runs: ~25 s on 2 shared cores
def test_ema_and_trainer_counters_resume_through_accelerates_checkpoint(data, tmp_path):
    """A run stopped at step 2 and resumed to 4 ends with the same raw AND EMA weights as
    a run of 4 steps, and its checkpoint's registered trainer state says step 4."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _train(data, straight, 4) == 0
    assert _train(data, resumed, 2) == 0
    assert _train(data, resumed, 4, "--resume") == 0
    for name in ("model.safetensors", "model_ema.safetensors"):
        a, b = load_file(str(straight / name)), load_file(str(resumed / name))
        assert sorted(a) == sorted(b)
        assert all(torch.equal(a[key], b[key]) for key in a), name
    counters = torch.load(ckpt.checkpoint_path(resumed, 4) / "custom_checkpoint_0.pkl")
    assert counters["step"] == 4 and counters["skipped_steps"] == 0
    ema = torch.load(ckpt.checkpoint_path(resumed, 4) / "custom_checkpoint_1.pkl")
    assert ema["updates"] == 4
    state = ckpt.read_trainer_state(ckpt.checkpoint_path(resumed, 4))
    assert state["version"] == 2 and "custom_checkpoint_1.pkl" in state["files"]
    assert yaml.safe_load((resumed / "config.yaml").read_text())["train"]["steps"] == 4
