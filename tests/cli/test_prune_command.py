"""`edgedet prune` as a user reads it: what it wrote, whole layer names, labels kept, early failures."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time


def edgedet(*args, pre: str = ""):
    code = f"{pre}\nfrom edgedet.cli import run_main\nrun_main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)


def test_pruned_registry_file_keeps_its_labels_and_says_where_it_went(v1_model, tmp_path):
    from edgedet.detector import Detector

    src = tmp_path / "default_model.tflite"  # the registry's file by path, without its sidecar
    shutil.copyfile(v1_model, src)
    out = tmp_path / "pruned.tflite"
    res = edgedet("prune", str(src), "-o", str(out), "--method", "magnitude", "--sparsity", "0.3", "-q")
    assert res.returncode == 0, res.stderr
    assert f"wrote {out}" in res.stdout.splitlines()
    assert any(line.startswith("FeatureExtractor/") for line in res.stdout.splitlines())  # names keep their start
    det = Detector.from_path(out, threads=1)
    assert det.labels[0] == "person" and len(det.labels) == 90


def test_plot_without_matplotlib_fails_before_the_work(v1_model, tmp_path):
    t0 = time.perf_counter()
    res = edgedet("prune", str(v1_model), "-o", str(tmp_path / "p.tflite"), "--sensitivity", "--plot",
                  str(tmp_path / "curve.png"), pre="import sys; sys.modules['matplotlib'] = None")
    assert res.returncode == 2 and "matplotlib" in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0
    assert not (tmp_path / "p.tflite").exists() and time.perf_counter() - t0 < 30


def test_long_layer_names_keep_both_ends():
    from edgedet.tools.prune.pruner import short_name

    name = "FeatureExtractor/MobilenetV2/expanded_conv_13/project/Conv2D;BoxPredictor_0/ClassPredictor/BiasAdd"
    short = short_name(name)
    assert len(short) == 52 and short.startswith("FeatureExtractor/") and short.endswith("BiasAdd")
