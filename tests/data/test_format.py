"""The dataset format module (aeatrain/data/format.py) and the commands built on it:
``data_prep verify`` (every byte checked once), ``data_prep index`` (old datasets), and
readers tolerating keys a newer writer added."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aeatrain.data.format import (
    DatasetError,
    Manifest,
    SampleMeta,
    ShardIndex,
    sha256_file,
    split_member_name,
)
from aeatrain.data.manifest import load_manifest
from aeatrain.data.streams import full_images, test_tiles
from aeatrain.errors import UserError
from data_prep.__main__ import main as data_prep
from tests.datasets import make_dataset


@pytest.fixture
def dataset(tmp_path):
    return make_dataset(tmp_path / "DATA", pairs=2, width=160, height=120)


def test_member_names_split_as_webdataset_does():
    assert split_member_name("a/p-1__test0.lr.png") == ("a/p-1__test0", "lr.png")
    assert split_member_name("p__full.JSON") == ("p__full", "json")
    assert split_member_name("README") == (None, "")


def test_newer_keys_are_kept_by_every_open_document(dataset):
    raw = json.loads((dataset / "manifest.json").read_text())
    raw["pairs"]["pair00"]["stage_tilt_deg"] = 2.5  # pixel_size_nm is a field by now
    raw["acquisition"] = {"vendor": "FEI"}
    manifest = Manifest.model_validate(raw)
    assert manifest.pairs["pair00"].model_extra == {"stage_tilt_deg": 2.5}
    assert manifest.as_dict() == raw  # nothing lost on the way through
    meta = next(iter(full_images(dataset))).meta
    typed = SampleMeta.model_validate({**meta, "vendor": {"detector": "TLD"}})
    assert typed.as_dict()["vendor"] == {"detector": "TLD"}
    with pytest.raises(ValueError, match="extra"):  # the index is ours alone: strict
        ShardIndex.model_validate(
            {**json.loads((dataset / "train-000000.index.json").read_text()), "x": 1}
        )


def test_verify_passes_a_sound_dataset_and_names_a_corrupt_member(dataset, capsys):
    assert data_prep(["verify", str(dataset), "--workers", "2"]) == 0
    assert "verify: ok: 3 shards, 10 samples" in capsys.readouterr().out
    index = json.loads((dataset / "test-000000.index.json").read_text())
    member = index["samples"][4]["members"]["lr.png"]
    shard = dataset / "test-000000.tar"
    content = bytearray(shard.read_bytes())
    content[member["offset"] + 50] ^= 0x01
    shard.write_bytes(bytes(content))
    with pytest.raises(UserError, match="1 of 3 shards failed verify"):
        data_prep(["verify", str(dataset)])
    assert f"verify: {shard}: sha256 differs from the manifest" in capsys.readouterr().err


def test_index_upgrades_a_version_1_dataset_to_the_same_bytes(dataset, capsys):
    manifest_path = dataset / "manifest.json"
    current = manifest_path.read_text()
    old = json.loads(current)
    old["format_version"] = 1
    for split in old["splits"].values():
        for shard in split["shards"]:
            (dataset / shard.pop("index")).unlink()
            shard.pop("index_sha256")
    manifest_path.write_text(json.dumps(old))
    with pytest.raises(DatasetError, match="format_version 1 has no shard indexes"):
        load_manifest(dataset)
    assert data_prep(["index", str(dataset)]) == 0
    assert "wrote 3 shard indexes" in capsys.readouterr().out
    assert json.loads(manifest_path.read_text()) == json.loads(current)  # as a fresh build
    assert data_prep(["index", str(dataset)]) == 0  # twice: nothing to do
    assert "already" in capsys.readouterr().out
    assert [t.pair for t in test_tiles(dataset)] == ["pair00"] * 3 + ["pair01"] * 3


def _tamper_index(dataset, split: str, change) -> None:
    """Apply ``change`` to a split's index and fix the manifest's hash (and counts) up."""
    path = dataset / f"{split}-000000.index.json"
    index = json.loads(path.read_text())
    change(index["samples"])
    path.write_text(json.dumps(index))
    manifest_path = dataset / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["splits"][split]
    entry["samples"] = entry["shards"][0]["samples"] = len(index["samples"])
    entry["shards"][0]["index_sha256"] = sha256_file(path)
    manifest_path.write_text(json.dumps(manifest))


def _twice(samples):
    samples[1] = samples[0]  # sample 0 listed twice, sample 1 not at all


def _dropped(samples):
    del samples[1]


def _shared(samples):
    samples[1]["members"]["lr.png"] = samples[0]["members"]["lr.png"]  # hash fits too


def _huge(samples):
    samples[0]["members"]["lr.png"]["size"] = 10**12


_LEFT_OUT = r"the full split's indexes hold no sample of pair 'pair01'"


@pytest.mark.parametrize(
    ("split", "change", "problem", "loading"),
    [
        ("test", _twice, r"sample pair00__test0 is listed twice", True),
        ("test", _dropped, r"test-000000\.tar: sample pair00__test1 is missing from its", None),
        ("full", _dropped, r"full-000000\.tar: sample pair01__full is missing from its", _LEFT_OUT),
        ("test", _shared, r"members pair00__test0\.lr\.png and pair00__test1\.lr\.png share", True),
        ("test", _huge, r"lr\.png ends at byte 10000000\d+, past the shard's \d+ bytes", True),
    ],
    ids=["key-twice", "tile-missing", "pair-missing", "bytes-shared", "size-1e12"],
)  # fmt: skip
def test_verify_refuses_an_index_that_misplaces_samples(
    dataset, capsys, split, change, problem, loading
):
    _tamper_index(dataset, split, change)
    with pytest.raises(UserError, match="1 of 3 shards failed verify"):
        data_prep(["verify", str(dataset)])
    assert re.search(problem, capsys.readouterr().err)
    if loading is not None:  # a test tile left out: only verify (reading the tar) sees it
        read = test_tiles if split == "test" else full_images
        with pytest.raises(DatasetError, match=problem if loading is True else loading):
            list(read(dataset))


def test_a_failed_index_writes_no_index_file(dataset):
    manifest_path = dataset / "manifest.json"
    old = json.loads(manifest_path.read_text())
    old["format_version"] = 1
    for split in old["splits"].values():
        for shard in split["shards"]:
            (dataset / shard.pop("index")).unlink()
            shard.pop("index_sha256")
    old["splits"]["full"]["shards"][0]["sha256"] = "0" * 64  # the last shard fails
    manifest_path.write_text(json.dumps(old))
    before = manifest_path.read_bytes()
    with pytest.raises(UserError, match=r"full-000000\.tar: sha256 differs"):
        data_prep(["index", str(dataset)])
    assert sorted(dataset.glob("*index.json")) == [] and manifest_path.read_bytes() == before


def test_the_format_and_manifest_modules_import_no_torch():
    """data_prep's worker processes import the format, the run folder the manifest: light."""
    code = (
        "import sys, aeatrain.data.format, aeatrain.data.manifest\n"
        "print(sorted(m for m in ('torch', 'cv2', 'webdataset') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
