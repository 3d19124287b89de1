"""Pairs files that could lose files or break names: sources inside --out or outside RAW,
names with control characters, names too long for a file name, oversized fields
(issue 23, items 1, 11, 13, 14)."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import tifffile

from aeatrain.data.format import sha256_file
from aeatrain.errors import EXIT_USER_ERROR
from data_prep.build import build_dataset
from tests.data_prep.conftest import SMALL
from tests.data_prep.test_dp_microscope_files import _cli, _fei_tags, _small_pair

DATASET_MARK = {"format": "aeatrain-dataset"}  # what --overwrite looks for (outputs.DATASET)


def _checksums(folder):
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def old_dataset_with_images(tmp_path):
    """An empty RAW, and OLD: a folder --overwrite may replace, holding a registerable
    FEI pair (so a build that reads them succeeds, and would delete them with OLD)."""
    raw, old = tmp_path / "raw", tmp_path / "old"
    raw.mkdir()
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps(DATASET_MARK))
    lr, hr, _ = _small_pair()
    for name, image, pixel_nm in (("lr.tif", lr, 10.0), ("hr.tif", hr, 5.0)):
        tifffile.imwrite(old / name, image, extratags=_fei_tags(pixel_nm, SMALL.width, 384))
    return raw, old


def _pairs_csv(path, *rows):
    path.write_text("name,lr,hr\n" + "".join(row + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("layout", "outside_raw", "message"),
    [
        ("dotdot", False, r"line 2: lr file .*old/lr\.tif lies outside the raw folder"),
        ("absolute", False, r"line 2: lr file .*old/lr\.tif lies outside the raw folder"),
        ("symlink", False, r"line 2: lr file .*raw/lr\.tif lies outside the raw folder"),
        ("dotdot", True, r"old/lr\.tif: image of pair 'p' lies inside the output folder"),
        ("symlink", True, r"raw/lr\.tif: image of pair 'p' lies inside the output folder"),
        ("pairs-file-in-out", False, r"old: output folder overlaps the source file .*pairs\.csv"),
    ],
)
def test_build_overwrite_never_deletes_the_files_a_pairs_file_names(
    old_dataset_with_images, tmp_path, capsys, layout, outside_raw, message
):
    raw, old = old_dataset_with_images
    pairs = tmp_path / "pairs.csv"
    if layout == "dotdot":
        _pairs_csv(pairs, "p,../old/lr.tif,../old/hr.tif")
    elif layout == "absolute":
        _pairs_csv(pairs, f"p,{old / 'lr.tif'},{old / 'hr.tif'}")
    elif layout == "symlink":
        for name in ("lr.tif", "hr.tif"):
            os.symlink(old / name, raw / name)
        _pairs_csv(pairs, "p,lr.tif,hr.tif")
    else:
        for name in ("lr.tif", "hr.tif"):
            os.replace(old / name, raw / name)
        pairs = _pairs_csv(old / "pairs.csv", "p,lr.tif,hr.tif")
    before = _checksums(old)
    argv = ["build", "--raw", str(raw), "--out", str(old), "--overwrite", "--workers", "1",
            "--bar-row", "384", "--pairs-file", str(pairs)]  # fmt: skip
    if outside_raw:
        argv.append("--allow-outside-raw")
    code, err = _cli(argv, capsys)  # before the fix: exit 0, old/ replaced
    assert code == EXIT_USER_ERROR and re.search(message, err), err
    assert _checksums(old) == before  # every file still there, byte for byte
    assert not (old / "registration.json").exists()


def test_refusals_name_the_line_and_exit_2(old_dataset_with_images, tmp_path, capsys):
    raw, _ = old_dataset_with_images
    pairs = _pairs_csv(tmp_path / "pairs.csv", "p,../old/lr.tif,../old/hr.tif")
    code, err = _cli(["build", "--raw", str(raw), "--out", str(tmp_path / "d"),
                      "--pairs-file", str(pairs)], capsys)  # fmt: skip
    assert code == EXIT_USER_ERROR and len(err.strip().splitlines()) == 1
    assert re.search(r"pairs\.csv line 2: lr file .* outside the raw folder .*--allow", err)
    assert not (tmp_path / "d").exists()


def test_sources_are_recorded_relative_to_raw_not_by_basename(tmp_path):
    """Two sessions with the same file names: each pair records its own folder."""
    lr, hr, _ = _small_pair()
    raw = tmp_path / "raw"
    for session in ("session 1", "session 2"):
        (raw / session).mkdir(parents=True)
        for name, image, pixel_nm in (("img 1.tif", lr, 10.0), ("img 2.tif", hr, 5.0)):
            tifffile.imwrite(
                raw / session / name, image, extratags=_fei_tags(pixel_nm, SMALL.width, 384)
            )
    pairs = _pairs_csv(
        tmp_path / "pairs.csv",
        "one,session 1/img 1.tif,session 1/img 2.tif",
        "two,session 2/img 1.tif,session 2/img 2.tif",
    )
    data = tmp_path / "data"
    build_dataset(raw, data, pairs_file=pairs, workers=1)
    records = json.loads((data / "registration.json").read_text())
    assert [(r["lr_file"], r["hr_file"]) for _, r in sorted(records.items())] == [
        ("session 1/img 1.tif", "session 1/img 2.tif"),
        ("session 2/img 1.tif", "session 2/img 2.tif"),
    ]
    from aeatrain.data.streams import full_images

    sources = {image.pair: image.meta["sources"] for image in full_images(data)}
    assert sources["two"]["hr"] == {
        "file": "session 2/img 2.tif",
        "sha256": sha256_file(raw / "session 2" / "img 2.tif"),
    }
    assert np.array_equal(tifffile.imread(raw / sources["one"]["lr"]["file"]), lr)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (['"c\nd",c.tif,d.tif'],
         r"line 2: pair name 'c\\nd' holds a control character \('\\n'\)"),
        (['"tab\tname",a.tif,b.tif'], r"line 2: pair name 'tab\\tname' holds a control"),
        (['p,"a\n.tif",b.tif'], r"line 2: lr path 'a\\n\.tif' holds a control character"),
        (["粒界" * 45 + ",a.tif,b.tif"], r"line 2: pair name .* too long: its key .* is 810 "),
        (["é" * 100 + ",a.tif,b.tif"], r"line 2: pair name .* too long: its key .* is 600 "),
        (["x" * 140_000 + ",a.tif,b.tif"], r"line 2: not a readable CSV row \(field larger"),
        (['p,a.tif,"b\n.tif"', "y" * 140_000 + ",e.tif,f.tif"], r"line 4: not a readable CSV"),
    ],
    ids=["newline", "tab", "newline-in-path", "cjk-too-long", "accents-too-long", "field-over-128k", "after-2-lines"],
)  # fmt: skip
def test_pair_names_that_cannot_be_keys_are_refused_with_their_line(
    tmp_path, capsys, rows, message
):
    raw = tmp_path / "raw"
    raw.mkdir()
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("name,lr,hr\n" + "\n".join(rows) + "\n", encoding="utf-8")
    code, err = _cli(["build", "--raw", str(raw), "--out", str(tmp_path / "d"),
                      "--pairs-file", str(pairs)], capsys)  # fmt: skip
    assert code == EXIT_USER_ERROR and len(err.strip().splitlines()) == 1, err
    assert re.search(r"pairs\.csv " + message, err), err[:300]
    assert len(err) < 1000  # the 140,000-character field is not echoed


def test_a_pairs_file_over_16_mib_is_refused_before_it_is_parsed(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    pairs = tmp_path / "pairs.csv"
    row = b"grain boundary,session 1/img.tif,session 1/img zoom.tif\n"
    pairs.write_bytes(b"name,lr,hr\n" + row * (17 * 2**20 // len(row)))
    code, err = _cli(["build", "--raw", str(raw), "--out", str(tmp_path / "d"),
                      "--pairs-file", str(pairs)], capsys)  # fmt: skip
    assert code == EXIT_USER_ERROR
    assert re.search(r"pairs\.csv: 17\.0 MiB; a pairs file holds at most 16 MiB", err), err


def test_file_names_whose_pair_key_is_too_long_are_refused(tmp_path):
    from aeatrain.errors import UserError
    from data_prep.pairs import find_pairs

    name = "粒界" * 40  # 240 bytes of UTF-8: the file name fits, its %XX key (720) does not
    for mag in (100, 200):
        tifffile.imwrite(tmp_path / f"{name}_{mag}.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(UserError, match=r"_100\.tif: pair name .* too long: its key .* is 720 "):
        find_pairs(tmp_path)
