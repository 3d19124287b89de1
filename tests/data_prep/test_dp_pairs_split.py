import logging

import numpy as np
import pytest

from aeatrain.errors import UserError
from aeatrain.files.images import write_image
from aeatrain.files.microscope import cut_bar
from aeatrain.protocol.split import PROTOCOL, Region, paper_split
from data_prep.pairs import find_pairs


def _touch_images(folder, *names):
    folder.mkdir(exist_ok=True)
    for name in names:
        write_image(folder / name, np.zeros((8, 8), np.uint8))


# --- layout discovery --------------------------------------------------------------------


def test_pairs_found_by_name_lower_magnification_is_lr(tmp_path):
    _touch_images(
        tmp_path / "raw", "b_2_20000.bmp", "b_2_10000.bmp", "a_x_5000.png", "a_x_10000.tif"
    )
    (tmp_path / "raw" / "notes.txt").write_text("SEM sidecar")
    pairs = find_pairs(tmp_path / "raw")
    assert [p.name for p in pairs] == ["a_x", "b_2"]  # name = everything before the LAST _
    a, b = pairs
    assert (a.lr_path.name, a.hr_path.name, a.scale) == ("a_x_5000.png", "a_x_10000.tif", 2.0)
    assert (b.lr_mag, b.hr_mag, b.scale) == (10000, 20000, 2.0)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (["a_10000.bmp", "a_20000.bmp", "b_10000.bmp"], r"b_10000\.bmp: no partner"),
        (["a_10000.bmp", "overview.bmp"], r"overview\.bmp: cannot tell its magnification"),
        (["a_10000.bmp", "a_20000.bmp", "a_40000.bmp"], "3 images named a"),
        (["a_10000.bmp", "a_10000.png"], "same magnification"),
        (
            ["a_10000.bmp", "a_20000.bmp", "b_10000.bmp", "b_30000.bmp"],
            "different magnification ratios",
        ),
    ],
)
def test_layout_problems_name_the_file(tmp_path, files, message):
    _touch_images(tmp_path / "raw", *files)
    with pytest.raises(UserError, match=message):
        find_pairs(tmp_path / "raw")


def test_missing_or_empty_raw_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        find_pairs(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: no images found"):
        find_pairs(tmp_path / "empty")
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "a_10000.txt").write_text("x")
    with pytest.raises(UserError, match="no images found"):
        find_pairs(tmp_path / "only_text")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        find_pairs(tmp_path / "file")


def test_cut_bar_keeps_rows_above_it_and_warns_when_there_is_none(tmp_path, caplog):
    image = np.arange(20 * 4, dtype=np.uint8).reshape(20, 4)
    assert cut_bar(image, 12, tmp_path / "x.bmp").shape == (12, 4)
    assert cut_bar(image, None, tmp_path / "x.bmp").shape == (20, 4)
    with caplog.at_level(logging.WARNING):
        assert cut_bar(image, 944, tmp_path / "x.bmp").shape == (20, 4)
    assert "no data bar cut" in caplog.text


# --- split -------------------------------------------------------------------------------


def test_paper_split_is_exactly_the_papers_for_1280_x_944():
    split = paper_split(1280, 944)
    assert split.train == Region(x0=0, y0=0, x1=960, y1=944)
    assert split.tests == {
        "test0": Region(x0=960, y0=0, x1=1280, y1=314),
        "test1": Region(x0=960, y0=314, x1=1280, y1=628),
        "test2": Region(x0=960, y0=628, x1=1280, y1=942),
    }
    assert split.full == Region(x0=0, y0=0, x1=1280, y1=944)
    assert PROTOCOL == {"name": "paper-split-v1", "train_fraction": 0.75, "test_tiles": 3}


def test_paper_split_other_sizes_follow_the_formula():
    split = paper_split(512, 384)
    assert split.train == Region(x0=0, y0=0, x1=384, y1=384)  # 16 * floor(0.75 * 512 / 16)
    assert split.tests["test2"] == Region(x0=384, y0=256, x1=512, y1=384)
    split = paper_split(1000, 700)
    assert split.train.x1 == 16 * int(750 / 16) == 736
    assert [t.y0 for t in split.tests.values()] == [0, 233, 466]
    with pytest.raises(ValueError, match="too small"):
        paper_split(20, 20)
