"""The box coder: TF (yxhw, exp) and MediaPipe (xywh, linear) encodings."""

from __future__ import annotations

import numpy as np

from edgedet.postprocess.box_coder import decode_boxes, encode_boxes


def test_zero_encoding_is_the_anchor():
    anchors = np.array([[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.1, 0.1]], np.float32)
    out = decode_boxes(np.zeros((2, 4), np.float32), anchors)
    np.testing.assert_allclose(out, [[0.4, 0.3, 0.6, 0.7], [0.05, 0.85, 0.15, 0.95]], atol=1e-6)


def test_encode_decode_round_trip():
    rng = np.random.default_rng(0)
    anchors = np.column_stack([rng.uniform(0.1, 0.9, 50), rng.uniform(0.1, 0.9, 50),
                               rng.uniform(0.05, 0.5, 50), rng.uniform(0.05, 0.5, 50)]).astype(np.float32)
    y1, x1 = rng.uniform(0, 0.5, 50), rng.uniform(0, 0.5, 50)
    boxes = np.column_stack([y1, x1, y1 + rng.uniform(0.05, 0.5, 50), x1 + rng.uniform(0.05, 0.5, 50)])
    enc = encode_boxes(boxes, anchors)
    np.testing.assert_allclose(decode_boxes(enc, anchors), boxes, atol=1e-5)


def test_mediapipe_linear_xywh_in_input_pixels():
    # BlazeFace: (dx, dy, w, h) in 128-pixel units around an anchor centre of size 1
    anchors = np.array([[0.25, 0.75, 1.0, 1.0]], np.float32)  # yc, xc
    enc = np.array([[12.8, -6.4, 25.6, 51.2] + [0.0] * 12], np.float32)  # 16 values, the box is the first 4
    out = decode_boxes(enc, anchors, (128, 128, 128, 128), box_order="xywh", size_transform="linear")
    yc, xc, h, w = 0.25 - 0.05, 0.75 + 0.1, 0.4, 0.2
    np.testing.assert_allclose(out, [[yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2]], atol=1e-6)
