#!/usr/bin/env python3
"""Motion-gated detection: CPU per minute of video and object events, gated vs always-on.

1. Builds a test video in ``--workdir`` (default /tmp/edgedet-motion): the empty scene of
   ``videos/pedestrians_480x360.avi`` (the per-pixel median of its frames, so nobody is in it) held
   still for ``--still`` seconds with camera-like noise (sigma 2 grey levels), the pedestrian video spliced in, and the
   still scene again: long quiet stretches and a short busy one.
2. Runs ``edgedet run --headless --object-events`` on it twice, always-on and with ``--motion``
   (``--motion-keepalive`` seconds), each in its own process, and measures the CPU seconds the
   process used (user + system) per minute of video.
3. Compares the object events: every object the always-on run found must be found by the gated
   run, with the same label, first seen within one keep-alive interval of it and overlapping it
   in time.

    python tools/bench_motion.py                 # build (once), run both, print the comparison
    python tools/bench_motion.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def assets_dir() -> Path:
    env = os.environ.get("EDGEDET_ASSETS")
    return Path(env) if env else ROOT.parent / "shared" / "assets"


def read_frames(path: Path) -> tuple[list, float]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    frames = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        frames.append(image)
    cap.release()
    return frames, float(fps)


def video_minutes(path: Path) -> float:
    import cv2

    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n / fps / 60.0


def build_video(out: Path, still_s: float, seed: int = 0) -> tuple[float, int]:
    """Still, busy, still; returns (fps, frames)."""
    import cv2

    frames, fps = read_frames(assets_dir() / "videos" / "pedestrians_480x360.avi")
    empty = np.median(np.stack(frames[::8]), axis=0).astype(np.float32)
    h, w = empty.shape[:2]
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    rng = np.random.default_rng(seed)
    # camera-like noise (sigma 2 grey levels), from a pool of noisy copies of the empty scene
    noisy = [np.clip(empty + rng.normal(0.0, 2.0, empty.shape), 0, 255).astype(np.uint8) for _ in range(64)]
    n_still = int(round(still_s * fps))
    count = 0
    try:
        for part in ("still", "busy", "still"):
            if part == "busy":
                for image in frames:
                    writer.write(image)
                    count += 1
                continue
            for i in range(n_still):
                writer.write(noisy[i % len(noisy)])
                count += 1
    finally:
        writer.release()
    return fps, count


def run_edgedet(video: Path, events: Path, stats: Path, extra: list, tree: Path = ROOT) -> float:
    """CPU seconds (user + system) of one ``edgedet run`` over the whole video, of the source tree
    ``tree`` (its ``edgedet`` package comes first on the path when run from there)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [sys.executable, "-m", "edgedet", "run", "--headless", "--source", str(video), "--object-events",
           str(events), "--stats-json", str(stats), *extra]
    subprocess.run(cmd, cwd=tree, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def objects(path: Path) -> list[dict]:
    """The ``end`` record of every object (it carries first and last seen)."""
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["type"] == "end"]


def match(always: list[dict], gated: list[dict], keepalive: float) -> list[dict]:
    """The always-on objects the gated run did not find (same label, first seen within ``keepalive``,
    overlapping in time)."""
    missed = []
    for a in always:
        found = any(g["label"] == a["label"] and abs(g["first_seen"] - a["first_seen"]) <= keepalive
                    and g["first_seen"] <= a["last_seen"] and a["first_seen"] <= g["last_seen"] for g in gated)
        if not found:
            missed.append(a)
    return missed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgedet-motion"))
    ap.add_argument("--still", type=float, default=120.0, help="seconds of still scene before and after")
    ap.add_argument("--keepalive", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--tree", type=Path, default=ROOT, help="run edgedet from this source tree (e.g. an older copy)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    video = args.workdir / f"still{int(args.still)}_pedestrians.avi"
    if args.rebuild or not video.exists():
        t0 = time.monotonic()
        fps, n = build_video(video, args.still)
        print(f"built {video}: {n} frames at {fps:g} fps in {time.monotonic() - t0:.0f} s", flush=True)
    minutes = video_minutes(video)
    extra = ["--threads", str(args.threads)] if args.threads else []
    report: dict = {"video": str(video), "minutes": round(minutes, 3), "keepalive_s": args.keepalive,
                    "tree": str(args.tree)}
    for name, flags in (("always_on", []), ("gated", ["--motion", "--motion-keepalive", str(args.keepalive)])):
        events, stats = args.workdir / f"{name}.jsonl", args.workdir / f"{name}_stats.json"
        t0 = time.monotonic()
        cpu = run_edgedet(video, events, stats, extra + flags, args.tree)
        snap = json.loads(stats.read_text())
        stages = snap["stages_ms"]
        report[name] = {"cpu_s": round(cpu, 1), "cpu_s_per_video_min": round(cpu / minutes, 2),
                        "wall_s": round(time.monotonic() - t0, 1), "objects": len(objects(events)),
                        "inferred_frames": snap["frames"]["processed"], "frames": snap["frames"]["output"],
                        "inferred_share": round(snap["frames"]["processed"] / max(1, snap["frames"]["output"]), 3),
                        "track_ms": stages.get("track"), "motion_ms": stages.get("motion"),
                        "load_avg": round(os.getloadavg()[0], 2)}
        print(name, json.dumps(report[name]), flush=True)
    missed = match(objects(args.workdir / "always_on.jsonl"), objects(args.workdir / "gated.jsonl"), args.keepalive)
    report["cpu_ratio"] = round(report["gated"]["cpu_s"] / report["always_on"]["cpu_s"], 3)
    report["missed_by_gated"] = [{k: m[k] for k in ("id", "label", "first_seen", "last_seen")} for m in missed]
    print(f"gated / always-on CPU: {report['cpu_ratio']:.2f}; objects always-on {report['always_on']['objects']}, "
          f"gated {report['gated']['objects']}; always-on objects the gated run missed: {len(missed)}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
