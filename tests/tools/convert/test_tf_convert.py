"""TensorFlow -> .tflite conversion: Keras and SavedModel sources, fusing the SSD postprocess op.

Sources are small untrained SSDlite models (``ssdlite_keras_model``, width 0.5, 160x160) saved as
a ``.keras`` file (with a sidecar naming its anchors) or exported as a SavedModel directory (no
sidecar: anchors derived from the input size). Option and error tests need no TensorFlow; the
others skip without it (the ``[convert]`` extra).
"""

from __future__ import annotations

import contextlib
import io
import sys
import warnings

import cv2
import numpy as np
import pytest

from edgedet.errors import ConfigError, EdgedetError, ModelError
from edgedet.tools.convert.tf import Calibration, convert_tf, synthetic_images

SIZE = 160
CLASSES = 4


# -- no TensorFlow needed -------------------------------------------------------------------------

def test_int8_without_calibration_images_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="calibration images"):
        convert_tf(tmp_path / "saved_model", tmp_path / "m.tflite", quantize="int8")


@pytest.mark.parametrize("kwargs, words", [
    ({"quantize": "int4"}, "quantize"),
    ({"detection_op": "nms"}, "detection_op"),
    ({"quantize": "int8", "calibration_images": ["x.jpg"], "input_dtype": "float16"}, "input type"),
])
def test_bad_options_are_config_errors(tmp_path, kwargs, words):
    with pytest.raises(ConfigError, match=words):
        convert_tf(tmp_path / "saved_model", tmp_path / "m.tflite", **kwargs)


def test_output_must_be_a_tflite_file(tmp_path):
    with pytest.raises(ConfigError, match=r"\.tflite"):
        convert_tf(tmp_path / "saved_model", tmp_path / "m.onnx")


def test_without_tensorflow_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(EdgedetError, match=r"pip install 'edgedet\[convert\]'"):
        convert_tf(tmp_path / "saved_model", tmp_path / "m.tflite")


def test_synthetic_calibration_is_deterministic_and_photo_sized():
    a = list(synthetic_images(3, 120, 160, seed=1))
    b = list(synthetic_images(3, 120, 160, seed=1))
    assert all(x.shape == (120, 160, 3) and x.dtype == np.uint8 for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len({x.tobytes() for x in a}) == 3 and min(float(x.std()) for x in a) > 10


def test_calibration_inputs_are_prepared_like_inference(grace_hopper):
    """Stretch to the input size, RGB, (x - 127.5) / 127.5; a full-range ramp comes first."""
    cal = Calibration(96, 128, images=[grace_hopper], count=5)
    arrays = list(cal.arrays())
    assert len(arrays) == 2 and all(a.shape == (1, 96, 128, 3) and a.dtype == np.float32 for a in arrays)
    assert arrays[0].min() == -1.0 and arrays[0].max() == 1.0
    from edgedet.preprocess import InputSpec, Preprocessor

    bgr = cv2.imread(str(grace_hopper))
    spec = InputSpec(128, 96, np.dtype(np.float32), mean=(127.5,) * 3, std=(127.5,) * 3, color="rgb")
    np.testing.assert_array_equal(arrays[1], Preprocessor(spec, "stretch").prepare(bgr).tensor)
    rgb_means = (bgr[..., ::-1].reshape(-1, 3).mean(0) - 127.5) / 127.5
    np.testing.assert_allclose(arrays[1][0].reshape(-1, 3).mean(0), rgb_means, atol=0.02)
    assert cal.describe()["kind"] == "images"


# -- sources --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tf_keras():
    pytest.importorskip("tensorflow")
    from edgedet.tools.convert.tf import import_tf

    return import_tf()


@pytest.fixture(scope="module")
def keras_ssd(tf_keras, tmp_path_factory):
    """``(.keras path, model)``: an untrained SSDlite with a sidecar naming its anchor grid."""
    from edgedet.sidecar import save_sidecar
    from edgedet.tools.convert.anchors import standard_spec
    from edgedet.tools.convert.ssdlite import ssdlite_keras_model

    model, sizes = ssdlite_keras_model(width=0.5, input_size=SIZE, num_classes=CLASSES, seed=3)
    path = tmp_path_factory.mktemp("keras") / "ssd.keras"
    _save(model, path)
    save_sidecar(path, {"labels": ["cat", "dog", "car", "bike"],
                        "anchors": standard_spec(SIZE, SIZE, feature_map_sizes=sizes).to_sidecar(),
                        "postprocess": {"num_classes": CLASSES, "score_activation": "sigmoid"}})
    return path, model


@pytest.fixture(scope="module")
def saved_model_ssd(tf_keras, keras_ssd, tmp_path_factory):
    """A SavedModel directory of the same network, raw outputs, no sidecar."""
    tf, keras = tf_keras
    _, model = keras_ssd
    target = tmp_path_factory.mktemp("sm") / "ssd_saved_model"
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name="serving_default", fn=lambda image: model(image, training=False),
                         input_signature=[tf.TensorSpec((1, SIZE, SIZE, 3), tf.float32, name="image")])
    with contextlib.redirect_stdout(io.StringIO()):
        archive.write_out(str(target), verbose=False)
    return target


def _save(model, path) -> None:
    with warnings.catch_warnings():  # Keras' numpy-2 copy= deprecation, once per weight
        warnings.simplefilter("ignore", DeprecationWarning)
        model.save(str(path))


def _grace_input(path) -> np.ndarray:
    bgr = cv2.resize(cv2.imread(str(path)), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    return ((bgr[..., ::-1].astype(np.float32) - 127.5) / 127.5)[None]


def test_raw_float_conversion_computes_what_keras_computes(keras_ssd, tmp_path, grace_hopper):
    from edgedet.tflite import load_interpreter

    src, model = keras_ssd
    out = tmp_path / "raw.tflite"
    report = convert_tf(src, out, detection_op="strip")
    assert report["postprocess"] == "raw" and report["source_kind"] == "keras"
    assert "TFLite_Detection_PostProcess" not in report["ops"]
    x = _grace_input(grace_hopper)
    want = model(x, training=False)
    interp = load_interpreter(out, 2)
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    got = {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}
    np.testing.assert_allclose(got["box_encodings"], want["box_encodings"].numpy(), atol=2e-3)
    np.testing.assert_allclose(got["class_predictions"], want["class_predictions"].numpy(), atol=2e-3)
    # the raw model carries its anchors and labels over
    from edgedet.detector import Detector

    det = Detector.from_path(out, score_threshold=0.0)
    assert det.labels == ["cat", "dog", "car", "bike"]
    assert len(det.detect(cv2.imread(str(grace_hopper)))) > 0


def test_keras_source_gets_the_postprocess_op_from_its_sidecar_anchors(keras_ssd, tmp_path, grace_hopper):
    from edgedet.detector import Detector
    from edgedet.sidecar import load_sidecar
    from edgedet.tflite import opcode_name, read_model, tensor_array
    from edgedet.tools.convert.anchors import spec_from_sidecar, ssd_anchors

    src, _ = keras_ssd
    out = tmp_path / "fused_dynamic.tflite"
    report = convert_tf(src, out, quantize="dynamic", max_detections=20)
    assert report["postprocess"] == "op" and report["anchors"] == "sidecar"
    assert report["ops"]["TFLite_Detection_PostProcess"] == 1
    assert report["outputs"][0]["name"] == "detection_boxes" and report["outputs"][0]["shape"] == [1, 20, 4]
    assert report["size_bytes"] < 0.5 * report["source_size_bytes"]  # int8 weights
    # the op holds the sidecar's anchors and attributes
    model = read_model(out)
    g = model.subgraphs[0]
    op = next(o for o in g.operators if opcode_name(model, o.opcodeIndex) == "TFLite_Detection_PostProcess")
    want = ssd_anchors(spec_from_sidecar(load_sidecar(src)["anchors"]))
    np.testing.assert_allclose(tensor_array(model, g.tensors[op.inputs[2]]), want, atol=1e-6)
    side = load_sidecar(out)
    assert side["postprocess"]["form"] == "op" and side["postprocess"]["num_classes"] == CLASSES
    assert side["labels"] == ["cat", "dog", "car", "bike"]
    assert side["history"][-1]["quantize"] == "dynamic"
    image = cv2.imread(str(grace_hopper))
    by_op = Detector.from_path(out, score_threshold=0.0, postprocess="op").detect(image)
    ours = Detector.from_path(out, score_threshold=0.0, postprocess="ours").detect(image)
    assert 0 < len(by_op) <= 20
    k = min(len(by_op), len(ours), 10)
    np.testing.assert_allclose(ours.xyxy[:k], by_op.xyxy[:k], atol=0.5)


@pytest.mark.slow
def test_saved_model_to_int8_derives_anchors_and_the_score_activation(saved_model_ssd, tmp_path, asset,
                                                                      grace_hopper):
    from edgedet.detector import Detector
    from edgedet.sidecar import load_sidecar

    out = tmp_path / "sm_int8.tflite"
    report = convert_tf(saved_model_ssd, out, quantize="int8", calibration_images=[asset("images/skimage")],
                        num_calib=6, input_dtype="int8")
    assert report["source_kind"] == "savedmodel"
    assert report["anchors"] == "derived" and report["num_classes"] == CLASSES
    assert report["score_activation"] == "sigmoid"  # logits leave [0, 1]
    assert report["inputs"][0]["dtype"] == "int8"
    assert report["ops"]["TFLite_Detection_PostProcess"] == 1 and report["ops"].get("CONV_2D") == 55
    side = load_sidecar(out)
    assert side["calibration"]["kind"] == "images" and side["calibration"]["count"] == 6
    assert side["labels"] == [f"class{i}" for i in range(CLASSES)]
    dets = Detector.from_path(out, score_threshold=0.0).detect(cv2.imread(str(grace_hopper)))
    assert len(dets) > 0 and ((dets.class_ids >= 0) & (dets.class_ids < CLASSES)).all()


def test_wrong_anchor_count_and_impossible_fusion_are_model_errors(keras_ssd, tmp_path):
    src, _ = keras_ssd
    with pytest.raises(ModelError, match="anchors"):
        convert_tf(src, tmp_path / "a.tflite", anchors=np.zeros((5, 4), np.float32))
    assert not (tmp_path / "a.tflite").exists()


def test_a_model_that_is_not_an_ssd_converts_plain_and_refuses_fusion(tf_keras, tmp_path):
    _, keras = tf_keras
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    src = tmp_path / "classifier.keras"
    _save(model, src)
    report = convert_tf(src, tmp_path / "c.tflite", quantize="fp16")
    assert report["postprocess"] == "none" and report["outputs"][0]["shape"] == [1, 3]
    with pytest.raises(ModelError, match="no raw SSD outputs"):
        convert_tf(src, tmp_path / "d.tflite", detection_op="fuse")


def test_unusable_sources_are_one_line_model_errors(tf_keras, tmp_path, v1_model):
    with pytest.raises(ModelError, match="already a .tflite"):
        convert_tf(v1_model, tmp_path / "x.tflite")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ModelError, match="saved_model.pb"):
        convert_tf(tmp_path / "empty_dir", tmp_path / "x.tflite")
    with pytest.raises(ModelError, match="not found"):
        convert_tf(tmp_path / "missing", tmp_path / "x.tflite")
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="cannot load Keras model"):
        convert_tf(bad, tmp_path / "x.tflite")
