"""python -m aeatrain.export: a bioimage.io package of a debug-sized run, checked by
bioimageio.core's own test, by onnxruntime and TorchScript against the eager model on
another size than the test tensor, and read back by bioimageio.spec; bad input refused
with one line and nothing written.

One package is exported per module (about 15 s on a 2-core CPU: most of it the ONNX
export) and shared by the tests that read it; those are marked slow.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from aeatrain import export
from aeatrain.data import load_manifest, test_tiles
from aeatrain.errors import UserError
from aeatrain.imageio import to_float
from aeatrain.runs import load_run
from tests.datasets import make_dataset
from tests.eval.helpers import make_run

REPO = Path(__file__).resolve().parents[1]
MODEL_KWARGS = {"base_channels": 4, "num_refs": 8, "bn_momentum": 0.1}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(package zip, run folder, DATA folder): an evaluated debug AEANet run, exported."""
    pytest.importorskip("bioimageio.spec", reason="bioimageio.spec is not installed (.[export])")
    root = tmp_path_factory.mktemp("export")
    data = make_dataset(root / "DATA", pairs=2)
    run = make_run(root / "RUN", model_name="aeanet", **MODEL_KWARGS)
    from aeatrain import evaluate

    torch.set_num_threads(1)
    evaluate.main(["--run", str(run), "--data", str(data), "--device", "cpu"])
    out = root / "model.zip"
    export.main(
        ["--run", str(run), "--out", str(out), "--data", str(data), "--author", "A. Tester"]
    )
    return out, run, data


def read_member(package: Path, name: str) -> bytes:
    with zipfile.ZipFile(package) as archive:
        return archive.read(name)


def rdf(package: Path) -> dict:
    return yaml.safe_load(read_member(package, "rdf.yaml"))


@pytest.mark.slow
def test_package_passes_bioimageio_core_test_with_every_weight_format(exported):
    pytest.importorskip("bioimageio.core", reason="bioimageio.core is not installed (.[test])")
    from bioimageio.core import test_model

    package, _, _ = exported
    summary = test_model(package)
    assert summary.status == "passed", summary.display() or summary
    tested = {detail.loc[1] for detail in summary.details if len(detail.loc) > 1}
    assert {"torchscript", "onnx", "pytorch_state_dict"} <= tested, tested
    reproduced = [d for d in summary.details if d.name.startswith("Reproduce test outputs")]
    assert len(reproduced) == 3 and all(d.status == "passed" for d in reproduced)


@pytest.mark.slow
def test_torchscript_and_onnx_equal_eager_on_another_size(exported, tmp_path):
    import onnxruntime

    package, run_dir, _ = exported
    model, _ = load_run(run_dir, weights="raw")
    test_shape = np.load(_extract(package, "test_input.npy", tmp_path)).shape
    x = torch.rand(2, 1, 60, 76, generator=torch.Generator().manual_seed(1))  # 52 + n*4
    assert x.shape[2:] != test_shape[2:]
    with torch.inference_mode():
        eager = model(x).numpy()
    traced = torch.jit.load(_extract(package, "weights_torchscript.pt", tmp_path))
    with torch.inference_mode():
        scripted = traced(x).numpy()
    session = onnxruntime.InferenceSession(str(_extract(package, "weights.onnx", tmp_path)))
    (onnx_out,) = session.run(None, {"lr": x.numpy()})
    assert eager.shape == scripted.shape == onnx_out.shape == (2, 1, 60, 76)
    assert np.abs(scripted - eager).max() < 1e-4
    assert np.abs(onnx_out - eager).max() < 1e-4
    assert np.abs(eager).max() > 1e-3  # not a vacuous comparison of zeros


@pytest.mark.slow
def test_package_reloads_with_its_declared_format_version(exported):
    from bioimageio.spec import load_model_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    package, _, _ = exported
    declared = rdf(package)["format_version"]
    descr = load_model_description(package, format_version=declared)
    assert isinstance(descr, ModelDescr), descr
    assert str(descr.format_version) == declared and declared.startswith("0.5.")
    assert {w for w, entry in descr.weights if entry is not None} == {
        "torchscript",
        "onnx",
        "pytorch_state_dict",
    }
    assert descr.weights.onnx.opset_version >= 17
    (y_in, x_in) = descr.inputs[0].axes[2:]
    (y_out, _) = descr.outputs[0].axes[2:]
    assert (y_in.size.min, y_in.size.step) == (52, 4) == (x_in.size.min, x_in.size.step)
    # measured receptive radius of the debug AEANet's convolutions: 22 px, rounded up to 24
    assert y_out.halo == 24
    assert [p.id for p in descr.inputs[0].preprocessing if p.id != "ensure_dtype"] == [
        "scale_linear"
    ]
    assert [p.id for p in descr.outputs[0].postprocessing if p.id != "ensure_dtype"] == [
        "clip",
        "scale_linear",
    ]
    assert [a.name for a in descr.authors] == ["A. Tester"]
    assert "Augmented Equivariant Attention Networks" in descr.cite[0].text


@pytest.mark.slow
def test_declared_preprocessing_is_the_training_conversion_bit_for_bit(exported):
    """scale_linear with the rdf's gain, computed in float32 as a consumer does, gives
    exactly aeatrain.imageio.to_float of every 8-bit value: the inputs training saw."""
    package, _, _ = exported
    (scale,) = [p for p in rdf(package)["inputs"][0]["preprocessing"] if p["id"] == "scale_linear"]
    values = np.arange(256, dtype=np.uint8)
    gain, offset = np.float32(scale["kwargs"]["gain"]), np.float32(scale["kwargs"]["offset"])
    consumer = values.astype(np.float32) * gain + offset
    assert consumer.dtype == np.float32
    assert np.array_equal(consumer, to_float(values, 8))


@pytest.mark.slow
def test_test_tensors_come_from_the_runs_data_and_readme_reports_its_evaluation(exported, tmp_path):
    package, run_dir, data = exported
    test_input = np.load(_extract(package, "test_input.npy", tmp_path))
    tile = next(iter(test_tiles(load_manifest(data))))
    size = test_input.shape[-1]
    assert test_input.shape == (1, 1, size, size) and size % 4 == 0
    assert np.array_equal(test_input[0, 0], tile.lr[:size, :size].astype(np.float32))
    assert test_input.max() > 1  # the raw 8-bit scale: the package's preprocessing divides
    readme = read_member(package, "README.md").decode()
    summary = json.loads((run_dir / "eval" / "metrics.json").read_text())["rows"][0]["summary"]
    assert "# Validation" in readme
    assert f"| {summary['dpsnr']:.3f} | {summary['dssim']:.4f} |" in readme
    assert "UPSAMPLED" in readme


# ---------------------------------------------------------------------------- bad input


@pytest.fixture()
def small_run(tmp_path):
    return make_run(tmp_path / "RUN", model_name="unet", base_channels=4)


def _refused(argv: list[str], match: str) -> None:
    with pytest.raises(UserError, match=match):
        export.main(argv)


def test_run_folder_without_run_json_exits_2_with_one_line(tmp_path):
    run = tmp_path / "RUN"
    (run / "checkpoints").mkdir(parents=True)
    out = tmp_path / "out" / "model.zip"
    result = subprocess.run(
        [sys.executable, "-m", "aeatrain.export", "--run", str(run), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "run.json" in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


def test_ema_weights_of_a_run_without_ema_are_refused(small_run, tmp_path):
    out = tmp_path / "model.zip"
    _refused(["--run", str(small_run), "--out", str(out), "--weights", "ema"], "no ema weights")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RUN"]


def test_existing_output_needs_overwrite_and_must_be_a_package(small_run, tmp_path):
    out = tmp_path / "model.zip"
    out.write_bytes(b"not a zip")
    _refused(["--run", str(small_run), "--out", str(out)], "already exists")
    _refused(["--run", str(small_run), "--out", str(out), "--overwrite"], "not a bioimage.io")
    assert out.read_bytes() == b"not a zip"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RUN", "model.zip"]


def test_unwritable_or_non_zip_output_is_refused(small_run, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    _refused(["--run", str(small_run), "--out", str(blocker / "model.zip")], "not a folder")
    _refused(["--run", str(small_run), "--out", str(tmp_path / "model.tar")], "must name a .zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RUN", "a_file"]


def test_missing_export_packages_are_named_with_the_install_command(
    small_run, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import raises ImportError
    _refused(
        ["--run", str(small_run), "--out", str(tmp_path / "m.zip")],
        r"export needs onnxscript: pip install 'aeatrain\[export\]'",
    )


def _extract(package: Path, name: str, folder: Path) -> Path:
    target = folder / name
    target.write_bytes(read_member(package, name))
    return target


def test_a_run_of_a_model_that_is_not_a_network_is_refused(small_run, tmp_path):
    info = json.loads((small_run / "run.json").read_text())
    info["model"]["name"] = "lbnlm"
    (small_run / "run.json").write_text(json.dumps(info))
    _refused(
        ["--run", str(small_run), "--out", str(tmp_path / "m.zip")], "not a trained neural network"
    )


def test_halo_of_a_stride_1_network_is_its_conv_chain_and_the_probe_agrees():
    from aeatrain.models import build_model

    vdsr = build_model("vdsr", width=4, depth=5)
    geometry = export.geometry_of(vdsr)
    assert (geometry.step, geometry.halo, geometry.min_size) == (1, 5, 11)
    assert export._probed_radius(vdsr, multiple=1, size=64) == 5


def test_overwrite_accepts_an_existing_package_only(tmp_path):
    package = tmp_path / "old.zip"
    with zipfile.ZipFile(package, "w") as archive:
        archive.writestr("rdf.yaml", "type: model\n")
    export.check_target(package, overwrite=True)  # ours to replace: no error
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("notes.txt", "a user's zip")
    with pytest.raises(UserError, match=r"not a bioimage\.io package"):
        export.check_target(other, overwrite=True)


def test_readme_names_the_weights_a_fine_tuned_run_started_from(small_run):
    from aeatrain.runs import load_run

    _, run = load_run(small_run)
    assert export._origin(run) == ""
    info = json.loads((small_run / "run.json").read_text())
    info["init_from"] = {"path": "/runs/pooled", "kind": "run", "weights": "ema", "step": 7}
    (small_run / "run.json").write_text(json.dumps(info))
    assert "the ema weights of `/runs/pooled` at step 7" in export._origin(run)
