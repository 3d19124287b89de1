"""aeatrain/data/loader.py (the training crop stream) and aeatrain/data/sources.py.

Fixtures are tiny DATA folders from tests/datasets.py (tests/data/conftest.py). Where a
test must know what every pixel holds, it uses coordinate-coded images
(tests.datasets.coded_pair), so a crop tells where it was cut from, from which pair, and
whether LR and HR match.
"""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tarfile
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from aeatrain.data import d4, loader
from aeatrain.data.format import DatasetError
from aeatrain.data.loader import train_loader
from aeatrain.data.manifest import load_manifest
from aeatrain.data.sources import pair_names
from aeatrain.data.streams import test_tiles
from data_prep import shards
from tests import datasets
from tests.datasets import coded_pair, make_dataset, write_dataset


def take(stream, n):
    return [next(stream) for _ in range(n)]


def assert_same_batches(first, second):
    assert [b["step"] for b in first] == [b["step"] for b in second]
    for a, b in zip(first, second, strict=True):
        assert a["pair"] == b["pair"]
        assert torch.equal(a["crop"], b["crop"])
        assert torch.equal(a["lr"], b["lr"]) and torch.equal(a["hr"], b["hr"])


def check_coded_crops(batch):
    """Every crop is where batch["crop"] says, from the pair it names, LR matching HR."""
    height, width = batch["hr"].shape[-2:]
    for i, name in enumerate(batch["pair"]):
        x0, y0, op = (int(v) for v in batch["crop"][i])
        _, hr_full = coded_pair(int(name[-2:]), 240, 320)
        lr = np.rint(batch["lr"][i, 0].numpy() * 65535).astype(np.int64)
        hr = np.rint(batch["hr"][i, 0].numpy() * 65535).astype(np.int64)
        source_hw = (width, height) if op % 2 else (height, width)
        want = hr_full[y0 : y0 + source_hw[0], x0 : x0 + source_hw[1]]
        np.testing.assert_array_equal(hr, d4.transform(want, op))
        np.testing.assert_array_equal(d4.transform(hr, d4.inverse(op)), want)
        np.testing.assert_array_equal(lr + hr, 65535)  # LR cut at the same place as HR


# --------------------------------------------------------------------------- training stream


def test_crops_are_paired_and_where_they_say(coded):
    batches = take(train_loader(coded, crop_size=64, batch_size=6, seed=3), 5)
    for batch in batches:
        assert batch["lr"].shape == (6, 1, 64, 64) and batch["lr"].dtype == torch.float32
        check_coded_crops(batch)
    assert [b["step"] for b in batches] == [0, 1, 2, 3, 4]
    origins = {tuple(c[:2].tolist()) for b in batches for c in b["crop"]}
    assert len(origins) >= 25  # random places, not a fixed one
    assert {name for b in batches for name in b["pair"]} == {"pair00", "pair01", "pair02"}


def test_augmented_crops_stay_paired_and_use_all_ops(coded):
    batches = take(train_loader(coded, crop_size=32, batch_size=8, seed=1, augment=True), 6)
    for batch in batches:
        check_coded_crops(batch)
    ops = [int(c[2]) for b in batches for c in b["crop"]]
    assert set(ops) == set(range(8))


def test_resume_and_workers_give_the_same_batches(coded):
    settings = {"crop_size": 32, "batch_size": 4, "seed": 7, "augment": True, "pool_size": 3}
    settings["crops_per_region"] = 4  # a new pool every 3 steps: resume inside a pool
    straight = take(train_loader(coded, **settings), 12)
    resumed = take(train_loader(coded, start_step=5, **settings), 7)
    assert_same_batches(straight[5:], resumed)
    with_workers = take(train_loader(coded, start_step=5, num_workers=2, **settings), 7)
    assert_same_batches(straight[5:], with_workers)
    other_seed = next(train_loader(coded, **{**settings, "seed": 8}))
    assert not torch.equal(other_seed["crop"], straight[0]["crop"])


def test_ranks_draw_differently(coded):
    rank0 = next(train_loader(coded, crop_size=32, batch_size=4, seed=0, rank=0, world_size=2))
    rank1 = next(train_loader(coded, crop_size=32, batch_size=4, seed=0, rank=1, world_size=2))
    assert not torch.equal(rank0["lr"], rank1["lr"])


def test_each_decoded_region_serves_crops_per_region_crops(coded):
    """Pool epochs: P = pool_size * crops_per_region / batch steps share one set of regions."""
    stream = train_loader(
        coded, crop_size=32, batch_size=4, seed=0, pool_size=2, crops_per_region=6
    )
    batches = take(stream, 6)  # P = 3 steps per pool
    for first in (0, 3):
        names = [n for b in batches[first : first + 3] for n in b["pair"]]
        assert len(set(names)) <= 2
        counts = sorted(names.count(n) for n in set(names))
        assert sum(counts) == 12 and counts in ([12], [6, 6])


def test_the_cache_saves_decodes_and_changes_no_pixel(coded, monkeypatch):
    decoded = []
    real = loader._decode_regions

    def counting(regions, wanted):
        decoded.append(len(wanted))
        return real(regions, wanted)

    monkeypatch.setattr(loader, "_decode_regions", counting)
    settings = {"crop_size": 32, "batch_size": 4, "seed": 0, "pool_size": 2, "crops_per_region": 2}
    cached = take(train_loader(coded, **settings), 12)  # a new pool of 2 draws every step
    assert sum(decoded) == 3  # each of the 3 regions decoded once, then served from memory
    decoded.clear()
    uncached = take(train_loader(coded, cache_mib=0, **settings), 12)
    assert sum(decoded) >= 12  # every pool decodes its 1 or 2 distinct regions
    assert_same_batches(cached, uncached)


def test_default_crops_per_region_uses_a_decode_about_once():
    region = [SimpleNamespace(height=944, width=960)]
    assert loader.default_crops_per_region(region, (256, 256)) == 14
    assert loader.default_crops_per_region(region, (512, 512)) == 3
    assert loader.default_crops_per_region(region, (944, 960)) == 1
    assert loader.default_crops_per_region(region, (32, 32)) == 16  # capped


def test_whole_region_crops(coded):
    batch = next(train_loader(coded, crop_size=None, batch_size=2, seed=0, augment=True))
    assert batch["hr"].shape == (2, 1, 240, 240)
    assert batch["crop"][:, :2].abs().sum() == 0
    check_coded_crops(batch)


def test_whole_region_crops_of_non_square_regions_keep_their_shape(tmp_path):
    root = make_dataset(tmp_path / "D", pairs=2, width=320, height=202)  # regions 240 x 202
    stream = train_loader(
        root, crop_size=None, batch_size=4, seed=0, augment=True, input_multiple=4
    )
    batches = take(stream, 3)
    for batch in batches:
        assert batch["lr"].shape == (4, 1, 200, 240)  # rows floored to a multiple of 4
    any_size = next(train_loader(root, crop_size=None, batch_size=1, seed=0, input_multiple=1))
    assert any_size["lr"].shape == (1, 1, 202, 240)  # a model of input multiple 1: all rows
    assert {int(c[2]) for b in batches for c in b["crop"]} <= {0, 2, 4, 6}


def test_pairs_filter(coded):
    batches = take(train_loader(coded, crop_size=32, batch_size=4, seed=0, pairs=["pair01"]), 3)
    assert {n for b in batches for n in b["pair"]} == {"pair01"}
    for batch in batches:
        check_coded_crops(batch)
    with pytest.raises(DatasetError, match="no pair named 'nope'"):
        train_loader(coded, crop_size=32, batch_size=4, seed=0, pairs=["pair01", "nope"])


@pytest.mark.parametrize(
    ("size", "message"), [(30, "crop_size 30 is not"), (256, "crop_size 256 is larger")]
)
def test_bad_crop_sizes_are_named(coded, size, message):
    with pytest.raises(DatasetError, match=message):
        train_loader(coded, crop_size=size, batch_size=4, seed=0, input_multiple=4)


def test_8_and_16_bit_pairs_scale_by_their_own_maximum(tmp_path):
    images = {
        "eight": (np.full((120, 160), 255, np.uint8), np.full((120, 160), 51, np.uint8)),
        "sixteen": (np.full((120, 160), 65535, np.uint16), np.full((120, 160), 13107, np.uint16)),
    }
    root = write_dataset(tmp_path / "D", images)
    assert load_manifest(root).bit_depths == [8, 16]
    batches = take(train_loader(root, crop_size=16, batch_size=8, seed=0), 2)
    assert {n for b in batches for n in b["pair"]} == {"eight", "sixteen"}
    for batch in batches:
        assert torch.all(batch["lr"] == 1.0)
        assert torch.allclose(batch["hr"], torch.tensor(0.2), rtol=0, atol=1e-7)


def test_corrupt_sample_is_one_line_naming_shard_and_key(tmp_path):
    shard = tmp_path / "bad-000000.tar"
    box = {"x0": 0, "y0": 0, "x1": 16, "y1": 16}
    meta = datasets._sample_meta("p", "train", box, np.zeros((16, 16), np.uint8), 2.0)
    with tarfile.open(shard, "w") as tar:
        for name, payload in [
            ("p__train.hr.png", shards.encode_png(np.zeros((16, 16), np.uint8))),
            ("p__train.json", json.dumps(meta).encode()),
            ("p__train.lr.png", b"\x89PNG truncated"),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, __import__("io").BytesIO(payload))
    for workers in (0, 1):
        with pytest.raises(DatasetError) as caught:
            next(train_loader(str(shard), crop_size=8, batch_size=1, seed=0, num_workers=workers))
        assert (
            str(caught.value)
            == f"{shard}: sample p__train: lr.png is not an 8/16-bit greyscale PNG"
        )


# --------------------------------------------------------------------------- sources


def test_pipe_and_brace_urls_stream_the_same_batches(plain):
    settings = {"crop_size": 32, "batch_size": 4, "seed": 2, "augment": True}
    local = take(train_loader(plain, **settings), 3)
    piped = [f"pipe:cat {url}" for url in load_manifest(plain).shard_urls("train")]
    assert_same_batches(local, take(train_loader(piped, **settings), 3))
    braces = str(plain / "train-{000000..000001}.tar")
    assert_same_batches(local, take(train_loader(braces, **settings), 3))
    assert pair_names(piped) == pair_names(plain) == ["pair00", "pair01", "pair02"]
    tiles = [
        (t.pair, t.tile_id) for t in test_tiles(f"pipe:cat {plain}/test-{{000000..000004}}.tar")
    ]
    assert tiles == [(t.pair, t.tile_id) for t in test_tiles(plain)]


def test_failing_pipe_is_named(tmp_path):
    url = f"pipe:cat {tmp_path}/absent.tar"
    with pytest.raises(DatasetError, match=f"{url}: cannot read shard"):
        pair_names([url])


def test_a_manifest_object_is_a_source(plain):
    manifest = load_manifest(plain)
    settings = {"crop_size": 32, "batch_size": 2, "seed": 0}
    assert_same_batches(
        take(train_loader(manifest, **settings), 2), take(train_loader(plain, **settings), 2)
    )


# --------------------------------------------------------------------------- processes


def test_workers_leave_signals_to_the_trainer(plain):
    """Worker threads start no process, and a signal still reaches the main thread's handler.

    SLURM signals every process of the job ahead of preemption; the trainer's handler
    (main thread) must run while the loader's workers are busy.
    """
    caught = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: caught.append(signum))
    before = set(threading.enumerate())  # other tests' loaders may still be winding down
    try:
        stream = train_loader(plain, crop_size=32, batch_size=2, seed=0, num_workers=2)
        next(stream)
        assert multiprocessing.active_children() == []
        mine = [t for t in threading.enumerate() if t not in before]
        assert sorted(t.name for t in mine) == ["aeatrain-loader-0", "aeatrain-loader-1"]
        os.kill(os.getpid(), signal.SIGUSR1)
        next(stream)
        assert caught == [signal.SIGUSR1]
        stream.close()  # stops the workers
        for thread in mine:
            thread.join(timeout=10)
            assert not thread.is_alive(), "loader thread still running after close()"
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_closing_the_stream_stops_and_joins_its_worker_threads(plain):
    import threading

    stream = train_loader(plain, crop_size=32, batch_size=2, seed=0, num_workers=2)
    next(stream)
    assert any(t.name.startswith("aeatrain-loader") for t in threading.enumerate())
    stream.close()
    assert not any(t.name.startswith("aeatrain-loader") for t in threading.enumerate())


def test_a_process_with_loader_workers_exits(plain):
    """Workers still making batches must not hold up the end of the process."""
    code = (
        "import sys\n"
        "from aeatrain.data.loader import train_loader\n"
        f"stream = train_loader({str(plain)!r}, crop_size=32, batch_size=2, seed=0,\n"
        "                      num_workers=2)\n"
        "print(next(stream)['step'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0 and done.stdout.strip() == "0", done.stderr
