"""2 processes (gloo, CPU, float64) under DDP == 1 process holding the whole batch.

One spawn runs every case (process start-up dominates the cost); each case is one test.
BatchNorm is frozen (eval) for the comparison, since its batch statistics are per rank;
the attention stays in training mode, so the batch-aware branch spans both ranks. The
one-process reference gets the concatenated batch and the same split into A_R and
batch-aware images (``tests.models.reference.ranks_split``); its loss is the sum of the
ranks' losses divided by the world size, because DDP averages gradients. Each rank's model
spans the ranks as the trainer's does: ``aeatrain.collective.span_global_batch``; a rank
with an explicit split uses a ``GlobalBatch`` whose split is that list.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from aeatrain.collective import GlobalBatch, default_split, span_global_batch, use_batch_group
from aeatrain.models import build_model
from tests.models.reference import FixedSplit, ranks_split
from tests.ports import free_port

WORLD = 2
SIZE = 16  # image side; the attention sees 4 x 4 tokens per image

# name -> (normalize, per-rank batches). An int is a local batch of that size that the rank
# splits itself (no mask passed, as in training); a list of bools is an explicit split.
CASES = {
    "linear-even": ("linear", [4, 4]),
    "linear-uneven": ("linear", [3, 1]),  # rank 1: no A_R image, one batch-aware image
    "linear-empty-half": ("linear", [4, [False, False]]),  # rank 1: no batch-aware image
    "linear-empty-batch": ("linear", [3, 0]),  # rank 1: no image at all
    "softmax-uneven": ("softmax", [3, 2]),  # unequal K, V pieces to gather
    "softmax-empty-half": ("softmax", [[False] * 3, 3]),
}


def rank_mask(batch: int | list[bool]) -> tuple[bool, ...]:
    return default_split(batch) if isinstance(batch, int) else tuple(batch)


def joint_mask(batches: list) -> tuple[bool, ...]:
    """The one-process split equal to what the ranks do."""
    if all(isinstance(b, int) for b in batches):
        return ranks_split(batches)
    return tuple(b for batch in batches for b in rank_mask(batch))


class RankSplit(GlobalBatch):
    """The default group's ranks, this rank's batch-aware images chosen by ``split``."""

    def __init__(self, split: list[bool]) -> None:
        super().__init__()
        self.chosen = tuple(split)

    def split(self, batch: int) -> tuple[bool, ...]:
        return self.chosen


def case_model(normalize: str) -> nn.Module:
    """The published aeanet in float64 with BatchNorm frozen; same weights on every call."""
    torch.manual_seed(0)
    model = build_model("aeanet", normalize=normalize).double().train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
    return model


def case_data(batches: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and loss weights of the whole (concatenated) batch."""
    total = sum(len(rank_mask(b)) for b in batches)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(total, 1, SIZE, SIZE, generator=gen, dtype=torch.float64)
    weights = torch.randn(total, 1, SIZE, SIZE, generator=gen, dtype=torch.float64)
    return x, weights


def _rank_slice(batches: list, rank: int) -> slice:
    start = sum(len(rank_mask(b)) for b in batches[:rank])
    return slice(start, start + len(rank_mask(batches[rank])))


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=90),
    )
    torch.set_num_threads(1)
    try:
        for name, (normalize, batches) in CASES.items():
            model = case_model(normalize)
            mine = batches[rank]
            if isinstance(mine, int):
                span_global_batch(model)  # what the trainer does
            else:
                use_batch_group(model, RankSplit(mine))
            ddp = DistributedDataParallel(model)
            x, weights = case_data(batches)
            part = _rank_slice(batches, rank)
            out = ddp(x[part])
            (out * weights[part]).sum().backward()
            grads = {n: p.grad.clone() for n, p in ddp.module.named_parameters()}
            torch.save({"out": out.detach(), "grads": grads}, Path(out_dir) / f"{name}-{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(free_port(), str(out_dir)), nprocs=WORLD, join=True)
    return out_dir


def reference(normalize: str, batches: list, joint: bool = True):
    """One process: outputs and gradients for the whole batch.

    ``joint=False`` instead runs each rank's batch alone and averages, i.e. what ranks
    would compute if the batch-aware branch did not span them (must differ).
    """
    model = case_model(normalize)
    x, weights = case_data(batches)
    if joint:
        pieces = [(slice(None), joint_mask(batches))]
    else:
        pieces = [(_rank_slice(batches, r), rank_mask(b)) for r, b in enumerate(batches)]
    outs = []
    for part, mask in pieces:
        use_batch_group(model, FixedSplit(mask))
        out = model(x[part])
        ((out * weights[part]).sum() / WORLD).backward()
        outs.append(out.detach())
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return torch.cat(outs), grads


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(CASES))
def test_two_ranks_equal_one_process(ddp_results, name):
    normalize, batches = CASES[name]
    ranks = [torch.load(ddp_results / f"{name}-{r}.pt") for r in range(WORLD)]
    out_ref, grads_ref = reference(normalize, batches)

    out_ddp = torch.cat([r["out"] for r in ranks])
    assert relative(out_ddp, out_ref) <= 1e-8
    assert set(ranks[0]["grads"]) == set(grads_ref)
    # A gradient that is zero in exact arithmetic (the key bias under softmax, which
    # shifts every logit of a query equally) is compared on the scale of all gradients.
    scale = torch.cat([g.flatten() for g in grads_ref.values()]).norm()
    for param, grad_ref in grads_ref.items():
        for rank, result in enumerate(ranks):
            error = (result["grads"][param] - grad_ref).norm()
            assert error <= 1e-8 * max(grad_ref.norm(), 1e-6 * scale), (param, rank)
    assert grads_ref["bottom.attention.refs"].norm() > 1e-6 * scale  # references are reached


@pytest.mark.timeout(300)
def test_ranks_would_differ_without_the_collective(ddp_results):
    """Sanity check of the test itself: rank-local batch-aware groups give other numbers."""
    normalize, batches = CASES["linear-uneven"]
    out_local, grads_local = reference(normalize, batches, joint=False)
    rank0 = torch.load(ddp_results / "linear-uneven-0.pt")
    attention_grad = "bottom.attention.k_proj.weight"
    assert relative(rank0["grads"][attention_grad], grads_local[attention_grad]) > 1e-4
    out_ddp = torch.cat([torch.load(ddp_results / f"linear-uneven-{r}.pt")["out"] for r in (0, 1)])
    assert relative(out_ddp, out_local) > 1e-6
