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
  (as ``measure.head_snr`` weighs it): errors on background anchors never reach a box.

Class columns the decoding never reads (a background column: ``graph.background_columns``) take
no part in the logits' range: their values neither enter the error nor set its ends (the
background column of a one-class SSDLite reaches logits the class column never does, and would
otherwise coarsen the step of every logit).

The error of a candidate range is computed from a fine histogram of all values of every frame
(the logits of one frame alone are ~1.2 million values), with TFLite's integer zero point.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from .ranges import int8_roundtrip

BINS = 16384
CANDIDATES = 80  # range ends tried between the calibrated end and 2% of it


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def histogram_error(centers: np.ndarray, counts: np.ndarray, lo: float, hi: float,
                    read: Callable[[np.ndarray], np.ndarray] = lambda v: v) -> float:
    """Weighted squared error of ``read(values)`` after an int8 round trip with the range
    ``(lo, hi)`` (``ranges.int8_roundtrip``), the values given as histogram bin ``centers`` with
    their ``counts``."""
    rec = int8_roundtrip(centers, lo, hi)
    if rec is None:
        return np.inf
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
    (``measure.head_tensor_names``) of the float ``float_model`` (a ``ModelT``), searched
    within their ``calibrated`` min/max ranges over ``inputs`` (see the module docstring).
    ``sigmoid``: the scores are the logits' sigmoid. The model runs cut after the two tensors
    (written to the scratch file ``work``): no detection op, no intermediate tensors kept."""
    return task_ranges_of_subsets(float_model, work, inputs, names, [range(len(inputs))], [calibrated],
                                  sigmoid=sigmoid, threads=threads)[0]


def task_ranges_of_subsets(float_model, work, inputs: Sequence[np.ndarray], names: dict, subsets: Sequence,
                           calibrated: Sequence[dict], *, sigmoid: bool, threads: Optional[int] = None,
                           skip_columns: int = 0, progress=None) -> list:
    """``task_ranges`` of each subset of ``inputs`` (index lists, ascending; ``calibrated``: the
    min/max ranges of each) from one pass over the images of every subset. ``skip_columns``:
    leading class columns the decoding never reads (a background): their logits neither enter
    the error nor bound the range (whose ends are then the read columns' min and max)."""
    from ...tflite import load_interpreter
    from .measure import anchor_confidence
    from .round import write_truncated

    write_truncated(float_model, [names["boxes"], names["logits"]], work)
    interp = load_interpreter(work, threads)
    index = {d["name"]: d["index"] for d in interp.get_output_details()}
    in_index = interp.get_input_details()[0]["index"]
    hists = [{k: _Histogram(*cal[names[k]]) for k in ("boxes", "logits") if names[k] in cal} for cal in calibrated]
    members = [set(s) for s in subsets]
    read_range = [[np.inf, -np.inf] for _ in subsets]
    for k in sorted(set().union(*members)):
        interp.set_tensor(in_index, inputs[k])
        interp.invoke()
        logits = interp.get_tensor(index[names["logits"]])
        read = logits.reshape(-1, logits.shape[-1])[:, skip_columns:] if skip_columns else logits
        boxes = weights = None
        if any("boxes" in h for h in hists):
            best = anchor_confidence(logits).astype(np.float64)
            conf = _sigmoid(best) if sigmoid else best  # the sigmoid keeps the order: the best score
            boxes = interp.get_tensor(index[names["boxes"]]).astype(np.float64).reshape(conf.size, -1)
            weights = np.repeat(conf, boxes.shape[-1])
        for hist, m, rr in zip(hists, members, read_range):
            if k not in m:
                continue
            rr[0], rr[1] = min(rr[0], float(read.min())), max(rr[1], float(read.max()))
            if "logits" in hist:
                hist["logits"].add(read.reshape(-1))
            if "boxes" in hist:
                hist["boxes"].add(boxes.reshape(-1), weights)
        if progress is not None:
            progress()
    return [_chosen(hist, names, cal, sigmoid, (min(rr[0], 0.0), max(rr[1], 0.0)) if skip_columns else None)
            for hist, cal, rr in zip(hists, calibrated, read_range)]


def _chosen(hist: dict, names: dict, calibrated: dict, sigmoid: bool, logit_bounds: Optional[tuple]) -> dict:
    out = {}
    if "logits" in hist:
        h = hist["logits"]
        out["logits"] = best_range(h.centers, h.counts, *(logit_bounds or calibrated[names["logits"]]),
                                   read=_sigmoid if sigmoid else (lambda v: v), keep_top=True)
    if "boxes" in hist:
        h = hist["boxes"]
        out["boxes"] = best_range(h.centers, h.counts, *calibrated[names["boxes"]])
    return out
