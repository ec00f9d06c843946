"""int8 activation ranges from calibration data, and the int8 round trip that judges them.

A range ``(lo, hi)`` is held by the int8 model as a scale ``(hi - lo) / 255`` and an INTEGER zero
point, both rounded half away from zero (``int8_roundtrip``): every range choice here is scored
by the error of that round trip.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

MSE_TAILS = (0.0, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2)


def _int8_mse(pool: np.ndarray, a: float, b: float) -> float:
    a, b = min(a, 0.0), max(b, 0.0)
    scale = (b - a) / 255.0
    if scale <= 0:
        return np.inf
    rec = np.clip(np.round((pool - a) / scale), 0, 255) * scale + a
    return float(np.mean((pool - rec) ** 2))


def mse_range(pool: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """The clipping range with the least int8 round-trip error on ``pool``: each end chosen among
    the pooled quantiles that cut off a fraction ``MSE_TAILS`` of the values (coordinate search,
    the low end then the high end then the low end again)."""
    if pool.size > 1 << 18:
        pool = pool[np.random.default_rng(0).integers(0, pool.size, 1 << 18)]
    pool = np.sort(pool)
    lows = [lo] + [float(pool[int(t * (pool.size - 1))]) for t in MSE_TAILS[1:]] if lo < 0 else [lo]
    highs = [hi] + [float(pool[int((1.0 - t) * (pool.size - 1))]) for t in MSE_TAILS[1:]] if hi > 0 else [hi]
    seen: dict = {}

    def err(c: float, d: float) -> float:  # each pair once: the second round repeats many
        if (c, d) not in seen:
            seen[c, d] = _int8_mse(pool, c, d)
        return seen[c, d]

    a, b = lo, hi
    for _ in range(2):
        a = min(lows, key=lambda c: err(c, b))
        b = min(highs, key=lambda c: err(a, c))
    return min(a, 0.0), max(b, 0.0)




INPUT_WIDENINGS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def round_half_away(v: np.ndarray) -> np.ndarray:
    """Round half away from zero (as TFLite rounds scales to zero points and values to levels)."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def int8_roundtrip(values: np.ndarray, lo: float, hi: float) -> Optional[np.ndarray]:
    """``values`` through int8 QUANTIZE / DEQUANTIZE with the range ``(lo, hi)`` as the int8 model
    will hold it: scale ``(hi - lo) / 255`` and an INTEGER zero point, both rounded half away from
    zero. None for an empty range."""
    scale = (hi - lo) / 255.0
    if scale <= 0:
        return None
    zp = float(np.clip(round_half_away(np.asarray(-128.0 - lo / scale)), -128, 127))
    q = np.clip(round_half_away(values / scale) + zp, -128, 127)
    return (q - zp) * scale


def roundtrip_mse(values: np.ndarray, lo: float, hi: float) -> float:
    """Mean squared error of ``values`` through ``int8_roundtrip`` with the range ``(lo, hi)``."""
    rec = int8_roundtrip(values, lo, hi)
    if rec is None:
        return np.inf
    return float(np.mean((values - rec) ** 2))


def input_range(values: np.ndarray, lo: float, hi: float,
                widenings: Sequence[float] = INPUT_WIDENINGS) -> tuple[float, float]:
    """The range of a model input among ``(lo, hi)`` widened at one end by a fraction of a step
    (``widenings``) with the least ``roundtrip_mse`` of ``values``.

    Inputs normalized from 8-bit pixels, ``(p - 127.5) / 127.5``, sit exactly halfway between two
    int8 levels of the range ``[-1, 1]`` (step ``2 / 255``, zero point ``-0.5`` rounded): every
    pixel is off by half a step. A range a little wider puts the levels off the pixel grid, and
    the error of the first convolution's input drops about threefold."""
    step = (hi - lo) / 255.0
    candidates = [(lo, hi + f * step) for f in widenings] + [(lo - f * step, hi) for f in widenings if f]
    return min(candidates, key=lambda c: roundtrip_mse(values, *c))


def input_values(inputs: Sequence[np.ndarray], samples: int = 1 << 20, seed: int = 0) -> np.ndarray:
    flat = np.concatenate([x.reshape(-1) for x in inputs]).astype(np.float64)
    if flat.size > samples:
        flat = flat[np.random.default_rng(seed).integers(0, flat.size, samples)]
    return flat


class RangeStats:
    """Global min/max and pooled samples of activation tensors over one subset of the calibration
    images, accumulated image by image (``collect_range_stats``)."""

    def __init__(self, names, seed: int, samples: int, pooled: bool, exact: set):
        self.lo = {n: np.inf for n in names}
        self.hi = {n: -np.inf for n in names}
        self.pools: dict = {n: [] for n in names}
        self.rng = np.random.default_rng(seed)
        self.samples, self.pooled, self.exact = samples, pooled, exact

    def add(self, n: str, v: np.ndarray) -> None:
        v = v.reshape(-1)
        self.lo[n] = min(self.lo[n], float(v.min()))
        self.hi[n] = max(self.hi[n], float(v.max()))
        if self.pooled and n not in self.exact:
            self.pools[n].append(v if v.size <= self.samples else v[self.rng.integers(0, v.size, self.samples)])

    def ranges(self, percentile: Union[float, str]) -> dict:
        """``{name: (lo, hi)}`` by the rule ``percentile`` (see ``collect_ranges``)."""
        mse = percentile == "mse"
        robust = mse or float(percentile) < 100.0
        out = {}
        for n in self.lo:
            if not np.isfinite(self.lo[n]):
                continue
            a, b = self.lo[n], self.hi[n]
            if robust and n not in self.exact and self.pools[n]:
                pool = np.concatenate(self.pools[n])
                if mse:
                    a, b = mse_range(pool, a, b)
                else:
                    a = float(np.percentile(pool, 100.0 - percentile)) if a < 0 else a
                    b = float(np.percentile(pool, percentile)) if b > 0 else b
            out[n] = (min(a, 0.0), max(b, 0.0))
        return out


def collect_range_stats(float_path, inputs: Sequence[np.ndarray], names: set, subsets: Sequence[Sequence[int]], *,
                        pooled: bool = True, exact: set = frozenset(), threads: Optional[int] = None,
                        samples: int = 8192, seed: int = 0, progress=None) -> list:
    """``RangeStats`` of the activation tensors ``names`` for each subset of ``inputs`` (index
    lists, ascending), from ONE pass of the float model over the images of every subset. Each
    subset's statistics (its random samples included) are those of a pass over that subset alone.
    ``progress``: called once per image run."""
    from ...tflite import load_interpreter

    interp = load_interpreter(float_path, threads, preserve_all_tensors=True)
    index = {d["name"]: d["index"] for d in interp.get_tensor_details()}
    wanted = {n: index[n] for n in sorted(names) if n in index}  # sorted: the same samples every run
    in_index = interp.get_input_details()[0]["index"]
    stats = [RangeStats(wanted, seed, samples, pooled, exact) for _ in subsets]
    members = [set(s) for s in subsets]
    for k in sorted(set().union(*members)):
        interp.set_tensor(in_index, inputs[k])
        interp.invoke()
        users = [st for st, m in zip(stats, members) if k in m]
        for n, i in wanted.items():
            v = interp.get_tensor(i)
            if v.dtype != np.float32:
                continue
            for st in users:
                st.add(n, v)
        if progress is not None:
            progress()
    return stats


def collect_ranges(float_path, inputs: Sequence[np.ndarray], names: set, *,
                   percentile: Union[float, str] = 100.0, exact: set = frozenset(),
                   threads: Optional[int] = None, samples: int = 8192, seed: int = 0) -> dict:
    """Global ``{name: (min, max)}`` over all ``inputs`` for the activation tensors ``names``.

    Tensors in ``exact`` (and all when ``percentile >= 100``) get the true global min/max; the
    others the ``100 - percentile`` / ``percentile`` percentiles of values pooled from every
    image (a random sample of ``samples`` values per image and tensor), widened to include 0.
    ``percentile="mse"`` picks, per tensor, the range (``mse_range``) whose int8 round trip of
    the pooled values has the least squared error.
    """
    robust = percentile == "mse" or float(percentile) < 100.0
    stats = collect_range_stats(float_path, inputs, names, [range(len(inputs))], pooled=robust, exact=exact,
                                threads=threads, samples=samples, seed=seed)[0]
    return stats.ranges(percentile)
