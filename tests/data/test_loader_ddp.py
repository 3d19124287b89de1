"""Two ranks (gloo, CPU) read ONE train shard: both get batches, different ones, no hang.

The classic DDP data hang is a rank running out of samples while the other waits in a
collective; with a shard per rank split, 2 ranks and 1 shard leaves a rank with nothing.
The training stream does no node splitting (every rank resamples every region with its
own random stream), so each rank must get a batch at every step. Each step here ends in
an all_reduce and an all_gather, as a training step would; a rank without data would
leave the other blocked there, which the deadline below turns into a failure.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from aeatrain.data.loader import train_loader
from aeatrain.data.manifest import load_manifest
from tests.datasets import make_dataset
from tests.ports import free_port

WORLD = 2
STEPS = 6
DEADLINE_SECONDS = 150


def _rank_main(rank: int, port: int, data_dir: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    torch.set_num_threads(1)
    try:
        stream = train_loader(
            data_dir,
            crop_size=32,
            batch_size=4,
            seed=0,
            rank=rank,
            world_size=WORLD,
            num_workers=1,
            augment=True,
        )
        record = []
        for _ in range(STEPS):
            batch = next(stream)
            total = batch["lr"].sum().reshape(1)
            summed = total.clone()
            dist.all_reduce(summed)  # (1,): what every training step does once per step
            crops = [torch.zeros_like(batch["crop"]) for _ in range(WORLD)]
            dist.all_gather(crops, batch["crop"])  # each rank sees the other's crops
            record.append(
                {
                    "step": batch["step"],
                    "lr": batch["lr"],
                    "own": batch["crop"],
                    "total": total,
                    "summed": summed,
                    "crops": crops,
                }
            )
        torch.save(record, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _run_ranks(data_dir: Path, out_dir: Path) -> None:
    """Spawn the ranks; kill them and fail if they are not done by the deadline."""
    context = mp.start_processes(
        _rank_main,
        args=(free_port(), str(data_dir), str(out_dir)),
        nprocs=WORLD,
        join=False,
        start_method="fork",  # no re-import of torch per rank: seconds on 2 cores
    )
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"ranks still running after {DEADLINE_SECONDS} s: the loader hangs")


@pytest.mark.timeout(DEADLINE_SECONDS + 60)
def test_two_ranks_one_shard_both_get_different_batches(tmp_path):
    data_dir = make_dataset(tmp_path / "DATA", pairs=3, width=160, height=120)
    assert len(load_manifest(data_dir).shard_urls("train")) == 1  # fewer shards than ranks
    _run_ranks(data_dir, tmp_path)
    records = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for rank, record in enumerate(records):
        assert [entry["step"] for entry in record] == list(range(STEPS)), rank
        for entry in record:
            assert entry["lr"].shape == (4, 1, 32, 32)
            assert torch.equal(entry["crops"][rank], entry["own"])
    for step in range(STEPS):
        zero, one = records[0][step], records[1][step]
        assert not torch.equal(zero["lr"], one["lr"]), step  # ranks draw different crops
        assert not torch.equal(zero["crops"][0], zero["crops"][1]), step
        both = zero["total"] + one["total"]
        torch.testing.assert_close(zero["summed"], both)  # the collective completed...
        torch.testing.assert_close(one["summed"], both)  # ...on both ranks
        assert torch.equal(zero["crops"][1], one["crops"][1])  # gathered what rank 1 drew
