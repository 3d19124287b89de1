"""Files as they come off microscopes and out of Fiji: TIFF codecs, palettes, pages,
alpha, lossy content, FEI and Zeiss metadata, pairing by a pairs file (issue 9)."""

from __future__ import annotations

import json
import logging
import re
import tarfile
from dataclasses import replace

import cv2
import numpy as np
import pytest
import tifffile

from aeatrain.errors import EXIT_USER_ERROR, UserError, run_cli
from aeatrain.files.images import ImageError, read_image, write_image
from aeatrain.files.microscope import BarCut, read_calibration
from data_prep.__main__ import main as data_prep_main
from data_prep.build import build_dataset
from data_prep.pairs import find_pairs, load_pair_images
from data_prep.qc import summary_text
from data_prep.registration import corner_error
from data_prep.synth.config import SynthConfig
from data_prep.synth.families import draw_aggregates
from data_prep.synth.generate import make_pair, synthesize
from tests.data_prep.conftest import SMALL, SMALL_SEED

# FEI INI text as a Helios writes it, trimmed: sections the reader skips, [EScan]
# before [Scan], the pixel size in metres, ResolutionY = rows above the data bar
FEI_TEXT = (
    "[User]\r\nDate=12/01/2026\r\nTime=10:41:07 AM\r\nUser=supervisor\r\n"
    "[System]\r\nType=DualBeam\r\nSystemType=Helios G4 UX\r\nSoftware=10.1.0.4015\r\n"
    "[Beam]\r\nHV=5000\r\nSpot=3\r\nBeam=EBeam\r\nScan=EScan\r\n"
    "[EScan]\r\nMainslock=On\r\nPixelWidth={px:.6e}\r\nPixelHeight={px:.6e}\r\n"
    "[Scan]\r\nInternalScan=true\r\nDwelltime=3e-06\r\nPixelWidth={px:.6e}\r\n"
    "HorFieldsize={hfw:.6e}\r\n"
    "[Image]\r\nDigitalContrast=1\r\nResolutionX={width}\r\nResolutionY={rows}\r\n"
    "[Detectors]\r\nNumber=1\r\nName=TLD\r\nMode=SE\r\n"
)
# SmartSEM text (tag 34118): a key line in capitals, then "label = value unit"
ZEISS_TEXT = (
    "0\r\nDP_SCAN_ROT\r\nScan Rotation = Off\r\n"
    "AP_IMAGE_PIXEL_SIZE\r\nImage Pixel Size = {px_text}\r\n"
    "AP_MAG\r\nMag = {mag}\r\n"
    "AP_ACTUALKV\r\nEHT = 3.00 kV\r\n"
    "DP_DETECTOR_CHANNEL\r\nSignal A = InLens\r\n"
)


def _fei_tags(pixel_nm: float, width: int, rows: int) -> list:
    text = FEI_TEXT.format(px=pixel_nm * 1e-9, hfw=pixel_nm * 1e-9 * width, width=width, rows=rows)
    return [(34682, "s", 0, text, True)]


def _zeiss_tags(px_text: str, mag: str) -> list:
    return [(34118, "s", 0, ZEISS_TEXT.format(px_text=px_text, mag=mag), True)]


def _small_pair(config: SynthConfig = SMALL, index: int = 0):
    """(lr, hr, truth) of synthetic pair ``index`` at 16 bit: full files, bar included."""
    config = replace(config, bit_depth=16)
    spec = draw_aggregates(
        np.random.default_rng(np.random.SeedSequence(SMALL_SEED, spawn_key=(0,)))
    )
    return make_pair(config, spec, SMALL_SEED, index)


def _cli(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: data_prep_main(argv))
    return stop.value.code, capsys.readouterr().err


def _write_pairs_file(path, rows, header="name,lr,hr"):
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


# --- vendor-tagged pairs build, bar from metadata, accurate registration ------------------


def test_fei_lzw_pair_with_free_names_via_pairs_file(tmp_path, capsys):
    lr, hr, truth = _small_pair()
    raw = tmp_path / "raw"
    (raw / "session 3").mkdir(parents=True)
    for name, image, pixel_nm in (("img 0041.tif", lr, 10.0), ("img 0042 zoom.tif", hr, 5.0)):
        tifffile.imwrite(
            raw / "session 3" / name,
            image,
            compression="lzw",
            extratags=_fei_tags(pixel_nm, SMALL.width, SMALL.height),
        )
    with tifffile.TiffFile(raw / "session 3" / "img 0041.tif") as tif:
        assert tif.pages.first.compression.name == "LZW" and tif.pages.first.dtype == np.uint16
    pairs = _write_pairs_file(
        tmp_path / "pairs.csv",
        ["grain boundary A,session 3/img 0041.tif,session 3/img 0042 zoom.tif"],
    )
    data = tmp_path / "data"
    code, err = _cli(["build", "--raw", str(raw), "--out", str(data), "--pairs-file", str(pairs),
                      "--workers", "1"], capsys)  # fmt: skip
    assert code == 0, err
    record = json.loads((data / "registration.json").read_text())["grain boundary A"]
    assert record["status"] == "ok" and record["bar_rows"] == {"lr": 384, "hr": 384}
    assert record["pixel_size_nm"] == pytest.approx({"lr": 10.0, "hr": 5.0})
    assert record["microscope"]["lr"]["vendor"] == "fei"
    assert record["microscope"]["lr"]["detector"] == "TLD"
    assert record["microscope"]["lr"]["hv_kv"] == 5.0
    manifest = json.loads((data / "manifest.json").read_text())
    entry = manifest["pairs"]["grain boundary A"]
    assert (entry["width"], entry["height"]) == (512, 384)  # the 40-row bar cut at ResolutionY
    assert manifest["scale"] == 2.0 and manifest["bit_depths"] == [16]
    assert entry["pixel_size_nm"] == pytest.approx({"lr": 10.0, "hr": 5.0})
    error = corner_error(np.array(truth["homography"]), np.array(record["homography"]), (512, 384))
    assert error <= 0.5  # the BMP pairs' bar (test_dp_build.test_registration_matches_truth)
    assert data_prep_main(["summary", str(data)]) == 0
    assert "data bar: cut at row 384 (FEI [Image] ResolutionY)" in capsys.readouterr().out


def test_zeiss_pair_scale_from_pixel_sizes(tmp_path):
    lr, hr, truth = _small_pair()
    raw = tmp_path / "raw"
    raw.mkdir()
    tifffile.imwrite(raw / "a.tif", lr, extratags=_zeiss_tags("10.00 nm", "10.00 K X"))
    tifffile.imwrite(raw / "b.tif", hr, extratags=_zeiss_tags("5.000 nm", "20.00 K X"))
    calibration = read_calibration(raw / "b.tif")
    assert (calibration.vendor, calibration.pixel_size_nm) == ("zeiss", 5.0)
    assert calibration.magnification == 20000 and calibration.bar_row is None
    assert calibration.details == {"hv_kv": 3.0, "detector": "InLens"}
    pairs = _write_pairs_file(tmp_path / "pairs.csv", ["p1, a.tif , b.tif"])
    outcomes = build_dataset(raw, tmp_path / "data", bar_row=SMALL.height, pairs_file=pairs)
    record = outcomes[0].record
    assert record["status"] == "ok" and outcomes[0].scale == 2.0
    assert record["pixel_size_nm"] == {"lr": 10.0, "hr": 5.0}
    assert record["microscope"]["hr"]["magnification"] == 20000
    error = corner_error(np.array(truth["homography"]), np.array(record["homography"]), (512, 384))
    assert error <= 0.5
    with tarfile.open(tmp_path / "data" / "full-000000.tar") as tar:
        sample = json.loads(tar.extractfile("p1__full.json").read())
    assert sample["pixel_size_nm"] == {"lr": 10.0, "hr": 5.0}
    assert sample["microscope"]["lr"]["vendor"] == "zeiss"
    summary = summary_text(tmp_path / "data")
    assert "pixel sizes: LR 10 nm (Zeiss AP_IMAGE_PIXEL_SIZE, 1 files); HR 5 nm (Zeiss" in summary
    registration = tmp_path / "data" / "registration.json"  # as an older build wrote it
    records = json.loads(registration.read_text())
    for key in ("lr", "hr"):
        del records["p1"]["microscope"][key]["pixel_size_from"]
    registration.write_text(json.dumps(records))
    assert "LR 10 nm (zeiss, field not recorded: an older build" in summary_text(tmp_path / "data")


def test_synth_fei_tif_builds_with_the_bar_from_metadata(tmp_path):
    config = SynthConfig(width=384, height=288, bar_rows=24)
    truth = synthesize(tmp_path / "raw", pairs=1, seed=5, config=config, image_format="fei-tif")
    calibration = read_calibration(tmp_path / "raw" / "syn000_20000.tif")
    assert calibration.pixel_size_nm == pytest.approx(5.0) and calibration.bar_row == 288
    outcomes = build_dataset(tmp_path / "raw", tmp_path / "data")  # default 944 is overridden
    assert outcomes[0].ok and (outcomes[0].width, outcomes[0].height) == (384, 288)
    homography = np.array(outcomes[0].record["homography"])
    assert (
        corner_error(np.array(truth["pairs"]["syn000"]["homography"]), homography, (384, 288))
        <= 0.5
    )
    pair = find_pairs(tmp_path / "raw")[0]  # --bar-row and --no-bar override the metadata
    lr, hr, *_, bars = load_pair_images(pair, 200)
    assert lr.shape[0] == hr.shape[0] == 200 and bars["lr"] == BarCut(200, "--bar-row")
    lr, *_, bars = load_pair_images(pair, no_bar=True)
    assert lr.shape[0] == 288 + 24 and bars["hr"] == BarCut(None, "--no-bar")


def test_cv2_written_16_bit_lzw_pair_builds(tmp_path):
    lr, hr, _ = _small_pair()
    raw = tmp_path / "raw"
    raw.mkdir()
    assert cv2.imwrite(str(raw / "s_10000.tif"), lr) and cv2.imwrite(str(raw / "s_20000.tif"), hr)
    with tifffile.TiffFile(raw / "s_10000.tif") as tif:
        assert tif.pages.first.compression.name == "LZW"  # OpenCV's default for TIFF
    image, depth = read_image(raw / "s_10000.tif")
    assert depth == 16 and np.array_equal(image, lr)
    outcomes = build_dataset(raw, tmp_path / "data", bar_row=SMALL.height)
    assert outcomes[0].ok and outcomes[0].bit_depth == 16


@pytest.mark.parametrize(
    "options",
    [
        {"compression": "packbits"},
        {"compression": "deflate"},
        {"compression": "zstd"},
        {"compression": "lzw"},
        {"compression": "lzw", "predictor": "horizontal"},
        {"compression": "deflate", "predictor": "horizontal", "tile": (16, 16)},
        {"tile": (16, 32)},
        {"rowsperstrip": 7},
    ],
    ids=lambda options: "-".join(f"{k}={v}" for k, v in options.items()),
)
def test_lossless_tiff_codecs_strips_tiles_predictors_read_exactly(tmp_path, options):
    image = np.random.default_rng(0).integers(0, 65535, (40, 56), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "x.tif", image, **options)
    assert np.array_equal(read_image(tmp_path / "x.tif")[0], image)


# --- palette, pages, alpha, lossy ------------------------------------------------------


def test_grey_palette_is_applied_not_read_as_indices(tmp_path):
    indices = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    inverted = np.arange(255, -1, -1, dtype=np.uint16) * 257  # index i shows grey 255 - i
    colormap = np.stack([inverted] * 3)
    tifffile.imwrite(tmp_path / "p.tif", indices, photometric="palette", colormap=colormap)
    image, depth = read_image(tmp_path / "p.tif")
    assert depth == 8 and np.array_equal(image, 255 - indices)


def test_colour_palette_is_refused_naming_the_file(tmp_path):
    indices = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    ramp = np.arange(256, dtype=np.uint16) * 257
    colormap = np.stack([ramp, ramp[::-1], ramp])  # a colour map (magenta-green)
    tifffile.imwrite(tmp_path / "c.tif", indices, photometric="palette", colormap=colormap)
    with pytest.raises(ImageError, match=r"c\.tif: palette .* 2032 of 2048 pixels in colour"):
        read_image(tmp_path / "c.tif")


def test_three_page_tiff_is_refused_unless_a_page_is_chosen(tmp_path, capsys):
    stack = np.stack([np.full((32, 48), 10 * (k + 1), np.uint8) for k in range(3)])
    (tmp_path / "raw").mkdir()
    tifffile.imwrite(tmp_path / "raw" / "s_10000.tif", stack, photometric="minisblack")
    with pytest.raises(ImageError, match=r"s_10000\.tif: 3 pages; choose one with --page N"):
        read_image(tmp_path / "raw" / "s_10000.tif")
    assert read_image(tmp_path / "raw" / "s_10000.tif", page=1)[0].max() == 20
    with pytest.raises(ImageError, match="pages 0 to 2"):
        read_image(tmp_path / "raw" / "s_10000.tif", page=3)
    write_image(tmp_path / "raw" / "s_20000.tif", np.zeros((32, 48), np.uint8))
    out = tmp_path / "data"
    code, err = _cli(["build", "--raw", str(tmp_path / "raw"), "--out", str(out), "--no-bar",
                      "--workers", "1"], capsys)  # fmt: skip
    assert code == EXIT_USER_ERROR and "3 pages" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_opaque_alpha_dropped_varying_alpha_refused(tmp_path):
    grey = np.random.default_rng(1).integers(0, 255, (20, 30), dtype=np.uint8)
    opaque = np.dstack([grey, np.full_like(grey, 255)])
    tifffile.imwrite(tmp_path / "ga.tif", opaque, photometric="minisblack", extrasamples=[2])
    assert np.array_equal(read_image(tmp_path / "ga.tif")[0], grey)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    cv2.imwrite(str(tmp_path / "ga.png"), rgba)
    assert np.array_equal(read_image(tmp_path / "ga.png")[0], grey)
    varying = np.dstack([grey, grey])
    tifffile.imwrite(tmp_path / "gv.tif", varying, photometric="minisblack", extrasamples=[2])
    with pytest.raises(ImageError, match=r"gv\.tif: image with transparency"):
        read_image(tmp_path / "gv.tif")


def test_lossy_content_under_a_lossless_name_warns(tmp_path, caplog):
    grey = cv2.GaussianBlur(
        np.random.default_rng(2).integers(0, 255, (64, 64), np.uint8), (0, 0), 2
    )
    _, jpeg = cv2.imencode(".jpg", grey)
    (tmp_path / "looks_lossless.png").write_bytes(jpeg.tobytes())
    tifffile.imwrite(tmp_path / "j.tif", grey, compression="jpeg")
    caplog.set_level(logging.WARNING)
    assert read_image(tmp_path / "looks_lossless.png")[0].shape == (64, 64)
    assert read_image(tmp_path / "j.tif")[0].shape == (64, 64)
    assert "looks_lossless.png: JPEG content (lossy compression)" in caplog.text
    assert "j.tif: JPEG-compressed TIFF: lossy" in caplog.text
    caplog.clear()
    write_image(tmp_path / "fine.png", grey)
    read_image(tmp_path / "fine.png")
    assert "lossy" not in caplog.text


# --- bad pairs files: one line naming the file, exit 2, nothing written --------------------


@pytest.fixture
def tagged_raw(tmp_path):
    """Tiny FEI-tagged files: pixel sizes 10, 5 and 2.5 nm; names with and without mags."""
    raw = tmp_path / "raw"
    raw.mkdir()
    image = np.zeros((48, 64), np.uint16)
    for name, pixel_nm in (
        ("a low.tif", 10.0),
        ("a high.tif", 5.0),
        ("b low.tif", 10.0),
        ("b x4.tif", 2.5),
        ("c_10000.tif", 10.0),
        ("c_30000.tif", 5.0),
    ):
        tifffile.imwrite(raw / name, image, extratags=_fei_tags(pixel_nm, 64, 40))
    return raw


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        (["a,a low.tif,missing.tif"], "name,lr,hr", r"line 2: hr file .*missing\.tif: no such file"),
        (["a,a low.tif,a high.tif", "b,a low.tif,b x4.tif"], "name,lr,hr",
         r"line 3: .*a low\.tif is already in pair 'a' \(line 2\)"),
        (["a,a low.tif,a high.tif", "a,b low.tif,b x4.tif"], "name,lr,hr",
         r"line 3: pair name 'a' already used on line 2"),
        (["a,a low.tif,a high.tif"], "name,low,high", r"line 1 is 'name,low,high'; the header"),
        (["c,c_10000.tif,c_30000.tif"], "name,lr,hr",
         r"line 2: .*c_30000\.tif: pixel sizes give scale 2\.000 .* give 3\.000"),
        (["a,a low.tif,a high.tif", "b,b low.tif,b x4.tif"], "name,lr,hr",
         r"pairs\.csv: pairs have different magnification ratios \(scales\): 2 \(a\), 4 \(b\)"),
        (["a,a low.tif"], "name,lr,hr", r"line 2: expected three fields"),
    ],
    ids=["missing-file", "file-in-two-pairs", "duplicate-name", "bad-header",
         "pixel-sizes-contradict-names", "different-scales", "short-row"],
)  # fmt: skip
def test_bad_pairs_file_one_line_exit_2_nothing_written(
    tagged_raw, tmp_path, capsys, rows, header, message
):
    pairs = _write_pairs_file(tmp_path / "pairs.csv", rows, header)
    before = sorted(p.name for p in tagged_raw.iterdir())
    out = tmp_path / "data"
    code, err = _cli(["build", "--raw", str(tagged_raw), "--out", str(out), "--pairs-file",
                      str(pairs)], capsys)  # fmt: skip
    assert code == EXIT_USER_ERROR and len(err.strip().splitlines()) == 1
    assert "pairs.csv" in err
    assert re.search(message, err), err
    assert not out.exists() and sorted(p.name for p in tagged_raw.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.csv", "raw"]


def test_calibration_units_and_fiji_calibrated_tiffs(tmp_path):
    image = np.zeros((16, 16), np.uint8)
    tifffile.imwrite(tmp_path / "pm.tif", image, extratags=_zeiss_tags("850.0 pm", "250.0 K X"))
    zeiss = read_calibration(tmp_path / "pm.tif")
    assert zeiss.pixel_size_nm == pytest.approx(0.85) and zeiss.magnification == 250000
    escan_only = "[EScan]\r\nPixelWidth=2.5e-09\r\n[Image]\r\nResolutionY=12\r\n"
    tifffile.imwrite(tmp_path / "e.tif", image, extratags=[(34680, "s", 0, escan_only, True)])
    fei = read_calibration(tmp_path / "e.tif")
    assert (fei.vendor, fei.pixel_size_nm, fei.bar_row) == ("fei", pytest.approx(2.5), 12)
    tifffile.imwrite(
        tmp_path / "fiji.tif", image, imagej=True, resolution=(50, 50), metadata={"unit": "micron"}
    )
    fiji = read_calibration(tmp_path / "fiji.tif")
    assert (fiji.vendor, fiji.pixel_size_nm) == ("imagej", pytest.approx(20.0))  # 1/50 um
    tifffile.imwrite(tmp_path / "plain.tif", image)
    assert read_calibration(tmp_path / "plain.tif") is None
    bad = "[Scan]\r\nPixelWidth=-1\r\n"
    tifffile.imwrite(tmp_path / "bad.tif", image, extratags=[(34682, "s", 0, bad, True)])
    with pytest.raises(UserError, match=r"bad\.tif: \[Scan\] PixelWidth -1 .* not a positive"):
        read_calibration(tmp_path / "bad.tif")


def test_no_scale_and_swapped_files_are_refused(tagged_raw, tmp_path, capsys):
    tifffile.imwrite(tagged_raw / "u1.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(tagged_raw / "u2.tif", np.zeros((8, 8), np.uint8))
    for row, message in (
        ("u,u1.tif,u2.tif", r"u2\.tif: cannot tell the scale"),
        ("a,a high.tif,a low.tif", r"a low\.tif: scale 0\.5 with a high\.tif as LR"),
    ):
        pairs = _write_pairs_file(tmp_path / "pairs.csv", [row])
        argv = ["build", "--raw", str(tagged_raw), "--out", str(tmp_path / "d")]
        code, err = _cli([*argv, "--pairs-file", str(pairs)], capsys)
        assert code == EXIT_USER_ERROR and re.search(message, err), err
        assert not (tmp_path / "d").exists()


def test_synth_zeiss_tif_records_pixel_size_and_magnification(tmp_path):
    config = SynthConfig(width=96, height=64, bar_rows=8)
    synthesize(tmp_path / "raw", pairs=1, seed=0, config=config, image_format="zeiss-tif")
    lr, hr = (read_calibration(tmp_path / "raw" / f"syn000_{m}.tif") for m in (10000, 20000))
    assert (lr.vendor, lr.pixel_size_nm, lr.magnification) == ("zeiss", 10.0, 10000)
    assert (hr.pixel_size_nm, hr.magnification, hr.bar_row) == (5.0, 20000, None)
    with tifffile.TiffFile(tmp_path / "raw" / "syn000_10000.tif") as tif:
        assert tif.pages.first.compression.name == "LZW" and tif.pages.first.shape == (72, 96)
