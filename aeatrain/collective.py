"""The batch-aware collective: how AEANet's batch-aware branch spans the GLOBAL batch.

The batch-aware branch (docs/method.md section 2) lets every batch-aware image attend to the
keys and values of every batch-aware image of the global batch: the batch-aware halves of
all ranks. The attention module (``aeatrain.models.attention``) knows nothing of ranks; it
asks its ``batch_group`` three things: which local images are batch-aware (``split``), the
sum of a tensor over the group (``sum``) and the concatenation of every rank's tokens
(``gather``). Two groups exist:

- :class:`LocalBatch` (every model's default): the local batch is the whole group, the
  collectives are the identity. Evaluation and prediction never leave it (in eval mode no
  image is batch-aware anyway).
- :class:`GlobalBatch`: the ranks of a torch.distributed process group. The trainer hands
  it to the model (:func:`span_global_batch`) once the model is built.

    span_global_batch(model)            # train.py: the default process group
    span_global_batch(model, group)     # a sub-group (e.g. one node), or a test's group
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn


def default_split(batch: int) -> tuple[bool, ...]:
    """The training split of a local batch as Python bools: the first ceil(N/2) images
    batch-aware, the remaining floor(N/2) to A_R (the official training graph's order:
    first half batch-aware, second half references). Across ranks the batch-aware group
    is every rank's first half. Plain bools, so that neither a GPU step nor torch.compile
    ever reads a tensor for it."""
    return tuple(i < batch - batch // 2 for i in range(batch))


class LocalBatch:
    """This process's batch is the whole batch-aware group: one process, no collective."""

    def split(self, batch: int) -> tuple[bool, ...]:
        """Which of ``batch`` local images go to the batch-aware branch (True)."""
        return default_split(batch)

    def sum(self, tensor: Tensor) -> Tensor:
        """The sum of ``tensor`` over the group's ranks: here, ``tensor``."""
        return tensor

    def gather(self, tokens: Tensor) -> Tensor:
        """Every rank's (M_p, C) tokens concatenated in rank order: here, ``tokens``."""
        return tokens


class GlobalBatch(LocalBatch):
    """The batch-aware halves of every rank of ``process_group`` form the group (None:
    torch.distributed's default group). Identity while torch.distributed is not
    initialised or the group has one rank; collectives carry gradients."""

    def __init__(self, process_group: dist.ProcessGroup | None = None) -> None:
        self.process_group = process_group

    def sum(self, tensor: Tensor) -> Tensor:
        return all_reduce_sum(tensor, self.process_group)

    def gather(self, tokens: Tensor) -> Tensor:
        return all_gather_tokens(tokens, self.process_group)


def span_global_batch(model: nn.Module, process_group: dist.ProcessGroup | None = None) -> int:
    """Hand a :class:`GlobalBatch` of ``process_group`` to every module of ``model`` that
    has a ``batch_group`` (AEANet's attention); returns how many. See :func:`use_batch_group`."""
    return use_batch_group(model, GlobalBatch(process_group))


def use_batch_group(model: nn.Module, group: LocalBatch) -> int:
    """Set ``group`` as the ``batch_group`` of every module of ``model`` that has one;
    returns how many modules took it (0 for models without batch-aware attention)."""
    taken = 0
    for module in model.modules():
        if hasattr(module, "batch_group"):
            module.batch_group = group
            taken += 1
    return taken


def _spans_ranks(group: dist.ProcessGroup | None) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


# The maths of the collective.
#
# Linear path. Rank p holds the batch-aware tokens K_p, V_p (per head, n_p x d). The global
# branch needs S = sum_p K_p^T V_p (d x d per head) and m = sum_p n_p, then each rank
# computes A_b(X_i) = Q_i S / m for its own images. One all-reduce of [S_p, n_p] gives both;
# the bytes sent do not grow with crop size or batch size. It must carry gradients: the
# loss L = sum_p L_p depends on S_p through every rank's output, so
# dL/dS_p = sum_q dL_q/dS, which is again an all-reduce (sum) of the incoming gradients. A
# plain dist.all_reduce is invisible to autograd and would keep only dL_p/dS_p. The count
# m travels in the sums' dtype: exact in float32 up to 2^24 = 16.7M tokens, beyond that
# rounded by at most 6e-8 relative, below the rounding of the sums themselves.
#
# Softmax path. There is no d x d summary, so every rank all-gathers K and V of all ranks'
# batch-aware tokens (sizes may differ: sizes are gathered first and pieces padded to the
# largest). Backward: rank p's tokens reach the loss of every rank, so the gradient of its
# piece is the sum over ranks of their gradients for that piece (all-reduce, then slice).
#
# Both run on every rank in every training step, also on a rank that holds no batch-aware
# image (its piece is empty): collectives must be entered by all ranks.


def all_reduce_sum(tensor: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Sum ``tensor`` over the ranks of ``group``, with gradients; identity on one rank."""
    if not _spans_ranks(group):
        return tensor
    return _AllReduceSum.apply(tensor, group)


def all_gather_tokens(tokens: Tensor, group: dist.ProcessGroup | None = None) -> Tensor:
    """Concatenate every rank's (M_p, C) tokens in rank order, with gradients."""
    if not _spans_ranks(group):
        return tokens
    return _AllGatherTokens.apply(tokens, group)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor, group: dist.ProcessGroup | None) -> Tensor:
        ctx.group = group
        total = tensor.contiguous().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


class _AllGatherTokens(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tokens: Tensor, group: dist.ProcessGroup | None) -> Tensor:
        world = dist.get_world_size(group)
        size = torch.tensor([tokens.shape[0]], dtype=torch.int64, device=tokens.device)
        sizes = [torch.empty_like(size) for _ in range(world)]
        dist.all_gather(sizes, size, group=group)
        sizes = [int(s.item()) for s in sizes]
        padded = tokens.new_zeros((max(sizes), tokens.shape[1]))
        padded[: tokens.shape[0]] = tokens
        pieces = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(pieces, padded, group=group)
        ctx.group, ctx.sizes = group, sizes
        ctx.rank = dist.get_rank(group)
        return torch.cat([piece[:s] for piece, s in zip(pieces, sizes)])

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None
