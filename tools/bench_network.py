#!/usr/bin/env python3
"""``edgedet run`` against a camera-like GStreamer RTSP server (shared media): starts, outages, stops.

    python tools/bench_network.py --starts 10     # runs of 10 frames that start and end cleanly, out of 10
    python tools/bench_network.py --outages 20    # camera killed and restarted 20 times during one run:
                                                  # seconds from its return to people detected again
    python tools/bench_network.py --stop 20       # SIGTERM during an outage (camera killed or frozen):
                                                  # seconds to exit, p50/p95/max; events file complete
    python tools/bench_network.py --code /path/to/other/checkout ...   # run that checkout's edgedet

Everything is real: ``tests/network/gst_rtsp_server.py`` run by the system Python (see
``tools/setup-dev``) serving the pedestrian video of ``../shared/assets`` (or ``$EDGEDET_ASSETS``)
on 127.0.0.1, ``edgedet run`` subprocesses with default settings, real signals. Prints one JSON
object on stdout, progress on stderr. The machine may be shared: say what else ran.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "network"))

from assets import assets_dir  # noqa: E402
from nethelpers import GstCamera, gst_rtsp_available  # noqa: E402

MODEL = "models/ssd_mobilenet_v1_coco_quant_postprocess.tflite"
LABELS = "labels/coco_labels.txt"
VIDEO = "videos/pedestrians_480x360.avi"
OUTAGES_S = (1, 3, 6, 10, 20)  # cycled; the last cycle of a long series is 60 s
CODE_DIR = ROOT  # `python -m edgedet` runs the package of the working directory


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def edgedet_cmd(url: str, *extra: str) -> list[str]:
    a = assets_dir()
    return [sys.executable, "-m", "edgedet", "run", "--model", str(a / MODEL), "--labels", str(a / LABELS),
            "--source", url, "--headless", *extra]


def person_lines(path: Path, since: float) -> int:
    """Event lines of frames captured after ``since`` (wall clock) with a person in them."""
    if not path.exists():
        return 0
    count = 0
    for line in path.read_text().splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev["epoch"] > since and any(d["label"] == "person" for d in ev["detections"]):
            count += 1
    return count


def wait_until(pred, timeout: float, step: float = 0.05) -> float:
    """Seconds until ``pred()`` was true, or inf."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(step)
    return float("inf")


def bench_starts(cam: GstCamera, tmp: Path, tries: int) -> dict:
    ok = 0
    errors = []
    for i in range(tries):
        proc = subprocess.run(edgedet_cmd(cam.url, "--max-frames", "10"), capture_output=True, text=True,
                              timeout=120, cwd=CODE_DIR)
        good = proc.returncode == 0 and "Traceback" not in proc.stderr
        ok += good
        if not good:
            errors.append(proc.stderr.strip().splitlines()[-1:])
        say(f"start {i + 1}/{tries}: {'ok' if good else 'FAILED ' + proc.stderr.strip()[-300:]}")
    return {"starts_ok": ok, "starts": tries, "errors": errors}


def bench_outages(cam: GstCamera, tmp: Path, cycles: int) -> dict:
    events = tmp / "outages.jsonl"
    log = open(tmp / "outages.log", "w")
    proc = subprocess.Popen(edgedet_cmd(cam.url, "--events", str(events)), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=CODE_DIR)
    durations = list(itertools.islice(itertools.cycle(OUTAGES_S), cycles))
    if cycles >= 10:
        durations[-1] = 60
    delays = []
    try:
        if wait_until(lambda: person_lines(events, 0) > 0, 60) == float("inf"):
            raise SystemExit("no person detected before the first outage")
        for i, outage in enumerate(durations):
            cam.kill()
            time.sleep(outage)
            cam.start()
            back = time.time()
            took = wait_until(lambda t=back: person_lines(events, t) > 0, 60)
            delays.append(took)
            say(f"outage {i + 1}/{cycles} ({outage} s): detecting again {took:.2f} s after the camera's return")
            time.sleep(2.0)
        alive = proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    d = np.array(delays)
    return {"outages": cycles, "outage_s": durations, "recovered_within_5s": int((d < 5.0).sum()),
            "detect_again_s": [round(x, 2) for x in delays], "p50_s": round(float(np.median(d)), 2),
            "max_s": round(float(d.max()), 2), "run_alive_throughout": alive, "exit_code": proc.returncode}


def stop_once(cam: GstCamera, tmp: Path, i: int, rng: np.random.Generator) -> dict:
    events = tmp / f"stop{i}.jsonl"
    log_path = tmp / f"stop{i}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(edgedet_cmd(cam.url, "--events", str(events)), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=CODE_DIR)
    how = "killed" if i % 2 == 0 else "frozen"
    wait = float(rng.uniform(0.5, 8.0))
    try:
        wait_until(lambda: person_lines(events, 0) >= 3, 60)
        cam.kill() if how == "killed" else cam.freeze()
        time.sleep(wait)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        took = time.monotonic() - t0
    finally:
        if cam.proc is None:
            cam.start()
        else:
            cam.thaw()
    text = events.read_text() if events.exists() else ""
    complete = text == "" or text.endswith("\n")
    out = log_path.read_text(errors="replace")
    state = next((ln for ln in reversed(out.splitlines()) if "SIGTERM" not in ln and "stats" not in ln), "")
    return {"camera": how, "after_s": round(wait, 1), "stop_s": round(took, 3), "exit_code": proc.returncode,
            "events_complete": complete, "traceback": "Traceback" in out, "last_log": state[-160:]}


def bench_stop(cam: GstCamera, tmp: Path, tries: int) -> dict:
    rng = np.random.default_rng(12)
    runs = []
    for i in range(tries):
        r = stop_once(cam, tmp, i, rng)
        runs.append(r)
        say(f"stop {i + 1}/{tries}: camera {r['camera']} {r['after_s']} s before SIGTERM -> exit "
            f"{r['exit_code']} after {r['stop_s']:.2f} s")
    t = np.array([r["stop_s"] for r in runs])
    return {"tries": tries, "stop_p50_s": round(float(np.percentile(t, 50)), 3),
            "stop_p95_s": round(float(np.percentile(t, 95)), 3), "stop_max_s": round(float(t.max()), 3),
            "within_2s": int((t < 2.0).sum()), "clean_exits": sum(r["exit_code"] == 0 for r in runs),
            "events_complete": sum(r["events_complete"] for r in runs), "runs": runs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--starts", type=int, default=0)
    ap.add_argument("--outages", type=int, default=0)
    ap.add_argument("--stop", type=int, default=0)
    ap.add_argument("--code", type=Path, default=ROOT, help="checkout whose edgedet runs (default: this one)")
    args = ap.parse_args()
    global CODE_DIR
    CODE_DIR = args.code.resolve()
    if not gst_rtsp_available():
        raise SystemExit("the system python3 cannot run GstRtspServer: run tools/setup-dev as root")
    video = assets_dir() / VIDEO
    if not video.exists():
        raise SystemExit(f"{video} not found (set EDGEDET_ASSETS)")
    result = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cam = GstCamera(video, tmp / "gst_rtsp_server.log").start()
        try:
            for name, fn in (("starts", bench_starts), ("outages", bench_outages), ("stop", bench_stop)):
                count = getattr(args, name)
                if count:
                    result[name] = fn(cam, tmp, count)
        finally:
            cam.stop()
    result["load_average"] = os.getloadavg()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
