import logging

import numpy as np
import pytest
import tifffile

from aeatrain.errors import UserError
from aeatrain.imageio import (
    ImageError,
    atomic_path,
    from_float,
    read_image,
    to_float,
    write_image,
)


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
