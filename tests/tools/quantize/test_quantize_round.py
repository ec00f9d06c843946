"""Data-aware int8 weight rounding: the search, the conv geometry it relies on, and which layers of
the real FPNLite asset it touches."""

from __future__ import annotations

import numpy as np

from edgedet import tflite as tfl
from edgedet.tflite import load_interpreter
from edgedet.tools.quantize import prepare_float_model
from edgedet.tools.quantize.round import (
    PatchMoments,
    conv_depths,
    greedy_round,
    patches,
    window_of,
    write_truncated,
)


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


def _output_error(q, w, s, xq, x):
    """Mean squared error per row of the int8 layer on ``xq`` against the float layer on ``x``."""
    e = xq @ (s[:, None] * q).T - x @ w.T
    return np.mean(e * e, axis=0)


def _perturbed_layer(seed, n=6000, d=27, rows=16):
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3 + 0.5, 0)
    # the quantized model's inputs: a coarse grid plus upstream error correlated with the signal
    xq = np.round((x * (1 + 0.08 * rng.normal(size=d)) + 0.05 * rng.normal(size=(n, d))) / 0.1) * 0.1
    w = rng.normal(size=(rows, d))
    s = np.abs(w).max(axis=1) / 127
    return x, xq, np.round(w / s[:, None]) * s[:, None], s  # weights already on their int8 grid


def test_compensating_rounding_lowers_the_output_error_of_perturbed_inputs():
    x, xq, w, s = _perturbed_layer(1)
    mom = PatchMoments(depthwise=False)
    half = len(x) // 2
    mom.add(xq[:half].reshape(-1, 3, 3, 3), x[:half].reshape(-1, 3, 3, 3))
    h, c = mom.matrix(centered=False), mom.cross(centered=False)
    nearest = np.round(w / s[:, None])
    plain = greedy_round(w, s, h)
    np.testing.assert_array_equal(plain, nearest)  # on-grid weights: nothing to gain without the cross term
    for max_move in (None, 1):
        q = greedy_round(w, s, h, c=c, max_move=max_move)
        assert np.abs(q).max() <= 127
        if max_move is not None:
            assert np.abs(q - nearest).max() <= max_move
        # lower error on the patches it was fitted on, and on patches it never saw
        for sl in (slice(0, half), slice(half, None)):
            new, old = _output_error(q, w, s, xq[sl], x[sl]), _output_error(nearest, w, s, xq[sl], x[sl])
            assert new.sum() < 0.9 * old.sum()


def test_compensating_rounding_equals_greedy_rounding_on_unperturbed_inputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 27)) @ rng.normal(size=(27, 27))
    mom = PatchMoments(depthwise=False)
    mom.add(x.reshape(-1, 3, 3, 3), x.reshape(-1, 3, 3, 3))
    h = mom.matrix(centered=True)
    np.testing.assert_allclose(mom.cross(centered=True), h, rtol=1e-12, atol=1e-12)
    w = rng.normal(size=(16, 27))
    s = np.abs(w).max(axis=1) / 127
    np.testing.assert_array_equal(greedy_round(w, s, h, c=mom.cross(centered=True)), greedy_round(w, s, h))
    # depthwise: one matrix per channel, cross moments the same shape
    p = rng.normal(size=(500, 3, 3, 8))
    dmom = PatchMoments(depthwise=True)
    dmom.add(p, p)
    assert dmom.matrix(centered=True).shape == dmom.cross(centered=True).shape == (8, 9, 9)
    wd = rng.normal(size=(8, 9))
    sd = np.abs(wd).max(axis=1) / 127
    hd = dmom.matrix(centered=True)
    np.testing.assert_array_equal(greedy_round(wd, sd, hd, c=dmom.cross(centered=True)), greedy_round(wd, sd, hd))


def test_depthwise_cross_moments_match_a_direct_computation():
    rng = np.random.default_rng(2)
    p, r = rng.normal(size=(400, 3, 3, 4)), rng.normal(size=(400, 3, 3, 4))
    mom = PatchMoments(depthwise=True)
    mom.add(p[:150], r[:150])
    mom.add(p[150:], r[150:])
    pf, rf = p.reshape(400, 9, 4), r.reshape(400, 9, 4)
    for ch in range(4):
        a, b = pf[:, :, ch], rf[:, :, ch]
        expect = (a - a.mean(0)).T @ (b - b.mean(0)) / 400
        np.testing.assert_allclose(mom.cross(centered=True)[ch], expect, atol=1e-12)


def test_conv_depths_of_the_asset_follow_its_chain(fpnlite_model):
    model = tfl.read_model(fpnlite_model)
    prepare_float_model(model)
    sg = model.subgraphs[0]
    depth = conv_depths(model)
    convs = [k for k, op in enumerate(sg.operators)
             if tfl.opcode_name(model, op.opcodeIndex) in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    assert [depth[k] for k in convs[:4]] == [1, 2, 3, 4]  # stem, depthwise, projection, expansion
    assert max(depth.values()) > 50


def test_truncated_model_gives_the_same_early_tensor(fpnlite_model, tmp_path):
    model = tfl.read_model(fpnlite_model)
    prepare_float_model(model)
    full, cut = tmp_path / "full.tflite", tmp_path / "cut.tflite"
    tfl.write_model(model, full)
    sg = model.subgraphs[0]
    name = tfl.tensor_name(sg.tensors[sg.operators[3].outputs[0]])
    write_truncated(model, [name], cut)
    assert len(model.subgraphs[0].operators) == len(sg.operators) and model.signatureDefs  # left as it was
    x = np.random.default_rng(0).uniform(-1, 1, (1, 320, 320, 3)).astype(np.float32)
    values = []
    for path in (full, cut):
        interp = load_interpreter(path, 2, preserve_all_tensors=True)
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        interp.invoke()
        index = {d["name"]: d["index"] for d in interp.get_tensor_details()}
        values.append(interp.get_tensor(index[name]))
    assert len(tfl.read_model(cut).subgraphs[0].operators) == 4
    np.testing.assert_array_equal(values[0], values[1])
