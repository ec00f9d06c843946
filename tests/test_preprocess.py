"""Preprocess: what the model input receives, and the way back to image pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgedet.errors import ConfigError
from edgedet.preprocess import PAD_VALUE, InputSpec, Preprocessor


def _image(h=360, w=480, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _reference_rgb(image, w, h):
    return cv2.cvtColor(cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)


def test_uint8_model_gets_rgb_pixels_in_place():
    spec = InputSpec(300, 300, np.dtype(np.uint8), 1 / 128, 128)
    pre = Preprocessor(spec, "stretch")
    img = _image()
    p = pre.prepare(img)
    assert p.tensor.shape == (1, 300, 300, 3) and p.tensor.dtype == np.uint8
    np.testing.assert_array_equal(p.tensor[0], _reference_rgb(img, 300, 300))
    # the same preallocated input array every time
    assert pre.prepare(_image(seed=1)).tensor is p.tensor


def test_int8_model_gets_pixels_minus_128():
    pre = Preprocessor(InputSpec(64, 48, np.dtype(np.int8), 1 / 128, 0), "stretch")
    img = _image()
    p = pre.prepare(img)
    expected = _reference_rgb(img, 64, 48).astype(np.int16) - 128
    np.testing.assert_array_equal(p.tensor[0].astype(np.int16), expected)


def test_float_model_normalized():
    spec = InputSpec(320, 320, np.dtype(np.float32), mean=(127.5,) * 3, std=(127.5,) * 3)
    p = Preprocessor(spec, "stretch").prepare(_image())
    expected = (_reference_rgb(_image(), 320, 320).astype(np.float32) - 127.5) / 127.5
    np.testing.assert_allclose(p.tensor[0], expected, atol=1e-6)
    assert -1.0 <= p.tensor.min() and p.tensor.max() <= 1.0


def test_quantized_model_with_its_own_normalization_uses_a_lookup_table():
    # real = (pixel - mean) / std, then quantized with the input's scale / zero point
    spec = InputSpec(32, 32, np.dtype(np.int8), 0.02, -3, mean=(120.0, 110.0, 100.0), std=(60.0, 60.0, 60.0))
    img = _image(32, 32)
    p = Preprocessor(spec, "stretch").prepare(img, "RGB")
    real = (img.astype(np.float64) - np.array([120.0, 110.0, 100.0])) / 60.0
    expected = np.clip(np.round(real / 0.02 - 3), -128, 127)
    np.testing.assert_array_equal(p.tensor[0].astype(np.int64), expected.astype(np.int64))


@pytest.mark.parametrize("shape", [(360, 480), (480, 360)])
def test_letterbox_keeps_aspect_and_maps_back(shape):
    h, w = shape
    img = np.full((h, w, 3), 255, np.uint8)
    pre = Preprocessor(InputSpec(300, 300, np.dtype(np.uint8)), "letterbox")
    p = pre.prepare(img)
    assert p.scale_x == pytest.approx(p.scale_y, rel=0.01)
    t = p.tensor[0]
    if w > h:  # bars above and below
        assert p.pad_x == 0 and p.pad_y > 0
        assert (t[0] == PAD_VALUE).all() and (t[-1] == PAD_VALUE).all() and (t[150] == 255).all()
    else:  # bars left and right
        assert p.pad_y == 0 and p.pad_x > 0
        assert (t[:, 0] == PAD_VALUE).all() and (t[:, -1] == PAD_VALUE).all() and (t[:, 150] == 255).all()
    # the image corners land on the corners of the content area and map back
    corners = np.array([[p.pad_y, p.pad_x, 300 - p.pad_y, 300 - p.pad_x]], np.float32) / 300  # yxyx normalized
    np.testing.assert_allclose(p.to_frame(corners)[0], [0, 0, w, h], atol=1.0)


def test_to_frame_clips_to_the_frame():
    p = Preprocessor(InputSpec(300, 300, np.dtype(np.uint8)), "stretch").prepare(_image())
    out = p.to_frame(np.array([[-10, -10, 150, 150], [200, 200, 400, 400]], np.float32) / 300)
    np.testing.assert_allclose(out, [[0, 0, 240, 180], [320, 240, 480, 360]], atol=1e-4)


def test_to_frame_maps_a_smaller_copy_back_to_its_frame():
    # a lores picture of 320x180 taken from a 1280x720 frame, letterboxed into a 300x300 input
    p = Preprocessor(InputSpec(300, 300, np.dtype(np.uint8)), "letterbox").prepare(_image(180, 320),
                                                                                  frame_size=(1280, 720))
    assert p.frame_size == (1280, 720) and (p.image_width, p.image_height) == (320, 180)
    top, bottom = p.pad_y / 300, (300 - p.pad_y) / 300  # the picture's rows in the input
    out = p.to_frame(np.array([[top, 0.0, bottom, 0.5], [0.0, 0.5, 1.0, 2.0]], np.float32))
    np.testing.assert_allclose(out, [[0, 0, 640, 720], [640, 0, 1280, 720]], atol=0.5)  # clipped once, to the frame


def test_other_input_formats():
    pre = Preprocessor(InputSpec(96, 96, np.dtype(np.uint8)), "stretch")
    bgr = _image(120, 160)
    ref = pre.prepare(bgr).tensor.copy()
    np.testing.assert_array_equal(pre.prepare(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), "RGB").tensor, ref)
    np.testing.assert_array_equal(pre.prepare(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA), "BGRA").tensor, ref)
    smooth = cv2.resize(_image(6, 8), (160, 120), interpolation=cv2.INTER_LINEAR)  # little fine chroma detail
    ref_smooth = pre.prepare(smooth).tensor.copy()
    yuv = cv2.cvtColor(smooth, cv2.COLOR_BGR2YUV_I420)
    diff = np.abs(pre.prepare(yuv, "YUV420").tensor.astype(int) - ref_smooth.astype(int))
    assert diff.mean() < 4  # chroma subsampling only
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    t = pre.prepare(gray).tensor[0]
    assert (t[..., 0] == t[..., 1]).all() and (t[..., 1] == t[..., 2]).all()


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError):
        Preprocessor(InputSpec(8, 8, np.dtype(np.uint8)), "squash")
    with pytest.raises(ConfigError):
        Preprocessor(InputSpec(8, 8, np.dtype(np.uint8)), "stretch").prepare(_image(8, 8), "CMYK")
