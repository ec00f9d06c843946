"""Residual-stream equalization of the real FPNLite asset: which streams, and the float model's
outputs unchanged."""

from __future__ import annotations

import numpy as np

from edgedet import tflite as tfl
from edgedet.tflite import load_interpreter
from edgedet.tools.quantize import calibration_preprocessor, load_inputs, prepare_float_model
from edgedet.tools.quantize.measure import head_tensor_names
from edgedet.tools.quantize.residual import equalize_streams, residual_streams, stream_scales


def _outputs(path, x, names) -> dict:
    interp = load_interpreter(path, 2, preserve_all_tensors=True)
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    index = {d["name"]: d["index"] for d in interp.get_tensor_details()}
    return {n: interp.get_tensor(index[n]).astype(np.float64) for n in names}


def test_streams_are_the_backbone_stages(fpnlite_model):
    model = tfl.read_model(fpnlite_model)
    prepare_float_model(model)
    streams = residual_streams(model)
    # MobileNetV2's bottleneck outputs (16 .. 320 channels); the FPN's top-down adds (fed by an
    # upsampling reshape) and the head (weights shared across levels) are left alone
    assert [s.channels for s in streams] == [16, 24, 32, 64, 96, 160, 320]
    assert [len(s.tensors) for s in streams] == [1, 3, 5, 7, 5, 5, 1]
    # the 32- and 96-channel stages also feed the FPN's lateral convs
    assert [len(s.readers) for s in streams] == [1, 2, 4, 4, 4, 3, 1]


def test_equalization_leaves_the_float_detector_unchanged(fpnlite_model, grace_hopper, tmp_path):
    model = tfl.read_model(fpnlite_model)
    prepare_float_model(model)
    float_path = tmp_path / "float.tflite"
    tfl.write_model(model, float_path)
    pre = calibration_preprocessor(fpnlite_model)
    calib = load_inputs([grace_hopper], pre)
    stats = equalize_streams(model, float_path, calib, threads=2, alpha=1.0, max_gain=16.0)
    assert stats["streams"] == 7 and stats["tensors"] == 27 and stats["max_gain"] > 1.5
    eq_path = tmp_path / "equalized.tflite"
    tfl.write_model(model, eq_path)
    from assets import require_asset

    x = load_inputs([require_asset("images/coral/kite_and_cold.jpg")], pre)[0]  # not the calibration image
    head = head_tensor_names(model)
    names = [head["boxes"], head["logits"], "tfl.add9"]
    a, b = _outputs(float_path, x, names), _outputs(eq_path, x, names)
    for n in (head["boxes"], head["logits"]):
        assert np.abs(a[n] - b[n]).max() <= 1e-4 * np.abs(a[n]).max()
    # ... while the stream itself was rescaled channel by channel
    assert np.abs(a["tfl.add9"] - b["tfl.add9"]).max() > 0.05 * np.abs(a["tfl.add9"]).max()


def test_stream_scales_never_widen_a_tensor():
    r = np.array([[4.0, 2.0, 0.5, 0.0], [1.0, 2.0, 0.1, 0.0]])  # [tensor, channel] ranges
    s = stream_scales(r, alpha=1.0, max_gain=4.0)
    np.testing.assert_allclose(s, [1.0, 1.0, 0.25, 1.0])  # 0.5/4 capped at 1/4; dead channel kept
    assert np.all((r / s).max(axis=1) <= r.max(axis=1) + 1e-12)
    np.testing.assert_allclose(stream_scales(r, alpha=0.5, max_gain=16.0)[:3], [1.0, 1.0, np.sqrt(0.125)])
