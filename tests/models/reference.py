"""Test-side pieces of the attention: reference kernels and one-process batch groups.

Production code keeps only what production runs (``aeatrain.models.attention``,
``aeatrain.collective``); what exists only to check it lives here:

- :func:`naive_linear_attention`: (Q K^T) V / n_keys with the explicit n x n matrix, the
  direct port the model avoids (the reference of ``benchmarks/bench_attention.py``), and
  :func:`naive_attention_bytes`, what that matrix costs;
- :class:`FixedSplit`: a one-process batch group with a chosen split, so that one process
  given the concatenation of several ranks' batches computes exactly what the ranks
  compute together (:func:`ranks_split`), or a test sends any images to either branch.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from aeatrain.collective import LocalBatch, default_split


def naive_linear_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """(Q K^T) V / n_keys with the explicit n x n matrix: what a direct port computes.

    q (B, heads, n_q, d), k and v (B, heads, n_k, d) -> (B, heads, n_q, d).
    """
    weights = q @ k.transpose(-1, -2)  # (B, heads, n_q, n_k): the matrix the model avoids
    return (weights @ v) / k.shape[-2]


def naive_attention_bytes(batch: int, heads: int, tokens: int, keys: int, itemsize: int) -> int:
    """Bytes of the n x n weight matrix :func:`naive_linear_attention` builds (forward)."""
    return batch * heads * tokens * keys * itemsize


def ranks_split(local_batch_sizes: Sequence[int]) -> tuple[bool, ...]:
    """The split that ranks with these local batch sizes make, over their concatenated
    batch: each rank's :func:`aeatrain.collective.default_split`, side by side."""
    return tuple(b for size in local_batch_sizes for b in default_split(size))


class FixedSplit(LocalBatch):
    """One process, the batch-aware images chosen by ``split`` (one bool per image)."""

    def __init__(self, split: Sequence[bool]) -> None:
        self.chosen = tuple(bool(b) for b in split)

    def split(self, batch: int) -> tuple[bool, ...]:
        return self.chosen
