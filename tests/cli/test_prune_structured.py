"""`edgedet prune --structured` as a user runs it: a smaller int8 file, phases and minutes reported,
plain one-line errors for wrong option combinations."""

from __future__ import annotations

import subprocess
import sys

import pytest


def edgedet(*args):
    code = "from edgedet.cli import run_main\nrun_main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def test_structured_writes_a_smaller_int8_model_and_reports_phases(tiny_model, tmp_path):
    from click.testing import CliRunner

    from edgedet.cli import main
    from edgedet.detector import Detector
    from edgedet.tools.prune.structured import read_graph

    src, calib = tiny_model
    out = tmp_path / "pruned.tflite"
    res = CliRunner().invoke(main, ["prune", str(src), "-o", str(out), "--structured", "--ratio", "0.5",
                                    "--calibration", str(calib), "--num-calib", "10", "--distill-steps", "2"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[-1] == f"wrote {out}"
    assert any(line.startswith("minutes: load") and "one-shot" in line and "distill" in line and "int8" in line
               for line in lines)
    assert any("held-back agreement" in line and "distill" in line for line in lines)
    for phase in ("one-shot: removing 50%", "distilling: 2 steps", "int8:"):
        assert phase in res.stderr, res.stderr
    assert read_graph(out).macs() < read_graph(src).macs()
    det = Detector.from_path(out, threads=1)
    assert det.labels == ["a", "b"]


def test_structured_options_fail_in_one_line(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"")
    for args in (("--ratio", "0.3"), ("--structured",), ("--structured", "--calibration", str(tmp_path),
                                                         "--ratio", "0.2", "--speedup", "1.3")):
        res = edgedet("prune", str(model), "-o", str(tmp_path / "o.tflite"), *args)
        assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr, args
        assert "--" in res.stderr


def test_structured_needs_calibration_images_not_only_videos(tmp_path):
    pytest.importorskip("tensorflow")
    from click.testing import CliRunner

    from edgedet.cli import main
    from tests.assets import require_asset

    model = require_asset("models/ssd_mobilenet_v1_coco_quant_postprocess.tflite")
    video = require_asset("videos/pedestrians_480x360.avi")
    res = CliRunner().invoke(main, ["prune", str(model), "-o", str(tmp_path / "o.tflite"), "--structured",
                                    "--calibration", str(video)])
    assert res.exit_code == 2 and "calibration images" in res.stderr, res.stderr
    assert not (tmp_path / "o.tflite").exists()
