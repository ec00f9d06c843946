"""NMS against a plain reference implementation of greedy suppression."""

from __future__ import annotations

import numpy as np
import pytest

from edgedet.postprocess.nms import iou_matrix, nms, nms_sorted


def reference_nms(boxes, scores, thr, max_out=None, class_ids=None):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # Python's sort is stable
    ious = iou_matrix(boxes, boxes)
    keep = []
    for i in order:
        ok = True
        for k in keep:
            if class_ids is not None and class_ids[k] != class_ids[i]:
                continue
            if ious[k, i] > thr:
                ok = False
                break
        if ok:
            keep.append(i)
        if max_out is not None and len(keep) == max_out:
            break
    return keep


def _random_boxes(n, seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 80, (n, 2))
    wh = rng.uniform(5, 40, (n, 2))
    return np.hstack([xy, xy + wh]).astype(np.float32), rng.random(n).astype(np.float32)


@pytest.mark.parametrize("n", [60, 200, 300])  # the IoU-matrix and the row-by-row ways
def test_matches_reference_greedy_nms(n):
    for seed in range(3):
        boxes, scores = _random_boxes(n, seed)
        for thr in (0.3, 0.5, 0.7):
            assert nms(boxes, scores, thr).tolist() == reference_nms(boxes, scores, thr)
            assert nms(boxes, scores, thr, max_output=7).tolist() == reference_nms(boxes, scores, thr, 7)


def test_class_aware_never_suppresses_across_classes():
    boxes, scores = _random_boxes(200, 9)
    classes = np.random.default_rng(9).integers(0, 4, 200)
    got = nms(boxes, scores, 0.5, class_ids=classes).tolist()
    assert got == reference_nms(boxes, scores, 0.5, class_ids=classes)
    same = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    assert len(nms(same, np.array([0.9, 0.8]), 0.5, class_ids=np.array([0, 1]))) == 2
    assert len(nms(same, np.array([0.9, 0.8]), 0.5)) == 1


def test_ties_keep_input_order_and_degenerate_boxes_do_not_suppress():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 5, 5], [5, 5, 5, 5]], np.float32)
    scores = np.array([0.5, 0.5, 0.9, 0.9], np.float32)
    # the zero-area boxes come first (higher score) and suppress nothing; of the tied pair the first stays
    assert nms(boxes, scores, 0.5).tolist() == [2, 3, 0]
    assert nms_sorted(np.zeros((0, 4), np.float32), 0.5).tolist() == []
