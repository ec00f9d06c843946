"""`edgedet convert` as a user runs it: TF1 Object Detection API exports in, a labelled .tflite out."""

from __future__ import annotations

import subprocess
import sys

import pytest
from assets import require_asset

from edgedet.sidecar import load_sidecar

TF1_GRAPH = "models/tf1/ssdlite_mobilenet_v2_person/frozen_inference_graph.pb"


def edgedet(*args, env=None):
    return subprocess.run([sys.executable, "-m", "edgedet", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_frozen_tf1_graph_converts_and_keeps_the_labels_given(tmp_path):
    pytest.importorskip("tensorflow")
    graph = require_asset(TF1_GRAPH)
    labels = tmp_path / "person.txt"
    labels.write_text("person\n")
    out = tmp_path / "ssdlite_person.tflite"
    res = edgedet("convert", str(graph), "-o", str(out), "--detection-op", "strip", "--labels", str(labels))
    assert res.returncode == 0, res.stderr
    assert "1917 anchors" in res.stdout and "MB ->" in res.stdout
    side = load_sidecar(out)
    assert side["labels"] == ["person"]
    assert side["postprocess"]["form"] == "raw" and (tmp_path / "ssdlite_person.anchors.npy").is_file()
    res = edgedet("models", "info", str(out))
    assert res.returncode == 0, res.stderr
    assert "person" in res.stdout and "raw" in res.stdout


def test_build_reports_the_size_of_the_model_it_wrote():
    from edgedet.tools.convert import ConvertReport

    text = ConvertReport(source="build:ssdlite:mobilenet_v2", out="m.tflite", mode="float",
                         size_after=4_500_000).format_summary()
    assert "size      4.50 MB" in text and "0.00 MB" not in text


def test_converted_registry_file_without_sidecar_keeps_the_registry_labels(tmp_path):
    """The default model's file given by path, no sidecar beside it: the output still speaks COCO names."""
    import shutil

    from edgedet.detector import Detector

    src = tmp_path / "copied.tflite"
    shutil.copyfile(require_asset("models/ssd_mobilenet_v1_coco_quant_postprocess.tflite"), src)
    out = tmp_path / "copied_raw.tflite"
    res = edgedet("convert", str(src), "-o", str(out), "--detection-op", "strip")
    assert res.returncode == 0, res.stderr
    det = Detector.from_path(out, threads=1)
    assert det.labels[:3] == ["person", "bicycle", "car"] and len(det.labels) == 90
    assert load_sidecar(out)["labels"][0] == "person"  # written into the output, not found again at load


def test_labels_option_applies_to_the_output(tmp_path):
    from edgedet.detector import Detector

    src = require_asset("models/ssd_mobilenet_v1_coco_quant_postprocess.tflite")
    labels = tmp_path / "mine.txt"
    labels.write_text("".join(f"thing{i}\n" for i in range(90)))
    out = tmp_path / "v1_raw.tflite"
    res = edgedet("convert", str(src), "-o", str(out), "--detection-op", "strip", "--labels", str(labels))
    assert res.returncode == 0, res.stderr
    assert Detector.from_path(out, threads=1).labels[:2] == ["thing0", "thing1"]
