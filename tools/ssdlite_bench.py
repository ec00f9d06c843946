#!/usr/bin/env python3
"""Build untrained SSDlite MobileNetV2 models at several widths and measure them (one run).

For each width: build time, .tflite size, and interpreter invoke time (median of --runs after
--warmup, XNNPACK, --threads threads) on a real photo. Needs the [convert] extra (tensorflow).

    python tools/ssdlite_bench.py --widths 0.5 0.75 1.0 --input 320 --quantize int8 none \
        --calib ../shared/assets/images --out /tmp/ssdlite-bench
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
from edgedet.tools.convert import build_ssdlite  # noqa: E402


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=float, nargs="+", default=[0.5, 0.75, 1.0])
    ap.add_argument("--input", type=int, default=320)
    ap.add_argument("--classes", type=int, default=90)
    ap.add_argument("--quantize", nargs="+", default=["int8"], help="int8, fp16, dynamic and/or none")
    ap.add_argument("--calib", nargs="*", default=[], help="calibration image files or folders")
    ap.add_argument("--num-calib", type=int, default=100)
    ap.add_argument("--image", default=str(ROOT.parent / "shared/assets/images/coral/grace_hopper.bmp"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--out", default="/tmp/ssdlite-bench")
    ap.add_argument("--reuse", action="store_true", help="time models already built in --out")
    args = ap.parse_args()
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
