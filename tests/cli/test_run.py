"""``edgedet run`` end to end: real model, real video, real subprocess and signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
from click.testing import CliRunner

from edgedet.cli import main

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="session")
def run_env(tmp_path_factory):
    """Environment where the default registry model is pulled from the assets into a private cache."""
    from assets import require_asset

    models = require_asset("models/ssd_mobilenet_v1_coco_quant_postprocess.tflite").parent
    env = dict(os.environ, EDGEDET_MODEL_MIRROR=str(models), EDGEDET_CACHE=str(tmp_path_factory.mktemp("cache")))
    return env


def _edgedet(args, env, **kw):
    return subprocess.run([sys.executable, "-m", "edgedet", "run", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=120, **kw)


def _frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_max_frames_events_record_stats(tmp_path, run_env, pedestrians_video):
    ev, rec, st = tmp_path / "e.jsonl", tmp_path / "o.mp4", tmp_path / "s.json"
    p = _edgedet(["--source", pedestrians_video, "--headless", "--events", ev, "--record", rec,
                  "--max-frames", 25, "--stats-json", st], run_env)
    assert p.returncode == 0, p.stderr
    events = _jsonl(ev)
    assert [e["frame"] for e in events] == list(range(25))
    assert any(d["label"] == "person" for d in events[0]["detections"])
    box = events[0]["detections"][0]["box"]
    assert len(box) == 4 and 0 <= box[0] < box[2] <= 480 and 0 <= box[1] < box[3] <= 360
    assert _frames(rec) == 25
    stats = json.loads(st.read_text())
    assert stats["frames"]["output"] == 25 and stats["dropped"]["total"] == 0
    assert stats["stop_reason"] == "max frames"
    assert "fps in" in p.stderr and "frame age at output" in p.stderr and "Traceback" not in p.stderr


def test_several_inference_workers_give_the_same_events_as_one(tmp_path, run_env, pedestrians_video):
    runs = {}
    for workers in (1, 2, 3):
        ev = tmp_path / f"e{workers}.jsonl"
        p = _edgedet(["--source", pedestrians_video, "--headless", "--events", ev, "--max-frames", 60,
                      "--threads", 2, "--workers", workers], run_env)
        assert p.returncode == 0, p.stderr
        runs[workers] = [(e["frame"], e["detections"]) for e in _jsonl(ev)]
    assert [f for f, _ in runs[1]] == list(range(60))
    assert runs[2] == runs[1] and runs[3] == runs[1]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_cleanly_with_playable_recording(tmp_path, run_env, pedestrians_video, sig):
    ev, rec = tmp_path / "e.jsonl", tmp_path / "o.mp4"
    args = [sys.executable, "-m", "edgedet", "run", "--source", str(pedestrians_video), "--loop", "--headless",
            "--events", str(ev), "--record", str(rec)]
    if sig == signal.SIGTERM:
        args += ["--realtime", "--fps", "30"]
    proc = subprocess.Popen(args, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not ev.exists() or len(ev.read_text().splitlines()) < 15):
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.1)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    events = _jsonl(ev)  # every line complete
    assert len(events) >= 15
    assert _frames(rec) >= len(events) if sig == signal.SIGTERM else _frames(rec) == len(events)
    assert signal.Signals(sig).name in err and "Traceback" not in err


def test_second_ctrl_c_forces_exit(tmp_path, run_env, pedestrians_video):
    ev = tmp_path / "e.jsonl"
    # FPNLite is slow: the first Ctrl-C leaves frames in flight for a while
    proc = subprocess.Popen([sys.executable, "-m", "edgedet", "run", "--source", str(pedestrians_video), "--loop",
                             "--headless", "--events", str(ev)], env=run_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not ev.exists() or not ev.read_text()):
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 130), err  # 0 when the first stop already finished
    assert "Traceback" not in err
    for line in ev.read_text().splitlines():
        json.loads(line)


def test_config_file_with_cli_overrides(tmp_path, run_env, pedestrians_video, v1_model, coco_labels):
    ev = tmp_path / "e.jsonl"
    cfg = tmp_path / "edgedet.yaml"
    cfg.write_text(
        f"model: {{path: '{v1_model}', labels: '{coco_labels}', score_threshold: 0.3, classes: [person]}}\n"
        f"source: {{uri: '{pedestrians_video}', max_frames: 10}}\n"
        f"output: {{headless: true, events: '{ev}'}}\n"
    )
    p = _edgedet(["--config", cfg, "--max-frames", 4], run_env)
    assert p.returncode == 0, p.stderr
    events = _jsonl(ev)
    assert len(events) == 4  # the command line wins over the file
    labels = {d["label"] for e in events for d in e["detections"]}
    assert labels == {"person"}
    assert min(d["score"] for e in events for d in e["detections"]) >= 0.3


def _one_line_error(result, code=None):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0
    if code is not None:
        assert result.exit_code == code
    assert len(lines) == 1, result.output
    assert lines[0].startswith("edgedet: error: ")
    return lines[0]


@pytest.fixture
def cli(run_env, monkeypatch):
    for k in ("EDGEDET_MODEL_MIRROR", "EDGEDET_CACHE"):
        monkeypatch.setenv(k, run_env[k])

    def invoke(*args):
        return CliRunner().invoke(main, ["run", *map(str, args)], catch_exceptions=False)

    return invoke


def test_config_errors_name_the_field(tmp_path, cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text("source: {urii: x.mp4}\n")
    assert "source.urii: unknown option" in _one_line_error(cli("--config", bad), 2)
    bad.write_text("source: {max_frames: ten}\n")
    assert "source.max_frames: expected an integer" in _one_line_error(cli("--config", bad), 2)
    bad.write_text("sourc: {}\n")
    assert "sourc: unknown option" in _one_line_error(cli("--config", bad), 2)
    bad.write_text("source: [\n")
    assert "invalid YAML" in _one_line_error(cli("--config", bad), 2)
    assert "config file not found" in _one_line_error(cli("--config", tmp_path / "none.yaml"), 2)


def test_bad_inputs_are_one_line_errors(tmp_path, cli, pedestrians_video):
    assert "source not found: " in _one_line_error(cli("--source", tmp_path / "missing.mp4", "--headless"), 3)
    junk = tmp_path / "junk.avi"
    junk.write_bytes(os.urandom(4096))
    assert "junk.avi" in _one_line_error(cli("--source", junk, "--headless"), 3)
    assert "cannot open camera 57" in _one_line_error(cli("--camera", 57, "--headless"), 3)
    msg = _one_line_error(cli("--source", "rtsp://admin:hunter2@127.0.0.1:9/x", "--headless",
                              "--open-timeout", 1, "--reconnect-attempts", 1))
    assert "hunter2" not in msg
    assert "--threads" in _one_line_error(cli("--threads", "abc", "--source", pedestrians_video), 2)
    assert "score_threshold" in _one_line_error(cli("--threshold", 2, "--source", pedestrians_video), 2)
    assert "--resize" in _one_line_error(cli("--resize", "squash", "--source", pedestrians_video), 2)
    assert "No such option" in _one_line_error(cli("--nope"), 2)
    assert "no input" in _one_line_error(cli("--headless"), 2)
    assert "model" in _one_line_error(cli("--source", pedestrians_video, "--model", tmp_path / "m.tflite"))
    assert "cannot record" in _one_line_error(cli("--source", pedestrians_video, "--headless", "--record",
                                                  tmp_path / "no" / "o.mp4"), 6)
    assert "cannot write stats" in _one_line_error(cli("--source", pedestrians_video, "--headless", "--stats-json",
                                                       tmp_path / "no" / "s.json"), 6)
    assert "cannot write events" in _one_line_error(cli("--source", pedestrians_video, "--headless", "--events",
                                                        tmp_path / "no" / "e.jsonl"), 6)


def test_single_image_and_directory(tmp_path, cli, grace_hopper):
    ev = tmp_path / "e.jsonl"
    r = cli("--source", grace_hopper, "--headless", "--events", ev)
    assert r.exit_code == 0, r.output
    (event,) = _jsonl(ev)
    assert "person" in {d["label"] for d in event["detections"]}
    r = cli("--source", grace_hopper.parent, "--headless", "--events", ev)
    assert r.exit_code == 0, r.output
    assert len(_jsonl(ev)) >= 5


def test_configuration_errors_exit_2_before_the_model_is_resolved(tmp_path, cli, pedestrians_video):
    # the model is no registry name and no file: anything checked after resolving it would exit 4 or 5
    run = ("--source", pedestrians_video, "--headless", "--model", "no_such_model")
    for args, key in ((["--iou", 0], "model.iou_threshold: must be > 0"),
                      (["--http", "not a host"], "http.listen: expected [HOST]:PORT"),
                      (["--rtsp-out", "http://x/y"], "rtsp_out.url: expected rtsp://"),
                      (["--mqtt", "bad host:xx"], "mqtt.host: expected HOST[:PORT]")):
        assert key in _one_line_error(cli(*run, *args), 2)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {threads: 0}\n")  # wrong in the file, even though the command line gives it too
    assert "model.threads: must be >= 1" in _one_line_error(cli("--config", bad, "--threads", 2, *run), 2)


def test_the_old_postprocess_flag_still_works(tmp_path, cli, pedestrians_video):
    ev = tmp_path / "e.jsonl"
    r = cli("--source", pedestrians_video, "--headless", "--max-frames", 3, "--events", ev, "--postprocess", "ours")
    assert r.exit_code == 0, r.output
    assert "model.postprocess (--postprocess) is now model.decoder (--decoder)" in r.output
    assert [e["frame"] for e in _jsonl(ev)] == [0, 1, 2]
    help_text = CliRunner().invoke(main, ["run", "--help"]).output
    assert "--decoder [auto|edgedet|op]" in help_text and "--postprocess" not in help_text
