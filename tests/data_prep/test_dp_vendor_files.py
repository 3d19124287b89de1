"""Real instruments' metadata (issue 20): every vendor's pixel size as RosettaSciIO reads
the same file, the data bar placed by metadata, layout or detection and reported, bad
metadata refused with one line, and TIFFs and palettes that tifffile reads."""

from __future__ import annotations

import json
import logging
import re
import struct

import cv2
import numpy as np
import pytest
import tifffile

from aeatrain.errors import EXIT_USER_ERROR, UserError, run_cli
from aeatrain.files.images import read_image
from aeatrain.files.microscope import BarCut, cut_data_bar, detect_data_bar, read_calibration
from data_prep.__main__ import main as data_prep_main
from data_prep.build import build_dataset
from data_prep.synth.config import SynthConfig
from data_prep.synth.scan import data_bar
from tests.vendor_files import (
    VENDOR_FILES,
    rosettasciio_pixel_nm,
    sem_image,
    write_fei,
    write_jeol,
    write_tescan,
    write_zeiss,
)


@pytest.mark.parametrize("vendor", sorted(VENDOR_FILES))
def test_pixel_size_as_rosettasciio_reads_it(tmp_path, vendor):
    write, rosetta_reads, bar_row = VENDOR_FILES[vendor]
    path = tmp_path / f"{vendor.replace(' ', '_')}.tif"
    true_nm = write(path)
    calibration = read_calibration(path)
    assert calibration.pixel_size_nm == pytest.approx(true_nm, rel=1e-3)
    assert calibration.pixel_size_from  # where it came from is recorded
    assert calibration.bar_row == bar_row
    theirs = rosettasciio_pixel_nm(path)
    if rosetta_reads:
        assert calibration.pixel_size_nm == pytest.approx(theirs, rel=1e-3)
    else:  # RosettaSciIO 0.15 leaves TESCAN tags and JEOL sidecars uncalibrated
        assert theirs is None


def test_zeiss_fields_and_which_wins(tmp_path, caplog):
    """2048 wide: AP_PIXEL_SIZE is a 1024-wide frame's pixel (24.66 nm), the image's is
    AP_IMAGE_PIXEL_SIZE = AP_WIDTH / 2048 = 12.33 nm."""
    write_zeiss(tmp_path / "z.tif", sem_image(6, 2048), 12.33)
    with tifffile.TiffFile(tmp_path / "z.tif") as tif:
        meta = tif.sem_metadata
    assert meta["ap_pixel_size"][1:] == (24.66, "nm")
    assert meta["ap_image_pixel_size"][1:] == (12.33, "nm")
    assert meta["ap_width"][1:] == (25.252, "µm")
    calibration = read_calibration(tmp_path / "z.tif")
    assert calibration.pixel_size_from == "Zeiss AP_IMAGE_PIXEL_SIZE"
    write_zeiss(tmp_path / "old.tif", sem_image(6, 2048), 12.33, frame_only=True)
    old = read_calibration(tmp_path / "old.tif")
    assert old.pixel_size_nm == pytest.approx(12.33)
    assert old.pixel_size_from == "Zeiss AP_PIXEL_SIZE x 1024 / image width"
    text = b"0\r\nAP_IMAGE_PIXEL_SIZE\r\nImage Pixel Size = 12.33 nm\r\n"
    text += b"AP_PIXEL_SIZE\r\nPixel Size = 12.33 nm\r\n"  # disagrees by 2x
    tifffile.imwrite(
        tmp_path / "x.tif", sem_image(6, 2048), extratags=[(34118, "s", 0, text, True)]
    )
    caplog.set_level(logging.WARNING)
    assert read_calibration(tmp_path / "x.tif").pixel_size_nm == pytest.approx(12.33)
    assert "x.tif: Zeiss AP_IMAGE_PIXEL_SIZE gives 12.33 nm, AP_PIXEL_SIZE" in caplog.text


def test_jeol_and_tescan_bars_and_details(tmp_path):
    write_tescan(tmp_path / "t.tif", sem_image(80, 64), 2501.2, 20)
    tescan = read_calibration(tmp_path / "t.tif")
    assert (tescan.vendor, tescan.magnification, tescan.bar_from) == (
        "tescan",
        20000,
        "TESCAN ImageStripSize",
    )
    assert tescan.details == {"hv_kv": 15.0, "detector": "SE", "system": "MIRA3 LMH"}
    image = read_image(tmp_path / "t.tif")[0]
    kept, cut = cut_data_bar(image, tmp_path / "t.tif", tescan)
    assert kept.shape == (60, 64) and cut == BarCut(60, "TESCAN ImageStripSize")
    write_jeol(tmp_path / "j.tif", sem_image(72, 64), 72)  # full size = the file: no bar
    jeol = read_calibration(tmp_path / "j.tif")
    assert (jeol.vendor, jeol.magnification, jeol.bar_row) == ("jeol", 30000, None)
    assert jeol.details == {"hv_kv": 15.0, "detector": "SEI", "system": "JSM-7600F"}
    kept, cut = cut_data_bar(read_image(tmp_path / "j.tif")[0], tmp_path / "j.tif", jeol)
    assert kept.shape == (72, 64) and cut == BarCut(None, "JEOL $CM_FULL_SIZE")


# --- nonsense metadata: one line naming the file and the field, exit 2, nothing written ----


def _cli(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: data_prep_main(argv))
    return stop.value.code, capsys.readouterr().err


BAD_METADATA = [
    (
        lambda p: write_fei(p, sem_image(48, 64, 1), 5.0, 0.5),
        r"\[Image\] ResolutionY 0\.5 .* whole",
    ),
    (lambda p: write_fei(p, sem_image(48, 64, 1), 5.0, 0), r"\[Image\] ResolutionY 0 .* positive"),
    (lambda p: write_fei(p, sem_image(48, 64, 1), 5.0, -3), r"ResolutionY -3 .* positive"),
    (lambda p: write_fei(p, sem_image(48, 64, 1), 5.0, 400), r"ResolutionY 400 .* beyond .* 48"),
    (lambda p: write_tescan(p, sem_image(48, 64, 1), 5.0, 48), r"ImageStripSize '48' .* 48 rows"),
    (lambda p: write_jeol(p, sem_image(48, 64, 1), 90), r"\$CM_FULL_SIZE height 90 .* beyond"),
]


@pytest.mark.parametrize("write_bad, message", BAD_METADATA)
def test_nonsense_bar_metadata_stops_build_with_one_line(tmp_path, capsys, write_bad, message):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_fei(raw / "a_10000.tif", sem_image(48, 64), 10.0, 48)
    write_bad(raw / "a_20000.tif")
    code, err = _cli(["build", "--raw", str(raw), "--out", str(tmp_path / "d")], capsys)
    assert code == EXIT_USER_ERROR
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "a_20000.tif" in lines[0] and re.search(message, lines[0]), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # nothing written


# --- the data bar: public layout, detected, or whole; reported -------------------------


def _with_bar(area: np.ndarray, bar_rows: int) -> np.ndarray:
    config = SynthConfig(width=area.shape[1], height=area.shape[0], bar_rows=bar_rows)
    bar = np.rint(data_bar(config, 20000, 5.0) * 255).astype(np.uint8)
    return np.vstack([area, bar])


def test_bar_detected_or_whole_never_944_outside_the_public_layout(tmp_path):
    whole = sem_image(1536, 2048)
    kept, cut = cut_data_bar(whole, tmp_path / "w.tif", None)
    assert kept.shape == (1536, 2048) and cut == BarCut(None, "none")  # no silent 944
    barred = _with_bar(sem_image(1400, 2048), 136)
    kept, cut = cut_data_bar(barred, tmp_path / "b.tif", None)
    assert kept.shape == (1400, 2048) and cut == BarCut(1400, "detected")
    kept, cut = cut_data_bar(sem_image(1024, 1280), tmp_path / "p.bmp", None)
    assert kept.shape == (944, 1280) and cut == BarCut(944, "public layout")
    flat = sem_image(300, 200)
    flat[250:] = 0  # a dark region without text: not a data bar
    assert detect_data_bar(flat) is None


def test_detected_bar_is_reported_in_registration_manifest_and_summary(tmp_path, capsys):
    """A pair of a size other than 1280 x 1024, no bar metadata, a 40-row data bar: cut
    where detected, and said so."""
    from tests.data_prep.test_dp_microscope_files import _small_pair

    lr, hr, _ = _small_pair()  # (384 + 40, 512), the synthetic data bar at the bottom
    raw = tmp_path / "raw"
    raw.mkdir()
    tifffile.imwrite(raw / "s_10000.tif", lr)
    tifffile.imwrite(raw / "s_20000.tif", hr)
    outcomes = build_dataset(raw, tmp_path / "data")
    assert outcomes[0].ok and outcomes[0].height == 384
    record = json.loads((tmp_path / "data" / "registration.json").read_text())["s"]
    assert record["bar_rows"] == {"lr": 384, "hr": 384}
    assert record["bar_sources"] == {"lr": "detected", "hr": "detected"}
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["pairs"]["s"]["bar_sources"] == {"lr": "detected", "hr": "detected"}
    assert data_prep_main(["summary", str(tmp_path / "data")]) == 0
    assert "data bar: cut at row 384 (detected)" in capsys.readouterr().out


def test_2048_by_1536_pair_without_bar_metadata_builds_whole(tmp_path, capsys):
    """The acceptance case: not the public layout, no bar metadata, no bar: every row
    kept (the old default cut it at 944, dropping 38 %), and the summary says so."""
    from tests.data_prep.test_dp_microscope_files import _small_pair

    lr, hr, _ = _small_pair()
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, image in (("z_10000.tif", lr), ("z_20000.tif", hr)):  # the area, 4x: no bar
        tifffile.imwrite(
            raw / name, cv2.resize(image[:384], (2048, 1536), interpolation=cv2.INTER_CUBIC)
        )
    code, err = _cli(
        ["build", "--raw", str(raw), "--out", str(tmp_path / "d"), "--workers", "1"], capsys
    )
    assert code == 0, err
    pair = json.loads((tmp_path / "d" / "manifest.json").read_text())["pairs"]["z"]
    assert (pair["width"], pair["height"]) == (2048, 1536)
    assert pair["bar_rows"] == {"lr": None, "hr": None}
    assert pair["bar_sources"] == {"lr": "none", "hr": "none"}
    assert data_prep_main(["summary", str(tmp_path / "d")]) == 0
    assert "data bar: images kept whole (no bar found)" in capsys.readouterr().out


# --- TIFFs tifffile reads -------------------------------------------------------------


def _tiff_without_compression_tag(image: np.ndarray) -> bytes:
    """A little-endian 8-bit grey TIFF whose one IFD has no Compression tag (259), as
    ImageJ 1.51 writes them; TIFF 6.0 defaults it to 1, no compression."""
    height, width = image.shape
    tags = [(256, width), (257, height), (258, 8), (262, 1), (273, 0), (277, 1), (278, height),
            (279, image.size)]  # fmt: skip
    data_offset = 8 + 2 + 12 * len(tags) + 4
    out = bytearray(b"II*\0" + struct.pack("<IH", 8, len(tags)))
    for tag, value in tags:
        out += struct.pack("<HHII", tag, 4, 1, data_offset if tag == 273 else value)
    return bytes(out + struct.pack("<I", 0) + image.tobytes())


def test_tiff_without_a_compression_tag_is_read(tmp_path):
    image = sem_image(48, 64)
    (tmp_path / "ij151.tif").write_bytes(_tiff_without_compression_tag(image))
    with tifffile.TiffFile(tmp_path / "ij151.tif") as tif:
        assert "Compression" not in tif.pages.first.tags
    array, depth = read_image(tmp_path / "ij151.tif")
    assert depth == 8 and np.array_equal(array, image)


def test_grey_palette_with_40_coloured_pixels_is_grey_with_a_warning(tmp_path, caplog):
    """A Zeiss-like 512 x 384 grey palette image with a 40-pixel pure-green marker."""
    indices = sem_image(384, 512).astype(np.uint8)
    indices[100, 200:240] = 255  # the marker
    grey = np.arange(256, dtype=np.uint16) * 257
    colormap = np.stack([grey, grey, grey])
    colormap[:, 255] = (0, 65535, 0)  # entry 255: pure green
    tifffile.imwrite(tmp_path / "m.tif", indices, photometric="palette", colormap=colormap)
    caplog.set_level(logging.WARNING)
    image, depth = read_image(tmp_path / "m.tif")
    assert depth == 8 and image[100, 200] == round(0.587 * 255)  # green's luma
    assert np.array_equal(image[:100], indices[:100])  # grey entries keep their level
    assert "m.tif: palette image with 40 coloured pixels" in caplog.text
    indices[:10] = 255  # now 5160 of 196608 pixels, 2.6 %: a colour image
    tifffile.imwrite(tmp_path / "c.tif", indices, photometric="palette", colormap=colormap)
    with pytest.raises(UserError, match=r"c\.tif: palette .* 5160 of 196608 pixels in colour"):
        read_image(tmp_path / "c.tif")
