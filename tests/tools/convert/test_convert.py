"""``edgedet convert`` end to end on the real FPNLite asset, and its one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import pytest
from click.testing import CliRunner

from edgedet.cli import main
from edgedet.detector import Detector
from edgedet.sidecar import load_sidecar


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory):
    from assets import require_asset

    from edgedet.tools.calibration import build_calibration_set

    out = tmp_path_factory.mktemp("calib")
    build_calibration_set([str(require_asset("videos/pedestrians_480x360.avi")),
                           str(require_asset("images/coral"))], out, num=8)
    return out


def test_convert_int8_with_eval_writes_model_sidecar_and_summary(fpnlite_model, calib_dir, coco_tiny, coco_labels,
                                                                 tmp_path):
    out = tmp_path / "models" / "fpn_int8.tflite"
    res = CliRunner().invoke(main, [
        "convert", str(fpnlite_model), "-o", str(out), "--quantize", "int8", "--calibration", str(calib_dir),
        "--percentile", "99.99", "--threads", "2", "--eval", "--images", str(coco_tiny / "val2017"),
        "--annotations", str(coco_tiny / "annotations" / "instances_val2017.json"), "--labels", str(coco_labels),
        "--eval-limit", "5", "--json",
    ])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["census"]["conv_int8"] == report["census"]["conv_total"] == 123
    assert report["invoke_ms_before"] > 0 and report["invoke_ms_after"] > 0
    assert report["accuracy_before"]["n_images"] == 5
    assert abs(report["accuracy_before"]["mAP"] - report["accuracy_after"]["mAP"]) < 0.1
    assert report["agreement"]["images"] >= 1
    side = load_sidecar(out)
    assert side["source"]["sha256"] and side["source"]["path"].endswith(fpnlite_model.name)
    assert side["quantization"]["mode"] == "int8" and side["quantization"]["percentile"] == 99.99
    assert side["calibration"]["size"] == 8 and len(side["calibration"]["manifest_sha256"]) == 64
    assert "before" in side["accuracy"] and side["speed"]["threads"] == 2
    assert side["history"][-1]["tool"] == "edgedet convert"
    assert sorted(p.name for p in out.parent.iterdir()) == ["fpn_int8.tflite", "fpn_int8.yaml"]


def test_convert_text_summary_and_strip(fpnlite_model, calib_dir, grace_hopper, coco_labels, tmp_path):
    out = tmp_path / "raw_int8.tflite"
    res = CliRunner().invoke(main, ["convert", str(fpnlite_model), "-o", str(out), "--quantize", "int8",
                                    "--calibration", str(calib_dir), "--num-calib", "6", "--percentile", "100",
                                    "--postprocess", "strip", "--threads", "2"])
    assert res.exit_code == 0, res.output
    for word in ("size", "invoke", "int8", "123/123"):
        assert word in res.stdout
    side = load_sidecar(out)
    assert side["postprocess"]["form"] == "raw"
    assert (tmp_path / side["anchors"]["file"]).is_file()
    assert side["calibration"]["size"] == 6
    det = Detector.from_path(out, labels=coco_labels, score_threshold=0.5)
    dets = det.detect(cv2.imread(str(grace_hopper)))
    assert det.info.form == "raw" and det.labels[int(dets.class_ids[0])] == "person"
    # the raw scores come out of a float sigmoid over the int8 logits: continuous, not 1/256 steps
    from edgedet.tools.quantize import census_of

    census = census_of(out)
    assert census["float_score_sigmoid"] == 1 and census["activations_int8"] == census["activations_total"]
    steps = dets.scores.astype("float64") * 256
    assert not all(abs(steps - steps.round()) < 1e-3)


def test_bad_inputs_are_one_line_errors(fpnlite_model, calib_dir, tmp_path):
    runner = CliRunner()
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"\x08\x07onnx-ish")
    not_model = tmp_path / "fake.tflite"
    not_model.write_bytes(b"this is not a flatbuffer at all")
    empty = tmp_path / "empty"
    empty.mkdir()
    out = str(tmp_path / "o.tflite")
    cases = [
        (["convert", str(onnx), "-o", out], "unsupported source format"),
        (["convert", str(not_model), "-o", out, "--quantize", "fp16"], "not a .tflite model"),
        (["convert", str(fpnlite_model), "-o", out, "--quantize", "int8", "--calibration", str(empty)],
         "no calibration images"),
        (["convert", str(fpnlite_model), "-o", out, "--quantize", "int8"], "needs --calibration"),
        (["convert", str(tmp_path / "missing.tflite"), "-o", out], "not found"),
        (["convert", str(fpnlite_model), "-o", str(tmp_path / "o.txt")], "must be a .tflite"),
    ]
    for args, msg in cases:
        res = runner.invoke(main, args)
        assert res.exit_code not in (0, 1), (args, res.output)
        assert res.stderr.startswith("edgedet: error:") and msg in res.stderr, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert not (tmp_path / "o.tflite").exists()


def test_interrupted_convert_leaves_previous_output_intact(fpnlite_model, calib_dir, tmp_path):
    out = tmp_path / "m.tflite"
    out.write_bytes(b"previous model")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgedet", "convert", str(fpnlite_model), "-o", str(out), "--quantize", "int8",
         "--calibration", str(calib_dir), "--percentile", "auto", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "percentile" not in line and time.monotonic() < deadline:  # mid-way through quantizing
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "interrupted" in err, err
    assert out.read_bytes() == b"previous model"
    assert not [p for p in tmp_path.iterdir() if p.name not in ("m.tflite",)]
