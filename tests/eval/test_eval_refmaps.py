"""python -m aeatrain.refmaps: the figures hold the model's reference maps; bad runs refused."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile
import torch

from aeatrain import refmaps
from aeatrain.errors import EXIT_USER_ERROR, run_cli
from aeatrain.files.images import read_image, to_float, write_image
from aeatrain.protocol import heatmaps
from aeatrain.run.final import load_run
from tests.eval.helpers import make_run


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: refmaps.main(argv))
    return stop.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def aeanet_run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("r") / "aea", model_name="aeanet", num_refs=8)


@pytest.fixture
def picture(tmp_path):
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (50, 60), dtype=np.uint8), (0, 0), 1.5)
    cv2.circle(image, (20, 20), 8, 250, -1)
    write_image(tmp_path / "sem.png", image)
    return tmp_path / "sem.png"


def test_explicit_refs_write_overlays_montage_and_raw_maps(aeanet_run, picture, tmp_path, capsys):
    out = tmp_path / "figs"
    code, err = _cli(
        [
            "--run",
            str(aeanet_run),
            "--input",
            str(picture),
            "--output",
            str(out),
            "--refs",
            "5",
            "0",
        ],
        capsys,
    )
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "aeatrain-outputs.json", "sem_ref0.png", "sem_ref5.png", "sem_refmaps.png",
        "sem_refmaps.tif",
    ]  # fmt: skip
    raw = tifffile.imread(out / "sem_refmaps.tif")
    assert raw.shape == (2, 100, 120) and raw.dtype == np.float32  # upsampled 2x
    model, _ = load_run(aeanet_run)
    image, _ = read_image(picture)
    upsampled = cv2.resize(image, (120, 100), interpolation=cv2.INTER_CUBIC)
    x = torch.from_numpy(np.pad(to_float(upsampled), ((0, 12), (0, 8)), mode="reflect"))
    with torch.no_grad():
        want = model.reference_maps(x[None, None], [0, 5])[0, :, :100, :120].numpy()
    assert np.abs(raw - want).max() < 1e-6
    overlay = cv2.imread(str(out / "sem_ref5.png"), cv2.IMREAD_UNCHANGED)
    assert overlay.shape == (100, 120, 3)
    assert cv2.imread(str(out / "sem_refmaps.png")).shape[1] == 3 * 120 + 2 * 4


def test_default_picks_the_most_varying_references(aeanet_run, picture, tmp_path, capsys):
    code, err = _cli(
        [
            "--run",
            str(aeanet_run),
            "--input",
            str(picture),
            "--output",
            str(tmp_path / "o"),
            "--top",
            "3",
            "--registered",
        ],
        capsys,
    )
    assert code == 0, err
    raw = tifffile.imread(tmp_path / "o" / "sem_refmaps.tif")
    assert raw.shape == (3, 50, 60)  # --registered: not upsampled
    model, _ = load_run(aeanet_run)
    image = to_float(read_image(picture)[0])
    every = heatmaps.reference_maps(model, image, list(range(8)))
    spread = every.reshape(8, -1).std(axis=1)
    chosen = sorted(np.argsort(spread)[::-1][:3].tolist())
    assert heatmaps.most_varying_refs(model, image, 8, 3) == chosen
    assert sorted(p.name for p in (tmp_path / "o").glob("sem_ref?.png")) == [
        f"sem_ref{k}.png" for k in chosen
    ]


def test_a_model_without_references_is_refused(picture, tmp_path, capsys):
    run = make_run(tmp_path / "unet")
    code, err = _cli(
        ["--run", str(run), "--input", str(picture), "--output", str(tmp_path / "o")], capsys
    )
    assert code == EXIT_USER_ERROR and "has no shared references" in err
    assert not (tmp_path / "o").exists()


def test_out_of_range_reference_and_existing_output(aeanet_run, picture, tmp_path, capsys):
    code, err = _cli(
        [
            "--run",
            str(aeanet_run),
            "--input",
            str(picture),
            "--output",
            str(tmp_path / "o"),
            "--refs",
            "8",
        ],
        capsys,
    )
    assert code == EXIT_USER_ERROR and "--refs 8: this model has references 0..7" in err
    write_image(tmp_path / "o" / "sem_refmaps.png", np.zeros((4, 4), np.uint8))
    code, err = _cli(
        [
            "--run",
            str(aeanet_run),
            "--input",
            str(picture),
            "--output",
            str(tmp_path / "o"),
            "--refs",
            "1",
        ],
        capsys,
    )
    assert code == EXIT_USER_ERROR and "already exists" in err
    assert not (tmp_path / "o" / "sem_ref1.png").exists()


def test_unreadable_input(aeanet_run, tmp_path, capsys):
    (tmp_path / "x.bmp").write_bytes(b"BM nonsense")
    code, err = _cli(
        [
            "--run",
            str(aeanet_run),
            "--input",
            str(tmp_path / "x.bmp"),
            "--output",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == EXIT_USER_ERROR and "x.bmp: not a readable image" in err


def test_raw_maps_of_a_calibrated_input_are_calibrated(aeanet_run, tmp_path, capsys, caplog):
    """Zeiss input, 8 nm pixels: the maps are at the HR frame, so 4 nm per pixel."""
    text = (
        "0\r\nAP_IMAGE_PIXEL_SIZE\r\nImage Pixel Size = 8.000 nm\r\nAP_MAG\r\nMag = 12.50 K X\r\n"
    )
    image = cv2.GaussianBlur(
        np.random.default_rng(3).integers(0, 256, (40, 48), np.uint8), (0, 0), 1
    )
    tifffile.imwrite(tmp_path / "z.tif", image, extratags=[(34118, "s", 0, text, True)])
    caplog.set_level("WARNING")
    argv = ["--run", str(aeanet_run), "--input", str(tmp_path / "z.tif"), "--refs", "1"]
    code, err = _cli([*argv, "--output", str(tmp_path / "f")], capsys)
    assert code == 0, err
    with tifffile.TiffFile(tmp_path / "f" / "z_refmaps.tif") as tif:
        assert tif.asarray().shape == (80, 96) and tif.imagej_metadata["unit"] == "nm"
        numerator, denominator = tif.pages.first.tags["XResolution"].value
    assert denominator / numerator == pytest.approx(4.0)
    assert "PNG figures carry no calibration" in caplog.text
    code, err = _cli([*argv, "--output", str(tmp_path / "g"), "--registered"], capsys)
    assert code == 0, err
    with tifffile.TiffFile(tmp_path / "g" / "z_refmaps.tif") as tif:
        numerator, denominator = tif.pages.first.tags["XResolution"].value
    assert denominator / numerator == pytest.approx(8.0)  # already in the HR frame


def test_overwrite_replaces_only_refmaps_own_figures(aeanet_run, picture, tmp_path, capsys):
    out = tmp_path / "o"
    write_image(out / "sem_ref1.png", np.zeros((4, 4), np.uint8))  # the user's, same name
    argv = ["--run", str(aeanet_run), "--input", str(picture), "--output", str(out)]
    code, err = _cli([*argv, "--refs", "1", "--overwrite"], capsys)  # replaced it before
    assert code == EXIT_USER_ERROR and "sem_ref1.png: not written by aeatrain" in err
    assert read_image(out / "sem_ref1.png")[0].shape == (4, 4)
    assert _cli([*argv, "--refs", "2"], capsys)[0] == 0
    assert _cli([*argv, "--refs", "2", "--overwrite"], capsys)[0] == 0  # its own: replaced


def test_huge_image_header_is_one_line(aeanet_run, tmp_path, capsys):
    huge = bytearray(cv2.imencode(".bmp", np.zeros((8, 8), np.uint8))[1].tobytes())
    huge[18:26] = (100_000).to_bytes(4, "little") * 2
    (tmp_path / "huge.bmp").write_bytes(bytes(huge))
    argv = ["--run", str(aeanet_run), "--input", str(tmp_path / "huge.bmp")]
    code, err = _cli([*argv, "--output", str(tmp_path / "o")], capsys)  # a cv2.error before
    assert code == EXIT_USER_ERROR and "header claims 100000 x 100000 pixels" in err
    assert not (tmp_path / "o").exists()


def test_heatmap_spans_the_colour_map_from_minimum_to_maximum():
    values = np.array([[0.0, 1.0], [2.0, 4.0]], dtype=np.float32)
    bgr = heatmaps.heatmap(values)  # (2, 2, 3) uint8
    turbo = cv2.applyColorMap(np.array([[0, 255]], np.uint8), cv2.COLORMAP_TURBO)[0]
    assert np.array_equal(bgr[0, 0], turbo[0]) and np.array_equal(bgr[1, 1], turbo[1])
    assert not np.array_equal(bgr[0, 1], bgr[1, 0])  # 1/4 and 1/2 of the range differ
    flat = heatmaps.heatmap(np.full((3, 3), 7.0, np.float32))
    assert (flat == turbo[0]).all()  # a constant map is all minimum, not NaN


def test_a_folder_as_input_says_what_is_expected(aeanet_run, picture, tmp_path, capsys):
    argv = [
        "--run",
        str(aeanet_run),
        "--input",
        str(picture.parent),
        "--output",
        str(tmp_path / "o"),
    ]
    code, err = _cli(argv, capsys)
    assert code == EXIT_USER_ERROR and err.count("\n") == 1
    assert f"{picture.parent}: --input is a folder; refmaps maps one image file" in err
    assert not (tmp_path / "o").exists()


def test_maps_of_16_bit_weights_run_under_autocast_like_scoring(aeanet_run):
    """DeepSpeed keeps bf16 module weights and training draws its maps in place: the maps
    come from autocast to the weights' dtype (protocol.inference.autocast_to_weights, the
    way scoring meets such weights too) and stay close to the float32 model's."""
    model, _ = load_run(aeanet_run)
    image = np.random.default_rng(2).random((64, 48)).astype(np.float32)
    float32_maps = heatmaps.reference_maps(model, image, [0, 1])
    bf16_maps = heatmaps.reference_maps(model.to(torch.bfloat16), image, [0, 1])
    assert bf16_maps.dtype == np.float32 and bf16_maps.shape == (2, 64, 48)
    assert np.abs(bf16_maps - float32_maps).max() < 0.05 * np.abs(float32_maps).max() + 1e-3
