"""Bad config, data or run folder: one line naming the file/key, exit 2, nothing written."""

import pytest
import yaml
from accelerate.state import AcceleratorState

from aeatrain.errors import UserError
from aeatrain.train import main
from tests.datasets import make_dataset
from tests.train.helpers import DEBUG_CONFIG, check, run, train_command


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "DATA", pairs=2)


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """main() builds an Accelerator in this process; leave no singleton state behind."""
    yield
    AcceleratorState._reset_state(True)


def _refused(run_dir, *args) -> str:
    """Call main() in-process; it must raise a UserError and create nothing."""
    with pytest.raises(UserError) as info:
        main(["--config", str(DEBUG_CONFIG), "--train.run_dir", str(run_dir), *args])
    message = str(info.value)
    assert "\n" not in message
    assert not run_dir.exists(), "a refused run wrote its folder"
    return message


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--train.stepz", "5"], "train.stepz: unknown key"),
        (["--train.steps", "many"], "train.steps: Input should be a valid integer"),
        (["--data.crop_size", "30"], "data.crop_size: must be a multiple of 4"),
        (["--model.heads", "3", "--model.name", "unet"], "do not apply to model 'unet'"),
        (["--data.global_batch_size", "1"], "model.batch_aware needs at least 2"),
    ],
)
def test_bad_config_is_refused(data, tmp_path, args, expected):
    message = _refused(tmp_path / "run", "--data.root", str(data), *args)
    assert expected in message


def test_missing_data_folder(tmp_path):
    message = _refused(tmp_path / "run", "--data.root", str(tmp_path / "absent"))
    assert str(tmp_path / "absent") in message and "no such manifest" in message


def test_folder_without_manifest(tmp_path):
    (tmp_path / "DATA").mkdir()
    message = _refused(tmp_path / "run", "--data.root", str(tmp_path / "DATA"))
    assert "manifest.json: no such manifest" in message


def test_crop_larger_than_the_training_region(data, tmp_path):
    message = _refused(tmp_path / "run", "--data.root", str(data), "--data.crop_size", "256")
    assert "crop_size 256 is larger than the training region" in message
    assert "manifest.json" in message


def test_self_training_pair_not_in_the_data(data, tmp_path):
    message = _refused(tmp_path / "run", "--data.root", str(data), "--data.pairs", "pair77")
    assert "no pair named 'pair77'" in message and "manifest.json" in message


def _fake_run_folder(run_dir, **changes):
    """A run folder as the trainer leaves it: config.yaml of the debug config."""
    config = yaml.safe_load(DEBUG_CONFIG.read_text())
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        config[section][key] = value
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return sorted(run_dir.iterdir())


def test_run_folder_with_another_run_is_refused_unless_resuming(data, tmp_path):
    run_dir = tmp_path / "run"
    before = _fake_run_folder(run_dir)
    with pytest.raises(UserError, match=r"holds a run already .* pass --resume"):
        main(["--config", str(DEBUG_CONFIG), "--data.root", str(data),
              "--train.run_dir", str(run_dir)])  # fmt: skip
    assert sorted(run_dir.iterdir()) == before


def test_resuming_with_a_different_model_is_refused(data, tmp_path):
    run_dir = tmp_path / "run"
    before = _fake_run_folder(run_dir, **{"data.root": str(data)})
    with pytest.raises(UserError, match=r"started with model.num_refs=8; resuming with 4"):
        main(["--config", str(DEBUG_CONFIG), "--data.root", str(data), "--resume",
              "--train.run_dir", str(run_dir), "--model.num_refs", "4"])  # fmt: skip
    assert sorted(run_dir.iterdir()) == before


def test_foreign_non_empty_folder_is_refused(data, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds no aeatrain run"):
        main(["--config", str(DEBUG_CONFIG), "--data.root", str(data),
              "--train.run_dir", str(run_dir), "--resume"])  # fmt: skip
    assert [p.name for p in run_dir.iterdir()] == ["notes.txt"]


def test_command_line_contract_one_line_exit_2(data, tmp_path):
    """The real CLI: an error found after the accelerator is up ends in ONE line, exit 2."""
    result = run(
        train_command(
            "--data.root", str(data), "--train.run_dir", str(tmp_path / "r"),
            "--data.pairs", "pair77",
        )
    )  # fmt: skip
    check(result, 2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "no pair named 'pair77'" in lines[0]
    assert not (tmp_path / "r").exists()


def test_check_only_refuses_without_writing(data, tmp_path):
    """--check (used by the SLURM job scripts) refuses what training would, writing nothing."""
    message = _refused(tmp_path / "run", "--check", "--data.root", str(data), "--data.pairs", "x9")
    assert "no pair named 'x9'" in message
    message = _refused(
        tmp_path / "run", "--check", "--processes", "4", "--data.root", str(data),
        "--data.global_batch_size", "4",
    )  # fmt: skip
    assert "needs at least 2" in message


def test_check_only_accepts_a_good_config_and_writes_nothing(data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["--config", str(DEBUG_CONFIG), "--check", "--processes", "2"]
    assert main([*argv, "--data.root", str(data), "--train.run_dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("check: ok: aeanet on 2 pair(s)") and "2 process(es) x 2 images" in out
    assert not run_dir.exists()


def test_check_with_verify_hashes_the_shards_and_names_a_changed_one(tmp_path):
    data = make_dataset(tmp_path / "DATA", pairs=2, width=160, height=120)
    shard = data / "full-000000.tar"
    shard.write_bytes(shard.read_bytes()[:-1] + b"\x01")  # the last padding byte
    argv = ("--check", "--data.root", str(data))
    assert main(["--config", str(DEBUG_CONFIG), "--train.run_dir", str(tmp_path / "r"), *argv]) == 0
    message = _refused(tmp_path / "run", *argv, "--data.verify", "true")
    assert message == f"{shard}: sha256 differs from the manifest (changed or corrupt shard)"
