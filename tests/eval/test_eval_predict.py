"""python -m aeatrain.predict: sizes, bit depths, formats, and every refused input."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch

from aeatrain import predict
from aeatrain.errors import EXIT_USER_ERROR, run_cli
from aeatrain.files.images import read_image, write_image
from aeatrain.files.rows import LazyRows, open_image_rows
from aeatrain.protocol import superres
from tests.eval.helpers import make_run

REPO = Path(__file__).resolve().parents[2]


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    """Run predict's CLI in-process as ``python -m`` would; (exit code, stderr)."""
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: predict.main(argv))
    return stop.value.code, capsys.readouterr().err


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A one-channel-wide U-Net that adds its input (``residual``), so outputs resemble
    the input; the CLI's plumbing on a 1279 x 1023 image then costs seconds."""
    return make_run(tmp_path_factory.mktemp("runs") / "unet_run", base_channels=1, residual=True)


def test_bmp_1279x1023_doubles_in_size_and_stays_8_bit(run_dir, tmp_path, capsys, caplog):
    """The acceptance image: odd size, large enough to be tiled automatically."""
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (1023, 1279), dtype=np.uint8), (0, 0), 2)
    write_image(tmp_path / "in" / "sem.bmp", image)
    caplog.set_level("INFO")
    code, err = _cli(
        ["--run", str(run_dir), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")],
        capsys,
    )
    assert code == 0, err
    out, depth = read_image(tmp_path / "out" / "sem.bmp")
    assert out.shape == (2046, 2558) and out.dtype == np.uint8 and depth == 8
    assert "tiles of 1024" in caplog.text  # 2558 x 2046 > AUTO_TILE_PIXELS
    upsampled = cv2.resize(image, (2558, 2046), interpolation=cv2.INTER_CUBIC)
    assert np.corrcoef(out.ravel(), upsampled.ravel())[0, 1] > 0.9  # the picture came through


def test_16_bit_tiff_doubles_in_size_and_stays_16_bit(run_dir, tmp_path, capsys):
    rng = np.random.default_rng(1)
    image = (rng.random((203, 301)) * 60000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "sem16.tif", image)
    code, err = _cli(
        [
            "--run",
            str(run_dir),
            "--input",
            str(tmp_path / "sem16.tif"),
            "--output",
            str(tmp_path / "out"),
        ],
        capsys,
    )
    assert code == 0, err
    out, depth = read_image(tmp_path / "out" / "sem16.tif")
    assert out.shape == (406, 602) and out.dtype == np.uint16 and depth == 16
    assert out.max() > 255  # really on the 16-bit scale


def test_output_equals_the_model_on_the_bicubic_upsampled_input(run_dir, tmp_path, capsys):
    """The CLI is upsample -> model -> round: recompute that by hand."""
    from aeatrain.files.images import from_float, to_float
    from aeatrain.protocol.inference import predict_full
    from aeatrain.run.final import load_run

    image = np.random.default_rng(2).integers(0, 256, (40, 52), dtype=np.uint8)
    write_image(tmp_path / "a.png", image)
    code, err = _cli(
        [
            "--run",
            str(run_dir),
            "--input",
            str(tmp_path / "a.png"),
            "--output",
            str(tmp_path / "o"),
            "--float32",
        ],
        capsys,
    )
    assert code == 0, err
    model, _ = load_run(run_dir)
    upsampled = cv2.resize(image, (104, 80), interpolation=cv2.INTER_CUBIC)
    want = predict_full(model, to_float(upsampled))
    got = tifffile.imread(tmp_path / "o" / "a.tif")
    assert got.dtype == np.float32 and got.shape == (80, 104)
    assert np.abs(got - want * 255).max() < 1e-3
    assert np.array_equal(from_float(got / 255, 8), from_float(want, 8))


def test_tta_d4_averages_the_eight_flips(run_dir, tmp_path, capsys):
    from aeatrain.files.images import to_float
    from aeatrain.protocol.inference import predict_full, self_ensemble
    from aeatrain.run.final import load_run

    image = np.random.default_rng(5).integers(0, 256, (24, 36), dtype=np.uint8)
    write_image(tmp_path / "a.png", image)
    argv = ["--run", str(run_dir), "--input", str(tmp_path / "a.png"), "--output",
            str(tmp_path / "o"), "--float32", "--tta", "d4"]  # fmt: skip
    code, err = _cli(argv, capsys)
    assert code == 0, err
    model, _ = load_run(run_dir)
    upsampled = to_float(cv2.resize(image, (72, 48), interpolation=cv2.INTER_CUBIC))
    want = self_ensemble(lambda x: predict_full(model, x), upsampled, "d4")
    got = tifffile.imread(tmp_path / "o" / "a.tif")
    assert np.abs(got - want * 255).max() < 1e-3
    assert np.abs(want - predict_full(model, upsampled)).max() > 1e-5


def test_bar_row_cuts_the_data_bar_before_upsampling(run_dir, tmp_path, capsys):
    write_image(tmp_path / "b.png", np.full((60, 40), 100, np.uint8))
    code, err = _cli(
        [
            "--run",
            str(run_dir),
            "--input",
            str(tmp_path / "b.png"),
            "--output",
            str(tmp_path / "o"),
            "--bar-row",
            "44",
        ],
        capsys,
    )
    assert code == 0, err
    assert read_image(tmp_path / "o" / "b.png")[0].shape == (88, 80)


def test_an_image_smaller_than_the_network_needs_is_padded(run_dir, tmp_path, capsys):
    write_image(tmp_path / "tiny.png", np.array([[10, 200], [90, 30], [250, 0]], np.uint8))
    code, err = _cli(
        [
            "--run",
            str(run_dir),
            "--input",
            str(tmp_path / "tiny.png"),
            "--output",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 0, err
    assert read_image(tmp_path / "o" / "tiny.png")[0].shape == (6, 4)


def test_explicit_tiling_and_whole_image_agree_for_the_unet(run_dir, tmp_path, capsys):
    image = np.random.default_rng(3).integers(0, 256, (150, 170), dtype=np.uint8)
    write_image(tmp_path / "c.png", image)
    base = ["--run", str(run_dir), "--input", str(tmp_path / "c.png"), "--float32"]
    assert _cli([*base, "--output", str(tmp_path / "whole"), "--tile", "0"], capsys)[0] == 0
    assert (
        _cli(
            [*base, "--output", str(tmp_path / "tiled"), "--tile", "256", "--overlap", "128"],
            capsys,
        )[0]
        == 0
    )
    whole = tifffile.imread(tmp_path / "whole" / "c.tif")
    tiled = tifffile.imread(tmp_path / "tiled" / "c.tif")
    assert np.abs(whole - tiled).max() < 255 * 1e-5


# ----------------------------------------------------------------------------- bad inputs


def test_missing_run_folder(tmp_path, capsys):
    write_image(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    code, err = _cli(
        [
            "--run",
            str(tmp_path / "nope"),
            "--input",
            str(tmp_path / "a.png"),
            "--output",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == EXIT_USER_ERROR
    assert err.strip() == f"error: {tmp_path / 'nope'}: no such run folder"
    assert not (tmp_path / "o").exists()


def test_run_without_weights(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    (run / "model.safetensors").unlink()
    write_image(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    code, err = _cli(
        ["--run", str(run), "--input", str(tmp_path / "a.png"), "--output", str(tmp_path / "o")],
        capsys,
    )
    assert code == EXIT_USER_ERROR
    assert "weights file missing" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_unreadable_image_names_the_file_and_writes_nothing(run_dir, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    code, err = _cli(
        [
            "--run",
            str(run_dir),
            "--input",
            str(tmp_path / "in" / "broken.png"),
            "--output",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == EXIT_USER_ERROR
    assert "broken.png: not a readable image" in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_output_path_equal_to_input_is_refused_even_with_overwrite(run_dir, tmp_path, capsys):
    write_image(tmp_path / "a.png", np.full((8, 8), 7, np.uint8))
    before = _digest(tmp_path / "a.png")
    for extra in ([], ["--overwrite"]):
        code, err = _cli(
            [
                "--run",
                str(run_dir),
                "--input",
                str(tmp_path / "a.png"),
                "--output",
                str(tmp_path),
                *extra,
            ],
            capsys,
        )
        assert code == EXIT_USER_ERROR
        assert "output path equals an input" in err
    assert _digest(tmp_path / "a.png") == before


def test_existing_output_needs_overwrite(run_dir, tmp_path, capsys):
    write_image(tmp_path / "a.png", np.full((8, 8), 7, np.uint8))
    write_image(tmp_path / "o" / "a.png", np.full((3, 3), 1, np.uint8))
    before = _digest(tmp_path / "o" / "a.png")
    argv = [
        "--run",
        str(run_dir),
        "--input",
        str(tmp_path / "a.png"),
        "--output",
        str(tmp_path / "o"),
    ]
    code, err = _cli(argv, capsys)
    assert code == EXIT_USER_ERROR and "already exists (use --overwrite" in err
    assert _digest(tmp_path / "o" / "a.png") == before
    code, err = _cli([*argv, "--overwrite"], capsys)  # not written by predict: kept
    assert code == EXIT_USER_ERROR and "a.png: not written by aeatrain" in err
    assert _digest(tmp_path / "o" / "a.png") == before
    (tmp_path / "o" / "a.png").unlink()
    assert _cli(argv, capsys)[0] == 0
    assert _cli(argv, capsys)[0] == EXIT_USER_ERROR  # predict's own output: needs --overwrite
    assert _cli([*argv, "--overwrite"], capsys)[0] == 0
    assert read_image(tmp_path / "o" / "a.png")[0].shape == (16, 16)


def test_two_inputs_with_one_output_name_are_refused(run_dir, tmp_path, capsys):
    for folder in ("x", "y"):
        write_image(tmp_path / folder / "a.png", np.zeros((8, 8), np.uint8))
    code, err = _cli(
        [
            "--run",
            str(run_dir),
            "--input",
            str(tmp_path / "x"),
            str(tmp_path / "y"),
            "--output",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == EXIT_USER_ERROR and "would both be written to" in err
    assert not (tmp_path / "o").exists()


def test_bad_tile_is_refused_before_loading_anything(run_dir, tmp_path, capsys):
    write_image(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    code, err = _cli(
        [
            "--run",
            str(run_dir),
            "--input",
            str(tmp_path / "a.png"),
            "--output",
            str(tmp_path / "o"),
            "--tile",
            "100",
        ],
        capsys,
    )
    assert code == EXIT_USER_ERROR and "--tile 100: must be a multiple of 16" in err


def test_real_subprocess_exit_code_and_single_line(tmp_path):
    """What a user sees from the shell: exit 2, one 'error:' line, no traceback."""
    write_image(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "aeatrain.predict",
            "--run",
            str(tmp_path / "missing"),
            "--input",
            str(tmp_path / "a.png"),
            "--output",
            str(tmp_path / "o"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == EXIT_USER_ERROR
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'missing'}: no such run folder"
    ]


# --- files from microscopes: the data bar and the pixel size from the vendor metadata ----

FEI_LR_TEXT = (
    "[System]\r\nSystemType=Quanta FEG 250\r\n[Beam]\r\nHV=10000\r\n"
    "[Scan]\r\nPixelWidth=1.240234e-08\r\nPixelHeight=1.240234e-08\r\n"
    "[Image]\r\nResolutionX=80\r\nResolutionY=48\r\n[Detectors]\r\nName=ETD\r\n"
)


def _fei_lr(path: Path) -> np.ndarray:
    """A 16-bit LZW FEI TIFF: 48 image rows, a 16-row data bar, 12.40234 nm pixels."""
    image = (np.random.default_rng(5).random((64, 80)) * 50000).astype(np.uint16)
    image[48:] = 65535  # the data bar: white, so a missed cut shows
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, image, compression="lzw", extratags=[(34682, "s", 0, FEI_LR_TEXT, True)])
    return image


def test_fei_input_gives_a_calibrated_tiff_cut_at_resolution_y(run_dir, tmp_path, capsys):
    _fei_lr(tmp_path / "in" / "spot 1.tif")
    code, err = _cli(
        ["--run", str(run_dir), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o")],
        capsys,
    )
    assert code == 0, err
    with tifffile.TiffFile(tmp_path / "o" / "spot 1.tif") as tif:
        out = tif.asarray()
        meta = tif.imagej_metadata
        numerator, denominator = tif.pages.first.tags["XResolution"].value
        y_numerator, y_denominator = tif.pages.first.tags["YResolution"].value
    assert out.shape == (96, 160) and out.dtype == np.uint16  # 48 rows above the bar, x2
    assert meta["unit"] == "nm"
    assert denominator / numerator == pytest.approx(12.40234 / 2, rel=1e-6)  # nm per pixel
    assert y_denominator / y_numerator == pytest.approx(12.40234 / 2, rel=1e-6)
    info = json.loads(meta["Info"])
    assert info["source_pixel_size_nm"] == pytest.approx(12.40234)
    assert info["source_microscope"]["vendor"] == "fei"
    assert info["source_microscope"]["detector"] == "ETD"


def test_bar_row_and_no_bar_override_the_metadata(run_dir, tmp_path, capsys):
    _fei_lr(tmp_path / "a.tif")
    for option, rows in ((["--no-bar"], 128), (["--bar-row", "32"], 64)):
        out = tmp_path / f"o{rows}"
        argv = ["--run", str(run_dir), "--input", str(tmp_path / "a.tif"), "--output", str(out)]
        code, err = _cli([*argv, *option], capsys)
        assert code == 0, err
        assert read_image(out / "a.tif")[0].shape == (rows, 160)
    code, err = _cli([*argv, "--no-bar", "--bar-row", "3"], capsys)
    assert code == EXIT_USER_ERROR and "not allowed with" in err


def test_multi_page_input_needs_page(run_dir, tmp_path, capsys):
    stack = np.stack([np.full((24, 32), 60 * (k + 1), np.uint8) for k in range(3)])
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    argv = ["--run", str(run_dir), "--input", str(tmp_path / "stack.tif")]
    code, err = _cli([*argv, "--output", str(tmp_path / "o")], capsys)
    assert code == EXIT_USER_ERROR and "stack.tif: 3 pages; choose one with --page N" in err
    assert not (tmp_path / "o").exists()
    code, err = _cli([*argv, "--output", str(tmp_path / "o2"), "--page", "2"], capsys)
    assert code == 0, err
    assert read_image(tmp_path / "o2" / "stack.tif")[0].shape == (48, 64)


def _folder_with_a_bad_file(tmp_path: Path) -> Path:
    for name in ("a.png", "c.png"):
        write_image(tmp_path / "in" / name, np.full((8, 8), 40, np.uint8))
    (tmp_path / "in" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return tmp_path / "in"


def test_a_bad_file_in_a_folder_stops_before_any_prediction(run_dir, tmp_path, capsys):
    """The outputs before the bad file used to be written, the good files after it never
    processed, and a re-run then failed with 'already exists'."""
    argv = ["--run", str(run_dir), "--input", str(_folder_with_a_bad_file(tmp_path))]
    code, err = _cli([*argv, "--output", str(tmp_path / "o")], capsys)
    assert code == EXIT_USER_ERROR and err.count("\n") == 1
    assert "b.png: not a readable image" in err
    assert not (tmp_path / "o").exists()  # not even a.png
    (tmp_path / "in" / "b.png").unlink()
    assert _cli([*argv, "--output", str(tmp_path / "o")], capsys)[0] == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "a.png",
        "aeatrain-outputs.json",
        "c.png",
    ]


def test_huge_header_read_only_output_and_full_disk_are_one_line(
    run_dir, tmp_path, capsys, monkeypatch
):
    huge = bytearray(cv2.imencode(".bmp", np.zeros((8, 8), np.uint8))[1].tobytes())
    huge[18:26] = (100_000).to_bytes(4, "little") * 2
    (tmp_path / "huge.bmp").write_bytes(bytes(huge))
    argv = ["--run", str(run_dir), "--input"]
    code, err = _cli([*argv, str(tmp_path / "huge.bmp"), "--output", str(tmp_path / "o")], capsys)
    assert code == EXIT_USER_ERROR and "header claims 100000 x 100000 pixels" in err  # cv2.error
    write_image(tmp_path / "a.png", np.full((8, 8), 40, np.uint8))
    for code_ in (errno.EROFS, errno.ENOSPC):  # a read-only --output, a full disk

        def refuse(*args, code_=code_, **kwargs):
            raise OSError(code_, os.strerror(code_))

        monkeypatch.setattr("aeatrain.files.atomic.tempfile.mkstemp", refuse)
        code, err = _cli([*argv, str(tmp_path / "a.png"), "--output", str(tmp_path / "o")], capsys)
        assert code == EXIT_USER_ERROR and err.count("\n") == 1, err
        assert "cannot write: " in err and ("read-only" in err or "disk full" in err)
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_calibrated_tiff_under_a_png_name_warns_that_the_calibration_is_lost(
    run_dir, tmp_path, capsys, caplog
):
    _fei_lr(tmp_path / "a.tif")
    (tmp_path / "a.tif").rename(tmp_path / "mislabelled.png")
    caplog.set_level("WARNING")
    argv = ["--run", str(run_dir), "--input", str(tmp_path / "mislabelled.png")]
    code, err = _cli([*argv, "--output", str(tmp_path / "o")], capsys)
    assert code == 0, err
    assert cv2.imread(str(tmp_path / "o" / "mislabelled.png"), -1).shape == (96, 160)
    assert "mislabelled.png: .png holds no calibration; the pixel size is lost" in caplog.text


@pytest.mark.slow  # ~10 s on 2 busy cores: a subprocess importing torch
def test_a_file_size_limit_in_a_real_predict_is_one_line(run_dir, tmp_path):
    """``ulimit -f`` (EFBIG, as a full disk): one line, no traceback, no partial output."""
    rng = np.random.default_rng(1)
    write_image(tmp_path / "a.png", rng.integers(0, 256, (160, 200), dtype=np.uint8))
    command = [sys.executable, "-m", "aeatrain.predict", "--run", str(run_dir)]
    command += ["--input", str(tmp_path / "a.png"), "--output", str(tmp_path / "o")]
    limit = "ulimit -f 16 && "  # 16 KiB: the 400 x 320 noisy PNG does not fit
    proc = subprocess.run(
        ["bash", "-c", limit + " ".join(map(shlex.quote, command))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == EXIT_USER_ERROR, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {tmp_path / 'o' / 'a.png'}: cannot write: file too large for "
                      "the size limit (ulimit -f)"]  # fmt: skip
    assert "Traceback" not in proc.stderr
    # nothing was written, so no ledger either (predict writes it last, for what it wrote)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == []


def test_a_folder_named_like_an_image_in_an_input_folder_is_skipped(
    run_dir, tmp_path, capsys, caplog
):
    write_image(tmp_path / "in" / "a.png", np.full((8, 8), 40, np.uint8))
    (tmp_path / "in" / "scans.tif").mkdir()  # the whole run was "no such file" before
    argv = ["--run", str(run_dir), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o")]
    code, err = _cli(argv, capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a.png", "aeatrain-outputs.json"]
    assert "skipping 1 folder(s) named like images: scans.tif" in caplog.text


class _Halve(torch.nn.Module):
    """A model as cheap as a model can be (half the input), so the test measures predict."""

    input_multiple = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x


@pytest.mark.parametrize(("dtype", "k"), [(np.uint8, 2), (np.uint16, 2), (np.uint16, 3)])
def test_bicubic_rows_are_the_pixels_of_resizing_the_whole_image(tmp_path, dtype, k):
    image = np.random.default_rng(5).integers(0, np.iinfo(dtype).max, (53, 29)).astype(dtype)
    tifffile.imwrite(tmp_path / "x.tif", image, rowsperstrip=6)
    rows, _ = open_image_rows(tmp_path / "x.tif")
    upsampled = superres.upsample(rows, float(k))
    assert isinstance(upsampled, superres.BicubicRows) and upsampled.shape == (53 * k, 29 * k)
    whole = cv2.resize(image, (29 * k, 53 * k), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_array_equal(np.asarray(upsampled), whole)
    for r0, r1 in ((0, 1), (5, 17), (40, 53 * k - 1), (53 * k - 4, 53 * k)):  # odd bands, edges
        np.testing.assert_array_equal(upsampled[r0:r1], whole[r0:r1])
    np.testing.assert_array_equal(  # a scale that is not whole: read whole, then resized
        superres.upsample(rows, 1.5), cv2.resize(image, (44, 80), interpolation=cv2.INTER_CUBIC)
    )


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_an_input_read_a_band_at_a_time_predicts_the_same_file(tmp_path, monkeypatch, scale):
    """predict reads a large raw TIFF a band of tiles at a time (LazyRows), upsampling it
    in bands too: the output is the same file as from the input read whole."""
    from argparse import Namespace

    image = np.random.default_rng(8).integers(0, 65536, (300, 200), dtype=np.uint16)
    image[270:] = 4000  # a data bar: flat rows with text, found from the rows read lazily
    image[280:285, 20:60] = 65535
    tifffile.imwrite(tmp_path / "in.tif", image, rowsperstrip=16)
    args = Namespace(tile=64, overlap=16, device=torch.device("cpu"), tta="none", run="RUN",
                     float32=False, overwrite=False, page=None, bar_row=None, no_bar=False)  # fmt: skip
    outputs = {}
    for name, threshold in (("lazy", 0), ("whole", 10**9)):
        monkeypatch.setattr(superres, "LAZY_INPUT_PIXELS", threshold)
        assert isinstance(superres.read_input(tmp_path / "in.tif", lazy=True).image,
                          LazyRows) == (name == "lazy")  # fmt: skip
        job = predict.Job(tmp_path / "in.tif", tmp_path / name / "out.tif")
        assert predict.predict_one(_Halve(), job, args, scale=scale) == (
            (270, 200), (round(270 * scale), round(200 * scale)))  # fmt: skip
        outputs[name] = tifffile.imread(job.target)
    np.testing.assert_array_equal(outputs["lazy"], outputs["whole"])


def test_a_4096x4096_16_bit_prediction_streams_in_bounded_memory(tmp_path):
    """A tiled prediction is written as its rows finish and its input read a band of
    tiles at a time: predict holds bands of rows, not the image (before: every tile's
    prediction, two float64 accumulators and the float64 output, 552 MiB here; then the
    input held whole, 92 MiB). tracemalloc counts NumPy's memory, not PyTorch's."""
    import tracemalloc
    from argparse import Namespace

    side = 4096
    image = np.random.default_rng(7).integers(0, 65536, (side, side), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "big.tif", image)
    args = Namespace(tile=1024, overlap=128, device=torch.device("cpu"), tta="none", run="RUN",
                     float32=False, overwrite=False, page=None, bar_row=None, no_bar=False)  # fmt: skip
    job = predict.Job(tmp_path / "big.tif", tmp_path / "out" / "big.tif")
    tracemalloc.start()
    try:
        predict.predict_one(_Halve(), job, args, scale=1.0)
        peak_mib = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert peak_mib < 80, peak_mib  # 68: bands of 1152 rows; 92 with the input held whole
    out = tifffile.imread(job.target)
    assert out.dtype == np.uint16 and out.shape == (side, side)
    half = image[::97, ::89] / 2  # x.5 values may round either way after the blend
    assert np.abs(out[::97, ::89] - half).max() <= 0.5 + 1e-3
