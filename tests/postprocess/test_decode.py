"""Our decode + NMS: semantics on synthetic outputs, and the match with the in-graph op on real images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgedet.detector import Detector
from edgedet.postprocess.anchors import tf_od_grid_anchors
from edgedet.postprocess.box_coder import decode_boxes, encode_boxes
from edgedet.postprocess.decode import DecodeSettings, SSDDecoder
from edgedet.postprocess.nms import iou_matrix, nms_sorted

ANCHORS = np.array([[0.3, 0.3, 0.2, 0.2], [0.31, 0.31, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]], np.float32)
BOXES = np.array([[0.2, 0.2, 0.4, 0.4], [0.21, 0.21, 0.41, 0.41], [0.6, 0.6, 0.8, 0.8]])


def _decoder(**kw):
    quant = kw.pop("scores_quant", (1 / 256, 0))
    dtype = kw.pop("scores_dtype", np.uint8)
    return SSDDecoder(ANCHORS, DecodeSettings(**kw), scores_quant=quant, scores_dtype=dtype)


def _scores(rows):
    """uint8 scores, 1/256 steps, with a background column 0."""
    return (np.array(rows, np.float64) * 256).round().clip(0, 255).astype(np.uint8)


def test_fast_mode_top_class_then_one_nms_across_classes():
    enc = encode_boxes(BOXES, ANCHORS)
    sc = _scores([[0.9, 0.8, 0.1], [0.0, 0.1, 0.7], [0.0, 0.6, 0.0]])  # background, class0, class1
    boxes, scores, cls = _decoder(score_threshold=0.5, background=1)(enc, sc)
    # anchors 0 and 1 overlap: class-agnostic NMS keeps only the better one; the background is skipped
    assert cls.tolist() == [0, 0] and scores.tolist() == [0.80078125, 0.6015625]
    np.testing.assert_allclose(boxes, BOXES[[0, 2]], atol=1e-5)


def test_regular_mode_is_per_class():
    enc = encode_boxes(BOXES, ANCHORS)
    sc = _scores([[0.9, 0.8, 0.1], [0.0, 0.1, 0.7], [0.0, 0.6, 0.0]])
    _, scores, cls = _decoder(score_threshold=0.5, background=1, mode="regular")(enc, sc)
    assert cls.tolist() == [0, 1, 0]
    assert scores.tolist() == pytest.approx([0.8, 0.7, 0.6], abs=1 / 256)


def test_threshold_is_inclusive_on_the_quantized_value():
    enc = encode_boxes(BOXES, ANCHORS)
    sc = np.array([[0, 128, 0], [0, 127, 0], [0, 0, 0]], np.uint8)  # 0.5 and 0.496
    _, scores, _ = _decoder(score_threshold=0.5, background=1, iou_threshold=0.99)(enc, sc)
    assert scores.tolist() == [0.5]
    _, none, _ = _decoder(score_threshold=1.0, background=1)(enc, sc)
    assert len(none) == 0


def test_logits_with_sigmoid_and_softmax():
    enc = encode_boxes(BOXES, ANCHORS)
    logits = np.array([[3.0], [-3.0], [0.1]], np.float32)
    _, scores, cls = _decoder(score_threshold=0.5, score_activation="sigmoid", scores_quant=(0.0, 0),
                              scores_dtype=np.float32)(enc, logits)
    assert scores.tolist() == pytest.approx([1 / (1 + np.exp(-3.0)), 1 / (1 + np.exp(-0.1))])
    two = np.array([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [3.0, 0.0, 0.0]], np.float32)  # background wins at 2
    _, scores, cls = _decoder(score_threshold=0.5, score_activation="softmax", background=1, scores_quant=(0.0, 0),
                              scores_dtype=np.float32)(enc, two)
    assert cls.tolist() == [0] and scores[0] == pytest.approx(np.exp(2) / (np.exp(2) + 2))


def test_max_detections_top_k_and_classes_per_detection():
    enc = encode_boxes(BOXES, ANCHORS)
    sc = _scores([[0.0, 0.9, 0.8], [0.0, 0.7, 0.0], [0.0, 0.6, 0.55]])
    assert len(_decoder(score_threshold=0.5, background=1, max_detections=1)(enc, sc)[1]) == 1
    # pre-NMS top-k 1: only the best anchor is even considered
    assert len(_decoder(score_threshold=0.5, background=1, pre_nms_top_k=1)(enc, sc)[1]) == 1
    boxes, scores, cls = _decoder(score_threshold=0.5, background=1, max_classes_per_detection=2)(enc, sc)
    assert cls.tolist() == [0, 1, 0, 1] and len(boxes) == 4
    np.testing.assert_array_equal(boxes[0], boxes[1])


def test_detections_per_class_cap_in_regular_mode():
    anchors = np.array([[0.1 + 0.2 * i, 0.5, 0.1, 0.1] for i in range(4)], np.float32)
    enc = np.zeros((4, 4), np.float32)
    sc = np.array([[0, 250, 0], [0, 240, 0], [0, 230, 0], [0, 0, 200]], np.uint8)
    s = DecodeSettings(score_threshold=0.5, background=1, mode="regular", detections_per_class=2, max_detections=10)
    _, _, cls = SSDDecoder(anchors, s, scores_quant=(1 / 256, 0), scores_dtype=np.uint8)(enc, sc)
    assert cls.tolist() == [0, 0, 1]


def test_many_candidates_same_result_as_a_plain_sort_and_nms():
    """Candidates beyond the first tier (more than 8 x max_detections) are handled exactly."""
    anchors = tf_od_grid_anchors((300, 300))
    rng = np.random.default_rng(1)
    enc = rng.normal(0, 1, (len(anchors), 4)).astype(np.float32)
    sc = rng.integers(0, 60, (len(anchors), 4)).astype(np.uint8)  # many equal scores: ties matter
    s = DecodeSettings(score_threshold=0.0, iou_threshold=0.3, max_detections=200, background=1)
    boxes, scores, cls = SSDDecoder(anchors, s, scores_quant=(1 / 256, 0), scores_dtype=np.uint8)(enc, sc)
    best = sc[:, 1:].max(axis=1).astype(np.float32) / 256
    order = np.argsort(-best, kind="stable")
    all_boxes = decode_boxes(enc[order], anchors[order])
    keep = nms_sorted(all_boxes, 0.3, 200)
    assert len(boxes) == 200
    np.testing.assert_array_equal(boxes, all_boxes[keep])
    np.testing.assert_array_equal(scores, best[order][keep])


# -- against the TFLite_Detection_PostProcess op on real images -----------------------------------
def _coco_images(coco_tiny):
    folder = coco_tiny / "images" if (coco_tiny / "images").is_dir() else coco_tiny
    return sorted(p for p in folder.rglob("*.jpg"))


def _assert_same(op, ours, step, where):
    assert len(op) == len(ours), where
    assert op.class_ids.tolist() == ours.class_ids.tolist(), where
    if len(op):
        assert np.diag(iou_matrix(op.xyxy, ours.xyxy)).min() >= 0.99, where
        assert np.abs(op.scores - ours.scores).max() <= step + 1e-6, where


def test_ours_reproduces_the_op_on_every_coco_tiny_image(v1_model, coco_tiny):
    """SSD MobileNet v1, stripped: same classes, IoU >= 0.99, scores within a quantization step."""
    images = _coco_images(coco_tiny)
    assert len(images) == 80
    # score threshold 0: every one of the op's detections counts
    op = Detector.from_path(v1_model, threads=2, postprocess="op", score_threshold=0.0)
    ours = Detector.from_path(v1_model, threads=2, postprocess="ours", score_threshold=0.0)
    assert ours.info.postprocess == "ours" and op.info.postprocess == "op"
    for path in images:
        image = cv2.imread(str(path))
        a, b = op.detect(image), ours.detect(image)
        assert len(a) == 10
        _assert_same(a, b, 1 / 256, path.name)


def test_ours_reproduces_the_op_on_fpnlite(fpnlite_model, coco_tiny):
    op = Detector.from_path(fpnlite_model, threads=2, postprocess="op", score_threshold=0.0)
    ours = Detector.from_path(fpnlite_model, threads=2, postprocess="ours", score_threshold=0.0)
    for path in _coco_images(coco_tiny)[:8]:
        image = cv2.imread(str(path))
        _assert_same(op.detect(image), ours.detect(image), 1e-6, path.name)


def test_regular_nms_reproduces_the_op_in_regular_mode(v1_model, coco_tiny, tmp_path):
    """The same model with the op switched to use_regular_nms (per-class NMS). The op runs on one
    thread: its multi-threaded regular NMS merges per-thread results differently."""
    from flatbuffers import flexbuffers

    from edgedet.tflite import find_detection_op, read_detection_op_options, read_model, write_model

    model = read_model(v1_model)
    si, oi = find_detection_op(model)
    op_t = model.subgraphs[si].operators[oi]
    options = read_detection_op_options(op_t)
    options.update(use_regular_nms=True, detections_per_class=100)
    op_t.customOptions = np.frombuffer(flexbuffers.Dumps(options), np.uint8)
    path = tmp_path / "v1_regular.tflite"
    write_model(model, path)
    op = Detector.from_path(path, threads=1, postprocess="op", score_threshold=0.0)
    ours = Detector.from_path(path, threads=2, postprocess="ours", score_threshold=0.0)
    assert ours.decoder.s.mode == "regular"
    for image_path in _coco_images(coco_tiny):
        image = cv2.imread(str(image_path))
        _assert_same(op.detect(image), ours.detect(image), 1 / 256, image_path.name)
