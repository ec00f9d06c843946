"""The untrained SSDlite builder: anchors, calibration data, and real built models run by the Detector.

The anchor and option tests need no TensorFlow; the build tests skip without it (the
``[convert]`` extra). Models are built small (width 0.5, 160x160) to keep the suite fast.
"""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from edgedet.errors import ConfigError, EdgedetError
from edgedet.tools.convert.anchors import SsdAnchorSpec, spec_from_sidecar, ssd_anchors, standard_spec

SIZE = 160
CLASSES = 7


# -- anchors (no TensorFlow) ----------------------------------------------------------------------

def test_anchor_counts_match_the_classic_ssd_models():
    assert len(ssd_anchors(standard_spec(300, 300))) == 1917  # SSD MobileNet v1/v2 at 300
    assert len(ssd_anchors(standard_spec(320, 320))) == 2034  # SSDlite MobileNetV2 at 320
    spec = standard_spec(320, 320)
    assert spec.feature_map_sizes == ((20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1))
    assert spec.anchors_per_location() == [3, 6, 6, 6, 6, 6]


def test_anchors_equal_those_inside_the_coco_ssd_model(v1_model):
    """The grid reproduces the anchors stored in Google's SSD MobileNet v1 (uint8) op constant."""
    from edgedet.tflite import opcode_name, read_model, tensor_array

    model = read_model(v1_model)
    g = model.subgraphs[0]
    op = next(o for o in g.operators if opcode_name(model, o.opcodeIndex) == "TFLite_Detection_PostProcess")
    t = g.tensors[op.inputs[2]]
    q = t.quantization
    stored = (tensor_array(model, t).astype(np.float32) - q.zeroPoint[0]) * q.scale[0]
    ours = ssd_anchors(standard_spec(300, 300))
    assert ours.shape == stored.shape == (1917, 4)
    assert np.abs(ours - stored).max() <= q.scale[0]  # within one quantization step


def test_anchor_spec_round_trips_through_the_sidecar():
    spec = standard_spec(192, 192)
    entry = spec.to_sidecar()
    assert entry["generator"] == "tf_od_grid"
    back = spec_from_sidecar(entry)
    assert back == spec
    assert np.array_equal(ssd_anchors(back), ssd_anchors(spec))


def test_anchor_rows_follow_the_prediction_map_order():
    spec = SsdAnchorSpec(num_layers=2, reduce_boxes_in_lowest_layer=False, feature_map_sizes=((2, 3), (1, 1)))
    a = ssd_anchors(spec)
    per_cell = spec.anchors_per_location()[0]
    assert len(a) == (2 * 3 + 1) * per_cell
    a = a[: 2 * 3 * per_cell]  # the first map
    centres = a[::per_cell, :2]  # (y, x) of each cell, row-major
    np.testing.assert_allclose(centres[:3, 0], 0.25)
    np.testing.assert_allclose(centres[:3, 1], [1 / 6, 0.5, 5 / 6], rtol=1e-6)
    np.testing.assert_allclose(centres[3:, 0], 0.75)


# -- options and the missing extra (no TensorFlow needed) -----------------------------------------

@pytest.mark.parametrize("kwargs, words", [
    ({"backbone": "resnet50"}, "backbone"),
    ({"width": 2.0}, "width"),
    ({"input_size": 16}, "input size"),
    ({"num_classes": 0}, "classes"),
    ({"quantize": "int4"}, "quantize"),
    ({"detection_op": "nms"}, "detection_op"),
])
def test_bad_options_are_one_line_config_errors(tmp_path, kwargs, words):
    from edgedet.tools.convert.ssdlite import build_ssdlite

    with pytest.raises(ConfigError, match=words):
        build_ssdlite(tmp_path / "m.tflite", **kwargs)


def test_without_tensorflow_the_error_names_the_extra(tmp_path, monkeypatch):
    from edgedet.tools.convert.ssdlite import build_ssdlite

    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow -> ImportError
    with pytest.raises(EdgedetError, match=r"pip install 'edgedet\[convert\]'"):
        build_ssdlite(tmp_path / "m.tflite", width=0.5, input_size=SIZE)


def test_importing_edgedet_does_not_import_tensorflow():
    import subprocess

    code = ("import sys, edgedet, edgedet.tools.convert.tf, edgedet.tools.convert.ssdlite, edgedet.cli; "
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- real builds (TensorFlow) ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def int8_model(tmp_path_factory):
    pytest.importorskip("tensorflow")
    from assets import require_asset

    from edgedet.tools.convert.ssdlite import build_ssdlite

    photos = [require_asset("images/coral"), require_asset("images/skimage")]
    path = tmp_path_factory.mktemp("ssdlite") / "ssdlite_int8.tflite"
    report = build_ssdlite(path, width=0.5, input_size=SIZE, num_classes=CLASSES, quantize="int8",
                           calibration_images=photos, num_calib=12)
    return path, report


@pytest.fixture(scope="module")
def float_raw_model(tmp_path_factory):
    pytest.importorskip("tensorflow")
    from edgedet.tools.convert.ssdlite import build_ssdlite

    folder = tmp_path_factory.mktemp("ssdlite_raw")
    path = folder / "ssdlite_raw.tflite"
    report = build_ssdlite(path, width=0.5, input_size=SIZE, num_classes=CLASSES, quantize=None,
                           detection_op="strip", labels=[f"thing{i}" for i in range(CLASSES)],
                           keras_out=folder / "ssdlite.keras")
    return path, report


def test_int8_build_ends_in_the_postprocess_op_and_takes_uint8(int8_model):
    path, report = int8_model
    assert path.is_file() and report["size_bytes"] == path.stat().st_size
    assert report["ops"]["TFLite_Detection_PostProcess"] == 1
    assert report["ops"]["CONV_2D"] == 55 and report["ops"]["DEPTHWISE_CONV_2D"] == 33
    assert [i["dtype"] for i in report["inputs"]] == ["uint8"]
    assert report["inputs"][0]["shape"] == [1, SIZE, SIZE, 3]
    assert [o["name"] for o in report["outputs"]] == ["detection_boxes", "detection_classes",
                                                      "detection_scores", "num_detections"]
    # the input quantization takes pixels as they are: (x - 127.5) / 127.5 over 0..255
    scale, _zp = report["inputs"][0]["quantization"]
    assert scale == pytest.approx(1 / 127.5, rel=1e-4)
    assert report["calibration"]["kind"] == "images"


def test_int8_build_writes_its_sidecar(int8_model):
    from edgedet.sidecar import load_sidecar

    path, _ = int8_model
    side = load_sidecar(path)
    assert side["labels"] == [f"class{i}" for i in range(CLASSES)]
    assert side["input"] == {"normalization": [127.5, 127.5], "resize": "stretch", "color": "rgb"}
    pp = side["postprocess"]
    assert pp["form"] == "op" and pp["num_classes"] == CLASSES
    assert (pp["y_scale"], pp["x_scale"], pp["h_scale"], pp["w_scale"]) == (10.0, 10.0, 5.0, 5.0)
    assert side["anchors"]["generator"] == "tf_od_grid"
    assert side["anchors"]["count"] == len(ssd_anchors(standard_spec(SIZE, SIZE)))
    assert side["quantization"]["mode"] == "int8"
    assert side["source"]["trained"] is False
    last = side["history"][-1]
    assert last["width"] == 0.5 and last["input_size"] == SIZE and last["trained"] is False


def test_int8_build_runs_in_the_detector(int8_model, grace_hopper):
    from edgedet.detector import Detector

    path, _ = int8_model
    image = cv2.imread(str(grace_hopper))
    h, w = image.shape[:2]
    by_op = Detector.from_path(path, score_threshold=0.0, postprocess="op").detect(image)
    ours = Detector.from_path(path, score_threshold=0.0, postprocess="ours").detect(image)
    assert len(by_op) > 0
    assert by_op.xyxy.min() >= 0 and (by_op.xyxy[:, 0::2] <= w).all() and (by_op.xyxy[:, 1::2] <= h).all()
    assert ((by_op.class_ids >= 0) & (by_op.class_ids < CLASSES)).all()
    assert ((by_op.scores > 0) & (by_op.scores <= 1)).all()
    assert np.ptp(by_op.scores) > 0  # untrained, but the outputs depend on the image
    # our decode of the stripped op finds the same boxes
    k = min(len(by_op), len(ours), 10)
    np.testing.assert_allclose(ours.xyxy[:k], by_op.xyxy[:k], atol=0.5)
    np.testing.assert_allclose(ours.scores[:k], by_op.scores[:k], atol=1e-3)


def test_raw_build_has_an_anchor_file_and_decodes(float_raw_model, grace_hopper):
    from edgedet.detector import Detector
    from edgedet.sidecar import load_sidecar

    path, report = float_raw_model
    assert "TFLite_Detection_PostProcess" not in report["ops"]
    assert [o["name"] for o in report["outputs"]] == ["box_encodings", "class_predictions"]
    n = len(ssd_anchors(standard_spec(SIZE, SIZE)))
    assert report["outputs"][0]["shape"] == [1, n, 4]
    assert report["outputs"][1]["shape"] == [1, n, CLASSES + 1]
    assert report["inputs"][0]["dtype"] == "float32"
    side = load_sidecar(path)
    assert side["postprocess"]["form"] == "raw"
    assert side["postprocess"]["score_activation"] == "sigmoid" and side["postprocess"]["background"] == 1
    anchors = np.load(path.with_suffix(".anchors.npy"))
    np.testing.assert_array_equal(anchors, ssd_anchors(standard_spec(SIZE, SIZE)))
    det = Detector.from_path(path, score_threshold=0.0)
    assert det.labels == [f"thing{i}" for i in range(CLASSES)]
    # keras_out: the Keras model too, with a sidecar naming its anchor grid (for convert_tf)
    keras_side = load_sidecar(path.parent / "ssdlite.keras")
    assert (path.parent / "ssdlite.keras").is_file() and keras_side["anchors"]["generator"] == "tf_od_grid"
    assert keras_side["postprocess"]["score_activation"] == "sigmoid"
    dets = det.detect(cv2.imread(str(grace_hopper)))
    assert len(dets) > 0 and ((dets.class_ids >= 0) & (dets.class_ids < CLASSES)).all()


def test_float_and_int8_builds_of_one_seed_agree(int8_model, float_raw_model, grace_hopper):
    """Same seed, same weights: the int8 model's best boxes are the float model's."""
    from edgedet.detector import Detector

    image = cv2.imread(str(grace_hopper))
    q = Detector.from_path(int8_model[0], score_threshold=0.0, class_agnostic=True).detect(image)
    f = Detector.from_path(float_raw_model[0], score_threshold=0.0, class_agnostic=True).detect(image)
    assert len(q) and len(f)
    best_q, best_f = q.xyxy[np.argmax(q.scores)], f.xyxy[np.argmax(f.scores)]
    inter = np.clip(np.minimum(best_q[2:], best_f[2:]) - np.maximum(best_q[:2], best_f[:2]), 0, None).prod()
    union = np.prod(best_q[2:] - best_q[:2]) + np.prod(best_f[2:] - best_f[:2]) - inter
    assert inter / union > 0.5
