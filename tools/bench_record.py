#!/usr/bin/env python3
"""Encode cost of a recording: CPU ms per frame of each way of writing the video file.

Writes the same decoded frames of a real video through each writer, interleaved in rounds (so
machine load hits all of them alike), and reports per frame: CPU time of this process (the calling
thread, the recorder's writer thread, in-process encoders, OpenCV's threads) plus the CPU time of
child processes (the ``ffmpeg`` encoder), wall time spent in ``write`` (what the pipeline's output
thread waits), and bytes written.

Writers: ``opencv-mp4v`` (``cv2.VideoWriter`` MPEG-4 Part 2 called directly, as the recorder did
before H.264), and the recorder with ``ffmpeg`` and ``pyav`` libx264 at each ``--preset``.
``--before DIR`` adds ``before-recorder``: the ``RecorderSink`` of another source tree (e.g. an older
release unpacked in DIR), loaded under another package name, so an older and the current writer are
measured in the same rounds; the summary gives each writer's CPU per frame as a ratio to it.

    tools/bench_record.py --video pedestrians_480x360.avi --video highway_cars_720p.mp4 --frames 200 --rounds 3
    tools/bench_record.py --before /path/to/older/tree --preset veryfast --rounds 5
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from edgedet.detections import Detections
from edgedet.frame import Frame, Result
from edgedet.sinks import videofile
from edgedet.sinks.recorder import RecorderSink
from edgedet.sinks.videofile import EncoderChoice

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(os.environ.get("EDGEDET_ASSETS", ROOT.parent / "shared" / "assets"))
FPS = 10.0


def load_frames(video: Path, n: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    frames = []
    while len(frames) < n:
        ok, img = cap.read()
        if not ok:
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            continue
        frames.append(img)
    cap.release()
    return frames


def _cpu() -> tuple[float, float]:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def write_opencv(frames: list[np.ndarray], path: Path) -> float:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (w, h))
    t0 = time.perf_counter()
    for img in frames:
        writer.write(img)
    writer.release()
    return time.perf_counter() - t0


def write_recorder(frames: list[np.ndarray], path: Path, backend: str, preset: str) -> float:
    videofile.X264_OPTIONS["preset"] = preset
    rec = RecorderSink(str(path), fps=FPS)
    rec.open()
    rec.choice = EncoderChoice(backend, videofile.SW_ENCODER)
    blocked = 0.0
    for i, img in enumerate(frames):
        t0 = time.perf_counter()
        rec.write(Result(Frame(img, i, i / FPS, time.time()), Detections.empty(), {}, []))
        blocked += time.perf_counter() - t0
    t0 = time.perf_counter()
    rec.close()
    return blocked + time.perf_counter() - t0


def load_before(tree: Path):
    """``(RecorderSink, frame module, detections module)`` of the ``edgedet`` package in ``tree``."""
    name = "edgedet_before"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, tree / "edgedet" / "__init__.py",
                                                      submodule_search_locations=[str(tree / "edgedet")])
        if spec is None or spec.loader is None:
            raise SystemExit(f"no edgedet package in {tree}")
        package = importlib.util.module_from_spec(spec)
        sys.modules[name] = package
        spec.loader.exec_module(package)
    modules = [importlib.import_module(f"{name}.{sub}") for sub in ("sinks.recorder", "frame", "detections")]
    return modules[0].RecorderSink, modules[1], modules[2]


def write_before(frames: list[np.ndarray], path: Path, tree: Path) -> float:
    sink_type, frame_mod, det_mod = load_before(tree)
    rec = sink_type(str(path), fps=FPS)
    rec.open()
    t0 = time.perf_counter()
    for i, img in enumerate(frames):
        rec.write(frame_mod.Result(frame_mod.Frame(img, i, i / FPS, time.time()), det_mod.Detections.empty()))
    rec.close()
    return time.perf_counter() - t0


def measure(name: str, frames: list[np.ndarray], tmp: Path, before: Path | None = None) -> dict:
    path = tmp / f"{name}.mp4"
    self0, kids0 = _cpu()
    if name == "opencv-mp4v":
        wall = write_opencv(frames, path)
    elif name == "before-recorder":
        assert before is not None
        wall = write_before(frames, path, before)
    else:
        backend, preset = name.split("-", 2)[0], name.split("-", 2)[2]
        wall = write_recorder(frames, path, backend, preset)
    self1, kids1 = _cpu()
    n = len(frames)
    out = {"cpu_ms": (self1 - self0 + kids1 - kids0) * 1000 / n, "self_ms": (self1 - self0) * 1000 / n,
           "child_ms": (kids1 - kids0) * 1000 / n, "write_wall_ms": wall * 1000 / n,
           "kB_per_frame": path.stat().st_size / 1000 / n}
    path.unlink()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", action="append", help="asset video name or path (repeatable)")
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--preset", action="append", help="libx264 presets to compare (default: ultrafast, veryfast)")
    p.add_argument("--before", type=Path, help="a source tree whose RecorderSink is measured beside (older release)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    videos = [Path(v) if Path(v).exists() else ASSETS / "videos" / v
              for v in (args.video or ["pedestrians_480x360.avi", "highway_cars_720p.mp4"])]
    presets = args.preset or ["ultrafast", "veryfast"]
    names = ["opencv-mp4v"] + [f"{b}-libx264-{p}" for p in presets for b in ("ffmpeg", "pyav")]
    if args.before is not None:
        names.insert(0, "before-recorder")
    base = names[0]
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for video in videos:
            frames = load_frames(video, args.frames)
            size = f"{frames[0].shape[1]}x{frames[0].shape[0]}"
            runs: dict = {name: [] for name in names}
            for r in range(args.rounds):
                for name in names[r % len(names):] + names[:r % len(names)]:
                    runs[name].append(measure(name, frames, Path(tmp), args.before))
            results[size] = {name: {k: round(float(np.median([m[k] for m in ms])), 2) for k in ms[0]}
                             for name, ms in runs.items()}
            print(f"{size} ({video.name}, {args.frames} frames x {args.rounds} rounds, medians):")
            print(f"  {'writer':28} {'cpu ms/frame':>12} {'(self':>7} {'+ child)':>8} {'write wall ms':>13} "
                  f"{'kB/frame':>9} {'cpu x ' + base:>22}")
            for name, m in results[size].items():
                m["cpu_ratio"] = round(m["cpu_ms"] / max(results[size][base]["cpu_ms"], 1e-9), 2)
                print(f"  {name:28} {m['cpu_ms']:12.2f} {m['self_ms']:7.2f} {m['child_ms']:8.2f} "
                      f"{m['write_wall_ms']:13.2f} {m['kB_per_frame']:9.2f} {m['cpu_ratio']:22.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
