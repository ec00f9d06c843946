"""Head ranges chosen for what the detector reads: scores after the sigmoid, score-weighted boxes."""

from __future__ import annotations

import numpy as np

from edgedet.tools.quantize.head import _Histogram, _sigmoid, best_range, histogram_error
from edgedet.tools.quantize.ranges import roundtrip_mse


def _hist(values, lo, hi, weights=None):
    h = _Histogram(lo, hi)
    h.add(values, weights)
    return h.centers, h.counts


def test_histogram_error_matches_the_round_trip_of_the_values():
    v = np.random.default_rng(0).normal(0, 3, 200_000)
    lo, hi = float(v.min()), float(v.max())
    centers, counts = _hist(v, lo, hi)
    for a, b in ((lo, hi), (-4.0, 5.0), (-1.0, 9.0)):
        direct = roundtrip_mse(v, a, b)
        np.testing.assert_allclose(histogram_error(centers, counts, a, b) / v.size, direct, rtol=0.05)


def test_logit_range_drops_confident_negatives_and_keeps_the_top():
    rng = np.random.default_rng(1)
    # a detector's logits: nearly all far negative (background), a few near and above 0
    background = rng.normal(-12, 3, 1_000_000)
    objects = rng.normal(-1, 1.5, 2_000)
    v = np.concatenate([background, objects])
    lo, hi = float(v.min()), float(v.max())
    centers, counts = _hist(v, lo, hi)
    a, b = best_range(centers, counts, lo, hi, read=_sigmoid, keep_top=True)
    assert b == hi  # a lower top would cap the best scores
    assert lo / 2 < a < -5  # the step is at least halved; clipped scores stay below ~1e-2
    err = histogram_error(centers, counts, a, b, _sigmoid)
    assert err < 0.5 * histogram_error(centers, counts, lo, hi, _sigmoid)


def test_box_range_ignores_background_anchors():
    rng = np.random.default_rng(2)
    anchors = 50_000
    conf = np.where(rng.random(anchors) < 0.02, rng.uniform(0.3, 0.9, anchors), 1e-4)
    boxes = rng.normal(0, 1.5, (anchors, 4))
    # background anchors regress anywhere: big encodings that never reach a box
    wild = conf < 0.01
    boxes[wild] *= 6
    w = np.repeat(conf, 4)
    lo, hi = float(boxes.min()), float(boxes.max())
    centers, counts = _hist(boxes.reshape(-1), lo, hi, w)
    a, b = best_range(centers, counts, lo, hi)
    assert a > 0.7 * lo and b < 0.7 * hi
    assert histogram_error(centers, counts, a, b) < 0.5 * histogram_error(centers, counts, lo, hi)
