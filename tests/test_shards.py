import io
import json
import tarfile
from urllib.parse import unquote

import numpy as np
import pytest

from data_prep.shards import (
    Sample,
    build_manifest,
    pair_key,
    sample_key,
    sha256_file,
    write_split,
)


def _sample(name, region, value, dtype=np.uint8):
    image = np.full((8, 12), value, dtype)
    return Sample(name, region, image, image + 1, {"pair": name, "region_id": region})


def test_keys_are_safe_for_webdataset_unique_and_reversible():
    assert sample_key("Au.np 3/b", "test1") == "Au%2Enp%203%2Fb__test1"
    assert sample_key("syn_01-a", "full") == "syn_01-a__full"  # plain names keep their keys
    names = ["α-Fe2O3", "β-Fe2O3", "--Fe2O3", "a b", "a-b", "a%20b", "a.b", "a/b", "Ω"]
    keys = [pair_key(n) for n in names]
    assert len(set(keys)) == len(names)  # these all shared a key before
    assert all(
        set(k) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-%")
        for k in keys
    )
    assert [unquote(k) for k in keys] == names


def test_write_split_rolls_shards_and_counts(tmp_path):
    samples = [_sample(f"p{i}", "train", i) for i in range(5)]
    infos = write_split(tmp_path, "train", samples, max_samples_per_shard=2)
    assert [(s.file, s.samples) for s in infos] == [
        ("train-000000.tar", 2),
        ("train-000001.tar", 2),
        ("train-000002.tar", 1),
    ]
    assert infos[0].sha256 == sha256_file(tmp_path / "train-000000.tar")
    with tarfile.open(tmp_path / "train-000001.tar") as tar:
        names = sorted(tar.getnames())
        meta = json.load(tar.extractfile("p2__train.json"))
    assert names == [
        "p2__train.hr.png",
        "p2__train.json",
        "p2__train.lr.png",
        "p3__train.hr.png",
        "p3__train.json",
        "p3__train.lr.png",
    ]
    assert meta == {"pair": "p2", "region_id": "train"}


def test_png_keeps_16_bit(tmp_path):
    import cv2

    write_split(tmp_path, "test", [_sample("a", "test0", 40000, np.uint16)])
    with tarfile.open(tmp_path / "test-000000.tar") as tar:
        data = tar.extractfile("a__test0.lr.png").read()
    image = cv2.imdecode(np.frombuffer(io.BytesIO(data).getvalue(), np.uint8), cv2.IMREAD_UNCHANGED)
    assert image.dtype == np.uint16 and int(image[0, 0]) == 40000


def test_mismatched_lr_hr_is_a_bug(tmp_path):
    bad = Sample("a", "train", np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match="differ"):
        write_split(tmp_path, "train", [bad])


def test_manifest_sums_samples(tmp_path):
    infos = write_split(tmp_path, "train", [_sample("a", "train", 1)])
    manifest = build_manifest(
        shards={"train": infos},
        pairs={"a": {"bit_depth": 8}},
        rejected={},
        protocol={"name": "paper-split-v1"},
        scale=2,
        bar_row=944,
        command="x",
    )
    assert manifest["splits"]["train"]["samples"] == 1
    assert manifest["bit_depths"] == [8] and manifest["format_version"] == 1
