"""Data-aware int8 weight rounding: the search, the conv geometry it relies on, and which layers of
the real FPNLite asset it touches."""

from __future__ import annotations

import numpy as np

from edgedet import tflite_file as tfl
from edgedet.runtime import load_interpreter
from edgedet.tools.quantize import prepare_float_model
from edgedet.tools.quantize_round import PatchMoments, greedy_round, patches, window_of


def _objective(q, w, s, h):
    r = s[:, None] * q - w
    return np.einsum("od,de,oe->o", r, h, r)


def test_greedy_rounding_beats_nearest_on_correlated_inputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 27)) @ rng.normal(size=(27, 27))  # correlated patch values
    mom = PatchMoments(depthwise=False)
    mom.add(x.reshape(-1, 3, 3, 3))
    h = mom.matrix(centered=True)
    w = rng.normal(size=(16, 27))
    s = np.abs(w).max(axis=1) / 127
    nearest = np.round(w / s[:, None])
    q = greedy_round(w, s, h)
    assert np.all(_objective(q, w, s, h) <= _objective(nearest, w, s, h) + 1e-12)
    assert _objective(q, w, s, h).sum() < 0.7 * _objective(nearest, w, s, h).sum()
    assert np.abs(q).max() <= 127 and np.abs(q - nearest).max() <= 2
    # weights already on the grid stay as they are
    np.testing.assert_array_equal(greedy_round(nearest * s[:, None], s, h), nearest)


def test_patches_reproduce_the_stem_and_first_depthwise_conv(fpnlite_model, tmp_path):
    """The stride-2 SAME stem conv and the 3x3 depthwise conv of the asset, computed from
    ``patches``, match the interpreter (padding and stride as TFLite applies them)."""
    model = tfl.read_model(fpnlite_model)
    prepare_float_model(model)
    path = tmp_path / "float.tflite"
    tfl.write_model(model, path)
    interp = load_interpreter(path, 2, preserve_all_tensors=True)
    x = np.random.default_rng(0).uniform(-1, 1, (1, 320, 320, 3)).astype(np.float32)
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    sg = model.subgraphs[0]
    for k, depthwise in ((0, False), (1, True)):
        op = sg.operators[k]
        w = tfl.tensor_array(model, sg.tensors[op.inputs[1]]).astype(np.float64)
        b = tfl.tensor_array(model, sg.tensors[op.inputs[2]])
        p = patches(interp.get_tensor(op.inputs[0]), window_of(op, w.shape))
        pre = np.einsum("nhwc,hwc->nc", p, w[0]) if depthwise else p.reshape(len(p), -1) @ w.reshape(len(w), -1).T
        y = interp.get_tensor(op.outputs[0])
        np.testing.assert_allclose(np.clip(pre + b, 0, 6), y.reshape(len(p), -1), atol=1e-4)
