import numpy as np
import pytest

from edgedet.detections import Detections


def _dets():
    return Detections(np.array([[10, 20, 50, 80], [0, 0, 5, 5]]), np.array([0.9, 0.6]), np.array([0, 2]),
                      np.array([7, -1]))


def test_records_carry_labels_and_track_ids():
    recs = _dets().to_records(["person", "bicycle", "car"])
    assert [r["label"] for r in recs] == ["person", "car"]
    assert [r["track_id"] for r in recs] == [7, -1]


def test_to_supervision_keeps_boxes_scores_classes_and_ids():
    sv = pytest.importorskip("supervision", reason="supervision is not installed (optional adapter)")
    out = _dets().to_supervision(["person", "bicycle", "car"])
    assert isinstance(out, sv.Detections)
    np.testing.assert_allclose(out.xyxy, [[10, 20, 50, 80], [0, 0, 5, 5]])
    assert out.class_id.tolist() == [0, 2] and out.tracker_id.tolist() == [7, -1]
    assert out.data["class_name"].tolist() == ["person", "car"]
