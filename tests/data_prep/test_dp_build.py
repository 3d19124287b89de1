"""data_prep build: the dataset it writes, and every bad input it must refuse or reject."""

import json
import shutil
import tarfile
from urllib.parse import unquote

import cv2
import numpy as np
import pytest

from aeatrain.data.format import sha256_file
from aeatrain.errors import UserError
from aeatrain.files.images import read_image, write_image
from aeatrain.files.microscope import cut_bar
from data_prep import build as build_module
from data_prep.build import build_dataset
from data_prep.registration import warp_lr_to_hr
from data_prep.synth.config import SynthConfig
from data_prep.synth.generate import synthesize
from data_prep.truth import check_truth

BAR = 384  # data bar row of the conftest's small_raw pairs (512 x 384 image area)


def _members(tar_path):
    """{member name: bytes} of a tar, and the member names in order."""
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
        return {n: tar.extractfile(n).read() for n in names}, names


def _png(data):
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def _snapshot(folder):
    return {p.name: (sha256_file(p), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def _no_staging_left(parent):
    return [p.name for p in parent.iterdir() if ".staging-" in p.name] == []


# --- the dataset -------------------------------------------------------------------------


def test_dataset_layout_manifest_and_registration(small_raw, small_data):
    names = sorted(p.name for p in small_data.iterdir())
    assert names == [
        "full-000000.index.json",
        "full-000000.tar",
        "manifest.json",
        "qc",
        "registration.json",
        "test-000000.index.json",
        "test-000000.tar",
        "train-000000.index.json",
        "train-000000.tar",
    ]
    assert sorted(p.name for p in (small_data / "qc").iterdir()) == [
        "syn000.png",
        "syn001.png",
        "syn002.png",
    ]
    assert _no_staging_left(small_data.parent)
    manifest = json.loads((small_data / "manifest.json").read_text())
    assert manifest["format"] == "aeatrain-dataset" and manifest["format_version"] == 2
    assert manifest["protocol"]["name"] == "paper-split-v1"
    assert manifest["scale"] == 2.0 and manifest["bit_depths"] == [8] and manifest["bar_row"] == BAR
    assert manifest["rejected"] == {}
    assert manifest["pairs"]["syn001"] == {
        "width": 512,
        "height": 384,
        "bit_depth": 8,
        "train_region": {"x0": 0, "y0": 0, "x1": 384, "y1": 384},
        "pixel_size_nm": {"lr": None, "hr": None},  # BMPs record none
        "pixel_size_from": {"lr": None, "hr": None},
        "bar_rows": {"lr": BAR, "hr": BAR},
        "bar_sources": {"lr": "--bar-row", "hr": "--bar-row"},
    }
    counts = {
        s: (v["samples"], [x["file"] for x in v["shards"]]) for s, v in manifest["splits"].items()
    }
    assert counts == {
        "train": (3, ["train-000000.tar"]),
        "test": (9, ["test-000000.tar"]),
        "full": (3, ["full-000000.tar"]),
    }
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            assert shard["sha256"] == sha256_file(small_data / shard["file"])
            assert shard["index"] == shard["file"].replace(".tar", ".index.json")
            assert shard["index_sha256"] == sha256_file(small_data / shard["index"])
    records = json.loads((small_data / "registration.json").read_text())
    assert sorted(records) == ["syn000", "syn001", "syn002"]
    for name, r in records.items():
        assert r["status"] == "ok" and r["reason"] is None and r["qc"] == f"qc/{name}.png"
        assert r["inliers"] >= 8 and r["ncc"] > 0.8 and abs(r["scale"] - 2) < 0.03
        assert r["lr_file"] == f"{name}_10000.bmp" and r["bit_depth"] == 8
    qc = cv2.imread(str(small_data / "qc" / "syn000.png"))
    assert qc.shape[1] == 512 + 8 and qc.shape[0] > 384 // 2


def test_shards_hold_the_split_regions_in_pair_order(small_raw, small_data):
    members, order = _members(small_data / "test-000000.tar")
    keys = [n.rsplit(".", 2)[0] if n.endswith(".png") else n.rsplit(".", 1)[0] for n in order]
    assert list(dict.fromkeys(keys)) == [f"syn00{i}__test{k}" for i in range(3) for k in range(3)]
    meta = json.loads(members["syn001__test1.json"])
    assert meta["pair"] == "syn001" and meta["split"] == "test" and meta["region_id"] == "test1"
    assert meta["region"] == {"x0": 384, "y0": 128, "x1": 512, "y1": 256}
    assert meta["image_size"] == {"width": 512, "height": 384}
    assert meta["bit_depth"] == 8 and meta["scale"] == 2.0
    assert set(meta["registration"]) == {"homography", "inliers", "rmse_px", "ncc"}
    assert meta["sources"]["hr"] == {
        "file": "syn001_20000.bmp",
        "sha256": sha256_file(small_raw / "syn001_20000.bmp"),
    }
    lr, hr = _png(members["syn001__test1.lr.png"]), _png(members["syn001__test1.hr.png"])
    assert lr.shape == hr.shape == (128, 128) and lr.dtype == np.uint8

    train, _ = _members(small_data / "train-000000.tar")
    assert _png(train["syn002__train.lr.png"]).shape == (384, 384)
    full, _ = _members(small_data / "full-000000.tar")
    meta = json.loads(full["syn000__full.json"])
    assert meta["region"] == {"x0": 0, "y0": 0, "x1": 512, "y1": 384}
    assert meta["train_region"] == {"x0": 0, "y0": 0, "x1": 384, "y1": 384}
    assert meta["test_regions"]["test2"] == {"x0": 384, "y0": 256, "x1": 512, "y1": 384}
    # the stored LR is the raw LR (bar cut) warped bicubically with the stored homography
    raw_lr = cut_bar(read_image(small_raw / "syn000_10000.bmp")[0], BAR, small_raw)
    expected = warp_lr_to_hr(raw_lr, np.array(meta["registration"]["homography"]), (384, 512))
    np.testing.assert_array_equal(_png(full["syn000__full.lr.png"]), expected)
    raw_hr = cut_bar(read_image(small_raw / "syn000_20000.bmp")[0], BAR, small_raw)
    np.testing.assert_array_equal(_png(full["syn000__full.hr.png"]), raw_hr)


def test_registration_matches_truth(small_raw, small_data):
    check = check_truth(small_raw, small_data)
    print(f"corner error: max {check.max_px:.3f} median {check.median_px:.3f} HR px")
    assert len(check.errors_px) == 3 and check.rejected == []
    assert check.max_px <= 0.5


def test_16_bit_pairs_give_16_bit_samples(tmp_path):
    config = SynthConfig(width=384, height=288, bar_rows=16)
    synthesize(tmp_path / "raw", pairs=1, seed=3, config=config, image_format="tif16")
    build_dataset(tmp_path / "raw", tmp_path / "data", bar_row=288)
    members, _ = _members(tmp_path / "data" / "train-000000.tar")
    lr = _png(members["syn000__train.lr.png"])
    assert lr.dtype == np.uint16 and lr.shape == (288, 288) and lr.max() > 10000
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["bit_depths"] == [16]


# --- output folder -----------------------------------------------------------------------


def test_non_empty_output_refused_then_replaced_with_overwrite(small_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(small_raw, raw)
    (raw / "syn001_10000.bmp").unlink()
    (raw / "syn001_20000.bmp").unlink()
    (raw / "syn002_10000.bmp").unlink()
    (raw / "syn002_20000.bmp").unlink()
    before = _snapshot(raw)
    out = tmp_path / "data"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match=r"data: folder is not empty \(use --overwrite"):
        build_dataset(raw, out, bar_row=BAR)
    with pytest.raises(UserError, match=r"data: --overwrite replaces only a dataset"):
        build_dataset(raw, out, bar_row=BAR, overwrite=True)  # not ours: never deleted
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    out = tmp_path / "data2"
    build_dataset(raw, out, bar_row=BAR)
    (out / "extra.txt").write_text("inside the old dataset")
    build_dataset(raw, out, bar_row=BAR, overwrite=True)  # an old dataset is replaced
    assert not (out / "extra.txt").exists() and (out / "manifest.json").is_file()
    assert _snapshot(raw) == before  # sources never touched
    assert _no_staging_left(tmp_path) and not list(tmp_path.glob(".data*.old-*"))


def test_output_inside_the_raw_folder_refused(small_raw):
    with pytest.raises(UserError, match="overlaps the source folder"):
        build_dataset(small_raw, small_raw / "data", bar_row=BAR)
    with pytest.raises(UserError, match="overlaps the source folder"):
        build_dataset(small_raw, small_raw.parent, bar_row=BAR, overwrite=True)
    assert not (small_raw / "data").exists()


def test_interrupted_build_leaves_no_half_dataset_and_keeps_the_old_one(
    small_raw, tmp_path, monkeypatch
):
    out = tmp_path / "data"
    out.mkdir()
    (out / "manifest.json").write_text('{"format": "aeatrain-dataset"}')
    (out / "old.txt").write_text("previous dataset")
    real_register, calls = build_module.register, []

    def register_then_crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash on the second pair")
        return real_register(*args, **kwargs)

    monkeypatch.setattr(build_module, "register", register_then_crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_dataset(small_raw, out, bar_row=BAR, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "old.txt"]
    with pytest.raises(RuntimeError, match="simulated crash"):
        calls.clear()
        build_dataset(small_raw, tmp_path / "fresh", bar_row=BAR)
    assert not (tmp_path / "fresh").exists()
    assert _no_staging_left(tmp_path)


# --- bad raw inputs ----------------------------------------------------------------------


def _one_pair(small_raw, folder, name="syn000"):
    folder.mkdir(exist_ok=True)
    for mag in (10000, 20000):
        shutil.copy(small_raw / f"{name}_{mag}.bmp", folder / f"{name}_{mag}.bmp")


@pytest.mark.parametrize("damage", ["not an image", "truncated"])
def test_unreadable_image_stops_the_build_naming_the_file(small_raw, tmp_path, damage):
    raw = tmp_path / "raw"
    _one_pair(small_raw, raw, "syn000")
    _one_pair(small_raw, raw, "syn001")
    bad = raw / "syn001_20000.bmp"
    if damage == "not an image":
        bad.write_text("this is a text file, not a BMP")
    else:
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(UserError, match=r"syn001_20000\.bmp: not a readable image"):
        build_dataset(raw, tmp_path / "data", bar_row=BAR)
    assert not (tmp_path / "data").exists() and _no_staging_left(tmp_path)


def test_per_pair_problems_are_rejected_with_their_reasons(small_raw, tmp_path):
    raw = tmp_path / "raw"
    _one_pair(small_raw, raw, "syn000")
    lr8 = read_image(small_raw / "syn001_10000.bmp")[0]
    write_image(raw / "depth_10000.bmp", lr8)
    write_image(raw / "depth_20000.png", lr8.astype(np.uint16) * 257)
    write_image(raw / "tiny_10000.bmp", lr8)
    write_image(raw / "tiny_20000.bmp", lr8[:30, :40])
    rng = np.random.default_rng(0)
    flat = lambda: np.clip(rng.normal(100, 3, lr8.shape), 0, 255).astype(np.uint8)  # noqa: E731
    write_image(raw / "flat_10000.bmp", flat())
    write_image(raw / "flat_20000.bmp", flat())
    shutil.copy(small_raw / "syn001_10000.bmp", raw / "mixed_10000.bmp")
    shutil.copy(small_raw / "syn002_20000.bmp", raw / "mixed_20000.bmp")
    outcomes = build_dataset(raw, tmp_path / "data", bar_row=BAR)
    reasons = {o.name: o.record["reason"] for o in outcomes}
    assert reasons["syn000"] is None
    assert "different bit depth" in reasons["depth"] and "depth_20000.png" in reasons["depth"]
    assert "too small" in reasons["tiny"]
    assert "matches" in reasons["flat"]
    assert "consistent matches" in reasons["mixed"] or "low correlation" in reasons["mixed"]
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert sorted(manifest["pairs"]) == ["syn000"]
    assert manifest["rejected"] == {k: v for k, v in reasons.items() if v is not None}
    records = json.loads((tmp_path / "data" / "registration.json").read_text())
    assert {k for k, r in records.items() if r["status"] == "rejected"} == {
        "depth",
        "tiny",
        "flat",
        "mixed",
    }


def test_no_usable_pair_is_one_clear_error(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(1)
    for mag in (10000, 20000):
        write_image(
            raw / f"blank_{mag}.bmp",
            np.clip(rng.normal(90, 2, (300, 400)), 0, 255).astype(np.uint8),
        )
    with pytest.raises(UserError, match=r"raw: no usable pair, all 1 rejected \(blank: too few"):
        build_dataset(raw, tmp_path / "data", bar_row=None)
    assert not (tmp_path / "data").exists() and _no_staging_left(tmp_path)


def test_magnification_ratio_mismatch_between_pairs_names_the_folder(small_raw, tmp_path):
    raw = tmp_path / "raw"
    _one_pair(small_raw, raw)
    shutil.copy(small_raw / "syn001_10000.bmp", raw / "other_10000.bmp")
    shutil.copy(small_raw / "syn001_20000.bmp", raw / "other_30000.bmp")
    with pytest.raises(UserError, match="different magnification ratios"):
        build_dataset(raw, tmp_path / "data", bar_row=BAR)
    assert not (tmp_path / "data").exists()


def test_names_sharing_a_safe_spelling_keep_their_own_pixels(small_raw, tmp_path):
    """'a b' and 'a-b' used to share scratch files, QC picture and shard keys: one
    pair's pixels replaced the other's while the manifest listed both."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for source, name in (("syn000", "a b"), ("syn001", "a-b")):
        for mag in (10000, 20000):
            shutil.copy(small_raw / f"{source}_{mag}.bmp", raw / f"{name}_{mag}.bmp")
    outcomes = build_dataset(raw, tmp_path / "data", bar_row=BAR)
    assert [o.name for o in outcomes if o.ok] == ["a b", "a-b"]
    data = tmp_path / "data"
    assert sorted(p.name for p in (data / "qc").iterdir()) == ["a%20b.png", "a-b.png"]
    full, order = _members(data / "full-000000.tar")
    assert [n for n in order if n.endswith(".json")] == ["a%20b__full.json", "a-b__full.json"]
    for key, source in (("a%20b", "syn000"), ("a-b", "syn001")):
        assert json.loads(full[f"{key}__full.json"])["pair"] == unquote(key)
        raw_hr = cut_bar(read_image(small_raw / f"{source}_20000.bmp")[0], BAR, small_raw)
        np.testing.assert_array_equal(_png(full[f"{key}__full.hr.png"]), raw_hr)
