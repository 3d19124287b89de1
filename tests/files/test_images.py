import errno
import io
import logging
import os
import struct
import zlib

import cv2
import numpy as np
import pytest
import tifffile

from aeatrain.errors import UserError
from aeatrain.files import atomic, images
from aeatrain.files.atomic import atomic_path
from aeatrain.files.images import (
    ImageError,
    from_float,
    opencv_message,
    read_image,
    to_float,
    write_image,
)
from aeatrain.files.rows import TiffRows, open_image_rows


@pytest.mark.parametrize(
    ("suffix", "dtype"),
    [
        (".bmp", np.uint8),
        (".png", np.uint8),
        (".png", np.uint16),
        (".tif", np.uint8),
        (".tif", np.uint16),
    ],
)
def test_round_trip_keeps_pixels_and_bit_depth(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    image = rng.integers(0, np.iinfo(dtype).max, size=(37, 53), endpoint=True).astype(dtype)
    path = tmp_path / f"x{suffix}"
    write_image(path, image)
    back, depth = read_image(path)
    assert depth == (8 if dtype == np.uint8 else 16)
    np.testing.assert_array_equal(back, image)


def test_rgb_is_converted_to_grey_with_warning(tmp_path, caplog):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200  # red only
    path = tmp_path / "c.tif"
    tifffile.imwrite(path, rgb, photometric="rgb")
    with caplog.at_level(logging.WARNING):
        grey, depth = read_image(path)
    assert depth == 8 and grey.shape == (8, 8)
    assert grey[0, 0] == round(200 * 0.299)
    assert "converted to grey" in caplog.text


def test_truncated_and_non_images_are_named(tmp_path):
    good = tmp_path / "g.png"
    write_image(good, np.full((64, 64), 7, np.uint8))
    truncated = tmp_path / "t.png"
    truncated.write_bytes(good.read_bytes()[:40])
    text = tmp_path / "notes.bmp"
    text.write_text("not an image")
    for bad in (truncated, text, tmp_path / "missing.png"):
        with pytest.raises(ImageError, match=bad.name):
            read_image(bad)


def test_float_conversions_round_trip():
    image = np.array([[0, 1, 254, 255]], np.uint8)
    np.testing.assert_array_equal(from_float(to_float(image), 8), image)
    assert from_float(np.array([[1.7, -0.2]]), 16).tolist() == [[65535, 0]]


def test_atomic_write_refuses_existing_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"original")
    with pytest.raises(UserError, match="already exists"):
        write_image(target, np.zeros((4, 4), np.uint8))
    assert target.read_bytes() == b"original"
    fresh = tmp_path / "fresh.png"
    with pytest.raises(RuntimeError), atomic_path(fresh) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == [target]


def test_bmp_refuses_16_bit(tmp_path):
    with pytest.raises(UserError, match="BMP"):
        write_image(tmp_path / "x.bmp", np.zeros((4, 4), np.uint16))


def test_atomic_writes_get_the_umask_mode(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        write_image(tmp_path / "m.png", np.zeros((4, 4), np.uint8))
    finally:
        os.umask(old)
    assert (tmp_path / "m.png").stat().st_mode & 0o777 == 0o644


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data).to_bytes(4, "big")
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + body


def _bmp_header_only(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 0, 100, 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", 1178, 0, 0, 1078) + info + bytes(1124)


def _tiff_header_only(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((8, 8), np.uint8))
    buffer.seek(0)
    with tifffile.TiffFile(buffer, mode="r+b") as tif:  # the tags now claim another size
        tif.pages[0].tags["ImageWidth"].overwrite(width)
        tif.pages[0].tags["ImageLength"].overwrite(height)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("suffix", "make"),
    [(".png", _png_header_only), (".bmp", _bmp_header_only), (".tif", _tiff_header_only)],
)
def test_a_header_claiming_100000_squared_pixels_is_one_line(tmp_path, suffix, make):
    path = tmp_path / f"huge{suffix}"
    path.write_bytes(make(100_000, 100_000))  # was a cv2.error traceback
    with pytest.raises(
        ImageError, match=r"huge\.(png|bmp|tif): header claims 100000 x 100000 pixels"
    ):
        read_image(path)


def test_damaged_png_is_named_without_libpng_or_opencv_lines(tmp_path, capfd):
    image = np.arange(64 * 48, dtype=np.uint16).reshape(48, 64)
    write_image(tmp_path / "good.png", image)
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    (tmp_path / "flipped.png").write_bytes(bytes(flipped))
    write_image(tmp_path / "good.bmp", image.astype(np.uint8))
    (tmp_path / "cut.bmp").write_bytes((tmp_path / "good.bmp").read_bytes()[:2000])
    with pytest.raises(
        ImageError, match=r"cut\.png: not a readable image \(PNG truncated in its IDAT"
    ):
        read_image(tmp_path / "cut.png")
    with pytest.raises(ImageError, match=r"flipped\.png: .*damaged: checksum of its IDAT"):
        read_image(tmp_path / "flipped.png")
    with pytest.raises(ImageError, match=r"cut\.bmp: not a readable image"):
        read_image(tmp_path / "cut.bmp")
    assert capfd.readouterr().err == ""  # libpng and OpenCV printed their own lines here


def test_opencv_message_is_whole_and_without_source_location():
    rng = np.random.default_rng(0)
    a, b = (rng.random((64, 64), dtype=np.float32) for _ in range(2))
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-6)
    with pytest.raises(cv2.error) as caught:
        cv2.findTransformECC(
            a, b, np.eye(2, 3, dtype=np.float32), cv2.MOTION_AFFINE, criteria, None, 1
        )
    message = opencv_message(caught.value)
    assert message.startswith("The algorithm stopped before its convergence.")
    assert message.endswith("Images may be uncorrelated or non-overlapped")  # cut at 120 before
    assert "ecc.cpp" not in message and "\n" not in message


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_atomic_write_on_a_full_disk_or_read_only_folder_is_one_line(tmp_path, monkeypatch, code):
    def refuse(*args):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(
        UserError, match=r"out\.png: cannot write: (disk full|read-only|permission)"
    ) as caught:
        write_image(tmp_path / "out.png", np.zeros((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []  # no temporary file left
    assert isinstance(caught.value, OSError) and caught.value.errno == code  # as train.py needs


def test_an_unreadable_file_is_named_not_a_traceback(tmp_path, monkeypatch):
    write_image(tmp_path / "a.png", np.zeros((4, 4), np.uint8))
    monkeypatch.setattr(images.os, "access", lambda path, mode: False)  # root reads anything
    with pytest.raises(ImageError, match=r"a\.png: cannot read it \(permission denied\)"):
        read_image(tmp_path / "a.png")


def test_damaged_tiff_is_one_error_without_tifffile_log_lines(tmp_path, caplog, capfd):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((300, 400), np.uint16), compression="zlib")
    (tmp_path / "cut.tif").write_bytes((tmp_path / "a.tif").read_bytes()[:200])
    caplog.set_level(logging.INFO)
    with pytest.raises(ImageError, match=r"cut\.tif: not a readable TIFF image"):
        read_image(tmp_path / "cut.tif")
    assert [r for r in caplog.records if r.name == "tifffile"] == []  # 4 ERROR lines before
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"II*\x00garbage after the signature", r"g\.tif: not a readable TIFF image \(no image"),
        (b"MM\x00*\x00\x00\x00\x08" + b"z" * 40, r"g\.tif: not a readable TIFF image"),
        (None, r"g\.tif: is a folder, not an image file"),
    ],
    ids=["little-endian-garbage", "big-endian-garbage", "folder"],
)
def test_a_tiff_signature_then_garbage_or_a_folder_is_named_for_what_it_is(
    tmp_path, content, message
):
    path = tmp_path / "g.tif"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        read_image(path)


def test_rows_written_as_they_come_equal_the_image_written_whole(tmp_path, monkeypatch, caplog):
    """write_image_rows: bands of any height make the same pixels and calibration as
    write_image; past the 4 GiB TIFF limit (lowered here) a BigTIFF without ImageJ's
    calibration, said in a warning."""
    image = np.random.default_rng(3).integers(0, 65536, (150, 70), dtype=np.uint16)
    bands = [image[:1], image[1:100], image[100:]]
    images.write_image_rows(tmp_path / "rows.tif", iter(bands), image.shape, np.uint16,
                             pixel_size_nm=2.5, info="x")  # fmt: skip
    with tifffile.TiffFile(tmp_path / "rows.tif") as tif:
        assert np.array_equal(tif.asarray(), image) and tif.is_imagej and not tif.is_bigtiff
        assert tif.pages[0].tags["XResolution"].value == (2, 5)  # 1 / 2.5 nm
    monkeypatch.setattr(images, "_TIFF_LIMIT", image.nbytes - 1)
    images.write_image_rows(tmp_path / "big.tif", iter(bands), image.shape, np.uint16,
                             pixel_size_nm=2.5, info="x")  # fmt: skip
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        assert np.array_equal(tif.asarray(), image) and tif.is_bigtiff and not tif.is_imagej
    assert "over 4 GiB, written as BigTIFF without its calibration" in caplog.text
    images.write_image_rows(tmp_path / "rows.png", iter(bands), image.shape, np.uint16)
    assert np.array_equal(images.read_image(tmp_path / "rows.png")[0], image)
    with pytest.raises(ValueError, match="bands hold 100 rows, the image 150"):
        images.write_image_rows(tmp_path / "short.tif", iter(bands[:2]), image.shape, np.uint16)
    assert not (tmp_path / "short.tif").exists()


_ROWS_IMAGE = np.random.default_rng(3).integers(0, 65536, (45, 31)).astype(np.uint16)


@pytest.mark.parametrize(
    ("dtype", "options"),
    [
        (np.uint16, {}),  # one strip: tifffile's default
        (np.uint16, {"rowsperstrip": 7}),  # strips, the last one short
        (np.uint16, {"byteorder": ">", "rowsperstrip": 8}),
        (np.uint8, {"rowsperstrip": 5}),
        (np.uint8, {"photometric": "miniswhite"}),
    ],
)
def test_tiff_rows_are_the_pixels_of_a_whole_read(tmp_path, dtype, options):
    whole = (_ROWS_IMAGE >> 8).astype(np.uint8) if dtype == np.uint8 else _ROWS_IMAGE
    tifffile.imwrite(tmp_path / "x.tif", whole, **options)
    rows, bit_depth = open_image_rows(tmp_path / "x.tif")
    assert isinstance(rows, TiffRows) and bit_depth == 8 * np.dtype(dtype).itemsize
    np.testing.assert_array_equal(read_image(tmp_path / "x.tif")[0], whole)
    assert rows.shape == whole.shape and rows.dtype == whole.dtype and rows.size == whole.size
    np.testing.assert_array_equal(np.asarray(rows), whole)
    view = rows[5:40]  # a view: nothing read
    assert isinstance(view, TiffRows) and view.shape == (35, 31)
    np.testing.assert_array_equal(view[3], whole[8])
    np.testing.assert_array_equal(view[-1], whole[39])
    np.testing.assert_array_equal(view[2:30][4:9, 3:11], whole[11:16, 3:11])
    np.testing.assert_array_equal(np.asarray(view[10:]), whole[15:40])
    with pytest.raises(IndexError):
        view[35]


@pytest.mark.parametrize(
    "options",
    [{"compression": "zlib"}, {"tile": (16, 16)}, {"photometric": "rgb"}, {"min_pixels": 10**6}],
)
def test_other_tiffs_are_read_whole(tmp_path, options):
    min_pixels = options.pop("min_pixels", 0)
    whole = _ROWS_IMAGE[:32, :16]
    if options.get("photometric") == "rgb":
        whole = np.repeat(whole[..., None], 3, axis=2)
    tifffile.imwrite(tmp_path / "x.tif", whole, **options)
    rows, bit_depth = open_image_rows(tmp_path / "x.tif", min_pixels=min_pixels)
    assert isinstance(rows, np.ndarray) and bit_depth == 16
    np.testing.assert_array_equal(rows, read_image(tmp_path / "x.tif")[0])


def test_a_truncated_tiff_is_refused_read_whole_or_in_rows(tmp_path):
    tifffile.imwrite(tmp_path / "x.tif", _ROWS_IMAGE, rowsperstrip=8)
    data = (tmp_path / "x.tif").read_bytes()
    rows, _ = open_image_rows(tmp_path / "x.tif")
    (tmp_path / "x.tif").write_bytes(data[: len(data) // 2])  # cut after it was opened
    np.testing.assert_array_equal(rows[:3], _ROWS_IMAGE[:3])  # strip 0 is still whole
    with pytest.raises(ImageError, match=r"x\.tif: not a readable TIFF image \(truncated\)"):
        np.asarray(rows)
    with pytest.raises(ImageError, match="not a readable TIFF image"):
        open_image_rows(tmp_path / "x.tif")  # cut before: read_image's error
