#!/usr/bin/env python3
"""Build untrained SSDlite MobileNetV2 models at several widths and measure them (one run).

For each width: build time, .tflite size, and interpreter invoke time (median of --runs after
--warmup, XNNPACK, --threads threads) on a real photo. Needs the [convert] extra (tensorflow).

    python tools/ssdlite_bench.py --widths 0.5 0.75 1.0 --input 320 --quantize int8 none \
        --calib ../shared/assets/images --out /tmp/ssdlite-bench

With ``--models``, nothing is built: the given ``.tflite`` files (e.g. a float model and its int8
conversion) are timed as the detector runs them (detection op stripped, edgedet decodes), in short
alternating blocks on frames of ``--source``, once per ``--threads`` count; the speed-up is the
ratio of the first model's median invoke to each other's. No TensorFlow needed.

    python tools/ssdlite_bench.py --models float.tflite int8.tflite --threads 2 1 --runs 300 \
        --source ../shared/assets/videos/pedestrians_480x360.avi
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgedet.tflite import load_interpreter  # noqa: E402


def interleaved_invoke_ms(paths: list[Path], image: Path, threads: int, warmup: int, runs: int,
                          rounds: int = 5) -> list[float]:
    """Median invoke ms per model, measured round-robin (``runs / rounds`` invokes per model per
    round) so that a busy machine slows every model alike."""
    from edgedet.detector import Detector

    interps = []
    for path in paths:
        det = Detector.from_path(path, threads=threads, score_threshold=0.5)
        prepared = det.prepare(cv2.imread(str(image)))
        interp = load_interpreter(path, threads)
        inp = interp.get_input_details()[0]
        interp.set_tensor(inp["index"], prepared.tensor.astype(inp["dtype"], copy=False))
        for _ in range(warmup):
            interp.invoke()
        interps.append(interp)
    times: list[list[float]] = [[] for _ in paths]
    per_round = max(1, runs // rounds)
    for _ in range(rounds):
        for interp, t in zip(interps, times):
            for _ in range(per_round):
                t0 = time.perf_counter()
                interp.invoke()
                t.append((time.perf_counter() - t0) * 1000.0)
    return [statistics.median(t) for t in times]


def video_frames(source: str, count: int) -> list:
    """Up to ``count`` frames of a video, or the images of a folder / one image."""
    path = Path(source)
    if path.is_dir() or path.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"):
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp")) \
            if path.is_dir() else [path]
        return [cv2.imread(str(p)) for p in files[:count]]
    cap = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < count:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    if not frames:
        sys.exit(f"no frames in {source}")
    return frames


def detector_invoke_ms(paths: list, frames: list, threads: int, warmup: int, runs: int,
                       block: int = 5) -> list:
    """Invoke ms (as ``Detector.infer`` reports it: the op stripped under the default decoder) of each
    model, in alternating blocks of ``block`` frames so that load changes hit every model alike.
    Returns per model ``{p50, p95, mean, n}``."""
    from edgedet.detector import Detector

    dets = [Detector.from_path(p, threads=threads, score_threshold=0.5) for p in paths]
    for det in dets:
        for i in range(warmup):
            det.infer(det.prepare(frames[i % len(frames)]))
    times: list = [[] for _ in dets]
    done = 0
    while done < runs:
        n = min(block, runs - done)
        for det, t in zip(dets, times):
            for i in range(done, done + n):
                t.append(det.infer(det.prepare(frames[i % len(frames)])).invoke_ms)
        done += n
    return [{"p50": statistics.median(t), "p95": sorted(t)[int(0.95 * (len(t) - 1))],
             "mean": statistics.fmean(t), "n": len(t)} for t in times]


def compare_models(args) -> None:
    import os

    frames = video_frames(args.source, 100)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    rows = []
    for threads in args.threads:
        stats = detector_invoke_ms([Path(p) for p in args.models], frames, threads, args.warmup, args.runs)
        for path, st in zip(args.models, stats):
            rows.append({"model": path, "threads": threads, "size_mb": round(Path(path).stat().st_size / 1e6, 2),
                         **{k: round(v, 3) for k, v in st.items()},
                         "speedup_p50": round(stats[0]["p50"] / st["p50"], 2)})
            print(json.dumps(rows[-1]), flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"| model | threads | size MB | invoke ms p50 | p95 | x vs {Path(args.models[0]).name} |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {Path(r['model']).name} | {r['threads']} | {r['size_mb']} | {r['p50']:.2f} | {r['p95']:.2f} "
              f"| {r['speedup_p50']:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=float, nargs="+", default=[0.5, 0.75, 1.0])
    ap.add_argument("--input", type=int, default=320)
    ap.add_argument("--classes", type=int, default=90)
    ap.add_argument("--quantize", nargs="+", default=["int8"], help="int8, fp16, dynamic and/or none")
    ap.add_argument("--calib", nargs="*", default=[], help="calibration image files or folders")
    ap.add_argument("--num-calib", type=int, default=100)
    ap.add_argument("--image", default=str(ROOT.parent / "shared/assets/images/coral/grace_hopper.bmp"))
    ap.add_argument("--threads", type=int, nargs="+", default=[2],
                    help="interpreter threads (building: the first; --models: each in turn)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--out", default="/tmp/ssdlite-bench")
    ap.add_argument("--reuse", action="store_true", help="time models already built in --out")
    ap.add_argument("--models", nargs="+", default=None,
                    help="time these .tflite files against the first instead of building")
    ap.add_argument("--source", default=str(ROOT.parent / "shared/assets/videos/pedestrians_480x360.avi"),
                    help="--models: video, image folder or image to time on")
    args = ap.parse_args()
    if args.models:
        compare_models(args)
        return
    from edgedet.tools.convert import build_ssdlite

    args.threads = args.threads[0]
    out = Path(args.out)
    rows, paths = [], []
    for width, quantize in [(w, q) for q in args.quantize for w in args.widths]:
        path = out / f"ssdlite_mnv2_{width:g}_{args.input}_{quantize}.tflite"
        if args.reuse and path.is_file():
            rep = {"seconds": None, "size_bytes": path.stat().st_size, "parameters": 0, "num_anchors": None}
        else:
            rep = build_ssdlite(path, width=width, input_size=args.input, num_classes=args.classes,
                                quantize=None if quantize == "none" else quantize,
                                calibration_images=[Path(p) for p in args.calib] or None,
                                num_calib=args.num_calib)
        paths.append(path)
        rows.append({"width": width, "input": args.input, "quantize": quantize, "build_s": rep["seconds"],
                     "size_mb": round(rep["size_bytes"] / 1e6, 2), "parameters": rep["parameters"],
                     "anchors": rep["num_anchors"], "threads": args.threads,
                     "calibration": rep.get("calibration", {}).get("kind")})
        print(json.dumps(rows[-1]), flush=True)
    for row, ms in zip(rows, interleaved_invoke_ms(paths, Path(args.image), args.threads, args.warmup,
                                                   args.runs)):
        row["invoke_ms_p50"] = round(ms, 2)
    print(f"| width | quantize | build s | size MB | params | invoke ms p50 ({args.threads} threads) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['width']:g} | {r['quantize']} | {r['build_s']} | {r['size_mb']} | {r['parameters']:,} "
              f"| {r['invoke_ms_p50']} |")


if __name__ == "__main__":
    main()
