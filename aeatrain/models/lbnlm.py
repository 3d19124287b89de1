"""Paired library non-local means: the non-learning baseline of the paper's Table 1.

In the spirit of the paired LB-NLM of Qian et al. (IEEE TIP 2020), whose exact parameters
were not available to us; this design is ours (``aeatrain/lbnlm.py`` builds it):

- a library of co-located pairs from the training regions: for library pixel j, the
  registered-LR patch P_j (p x p around j) and the HR correction at its centre,
  v_j = HR(j) - LR(j);
- every patch is reduced by PCA to ``components`` numbers: k_j = (P_j - mean) B, B the
  (p*p, components) leading principal directions of the library's LR patches;
- for every output pixel i with LR patch Q_i, the ``neighbours`` = K library keys nearest
  to q_i = (Q_i - mean) B (Euclidean, scipy's cKDTree; approximate with ``eps`` > 0: the
  j-th neighbour found is at most (1 + eps) times farther than the true j-th, and eps = 0
  is exact), weights w_ij = exp(-d_ij^2 / h^2), and the output
  LR(i) + sum_j w_ij v_j / sum_j w_ij.

The library is held in buffers, so a run folder stores it in ``model.safetensors`` like
any network's weights and ``aeatrain.evaluate`` / ``aeatrain.predict`` load it through
``build_model("lbnlm", ...)``. The module has no parameters and no training mode: forward
runs on the CPU in NumPy (the kd-tree is built on first use and dropped when a state_dict
is loaded) and returns a tensor on the input's device. Any H x W (``input_multiple = 1``);
images are reflect-padded by p // 2 so border pixels get whole patches.
"""

from __future__ import annotations

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from scipy.spatial import cKDTree
from torch import Tensor, nn

ROWS_PER_CHUNK = 64  # image rows whose patches are projected and queried at once


def patch_features(
    image: np.ndarray, patch: int, mean: np.ndarray, basis: np.ndarray, rows: slice
) -> np.ndarray:
    """PCA keys of the p x p patches centred on ``image[rows, :]``: (n_rows * W, components).

    ``image`` (H, W) float32; patches reach p // 2 px outside the image by reflection.
    """
    half = patch // 2
    start, stop = rows.start, rows.stop
    height, width = image.shape
    padded = np.pad(image, half, mode="reflect" if min(height, width) > half else "symmetric")
    window = sliding_window_view(padded[start : stop + 2 * half], (patch, patch))  # (r, W, p, p)
    flat = window.reshape(-1, patch * patch)  # (r * W, p*p), a copy
    return (flat - mean) @ basis  # (r * W, components)


def nlm_weights(distances: np.ndarray, h: float) -> np.ndarray:
    """exp(-d^2 / h^2) per row, shifted by the row's nearest d^2 (the same after normalising;
    keeps the largest weight at 1 so no row underflows to all zeros). (M, K) -> (M, K)."""
    squared = distances.astype(np.float64) ** 2
    return np.exp(-(squared - squared[:, :1]) / (h * h))


class LBNLM(nn.Module):
    """Paired library non-local means; see the module docstring. Keyword-only options:

    ``patch`` p (odd), ``components`` of the PCA, ``neighbours`` K, ``h`` (the weights'
    bandwidth, in [0, 1] intensity units of the PCA keys), ``eps`` (the search's
    approximation, 0 = exact), ``library_size`` N (fixes the buffers' shapes so that a
    saved library loads into a freshly built module).
    """

    input_multiple = 1

    def __init__(
        self,
        *,
        patch: int = 7,
        components: int = 8,
        neighbours: int = 16,
        h: float = 0.05,
        eps: float = 0.0,
        library_size: int = 1,
    ) -> None:
        super().__init__()
        if patch < 1 or patch % 2 == 0:
            raise ValueError(f"lbnlm patch must be a positive odd size, got {patch}")
        if not 1 <= components <= patch * patch:
            raise ValueError(f"lbnlm components must lie in [1, {patch * patch}], got {components}")
        if neighbours < 1 or library_size < neighbours:
            raise ValueError(
                f"lbnlm needs 1 <= neighbours ({neighbours}) <= library_size ({library_size})"
            )
        if not h > 0 or eps < 0:
            raise ValueError(f"lbnlm needs h > 0 and eps >= 0, got h {h}, eps {eps}")
        self.patch, self.components, self.neighbours, self.h = patch, components, neighbours, h
        self.eps = eps
        dims = patch * patch
        self.register_buffer("mean", torch.zeros(dims))  # (p*p,)
        self.register_buffer("basis", torch.zeros(dims, components))  # (p*p, components)
        self.register_buffer("keys", torch.zeros(library_size, components))  # (N, components)
        self.register_buffer("values", torch.zeros(library_size))  # (N,) HR - LR at centres
        self._tree: cKDTree | None = None
        self.register_load_state_dict_post_hook(lambda module, _keys: module.forget_tree())

    def extra_repr(self) -> str:
        return (
            f"patch={self.patch}, components={self.components}, neighbours={self.neighbours}, "
            f"h={self.h:.4g}, eps={self.eps}, library_size={self.keys.shape[0]}"
        )

    def set_library(
        self, mean: np.ndarray, basis: np.ndarray, keys: np.ndarray, values: np.ndarray
    ) -> None:
        """Fill the buffers (shapes as built); the kd-tree is rebuilt on the next forward."""
        for name, array in (("mean", mean), ("basis", basis), ("keys", keys), ("values", values)):
            buffer = getattr(self, name)
            if tuple(array.shape) != tuple(buffer.shape):
                raise ValueError(f"{name}: shape {array.shape}, expected {tuple(buffer.shape)}")
            buffer.copy_(torch.from_numpy(np.asarray(array, dtype=np.float32)))
        self.forget_tree()

    def forget_tree(self) -> None:
        self._tree = None

    def tree(self) -> cKDTree:
        if self._tree is None:
            self._tree = cKDTree(self.keys.detach().cpu().numpy().astype(np.float64))
        return self._tree

    def predict_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W) float32 in [0, 1] -> (H, W) float32, the LR plus the library's correction."""
        mean = self.mean.detach().cpu().numpy()
        basis = self.basis.detach().cpu().numpy()
        values = self.values.detach().cpu().numpy().astype(np.float64)
        tree, out = self.tree(), np.empty_like(image, dtype=np.float32)
        for start in range(0, image.shape[0], ROWS_PER_CHUNK):
            rows = slice(start, min(start + ROWS_PER_CHUNK, image.shape[0]))
            queries = patch_features(image, self.patch, mean, basis, rows)  # (M, components)
            distances, index = tree.query(queries, k=self.neighbours, eps=self.eps, workers=1)
            distances = distances.reshape(len(queries), -1)  # k=1 gives 1-D arrays
            index = index.reshape(len(queries), -1)
            weights = nlm_weights(distances, self.h)  # (M, K)
            correction = (weights * values[index]).sum(1) / weights.sum(1)  # (M,)
            out[rows] = image[rows] + correction.reshape(-1, image.shape[1])
        return out

    def forward(self, x: Tensor) -> Tensor:
        """(N, 1, H, W) in [0, 1] -> (N, 1, H, W); no gradients (nothing is learned)."""
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected an (N, 1, H, W) batch, got shape {tuple(x.shape)}")
        images = x.detach().to("cpu", torch.float32).numpy()[:, 0]  # (N, H, W)
        out = np.stack([self.predict_image(np.ascontiguousarray(im)) for im in images])
        return torch.from_numpy(out)[:, None].to(device=x.device, dtype=x.dtype)
