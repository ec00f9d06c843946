"""``edgedet prune`` on the real models: sparsity, zero points, detections kept, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgedet.cli import main
from edgedet.errors import ConfigError
from edgedet.tflite import read_model, schema, tensor_array, write_model
from edgedet.tools.prune import layers as pl
from edgedet.tools.prune.alloc import allocate
from edgedet.tools.prune.recon import Grid, augmented_gram, sparsegpt


def _run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


@pytest.fixture
def calib_dir(tmp_path, asset):
    """A small calibration folder: photos plus a video (never the evaluation set)."""
    d = tmp_path / "calib"
    d.mkdir()
    for name in ("kite_and_cold.jpg", "pets.jpg", "cat.bmp", "traffic_frames/0001.bmp"):
        src = asset(f"images/coral/{name}")
        shutil.copy(src, d / src.name)
    for name in ("astronaut.png", "coffee.png", "horse.png", "motorcycle_left.png"):
        shutil.copy(asset(f"images/skimage/{name}"), d / name)
    (d / "clip.avi").symlink_to(asset("videos/pedestrians_480x360.avi"))
    return d


def _stored(model, layer):
    return pl.stored_weights(model, layer).astype(np.int64)


@pytest.mark.slow
def test_cli_reconstruct_prunes_pointwise_keeps_person(tmp_path, v1_model, calib_dir, grace_hopper,
                                                        coco_labels):
    out = tmp_path / "pruned.tflite"
    report = tmp_path / "report.json"
    r = _run("prune", v1_model, "-o", out, "--sparsity", "0.5", "--calibration", calib_dir,
             "--num-calib", "16", "--allocation", "uniform", "--json", report, "--distill-steps", "0", "-q")
    assert r.exit_code == 0, r.output
    assert "overall:" in r.output and "gzip" in r.output
    # zeroed weights keep their place: the file is re-serialized but not smaller
    assert abs(out.stat().st_size - v1_model.stat().st_size) < 0.01 * v1_model.stat().st_size
    data = json.loads(report.read_text())
    assert data["overall_sparsity"] >= 0.5
    assert data["sizes"]["out"]["gzip"] < data["sizes"]["src"]["gzip"]

    src, dst = read_model(v1_model), read_model(out)
    src_layers, dst_layers = pl.find_layers(src), pl.find_layers(dst)
    for a, b in zip(src_layers, dst_layers):
        if a.kind != "pointwise":  # not selected: untouched
            assert np.array_equal(_stored(src, a), _stored(dst, b)), a.name
            continue
        zp = pl.zero_points(dst, b)[:, None]
        stored = _stored(dst, b)
        # uint8 asymmetric weights: "zero" is the zero point, never the stored value 0
        assert np.mean(stored == zp) >= 0.49, b.name
        assert np.all(pl.real_weights(dst, b)[stored == zp] == 0)
        assert np.any(zp != 0)
    # the sidecar records what was done
    assert "prune" in (out.with_suffix(".yaml")).read_text()

    import cv2

    from edgedet.detector import Detector

    det = Detector.from_path(out, threads=2, labels=coco_labels)
    d = det.detect(cv2.imread(str(grace_hopper)))
    labels = [det.labels[int(c)] for c in d.class_ids[d.scores >= 0.5]]
    assert "person" in labels


def test_magnitude_without_calibration_with_eval(tmp_path, v1_model, coco_tiny):
    out = tmp_path / "m.tflite"
    r = _run("prune", v1_model, "-o", out, "--sparsity", "0.3", "--method", "magnitude",
             "--skip", "depthwise,conv,last", "-q", "--eval", "--images", coco_tiny / "val2017",
             "--annotations", coco_tiny / "annotations" / "instances_val2017.json")
    assert r.exit_code == 0, r.output
    assert "mAP: 0.2" in r.output  # dense ~0.215; 30 % magnitude keeps it above 0.15
    after = float(r.output.split("mAP: ")[1].split("-> ")[1].split()[0])
    assert after > 0.15
    assert "mAP" in out.with_suffix(".yaml").read_text()
    dst = read_model(out)
    for layer in pl.find_layers(dst):
        s = pl.sparsity_of(dst, layer)
        if layer.kind == "pointwise" and not layer.feeds_output:
            assert 0.29 <= s <= 0.31, layer.name
        elif layer.feeds_output:
            assert s < 0.3, layer.name  # heads skipped by "last"


def test_per_channel_int8_and_float_weights(tmp_path, fpnlite_model, blazeface_model):
    for src in (fpnlite_model, blazeface_model):
        out = tmp_path / f"{src.stem}.pruned.tflite"
        r = _run("prune", src, "-o", out, "--sparsity", "0.4", "--method", "magnitude",
                 "--allocation", "uniform", "--skip", "depthwise", "-q")
        assert r.exit_code == 0, r.output
        model = read_model(out)
        layers = [x for x in pl.find_layers(model) if x.kind != "depthwise"]
        assert layers
        for layer in layers:
            assert pl.sparsity_of(model, layer) >= 0.39, layer.name
            real = pl.real_weights(model, layer)
            assert np.mean(real == 0) >= 0.39


def test_sparsegpt_beats_magnitude_on_correlated_inputs():
    rng = np.random.default_rng(0)
    # like a ReLU layer's output: correlated channels, non-negative, non-zero mean
    x = np.maximum(rng.normal(size=(4000, 64)) @ (np.eye(64) + 0.1 * rng.normal(size=(64, 64))) + 0.5, 0)
    w = rng.normal(size=(32, 64))
    b = rng.normal(size=32)
    y = x @ w.T + b
    h = augmented_gram(x)
    wn, bn, keep = sparsegpt(w, b, h, 0.5, Grid(None, None))
    assert abs(1 - keep.mean() - 0.5) < 0.01
    assert np.all(wn[~keep] == 0)
    mag = np.where(np.abs(w) >= np.median(np.abs(w)), w, 0)
    err_recon = np.sum((x @ wn.T + bn - y) ** 2)
    err_mag = np.sum((x @ mag.T + b - y) ** 2)
    assert err_recon < 0.6 * err_mag


def test_allocation_spends_budget_where_it_is_cheap():
    curves = {1: [(0.5, 0.001), (0.9, 0.002)], 2: [(0.5, 1.0), (0.9, 5.0)]}
    alloc = allocate(curves, {1: 1000, 2: 1000}, 0.5, cap=0.9)
    assert alloc[1] == pytest.approx(0.9)
    assert alloc[2] == pytest.approx(0.1)


def _no_conv_model(path: Path) -> Path:
    s = schema()
    m = s.ModelT()
    m.version = 3
    m.description = b"add"
    m.buffers = [s.BufferT(), s.BufferT(), s.BufferT()]
    m.buffers[2].data = np.frombuffer(np.ones(4, np.float32).tobytes(), np.uint8)
    code = s.OperatorCodeT()
    code.builtinCode = s.BuiltinOperator.ADD
    code.deprecatedBuiltinCode = s.BuiltinOperator.ADD
    code.version = 1
    m.operatorCodes = [code]
    sg = s.SubGraphT()
    tensors = []
    for name in (b"x", b"y", b"c"):
        t = s.TensorT()
        t.shape = [1, 4]
        t.type = s.TensorType.FLOAT32
        t.name = name
        t.buffer = 2 if name == b"c" else 0
        tensors.append(t)
    sg.tensors = tensors
    op = s.OperatorT()
    op.opcodeIndex = 0
    op.inputs = [0, 2]
    op.outputs = [1]
    sg.operators = [op]
    sg.inputs = [0]
    sg.outputs = [1]
    m.subgraphs = [sg]
    write_model(m, path)
    return path


def test_bad_inputs_one_line_errors(tmp_path, v1_model):
    out = tmp_path / "o.tflite"
    for sp in ("1.5", "0", "-0.1", "1"):
        r = _run("prune", v1_model, "-o", out, "--sparsity", sp, "--method", "magnitude",
                 "--allocation", "uniform")
        assert r.exit_code != 0
        assert "edgedet: error: --sparsity" in r.output and "Traceback" not in r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    r = _run("prune", v1_model, "-o", out, "--calibration", empty)
    assert r.exit_code != 0 and "no images or videos" in r.output
    r = _run("prune", v1_model, "-o", out)  # reconstruct needs data
    assert r.exit_code != 0 and "--calibration" in r.output
    addm = _no_conv_model(tmp_path / "add.tflite")
    r = _run("prune", addm, "-o", out, "--method", "magnitude", "--allocation", "uniform")
    assert r.exit_code != 0 and "no convolution" in r.output
    r = _run("prune", tmp_path / "missing.tflite", "-o", out, "--method", "magnitude")
    assert r.exit_code != 0 and "not found" in r.output
    assert not out.exists()


def test_interrupted_prune_leaves_no_output(tmp_path, v1_model, calib_dir):
    from edgedet.tools.prune.pruner import PruneOptions, prune

    out = tmp_path / "o.tflite"
    calls = []

    def stop(msg):
        calls.append(msg)
        if msg.startswith("pruning"):
            raise KeyboardInterrupt

    opts = PruneOptions(sparsity=0.5, calibration=[str(calib_dir)], num_calib=4, allocation="uniform",
                        threads=2, progress=stop)
    with pytest.raises(KeyboardInterrupt):
        prune(v1_model, out, opts)
    assert calls and not out.exists()
    assert not list(tmp_path.glob(".o.tflite*"))


def test_options_validate():
    from edgedet.tools.prune.pruner import PruneOptions

    with pytest.raises(ConfigError):
        PruneOptions(sparsity=0.95, max_layer_sparsity=0.9, method="magnitude", allocation="uniform").validate()
    with pytest.raises(ConfigError):
        PruneOptions(method="magnitude", allocation="sensitivity").validate()


def test_layers_found_on_v1(v1_model):
    m = read_model(v1_model)
    layers = pl.find_layers(m)
    kinds = {k: sum(x.kind == k for x in layers) for k in pl.KINDS}
    assert kinds["pointwise"] == 29 and kinds["depthwise"] == 13 and kinds["conv"] == 5
    heads = [x for x in layers if x.feeds_output]
    assert len(heads) == 12 and all("Predictor" in x.name for x in heads)
    w = tensor_array(m, m.subgraphs[0].tensors[layers[0].weight])
    assert w.dtype == np.uint8


@pytest.mark.slow
def test_sensitivity_table_and_plot(tmp_path, v1_model, calib_dir):
    out = tmp_path / "s.tflite"
    png = tmp_path / "curve.png"
    only_last = "depthwise,conv,FeatureExtractor," + ",".join(f"BoxPredictor_{i}/" for i in range(5))
    r = _run("prune", v1_model, "-o", out, "--sparsity", "0.5", "--calibration", calib_dir,
             "--num-calib", "8", "--skip", only_last, "--sensitivity", "--plot", png, "--distill-steps", "0", "-q")
    assert r.exit_code == 0, r.output
    assert "per-layer sensitivity" in r.output and "BoxPredictor_5/ClassPredictor" in r.output
    assert "magnitude (uniform)" in r.output and "reconstruct (sensitivity)" in r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sequential_refit_on_pruned_activations(v1_model, calib_dir):
    from edgedet.tools.prune.pruner import PruneOptions, levels, load_calibration, prune_model, select_layers

    skip = ("depthwise", "conv", "MobilenetV1/MobilenetV1/", "1x1_96", "1x1_192",
            *(f"BoxPredictor_{i}/" for i in range(5)))
    opts = PruneOptions(sparsity=0.6, calibration=[str(calib_dir)], num_calib=6, allocation="uniform",
                        sequential=True, threads=2)
    model = read_model(v1_model)
    layers = select_layers(pl.find_layers(model), skip)
    assert [len(g) for g in levels(model, layers)] == [1, 2]  # 1x1_48 feeds BoxPredictor_5's input
    results, agreement = prune_model(model, opts, inputs=load_calibration(v1_model, opts))
    assert all(r.sparsity >= 0.59 and r.method == "reconstruct" for r in results)
    assert 0 <= agreement < 0.05
