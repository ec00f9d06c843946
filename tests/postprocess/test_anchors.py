"""Anchor generators against the anchors real models carry, and anchor files."""

from __future__ import annotations

import numpy as np
import pytest

from edgedet.errors import ModelError
from edgedet.postprocess.anchors import (
    generate_anchors,
    load_anchor_file,
    mediapipe_anchors,
    tf_od_grid_anchors,
    tf_od_multiscale_anchors,
    to_yxhw,
    torchvision_anchors,
)
from edgedet.tflite import read_model, strip_detection_op


def _op_anchors(path):
    return strip_detection_op(read_model(path)).anchors


def test_tf_od_grid_reproduces_ssd_mobilenet_v1_anchors(v1_model):
    ours = tf_od_grid_anchors((300, 300))
    theirs = _op_anchors(v1_model)  # stored quantized: step 0.00645
    assert ours.shape == theirs.shape == (1917, 4)
    assert np.abs(ours - theirs).max() <= 0.00645 / 2 + 1e-6


def test_tf_od_multiscale_reproduces_fpnlite_anchors(fpnlite_model):
    ours = tf_od_multiscale_anchors((320, 320))
    theirs = _op_anchors(fpnlite_model)
    assert ours.shape == theirs.shape == (12804, 4)
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_mediapipe_blazeface_short_range():
    a = mediapipe_anchors()
    assert a.shape == (896, 4)
    # stride 8: 16x16 cells, 2 anchors each; stride 16: 8x8 cells, 6 anchors each; fixed size 1
    np.testing.assert_allclose(a[0], [0.5 / 16, 0.5 / 16, 1, 1])
    np.testing.assert_allclose(a[2], [0.5 / 16, 1.5 / 16, 1, 1])
    np.testing.assert_allclose(a[512], [0.5 / 8, 0.5 / 8, 1, 1])
    np.testing.assert_allclose(a[-1], [7.5 / 8, 7.5 / 8, 1, 1])
    assert (a[512:518] == a[512]).all()


def test_torchvision_ssd300_default_boxes():
    a = torchvision_anchors((300, 300), aspect_ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
                            feature_map_sizes=[38, 19, 10, 5, 3, 1], steps=[8, 16, 32, 64, 100, 300],
                            scales=[0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05])
    assert a.shape == (8732, 4)
    c = 0.5 / 37.5  # first cell centre with step 8
    s2 = np.sqrt(0.07 * 0.15)
    np.testing.assert_allclose(a[:4], [[c, c, 0.07, 0.07], [c, c, s2, s2],
                                       [c, c, 0.07 / np.sqrt(2), 0.07 * np.sqrt(2)],
                                       [c, c, 0.07 * np.sqrt(2), 0.07 / np.sqrt(2)]], rtol=1e-5)
    # the last box of the 1x1 map: aspect ratio 2 turned sideways, its height clipped to the image
    np.testing.assert_allclose(a[-1], [0.5, 0.5, 1.0, 0.87 / np.sqrt(2)], rtol=1e-5)


def test_anchor_files_and_formats(tmp_path):
    yxhw = np.array([[0.5, 0.25, 0.2, 0.4]], np.float32)
    np.testing.assert_allclose(to_yxhw([[0.25, 0.5, 0.4, 0.2]], "xywh"), yxhw)
    np.testing.assert_allclose(to_yxhw([[0.4, 0.05, 0.6, 0.45]], "yxyx"), yxhw, atol=1e-6)
    np.testing.assert_allclose(to_yxhw([[0.05, 0.4, 0.45, 0.6]], "xyxy"), yxhw, atol=1e-6)
    f = tmp_path / "m.anchors.npy"
    np.save(f, yxhw)
    np.testing.assert_allclose(load_anchor_file(f), yxhw)
    np.save(f, np.zeros((3, 5)))
    with pytest.raises(ModelError, match=r"\[N, 4\]"):
        load_anchor_file(f)
    with pytest.raises(ModelError, match="unknown anchor generator"):
        generate_anchors({"generator": "yolo"}, (300, 300))


def test_unknown_generator_parameters_are_an_error():
    with pytest.raises(ModelError, match="unknown parameter.*min_scal"):
        generate_anchors({"generator": "tf_od_grid", "min_scal": 0.1}, (300, 300))
    a = generate_anchors({"generator": "tf_od_grid", "num_layers": 6, "min_scale": 0.2}, (300, 300))
    assert a.shape == (1917, 4)
