#!/usr/bin/env python3
"""Regions: recall of small people with and without ``--motion-regions``, and the CPU per frame.

1. References: the FPNLite 320 model (``--reference``, the stronger detector) run on the whole of
   every frame of ``videos/crowd_overhead_720p.avi``; its person boxes at its usual threshold
   (``--reference-threshold``, 0.5) are the people to find (cached in ``--workdir``). Shrunk to
   320 x 320, most walkers of this video are too small for it as well, so a second reference runs
   it also on overlapping 320-pixel squares covering every ``--reference-every``-th frame
   (``--reference-tile``; merged like regions, but every whole box of a square kept): the people it
   sees at its own scale.
2. Runs ``edgedet run --headless --no-tracking --motion --events`` with the default model once per
   mode (``--regions 0 2 4``: regions per frame), each in its own process, the modes interleaved
   ``--repeat`` times, and measures the process CPU (user + system) per frame.
3. Recall of the reference's people by size (box area in frame pixels: ``small`` < 32 x 32,
   ``medium`` < 64 x 64, ``all``), one-to-one matches at IoU >= 0.5 and >= 0.3; ``extra`` counts
   the run's person boxes that match no reference box (at 0.3).

    python tools/bench_regions.py                        # reference (once), the modes, the table
    python tools/bench_regions.py --regions 0 4 --repeat 2 --json out.json
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
sys.path.insert(0, str(ROOT))

from edgedet.postprocess.nms import iou_matrix  # noqa: E402

SIZES = {"small": 32 * 32, "medium": 64 * 64, "all": float("inf")}
IOUS = (0.5, 0.3)


def assets_dir() -> Path:
    env = os.environ.get("EDGEDET_ASSETS")
    return Path(env) if env else ROOT.parent / "shared" / "assets"


def tiles(frame_size: tuple[int, int], side: int, overlap: int) -> np.ndarray:
    """Squares of ``side`` covering the frame, neighbours overlapping by at least ``overlap``: [K, 4]."""
    def starts(length: int) -> np.ndarray:
        if length <= side:
            return np.zeros(1, np.int32)
        n = int(np.ceil((length - overlap) / (side - overlap)))
        return np.round(np.linspace(0, length - side, n)).astype(np.int32)

    fw, fh = frame_size
    xs, ys = np.meshgrid(starts(fw), starts(fh))
    x1, y1 = xs.ravel(), ys.ravel()
    return np.stack([x1, y1, x1 + min(side, fw), y1 + min(side, fh)], axis=1)


def reference_boxes(video: Path, model: Path, threshold: float, cache: Path, tile: int = 0,
                    every: int = 1) -> dict[int, np.ndarray]:
    """The reference model's person boxes ``[N, 4]`` (frame pixels) of every ``every``-th frame: on
    the whole frame, and with ``tile`` also on overlapping squares of ``tile`` pixels covering it
    (each seen at about the model's scale; merged like regions, boxes inside larger ones kept). Cached."""
    from edgedet import regions
    from edgedet.regions import merge_regions

    rules = (regions.MERGE_IOU, regions.EDGE_PX)  # the merge, if tiled (every box of every square counts)
    key = f"{model.name}@{threshold:g}/tile{tile}/every{every}" + (f"/merge{rules}" if tile else "")
    if cache.exists():
        data = np.load(cache, allow_pickle=False)
        if str(data["key"]) == key:
            return {int(k[1:]): data[k] for k in data.files if k.startswith("f")}
    import cv2

    from edgedet.detector import Detector

    det = Detector.from_path(model, score_threshold=threshold, classes=["person"], max_detections=100,
                             decoder="edgedet")
    cap = cv2.VideoCapture(str(video))
    boxes: dict[int, np.ndarray] = {}
    t0, i = time.monotonic(), -1
    while True:
        ok, image = cap.read()
        i += 1
        if not ok:
            break
        if i % every:
            continue
        full = det.detect(image)
        if tile:
            size = (image.shape[1], image.shape[0])
            squares = tiles(size, tile, tile // 3)
            full = merge_regions(full, [det.detect(image[y1:y2, x1:x2]) for x1, y1, x2, y2 in squares],
                                 squares, size, drop_parts=False)
        boxes[i] = full.xyxy
    cap.release()
    print(f"reference {key}: {len(boxes)} frames in {time.monotonic() - t0:.0f} s", flush=True)
    np.savez(cache, key=key, **{f"f{i}": b for i, b in boxes.items()})
    return boxes


def run_mode(video: Path, regions: int, workdir: Path, extra: list) -> dict:
    """One ``edgedet run``: its person boxes per frame, process CPU, frames and regions run."""
    events, stats = workdir / f"regions{regions}.jsonl", workdir / f"regions{regions}_stats.json"
    cmd = [sys.executable, "-m", "edgedet", "run", "--headless", "--source", str(video), "--no-tracking",
           "--motion", "--motion-regions", str(regions), "--events", str(events), "--stats-json", str(stats),
           *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    snap = json.loads(stats.read_text())
    per_frame: dict[int, np.ndarray] = {}
    for line in events.read_text().splitlines():
        rec = json.loads(line)
        boxes = [d["box"] for d in rec["detections"] if d["label"] == "person"]
        per_frame[int(rec["frame"])] = np.array(boxes, np.float32).reshape(-1, 4)
    frames = int(snap["frames"]["output"])
    return {"boxes": per_frame, "cpu_s": cpu, "wall_s": wall, "frames": frames,
            "inferred": int(snap["frames"]["processed"]), "regions_run": int(snap.get("motion", {}).get("regions", 0)),
            "invoke_ms": snap["stages_ms"].get("invoke")}


def greedy_matches(ious: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matches (highest IoU first): matched reference rows, matched detection columns."""
    ref_hit = np.zeros(ious.shape[0], bool)
    det_hit = np.zeros(ious.shape[1], bool)
    if ious.size:
        rows, cols = np.nonzero(ious >= threshold)
        order = np.argsort(-ious[rows, cols], kind="stable")
        for r, c in zip(rows[order], cols[order]):
            if not ref_hit[r] and not det_hit[c]:
                ref_hit[r] = det_hit[c] = True
    return ref_hit, det_hit


def recall(reference: dict[int, np.ndarray], found: dict[int, np.ndarray]) -> dict:
    """Share of the reference's people found, by size and IoU; ``extra``: boxes matching none."""
    out: dict = {}
    for iou in IOUS:
        hit = {name: 0 for name in SIZES}
        total = {name: 0 for name in SIZES}
        extra = 0
        for i, ref in reference.items():
            dets = found.get(i, np.zeros((0, 4), np.float32))
            ref_hit, det_hit = greedy_matches(iou_matrix(ref, dets), iou)
            area = (ref[:, 2] - ref[:, 0]) * (ref[:, 3] - ref[:, 1])
            for name, limit in SIZES.items():
                mine = area < limit
                total[name] += int(mine.sum())
                hit[name] += int((ref_hit & mine).sum())
            extra += int((~det_hit).sum())
        out[f"iou{iou:g}"] = {name: round(hit[name] / max(1, total[name]), 3) for name in SIZES}
        out[f"iou{iou:g}"]["extra"] = extra
    out["people"] = total
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgedet-regions"))
    ap.add_argument("--video", type=Path, default=assets_dir() / "videos" / "crowd_overhead_720p.avi")
    ap.add_argument("--reference", type=Path,
                    default=assets_dir() / "models" / "ssd_mobilenet_v2_fpnlite_320_coco_fp.tflite")
    ap.add_argument("--reference-threshold", type=float, default=0.5)
    ap.add_argument("--reference-tile", type=int, default=320,
                    help="also a tiled reference: the reference model on overlapping squares of this side (0: no)")
    ap.add_argument("--reference-every", type=int, default=2, help="the tiled reference on every n-th frame")
    ap.add_argument("--regions", type=int, nargs="+", default=[0, 2, 4])
    ap.add_argument("--repeat", type=int, default=1, help="interleaved runs of every mode (CPU: the median)")
    ap.add_argument("--model", default=None, help="the model of the runs (default: edgedet's default)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    references = {"full": reference_boxes(args.video, args.reference, args.reference_threshold,
                                          args.workdir / "reference_full.npz")}
    if args.reference_tile:
        references["tiled"] = reference_boxes(args.video, args.reference, args.reference_threshold,
                                              args.workdir / "reference_tiled.npz", args.reference_tile,
                                              args.reference_every)
    extra = ["--model", args.model] if args.model else []
    runs: dict[int, list[dict]] = {n: [] for n in args.regions}
    for _ in range(args.repeat):
        for n in args.regions:
            runs[n].append(run_mode(args.video, n, args.workdir, extra))
            print(f"regions {n}: cpu {runs[n][-1]['cpu_s']:.1f} s, load {os.getloadavg()[0]:.1f}", flush=True)
    report: dict = {"video": str(args.video), "reference": args.reference.name, "modes": {},
                    "load_avg": [round(x, 2) for x in os.getloadavg()]}
    for n, rs in runs.items():
        cpu_ms = [1000.0 * r["cpu_s"] / max(1, r["frames"]) for r in rs]
        report["modes"][n] = {"cpu_ms_per_frame": round(float(np.median(cpu_ms)), 2),
                              "cpu_ms_per_frame_runs": [round(c, 2) for c in cpu_ms],
                              "frames": rs[0]["frames"], "inferred": rs[0]["inferred"],
                              "regions_run": rs[0]["regions_run"], "invoke_ms": rs[0]["invoke_ms"],
                              **{f"vs_{name}": recall(ref, rs[0]["boxes"]) for name, ref in references.items()}}
        print(f"regions {n}:", json.dumps(report["modes"][n]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
