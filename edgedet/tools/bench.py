"""``edgedet bench``: how fast a model runs here, stage by stage, all measured in one run.

Measured on frames of ``source`` (a video or images; without one, a synthetic picture):

- invoke ms (p50/p95) of the model as the pipeline runs it; for a model that ends in the
  ``TFLite_Detection_PostProcess`` op also the invoke with the op and without it (the op
  stripped, as our decoder runs it): op time = invoke(with op) - invoke(stripped). The two run
  in short alternating blocks (a busy machine slows both alike) and the op time is the median of
  the per-block differences;
- preprocess ms (resize + colour + quantize into the input tensor) of the source's frames;
- decode+NMS ms: ours (numpy) and the op's (reading its outputs);
- pipeline fps: ``edgedet.pipeline.Pipeline`` on the source with no sinks and no frame dropping
  (capture, preprocess, invoke, decode, each in its own thread), and its ratio to the raw
  invoke rate (1000 / invoke p50): how much of the interpreter's speed the whole pipeline keeps.

``sweep_threads`` repeats invoke and pipeline for 1..N interpreter threads.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..cpu import default_inference_threads, describe_machine, limit_opencv_threads, opencv_threads
from ..errors import ConfigError, SourceError

log = logging.getLogger(__name__)


DECODERS = ("auto", "edgedet", "op")


@dataclass
class BenchSettings:
    model: str
    source: Optional[str] = None
    threads: Optional[int] = None
    workers: Optional[int] = None  # pipeline inference workers (None: the pipeline's default)
    runs: int = 50
    warmup: int = 5
    frames: int = 200  # pipeline frames
    decoder: str = "auto"  # who decodes: auto, edgedet or op (``Detector.from_path``)
    labels: Optional[str] = None
    opencv_threads: Optional[int] = None
    sweep_threads: Optional[int] = None  # N: also measure 1..N threads


def summarize(values) -> dict:
    arr = np.asarray(list(values), np.float64)
    if arr.size == 0:
        return {"p50": None, "p95": None, "mean": None, "n": 0}
    p50, p95 = np.percentile(arr, [50, 95])
    return {"p50": round(float(p50), 3), "p95": round(float(p95), 3), "mean": round(float(arr.mean()), 3),
            "n": int(arr.size)}


def _source_config(source: str, *, loop: bool):
    from ..config import config_from_dict

    return config_from_dict({"source": {"uri": str(source), "loop": loop}})


def sample_frames(source: Optional[str], count: int) -> tuple[list, str]:
    """Up to ``count`` BGR frames of ``source`` (looping a short one), or one synthetic picture."""
    if source is None:
        rng = np.random.default_rng(0)
        ramp = np.linspace(0, 255, 640, dtype=np.float32)[None, :, None]
        image = np.clip(ramp + rng.normal(0, 40, (480, 640, 3)), 0, 255).astype(np.uint8)
        return [image], "synthetic 640x480"
    from ..sources import open_source

    src = open_source(_source_config(source, loop=True))
    frames = []
    with _opened(src):
        while len(frames) < count:
            frame = src.read()
            if frame is None:
                break
            frames.append(frame.image)
    if not frames:
        raise SourceError(f"no frames in {source}")
    h, w = frames[0].shape[:2]
    return frames, f"{Path(source).name} ({w}x{h})"


class _opened:
    def __init__(self, src) -> None:
        self.src = src

    def __enter__(self):
        self.src.open()
        return self.src

    def __exit__(self, *exc) -> None:
        self.src.close()


def _load(path: Path, settings: BenchSettings, threads: int, decoder: str):
    from ..detector import Detector

    return Detector.from_path(path, threads=threads, labels=settings.labels, decoder=decoder)


def resolve(model: str) -> Path:
    try:
        from ..registry import resolve_model
    except ImportError:  # pragma: no cover - the registry ships with the package
        return Path(model)
    return resolve_model(model)


def _measure(det, frames: list, runs: int, warmup: int, start: int = 0) -> dict:
    """preprocess / invoke / decode ms of ``det`` over ``runs`` frames (cycling through ``frames``)."""
    for i in range(warmup):
        prep = det.prepare(frames[i % len(frames)])
        det.decode(det.infer(prep), prep)
    pre, inv, dec = [], [], []
    clock = time.perf_counter
    for i in range(runs):
        image = frames[(start + i) % len(frames)]
        t0 = clock()
        prep = det.prepare(image)
        t1 = clock()
        raw = det.infer(prep)
        t2 = clock()
        det.decode(raw, prep)
        t3 = clock()
        pre.append((t1 - t0) * 1000.0)
        inv.append(float(getattr(raw, "invoke_ms", (t2 - t1) * 1000.0)))
        dec.append((t3 - t2) * 1000.0)
    return {"preprocess": pre, "invoke": inv, "decode": dec}


def _measure_pair(a, b, frames: list, runs: int, warmup: int, block: int = 5) -> tuple[dict, dict, list]:
    """Measure two detectors in short alternating blocks (a, b, a, b, ...): load changes on a busy
    machine hit both alike. Also returns, per pair of blocks, median(b) - median(a) of the invoke."""
    out_a: dict = {"preprocess": [], "invoke": [], "decode": []}
    out_b: dict = {"preprocess": [], "invoke": [], "decode": []}
    diffs: list = []
    first = True
    done = 0
    while done < runs:
        n = min(block, runs - done)
        medians = []
        for det, out in ((a, out_a), (b, out_b)):
            got = _measure(det, frames, n, warmup if first else 1, start=done)
            for key in out:
                out[key].extend(got[key])
            medians.append(float(np.median(got["invoke"])))
        diffs.append(medians[1] - medians[0])
        first = False
        done += n
    return out_a, out_b, diffs


def pipeline_fps(det, source: str, frames: int, workers: Optional[int] = None) -> dict:
    """Run the real pipeline (no sinks, no dropping) on ``source`` for ``frames`` frames."""
    from ..pipeline import Pipeline
    from ..sources import open_source

    src = open_source(_source_config(source, loop=True), lores_size=tuple(det.input_size))
    pipe = Pipeline(src, det, [], drop=False, max_frames=int(frames), handle_signals=False, workers=workers)
    with pipe:
        snap = pipe.run()
    stages = {k: v for k, v in snap["stages_ms"].items() if v.get("n")}
    return {"fps": snap["fps"]["processed"], "frames": snap["frames"]["processed"], "workers": pipe.workers,
            "threads_per_worker": pipe.threads_per_worker,
            "elapsed_s": snap["elapsed_s"], "stages_ms": stages}


def run_bench(settings: BenchSettings, progress: Callable[[str], None] = lambda msg: None) -> dict:
    """All the measures of one ``edgedet bench`` run, as a JSON-ready dict."""
    if settings.runs < 1:
        raise ConfigError("bench --runs: must be at least 1")
    if settings.decoder not in DECODERS:
        raise ConfigError(f"bench --decoder: expected auto, edgedet or op, got {settings.decoder!r}")
    if settings.opencv_threads is not None:
        limit_opencv_threads(settings.opencv_threads)
    threads = int(settings.threads or default_inference_threads())
    path = resolve(settings.model)
    frames, frames_name = sample_frames(settings.source, min(settings.runs, 64))
    progress(f"loading {path.name} ({threads} threads)")
    main = _load(path, settings, threads, settings.decoder)
    info = main.info
    report: dict = {
        "model": {
            "path": str(main.path), "name": main.path.name, "form": info.form,
            "input_size": list(info.input_size), "input_dtype": info.input_dtype,
            "anchors": info.num_anchors, "classes": info.num_classes, "postprocess": info.postprocess,
            "backend": info.backend,
        },
        "machine": describe_machine(),
        "threads": {"interpreter": int(info.threads or threads), "opencv": opencv_threads()},
        "runs": settings.runs,
        "frames": frames_name,
    }

    # invoke with and without the in-graph op (form-op models), in alternating blocks
    progress(f"measuring invoke/preprocess/decode over {settings.runs} runs")
    if info.form == "op":
        other_pp = "op" if info.postprocess == "ours" else "ours"
        other = _load(path, settings, threads, "op" if other_pp == "op" else "edgedet")
        m_main, m_other, diffs = _measure_pair(main, other, frames, settings.runs, settings.warmup)
        by_pp = {info.postprocess: m_main, other_pp: m_other}
        if info.postprocess == "op":  # diffs are other - main: make them (with op) - (stripped)
            diffs = [-d for d in diffs]
        stripped, with_op = summarize(by_pp["ours"]["invoke"]), summarize(by_pp["op"]["invoke"])
        report["invoke_stripped_ms"] = stripped
        report["invoke_with_op_ms"] = with_op
        # the median of the paired block differences: robust to the machine's load changing
        report["op_ms"] = round(float(np.median(diffs)), 3)
        report["op_ms_blocks"] = len(diffs)
        report["decode_ms"] = {"ours": summarize(by_pp["ours"]["decode"]), "op": summarize(by_pp["op"]["decode"])}
        del other
    else:
        m_main = _measure(main, frames, settings.runs, settings.warmup)
        report["decode_ms"] = {"ours": summarize(m_main["decode"])}
    report["invoke_ms"] = summarize(m_main["invoke"])
    report["preprocess_ms"] = summarize(m_main["preprocess"])
    invoke_rate = 1000.0 / report["invoke_ms"]["p50"] if report["invoke_ms"]["p50"] else None
    report["invoke_rate"] = round(invoke_rate, 2) if invoke_rate else None

    if settings.source is not None:
        progress(f"pipeline on {frames_name}: {settings.frames} frames")
        pipe = pipeline_fps(main, settings.source, settings.frames, settings.workers)
        report["pipeline"] = pipe
        report["pipeline_vs_invoke"] = round(pipe["fps"] / invoke_rate, 3) if invoke_rate else None
    else:
        report["pipeline"] = None
        report["pipeline_vs_invoke"] = None

    if settings.sweep_threads:
        rows = []
        for t in range(1, int(settings.sweep_threads) + 1):
            progress(f"sweep: {t} thread(s)")
            det = main if t == threads else _load(path, settings, t, settings.decoder)
            m = _measure(det, frames, settings.runs, settings.warmup)
            row = {"threads": t, "invoke_ms": summarize(m["invoke"])}
            if settings.source is not None:
                row["pipeline_fps"] = pipeline_fps(det, settings.source, settings.frames, settings.workers)["fps"]
            rows.append(row)
        report["sweep"] = rows
    return report


# ---------------------------------------------------------------------------------------------
# text output

def _ms(s: Optional[dict]) -> str:
    if not s or s.get("p50") is None:
        return f"{'-':>8} {'-':>8}"
    return f"{s['p50']:8.2f} {s['p95']:8.2f}"


def format_report(r: dict) -> str:
    m, mach, th = r["model"], r["machine"], r["threads"]
    lines = [
        f"edgedet bench: {m['name']} ({m['form']} form, {m['input_size'][0]}x{m['input_size'][1]} "
        f"{m['input_dtype']}, {m['anchors']} anchors, decode by {m['postprocess']}, {m['backend']})",
        f"machine: {mach['model']} ({mach['arch']}), {mach['cores']} cores, big cores {mach['big_cores']}, "
        f"usable {mach['available_cores']}; Python {mach['python']}",
        f"threads: interpreter {th['interpreter']}, OpenCV {th['opencv']}; {r['runs']} runs on {r['frames']}",
        f"{'':34}{'p50':>8} {'p95':>8}",
        f"{'invoke (as the pipeline runs it)':34}{_ms(r['invoke_ms'])} ms",
    ]
    if "invoke_with_op_ms" in r:
        lines += [
            f"{'invoke, op stripped':34}{_ms(r['invoke_stripped_ms'])} ms",
            f"{'invoke, with the op':34}{_ms(r['invoke_with_op_ms'])} ms",
            f"{'  op time (with - stripped)':34}{r['op_ms']:8.2f} ms  (median of {r['op_ms_blocks']} paired blocks)",
        ]
    lines.append(f"{'preprocess':34}{_ms(r['preprocess_ms'])} ms")
    lines.append(f"{'decode+NMS (ours)':34}{_ms(r['decode_ms'].get('ours'))} ms")
    if "op" in r["decode_ms"]:
        lines.append(f"{'decode (op outputs)':34}{_ms(r['decode_ms']['op'])} ms")
    if r.get("invoke_rate"):
        lines.append(f"raw invoke rate: {r['invoke_rate']:.1f}/s")
    p = r.get("pipeline")
    if p:
        lines.append(f"pipeline: {p['fps']:.1f} fps over {p['frames']} frames (no sinks, no drop, "
                     f"{p['workers']} inference worker(s) x {p['threads_per_worker']} thread(s)); "
                     f"pipeline / raw invoke rate = {r['pipeline_vs_invoke']:.2f}")
        lines.append("  pipeline stages ms p50/p95: " + "  ".join(
            f"{k} {v['p50']:.1f}/{v['p95']:.1f}" for k, v in p["stages_ms"].items()))
    else:
        lines.append("pipeline: not measured (give --source VIDEO)")
    if r.get("sweep"):
        lines.append("")
        lines.append(f"{'threads':>7}  {'invoke p50':>10}  {'invoke p95':>10}  {'pipeline fps':>12}")
        for row in r["sweep"]:
            fps = row.get("pipeline_fps")
            lines.append(f"{row['threads']:>7}  {row['invoke_ms']['p50']:>10.2f}  {row['invoke_ms']['p95']:>10.2f}  "
                         f"{(f'{fps:.1f}' if fps is not None else '-'):>12}")
    return "\n".join(lines)
