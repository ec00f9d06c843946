"""Model inspection: forms, output roles, input spec, labels, and clear errors for bad models."""

from __future__ import annotations

import numpy as np
import pytest

from edgedet.errors import ModelError
from edgedet.labels import fit_labels, read_label_file
from edgedet.model import identify_op_outputs, identify_raw_outputs, open_model
from edgedet.sidecar import save_sidecar
from edgedet.tflite_file import schema, write_model


def make_classifier(path, classes: int = 1001) -> None:
    """A real (tiny) image classifier: input [1,8,8,3] float -> FULLY_CONNECTED -> [1, classes]."""
    S = schema()
    m = S.ModelT()
    m.version = 3
    code = S.OperatorCodeT()
    code.builtinCode = S.BuiltinOperator.FULLY_CONNECTED
    code.deprecatedBuiltinCode = S.BuiltinOperator.FULLY_CONNECTED
    code.version = 1
    m.operatorCodes = [code]
    bufs = [S.BufferT() for _ in range(4)]
    weights = np.random.default_rng(0).random((classes, 192), dtype=np.float32)
    bufs[2].data = np.frombuffer(weights.tobytes(), np.uint8)

    def tensor(name, shape, buf):
        t = S.TensorT()
        t.name, t.shape, t.type, t.buffer = name, np.array(shape, np.int32), 0, buf
        return t

    sub = S.SubGraphT()
    sub.tensors = [tensor("input", [1, 8, 8, 3], 1), tensor("w", [classes, 192], 2),
                   tensor("logits", [1, classes], 3)]
    sub.inputs, sub.outputs = np.array([0], np.int32), np.array([2], np.int32)
    op = S.OperatorT()
    op.opcodeIndex = 0
    op.inputs, op.outputs = np.array([0, 1, -1], np.int32), np.array([2], np.int32)
    op.builtinOptionsType = S.BuiltinOptions.FullyConnectedOptions
    op.builtinOptions = S.FullyConnectedOptionsT()
    sub.operators = [op]
    m.subgraphs = [sub]
    m.buffers = bufs
    write_model(m, path)


def test_v1_is_form_op_with_its_own_options(v1_model):
    lm = open_model(v1_model, threads=1, postprocess="op")
    assert lm.form == "op" and lm.decoder == "op"
    spec = lm.input_spec
    assert (spec.width, spec.height) == (300, 300) and spec.dtype == np.uint8
    assert spec.scale == pytest.approx(0.0078125) and spec.zero_point == 128
    assert spec.mean is None  # uint8: raw pixels
    o = lm.options
    assert (o.num_classes, o.max_detections, o.background) == (90, 10, 1)
    assert o.iou_threshold == pytest.approx(0.6)
    assert (o.y_scale, o.x_scale, o.h_scale, o.w_scale) == (10, 10, 5, 5)
    assert lm.num_anchors == 1917


def test_fpnlite_float_input_gets_default_normalization(fpnlite_model):
    lm = open_model(fpnlite_model, threads=1, postprocess="op")
    spec = lm.input_spec
    assert spec.dtype == np.float32 and (spec.width, spec.height) == (320, 320)
    assert spec.mean == (127.5,) * 3 and spec.std == (127.5,) * 3
    assert lm.num_anchors == 12804


def _op_details():
    return [
        {"index": 10, "name": "a", "shape": np.array([1, 10, 4])},
        {"index": 11, "name": "b", "shape": np.array([1, 10])},
        {"index": 12, "name": "c", "shape": np.array([1, 10])},
        {"index": 13, "name": "d", "shape": np.array([1])},
    ]


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2]])
def test_op_outputs_told_apart_by_value_not_position(order):
    details = [_op_details()[i] for i in order]
    values = {10: np.zeros((1, 10, 4)), 11: np.array([[0.9, 0.8, 0.5, 0.4, 0.3, 0.2, 0.2, 0.1, 0.1, 0.05]]),
              12: np.array([[0.0, 31, 0, 76, 2, 2, 0, 0, 1, 5]]), 13: np.array([10.0])}
    roles = identify_op_outputs(details, values, op_order=[10, 12, 11, 13])
    assert (roles.boxes, roles.scores, roles.classes, roles.count) == (10, 11, 12, 13)


def test_op_outputs_fall_back_to_the_ops_own_order_when_values_cannot_tell():
    values = {10: np.zeros((1, 10, 4)), 11: np.zeros((1, 10)), 12: np.zeros((1, 10)), 13: np.array([0.0])}
    roles = identify_op_outputs(_op_details()[::-1], values, op_order=[10, 12, 11, 13])
    assert (roles.classes, roles.scores) == (12, 11)


def test_raw_outputs_by_name_and_shape():
    details = [
        {"index": 1, "name": "classificators", "shape": np.array([1, 896, 1]), "quantization": (0.0, 0)},
        {"index": 2, "name": "regressors", "shape": np.array([1, 896, 16]), "quantization": (0.0, 0)},
    ]
    roles = identify_raw_outputs(details)
    assert (roles.boxes, roles.scores) == (2, 1)


def test_classifier_is_not_a_detector(tmp_path):
    path = tmp_path / "classifier.tflite"
    make_classifier(path)
    with pytest.raises(ModelError, match="not an SSD detector"):
        open_model(path, threads=1, postprocess="ours")


@pytest.mark.parametrize("content", [b"", b"hello, not a model at all", b"\x18\x00\x00\x00TFL3" + b"\xff" * 64])
def test_corrupt_or_foreign_files_are_model_errors(tmp_path, content):
    path = tmp_path / "bad.tflite"
    path.write_bytes(content)
    with pytest.raises(ModelError):
        open_model(path, threads=1, postprocess="ours")


def test_missing_model_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        open_model(tmp_path / "nope.tflite")


def test_sidecar_normalization_is_used(tmp_path, blazeface_model):
    model = tmp_path / "face.tflite"
    model.write_bytes(blazeface_model.read_bytes())
    save_sidecar(model, {"input": {"normalization": [[0, 0, 0], [255, 255, 255]]}})
    lm = open_model(model, threads=1, postprocess="ours")
    assert lm.input_spec.mean == (0.0, 0.0, 0.0) and lm.input_spec.std == (255.0,) * 3
    assert lm.num_anchors == 896 and lm.anchors_source == "generator mediapipe"


# -- labels ---------------------------------------------------------------------------------------
def test_label_file_plain_and_coral_style(tmp_path, coco_labels):
    labels = read_label_file(coco_labels)
    assert len(labels) == 90 and labels[0] == "person" and labels[11] == "n/a"
    coral = tmp_path / "coral.txt"
    coral.write_text("0  person\n1  bicycle\n3  motorcycle\n")
    assert read_label_file(coral) == ["person", "bicycle", "n/a", "motorcycle"]


def test_labels_that_do_not_fit_are_a_clear_error(coco_labels):
    labels = read_label_file(coco_labels)
    with pytest.raises(ModelError, match="80 labels .* 90 classes"):
        fit_labels(labels[:80], 90, source="labels")
    assert fit_labels(["background"] + labels, 90)[0] == "person"  # a leading background line is skipped
    assert fit_labels(["???"] + labels, 90, offset=1) == labels


def test_bad_sidecar_postprocess_is_a_model_error(tmp_path, blazeface_model):
    model = tmp_path / "face.tflite"
    model.write_bytes(blazeface_model.read_bytes())
    save_sidecar(model, {"postprocess": {"box_order": "xyxy"}})
    with pytest.raises(ModelError, match="box_order"):
        open_model(model, threads=1)
    save_sidecar(model, {"postprocess": {"num_classes": 3}})
    with pytest.raises(ModelError, match="1 columns"):
        open_model(model, threads=1)
