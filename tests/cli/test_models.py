"""`edgedet models ...` and the CLI's error contract (one line, non-zero exit)."""

from __future__ import annotations

import json
import subprocess
import sys


def edgedet(*args, env=None):
    return subprocess.run([sys.executable, "-m", "edgedet", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_models_list_json():
    res = edgedet("models", "list", "--json")
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)
    assert any(r["default"] and r["name"] == "ssd_mobilenet_v1_coco_quant" for r in rows)


def test_models_pull_from_mirror_then_info(tmp_path, v1_model):
    import os

    env = dict(os.environ, EDGEDET_CACHE=str(tmp_path), EDGEDET_MODEL_MIRROR=str(v1_model.parent))
    res = edgedet("models", "pull", "ssd_mobilenet_v1_coco_quant", env=env)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "ssd_mobilenet_v1_coco_quant_postprocess.tflite").is_file()
    res = edgedet("models", "info", "ssd_mobilenet_v1_coco_quant", env=env)
    assert "present" in res.stdout and "coral.ai" in res.stdout


def test_unknown_model_is_one_line_error():
    res = edgedet("models", "info", "nope")
    assert res.returncode != 0
    assert res.stderr.strip().count("\n") == 0 and "unknown model 'nope'" in res.stderr
    assert "Traceback" not in res.stderr


def test_bad_options_of_every_command_are_one_line():
    for args in (["run", "--threads", "abc"], ["convert", "--bogus"], ["prune"], ["bogus"]):
        res = edgedet(*args)
        assert res.returncode == 2, args
        assert res.stderr.startswith("edgedet: error: ") and res.stderr.strip().count("\n") == 0, res.stderr
