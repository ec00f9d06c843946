"""The Detector as the pipeline and the tools use it, on real models and images."""

from __future__ import annotations

import dataclasses
import threading

import cv2
import numpy as np
import pytest

from edgedet.detector import Detector
from edgedet.errors import ConfigError, ModelError
from edgedet.postprocess.nms import iou_matrix


@pytest.fixture
def hopper(grace_hopper):
    return cv2.imread(str(grace_hopper))


@pytest.fixture
def v1(v1_model, coco_labels):
    return Detector.from_path(v1_model, threads=2, labels=coco_labels)


def _by_label(dets, labels):
    return {labels[c] for c in dets.class_ids}


def test_finds_grace_hopper_and_her_tie(v1, hopper):
    dets = v1.detect(hopper)
    h, w = hopper.shape[:2]
    assert {"person", "tie"} <= _by_label(dets, v1.labels)
    assert (dets.scores >= 0.5).all() and len(dets) <= 10
    assert (dets.xyxy[:, [0, 2]] <= w).all() and (dets.xyxy[:, [1, 3]] <= h).all() and (dets.xyxy >= 0).all()
    person = dets.xyxy[dets.class_ids == 0][0]
    assert person[2] - person[0] > 0.6 * w  # she fills the picture
    assert set(v1.last_timings) == {"preprocess_ms", "invoke_ms", "decode_ms"}
    info = v1.info
    assert info.form == "op" and info.postprocess == "ours"  # auto: our decode stands in for the op
    assert info.input_size == (300, 300) and info.input_dtype == "uint8" and info.num_classes == 90
    assert v1.input_size == (300, 300) and len(v1.labels) == 90


def test_op_and_ours_agree(hopper, v1_model, coco_labels):
    op = Detector.from_path(v1_model, threads=2, labels=coco_labels, postprocess="op", score_threshold=0.3)
    ours = Detector.from_path(v1_model, threads=2, labels=coco_labels, postprocess="ours", score_threshold=0.3)
    a, b = op.detect(hopper), ours.detect(hopper)
    assert a.class_ids.tolist() == b.class_ids.tolist() and len(a) >= 3
    np.testing.assert_allclose(a.scores, b.scores)
    assert np.diag(iou_matrix(a.xyxy, b.xyxy)).min() > 0.999


def test_infer_outputs_survive_the_next_invoke(v1, hopper, pedestrians_video):
    """The pipeline decodes frame N while frame N+1 is invoked: outputs must be copies."""
    cap = cv2.VideoCapture(str(pedestrians_video))
    ok, frame = cap.read()
    cap.release()
    assert ok
    p1 = v1.prepare(hopper)
    raw1 = v1.infer(p1)
    saved = {k: v.copy() for k, v in raw1.arrays.items()}
    expected = v1.decode(raw1, p1)
    p2 = v1.prepare(frame)
    v1.infer(p2)
    for k, v in raw1.arrays.items():
        np.testing.assert_array_equal(v, saved[k])
    again = v1.decode(raw1, p1)
    np.testing.assert_array_equal(again.xyxy, expected.xyxy)
    assert raw1.invoke_ms > 0


def test_prepare_infer_and_decode_in_two_threads(v1, pedestrians_video):
    cap = cv2.VideoCapture(str(pedestrians_video))
    frames = []
    while len(frames) < 12:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    serial = [v1.detect(f) for f in frames]
    import queue

    q: queue.Queue = queue.Queue(maxsize=2)
    out = []

    def producer():
        for f in frames:
            p = v1.prepare(f)  # its input array is reused by the next prepare: hand over the mapping only
            q.put((v1.infer(p), dataclasses.replace(p, tensor=None)))
        q.put(None)

    def consumer():
        while (item := q.get()) is not None:
            raw, mapping = item
            out.append(v1.decode(raw, mapping))

    threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(out) == len(serial) and sum(len(d) for d in serial) > 0
    for a, b in zip(serial, out):
        np.testing.assert_array_equal(a.xyxy, b.xyxy)
        np.testing.assert_array_equal(a.class_ids, b.class_ids)


def test_replica_detects_the_same_with_its_own_interpreter(v1_model, coco_labels, hopper):
    det = Detector.from_path(v1_model, threads=2, labels=coco_labels, score_threshold=0.3, classes=["person", "tie"])
    twin = det.replica(1)
    assert twin.interpreter is not det.interpreter and twin.info.threads == 1
    assert twin.labels == det.labels and twin.score_threshold == det.score_threshold
    a, b = det.detect(hopper), twin.detect(hopper)
    assert len(a) > 0 and {coco_labels.read_text().splitlines()[c] for c in a.class_ids} <= {"person", "tie"}
    np.testing.assert_array_equal(a.class_ids, b.class_ids)
    np.testing.assert_allclose(a.xyxy, b.xyxy, atol=1e-3)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


def test_classes_filter_and_max_detections(v1_model, coco_labels, hopper):
    ties = Detector.from_path(v1_model, threads=1, labels=coco_labels, classes=["tie"], score_threshold=0.3)
    dets = ties.detect(hopper)
    assert len(dets) >= 1 and set(dets.class_ids.tolist()) == {31}
    one = Detector.from_path(v1_model, threads=1, max_detections=1, score_threshold=0.1)
    assert len(one.detect(hopper)) == 1
    many = Detector.from_path(v1_model, threads=1, max_detections=50, score_threshold=0.05)
    assert len(many.detect(hopper)) > 10  # ours goes beyond the op's 10
    with pytest.raises(ConfigError, match="unknown label"):
        Detector.from_path(v1_model, threads=1, labels=coco_labels, classes=["unicorn"])


def test_op_cannot_change_its_nms(v1_model):
    with pytest.raises(ConfigError, match="fixed"):
        Detector.from_path(v1_model, threads=1, postprocess="op", iou_threshold=0.3)
    d = Detector.from_path(v1_model, threads=1, iou_threshold=0.3)  # auto: ours can
    assert d.info.postprocess == "ours" and d.iou_threshold == pytest.approx(0.3)


def test_settings_are_checked_like_the_config_before_the_file_is_read(tmp_path, v1_model, hopper):
    missing = tmp_path / "missing.tflite"  # never opened: the settings are wrong first
    for kwargs, message in (({"iou_threshold": 0}, "model.iou_threshold: must be > 0"),
                            ({"score_threshold": 1.5}, "model.score_threshold: must be <= 1.0"),
                            ({"max_detections": 0}, "model.max_detections: must be >= 1"),
                            ({"decoder": "ours"}, "model.decoder: expected one of"),
                            ({"postprocess": "fast"}, "model.postprocess: expected one of")):
        with pytest.raises(ConfigError, match=message):
            Detector.from_path(missing, **kwargs)
    # the old name of the decoder and of its value still work
    old = Detector.from_path(v1_model, threads=1, postprocess="ours").detect(hopper)
    new = Detector.from_path(v1_model, threads=1, decoder="edgedet").detect(hopper)
    np.testing.assert_array_equal(old.xyxy, new.xyxy)


def test_letterbox_boxes_land_on_the_same_objects(v1_model, hopper):
    stretch = Detector.from_path(v1_model, threads=1, score_threshold=0.4).detect(hopper)
    letter = Detector.from_path(v1_model, threads=1, score_threshold=0.4, resize="letterbox").detect(hopper)
    a, b = stretch[stretch.class_ids == 0][:1], letter[letter.class_ids == 0][:1]
    assert len(a) == 1 and len(b) == 1
    assert iou_matrix(a.xyxy, b.xyxy)[0, 0] > 0.7


def test_fpnlite_tf2_outputs(fpnlite_model, coco_labels, hopper):
    d = Detector.from_path(fpnlite_model, threads=2, labels=coco_labels, postprocess="op")
    dets = d.detect(hopper)
    assert d.labels[int(dets.class_ids[0])] == "person" and dets.scores[0] > 0.7


def test_blazeface_finds_faces(blazeface_model, asset):
    image = cv2.imread(str(asset("images/coral/face.jpg")))
    d = Detector.from_path(blazeface_model, threads=1)
    assert d.labels == ["face"] and d.info.form == "raw" and d.info.num_anchors == 896
    dets = d.detect(image)
    assert len(dets) >= 2 and (dets.class_ids == 0).all() and dets.scores[0] > 0.8
    w = dets.xyxy[:, 2] - dets.xyxy[:, 0]
    h = dets.xyxy[:, 3] - dets.xyxy[:, 1]
    assert ((w > 20) & (h > 20) & (w / h > 0.5) & (w / h < 2)).all()  # face-shaped boxes
    # the same faces when the frame arrives as YUV420 (a Pi camera's lores stream)
    yuv = cv2.cvtColor(image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2], cv2.COLOR_BGR2YUV_I420)
    d2 = d.detect(yuv, "YUV420")
    assert len(d2) == len(dets) and np.diag(iou_matrix(dets.xyxy, d2.xyxy)).min() > 0.8


def test_bad_labels_and_models_are_model_errors(v1_model, tmp_path, coco_labels):
    short = tmp_path / "labels.txt"
    short.write_text("\n".join(coco_labels.read_text().splitlines()[:80]) + "\n")
    with pytest.raises(ModelError, match="80 labels"):
        Detector.from_path(v1_model, threads=1, labels=short)
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError):
        Detector.from_path(bad)
    with pytest.raises(ModelError, match="not found"):
        Detector.from_path(tmp_path / "missing.tflite")


def test_generic_labels_without_a_label_file(fpnlite_model, v1_model, tmp_path):
    # the registry's models used by path are recognised by their checksum
    assert Detector.from_path(v1_model, threads=1).labels[:2] == ["person", "bicycle"]
    assert Detector.from_path(fpnlite_model, threads=1).labels[:2] == ["person", "bicycle"]
    # a model the registry has no checksum for (other bytes), with no sidecar: generic names
    unknown = tmp_path / "unknown.tflite"
    unknown.write_bytes(fpnlite_model.read_bytes() + bytes(16))
    d = Detector.from_path(unknown, threads=1)
    assert d.labels[:2] == ["class0", "class1"] and len(d.labels) == 90
