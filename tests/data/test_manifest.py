"""aeatrain/data/manifest.py: the manifest's checks, what it exposes, verification."""

import json
from pathlib import Path

import pytest

from aeatrain.data.format import DatasetError, Region, sha256_file
from aeatrain.data.loader import train_loader
from aeatrain.data.manifest import check_pairs, load_manifest
from tests.datasets import make_dataset


def test_manifest_exposes_what_the_trainer_needs(plain):
    manifest = load_manifest(plain)
    assert manifest.root == str(plain) and manifest.path == str(plain / "manifest.json")
    assert manifest.scale == 2.0 and manifest.bit_depths == [8]
    assert manifest.pair_names == ["pair00", "pair01", "pair02"]
    assert manifest.pairs["pair01"].train_region == Region(x0=0, y0=0, x1=240, y1=240)
    assert [Path(u).name for u in manifest.shard_urls("train")] == [
        "train-000000.tar",
        "train-000001.tar",
    ]
    assert (manifest.samples("train"), manifest.samples("test"), manifest.samples("full")) == (
        3,
        9,
        3,
    )
    assert manifest.sha256 == sha256_file(plain / "manifest.json")
    assert load_manifest(plain / "manifest.json").sha256 == manifest.sha256


@pytest.fixture
def own_copy(tmp_path):
    return make_dataset(tmp_path / "DATA", pairs=2, width=160, height=120)


def edit_manifest(root: Path, **changes) -> Path:
    path = root / "manifest.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))
    return path


def test_missing_shard_is_named(own_copy):
    (own_copy / "test-000000.tar").unlink()
    with pytest.raises(DatasetError, match=r"test-000000\.tar: test shard .* is missing"):
        load_manifest(own_copy)


def test_a_changed_shard_is_found_by_verify_and_by_the_reader(own_copy):
    shard = own_copy / "train-000000.tar"
    content = bytearray(shard.read_bytes())
    index = json.loads((own_copy / "train-000000.index.json").read_text())
    content[index["samples"][0]["members"]["hr.png"]["offset"] + 100] ^= 0xFF  # pair00's HR
    shard.write_bytes(bytes(content))
    with pytest.raises(DatasetError, match=r"train-000000\.tar: sha256 differs"):
        load_manifest(own_copy, verify_checksums=True)
    assert load_manifest(own_copy).pair_names == ["pair00", "pair01"]  # hashes nothing
    with pytest.raises(DatasetError) as caught:
        next(train_loader(own_copy, crop_size=16, batch_size=1, seed=0))
    assert str(caught.value) == (
        f"{shard}: sample pair00__train: hr.png differs from the shard's index (corrupt "
        f"shard or stale index; run python -m data_prep verify)"
    )


def test_a_missing_or_foreign_index_is_named(own_copy):
    index = own_copy / "train-000000.index.json"
    saved = index.read_bytes()
    index.unlink()
    with pytest.raises(DatasetError, match=r"train-000000\.index\.json: train index .* missing"):
        load_manifest(own_copy)
    index.write_bytes(saved)
    shard = own_copy / "train-000000.tar"
    shard.write_bytes(shard.read_bytes() + bytes(512))  # another shard under the same name
    with pytest.raises(DatasetError) as caught:
        next(train_loader(own_copy, crop_size=16, batch_size=1, seed=0))
    assert str(caught.value).startswith(f"{shard}: the shard is {len(shard.read_bytes())} bytes")
    assert "the index does not match its shard" in str(caught.value)


def test_shard_entry_without_sha256_is_named(own_copy):
    path = own_copy / "manifest.json"
    raw = json.loads(path.read_text())
    del raw["splits"]["test"]["shards"][0]["sha256"]  # was a KeyError traceback
    path.write_text(json.dumps(raw))
    with pytest.raises(
        DatasetError, match=r"manifest\.json: splits\.test\.shards\.0\.sha256: Field required"
    ):
        load_manifest(own_copy)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"protocol": {"name": "random-split"}}, "protocol.name is 'random-split'"),
        ({"format": "something-else"}, "format is 'something-else'"),
        ({"format_version": 3}, "format_version is 3"),
        ({"format_version": 1}, "format_version 1 has no shard indexes; add them once with"),
        ({"bit_depths": "8"}, r"bit_depths: Input should be a valid list"),
    ],
)
def test_wrong_manifest_fields_name_the_manifest(own_copy, changes, message):
    path = edit_manifest(own_copy, **changes)
    with pytest.raises(DatasetError, match=message) as caught:
        load_manifest(own_copy)
    assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)


def test_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="no such manifest"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"manifest\.json: not valid JSON"):
        train_loader(tmp_path, crop_size=16, batch_size=1, seed=0)


def test_pair_names_are_checked_in_one_place_and_one_line():
    """The loader, the evaluation streams and evaluate's and lbnlm's --pairs all use it."""
    known = [f"p{k}" for k in range(8)]
    assert check_pairs(None, known, "M") == known
    assert check_pairs("p2", known, "M") == ["p2"]
    assert check_pairs(["p3", "p1", "p3"], known, "M") == ["p1", "p3"]
    with pytest.raises(DatasetError) as caught:
        check_pairs(["zz", "p1", "aa"], known, "/d/manifest.json", option="--pairs")
    assert str(caught.value) == (
        "--pairs: no pair named 'aa', 'zz' in /d/manifest.json (it has 8: p0, p1, p2, p3, p4, "
        "p5, ...)"
    )
