"""Model inspection: forms, output roles, input spec, labels, and clear errors for bad models."""

from __future__ import annotations

import numpy as np
import pytest

from edgedet.errors import ModelError
from edgedet.labels import fit_labels, read_label_file
from edgedet.model import identify_op_outputs, identify_raw_outputs, open_model
from edgedet.sidecar import save_sidecar
from edgedet.tflite import schema, write_model


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
    lm = open_model(v1_model, threads=1, decoder="op")
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
    lm = open_model(fpnlite_model, threads=1, decoder="op")
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
        open_model(path, threads=1, decoder="ours")


@pytest.mark.parametrize("content", [b"", b"hello, not a model at all", b"\x18\x00\x00\x00TFL3" + b"\xff" * 64])
def test_corrupt_or_foreign_files_are_model_errors(tmp_path, content):
    path = tmp_path / "bad.tflite"
    path.write_bytes(content)
    with pytest.raises(ModelError):
        open_model(path, threads=1, decoder="ours")


def test_missing_model_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        open_model(tmp_path / "nope.tflite")


def test_sidecar_normalization_is_used(tmp_path, blazeface_model):
    model = tmp_path / "face.tflite"
    model.write_bytes(blazeface_model.read_bytes())
    save_sidecar(model, {"input": {"normalization": [[0, 0, 0], [255, 255, 255]]}})
    lm = open_model(model, threads=1, decoder="ours")
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


@pytest.mark.parametrize("decoder", ["ours", "op"])
def test_replicas_come_from_the_loaded_bytes_not_the_file(tmp_path, v1_model, decoder):
    path = tmp_path / "v1.tflite"
    path.write_bytes(v1_model.read_bytes())
    lm = open_model(path, threads=1, decoder=decoder)
    path.unlink()  # read once: replicas need no file
    twin = lm.replica(2)
    assert twin.interpreter is not lm.interpreter and twin.threads == 2 and twin.decoder == lm.decoder
    x = np.random.default_rng(0).integers(0, 256, (1, 300, 300, 3), dtype=np.uint8)
    outs = []
    for m in (lm, twin):
        m.interpreter.set_tensor(m.input_index, x)
        m.interpreter.invoke()
        outs.append([m.interpreter.get_tensor(d["index"]) for d in m.interpreter.get_output_details()])
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


# -- TF2-style exports: TensorFlow's NMS in the graph, decoded boxes, a dynamic input -----------------

def _tf_nms_model(tf, path) -> None:
    """A detector in the form TF2 Object Detection API exports take: a dynamic ``[1, H, W, 3]`` input,
    one box per 16x16 cell (decoded corners), sigmoid scores (background, ``bright``, ``never``),
    TensorFlow's NMS per class in the graph, and the pre-NMS ``raw_detection_*`` outputs beside it."""
    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)])
    def detect(image):
        x = tf.nn.avg_pool2d(image, 16, 16, "VALID")
        gh, gw = tf.shape(x)[1], tf.shape(x)[2]
        yy, xx = tf.meshgrid(tf.range(gh, dtype=tf.float32) / tf.cast(gh, tf.float32),
                             tf.range(gw, dtype=tf.float32) / tf.cast(gw, tf.float32), indexing="ij")
        h, w = 1.0 / tf.cast(gh, tf.float32), 1.0 / tf.cast(gw, tf.float32)
        boxes = tf.reshape(tf.stack([yy, xx, yy + h, xx + w], -1), [1, -1, 4])
        logit = tf.reshape(20.0 * tf.reduce_mean(x, axis=-1), [1, -1, 1])  # input in [-1, 1]
        scores = tf.sigmoid(tf.concat([-logit, logit, logit - 30.0], -1))
        kept_boxes, kept_scores = [], []
        for c in (1, 2):
            idx, sc = tf.image.non_max_suppression_with_scores(boxes[0], scores[0, :, c], 10, 0.5, 0.1)
            kept_boxes.append(tf.gather(boxes[0], idx))
            kept_scores.append(sc)
        return {"detection_boxes": tf.concat(kept_boxes, 0)[None], "detection_scores": tf.concat(kept_scores, 0)[None],
                "raw_detection_boxes": boxes, "raw_detection_scores": scores}

    conv = tf.lite.TFLiteConverter.from_concrete_functions([detect.get_concrete_function()], detect)
    path.write_bytes(conv.convert())


def test_tf_nms_export_with_dynamic_input_runs_our_nms_at_its_real_size(tmp_path):
    import subprocess
    import sys

    from edgedet.detector import Detector

    tf = pytest.importorskip("tensorflow")
    src = tmp_path / "tf2_export.tflite"
    _tf_nms_model(tf, src)
    with pytest.raises(ModelError, match=r"dynamic size .*--input-size"):
        open_model(src)  # at the file's [1, 1, 1, 3] it would find nothing
    labels = tmp_path / "labels.txt"
    labels.write_text("bright\nnever\n")
    out = tmp_path / "sized.tflite"
    res = subprocess.run([sys.executable, "-m", "edgedet", "convert", str(src), "-o", str(out), "--input-size", "64",
                          "--labels", str(labels)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    det = Detector.from_path(out, threads=1, score_threshold=0.5)
    assert det.info.form == "decoded" and det.info.input_size == (64, 64) and det.info.num_anchors == 16
    assert det.labels == ["bright", "never"]
    frame = np.zeros((480, 640, 3), np.uint8)
    frame[120:240, 160:320] = 255  # exactly the cell at row 1, column 1 of the 4x4 grid
    for d in (det, det.replica(2)):
        found = d.detect(frame)
        assert [d.labels[c] for c in found.class_ids] == ["bright"] and found.scores[0] > 0.99
        np.testing.assert_allclose(found.xyxy[0], [160, 120, 320, 240], atol=0.5)
