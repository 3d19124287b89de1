"""The augmented attention operator of AEANet (docs/method.md section 2).

Tokens are the pixels of a feature map. With X_i the n = h*w tokens of image i, q, k, v 1x1
projections with bias, d the channels per head and queries scaled by d^-1/2:

- shared references (A_R): a learned R (r x c) joins every image's keys and values,
  A_R(X_i) = q(X_i) k([R; X_i])^T v([R; X_i]) / (r + n);
- batch-aware (A_b, training only): keys and values span every batch-aware image of the
  GLOBAL batch (all ranks), A_b(X_i) = q(X_i) k([X_1..X_m])^T v([X_1..X_m]) / (sum of n).

With the paper's linear normalisation (division by the number of keys) the product is
regrouped as Q (K^T V), so cost and memory grow linearly with n and the n x n matrix never
exists. The softmax option uses ``scaled_dot_product_attention`` instead.

The module is a plain ``nn.Module`` that knows nothing of ranks: the batch-aware branch
asks its ``batch_group`` (``aeatrain.collective``) which local images are batch-aware and
for the sums / tokens over the global batch. Every module starts with
:class:`~aeatrain.collective.LocalBatch` (one process); the trainer hands it a
:class:`~aeatrain.collective.GlobalBatch` (``span_global_batch``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aeatrain.collective import LocalBatch

NORMALIZATIONS = ("linear", "softmax")


class AugmentedAttention(nn.Module):
    """Multi-head attention with shared references and a batch-aware branch (the operator).

    No normalisation layer and no residual: the U-Net block around it adds those.

    Args:
        channels: c, input and output channels; keys, queries and values have c channels too.
        heads: number of heads; must divide ``channels``.
        num_refs: r, learned shared references (0: none, then A_R is plain self-attention).
        batch_aware: whether training sends part of the batch to the batch-aware branch.
        normalize: "linear" (the paper: divide by the number of keys) or "softmax".

    Which image goes where: in training mode with ``batch_aware``, ``batch_group.split``
    decides; by default the first ceil(N/2) images of the local batch go to the
    batch-aware branch and the rest to A_R (``aeatrain.collective.default_split``; the
    order of the published checkpoints' training graphs); in evaluation mode every image
    goes to A_R. ``batch_group`` (an attribute, not a parameter) spans the global batch.
    Parameters: 4 c (c + 1) + r c (74,240 for c = 128, r = 64).
    """

    def __init__(
        self,
        channels: int,
        heads: int = 2,
        num_refs: int = 64,
        batch_aware: bool = True,
        normalize: str = "linear",
    ) -> None:
        super().__init__()
        if channels < 1 or heads < 1 or channels % heads:
            raise ValueError(
                f"channels ({channels}) must be a positive multiple of heads ({heads})"
            )
        if num_refs < 0:
            raise ValueError(f"num_refs must be >= 0, got {num_refs}")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.channels = channels
        self.heads = heads
        self.head_dim = channels // heads
        self.num_refs = num_refs
        self.batch_aware = batch_aware
        self.normalize = normalize
        self.batch_group: LocalBatch = LocalBatch()  # the trainer hands a GlobalBatch
        self.q_proj = nn.Conv2d(channels, channels, 1)
        self.k_proj = nn.Conv2d(channels, channels, 1)
        self.v_proj = nn.Conv2d(channels, channels, 1)
        self.out_proj = nn.Conv2d(channels, channels, 1)
        self.refs = nn.Parameter(torch.empty(num_refs, channels)) if num_refs else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform weights, zero biases, as the published TensorFlow code.

        TF's default initialiser for the [1, r, c] reference variable is Glorot-uniform
        with fan_in + fan_out = r + c, which is what ``xavier_uniform_`` gives an (r, c)
        tensor too.
        """
        for conv in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
        if self.refs is not None:
            nn.init.xavier_uniform_(self.refs)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, heads={self.heads}, num_refs={self.num_refs}, "
            f"batch_aware={self.batch_aware}, normalize={self.normalize!r}"
        )

    # ---------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> Tensor:
        """Attend; (N, c, h, w) -> (N, c, h, w)."""
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected (N, {self.channels}, h, w), got {tuple(x.shape)}")
        batch, _, height, width = x.shape
        mask = self._branch_mask(batch)
        q = self._split_heads(self.q_proj(x)) * self.head_dim**-0.5  # (N, heads, d, n)
        k = self._split_heads(self.k_proj(x))  # (N, heads, d, n)
        v = self._split_heads(self.v_proj(x))  # (N, heads, d, n)
        if mask is None:
            out = self._attend_refs(q, k, v)
        else:
            out = self._attend_split(q, k, v, mask)
        out = out.reshape(batch, self.channels, height, width).to(x.dtype)
        return self.out_proj(out)

    def _branch_mask(self, batch: int) -> tuple[bool, ...] | None:
        """Per-image branch (True = batch-aware) as plain Python bools, from the batch
        group's split; None when all go to A_R (evaluation mode, or no batch-aware branch)."""
        if not (self.training and self.batch_aware):
            return None
        mask = tuple(bool(b) for b in self.batch_group.split(batch))
        if len(mask) != batch:
            raise ValueError(f"the batch group's split has {len(mask)} entries for {batch} images")
        return mask

    def _split_heads(self, t: Tensor) -> Tensor:
        batch, _, height, width = t.shape
        return t.reshape(batch, self.heads, self.head_dim, height * width)  # (N, heads, d, n)

    def _attend_split(self, q: Tensor, k: Tensor, v: Tensor, mask: tuple[bool, ...]) -> Tensor:
        """Send mask images to A_b and ~mask images to A_R; merge back in batch order.

        Every rank reaches the collective inside ``_attend_batch`` even when it holds no
        batch-aware image, so that no rank waits for one that never comes.
        """
        ba_idx = [i for i, batch_aware in enumerate(mask) if batch_aware]
        ref_idx = [i for i, batch_aware in enumerate(mask) if not batch_aware]
        n_ba = len(ba_idx)
        if all(mask[:n_ba]):  # the usual contiguous split: views, no copies
            out_ba = self._attend_batch(q[:n_ba], k[:n_ba], v[:n_ba])
            out_ref = self._attend_refs(q[n_ba:], k[n_ba:], v[n_ba:])
            return torch.cat([out_ba, out_ref])
        dev_ba = torch.tensor(ba_idx, dtype=torch.long, device=q.device)
        dev_ref = torch.tensor(ref_idx, dtype=torch.long, device=q.device)
        out_ba = self._attend_batch(q[dev_ba], k[dev_ba], v[dev_ba])
        out_ref = self._attend_refs(q[dev_ref], k[dev_ref], v[dev_ref])
        inverse = torch.argsort(torch.tensor(ba_idx + ref_idx)).to(q.device)
        return torch.cat([out_ba, out_ref])[inverse]

    def _ref_keys_values(self) -> tuple[Tensor, Tensor]:
        """k(R) and v(R) per head: two (heads, d, r) tensors (the 1x1 convs as matmuls)."""
        weight_k = self.k_proj.weight.reshape(self.channels, self.channels)
        weight_v = self.v_proj.weight.reshape(self.channels, self.channels)
        k_ref = F.linear(self.refs, weight_k, self.k_proj.bias)  # (r, c)
        v_ref = F.linear(self.refs, weight_v, self.v_proj.bias)  # (r, c)
        shape = (self.num_refs, self.heads, self.head_dim)
        return k_ref.reshape(shape).permute(1, 2, 0), v_ref.reshape(shape).permute(1, 2, 0)

    # ------------------------------------------------------- shared references
    def _attend_refs(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """A_R per image: keys and values from [R; X_i]. (B, heads, d, n) -> same."""
        refs = self._ref_keys_values() if self.refs is not None else None
        if self.normalize == "softmax":
            return _softmax_refs(q, k, v, refs)
        return _linear_refs(q, k, v, refs)

    # ------------------------------------------------------------ batch-aware
    def _attend_batch(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """A_b: keys and values from every batch-aware image of every rank."""
        if self.normalize == "softmax":
            return self._softmax_batch(q, k, v)
        return self._linear_batch(q, k, v)

    def _linear_batch(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        with _full_precision(q):
            q, k, v = _wide(q), _wide(k), _wide(v)
            kv_local = torch.einsum("bhdn,bhen->hde", k, v)  # (heads, d, d), this rank's sum
            # new_full fills on the device; new_tensor would copy from the host and wait
            tokens_local = kv_local.new_full((1,), k.shape[0] * k.shape[3])
            packed = self.batch_group.sum(torch.cat([kv_local.reshape(-1), tokens_local]))
            kv = packed[:-1].reshape(kv_local.shape)  # (heads, d, d), the global sum S
            tokens = packed[-1].detach().clamp_min(1)  # m, batch-aware tokens of all ranks
            return torch.einsum("bhdn,hde->bhen", q, kv) / tokens  # (B, heads, d, n)

    def _softmax_batch(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        batch, heads, dim, n = k.shape
        local = torch.cat([k, v], dim=1).permute(0, 3, 1, 2)  # (B, n, 2 heads, d)
        gathered = self.batch_group.gather(local.reshape(batch * n, 2 * heads * dim))
        gathered = gathered.reshape(1, -1, 2 * heads, dim).transpose(1, 2)  # (1, 2h, M, d)
        keys, values = gathered[:, :heads], gathered[:, heads:]  # (1, heads, M, d) each
        queries = q.permute(1, 0, 3, 2).reshape(1, heads, batch * n, dim)  # (1, h, B n, d)
        out = F.scaled_dot_product_attention(
            queries, keys.to(q.dtype), values.to(q.dtype), scale=1.0
        )
        return out.reshape(heads, batch, n, dim).permute(1, 0, 3, 2)  # (B, heads, d, n)

    # ---------------------------------------------------------- visualisation
    def reference_scores(self, x: Tensor) -> Tensor:
        """Relevance of every pixel to every shared reference: (N, heads, r, h, w).

        ``scores[b, head, i, y, x] = <q_head(x_{y,x}), k_head(R_i)> / sqrt(d)``: the
        unnormalised weight pixel (y, x) of image b gives reference i in A_R, before the
        division by (r + n) (linear) or the softmax. This is the quantity of the paper's
        Fig. 6. Uses the same q and k weights as :meth:`forward`; no batch involvement.
        """
        if self.refs is None:
            raise ValueError("reference_scores needs shared references (num_refs > 0)")
        batch, _, height, width = x.shape
        q = self._split_heads(self.q_proj(x)) * self.head_dim**-0.5  # (N, heads, d, n)
        k_ref, _ = self._ref_keys_values()  # (heads, d, r)
        scores = torch.einsum("bhdn,hdr->bhrn", q, k_ref.to(q.dtype))  # (N, heads, r, n)
        return scores.reshape(batch, self.heads, self.num_refs, height, width)


# ------------------------------------------------------------ attention kernels
def _linear_refs(q: Tensor, k: Tensor, v: Tensor, refs: tuple[Tensor, Tensor] | None) -> Tensor:
    """A_R with linear normalisation, as Q (K^T V) / (r + n). (B, heads, d, n) -> same."""
    with _full_precision(q):
        q, k, v = _wide(q), _wide(k), _wide(v)
        kv = torch.einsum("bhdn,bhen->bhde", k, v)  # (B, heads, d, d): sum of k v^T over X_i
        keys = k.shape[3]
        if refs is not None:
            k_ref, v_ref = _wide(refs[0]), _wide(refs[1])  # (heads, d, r) each
            kv = kv + torch.einsum("hdr,her->hde", k_ref, v_ref)  # + sum over R
            keys = keys + k_ref.shape[2]  # not +=: an ONNX trace keeps sizes symbolic
        return torch.einsum("bhdn,bhde->bhen", q, kv) / keys  # (B, heads, d, n)


def _softmax_refs(q: Tensor, k: Tensor, v: Tensor, refs: tuple[Tensor, Tensor] | None) -> Tensor:
    """A_R with softmax over the r + n keys of each image. (B, heads, d, n) -> same."""
    batch = q.shape[0]
    keys, values = k.transpose(2, 3), v.transpose(2, 3)  # (B, heads, n, d)
    if refs is not None:
        k_ref = refs[0].transpose(1, 2).to(k.dtype).expand(batch, -1, -1, -1)  # (B, h, r, d)
        v_ref = refs[1].transpose(1, 2).to(v.dtype).expand(batch, -1, -1, -1)  # (B, h, r, d)
        keys, values = torch.cat([k_ref, keys], 2), torch.cat([v_ref, values], 2)
    out = F.scaled_dot_product_attention(q.transpose(2, 3), keys, values, scale=1.0)
    return out.transpose(2, 3)  # (B, heads, d, n)


def _wide(t: Tensor) -> Tensor:
    """At least float32: sums over up to millions of tokens must not run in bf16/fp16."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _full_precision(t: Tensor) -> torch.autocast:
    """Switch autocast off for the sums and the division (they run in float32 or wider)."""
    return torch.autocast(device_type=t.device.type, enabled=False)


__all__ = ["AugmentedAttention"]
