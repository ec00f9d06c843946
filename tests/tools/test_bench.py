"""``edgedet bench`` end to end on the real models and video (few runs: numbers are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys


def edgedet(*args):
    return subprocess.run([sys.executable, "-m", "edgedet", *args], capture_output=True, text=True, timeout=240)


def test_bench_json_on_the_op_model_and_a_video(v1_model, pedestrians_video):
    res = edgedet("bench", "--model", str(v1_model), "--source", str(pedestrians_video), "--runs", "5",
                  "--warmup", "1", "--frames", "12", "--threads", "2", "--json")
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    assert r["model"]["form"] == "op" and r["model"]["input_size"] == [300, 300] and r["model"]["anchors"] == 1917
    assert r["threads"]["interpreter"] == 2 and isinstance(r["threads"]["opencv"], int)
    assert r["machine"]["cores"] >= 1 and r["machine"]["arch"]
    for key in ("invoke_ms", "invoke_stripped_ms", "invoke_with_op_ms", "preprocess_ms"):
        assert r[key]["n"] == 5 and 0 < r[key]["p50"] <= r[key]["p95"], key
    assert set(r["decode_ms"]) == {"ours", "op"}
    assert isinstance(r["op_ms"], float) and r["op_ms_blocks"] == 1  # 5 runs: one pair of blocks
    assert r["pipeline"]["frames"] == 12 and r["pipeline"]["fps"] > 0
    assert {"capture", "preprocess", "invoke", "decode"} <= set(r["pipeline"]["stages_ms"])
    assert r["pipeline_vs_invoke"] == round(r["pipeline"]["fps"] / r["invoke_rate"], 3)
    assert (r["pipeline"]["workers"], r["pipeline"]["threads_per_worker"]) == (2, 1)  # a file: frames side by side
    assert "Traceback" not in res.stderr


def test_bench_pipeline_with_one_interpreter(v1_model, pedestrians_video):
    res = edgedet("bench", "--model", str(v1_model), "--source", str(pedestrians_video), "--runs", "3",
                  "--warmup", "1", "--frames", "8", "--threads", "2", "--workers", "1")
    assert res.returncode == 0, res.stderr
    assert "1 inference worker(s) x 2 thread(s)" in res.stdout


def test_bench_text_with_a_thread_sweep(v1_model, pedestrians_video):
    res = edgedet("bench", "--model", str(v1_model), "--source", str(pedestrians_video), "--runs", "3",
                  "--warmup", "1", "--frames", "8", "--threads", "2", "--sweep", "threads")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "invoke, with the op" in out and "op time (with - stripped)" in out
    assert "pipeline / raw invoke rate" in out and "threads: interpreter 2" in out
    table = out[out.index("pipeline fps"):].splitlines()[1:]
    assert [line.split()[0] for line in table] == ["1", "2"]


def test_bench_raw_model_without_a_source(blazeface_model):
    res = edgedet("bench", "--model", str(blazeface_model), "--runs", "3", "--warmup", "0", "--json")
    assert res.returncode == 0, res.stderr
    r = json.loads(res.stdout)
    assert r["model"]["form"] == "raw" and "op_ms" not in r and set(r["decode_ms"]) == {"ours"}
    assert r["pipeline"] is None and r["frames"] == "synthetic 640x480"


def test_bench_errors_are_one_line(tmp_path):
    res = edgedet("bench", "--model", str(tmp_path / "missing.tflite"), "--runs", "1")
    assert res.returncode == 4
    assert res.stderr.strip() == f"edgedet: error: model file not found: {tmp_path / 'missing.tflite'}"
    res = edgedet("bench", "--runs", "0")
    assert res.returncode != 0 and res.stderr.startswith("edgedet: error:") and res.stderr.count("\n") == 1
