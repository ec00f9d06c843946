"""Per-layer sparsity from measured sensitivity: spend the pruning budget where it costs least.

Each layer has a curve ``error(sparsity)`` measured on calibration data (the detection heads'
output error when only that layer is pruned). ``allocate`` picks per-layer sparsities whose
weighted sum meets the overall target with the least total error, assuming the errors add up:
on each layer's lower convex hull, take the cheapest error-per-removed-weight segments first.
"""

from __future__ import annotations

import heapq

import numpy as np


def lower_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Lower convex hull of ``(sparsity, error)`` points sorted by sparsity (errors made monotone)."""
    pts = sorted(points)
    mono, best = [], 0.0
    for s, e in pts:
        best = max(best, e)
        mono.append((s, best))
    hull: list[tuple[float, float]] = []
    for p in mono:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def allocate(curves: dict, sizes: dict, target: float, floor: dict | None = None,
             cap: float = 1.0) -> dict:
    """Per-layer sparsity meeting ``sum(size*s) >= target*sum(size)`` with least summed error.

    ``curves[k]`` = list of ``(sparsity, error)`` including the layer's starting point;
    ``floor[k]`` = sparsity the layer already has (never goes below); ``cap`` bounds every layer.
    """
    floor = floor or {}
    total = float(sum(sizes.values()))
    need = target * total
    alloc = {k: float(floor.get(k, 0.0)) for k in curves}
    have = sum(sizes[k] * alloc[k] for k in curves)
    heap: list = []
    hulls = {}
    for k, pts in curves.items():
        start = alloc[k]
        pts = [(s, e) for s, e in pts if start <= s <= cap + 1e-9]
        if not pts or pts[0][0] > start:
            pts = [(start, 0.0)] + pts
        hulls[k] = lower_hull(pts)
        _push(heap, k, hulls[k], 0, sizes[k])
    while have < need - 1e-6 and heap:
        _, k, i = heapq.heappop(heap)
        (s0, _), (s1, _) = hulls[k][i], hulls[k][i + 1]
        gain = sizes[k] * (s1 - s0)
        if have + gain >= need:
            alloc[k] = s0 + (need - have) / sizes[k]
            have = need
            break
        alloc[k] = s1
        have += gain
        _push(heap, k, hulls[k], i + 1, sizes[k])
    if have < need - 1e-6:  # not reachable under the cap: everyone at the cap
        alloc = {k: max(cap, alloc[k]) for k in alloc}
    return {k: float(np.clip(v, 0.0, 1.0)) for k, v in alloc.items()}


def _push(heap, key, hull, i, size) -> None:
    if i + 1 >= len(hull):
        return
    (s0, e0), (s1, e1) = hull[i], hull[i + 1]
    slope = (e1 - e0) / max(size * (s1 - s0), 1e-12)
    heapq.heappush(heap, (slope, key, i))
