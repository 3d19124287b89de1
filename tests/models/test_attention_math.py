"""The attention operator against its definition (float64, CPU, one process).

Covers: the linear path equals the explicit formula with the n x n matrix (references,
heads, both branches, softmax too); Theorems 1 and 2 (permutation equivariance) in
evaluation and training mode, against a learned-query attention that is invariant; who
sees whom; the linear path never builds an n x n tensor.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from aeatrain.collective import default_split, use_batch_group
from aeatrain.models.attention import AugmentedAttention
from tests.models.reference import FixedSplit, naive_linear_attention, ranks_split

CHANNELS, HEADS, REFS = 8, 2, 5


def make_op(seed: int = 0, **kw) -> AugmentedAttention:
    torch.manual_seed(seed)
    opts = {"heads": HEADS, "num_refs": REFS, **kw}
    op = AugmentedAttention(CHANNELS, **opts).double()
    with torch.no_grad():  # non-zero biases so that they are tested too
        for conv in (op.q_proj, op.k_proj, op.v_proj, op.out_proj):
            conv.bias.uniform_(-0.5, 0.5)
    return op


def make_input(batch: int = 5, height: int = 4, width: int = 6, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, CHANNELS, height, width, generator=gen, dtype=torch.float64)


def explicit_operator(op: AugmentedAttention, x: torch.Tensor, mask) -> torch.Tensor:
    """The operator written out per image, per head, with the n x n weight matrix."""
    batch, c, height, width = x.shape
    tokens = x.flatten(2).transpose(1, 2)  # (N, n, c)
    refs = op.refs if op.refs is not None else tokens.new_zeros(0, c)
    batch_aware = [j for j in range(batch) if mask[j]]

    def proj(t, conv):
        return t @ conv.weight.reshape(c, c).T + conv.bias

    outs = []
    for i in range(batch):
        if mask[i]:
            key_input = torch.cat([tokens[j] for j in batch_aware])
        else:
            key_input = torch.cat([refs, tokens[i]])
        q, k, v = proj(tokens[i], op.q_proj), proj(key_input, op.k_proj), proj(key_input, op.v_proj)
        per_head = []
        for head in range(op.heads):
            cols = slice(head * op.head_dim, (head + 1) * op.head_dim)
            weights = (q[:, cols] * op.head_dim**-0.5) @ k[:, cols].T  # (n, n_keys)
            if op.normalize == "softmax":
                weights = weights.softmax(dim=-1)
            else:
                weights = weights / key_input.shape[0]
            per_head.append(weights @ v[:, cols])
        out = proj(torch.cat(per_head, dim=1), op.out_proj)  # (n, c)
        outs.append(out.T.reshape(c, height, width))
    return torch.stack(outs)


def permute_pixels(x: torch.Tensor, perms: list[torch.Tensor]) -> torch.Tensor:
    """Apply permutation perms[i] to the pixels of image i."""
    flat = x.flatten(2)  # (N, c, n)
    return torch.stack([flat[i][:, p] for i, p in enumerate(perms)]).reshape(x.shape)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


# ------------------------------------------------------------ explicit formula
@pytest.mark.parametrize("normalize", ["linear", "softmax"])
@pytest.mark.parametrize("num_refs", [REFS, 0])
def test_training_output_equals_explicit_formula(normalize, num_refs):
    op = make_op(normalize=normalize, num_refs=num_refs).train()
    x = make_input(batch=5)
    mask = default_split(5)  # images 0, 1, 2 -> batch-aware; 3, 4 -> A_R
    assert mask == (True, True, True, False, False)
    out = op(x)
    assert relative_error(out, explicit_operator(op, x, mask)) < 1e-12


@pytest.mark.parametrize("normalize", ["linear", "softmax"])
def test_eval_output_equals_explicit_formula(normalize):
    op = make_op(normalize=normalize).eval()
    x = make_input(batch=3)
    assert relative_error(op(x), explicit_operator(op, x, [False] * 3)) < 1e-12


@pytest.mark.parametrize("normalize", ["linear", "softmax"])
def test_batch_group_split_in_any_order(normalize):
    op = make_op(normalize=normalize).train()
    x = make_input(batch=6)
    mask = ranks_split([3, 1, 2])  # ranks' splits side by side
    assert mask == (True, True, False, True, True, False)
    assert use_batch_group(op, FixedSplit(mask)) == 1
    out = op(x)
    assert relative_error(out, explicit_operator(op, x, mask)) < 1e-12


def test_split_errors_and_eval_ignores_the_split():
    op = make_op().train()
    x = make_input(batch=3)
    use_batch_group(op, FixedSplit([True, False]))
    with pytest.raises(ValueError, match="3 images"):
        op(x)
    use_batch_group(op, FixedSplit([False, False, True]))
    op.eval()  # evaluation: every image to A_R whatever the group says
    assert relative_error(op(x), explicit_operator(op, x, [False] * 3)) < 1e-12
    with pytest.raises(ValueError, match=r"\(N, 8, h, w\)"):
        op(x[:, :4])


def test_linear_path_equals_the_naive_n_by_n_kernel():
    """Q (K^T V) / n_keys, the model's regrouping, equals (Q K^T) V / n_keys."""
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, HEADS, 12, 4, generator=gen, dtype=torch.float64) for _ in "qkv")
    regrouped = q @ (k.transpose(-1, -2) @ v) / k.shape[-2]
    assert relative_error(regrouped, naive_linear_attention(q, k, v)) < 1e-13


def test_constructor_errors():
    with pytest.raises(ValueError, match="multiple of heads"):
        AugmentedAttention(10, heads=3)
    with pytest.raises(ValueError, match="normalize"):
        AugmentedAttention(8, normalize="cosine")
    with pytest.raises(ValueError, match="num_refs"):
        AugmentedAttention(8, num_refs=-1)


# ------------------------------------------------------------- equivariance
@pytest.mark.parametrize("normalize", ["linear", "softmax"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_permutation_equivariance(normalize, mode):
    """Theorems 1 (A_R) and 2 (batch-aware): permuting an image's pixels permutes its output.

    In training mode images 0, 1 go through A_R and 2, 3 through the batch-aware branch;
    each image gets its own permutation.
    """
    op = make_op(normalize=normalize).train(mode == "train")
    x = make_input(batch=4, height=6, width=5)
    gen = torch.Generator().manual_seed(7)
    perms = [torch.randperm(30, generator=gen) for _ in range(4)]
    out_of_permuted = op(permute_pixels(x, perms))
    permuted_out = permute_pixels(op(x), perms)
    assert (out_of_permuted - permuted_out).abs().max() <= 1e-9
    # ... and the operator is not invariant: the output does move with the pixels.
    assert (out_of_permuted - op(x)).abs().max() > 1e-3


class LearnedQueryAttention(nn.Module):
    """Attention whose queries are learned vectors, not projections of the pixels."""

    def __init__(self, channels: int, num_queries: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, channels, dtype=torch.float64))
        self.k_proj = nn.Linear(channels, channels, dtype=torch.float64)
        self.v_proj = nn.Linear(channels, channels, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)  # (N, n, c)
        weights = self.queries @ self.k_proj(tokens).transpose(1, 2)  # (N, m, n)
        return weights.softmax(-1) @ self.v_proj(tokens)  # (N, m, c)


def test_learned_query_attention_is_invariant():
    torch.manual_seed(3)
    attention = LearnedQueryAttention(CHANNELS, num_queries=4)
    x = make_input(batch=2, height=6, width=5)
    perms = [torch.randperm(30) for _ in range(2)]
    out, out_permuted = attention(x), attention(permute_pixels(x, perms))
    assert (out_permuted - out).abs().max() <= 1e-9  # invariant, not equivariant
    assert out.abs().max() > 1e-2  # and not trivially zero


# ------------------------------------------------------------ who sees whom
def influence(op: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """influence[i, j] is True when changing image j changes the output of image i."""
    base = op(x)
    seen = torch.zeros(x.shape[0], x.shape[0], dtype=torch.bool)
    for j in range(x.shape[0]):
        moved = x.clone()
        moved[j] += torch.randn_like(moved[j])
        seen[:, j] = (op(moved) - base).flatten(1).abs().amax(1) > 1e-10
    return seen


@pytest.mark.parametrize("normalize", ["linear", "softmax"])
def test_who_sees_whom_in_training(normalize):
    op = make_op(normalize=normalize).train()
    seen = influence(op, make_input(batch=5))
    batch_aware = torch.tensor([True, True, True, False, False])  # the first half
    expected = torch.eye(5, dtype=torch.bool) | (batch_aware[:, None] & batch_aware[None, :])
    assert torch.equal(seen, expected)


@pytest.mark.parametrize("kw", [{}, {"normalize": "softmax"}, {"num_refs": 0}])
def test_no_image_sees_another_in_eval(kw):
    op = make_op(**kw).eval()
    assert torch.equal(influence(op, make_input(batch=4)), torch.eye(4, dtype=torch.bool))


def test_no_image_sees_another_without_batch_branch():
    op = make_op(batch_aware=False).train()
    assert torch.equal(influence(op, make_input(batch=4)), torch.eye(4, dtype=torch.bool))


def test_odd_batch_of_one_goes_batch_aware():
    """floor(1/2) = 0 images to A_R: a single image alone forms the batch-aware group."""
    op = make_op().train()
    x = make_input(batch=1)
    assert relative_error(op(x), explicit_operator(op, x, [True])) < 1e-12


# ---------------------------------------------------------- no n x n matrix
class LargestTensor(TorchDispatchMode):
    """Records the largest numel of any tensor an operator produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_linear_path_never_builds_n_by_n(mode):
    op = make_op().train(mode == "train")
    x = make_input(batch=2, height=32, width=32).requires_grad_()
    n = 32 * 32
    with LargestTensor() as probe:
        op(x).sum().backward()
    assert probe.largest == x.numel()  # (N, c, h, w) is the biggest thing ever built
    assert probe.largest < n * n // 10


def test_reference_scores_are_query_dot_reference_key():
    op = make_op().eval()
    x = make_input(batch=2, height=3, width=4)
    with torch.no_grad():
        scores = op.reference_scores(x)
    assert scores.shape == (2, HEADS, REFS, 3, 4)
    c, d = CHANNELS, op.head_dim
    q = x.flatten(2).transpose(1, 2) @ op.q_proj.weight.reshape(c, c).T + op.q_proj.bias
    k_ref = op.refs @ op.k_proj.weight.reshape(c, c).T + op.k_proj.bias  # (r, c)
    head, ref, y, col = 1, 3, 2, 1
    cols = slice(head * d, (head + 1) * d)
    expected = q[0, y * 4 + col, cols] @ k_ref[ref, cols] / d**0.5
    assert abs(float(scores[0, head, ref, y, col]) - float(expected.detach())) < 1e-12
    with pytest.raises(ValueError, match="num_refs"):
        make_op(num_refs=0).reference_scores(x)
