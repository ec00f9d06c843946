"""Assigning detections to tracks from a similarity matrix.

``greedy_match`` takes pairs best-first: the pair with the highest similarity, then the best of
what is left, and so on, down to ``min_similarity``. It runs as rounds of "mutually best" pairs
(each round vectorised; a round takes every pair that is the best of both its row and its
column), which picks the same pairs as sorting all of them, in a few rounds. With boxes that
overlap a few others at most, it agrees with an optimal assignment (Hungarian / Jonker-Volgenant)
almost everywhere, without scipy or lap on the device (``tools/bench_tracking.py`` compares them).

Any function ``(similarity [T, D], min_similarity) -> (rows, cols)`` can stand in for it, e.g.
``hungarian_match`` built on scipy where scipy is installed. ``veto_ambiguous`` removes the pairings
that are nearly a coin toss before either runs.
"""

from __future__ import annotations

from typing import Callable, Tuple

import numpy as np

Pairs = Tuple[np.ndarray, np.ndarray]
MatchFn = Callable[[np.ndarray, float], Pairs]

_NONE = (np.zeros(0, np.intp), np.zeros(0, np.intp))


def greedy_match(similarity: np.ndarray, min_similarity: float) -> Pairs:
    """Row and column indices of the pairs chosen best-first, each at least ``min_similarity``."""
    if similarity.size == 0:
        return _NONE
    s = np.where(similarity >= min_similarity, similarity, -np.inf)
    all_rows = np.arange(s.shape[0])
    rows, cols = [], []
    while True:
        best_col = s.argmax(axis=1)
        best_row = s.argmax(axis=0)
        mutual = (best_row[best_col] == all_rows) & np.isfinite(s[all_rows, best_col])
        if not mutual.any():
            break
        r, c = all_rows[mutual], best_col[mutual]
        rows.append(r)
        cols.append(c)
        s[r, :] = -np.inf
        s[:, c] = -np.inf
    if not rows:
        return _NONE
    return np.concatenate(rows), np.concatenate(cols)


def hungarian_match(similarity: np.ndarray, min_similarity: float) -> Pairs:
    """The assignment of highest total similarity (scipy), pairs below ``min_similarity`` dropped."""
    from scipy.optimize import linear_sum_assignment

    if similarity.size == 0:
        return _NONE
    ok = similarity >= min_similarity
    # gated pairs are worth more than any missing pair: shift them above 0, the rest 0
    s = np.where(ok, similarity - min_similarity + 1.0, 0.0) if ok.any() else np.zeros(similarity.shape)
    rows, cols = linear_sum_assignment(s, maximize=True)
    ok = similarity[rows, cols] >= min_similarity
    return rows[ok], cols[ok]


def veto_ambiguous(similarity: np.ndarray, min_similarity: float, ratio: float, rows: np.ndarray) -> np.ndarray:
    """``similarity`` with the unclear pairs of the ``rows`` (a mask) set to -inf.

    A row keeps its pairs only when its best candidate beats its second by more than ``1 / ratio``,
    and a row's pair with a column only when the column's best candidate beats its second likewise
    (Lowe's ratio test, on similarities at or above ``min_similarity``): a pairing that is nearly a
    coin toss is not made.
    """
    s = np.where(similarity >= min_similarity, similarity, -np.inf)
    if s.shape[1] > 1:
        top = np.sort(s, axis=1)[:, -2:]
        unclear = np.isfinite(top[:, 0]) & (top[:, 0] >= ratio * top[:, 1])
        s[rows & unclear, :] = -np.inf
    if s.shape[0] > 1:
        top = np.sort(np.where(similarity >= min_similarity, similarity, -np.inf), axis=0)[-2:]
        unclear = np.isfinite(top[0]) & (top[0] >= ratio * top[1])
        s[np.ix_(rows, unclear)] = -np.inf
    return s
