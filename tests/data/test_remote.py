"""Shards over HTTP (aeatrain/data/shardio.py): range reads through the index, staging into a
cache folder, and every failure one line naming the shard, against a real server on
127.0.0.1 (tests/http_range.py) that counts the bytes it sends."""

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aeatrain.data import loader, shardio
from aeatrain.data.format import DatasetError
from aeatrain.data.loader import train_loader
from aeatrain.data.manifest import load_manifest
from aeatrain.data.streams import full_images, test_tiles
from tests.datasets import make_dataset
from tests.http_range import RangeServer
from tests.train.helpers import DEBUG_CONFIG, TRAIN_SCRIPT, train_env

SETTINGS = {"crop_size": 32, "batch_size": 4, "seed": 3, "pool_size": 2}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Six pairs in one train shard; the server's root holds DATA."""
    root = tmp_path_factory.mktemp("www")
    make_dataset(root / "DATA", pairs=6, width=320, height=240)
    return root


@pytest.fixture
def own_served(tmp_path):
    make_dataset(tmp_path / "DATA", pairs=2, width=160, height=120)
    return tmp_path


def take(stream, n):
    batches = [next(stream) for _ in range(n)]
    stream.close()
    return batches


def same_batches(first, second):
    return all(
        a["lr"].equal(b["lr"]) and a["hr"].equal(b["hr"]) and a["pair"] == b["pair"]
        for a, b in zip(first, second, strict=True)
    )


def count_decoded(monkeypatch) -> list[int]:
    """Bytes of the PNG members the loader decodes, as it decodes them."""
    decoded, decode = [], loader.decode_pair

    def counting(url, key, files):
        decoded.append(len(files["lr.png"]) + len(files["hr.png"]))
        return decode(url, key, files)

    monkeypatch.setattr(loader, "decode_pair", counting)
    return decoded


def test_training_over_http_reads_about_what_it_decodes(served, monkeypatch):
    local = take(train_loader(served / "DATA", **SETTINGS), 6)
    decoded = count_decoded(monkeypatch)
    with RangeServer(served) as server:
        remote = take(train_loader(f"{server.url}/DATA", **SETTINGS), 6)
    assert same_batches(local, remote)
    shards = sum(p.stat().st_size for p in (served / "DATA").glob("train-*.tar"))
    assert 0 < sum(decoded) < shards / 2  # the pools used some of the regions, not all
    assert server.bytes_sent <= 1.5 * sum(decoded), (server.bytes_sent, sum(decoded))
    assert server.sent("test-") == server.sent("full-") == 0  # other splits untouched


def test_evaluation_streams_over_http_read_only_their_share(served):
    with RangeServer(served) as server:
        url = f"{server.url}/DATA"
        remote = [(t.pair, t.tile_id, t.lr.sum()) for t in test_tiles(url, rank=1, world_size=2)]
        assert server.sent("test-000000.tar") == 9  # one range request per tile of rank 1
    local = [
        (t.pair, t.tile_id, t.lr.sum()) for t in test_tiles(served / "DATA", rank=1, world_size=2)
    ]
    assert remote == local and len(local) == 9


def test_a_cache_folder_stages_each_shard_once_for_all_processes(served, tmp_path):
    cache = tmp_path / "cache"
    local = take(train_loader(served / "DATA", **SETTINGS), 4)
    refused = pytest.raises(
        DatasetError,
        match=r"ignores range requests \(HTTP 200\); stage each shard whole into a node-local "
        r"folder: train\.py --data\.cache_dir DIR, evaluate --cache-dir DIR",
    )
    with RangeServer(served, ranges=False) as server, refused:  # even a server without ranges
        next(train_loader(f"{server.url}/DATA", **SETTINGS))
    with RangeServer(served, ranges=False) as server:
        url = f"{server.url}/DATA"
        for _ in range(2):  # a second process on the node finds the copy
            shardio._staged.clear()
            assert same_batches(local, take(train_loader(url, **SETTINGS, cache_dir=str(cache)), 4))
    assert server.sent("train-000000.tar") == 1
    assert [p.name.split("-", 1)[1] for p in cache.glob("*.tar")] == ["train-000000.tar"]
    (copy,) = cache.glob("*.tar")
    sound = copy.read_bytes()
    for damaged in (sound[:1000] + bytes([sound[1000] ^ 1]) + sound[1001:], sound[:-512]):
        copy.write_bytes(damaged)  # a bit flipped, then a truncated copy: fetched again
        shardio._staged.clear()
        with RangeServer(served, ranges=False) as server:
            url = f"{server.url}/DATA"
            assert same_batches(local, take(train_loader(url, **SETTINGS, cache_dir=str(cache)), 4))
        assert server.sent("train-000000.tar") == 1 and copy.read_bytes() == sound


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_or_silent_server_is_named_within_a_timeout(monkeypatch):
    url = f"http://127.0.0.1:{_closed_port()}/DATA"
    with pytest.raises(DatasetError, match=f"{url}/manifest.json: cannot reach"):
        load_manifest(url)
    monkeypatch.setattr(shardio, "TIMEOUT_SECONDS", 0.5)
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        start = time.monotonic()
        with pytest.raises(DatasetError, match=r"cannot reach .*timed out"):
            load_manifest(f"http://127.0.0.1:{silent.getsockname()[1]}/DATA")
        assert time.monotonic() - start < 5


def corrupt_member(root: Path, split: str, sample: int, ext: str) -> Path:
    index = json.loads((root / f"{split}-000000.index.json").read_text())
    member = index["samples"][sample]["members"][ext]
    shard = root / f"{split}-000000.tar"
    content = bytearray(shard.read_bytes())
    content[member["offset"] + member["size"] // 2] ^= 0x10
    shard.write_bytes(bytes(content))
    return shard


def test_bad_remote_shards_are_one_line_naming_the_shard(own_served):
    root = own_served / "DATA"
    with RangeServer(own_served) as server:
        url = f"{server.url}/DATA"
        shutil.copy(root / "test-000000.tar", own_served / "saved.tar")
        corrupt_member(root, "test", 4, "hr.png")
        with pytest.raises(DatasetError) as caught:
            list(test_tiles(url))
        assert str(caught.value).startswith(
            f"{url}/test-000000.tar: sample pair01__test1: hr.png differs from the shard's index"
        )
        (root / "test-000000.tar").write_bytes((own_served / "saved.tar").read_bytes() + bytes(512))
        with pytest.raises(
            DatasetError, match=r"test-000000\.tar: the shard is \d+ bytes, its index says"
        ):
            list(test_tiles(url))
        (root / "full-000000.index.json").unlink()
        with pytest.raises(DatasetError) as caught:
            list(full_images(url))
        assert str(caught.value).startswith(f"{url}/full-000000.tar: its index cannot be read")
        assert "HTTP 404" in str(caught.value) and "\n" not in str(caught.value)


def test_the_trainer_refuses_an_unreachable_data_url_in_one_line_exit_2(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/DATA"
    done = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), "--config", str(DEBUG_CONFIG), "--check",
         "--data.root", url, "--train.run_dir", str(tmp_path / "run")],
        env=train_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {url}/manifest.json: cannot reach ([Errno 111] Connection refused)"
    ]
