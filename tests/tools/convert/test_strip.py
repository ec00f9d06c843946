"""strip_file: a raw-output model + sidecar + anchors that decode exactly like the op did."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgedet.detector import Detector
from edgedet.errors import ModelError
from edgedet.postprocess.anchors import tf_od_grid_anchors
from edgedet.postprocess.nms import iou_matrix
from edgedet.sidecar import load_sidecar, save_sidecar
from edgedet.tflite import find_detection_op, load_interpreter, read_model
from edgedet.tools.convert.strip import strip_file


def test_strip_v1(tmp_path, v1_model, coco_labels, grace_hopper):
    src = tmp_path / "v1.tflite"
    src.write_bytes(v1_model.read_bytes())
    save_sidecar(src, {"labels": str(coco_labels), "name": "v1"})
    dst = tmp_path / "out" / "v1_raw.tflite"
    summary = strip_file(src, dst)
    assert summary["num_anchors"] == 1917 and summary["num_classes"] == 90 and summary["background"] == 1

    # the file: no op, two outputs that are the op's old inputs
    assert find_detection_op(read_model(dst)) is None
    interp = load_interpreter(dst, 1)
    shapes = sorted(tuple(d["shape"]) for d in interp.get_output_details())
    assert shapes == [(1, 1917, 4), (1, 1917, 91)]

    # the anchors and options beside it
    anchors = np.load(dst.with_suffix(".anchors.npy"))
    assert np.abs(anchors - tf_od_grid_anchors((300, 300))).max() < 0.0033
    side = load_sidecar(dst)
    pp = side["postprocess"]
    assert (pp["max_detections"], pp["num_classes"], pp["use_regular_nms"]) == (10, 90, False)
    assert pp["iou_threshold"] == pytest.approx(0.6) and pp["y_scale"] == 10 and pp["h_scale"] == 5
    assert pp["score_activation"] == "none"  # the class scores come after the in-graph LOGISTIC
    assert side["anchors"] == {"file": "v1_raw.anchors.npy", "format": "yxhw"}
    assert side["name"] == "v1" and side["history"][-1]["tool"] == "strip"

    # the stripped model, decoded by us from its files alone, finds what the op found
    image = cv2.imread(str(grace_hopper))
    raw = Detector.from_path(dst, threads=2, score_threshold=0.3)
    assert raw.info.form == "raw" and raw.labels[0] == "person"  # labels carried over
    op = Detector.from_path(src, threads=2, score_threshold=0.3, postprocess="op")
    a, b = op.detect(image), raw.detect(image)
    assert a.class_ids.tolist() == b.class_ids.tolist() and len(a) >= 3
    np.testing.assert_allclose(a.scores, b.scores, atol=1 / 256)
    assert np.diag(iou_matrix(a.xyxy, b.xyxy)).min() >= 0.99


def test_strip_fpnlite_keeps_a_valid_signature(tmp_path, fpnlite_model):
    dst = tmp_path / "fpn_raw.tflite"
    strip_file(fpnlite_model, dst)
    interp = load_interpreter(dst, 1)
    sig = interp.get_signature_list()
    assert sig["serving_default"]["outputs"] == ["box_encodings", "class_predictions"]
    assert (interp.get_output_details()[0]["shape"][1]) == 12804


def test_strip_errors(tmp_path, blazeface_model, v1_model):
    with pytest.raises(ModelError, match="no TFLite_Detection_PostProcess"):
        strip_file(blazeface_model, tmp_path / "x.tflite")
    with pytest.raises(ModelError, match="differ"):
        strip_file(v1_model, v1_model)
    with pytest.raises(ModelError, match=".tflite"):
        strip_file(v1_model, tmp_path / "x.bin")


def test_stripped_model_with_generated_anchors(tmp_path, v1_model, grace_hopper):
    """A raw model whose sidecar names an anchor generator instead of a file."""
    dst = tmp_path / "v1_raw.tflite"
    strip_file(v1_model, dst)
    dst.with_suffix(".anchors.npy").unlink()
    side = load_sidecar(dst)
    side["anchors"] = {"generator": "tf_od_grid", "num_layers": 6, "min_scale": 0.2, "max_scale": 0.95,
                       "aspect_ratios": [1.0, 2.0, 0.5, 3.0, 0.3333], "reduce_boxes_in_lowest_layer": True}
    save_sidecar(dst, side)
    image = cv2.imread(str(grace_hopper))
    gen = Detector.from_path(dst, threads=1, score_threshold=0.6)
    assert gen.info.anchors_source == "generator tf_od_grid"
    op = Detector.from_path(v1_model, threads=1, score_threshold=0.6, postprocess="op")
    a, b = op.detect(image), gen.detect(image)
    assert a.class_ids.tolist() == b.class_ids.tolist() == [0, 31]  # person, tie
    assert np.diag(iou_matrix(a.xyxy, b.xyxy)).min() > 0.9  # the op's anchors are stored quantized
