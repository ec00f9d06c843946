"""Layer-wise pruning math: magnitude masks and data-aware reconstruction (OBS / SparseGPT style).

A layer computes ``Y = X W^T + b`` with ``X`` its input patches ``[pixels, fan_in]`` (for a 1x1
convolution, the input feature map as a matrix). With ``H = Xa^T Xa`` (``Xa`` = ``X`` with a column of
ones, so the bias takes part), removing weight ``w_rj`` costs about ``w_rj^2 / [H^-1]_jj`` in output
error, and the remaining weights of the row absorb it through the inverse Hessian. Columns are
processed left to right with a Cholesky factor of ``H^-1`` (as in SparseGPT); each weight is also
rounded onto its layer's own quantization grid in the same pass, so rounding and clipping errors
are compensated too, and the bias (last column, never pruned) takes up the remaining mean shift.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Grid:
    """A row-wise quantization grid ``real = scale[r] * (q - zp[r])``, q in [qmin, qmax]; None = float."""

    scale: np.ndarray | None  # [R]
    zero_point: np.ndarray | None  # [R]
    qmin: int = 0
    qmax: int = 255

    def round(self, w: np.ndarray, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        if self.scale is None:
            return w
        s = self.scale[rows]
        z = self.zero_point[rows]
        return s * (np.clip(np.rint(w / s) + z, self.qmin, self.qmax) - z)


def magnitude_mask(w: np.ndarray, sparsity: float, saliency: np.ndarray | None = None) -> np.ndarray:
    """Keep-mask (True = kept) removing the ``sparsity`` fraction of the layer with least saliency.

    ``saliency`` defaults to ``|w|``; the threshold is over the whole layer (weights already at
    zero are counted as removed first).
    """
    score = np.abs(w) if saliency is None else saliency
    n_prune = int(round(sparsity * w.size))
    if n_prune <= 0:
        return np.ones(w.shape, dtype=bool)
    flat = score.reshape(-1)
    # zeros first, then ascending saliency (stable, so the count is exact)
    order = np.lexsort((flat, flat != 0) if saliency is None else (flat, w.reshape(-1) != 0))
    keep = np.ones(flat.size, dtype=bool)
    keep[order[:n_prune]] = False
    return keep.reshape(w.shape)


def augmented_gram(x: np.ndarray) -> np.ndarray:
    """``Xa^T Xa`` for ``x`` [P, K] with a trailing ones column: [K+1, K+1] float64."""
    x = x.astype(np.float64, copy=False)
    k = x.shape[1]
    h = np.empty((k + 1, k + 1))
    h[:k, :k] = x.T @ x
    s = x.sum(axis=0)
    h[:k, k] = s
    h[k, :k] = s
    h[k, k] = x.shape[0]
    return h


def augmented_cross(xp: np.ndarray, xd: np.ndarray) -> np.ndarray:
    """``Xp_a^T Xd_a`` (pruned-model inputs against dense-model inputs), [K+1, K+1]."""
    xp = xp.astype(np.float64, copy=False)
    xd = xd.astype(np.float64, copy=False)
    k = xp.shape[1]
    c = np.empty((k + 1, k + 1))
    c[:k, :k] = xp.T @ xd
    c[:k, k] = xp.sum(axis=0)
    c[k, :k] = xd.sum(axis=0)
    c[k, k] = xp.shape[0]
    return c


def _damped(h: np.ndarray, damp: float) -> np.ndarray:
    h = h.copy()
    diag = np.diag(h)
    dead = diag[:-1] <= 0
    idx = np.nonzero(dead)[0]
    h[idx, idx] = 1.0
    h[np.diag_indices_from(h)] += damp * float(np.mean(np.diag(h)))
    return h


def retarget(w_aug: np.ndarray, h: np.ndarray, cross: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """Dense weights refitted for changed inputs: argmin ||Xp_a W'^T - Xd_a W^T||^2 + l ||W' - W||^2.

    Used when earlier layers are already pruned: the layer then sees ``Xp`` instead of ``Xd`` and
    the refit makes it reproduce the dense model's outputs again before it is pruned itself. The
    damping pulls towards the original weights (not towards zero).
    """
    lam = damp * float(np.mean(np.diag(h)))
    hd = h + lam * np.eye(h.shape[0])
    return np.linalg.solve(hd, cross @ w_aug.T + lam * w_aug.T).T


def sparsegpt(w: np.ndarray, b: np.ndarray, h: np.ndarray, sparsity: float, grid: Grid,
              damp: float = 0.01, block: int = 128, prune_mask: np.ndarray | None = None,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prune ``w`` [R, K] (bias ``b`` [R]) to ``sparsity`` using the augmented Gram ``h`` [K+1, K+1].

    Returns ``(w_new, b_new, keep_mask)``; pruned weights are exactly 0, kept ones lie on ``grid``.
    Within each block of columns the mask is chosen after the earlier blocks' updates (adaptive
    mask selection), with the same fraction removed in every block so the layer hits the target.
    """
    rows, k = w.shape
    wa = np.concatenate([w, b[:, None]], axis=1).astype(np.float64)
    hd = _damped(h, damp)
    dead = np.diag(h)[:k] <= 0
    wa[:, :k][:, dead] = 0.0  # inputs that never fire carry no information
    try:
        hinv = np.linalg.cholesky(np.linalg.inv(hd)).T  # upper factor of H^-1
    except np.linalg.LinAlgError:
        hd[np.diag_indices_from(hd)] += 0.1 * float(np.mean(np.diag(hd)))
        hinv = np.linalg.cholesky(np.linalg.inv(hd)).T
    keep = np.ones((rows, k), dtype=bool)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = wa[:, i1:i2].copy()
        h1 = hinv[i1:i2, i1:i2]
        d = np.diag(h1)
        if prune_mask is not None:
            m1 = ~prune_mask[:, i1:i2]
        else:
            sal = w1 ** 2 / d[None, :] ** 2
            m1 = ~magnitude_mask(w1, sparsity, saliency=sal)
        err = np.zeros_like(w1)
        for i in range(i2 - i1):
            col = w1[:, i]
            q = np.where(m1[:, i], 0.0, grid.round(col))
            e = (col - q) / d[i]
            w1[:, i:] -= np.outer(e, h1[i, i:])
            w1[:, i] = q
            err[:, i] = e
        wa[:, i1:i2] = w1
        keep[:, i1:i2] = ~m1
        wa[:, i2:] -= err @ hinv[i1:i2, i2:]
    return wa[:, :k], wa[:, k], keep


def output_error(w_new: np.ndarray, b_new: np.ndarray, w_ref: np.ndarray, b_ref: np.ndarray,
                 h: np.ndarray) -> float:
    """Relative output error ``||Xa (Wn-Wr)^T||^2 / ||Xa Wr^T||^2`` from the Gram matrix alone."""
    dn = np.concatenate([w_new - w_ref, (b_new - b_ref)[:, None]], axis=1)
    ref = np.concatenate([w_ref, b_ref[:, None]], axis=1)
    num = float(np.sum((dn @ h) * dn))
    den = float(np.sum((ref @ h) * ref))
    return num / den if den > 0 else 0.0


def im2col(x: np.ndarray, kh: int, kw: int, stride=(1, 1), padding: str = "SAME",
           dilation=(1, 1)) -> np.ndarray:
    """NHWC feature map ``x`` [H, W, C] (real values) -> patches [out_h*out_w, kh*kw*C]."""
    h, w, c = x.shape
    sh, sw = stride
    dh, dw = dilation
    ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if padding == "SAME":
        oh, ow = -(-h // sh), -(-w // sw)
        ph = max((oh - 1) * sh + ekh - h, 0)
        pw = max((ow - 1) * sw + ekw - w, 0)
        x = np.pad(x, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    else:
        oh, ow = (h - ekh) // sh + 1, (w - ekw) // sw + 1
    cols = np.empty((oh, ow, kh, kw, c), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j, :] = x[i * dh: i * dh + (oh - 1) * sh + 1: sh,
                                    j * dw: j * dw + (ow - 1) * sw + 1: sw, :]
    return cols.reshape(oh * ow, kh * kw * c)
