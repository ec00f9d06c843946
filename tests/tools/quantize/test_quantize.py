"""int8 / fp16 / dynamic quantization of the real FPNLite asset (dynamic-range weights, op at the end)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgedet import tflite as tfl
from edgedet.detector import Detector
from edgedet.errors import ModelError
from edgedet.sidecar import load_sidecar
from edgedet.tools.quantize import (
    census_of,
    copy_sidecar,
    prepare_float_model,
    quantize_dynamic,
    quantize_fp16,
    quantize_int8,
)


@pytest.fixture(scope="module")
def calib_images(tmp_path_factory):
    from assets import require_asset

    from edgedet.tools.calibration import build_calibration_set

    video = require_asset("videos/pedestrians_480x360.avi")
    photos = require_asset("images/coral")
    cs = build_calibration_set([str(video), str(photos)], tmp_path_factory.mktemp("calib"), num=8)
    return cs.images


@pytest.fixture(scope="module")
def int8_model(calib_images, tmp_path_factory):
    from assets import require_asset

    src = require_asset("models/ssd_mobilenet_v2_fpnlite_320_coco_fp.tflite")
    out = tmp_path_factory.mktemp("q") / "fpnlite_int8.tflite"
    result = quantize_int8(src, out, calib_images, percentile=99.99, threads=2)
    copy_sidecar(src, out)
    from edgedet.sidecar import update_sidecar

    if result.sidecar:
        update_sidecar(out, **result.sidecar)
    return src, out, result


def test_every_conv_and_activation_is_int8(int8_model):
    src, out, result = int8_model
    census = census_of(out)
    assert census == result.census
    assert census["conv_total"] == 123 and census["conv_int8"] == 123
    assert census["activations_int8"] == census["activations_total"] > 100
    # the model keeps float input/outputs and its postprocess op
    model = tfl.read_model(out)
    sg = model.subgraphs[0]
    assert int(sg.tensors[sg.inputs[0]].type) == 0
    names = {tfl.opcode_name(model, op.opcodeIndex) for op in sg.operators}
    assert "TFLite_Detection_PostProcess" in names and {"QUANTIZE", "DEQUANTIZE"} <= names


def test_dead_channels_repaired_no_overflowing_bias(int8_model):
    _, out, result = int8_model
    assert result.repaired_channels > 0  # the FPNLite head has all-zero output channels
    model = tfl.read_model(out)
    sg = model.subgraphs[0]
    for op in sg.operators:
        if tfl.opcode_name(model, op.opcodeIndex) in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            w = sg.tensors[op.inputs[1]]
            assert np.asarray(w.quantization.scale).min() > 1e-9


def test_quantized_model_still_finds_grace_hopper(int8_model, grace_hopper, coco_labels):
    src, out, _ = int8_model
    image = cv2.imread(str(grace_hopper))
    for postprocess in ("op", "ours"):
        ref = Detector.from_path(src, labels=coco_labels, score_threshold=0.5, postprocess=postprocess)
        det = Detector.from_path(out, labels=coco_labels, score_threshold=0.5, postprocess=postprocess)
        a, b = ref.detect(image), det.detect(image)
        assert det.labels[int(b.class_ids[0])] == "person"
        assert abs(float(a.scores[0]) - float(b.scores[0])) < 0.1
        iou = _iou(a.xyxy[0], b.xyxy[0])
        assert iou > 0.8
    # the score sigmoid stays float in front of the op, as in the source: no sidecar hint needed
    assert "score_activation" not in (load_sidecar(out).get("postprocess") or {})


def test_scores_are_continuous_and_head_close_to_float(int8_model, calib_images):
    """The LOGISTIC feeding the op is float (scores not on a 1/256 grid) and, on calibration
    images, the raw head outputs stay close to the float model's."""
    from edgedet.tflite import load_interpreter
    from edgedet.tools.quantize import calibration_preprocessor, head_snr, load_inputs

    src, out, result = int8_model
    assert result.census["float_score_sigmoid"] == 1
    assert result.recipe["bias_correction"] == "weights" and result.recipe["bias_corrected_layers"] > 100
    inputs = load_inputs(calib_images[:3], calibration_preprocessor(src))
    interp = load_interpreter(out, 2)
    op = next(d for d in interp.get_tensor_details() if d["name"] == "tfl.logistic")
    assert op["dtype"] == np.float32
    model = tfl.read_model(src)
    prepare_float_model(model)
    float_path = out.parent / "float.tflite"
    tfl.write_model(model, float_path)
    snr = head_snr(float_path, out, inputs, threads=2)
    # measured ~26 dB (boxes, confidence-weighted) and ~20 dB (scores) on held-out frames
    assert snr["boxes_w"] > 18 and snr["scores"] > 14
    assert snr["mean"] == pytest.approx((snr["boxes_w"] + snr["scores"]) / 2, abs=1e-3)
    # the same model against itself: no noise at all
    assert head_snr(float_path, float_path, inputs[:1])["boxes"] > 200


def test_off_grid_layers_rerounded_and_input_levels_off_the_pixel_grid(int8_model):
    _, out, result = int8_model
    # the source's only float convs (stem, first depthwise, first projection, second depthwise)
    assert result.recipe["weight_rounding"] == "adaptive" and result.recipe["rerounded_layers"] == 4
    assert result.recipe["input_ranges"] == "roundtrip"
    model = tfl.read_model(out)
    sg = model.subgraphs[0]
    op = next(o for o in sg.operators if tfl.opcode_name(model, o.opcodeIndex) == "QUANTIZE"
              and int(o.inputs[0]) == int(sg.inputs[0]))
    q = sg.tensors[op.outputs[0]].quantization
    scale, zp = float(q.scale[0]), int(q.zeroPoint[0])
    pixels = (np.arange(256) - 127.5) / 127.5  # the model's normalization of 8-bit pixels
    levels = np.clip(np.sign(pixels / scale) * np.floor(np.abs(pixels / scale) + 0.5) + zp, -128, 127)
    err = np.mean((pixels - (levels - zp) * scale) ** 2) / (2 / 255) ** 2
    assert err < 0.1  # 0.25 (half a step on every pixel) with the plain [-1, 1] range


def test_input_range_moves_levels_off_a_half_step_grid():
    from edgedet.tools.quantize.ranges import input_range, roundtrip_mse

    pixels = (np.arange(256) - 127.5) / 127.5
    assert roundtrip_mse(pixels, -1.0, 1.0) == pytest.approx(0.25 * (2 / 255) ** 2)
    lo, hi = input_range(pixels, -1.0, 1.0)
    assert lo == -1.0 and 1.0 < hi <= 1.0 + 2 * 2 / 255
    assert roundtrip_mse(pixels, lo, hi) < 0.3 * roundtrip_mse(pixels, -1.0, 1.0)
    # values already on the grid of their range keep it
    grid = np.arange(-128, 128) / 100.0
    assert input_range(grid, -1.28, 1.27) == (-1.28, 1.27)


def test_weight_error_shift_per_layer_kind():
    """(W_q - W) E[x] per output channel for pointwise/3x3, depthwise and fully connected."""
    from edgedet.tools.quantize.bias import ConvLayer, weight_shift

    rng = np.random.default_rng(0)
    mean_x = rng.normal(size=5)
    layer = lambda kind: ConvLayer(0, kind, 0, 1, 2, 3, np.zeros(1), 0)  # noqa: E731
    dw = rng.normal(size=(4, 3, 3, 5))  # conv [O, kh, kw, I]: each tap sees the same mean
    np.testing.assert_allclose(weight_shift(layer("CONV_2D"), dw, mean_x),
                               np.einsum("ohwi,i->o", dw, mean_x))
    dd = rng.normal(size=(1, 3, 3, 5))  # depthwise [1, kh, kw, C]
    np.testing.assert_allclose(weight_shift(layer("DEPTHWISE_CONV_2D"), dd, mean_x),
                               dd.sum(axis=(0, 1, 2)) * mean_x)
    fc = rng.normal(size=(2, 5))
    np.testing.assert_allclose(weight_shift(layer("FULLY_CONNECTED"), fc, mean_x), fc @ mean_x)


def test_bad_recipe_names_are_config_errors(fpnlite_model, tmp_path, calib_images):
    from edgedet.errors import ConfigError

    with pytest.raises(ConfigError, match="bias correction"):
        quantize_int8(fpnlite_model, tmp_path / "x.tflite", calib_images[:1], bias_correction="magic")
    with pytest.raises(ConfigError, match="head ranges"):
        quantize_int8(fpnlite_model, tmp_path / "x.tflite", calib_images[:1], head_ranges="tight")
    with pytest.raises(ConfigError, match="weight rounding"):
        quantize_int8(fpnlite_model, tmp_path / "x.tflite", calib_images[:1], weight_rounding="up")
    with pytest.raises(ConfigError, match="input ranges"):
        quantize_int8(fpnlite_model, tmp_path / "x.tflite", calib_images[:1], input_ranges="wide")


def _iou(a, b):
    tl, br = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = float(np.prod(np.clip(br - tl, 0, None)))
    area = lambda x: float(np.prod(x[2:] - x[:2]))  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_hybrid_weights_are_dequantized_per_channel(fpnlite_model):
    model = tfl.read_model(fpnlite_model)
    sg = model.subgraphs[0]
    # pick a hybrid int8 conv weight and remember its per-channel dequantized values
    op = next(o for o in sg.operators if tfl.opcode_name(model, o.opcodeIndex) == "CONV_2D"
              and int(sg.tensors[o.inputs[1]].type) == 9)
    w = sg.tensors[op.inputs[1]]
    q = tfl.tensor_array(model, w).astype(np.float32)
    scale = np.asarray(w.quantization.scale, np.float32)
    expected = q * scale.reshape(-1, 1, 1, 1)
    stats = prepare_float_model(model)
    assert stats["dequantized_weights"] == 87 and stats["had_detection_op"]
    assert int(w.type) == 0
    np.testing.assert_allclose(tfl.tensor_array(model, w), expected, rtol=1e-6)


def test_integer_model_is_refused(v1_model, tmp_path, calib_images):
    with pytest.raises(ModelError, match="already integer"):
        quantize_int8(v1_model, tmp_path / "x.tflite", calib_images[:1])


def test_fp16_and_dynamic(fpnlite_model, tmp_path, grace_hopper):
    image = cv2.imread(str(grace_hopper))
    ref = Detector.from_path(fpnlite_model, score_threshold=0.5).detect(image)
    for fn, name in ((quantize_fp16, "fp16"), (quantize_dynamic, "dynamic")):
        out = tmp_path / f"{name}.tflite"
        result = fn(fpnlite_model, out)
        assert result.mode == name
        dets = Detector.from_path(out, score_threshold=0.5).detect(image)
        assert int(dets.class_ids[0]) == int(ref.class_ids[0]) == 0
        assert abs(float(dets.scores[0]) - float(ref.scores[0])) < 0.05
    model = tfl.read_model(tmp_path / "fp16.tflite")
    types = [int(t.type) for t in model.subgraphs[0].tensors]
    assert types.count(1) == quantize_fp16(fpnlite_model, tmp_path / "again.tflite").census["weights_fp16"] > 80


def test_head_tensors_share_one_range_without_requantizing(int8_model):
    """The per-level class convs and the logits concatenation have one int8 range whose low end
    is cut (confident negatives) and whose top is kept; no int8 -> int8 copies are left."""
    _, out, result = int8_model
    assert result.recipe["head_ranges"] == "score-weighted"
    lo, hi = result.recipe["head_range_values"]["logits"]
    assert -15 < lo < -3 and hi > 0
    model = tfl.read_model(out)
    sg = model.subgraphs[0]
    ops = [(o, tfl.opcode_name(model, o.opcodeIndex)) for o in sg.operators]
    concat = [o for o, n in ops if n == "CONCATENATION" and int(sg.tensors[o.outputs[0]].shape[-1]) == 91]
    assert len(concat) == 1
    producer = {int(t): (o, n) for o, n in ops for t in o.outputs}

    def q(i):
        t = sg.tensors[i].quantization
        return float(t.scale[0]), int(t.zeroPoint[0])

    for i in concat[0].inputs:  # reshape <- class conv of each level
        reshape, name = producer[int(i)]
        assert name == "RESHAPE" and q(int(i)) == q(int(concat[0].outputs[0]))
        assert producer[int(reshape.inputs[0])][1] == "CONV_2D"
    assert result.recipe["identity_requantize_dropped"] >= 10
    for o, n in ops:
        if n == "QUANTIZE" and int(sg.tensors[o.inputs[0]].type) == 9:
            assert q(int(o.inputs[0])) != q(int(o.outputs[0]))
    scale, zp = q(int(concat[0].outputs[0]))
    assert (-128 - zp) * scale == pytest.approx(lo, abs=scale)


def _float_logits(src, images, path):
    """The float model's class logits ``[N, C]`` on the calibration ``images`` (stacked); ``path``:
    a scratch model file."""
    from edgedet.tflite import load_interpreter
    from edgedet.tools.quantize import calibration_preprocessor, load_inputs
    from edgedet.tools.quantize.measure import head_tensor_names
    from edgedet.tools.quantize.round import write_truncated

    model = tfl.read_model(src)
    prepare_float_model(model)
    names = head_tensor_names(model)
    write_truncated(model, [names["logits"]], path)
    interp = load_interpreter(path, 2)
    out = interp.get_output_details()[0]["index"]
    rows = []
    for x in load_inputs(images, calibration_preprocessor(src)):
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        interp.invoke()
        logits = interp.get_tensor(out)
        rows.append(logits.reshape(-1, logits.shape[-1]).copy())
    return np.concatenate(rows)


def test_logit_range_is_set_by_the_columns_the_decoder_reads(int8_model, calib_images, tmp_path):
    """The background column (0, skipped by the detection op) neither bounds nor shapes the
    class-logit range: its top is the top of the 90 class columns."""
    from edgedet.tools.quantize.graph import background_columns

    src, _, result = int8_model
    assert background_columns(tfl.read_model(src), {}) == 1
    assert result.recipe["head_columns"] == "read"
    logits = _float_logits(src, calib_images, tmp_path / "logits.tflite")
    _, hi = result.recipe["head_range_values"]["logits"]
    assert hi == pytest.approx(float(logits[:, 1:].max()), abs=1e-3)


def test_int8_output_is_readable_by_other_tools(int8_model, grace_hopper):
    """Every operator has its builtin options and both code fields (OpenVINO's reader needs them),
    and TensorFlow's own interpreter loads and runs the file as ours does."""
    from edgedet.tflite import load_interpreter
    from edgedet.tflite.flatbuffer import unreadable_operators
    from edgedet.tools.quantize import calibration_preprocessor, load_inputs

    src, out, _ = int8_model
    assert unreadable_operators(tfl.read_model(out)) == []
    tf = pytest.importorskip("tensorflow")
    x = load_inputs([grace_hopper], calibration_preprocessor(src))[0]
    results = []
    for interp in (tf.lite.Interpreter(model_path=str(out)), load_interpreter(out, 2)):
        interp.allocate_tensors()
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        interp.invoke()
        results.append({d["name"]: interp.get_tensor(d["index"]).copy() for d in interp.get_output_details()})
    ref, ours = results
    assert ref.keys() == ours.keys()
    for name in ref:
        assert ref[name].shape == ours[name].shape
    scores = next(n for n in ref if ref[n].ndim == 2 and ref[n].max() <= 1 and ref[n].max() > 0.5)
    np.testing.assert_allclose(ref[scores][0, :3], ours[scores][0, :3], atol=0.02)


@pytest.mark.slow
def test_auto_choice_then_quantization_in_one_go_gives_the_same_file(fpnlite_model, calib_images, tmp_path):
    """``quantize_int8_auto`` (float statistics computed once for both image sets) writes the
    file that ``choose_percentile`` then ``quantize_int8`` on all images write, with the same
    choice and scores."""
    from edgedet.tools.quantize import QuantizeOptions, choose_percentile, quantize_int8_auto

    images = list(calib_images[:5])
    held = images[3:4]
    cal = [p for p in images if p not in held]
    options = QuantizeOptions(threads=2)
    best, scores = choose_percentile(fpnlite_model, cal, held, candidates=(100.0, "mse"), threads=2)
    quantize_int8(fpnlite_model, tmp_path / "two_calls.tflite", images, options, percentile=best)
    result, best2, scores2 = quantize_int8_auto(fpnlite_model, tmp_path / "one_go.tflite", images, held, options,
                                                candidates=(100.0, "mse"))
    assert (best2, scores2) == (best, scores)
    assert (tmp_path / "one_go.tflite").read_bytes() == (tmp_path / "two_calls.tflite").read_bytes()
    assert result.recipe["percentile"] == best


def test_one_blas_thread_inside_and_restored_after():
    from edgedet.tools.quantize.blas import openblas_thread_control, single_blas_thread

    found = openblas_thread_control()
    if found is None:
        pytest.skip("NumPy without OpenBLAS")
    setter, getter = found
    before = getter()
    x = np.random.default_rng(0).standard_normal((2048, 27))
    expected = x.T @ x
    with single_blas_thread():
        assert getter() == 1
        assert np.array_equal(x.T @ x, expected)
    assert getter() == before
