"""int8 ranges of the prediction head chosen for what the detector reads (``head_ranges="task"``).

The head's two outputs are concatenations over every anchor: box encodings ``[1, N, 4]`` and
class logits ``[1, N, C]``. Their min/max over calibration frames is set by values that never
reach a detection: logits of confident negatives (-20 and below, a score of 1e-9) and box
encodings of background anchors. One int8 step of a min/max range is then ~0.1 logit.

Here each of the two gets ONE range, shared by every tensor on its way (the per-level convs,
reshapes and the concatenation: no requantization between them), chosen on the calibration
frames of the float model by the round-trip error of what is read downstream:

* logits: the squared error of the SCORES, ``sigmoid(q(x)) - sigmoid(x)``, when the scores come
  out of a sigmoid (of the logits otherwise). Cutting the range at -9 costs every clipped value
  at most ``sigmoid(-9)`` = 1e-4 of score and halves the step of the logits that make detections.
  The top of the range stays the calibrated maximum: a lower top would cap the best scores,
  tying the most confident detections.
* box encodings: the squared error weighted per anchor by the float model's best class score
  (as ``quantize_measure.head_snr`` weighs it): errors on background anchors never reach a box.

The error of a candidate range is computed from a fine histogram of all values of every frame
(the logits of one frame alone are ~1.2 million values), with TFLite's integer zero point.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from .quantize import _round_half_away

BINS = 16384
CANDIDATES = 80  # range ends tried between the calibrated end and 2% of it


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def histogram_error(centers: np.ndarray, counts: np.ndarray, lo: float, hi: float,
                    read: Callable[[np.ndarray], np.ndarray] = lambda v: v) -> float:
    """Weighted squared error of ``read(values)`` after an int8 round trip with the range
    ``(lo, hi)`` (scale ``(hi - lo) / 255``, integer zero point), the values given as histogram
    bin ``centers`` with their ``counts``."""
    scale = (hi - lo) / 255.0
    if scale <= 0:
        return np.inf
    zp = float(np.clip(_round_half_away(np.asarray(-128.0 - lo / scale)), -128, 127))
    q = np.clip(_round_half_away(centers / scale) + zp, -128, 127)
    rec = (q - zp) * scale
    return float(np.sum(counts * (read(rec) - read(centers)) ** 2))


def best_range(centers: np.ndarray, counts: np.ndarray, lo: float, hi: float, *,
               read: Callable[[np.ndarray], np.ndarray] = lambda v: v, keep_top: bool = False,
               candidates: int = CANDIDATES) -> tuple[float, float]:
    """The range within ``(lo, hi)`` with the least ``histogram_error``: each end tried at
    ``candidates`` points from the calibrated end to 2% of it (coordinate search, twice);
    ``keep_top`` keeps ``hi``."""
    lows = np.linspace(lo, 0.02 * lo, candidates) if lo < 0 else np.array([lo])
    highs = np.array([hi]) if keep_top or hi <= 0 else np.linspace(hi, 0.02 * hi, candidates)
    a, b = lo, hi
    for _ in range(2):
        a = float(min(lows, key=lambda c: histogram_error(centers, counts, c, b, read)))
        b = float(min(highs, key=lambda c: histogram_error(centers, counts, a, c, read)))
    return min(a, 0.0), max(b, 0.0)


class _Histogram:
    def __init__(self, lo: float, hi: float, bins: int = BINS):
        self.range = (lo, hi)
        self.counts = np.zeros(bins, np.float64)

    def add(self, values: np.ndarray, weights: Optional[np.ndarray] = None) -> None:
        # bins and range rather than edges: numpy's equal-width path (no search per value)
        c, _ = np.histogram(values, bins=self.counts.size, range=self.range, weights=weights)
        self.counts += c

    @property
    def centers(self) -> np.ndarray:
        edges = np.linspace(*self.range, self.counts.size + 1)
        return (edges[:-1] + edges[1:]) / 2


def task_ranges(float_model, work, inputs: Sequence[np.ndarray], names: dict, calibrated: dict, *,
                sigmoid: bool, threads: Optional[int] = None) -> dict:
    """``{"boxes": (lo, hi), "logits": (lo, hi)}`` for the head tensors ``names``
    (``quantize_measure.head_tensor_names``) of the float ``float_model`` (a ``ModelT``), searched
    within their ``calibrated`` min/max ranges over ``inputs`` (see the module docstring).
    ``sigmoid``: the scores are the logits' sigmoid. The model runs cut after the two tensors
    (written to the scratch file ``work``): no postprocess, no intermediate tensors kept."""
    from ..runtime import load_interpreter
    from .quantize_measure import anchor_confidence
    from .quantize_round import write_truncated

    write_truncated(float_model, [names["boxes"], names["logits"]], work)
    interp = load_interpreter(work, threads)
    index = {d["name"]: d["index"] for d in interp.get_output_details()}
    in_index = interp.get_input_details()[0]["index"]
    hist = {k: _Histogram(*calibrated[names[k]]) for k in ("boxes", "logits") if names[k] in calibrated}
    for x in inputs:
        interp.set_tensor(in_index, x)
        interp.invoke()
        logits = interp.get_tensor(index[names["logits"]])
        if "logits" in hist:
            hist["logits"].add(logits.reshape(-1))
        if "boxes" in hist:
            best = anchor_confidence(logits).astype(np.float64)
            conf = _sigmoid(best) if sigmoid else best  # the sigmoid keeps the order: the best score
            boxes = interp.get_tensor(index[names["boxes"]]).astype(np.float64).reshape(conf.size, -1)
            hist["boxes"].add(boxes.reshape(-1), np.repeat(conf, boxes.shape[-1]))
    out = {}
    if "logits" in hist:
        h = hist["logits"]
        out["logits"] = best_range(h.centers, h.counts, *calibrated[names["logits"]],
                                   read=_sigmoid if sigmoid else (lambda v: v), keep_top=True)
    if "boxes" in hist:
        h = hist["boxes"]
        out["boxes"] = best_range(h.centers, h.counts, *calibrated[names["boxes"]])
    return out
