"""python -m aeatrain.export: a bioimage.io package of a debug-sized run, checked by
bioimageio.core's own test where aeatrain cannot be imported, against aeatrain's own
prediction through bioimageio.core (whole images of any size, and tiled), by onnxruntime
at two sizes, and read back by bioimageio.spec; bad input refused with one line, before
any work, and nothing written or replaced.

One package is exported per module (about 8 s on a 2-core CPU) and shared by the tests
that read it; those are marked slow.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Annotated

import numpy as np
import pytest
import torch
import yaml

from aeatrain import export, modelzoo
from aeatrain.data.manifest import load_manifest
from aeatrain.data.streams import test_tiles
from aeatrain.errors import UserError
from aeatrain.files.images import to_float
from aeatrain.modelzoo import description, network
from aeatrain.protocol.inference import predict_full
from aeatrain.run.final import load_run
from tests.datasets import make_dataset
from tests.eval.helpers import make_run

# the export checks for its packages first: without them every test here would fail alike
pytest.importorskip("bioimageio.spec", reason="bioimageio.spec is not installed (.[export])")
REPO = Path(__file__).resolve().parents[1]
MODEL_KWARGS = {"base_channels": 4, "num_refs": 8, "bn_momentum": 0.1}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(package zip, run folder, DATA folder): an evaluated debug AEANet run, exported."""
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


# bioimageio.core's test_model where ``import aeatrain`` fails, as in a colleague's venv
TEST_WITHOUT_AEATRAIN = """
import json, sys
sys.modules["aeatrain"] = None  # any import of aeatrain raises ImportError
from bioimageio.core import test_model
summary = test_model(sys.argv[1])
print(json.dumps({
    "status": summary.status,
    "formats": sorted({d.loc[1] for d in summary.details if len(d.loc) > 1}),
    "reproduced": [d.status for d in summary.details if d.name.startswith("Reproduce test")],
    "errors": [e.msg for d in summary.details for e in d.errors][:3],
}))
"""


@pytest.mark.slow
def test_bioimageio_test_passes_every_weight_format_where_aeatrain_is_not_importable(
    exported, tmp_path
):
    pytest.importorskip("bioimageio.core", reason="bioimageio.core is not installed (.[test])")
    package, _, _ = exported
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", TEST_WITHOUT_AEATRAIN, str(package)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"] == "passed", report
    assert report["formats"] == ["onnx", "torchscript"], report
    assert report["reproduced"] == ["passed", "passed"], report


@pytest.mark.slow
@pytest.mark.parametrize("height, width", [(944, 1280), (460, 626)])
def test_bioimageio_core_predicts_a_whole_image_of_any_size_as_aeatrain_does(
    exported, height, width
):
    """bioimageio.core pads a whole image by the halo (the package's -1 frame) and the
    packaged network cuts that frame off: every weight format gives aeatrain's
    whole-image prediction, edges included."""
    pytest.importorskip("bioimageio.core", reason="bioimageio.core is not installed (.[test])")
    from bioimageio.core import create_prediction_pipeline, load_model_description, predict

    package, run_dir, _ = exported
    model, _ = load_run(run_dir, weights="raw")
    image = _smooth_image(height, width)
    expected = np.clip(predict_full(model, to_float(image, 8)), 0, 1) * 255  # (H, W)
    descr = load_model_description(package)
    for weight_format in ("torchscript", "onnx"):
        pipeline = create_prediction_pipeline(descr, weight_format=weight_format)
        sample = predict(model=pipeline, inputs={"lr": image[None, None].astype(np.float32)})
        got = np.asarray(sample.members["sr"].data).reshape(height, width)
        assert np.abs(got - expected).max() <= 0.5, weight_format  # of 255
    assert expected.std() > 1  # not a flat image


@pytest.mark.slow
def test_bioimageio_core_tiled_prediction_equals_aeatrain_inside(exported):
    """Blocks of 256 px (halo 24, inner 208: on the 4-px grid), image sides multiples
    of 4 so that bioimageio.core's last block, shifted to end at the edge, stays on the
    grid: within 1/255 of the whole image away from the edges (AEANet's attention
    summary per block is the only difference)."""
    pytest.importorskip("bioimageio.core", reason="bioimageio.core is not installed (.[test])")
    from bioimageio.core import load_model_description, predict

    package, run_dir, _ = exported
    model, _ = load_run(run_dir, weights="raw")
    image = _smooth_image(464, 624)
    expected = np.clip(predict_full(model, to_float(image, 8)), 0, 1) * 255
    descr = load_model_description(package)
    sample = predict(
        model=descr, inputs={"lr": image[None, None].astype(np.float32)}, blocksize_parameter=192
    )
    got = np.asarray(sample.members["sr"].data).reshape(expected.shape)
    halo = 24
    assert np.abs(got - expected)[halo:-halo, halo:-halo].max() <= 1.0


def _smooth_image(height: int, width: int) -> np.ndarray:
    """(H, W) uint8: blurred noise."""
    import cv2

    noise = np.random.default_rng(0).random((height, width), dtype=np.float32) * 255
    return cv2.GaussianBlur(noise, (0, 0), 2).round().astype(np.uint8)


@pytest.mark.slow
def test_onnx_is_ir_8_opset_17_and_runs_at_two_sizes_as_torchscript(exported, tmp_path):
    """deepImageJ's onnxruntime 1.13 reads IR <= 8 and opset <= 17; dynamic sizes, and a
    frame of -1 (the package's padding) cut off inside."""
    import onnx

    onnxruntime = pytest.importorskip("onnxruntime", reason="not installed (.[test])")
    package, _, _ = exported
    onnx_path = _extract(package, "weights.onnx", tmp_path)
    graph = onnx.load(str(onnx_path))
    assert graph.ir_version <= 8
    assert {entry.domain: entry.version for entry in graph.opset_import}[""] <= 17
    session = onnxruntime.InferenceSession(str(onnx_path))
    traced = torch.jit.load(_extract(package, "weights_torchscript.pt", tmp_path))
    for shape, frame in (((1, 1, 70, 90), (0, 0, 0, 0)), ((2, 1, 97, 65), (5, 3, 2, 7))):
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
        framed = torch.nn.functional.pad(x, frame, value=-1.0)
        (onnx_out,) = session.run(None, {"lr": framed.numpy()})
        with torch.inference_mode():
            scripted = traced(framed).numpy()
        assert onnx_out.shape == scripted.shape == tuple(framed.shape)
        assert np.abs(onnx_out - scripted).max() < 1e-4
        assert np.abs(scripted).max() > 1e-3  # not a vacuous comparison of zeros


@pytest.mark.slow
def test_package_reloads_with_its_declared_format_version(exported):
    from bioimageio.spec import load_model_description
    from bioimageio.spec.model.v0_5 import ModelDescr

    package, _, _ = exported
    declared = rdf(package)["format_version"]
    descr = load_model_description(package, format_version=declared)
    assert isinstance(descr, ModelDescr), descr
    assert str(descr.format_version) == declared and declared.startswith("0.5.")
    assert {w for w, entry in descr.weights if entry is not None} == {"torchscript", "onnx"}
    assert descr.weights.onnx.opset_version == 17
    (y_in, x_in) = descr.inputs[0].axes[2:]
    (y_out, _) = descr.outputs[0].axes[2:]
    # any size from both halos + one block of 16 on
    assert (y_in.size.min, y_in.size.step) == (64, 1) == (x_in.size.min, x_in.size.step)
    # measured receptive radius of the debug AEANet's convolutions: 22 px, rounded up to 24
    assert y_out.halo == 24
    assert descr.inputs[0].pad.mode == "constant" and descr.inputs[0].pad.value == -1
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
    exactly aeatrain.files.images.to_float of every 8-bit value: the inputs training saw."""
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
    assert test_input.shape == (1, 1, size, size) and size == 80  # the whole 80 px tile
    assert np.array_equal(test_input[0, 0], tile.lr[:size, :size].astype(np.float32))
    assert test_input.max() > 1  # the raw 8-bit scale: the package's preprocessing divides
    readme = read_member(package, "README.md").decode()
    summary = json.loads((run_dir / "eval" / "metrics.json").read_text())["rows"][0]["summary"]
    assert "# Validation" in readme
    assert f"| {summary['dpsnr']:.3f} | {summary['dssim']:.4f} |" in readme
    assert "UPSAMPLED" in readme
    # the dataset's real split (320 x 240 pairs), not the paper's 1280-wide one
    assert "columns [0, 240), rows [0, 240) of each 320 x 240 pair" in readme
    assert "1280" not in readme


@pytest.mark.slow
def test_package_state_dict_is_the_runs_network_for_init_from(exported):
    from aeatrain.modelzoo.read import read_initial_weights

    package, run_dir, _ = exported
    model, _ = load_run(run_dir, weights="raw")
    weights = read_initial_weights(package)
    assert weights.model_name == "aeanet" and weights.model_kwargs == MODEL_KWARGS
    assert weights.state.keys() == model.state_dict().keys()
    assert all(torch.equal(weights.state[k], v) for k, v in model.state_dict().items())
    assert weights.record["step"] == 10 and weights.record["weights"] == modelzoo.STATE_DICT


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
    monkeypatch.setitem(sys.modules, "onnx", None)  # import raises ImportError
    _refused(
        ["--run", str(small_run), "--out", str(tmp_path / "m.zip")],
        r"export needs onnx: pip install 'aeatrain\[export\]'",
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
    geometry = network.geometry_of(vdsr)
    assert (geometry.multiple, geometry.halo, geometry.min_size) == (1, 5, 26)
    assert network._probed_radius(vdsr, multiple=1, size=64) == 5


def _zip(path: Path, members: dict[str, str]) -> str:
    """Write a zip of ``members`` (name -> text); returns its sha256."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_overwrite_replaces_only_a_package_aeatrain_wrote(small_run, tmp_path):
    """A package from the BioImage Model Zoo (an rdf.yaml without config.aeatrain) is
    refused with --overwrite, before any work, and kept byte for byte."""
    ours = tmp_path / "ours.zip"
    _zip(ours, {"rdf.yaml": "type: model\nconfig:\n  aeatrain: {version: 0.1.0}\n"})
    export.check_target(ours, overwrite=True)  # ours to replace: no error
    zoo = tmp_path / "zoo.zip"
    zoo_rdf = "type: model\nname: A zoo model\nconfig:\n  bioimageio: {nickname: x}\n"
    digest = _zip(zoo, {"rdf.yaml": zoo_rdf, "weights.pt": "zoo weights"})
    _refused(
        ["--run", str(small_run), "--out", str(zoo), "--overwrite"],
        r"not a bioimage\.io package written by aeatrain\.export",
    )
    assert hashlib.sha256(zoo.read_bytes()).hexdigest() == digest
    other = tmp_path / "other.zip"
    _zip(other, {"notes.txt": "a user's zip"})
    with pytest.raises(UserError, match=r"not a bioimage\.io package written by"):
        export.check_target(other, overwrite=True)


@pytest.mark.parametrize(
    "option, value, match",
    [
        ("--license", "no-such-license", r"--license 'no-such-license': not an SPDX"),
        ("--name", "Müller's model", r"--name \"Müller's model\": a package name has"),
    ],
)
def test_bad_license_or_name_is_one_short_line_before_any_work(
    small_run, tmp_path, monkeypatch, option, value, match
):
    def no_work(*args, **kwargs):
        raise AssertionError("the run was loaded before the options were checked")

    monkeypatch.setattr(export, "load_network", no_work)
    with pytest.raises(UserError, match=match) as caught:
        export.main(["--run", str(small_run), "--out", str(tmp_path / "m.zip"), option, value])
    assert len(str(caught.value)) < 200 and "\n" not in str(caught.value)


@pytest.mark.parametrize("folder", ["rün.1", "a.b", "x" * 90, "spaces and (parens)"])
def test_default_name_is_valid_for_the_spec_from_any_folder_name(folder):
    from bioimageio.spec.model.v0_5 import ModelDescr
    from pydantic import TypeAdapter

    field = ModelDescr.model_fields["name"]
    name = export.default_name("aeanet", f"/runs/{folder}")
    assert name.startswith("aeatrain aeanet ") and len(name) <= 64
    assert TypeAdapter(Annotated[(field.annotation, *field.metadata)]).validate_python(name)


def test_test_data_of_another_bit_depth_is_refused(small_run, tmp_path):
    data16 = make_dataset(tmp_path / "DATA16", pairs=1, bit_depth=16)
    out = tmp_path / "m.zip"
    _refused(
        ["--run", str(small_run), "--out", str(out), "--data", str(data16), "--author", "A"],
        r"DATA16: its test images are 16-bit and the run was trained on 8-bit data",
    )
    assert not out.exists()


def test_readme_names_the_weights_a_fine_tuned_run_started_from(small_run):
    from aeatrain.run.final import load_run

    _, run = load_run(small_run)
    assert description._origin(run) == ""
    info = json.loads((small_run / "run.json").read_text())
    info["init_from"] = {"path": "/runs/pooled", "kind": "run", "weights": "ema", "step": 7}
    (small_run / "run.json").write_text(json.dumps(info))
    assert "the ema weights of `/runs/pooled` at step 7" in description._origin(run)
