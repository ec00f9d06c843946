#!/usr/bin/env python3
"""Measure the ``edgedet run`` pipeline against its done-when figures; prints one JSON object.

    python tools/bench_pipeline.py                 # everything (several minutes)
    python tools/bench_pipeline.py --persons       # (1) person found in >= 90% of frames (edgedet run + JSONL)
    python tools/bench_pipeline.py --throughput    # (3) pipeline fps vs raw invoke rate / sequential loop
    python tools/bench_pipeline.py --realtime      # (4) --realtime 30 fps with FPNLite: frame age, drops
    python tools/bench_pipeline.py --rss           # (5) RSS growth over 5,000 frames (pedestrian video looped)

Assets come from ``../shared/assets`` or ``$EDGEDET_ASSETS``; the default registry model is pulled
from the assets' ``models/`` directory into a temporary cache (``EDGEDET_MODEL_MIRROR``). Every
figure is measured once, in this process or one ``edgedet run`` subprocess: compare ratios taken
in the same run, not absolute timings across runs (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgedet.config import config_from_dict  # noqa: E402
from edgedet.detector import Detector  # noqa: E402
from edgedet.pipeline import Pipeline  # noqa: E402
from edgedet.sinks import SinkContext, build_sinks  # noqa: E402
from edgedet.sinks.base import BaseSink  # noqa: E402
from edgedet.sinks.overlay import Overlay  # noqa: E402
from edgedet.sources import open_source  # noqa: E402
from edgedet.sources.file import VideoFileSource  # noqa: E402


def assets() -> Path:
    env = os.environ.get("EDGEDET_ASSETS")
    return Path(env) if env else ROOT.parent / "shared" / "assets"


A = assets()
V1 = A / "models" / "ssd_mobilenet_v1_coco_quant_postprocess.tflite"
FPN = A / "models" / "ssd_mobilenet_v2_fpnlite_320_coco_fp.tflite"
LABELS = A / "labels" / "coco_labels.txt"
PED = A / "videos" / "pedestrians_480x360.avi"
HIGHWAY = A / "videos" / "highway_cars_720p.mp4"


class _Null(BaseSink):
    """Consumes results; asks for the overlay when ``annotated`` (like a window or recorder would)."""

    def __init__(self, annotated: bool = False) -> None:
        self.needs_annotated = annotated
        self.reads_frame = False


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def bench_persons(tmp: Path) -> dict:
    """(1) ``edgedet run --source pedestrians --headless --events e.jsonl`` with the default model."""
    events = tmp / "persons.jsonl"
    env = dict(os.environ, EDGEDET_MODEL_MIRROR=str(A / "models"), EDGEDET_CACHE=str(tmp / "cache"))
    cmd = ["edgedet", "run", "--source", str(PED), "--headless", "--events", str(events)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"edgedet run failed ({proc.returncode}): {proc.stderr.strip()}")
    frames = with_person = 0
    for line in events.read_text().splitlines():
        rec = json.loads(line)
        frames += 1
        with_person += any(d["label"] == "person" for d in rec["detections"])
    return {
        "command": f"edgedet run --source {PED.name} --headless --events persons.jsonl",
        "frames": frames, "frames_with_person": with_person,
        "person_frame_ratio": round(with_person / max(frames, 1), 4), "target": ">= 0.90",
        "wall_s": round(wall, 2),
    }


def _raw_invoke_rate(det, image, n: int) -> dict:
    """Back-to-back ``infer`` on one prepared frame. ``rate_per_s``: invokes per second of the
    loop (elapsed time, as the pipeline's fps is taken); ``rate_per_s_p50``: from the median
    invoke, the best case for the raw loop (its slow invokes do not count against it)."""
    import numpy as np

    prepared = det.prepare(image)
    for _ in range(5):
        det.infer(prepared)
    times = np.empty(n)
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        det.infer(prepared)
        times[i] = time.perf_counter() - t0
    elapsed = time.perf_counter() - start
    p50 = float(np.median(times))
    return {"invokes": n, "invoke_ms_p50": round(p50 * 1000, 2), "invoke_ms_mean": round(times.mean() * 1000, 2),
            "rate_per_s": round(n / elapsed, 2), "rate_per_s_p50": round(1.0 / p50, 2)}


def _cpu_s() -> float:
    """CPU time of this process (every thread: interpreter pool, FFmpeg's decoder threads...)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _pipeline_fps(det, video: Path, *, annotated: bool, max_frames=None, workers=None) -> dict:
    src = VideoFileSource(video)
    with Pipeline(src, det, [_Null(annotated)], drop=False, max_frames=max_frames, handle_signals=False,
                  workers=workers) as p:
        c0, t0 = _cpu_s(), time.perf_counter()
        snap = p.run()
        dt, cpu = time.perf_counter() - t0, _cpu_s() - c0
    n = snap["frames"]["output"]
    return {"frames": n, "fps": round(n / dt, 2), "cpu_ms_per_frame": round(cpu / max(n, 1) * 1000, 2),
            "stage_ms_p50": {k: v["p50"] for k, v in snap["stages_ms"].items()}}


def _sequential_fps(det, video: Path, max_frames=None) -> dict:
    """The plain loop: read -> detect -> draw, one frame at a time, one thread."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    overlay = Overlay()
    n = 0
    c0, t0 = _cpu_s(), time.perf_counter()
    while max_frames is None or n < max_frames:
        ok, image = cap.read()
        if not ok:
            break
        dets = det.detect(image)
        overlay.draw(image, dets, det.labels)
        n += 1
    dt, cpu = time.perf_counter() - t0, _cpu_s() - c0
    cap.release()
    return {"frames": n, "fps": round(n / dt, 2), "cpu_ms_per_frame": round(cpu / max(n, 1) * 1000, 2)}


def _ceiling_fps(cpu_ms_per_frame: float, cores: int) -> float:
    """Frames/s if every core did nothing but this work: the most any arrangement of it can give."""
    return round(cores * 1000.0 / cpu_ms_per_frame, 1) if cpu_ms_per_frame > 0 else 0.0


def bench_throughput(threads: int = 2, rounds: int = 5, *, with_op: bool = True, compare_threads=(1,)) -> dict:
    """(3) file source, no dropping, ``threads`` interpreter threads.

    The machine may be shared, so each comparison alternates its two contenders ``rounds``
    times (A B A B ...): each round gives a ratio of two runs taken back to back, and the
    median of those ratios is the figure (a burst of outside load hits one round, not the result).

    Also reported, to explain the figure: the CPU time per frame of each contender (all threads
    of the process) and the frame rate it would reach if every core did nothing else
    (``*_cpu_ceiling_fps``); the raw invoke rate of the model file as shipped, with its in-graph
    postprocess op (``with_op``); the pipeline with one interpreter of ``threads`` threads
    instead of its default for files (one single-thread interpreter per thread, frames in
    flight side by side: ``*_one_interpreter``), in the same rounds; and the same comparisons
    with fewer interpreter threads (``compare_threads``).
    """
    import statistics

    import cv2

    from edgedet.cpu import available_cores

    cores = len(available_cores())
    cap = cv2.VideoCapture(str(PED))
    image = cap.read()[1]
    cap.release()

    def med(values):
        return round(statistics.median(values), 3)

    def measure(n_threads: int) -> dict:
        det = Detector.from_path(V1, threads=n_threads, labels=str(LABELS))
        op = Detector.from_path(V1, threads=n_threads, labels=str(LABELS), postprocess="op") if with_op else None
        raw, raw_op, ped, seq720, pipe720, ped1, pipe1 = [], [], [], [], [], [], []
        one = n_threads > 1  # also time the pipeline with one interpreter of n_threads threads
        for _ in range(rounds):
            raw.append(_raw_invoke_rate(det, image, 150))
            if op is not None:
                raw_op.append(_raw_invoke_rate(op, image, 150))
            ped.append(_pipeline_fps(det, PED, annotated=False))
            if one:
                ped1.append(_pipeline_fps(det, PED, annotated=False, workers=1))
        for _ in range(rounds):
            seq720.append(_sequential_fps(det, HIGHWAY))
            pipe720.append(_pipeline_fps(det, HIGHWAY, annotated=True))
            if one:
                pipe1.append(_pipeline_fps(det, HIGHWAY, annotated=True, workers=1))
        ratio_raw = [p["fps"] / r["rate_per_s"] for p, r in zip(ped, raw)]
        ratio_raw_p50 = [p["fps"] / r["rate_per_s_p50"] for p, r in zip(ped, raw)]
        ratio_720 = [p["fps"] / q["fps"] for p, q in zip(pipe720, seq720)]
        res = {
            "threads": n_threads,
            "raw_invoke_rate_480x360": [r["rate_per_s"] for r in raw],
            "raw_invoke_rate_480x360_from_p50": [r["rate_per_s_p50"] for r in raw],
            "raw_invoke_ms_p50": [r["invoke_ms_p50"] for r in raw],
            "pipeline_fps_480x360": [p["fps"] for p in ped],
            "pipeline_cpu_ms_per_frame_480x360": med([p["cpu_ms_per_frame"] for p in ped]),
            "pipeline_stage_ms_p50_480x360": ped[-1]["stage_ms_p50"],
            "pipeline_over_raw_invoke_per_round": [round(x, 3) for x in ratio_raw],
            "pipeline_over_raw_invoke": med(ratio_raw),
            "pipeline_over_raw_invoke_p50_rate": med(ratio_raw_p50),
            "sequential_720p_read_infer_draw_fps": [q["fps"] for q in seq720],
            "sequential_720p_cpu_ms_per_frame": med([q["cpu_ms_per_frame"] for q in seq720]),
            "sequential_720p_cpu_ceiling_fps": _ceiling_fps(med([q["cpu_ms_per_frame"] for q in seq720]), cores),
            "pipeline_720p_with_overlay_fps": [p["fps"] for p in pipe720],
            "pipeline_720p_cpu_ms_per_frame": med([p["cpu_ms_per_frame"] for p in pipe720]),
            "pipeline_720p_cpu_ceiling_fps": _ceiling_fps(med([p["cpu_ms_per_frame"] for p in pipe720]), cores),
            "pipeline_stage_ms_p50_720p": pipe720[-1]["stage_ms_p50"],
            "pipeline_over_sequential_720p_per_round": [round(x, 3) for x in ratio_720],
            "pipeline_over_sequential_720p": med(ratio_720),
        }
        if one:
            r1 = [p["fps"] / r["rate_per_s"] for p, r in zip(ped1, raw)]
            s1 = [p["fps"] / q["fps"] for p, q in zip(pipe1, seq720)]
            res.update({
                "pipeline_fps_480x360_one_interpreter": [p["fps"] for p in ped1],
                "pipeline_over_raw_invoke_one_interpreter": med(r1),
                "pipeline_720p_fps_one_interpreter": [p["fps"] for p in pipe1],
                "pipeline_over_sequential_720p_one_interpreter": med(s1),
            })
        if raw_op:
            ratio_op = [p["fps"] / r["rate_per_s"] for p, r in zip(ped, raw_op)]
            res["raw_invoke_ms_p50_model_with_op"] = [r["invoke_ms_p50"] for r in raw_op]
            res["pipeline_over_raw_invoke_of_model_with_op"] = med(ratio_op)
        return res

    out = {"model": V1.name, "cores": cores, "rounds": rounds, "target_ratio": ">= 0.90", "target_720p": ">= 1.0"}
    out.update(measure(threads))
    out["other_thread_counts"] = [measure(n) for n in compare_threads if n != threads]
    return out


def bench_realtime(seconds: float = 20.0, fps: float = 30.0, threads: int = 2) -> dict:
    """(4) ``--realtime --fps`` with the float FPNLite model. The figure is meant for a model slower
    than the source (as on a Pi); ``model_slower_than_source`` says whether it was, here."""
    cfg = config_from_dict({
        "model": {"path": str(FPN), "labels": str(LABELS), "threads": threads},
        "source": {"uri": str(PED), "realtime": True, "fps": fps},
        "output": {"headless": True},
    })
    det = Detector.from_path(FPN, threads=threads, labels=str(LABELS))
    src = open_source(cfg)
    assert src.live
    with Pipeline(src, det, [], drop=True, handle_signals=False) as p:
        threading.Timer(seconds, p.stop).start()
        snap = p.run()
    st = snap["stages_ms"]
    infer_p50 = st["preprocess"]["p50"] + st["invoke"]["p50"] + st["decode"]["p50"]
    interval = 1000.0 / fps
    age = snap["frame_age_ms"]
    return {
        "model": FPN.name, "threads": threads, "source_fps": fps, "seconds": snap["elapsed_s"],
        "frames": snap["frames"], "fps": snap["fps"], "dropped": snap["dropped"],
        "inference_ms_p50": round(infer_p50, 1), "invoke_ms_p50": st["invoke"]["p50"],
        "frame_interval_ms": round(interval, 1),
        "model_slower_than_source": infer_p50 > interval,
        "frame_age_ms": {"p50": age["p50"], "p95": age["p95"]},
        "age_p50_limit_ms": round(infer_p50 + interval, 1),
        "age_p50_within_limit": age["p50"] <= infer_p50 + interval,
    }


def bench_rss(tmp: Path, frames: int = 5000, warmup: int = 250) -> dict:
    """(5) RSS over ``frames`` frames of the looped pedestrian video with overlay, recorder and events."""
    cfg = config_from_dict({
        "model": {"path": str(V1), "labels": str(LABELS), "threads": 2},
        "source": {"uri": str(PED), "loop": True, "max_frames": frames},
        "output": {"headless": True, "record": str(tmp / "rss.mp4"), "events": str(tmp / "rss.jsonl")},
    })
    det = Detector.from_path(V1, threads=2, labels=str(LABELS))
    src = open_source(cfg)
    ctx = SinkContext(labels=list(det.labels))
    sinks = build_sinks(cfg, ctx)
    samples: list[tuple[int, float]] = []
    with Pipeline(src, det, sinks, drop=False, max_frames=frames, context=ctx, handle_signals=False) as p:
        stop = threading.Event()

        def sample():
            while not stop.wait(0.25):
                samples.append((p.stats.output, rss_mb()))

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        snap = p.run()
        samples.append((p.stats.output, rss_mb()))
        stop.set()
        t.join()
    base = next((mb for n, mb in samples if n >= warmup), samples[0][1])
    final = samples[-1][1]
    return {
        "frames": snap["frames"]["output"], "loops": snap["source"].get("loops"),
        "sinks": [type(s).__name__ for s in sinks] + ["overlay"],
        "rss_mb_after_warmup": round(base, 1), "warmup_frames": warmup,
        "rss_mb_final": round(final, 1), "rss_mb_max": round(max(mb for _, mb in samples), 1),
        "rss_growth_mb": round(final - base, 1), "target_mb": "< 20",
        "fps": snap["fps"]["out"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--persons", action="store_true")
    ap.add_argument("--throughput", action="store_true")
    ap.add_argument("--realtime", action="store_true")
    ap.add_argument("--rss", action="store_true")
    ap.add_argument("--rss-frames", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5, help="--throughput: paired rounds per comparison")
    ap.add_argument("--realtime-seconds", type=float, default=20.0)
    ap.add_argument("--loop", action="store_true", help="accepted for symmetry: --rss always loops the video")
    args = ap.parse_args()
    chosen = [k for k in ("persons", "throughput", "realtime", "rss") if getattr(args, k)]
    if not chosen:
        chosen = ["persons", "throughput", "realtime", "rss"]
    out: dict = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                             "loadavg_1m_at_start": round(os.getloadavg()[0], 2)}}
    with tempfile.TemporaryDirectory(prefix="edgedet-bench-") as d:
        tmp = Path(d)
        for name in chosen:
            t0 = time.monotonic()
            if name == "persons":
                out["persons"] = bench_persons(tmp)
            elif name == "throughput":
                out["throughput"] = bench_throughput(rounds=args.rounds)
            elif name == "realtime":
                # as the done-when says (30 fps, 2 threads), and paced at 60 fps with 1 thread, where
                # the model is slower than the source even on a fast x86 core
                out["realtime"] = bench_realtime(args.realtime_seconds, fps=30.0, threads=2)
                out["realtime_model_slower"] = bench_realtime(args.realtime_seconds, fps=60.0, threads=1)
            else:
                out["rss"] = bench_rss(tmp, args.rss_frames)
            print(f"{name}: done in {time.monotonic() - t0:.0f}s", file=sys.stderr)
    out["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
