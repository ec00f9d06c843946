"""`edgedet prune` with its default recovery: a retrained file in the source's format with the zeros
kept, and without TensorFlow a one-line error before any work that names the extra and the option
that skips it."""

from __future__ import annotations

import subprocess
import sys

import pytest

NO_TF = "import sys; sys.modules['tensorflow'] = None"


def edgedet(*args, pre: str = ""):
    code = f"{pre}\nfrom edgedet.cli import run_main\nrun_main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def test_default_prune_recovers_with_zeros_kept(tiny_model, tmp_path):
    import json

    from click.testing import CliRunner

    from edgedet.cli import main
    from edgedet.detector import Detector

    src, calib = tiny_model
    out = tmp_path / "pruned.tflite"
    res = CliRunner().invoke(main, ["prune", str(src), "-o", str(out), "--calibration", str(calib), "--num-calib",
                                    "10", "--allocation", "uniform", "--skip", "", "--json", str(tmp_path / "r.json")],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[-1] == f"wrote {out}"
    assert any(line.startswith("held-back agreement") and "recovered" in line for line in lines)
    assert any(line.startswith("minutes:") and "recovery" in line for line in lines)
    assert "recovering: 600 steps" in res.stderr
    recovery = json.loads((tmp_path / "r.json").read_text())["recovery"]
    assert recovery["zeros"]["recovered"] == recovery["zeros"]["pruned"] > 0
    assert "prune-recover" in out.with_suffix(".yaml").read_text()
    det = Detector.from_path(out, threads=1)
    assert det.labels == ["a", "b"]


def test_without_tensorflow_default_fails_early_and_distill_steps_0_prunes(tiny_model, tmp_path):
    src, calib = tiny_model
    out = tmp_path / "pruned.tflite"
    args = ("prune", str(src), "-o", str(out), "--calibration", str(calib), "--num-calib", "10",
            "--allocation", "uniform", "-q")
    res = edgedet(*args, pre=NO_TF)
    assert res.returncode == 2 and "Traceback" not in res.stderr and res.stderr.strip().count("\n") == 0
    assert "edgedet[convert]" in res.stderr and "--distill-steps 0" in res.stderr
    assert not out.exists()
    res = edgedet(*args, "--distill-steps", "0", pre=NO_TF)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-1] == f"wrote {out}" and "recovery" not in res.stdout
    assert abs(out.stat().st_size - src.stat().st_size) < 0.05 * src.stat().st_size  # the source's format


def test_distill_steps_without_calibration_is_a_one_line_error(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"")
    res = edgedet("prune", str(model), "-o", str(tmp_path / "o.tflite"), "--method", "magnitude",
                  "--distill-steps", "10")
    assert res.returncode == 2 and "--calibration" in res.stderr and res.stderr.strip().count("\n") == 0


def test_model_recovery_cannot_train_fails_before_pruning(fpnlite_model, tmp_path):
    pytest.importorskip("tensorflow")
    import shutil

    from tests.assets import require_asset

    calib = tmp_path / "calib"
    calib.mkdir()
    shutil.copy(require_asset("images/coral/kite_and_cold.jpg"), calib)
    out = tmp_path / "o.tflite"
    res = edgedet("prune", str(fpnlite_model), "-o", str(out), "--calibration", str(calib))
    assert res.returncode == 4 and res.stderr.strip().count("\n") == 0 and "Traceback" not in res.stderr
    assert "op ADD" in res.stderr and "--distill-steps 0" in res.stderr
    assert not out.exists()
