#!/usr/bin/env python3
"""Tracking accuracy and cost: edgedet's detector + tracker on PETS09-S2L1, scored with motmetrics.

1. The detector (default: the SSD MobileNet v1 quant asset) runs once over
   ``videos/pedestrians_480x360.avi`` at ``--cache-score`` with up to ``--max-detections`` boxes;
   its detections are cached in ``--cache`` (an .npz; ``--refresh`` runs the detector again).
2. The person detections go through our ``ByteTracker`` with the settings ``edgedet run`` uses by
   default (``tracking`` section of the configuration; timestamps frame / fps, the video's frames
   for appearance) and ``ObjectEvents``, fed four ways:

   * ``ours``: every detection at or above the tracker's ``low_score`` (the detector run at that
     threshold with room for more boxes, as a tracking pipeline runs it);
   * ``ours_boxes_only``: the same without the frames (no appearance);
   * ``ours_hungarian``: the same with scipy's optimal assignment instead of greedy matching;
   * ``ours_default_output``: what the detector gives with its defaults (score >= 0.5, best 10);

   with ``--reference``, the default output also goes to the ``trackers`` package's ByteTrack
   (frame_rate = the video's, activation and high thresholds 0.5, the rest default).
3. Each run is scored against ``tracking/PETS09-S2L1/gt.txt`` (MOTChallenge protocol: IoU >= 0.5,
   hypotheses on the ``conf = 0`` ignore boxes removed first): MOTA, IDF1, ID switches, recall,
   precision, track ids vs ground-truth identities, object events (``new``).
   Beside them, the messages the per-frame MQTT mode (``--mqtt-on-change``, the default) publishes
   for the same video: one each time the label counts of the default output change, without and
   with its default rate limit (2 per second, on the video's clock).
4. ``--cost``: time per ``update`` at 30 moving objects (median and p95 over ``--frames`` frames),
   with a 1280x720 frame (appearance read from it) and without.

    python tools/bench_tracking.py                      # ours
    python tools/bench_tracking.py --reference --cost   # and the library tracker, and the cost
    python tools/bench_tracking.py --json out.json

Needs ``motmetrics`` (with pandas and scipy); ``--reference`` needs ``trackers`` and ``supervision``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgedet.detections import Detections  # noqa: E402
from edgedet.postprocess.nms import iou_matrix  # noqa: E402
from edgedet.tracking import ByteTracker, Line, ObjectEvents, TrackerSettings, Zone, ZoneCounter  # noqa: E402
from edgedet.tracking.matching import greedy_match, hungarian_match  # noqa: E402

PERSON = 0


def assets_dir() -> Path:
    env = os.environ.get("EDGEDET_ASSETS")
    return Path(env) if env else ROOT.parent / "shared" / "assets"


# -- detections ---------------------------------------------------------------------------------
@dataclass
class CachedRun:
    frames: List[Detections]
    fps: float
    size: tuple[int, int]


def detect_video(model: Path, video: Path, score: float, max_detections: int) -> CachedRun:
    import cv2

    from edgedet.detector import Detector

    detector = Detector.from_path(model, score_threshold=score, max_detections=max_detections)
    cap = cv2.VideoCapture(str(video))
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    frames: List[Detections] = []
    size = (0, 0)
    try:
        while True:
            ok, image = cap.read()
            if not ok:
                break
            size = (image.shape[1], image.shape[0])
            frames.append(detector.detect(image))
    finally:
        cap.release()
    return CachedRun(frames, float(fps), size)


def save_cache(path: Path, run: CachedRun) -> None:
    idx = np.concatenate([np.full(len(d), i, np.int32) for i, d in enumerate(run.frames)])
    np.savez(path, frame=idx, xyxy=np.concatenate([d.xyxy for d in run.frames]),
             scores=np.concatenate([d.scores for d in run.frames]),
             class_ids=np.concatenate([d.class_ids for d in run.frames]),
             n_frames=len(run.frames), fps=run.fps, size=np.array(run.size))


def load_cache(path: Path) -> CachedRun:
    z = np.load(path)
    bounds = np.searchsorted(z["frame"], np.arange(int(z["n_frames"]) + 1))
    frames = [Detections(z["xyxy"][a:b], z["scores"][a:b], z["class_ids"][a:b])
              for a, b in zip(bounds[:-1], bounds[1:])]
    return CachedRun(frames, float(z["fps"]), tuple(int(v) for v in z["size"]))


# -- ground truth and scoring -------------------------------------------------------------------
@dataclass
class FrameTruth:
    ids: np.ndarray
    xyxy: np.ndarray
    ignore: np.ndarray


def load_truth(path: Path, n_frames: int) -> List[FrameTruth]:
    """MOTChallenge rows (frame from 1) as per-video-frame truth (frame - 1)."""
    rows = np.loadtxt(path, delimiter=",", ndmin=2)
    out = []
    for f in range(n_frames):
        r = rows[rows[:, 0] == f + 1]
        xyxy = np.concatenate([r[:, 2:4], r[:, 2:4] + r[:, 4:6]], axis=1)
        out.append(FrameTruth(r[:, 1].astype(np.int64), xyxy, r[:, 6] == 0))
    return out


def drop_on_ignored(truth: FrameTruth, hyp_xyxy: np.ndarray) -> np.ndarray:
    """Mask of hypotheses to keep: those matched (IoU >= 0.5, optimal) to an ignore box go."""
    from scipy.optimize import linear_sum_assignment

    keep = np.ones(len(hyp_xyxy), bool)
    if not truth.ignore.any() or not len(hyp_xyxy):
        return keep
    iou = iou_matrix(truth.xyxy.astype(np.float64), hyp_xyxy.astype(np.float64))
    rows, cols = linear_sum_assignment(np.where(iou >= 0.5, iou, 0.0), maximize=True)
    ok = iou[rows, cols] >= 0.5
    keep[cols[ok & truth.ignore[rows]]] = False
    return keep


def score_tracks(truth: List[FrameTruth], hyps: List[Detections]) -> dict:
    import motmetrics as mm

    acc = mm.MOTAccumulator(auto_id=True)
    all_ids = set()
    for gt, hyp in zip(truth, hyps):
        hyp = hyp[hyp.track_ids >= 0]
        hyp = hyp[drop_on_ignored(gt, hyp.xyxy)]
        care = ~gt.ignore
        iou = iou_matrix(gt.xyxy[care].astype(np.float64), hyp.xyxy.astype(np.float64))
        dist = np.where(iou >= 0.5, 1.0 - iou, np.nan)
        acc.update(gt.ids[care].tolist(), hyp.track_ids.tolist(), dist)
        all_ids.update(hyp.track_ids.tolist())
    names = ["mota", "idf1", "idp", "idr", "num_switches", "recall", "precision", "num_unique_objects",
             "mostly_tracked", "num_fragmentations"]
    summary = mm.metrics.create().compute(acc, metrics=names, name="run")
    out = {k: float(summary[k].iloc[0]) for k in names}
    out["track_ids"] = len(all_ids)
    return out


# -- trackers -----------------------------------------------------------------------------------
def default_output(dets: Detections, score: float = 0.5, max_detections: int = 10) -> Detections:
    """What the detector gives with its default settings: score >= 0.5, the best 10 of any class."""
    d = dets[dets.scores >= score]
    return d[np.argsort(-d.scores, kind="stable")[:max_detections]]


def video_frames(video: Optional[Path]) -> Iterable[Optional[np.ndarray]]:
    """The video's frames in order (BGR), or None forever without a video."""
    if video is None:
        while True:
            yield None
    import cv2

    cap = cv2.VideoCapture(str(video))
    try:
        while True:
            ok, image = cap.read()
            if not ok:
                return
            yield image
    finally:
        cap.release()


def run_ours(frames: List[Detections], fps: float, settings: TrackerSettings, match: Callable = greedy_match,
             video: Optional[Path] = None) -> tuple[List[Detections], dict]:
    """Our tracker and object events over the person detections (and ``video``'s frames, for their
    appearance); (tracked frames, event counts)."""
    tracker = ByteTracker(settings, match=match)
    events = ObjectEvents(["person"])
    out, kinds = [], {"new": 0, "update": 0, "end": 0}
    for i, (dets, image) in enumerate(zip(frames, video_frames(video))):
        t = i / fps
        tracked = tracker.update(dets[dets.class_ids == PERSON], t, frame=image)
        out.append(tracked)
        evs = events.update(tracked, t, ended=tracker.ended_ids, first_seen=tracker.first_seen(tracked.track_ids))
        for e in evs + (events.finish(t) if i == len(frames) - 1 else []):
            kinds[e.kind] += 1
    return out, kinds


def change_messages(frames: List[Detections], fps: float, max_rate: float = 0.0) -> int:
    """Messages of the on-change MQTT mode over ``frames`` (label counts of each frame; a change held
    back by ``max_rate`` goes out at a later frame if still current)."""
    last_key: Optional[tuple] = None
    last_sent: Optional[float] = None
    sent = 0
    for i, dets in enumerate(frames):
        labels, counts = np.unique(dets.class_ids, return_counts=True)
        key = tuple(zip(labels.tolist(), counts.tolist()))
        if key == last_key:
            continue
        now = i / fps
        if max_rate > 0 and last_sent is not None and now - last_sent < 1.0 / max_rate:
            continue
        last_key, last_sent, sent = key, now, sent + 1
    return sent


def default_settings() -> TrackerSettings:
    """The tracker settings of ``edgedet run`` with its default configuration."""
    from edgedet.config import config_from_dict
    from edgedet.pipeline import build_tracking

    stage = build_tracking(config_from_dict({}), ["person"])
    assert stage is not None
    return stage.tracker.settings


def run_reference(frames: List[Detections], fps: float, score: float = 0.5) -> List[Detections]:
    """The trackers package's ByteTrack: frame_rate = fps, activation and high thresholds ``score``."""
    import supervision as sv
    from trackers import ByteTrackTracker

    tracker = ByteTrackTracker(frame_rate=fps, track_activation_threshold=score, high_conf_det_threshold=score)
    out = []
    for dets in frames:
        d = dets[dets.class_ids == PERSON]
        res = tracker.update(sv.Detections(xyxy=d.xyxy.astype(np.float32), confidence=d.scores, class_id=d.class_ids))
        if len(res):
            out.append(Detections(res.xyxy, res.confidence, res.class_id, np.asarray(res.tracker_id, np.int32)))
        else:
            out.append(Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0), np.zeros(0)))
    return out


# -- cost ---------------------------------------------------------------------------------------
def synthetic_frames(n_objects: int, n_frames: int, fps: float, seed: int = 0) -> Iterable[Detections]:
    """``n_objects`` people-sized boxes walking across a 1280x720 frame, with jitter and misses."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform([0, 100], [1200, 600], (n_objects, 2))
    vel = rng.uniform(-60, 60, (n_objects, 2))
    size = rng.uniform([20, 50], [50, 120], (n_objects, 2))
    for _ in range(n_frames):
        pos = (pos + vel / fps) % [1280, 720]
        jitter = rng.normal(0, 1.5, (n_objects, 4))
        xyxy = np.concatenate([pos, pos + size], axis=1) + jitter
        scores = rng.uniform(0.4, 0.95, n_objects).astype(np.float32)
        keep = rng.random(n_objects) > 0.1
        yield Detections(xyxy[keep], scores[keep], np.zeros(int(keep.sum()), np.int32))


def _timed(step: Callable[[Detections, float], None], frames: List[Detections], fps: float) -> dict:
    """Median and p95 per frame, wall clock and this thread's CPU time (robust to a busy machine)."""
    wall, cpu = [], []
    for i, dets in enumerate(frames):
        w0, c0 = time.perf_counter(), time.thread_time()
        step(dets, i / fps)
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
    w, c = np.array(wall[50:]) * 1000.0, np.array(cpu[50:]) * 1000.0
    return {"median_ms": float(np.median(w)), "p95_ms": float(np.percentile(w, 95)),
            "cpu_median_ms": float(np.median(c)), "cpu_p95_ms": float(np.percentile(c, 95))}


def tracker_cost_ms(n_objects: int = 30, n_frames: int = 1000, fps: float = 30.0, match: Callable = greedy_match,
                    with_events: bool = False, with_image: bool = True) -> dict:
    """Our tracker alone, or with object events and a counter of 2 zones and 2 lines (``with_events``);
    with a 1280x720 picture to read the objects' colours from (``with_image``), or boxes only."""
    frames = list(synthetic_frames(n_objects, n_frames, fps))
    image = np.random.default_rng(1).integers(0, 256, (720, 1280, 3), np.uint8) if with_image else None
    tracker = ByteTracker(TrackerSettings(), match=match)
    events = ObjectEvents(["person"])
    counter = ZoneCounter([Zone("left", ((0, 0), (0.5, 0), (0.5, 1), (0, 1)), normalized=True),
                           Zone("bottom", ((0, 0.6), (1, 0.6), (1, 1), (0, 1)), normalized=True)],
                          [Line("middle", (0.5, 0), (0.5, 1), normalized=True),
                           Line("across", (0, 0.5), (1, 0.5), normalized=True)], frame_size=(1280, 720))

    def step(dets: Detections, t: float) -> None:
        tracked = tracker.update(dets, t, frame=image)
        if with_events:
            where = counter.update(tracker.boxes(), ended=tracker.ended_ids)
            events.update(tracked, t, ended=tracker.ended_ids, first_seen=tracker.first_seen(tracked.track_ids),
                          zones=where)

    return {**_timed(step, frames, fps), "tracks": len(tracker)}


def reference_cost_ms(n_objects: int = 30, n_frames: int = 1000, fps: float = 30.0) -> dict:
    import supervision as sv
    from trackers import ByteTrackTracker

    frames = [sv.Detections(xyxy=d.xyxy, confidence=d.scores, class_id=d.class_ids)
              for d in synthetic_frames(n_objects, n_frames, fps)]
    tracker = ByteTrackTracker(frame_rate=fps, track_activation_threshold=0.5, high_conf_det_threshold=0.5)
    return _timed(lambda d, t: tracker.update(d), frames, fps)


# -- main ---------------------------------------------------------------------------------------
def get_run(args) -> CachedRun:
    cache = Path(args.cache)
    if cache.exists() and not args.refresh:
        return load_cache(cache)
    t0 = time.perf_counter()
    run = detect_video(Path(args.model), Path(args.video), args.cache_score, args.max_detections)
    print(f"detector: {len(run.frames)} frames in {time.perf_counter() - t0:.1f} s -> {cache}", file=sys.stderr)
    save_cache(cache, run)
    return run


def main(argv: Optional[List[str]] = None) -> int:
    a = assets_dir()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(a / "models/ssd_mobilenet_v1_coco_quant_postprocess.tflite"))
    p.add_argument("--video", default=str(a / "videos/pedestrians_480x360.avi"))
    p.add_argument("--truth", default=str(a / "tracking/PETS09-S2L1/gt.txt"))
    p.add_argument("--cache", default="/tmp/edgedet_tracking_dets.npz")
    p.add_argument("--refresh", action="store_true", help="run the detector again even when cached")
    p.add_argument("--cache-score", type=float, default=0.1, help="lowest detection score kept in the cache")
    p.add_argument("--max-detections", type=int, default=100)
    p.add_argument("--reference", action="store_true", help="also the trackers package's ByteTrack")
    p.add_argument("--cost", action="store_true", help="time per update at 30 objects")
    p.add_argument("--frames", type=int, default=2000, help="frames of the cost run")
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args(argv)

    run = get_run(args)
    truth = load_truth(Path(args.truth), len(run.frames))
    n_ids = len(np.unique(np.concatenate([f.ids[~f.ignore] for f in truth])))
    results: dict = {"fps": run.fps, "frames": len(run.frames), "truth_identities": n_ids}
    settings = default_settings()
    results["settings"] = {k: v for k, v in vars(settings).items() if isinstance(v, (int, float))}
    low = [d[d.scores >= settings.low_score] for d in run.frames]
    default = [default_output(d) for d in run.frames]
    video = Path(args.video)
    runs = (("ours", low, greedy_match, video), ("ours_boxes_only", low, greedy_match, None),
            ("ours_hungarian", low, hungarian_match, video), ("ours_default_output", default, greedy_match, video))
    for name, frames, match, images in runs:
        tracked, kinds = run_ours(frames, run.fps, settings, match, images)
        results[name] = {**score_tracks(truth, tracked), "object_events": kinds["new"], "events": kinds}
    if args.reference:
        reference = run_reference(default, run.fps)
        results["reference_bytetrack"] = score_tracks(truth, reference)
    results["mqtt_change_messages"] = {"unlimited": change_messages(default, run.fps),
                                       "max_rate_2": change_messages(default, run.fps, 2.0)}
    if args.cost:
        results["cost_30_objects"] = {
            "ours_greedy": tracker_cost_ms(30, args.frames),
            "ours_boxes_only": tracker_cost_ms(30, args.frames, with_image=False),
            "ours_hungarian": tracker_cost_ms(30, args.frames, match=hungarian_match),
            "ours_with_events_zones": tracker_cost_ms(30, args.frames, with_events=True),
        }
        if args.reference:
            results["cost_30_objects"]["reference_bytetrack"] = reference_cost_ms(30, args.frames)
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def print_table(results: dict) -> None:
    print(f"{results['frames']} frames at {results['fps']:g} fps, {results['truth_identities']} identities")
    cols = ["mota", "idf1", "num_switches", "recall", "precision", "track_ids", "object_events"]
    print(f"{'tracker':22s} " + " ".join(f"{c:>13s}" for c in cols))
    for name, r in results.items():
        if isinstance(r, dict) and "mota" in r:
            vals = [r.get(c, float("nan")) for c in cols]
            print(f"{name:22s} " + " ".join(f"{v:13.3f}" if isinstance(v, float) else f"{v:13d}" for v in vals))
    m = results["mqtt_change_messages"]
    print(f"on-change MQTT messages for the same video: {m['unlimited']} ({m['max_rate_2']} at 2 per second)")
    for name, r in (results.get("cost_30_objects") or {}).items():
        print(f"cost {name}: median {r['median_ms']:.3f} ms (CPU {r['cpu_median_ms']:.3f}), "
              f"p95 {r['p95_ms']:.3f} ms (CPU {r['cpu_p95_ms']:.3f}) per frame at 30 objects")


if __name__ == "__main__":
    sys.exit(main())
