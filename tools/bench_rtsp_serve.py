#!/usr/bin/env python3
"""Latency of the annotated RTSP stream: ``--rtsp-serve`` (edgedet's own server) vs ``--rtsp-out``
through a relay RTSP server, measured in one interleaved run on 127.0.0.1.

    python tools/bench_rtsp_serve.py                       # sink and run measures, 2 rounds each
    python tools/bench_rtsp_serve.py --measure sink --rounds 3 --client-threads 1
    python tools/bench_rtsp_serve.py --rtsp-fps 30         # both outputs at --rtsp-fps 30 (default 15)
    python tools/bench_rtsp_serve.py --measure cpu         # CPU of edgedet (+ its RTSP server) per second

Two measures, each for both outputs, alternating (serve, out, serve, out, ...):

- ``sink``: a frame code drawn into real annotated frames (the pedestrian video through SSD
  MobileNet v1) is handed to the sink at 15 fps; an OpenCV client (FFmpeg's low-delay flags)
  notes when it decodes each code. Latency = decoded - handed to ``write`` (the method of the
  ``--rtsp-out`` figure in docs/headless.md).
- ``run`` (glass to client): ``edgedet run --realtime --drop --events`` on a copy of the pedestrian
  video with the frame number drawn in a strip below the picture; latency = the client's wall
  clock when it decodes frame N - the wall time edgedet captured frame N (its events file). It
  includes inference, the overlay and the queues of the run.

``cpu`` (``--rtsp-serve`` only): CPU seconds per second of video used by ``edgedet run --realtime
--loop`` plus its RTSP server child, over a 20 s window after a warm-up, without ``--rtsp-serve``,
with it and no viewer, and with one ``ffmpeg`` viewer (whose own CPU is not counted).

``--rtsp-serve`` is read over TCP; the relay (npm ``rtsp-streaming-server``, see
``tools/setup-network-tests``) carries RTP over UDP only, so ``--rtsp-out`` is published and read
over UDP. Prints one JSON object (p50/p95 in ms per output and measure, with the load average)
on stdout, progress on stderr. The machine may be shared: say what else ran.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "network"))

from assets import assets_dir  # noqa: E402
from nethelpers import (  # noqa: E402
    HOST,
    SYSTEM_PYTHON,
    RtspServer,
    free_port,
    gst_rtsp_available,
    make_results,
    node_modules,
    wait_published,
)
from test_rtsp_out import BITS, Feeder, read_code, stamp  # noqa: E402

from edgedet.config import HttpConfig, OutputConfig, RtspOutConfig  # noqa: E402
from edgedet.sinks.base import SinkContext  # noqa: E402
from edgedet.sinks.rtsp_out import RtspOutSink  # noqa: E402
from edgedet.sinks.rtsp_serve import RtspServeSink  # noqa: E402

MODEL = "models/ssd_mobilenet_v1_coco_quant_postprocess.tflite"
LABELS = "labels/coco_labels.txt"
VIDEO = "videos/pedestrians_480x360.avi"
FPS = 15  # the rate frames are handed to the sink in the sink measure
STRIP = 32  # rows added below the picture for the frame number (the overlay draws nothing there)
LOW_DELAY = "fflags;nobuffer|flags;low_delay|analyzeduration;500000"


def edgedet_env() -> dict:
    """The environment for ``edgedet run``: without the readers' FFmpeg options, which OpenCV would
    apply to edgedet's own file source too (its low-delay flags lose the video's first frame)."""
    return {k: v for k, v in os.environ.items() if k != "OPENCV_FFMPEG_CAPTURE_OPTIONS"}


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class Reader(threading.Thread):
    """An OpenCV client noting when it first decodes each frame code (``clock``: monotonic or wall).
    ``bottom``: the code is in the strip below the picture; codes that jump are misreads, dropped."""

    def __init__(self, url: str, transport: str, clock=time.monotonic, bottom: bool = False,
                 threads: int = 0) -> None:
        super().__init__(daemon=True)
        self.url, self.transport, self.clock, self.bottom, self.threads = url, transport, clock, bottom, threads
        self.received: dict[int, float] = {}
        self.frames = 0
        self.stop = threading.Event()

    def run(self) -> None:
        os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = f"rtsp_transport;{self.transport}|{LOW_DELAY}"
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 10000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000]
        if self.threads:
            params += [cv2.CAP_PROP_N_THREADS, self.threads]
        last = 0
        while not self.stop.is_set():
            cap = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, params)
            while not self.stop.is_set() and cap.isOpened():
                ok, img = cap.read()
                if not ok:
                    break
                now = self.clock()
                self.frames += 1
                code = read_code(img[-STRIP:] if self.bottom else img)
                if self.bottom and not last < code <= last + 60 and last:
                    continue
                last = max(last, code)
                self.received.setdefault(code, now)
            cap.release()
            self.stop.wait(0.3)


def pct(values: list[float]) -> dict:
    a = np.asarray(values, dtype=float)
    if not len(a):
        return {"n": 0}
    p50, p95 = np.percentile(a, [50, 95])
    return {"n": int(len(a)), "p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1)}


# ------------------------------------------------------------------ sink measure

def sink_round(kind: str, results: list, frames: int, relay, threads: int, fps: float) -> list[float]:
    if kind == "serve":
        port = free_port()
        sink = RtspServeSink(RtspOutConfig(serve=f"{port}/det", fps=fps), HttpConfig(), OutputConfig(),
                             SinkContext(source_fps=FPS))
        url, transport = f"rtsp://{HOST}:{port}/det", "tcp"
    else:
        cfg = RtspOutConfig(url=relay.publish_url("out"), transport="udp", fps=fps, bitrate="1500k")
        sink = RtspOutSink(cfg, OutputConfig(encoder="software"), SinkContext(source_fps=FPS))
        url, transport = relay.read_url("out"), "udp"
    sink.open()
    feeder = Feeder(sink, results, fps=FPS)
    reader = Reader(url, transport, threads=threads)
    try:
        feeder.start()
        if kind == "out":
            wait_published(url)
        reader.start()
        deadline = time.monotonic() + 60
        while reader.frames < frames + 15 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        reader.stop.set()
        feeder.stop.set()
        feeder.join(5)
        sink.close()
        reader.join(10)
    common = sorted(set(feeder.sent) & set(reader.received))[5:]  # past the first key frame
    return [(reader.received[c] - feeder.sent[c]) * 1000 for c in common]


# ------------------------------------------------------------------ glass-to-client measure

def stamped_video(src: Path, out: Path, count: int) -> Path:
    """The first ``count`` frames of ``src`` with frame number n (1-based) drawn below the picture."""
    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    writer = None
    n = 0
    while n < count:
        ok, img = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            continue
        n += 1
        strip = stamp(np.zeros((STRIP, img.shape[1], 3), np.uint8), n)
        frame = np.vstack([img, strip])
        if writer is None:
            writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), fps, frame.shape[1::-1])
        writer.write(frame)
    cap.release()
    writer.release()
    return out


def capture_times(events: Path) -> dict[int, float]:
    """Frame number (1-based, as stamped) -> the wall time edgedet captured it (its events file)."""
    out = {}
    for line in events.read_text().splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        out[int(ev["frame"]) + 1] = float(ev["epoch"])  # the source counts from 0
    return out


def run_round(kind: str, video: Path, tmp: Path, relay, threads: int, fps: float) -> list[float]:
    a = assets_dir()
    events = tmp / f"events-{kind}-{time.monotonic_ns()}.jsonl"
    if kind == "serve":
        port = free_port()
        url, transport = f"rtsp://{HOST}:{port}/det", "tcp"
        extra = ["--rtsp-serve", f"{port}/det", "--rtsp-fps", str(fps)]
    else:
        url, transport = relay.read_url("run"), "udp"
        extra = ["--rtsp-out", relay.publish_url("run"), "--rtsp-out-transport", "udp", "--rtsp-fps", str(fps)]
    cmd = [sys.executable, "-m", "edgedet", "run", "--model", str(a / MODEL), "--labels", str(a / LABELS),
           "--source", str(video), "--realtime", "--drop", "--headless", "--events", str(events), *extra]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(tmp / f"run-{kind}.log", "a"), cwd=ROOT, env=edgedet_env())
    reader = Reader(url, transport, clock=time.time, bottom=True, threads=threads)
    try:
        time.sleep(2.0)
        reader.start()
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        reader.stop.set()
        reader.join(10)
    captured = capture_times(events)
    codes = sorted(set(captured) & set(reader.received))[10:]
    return [(reader.received[c] - captured[c]) * 1000 for c in codes]


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and of its live children running the RTSP server."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in [Path(f"/proc/{pid}")] + [p for p in Path("/proc").iterdir() if p.name.isdigit()]:
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if entry.name == str(pid) or (int(fields[1]) == pid and b"rtsp_server_gst.py" in cmd):
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def cpu_round(case: str, tmp: Path, window: float = 20.0) -> float:
    a = assets_dir()
    port = free_port()
    extra = [] if case == "plain" else ["--rtsp-serve", f"{port}/det"]
    cmd = [sys.executable, "-m", "edgedet", "run", "--model", str(a / MODEL), "--labels", str(a / LABELS),
           "--source", str(a / VIDEO), "--realtime", "--loop", "--headless", *extra]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(tmp / f"cpu-{case}.log", "a"), cwd=ROOT, env=edgedet_env())
    viewer = None
    try:
        if case == "viewer":
            time.sleep(4.0)
            viewer = subprocess.Popen(["ffmpeg", "-v", "error", "-rtsp_transport", "tcp", "-i",
                                       f"rtsp://{HOST}:{port}/det", "-f", "null", "-"],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=open(tmp / "viewer.log", "a"))
        time.sleep(8.0)
        c0 = cpu_seconds(proc.pid)
        time.sleep(window)
        used = cpu_seconds(proc.pid) - c0
    finally:
        for p in (viewer, proc):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(timeout=30)
    return used / window


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measure", choices=("sink", "run", "both", "cpu"), default="both")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--frames", type=int, default=90, help="frames read per sink round")
    ap.add_argument("--seconds", type=float, default=30.0, help="video length per run round")
    ap.add_argument("--client-threads", type=int, default=0, help="the client's decoder threads (0: FFmpeg's)")
    ap.add_argument("--rtsp-fps", type=float, default=FPS, help="--rtsp-fps of both outputs")
    args = ap.parse_args(argv)
    if not gst_rtsp_available():
        raise SystemExit("the system Python has no GstRtspServer (see tools/setup-dev)")
    os.environ.setdefault("EDGEDET_GST_PYTHON", SYSTEM_PYTHON)
    mods = node_modules()
    kinds = ("serve", "out") if mods is not None and shutil.which("ffmpeg") else ("serve",)
    if "out" not in kinds:
        say("no relay RTSP server (tools/setup-network-tests): measuring --rtsp-serve only")
    a = assets_dir()
    found = {k: {"sink": [], "run": []} for k in kinds}
    with tempfile.TemporaryDirectory(prefix="bench-rtsp-serve-") as tmpdir:
        tmp = Path(tmpdir)
        relay = RtspServer(mods, tmp / "relay.log").start() if "out" in kinds and args.measure != "cpu" else None
        try:
            results = make_results(a / VIDEO, a / MODEL, a / LABELS) if args.measure in ("sink", "both") else []
            video = stamped_video(a / VIDEO, tmp / "stamped.avi", int(args.seconds * 10)) \
                if args.measure in ("run", "both") else None
            if args.measure == "cpu":
                for r in range(args.rounds):
                    for case in ("plain", "serve", "viewer"):
                        found.setdefault("cpu", {}).setdefault(case, []).append(cpu_round(case, tmp))
                        say(f"round {r + 1} cpu {case}: {found['cpu'][case][-1]:.3f} s/s  "
                            f"load {os.getloadavg()[0]:.1f}")
            for r in range(args.rounds if args.measure != "cpu" else 0):
                for kind in kinds:
                    if results:
                        lat = sink_round(kind, results, args.frames, relay, args.client_threads, args.rtsp_fps)
                        found[kind]["sink"] += lat
                        say(f"round {r + 1} {kind} sink: {pct(lat)}  load {os.getloadavg()[0]:.1f}")
                    if video is not None:
                        lat = run_round(kind, video, tmp, relay, args.client_threads, args.rtsp_fps)
                        found[kind]["run"] += lat
                        say(f"round {r + 1} {kind} glass-to-client: {pct(lat)}  load {os.getloadavg()[0]:.1f}")
        finally:
            if relay is not None:
                relay.stop()
    cpu = found.pop("cpu", {})
    report = {f"{kind}_{m}": pct(v) for kind, ms in found.items() for m, v in ms.items() if v}
    report.update({f"cpu_s_per_s_{case}": [round(x, 3) for x in v] for case, v in cpu.items()})
    report.update(code_bits=BITS, feed_fps=FPS, rtsp_fps=args.rtsp_fps, client_threads=args.client_threads,
                  rounds=args.rounds, loadavg=[round(x, 2) for x in os.getloadavg()], cpus=os.cpu_count())
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
