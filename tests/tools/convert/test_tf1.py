"""TF1 Object Detection API exports -> .tflite: the frozen graph, the zoo's tarball, its saved_model/.

The source is the real SSDLite MobileNetV2 person detector of the assets (a TF1 export), packed by
the tests in the zoo's tarball layout (``<name>/frozen_inference_graph.pb``, ``saved_model/``,
``model.ckpt.*``, ``pipeline.config``). Text-proto tests need no TensorFlow; the others skip
without it (the ``[convert]`` extra) or without the asset.
"""

from __future__ import annotations

import tarfile
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from assets import require_asset

from edgedet.errors import ConfigError, ModelError
from edgedet.tools.convert.tf1 import (
    analyze_tf1,
    convert_tf1,
    is_tf1_export,
    parse_label_map,
    parse_text_proto,
    proto_get,
    proto_list,
    read_tf1_export,
    resolve_labels,
)

GRAPH = "models/tf1/ssdlite_mobilenet_v2_person/frozen_inference_graph.pb"
NAME = "ssdlite_mobilenet_v2_person_2026_01_01"

# the zoo's ssdlite_mobilenet_v2_coco.config, trimmed, for the one-class person model
PIPELINE_CONFIG = """
# SSDLite with Mobilenet v2 configuration
model {
  ssd {
    num_classes: 1
    box_coder { faster_rcnn_box_coder { y_scale: 10.0 x_scale: 10.0 height_scale: 5.0 width_scale: 5.0 } }
    matcher { argmax_matcher { matched_threshold: 0.5 unmatched_threshold: 0.5 } }
    anchor_generator {
      ssd_anchor_generator {
        num_layers: 6
        min_scale: 0.2
        max_scale: 0.95
        aspect_ratios: 1.0
        aspect_ratios: 2.0
        aspect_ratios: 0.5
        aspect_ratios: 3.0
        aspect_ratios: 0.3333
      }
    }
    image_resizer { fixed_shape_resizer { height: 300 width: 300 } }
    box_predictor {
      convolutional_box_predictor {
        kernel_size: 3
        use_depthwise: true
        conv_hyperparams { activation: RELU_6, regularizer { l2_regularizer { weight: 0.00004 } } }
      }
    }
    feature_extractor { type: 'ssd_mobilenet_v2' min_depth: 16 depth_multiplier: 1.0 use_depthwise: true }
    post_processing {
      batch_non_max_suppression {
        score_threshold: 1e-8
        iou_threshold: 0.6
        max_detections_per_class: 100
        max_total_detections: 100
      }
      score_converter: SIGMOID
    }
  }
}
train_config: {
  batch_size: 24
  fine_tune_checkpoint: "PATH_TO_BE_CONFIGURED/model.ckpt"
  data_augmentation_options { random_horizontal_flip { } }
}
eval_input_reader: { label_map_path: "PATH_TO_BE_CONFIGURED/mscoco_label_map.pbtxt" shuffle: false }
"""

PERSON_MAP = 'item {\n  name: "/m/01g317"\n  id: 1\n  display_name: "person"\n}\n'


# -- text protos (no TensorFlow) ------------------------------------------------------------------

def test_pipeline_config_reads_nested_repeated_and_commented_fields():
    cfg = parse_text_proto(PIPELINE_CONFIG)
    ssd = proto_get(cfg, "model.ssd")
    assert ssd["num_classes"] == 1
    assert proto_list(proto_get(ssd, "anchor_generator.ssd_anchor_generator"), "aspect_ratios") == [
        1.0, 2.0, 0.5, 3.0, 0.3333]
    assert proto_get(ssd, "post_processing.score_converter") == "SIGMOID"
    assert proto_get(ssd, "post_processing.batch_non_max_suppression.score_threshold") == 1e-8
    assert proto_get(ssd, "feature_extractor.type") == "ssd_mobilenet_v2"
    assert proto_get(cfg, "eval_input_reader.shuffle") is False
    assert proto_get(cfg, "model.ssd.missing", "default") == "default"


def test_label_map_gives_names_by_id():
    text = PERSON_MAP + 'item { id: 3 name: "car" }\n'
    assert parse_label_map(text) == ["person", "n/a", "car"]


def test_malformed_text_proto_is_one_config_error():
    with pytest.raises(ConfigError, match="not closed"):
        parse_text_proto("model { ssd { num_classes: 1 }")


def test_unknown_source_files_are_refused(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\0" * 16)
    assert not is_tf1_export(bad)
    with pytest.raises(ConfigError, match="unsupported source"):
        read_tf1_export(bad)
    with pytest.raises(ConfigError, match="not found"):
        read_tf1_export(tmp_path / "missing.pb")


# -- with TensorFlow and the asset ----------------------------------------------------------------

@pytest.fixture(scope="module")
def tf():
    return pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def graph_pb(tf) -> Path:
    return require_asset(GRAPH)


@pytest.fixture(scope="module")
def export_dir(tf, graph_pb, tmp_path_factory) -> Path:
    """The zoo's unpacked layout around the asset graph (its saved_model/ as the exporter writes it)."""
    root = tmp_path_factory.mktemp("zoo") / NAME
    root.mkdir()
    (root / "frozen_inference_graph.pb").write_bytes(graph_pb.read_bytes())
    (root / "pipeline.config").write_text(PIPELINE_CONFIG)
    for part in ("model.ckpt.index", "model.ckpt.meta", "model.ckpt.data-00000-of-00001", "checkpoint"):
        (root / part).write_bytes(b"not read by the converter")
    gd = tf.compat.v1.GraphDef()
    gd.ParseFromString(graph_pb.read_bytes())
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as sess:
        tf.compat.v1.import_graph_def(gd, name="")
        names = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
        sig = tf.compat.v1.saved_model.predict_signature_def(
            {"inputs": graph.get_tensor_by_name("image_tensor:0")},
            {n: graph.get_tensor_by_name(n + ":0") for n in names})
        builder = tf.compat.v1.saved_model.Builder(str(root / "saved_model"))
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig})
        builder.save()
    return root


@pytest.fixture(scope="module")
def tarball(export_dir) -> Path:
    path = export_dir.parent / f"{NAME}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(export_dir, arcname=NAME)
    return path


@pytest.fixture(scope="module")
def label_map(export_dir) -> Path:
    path = export_dir.parent / "person_label_map.pbtxt"
    path.write_text(PERSON_MAP)
    return path


@pytest.fixture(scope="module")
def raw_model(tarball, label_map) -> tuple:
    out = tarball.parent / "out" / "person_raw.tflite"
    report = convert_tf1(tarball, out, detection_op="strip", labels=label_map)
    return out, report


def _tf_preprocess(tf, graph_pb: Path, bgr: np.ndarray) -> tuple:
    """TF's own preprocessed tensor of ``bgr`` and the body's raw outputs on it."""
    gd = tf.compat.v1.GraphDef()
    gd.ParseFromString(graph_pb.read_bytes())
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as sess:
        tf.compat.v1.import_graph_def(gd, name="")
        x = sess.run("Preprocessor/sub:0", {"image_tensor:0": cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[None]})
        boxes, logits = sess.run(["concat:0", "concat_1:0"], {"Preprocessor/sub:0": x})
    return x, boxes.reshape(1, -1, 4), logits


def _photo() -> np.ndarray:
    return cv2.imread(str(require_asset("images/coral/grace_hopper.bmp")))


def test_the_body_anchors_and_settings_are_found_from_the_graph(graph_pb):
    model = analyze_tf1(read_tf1_export(graph_pb))
    assert (model.input_tensor, model.boxes_tensor, model.scores_tensor) == (
        "Preprocessor/sub:0", "concat:0", "concat_1:0")
    assert model.num_anchors == 1917 and model.anchors.shape == (1917, 4)
    assert (model.num_classes, model.background, model.score_activation) == (1, 1, "sigmoid")
    assert model.input_size == (300, 300) and model.normalization() == [127.5, 127.5]
    assert model.resize == {"op": "ResizeBilinear", "align_corners": False, "half_pixel_centers": False}
    assert model.scales == (10.0, 10.0, 5.0, 5.0)
    assert (model.iou_threshold, model.max_detections, model.detections_per_class) == (0.6, 100, 100)
    # normalized yxhw anchors: first cell of the 19x19 map, the 0.1 box
    np.testing.assert_allclose(model.anchors[0], [0.5 / 19, 0.5 / 19, 0.1, 0.1], atol=1e-6)


def test_zoo_tarball_converts_with_a_full_sidecar(raw_model):
    from edgedet.sidecar import load_sidecar

    out, report = raw_model
    side = load_sidecar(out)
    assert side["labels"] == ["person"]
    assert side["input"]["normalization"] == [127.5, 127.5] and side["input"]["resize"] == "stretch"
    pp = side["postprocess"]
    assert (pp["form"], pp["num_classes"], pp["background"], pp["score_activation"]) == ("raw", 1, 1, "sigmoid")
    assert (pp["iou_threshold"], pp["max_detections"], pp["y_scale"], pp["h_scale"]) == (0.6, 100, 10.0, 5.0)
    anchors = np.load(out.parent / side["anchors"]["file"])
    assert anchors.shape == (1917, 4) and side["anchors"]["format"] == "yxhw"
    assert side["source"]["export"] == "tarball" and side["name"] == NAME
    checks = report.export["pipeline_config"]
    assert {c["setting"] for c in checks} >= {"num_classes", "anchors", "scales", "iou_threshold", "input_size"}
    assert all(c["agree"] for c in checks), checks
    assert "1917 anchors" in report.format_summary()


def test_raw_outputs_match_tensorflow(tf, graph_pb, raw_model):
    from edgedet.tflite import load_interpreter

    x, boxes, logits = _tf_preprocess(tf, graph_pb, _photo())
    interp = load_interpreter(raw_model[0], 2)
    interp.set_tensor(interp.get_input_details()[0]["index"], x.astype(np.float32))
    interp.invoke()
    out = {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}
    assert np.abs(out["box_encodings"] - boxes).max() < 1e-3
    assert np.abs(out["class_predictions"] - logits).max() < 1e-3


def test_converted_model_finds_the_person_in_a_photo_and_a_video_frame(raw_model):
    from edgedet.detector import Detector

    det = Detector.from_path(raw_model[0], threads=2, score_threshold=0.5)
    cap = cv2.VideoCapture(str(require_asset("videos/pedestrians_480x360.avi")))
    ok, frame = cap.read()
    cap.release()
    assert ok
    for image in (_photo(), frame):
        dets = det.detect(image)
        assert len(dets) >= 1
        assert {det.labels[c] for c in dets.class_ids} == {"person"}
    hopper = det.detect(_photo())
    x1, y1, x2, y2 = hopper.xyxy[np.argmax(hopper.scores)]
    assert (x2 - x1) > 150 and (y2 - y1) > 200  # the portrait fills the picture


def test_frozen_graph_with_the_detection_op(graph_pb, tmp_path):
    from edgedet.detector import Detector
    from edgedet.sidecar import load_sidecar

    out = tmp_path / "person_op.tflite"
    notes: list = []
    convert_tf1(graph_pb, out, detection_op="keep", log=notes.append)  # no label map beside the graph
    assert sum("assumed COCO ids" in n for n in notes) == 1, notes
    side = load_sidecar(out)
    assert side["postprocess"]["form"] == "op" and side["labels"] == ["person"]
    assert not (tmp_path / "person_op.anchors.npy").exists()
    det = Detector.from_path(out, threads=2, score_threshold=0.5, decoder="op")
    dets = det.detect(_photo())
    assert len(dets) >= 1 and det.labels[int(dets.class_ids[0])] == "person"


def test_saved_model_directory_reads_the_same_model(export_dir, graph_pb):
    assert is_tf1_export(export_dir / "saved_model") and is_tf1_export(export_dir) and is_tf1_export(graph_pb)
    export = read_tf1_export(export_dir / "saved_model")
    assert export.kind == "saved_model" and export.pipeline  # the config beside it is found
    a, b = analyze_tf1(export), analyze_tf1(read_tf1_export(graph_pb))
    assert (a.boxes_tensor, a.scores_tensor, a.num_classes) == (b.boxes_tensor, b.scores_tensor, b.num_classes)
    np.testing.assert_array_equal(a.anchors, b.anchors)


def test_labels_without_a_label_map_are_coco_names_by_id_and_given_labels_win(graph_pb, tmp_path):
    export = read_tf1_export(graph_pb)
    model = analyze_tf1(export)
    notes: list = []
    assert resolve_labels(None, model, export, notes.append) == ["person"]  # class 1 of the API = COCO id 1
    assert len(notes) == 1 and "assumed COCO ids" in notes[0]
    coco = resolve_labels(None, replace(model, num_classes=90), export, notes.append)
    assert len(coco) == 90 and coco[0] == "person" and coco[2] == "car" and coco[11] == "n/a"
    assert resolve_labels(None, replace(model, num_classes=3), export, notes.append) == ["person", "bicycle", "car"]
    assert resolve_labels(None, replace(model, num_classes=91), export, notes.append)[90] == "class90"
    mine = tmp_path / "labels.txt"
    mine.write_text("pedestrian\n")
    notes.clear()
    assert resolve_labels(mine, model, export, notes.append) == ["pedestrian"] and not notes
    assert resolve_labels(["walker"], model, export, notes.append) == ["walker"] and not notes


def test_a_graph_that_is_not_a_detection_export_is_refused(tf, tmp_path):
    with tf.Graph().as_default() as graph:
        x = tf.compat.v1.placeholder(tf.float32, [1, 8], name="x")
        tf.identity(x * 2.0, name="y")
    pb = tmp_path / "frozen_inference_graph.pb"
    pb.write_bytes(graph.as_graph_def().SerializeToString())
    with pytest.raises(ModelError, match="not a TF1 Object Detection API SSD"):
        analyze_tf1(read_tf1_export(pb))
    junk = tmp_path / "junk.pb"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelError, match="not a TensorFlow GraphDef"):
        read_tf1_export(junk)


def test_raw_logits_model_with_only_its_anchors_is_decoded_right_and_says_so(raw_model, tmp_path, caplog):
    """The converted raw model with nothing but ``model.anchors.npy`` beside it (no sidecar): the
    logits are not taken as scores, the background column is not a class, and the load says so."""
    import logging
    import shutil

    from edgedet.detector import Detector

    src, _ = raw_model
    bare = tmp_path / "model.tflite"
    shutil.copyfile(src, bare)
    shutil.copyfile(src.parent / f"{src.stem}.anchors.npy", tmp_path / "model.anchors.npy")
    cap = cv2.VideoCapture(str(require_asset("videos/pedestrians_480x360.avi")))
    ok, frame = cap.read()
    cap.release()
    with caplog.at_level(logging.WARNING, logger="edgedet.model"):
        det = Detector.from_path(bare, threads=2, score_threshold=0.5)
    said = [r.getMessage() for r in caplog.records]
    assert any("logits" in m and "background" in m for m in said), said
    assert sum("no labels" in m for m in said) == 1, said
    assert det.labels == ["class0"] and det.info.options.background == 1
    found = det.detect(frame)
    assert ok and 1 <= len(found) < 30 and found.scores.max() <= 1.0
    labelled = Detector.from_path(src, threads=2, score_threshold=0.5).detect(frame)
    np.testing.assert_allclose(np.sort(found.scores), np.sort(labelled.scores), atol=1e-5)
