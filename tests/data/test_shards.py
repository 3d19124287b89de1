import io
import json
import tarfile
from urllib.parse import unquote

import numpy as np
import pytest

from aeatrain.data.format import FORMAT_VERSION, ShardIndex, pair_key, sha256_file
from data_prep.shards import Sample, build_manifest, sample_key, write_split


def _meta(name, region):
    box = {"x0": 0, "y0": 0, "x1": 12, "y1": 8}
    return {
        "pair": name,
        "region_id": region,
        "split": "train" if region == "train" else "test",
        "region": box,
        "image_size": {"width": 12, "height": 8},
        "bit_depth": 8,
        "scale": 2.0,
        "registration": {},
        "sources": {},
        "stage_tilt_deg": 3.5,  # a key a newer writer added: kept, not refused
    }


def _sample(name, region, value, dtype=np.uint8):
    image = np.full((8, 12), value, dtype)
    return Sample(name, region, image, image + 1, _meta(name, region))


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
    assert meta == _meta("p2", "train")


def test_index_gives_every_member_where_the_tar_has_it(tmp_path):
    infos = write_split(tmp_path, "train", [_sample(f"p{i}", "train", i) for i in range(3)])
    assert infos[0].index == "train-000000.index.json"
    index_path = tmp_path / infos[0].index
    assert infos[0].index_sha256 == sha256_file(index_path)
    index = ShardIndex.model_validate_json(index_path.read_text())
    shard = (tmp_path / "train-000000.tar").read_bytes()
    assert (index.shard_bytes, index.shard_sha256) == (len(shard), infos[0].sha256)
    assert [s.key for s in index.samples] == ["p0__train", "p1__train", "p2__train"]
    with tarfile.open(tmp_path / "train-000000.tar") as tar:
        for sample in index.samples:
            assert (sample.pair, sample.region.width, sample.region.height) == (
                sample.key.split("__")[0],
                12,
                8,
            )
            for ext, member in sample.members.items():
                data = tar.extractfile(f"{sample.key}.{ext}").read()
                assert shard[member.offset : member.offset + member.size] == data


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
    incomplete = _sample("a", "train", 1)
    del incomplete.meta["region"]
    with pytest.raises(ValueError, match="region"):
        write_split(tmp_path, "train", [incomplete])


def test_manifest_sums_samples(tmp_path):
    infos = write_split(tmp_path, "train", [_sample("a", "train", 1)])
    manifest = build_manifest(
        shards={"train": infos},
        pairs={
            "a": {
                "width": 12,
                "height": 8,
                "bit_depth": 8,
                "train_region": _meta("a", "train")["region"],
                "stage_tilt_deg": 3.5,
            }
        },
        rejected={},
        protocol={"name": "paper-split-v1"},
        scale=2,
        bar_row=944,
        command="x",
    )
    assert manifest["splits"]["train"]["samples"] == 1
    assert manifest["bit_depths"] == [8] and manifest["format_version"] == FORMAT_VERSION == 2
    assert manifest["pairs"]["a"]["stage_tilt_deg"] == 3.5


def test_a_key_held_twice_is_refused_not_merged(tmp_path):
    """Old builds gave 'a b' and 'a-b' one key: one pair's members replaced the other's."""
    twins = [_sample("a", "train", 1), _sample("a", "train", 2)]
    with pytest.raises(ValueError, match=r"sample a__train holds .* twice"):
        write_split(tmp_path, "train", twins)
