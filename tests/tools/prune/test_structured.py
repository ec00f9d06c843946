"""Structured pruning: the float graph read from the file matches the int8 model, channel removal
with refits keeps the outputs close, the channel choice finds redundant channels."""

from __future__ import annotations

import numpy as np
import pytest

from tests.assets import require_asset

pytest.importorskip("tensorflow")

from edgedet.tools.prune.structured import FloatGraph, Layer, find_targets, prune_graph, read_graph, run_graph  # noqa: E402
from edgedet.tools.prune.structured.oneshot import keep_count, obs_select  # noqa: E402

MODEL = "models/ssd_mobilenet_v1_coco_quant_postprocess.tflite"


def _conv(name, src, cin, cout, rng, k=1, stride=1, act="relu6"):
    return Layer(name, "conv", [src], rng.normal(0, 1 / np.sqrt(k * k * cin), (k, k, cin, cout)).astype(np.float32),
                 rng.normal(0, 0.1, cout).astype(np.float32), stride, "same", act)


def _dw(name, src, c, rng, stride=1):
    return Layer(name, "depthwise", [src], rng.normal(0, 0.4, (3, 3, c, 1)).astype(np.float32),
                 rng.normal(0, 0.1, c).astype(np.float32), stride, "same", "relu6")


def tiny_ssd(seed=0) -> FloatGraph:
    """stem -> (dw, pw) x 3 -> box and class heads on two feature maps."""
    rng = np.random.default_rng(seed)
    layers = [_conv("stem", "image", 3, 8, rng, k=3, stride=2), _dw("dw1", "stem", 8, rng),
              _conv("pw1", "dw1", 8, 16, rng), _dw("dw2", "pw1", 16, rng, stride=2),
              _conv("pw2", "dw2", 16, 32, rng), _dw("dw3", "pw2", 32, rng),
              _conv("pw3", "dw3", 32, 32, rng)]
    for i, (src, hw) in enumerate((("pw2", 4), ("pw3", 4))):
        layers += [_conv(f"box{i}", src, 32, 4, rng, act=None), Layer(f"rbox{i}", "reshape", [f"box{i}"],
                                                                         shape=(hw * hw, 4)),
                   _conv(f"cls{i}", src, 32, 3, rng, act=None), Layer(f"rcls{i}", "reshape", [f"cls{i}"],
                                                                       shape=(hw * hw, 3))]
    layers += [Layer("boxes", "concat", ["rbox0", "rbox1"], axis=1), Layer("logits", "concat", ["rcls0", "rcls1"],
                                                                           axis=1)]
    return FloatGraph(layers, "image", (16, 16), "boxes", "logits", np.zeros((32, 4), np.float32))


def _inputs(n=24, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 16, 16, 3)).astype(np.float32)


def test_targets_follow_depthwise_and_heads():
    g = tiny_ssd()
    t1, t2 = find_targets(g, [1, 2])
    assert (t1.name, t1.depthwise, t1.readers) == ("pw1", ("dw2",), ("pw2",))
    assert (t2.name, t2.depthwise, set(t2.readers)) == ("pw2", ("dw3",), {"pw3", "box0", "cls0"})


def test_pruned_graph_is_smaller_and_close_to_dense():
    g = tiny_ssd()
    x = _inputs()
    targets = find_targets(g, [1, 2])
    pruned, report = prune_graph(g, x, targets, {t.name: 0.5 for t in targets}, multiple=4)
    assert pruned.layer("pw2").out_channels == 16 and pruned.layer("dw3").kernel.shape[2] == 16
    assert pruned.layer("box0").kernel.shape[2] == 16 and report.macs_after < report.macs_before
    bd, ld = run_graph(g, x)
    bp, lp = run_graph(pruned, x)
    assert bp.shape == bd.shape and lp.shape == ld.shape
    assert max(report.errors.values()) < 1.0
    # the refit beats removing the same channels without it
    _, ls = run_graph(_sliced_without_refit(g, targets, report), x)
    assert np.mean((lp - ld) ** 2) < 0.5 * np.mean((ls - ld) ** 2)


def _sliced_without_refit(graph, targets, report):
    out = graph.copy()
    for t in targets:
        keep = report.keep[t.name]
        for name in (t.name,) + t.depthwise:
            la = out.layer(name)
            la.kernel, la.bias = np.take(la.kernel, keep, axis=3 if name == t.name else 2), la.bias[keep]
        for name in t.readers:
            out.layer(name).kernel = out.layer(name).kernel[:, :, keep]
    return out


def test_ratio_zero_changes_nothing():
    g = tiny_ssd()
    x = _inputs(8)
    pruned, report = prune_graph(g, x, find_targets(g, [1, 2]), {})
    assert report.macs_after == report.macs_before
    np.testing.assert_array_equal(run_graph(pruned, x)[1], run_graph(g, x)[1])


def test_channel_choice_removes_duplicates_first():
    from edgedet.tools.prune.structured.oneshot import ReaderStats

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 40, 40, 6)).astype(np.float32)
    x = np.concatenate([x, x[..., :2]], axis=-1)  # channels 6 and 7 duplicate 0 and 1
    layer = Layer("r", "conv", ["x"], rng.normal(size=(1, 1, 8, 5)).astype(np.float32), np.zeros(5, np.float32))
    kept, (w,) = obs_select([ReaderStats(x, x, layer)], 6, lam=1e-9)
    assert len(kept) == 6 and len(set(kept) & {0, 6}) == 1 and len(set(kept) & {1, 7}) == 1
    y = x.reshape(-1, 8) @ layer.kernel[0, 0]
    fit = x.reshape(-1, 8)[:, kept] @ w[:-1] + w[-1]
    assert np.abs(fit - y).max() < 1e-3


def test_keep_count_rounds_to_multiples():
    assert keep_count(384, 0.25) == 288 and keep_count(96, 0.25) == 72 and keep_count(8, 0.9) == 8


def test_float_graph_matches_the_int8_model():
    from edgedet.tflite import load_interpreter

    path = require_asset(MODEL)
    g = read_graph(path)
    assert len(find_targets(g, range(2, 14))) == 12 and g.logits == "concat_1"
    pixels = np.random.default_rng(0).integers(0, 256, (1, 300, 300, 3), dtype=np.uint8)
    it = load_interpreter(path, 1, preserve_all_tensors=True, xnnpack=False)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], pixels)
    it.invoke()
    det = {d["name"]: d for d in it.get_tensor_details()}
    scale, zp = det["concat_1"]["quantization"]
    want = (it.get_tensor(det["concat_1"]["index"]).astype(np.float32) - zp) * scale
    _, logits = run_graph(g, ((pixels.astype(np.float32) - 128) / 128))
    assert np.corrcoef(want.ravel(), logits.ravel())[0, 1] > 0.99


def test_distillation_moves_the_pruned_network_towards_the_dense_one():
    import cv2

    from edgedet.tools.prune.structured import DistillOptions, augmented_views, distill, held_proxy

    g = tiny_ssd()
    targets = find_targets(g, [1, 2])
    pruned, report = prune_graph(g, _inputs(), targets, {t.name: 0.75 for t in targets}, multiple=4)
    rng = np.random.default_rng(3)
    images = [cv2.resize(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8), (20, 24)) for _ in range(8)]
    held = (augmented_views(images, (16, 16), 1).astype(np.float32) - 128) / 128
    opts = DistillOptions(steps=80, batch=4, learning_rate=1e-3, feature_weight=1.0)
    trained, drep = distill(g, pruned, images, opts, keep=report.keep)
    assert drep.steps == 80 and trained.layer("pw2").kernel.shape == pruned.layer("pw2").kernel.shape
    before, after = held_proxy(g, pruned, held), held_proxy(g, trained, held)
    assert after["logit_rel_error"] < before["logit_rel_error"]


def test_export_float_ends_in_the_detection_op(tmp_path):
    from edgedet.tflite import DETECTION_OP, find_detection_op, read_detection_op_options, read_model
    from edgedet.tools.prune.structured import export_float

    g = tiny_ssd()
    g.detection_options = {"num_classes": 2, "max_detections": 5, "nms_iou_threshold": 0.5}
    g.anchors = np.tile(np.array([[0.5, 0.5, 0.2, 0.2]], np.float32), (32, 1))
    report = export_float(g, tmp_path / "tiny.tflite", labels=["a", "b"])
    assert report["ops"].get(DETECTION_OP) == 1 and report["ops"]["CONV_2D"] == 8
    model = read_model(tmp_path / "tiny.tflite")
    sg_index, op_index = find_detection_op(model)
    opts = read_detection_op_options(model.subgraphs[sg_index].operators[op_index])
    assert opts["num_classes"] == 2 and opts["max_detections"] == 5


def tiny_ssd_file(folder):
    """``tiny_ssd`` written as a float SSD file with the detection op, and a folder of 10 calibration images."""
    import cv2

    from edgedet.tools.prune.structured import export_float

    g = tiny_ssd()
    g.detection_options = {"num_classes": 2, "max_detections": 5, "nms_iou_threshold": 0.5}
    g.anchors = np.tile(np.array([[0.5, 0.5, 0.2, 0.2]], np.float32), (32, 1))
    export_float(g, folder / "tiny.tflite", labels=["a", "b"])
    calib = folder / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        cv2.imwrite(str(calib / f"{i}.png"), cv2.resize(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8), (40, 32)))
    return folder / "tiny.tflite", calib


def test_prune_structured_end_to_end(tmp_path):
    """A float SSD file in, an int8 file with fewer channels out, proxies and timings reported."""
    from edgedet.tools.prune.structured import DistillOptions, StructuredOptions, prune_structured

    _, calib = tiny_ssd_file(tmp_path)
    opts = StructuredOptions(ratio=0.5, first=1, last=2, multiple=4, pool=10,
                             distill=DistillOptions(steps=4, batch=2))
    report = prune_structured(tmp_path / "tiny.tflite", tmp_path / "pruned.tflite", [calib], opts)
    assert (tmp_path / "pruned.tflite").is_file() and report.macs_after < report.macs_before
    assert set(report.proxies) == {"one_shot", "distilled"} and report.census["conv_int8"] == 11
    assert sorted(report.kept.values()) == [8, 16]
    assert read_graph(tmp_path / "pruned.tflite").macs() == report.macs_after


def test_speedup_picks_the_ratio_predicted_from_macs():
    from edgedet.tools.prune.structured.recipe import macs_at, predicted_speedup, ratio_for_speedup

    g = tiny_ssd()
    targets = find_targets(g, [1, 2, 3])
    assert macs_at(g, targets, 0.0, 4) == g.macs()
    pruned, report = prune_graph(g, _inputs(4), targets, {t.name: 0.5 for t in targets}, multiple=4)
    assert macs_at(g, targets, 0.5, 4) == report.macs_after == pruned.macs()
    ratio = ratio_for_speedup(g, targets, 1.3, multiple=4)
    assert predicted_speedup(g.macs(), macs_at(g, targets, ratio, 4)) >= 1.3
    assert predicted_speedup(g.macs(), macs_at(g, targets, ratio - 0.01, 4)) < 1.3 or ratio == 0.01
