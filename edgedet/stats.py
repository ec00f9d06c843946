"""Pipeline statistics: counters, per-stage timing percentiles, rates and frame age.

One ``PipelineStats`` is shared by the stage threads. Each timing series keeps the last
``window`` samples in a preallocated ring (no per-frame allocation); percentiles are computed
only when a snapshot is taken. ``snapshot()`` returns a JSON-ready dict::

    {"elapsed_s": 12.0,
     "frames": {"captured": 120, "processed": 118, "output": 118},
     "fps": {"in": 9.9, "processed": 9.7, "out": 9.7},           # averages over the whole run
     "fps_recent": {"in": 10.0, "processed": 9.8, "out": 9.8},   # over the last RATE_WINDOW seconds
     "rate_window_s": 5.0,
     "dropped": {"to_infer": 2, "to_decode": 0, "to_output": 0, "total": 2},
     "stages_ms": {"capture": {"p50": 1.1, "p95": 2.0, "mean": 1.2}, "preprocess": ..., ...},
     "frame_age_ms": {"p50": 45.0, "p95": 60.2, "mean": 47.1},
     "source": {...}}

``format_text(snapshot)`` renders the compact block printed on stderr.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

STAGES = ("capture", "preprocess", "invoke", "decode", "overlay", "sinks")
RATE_WINDOW = 5.0  # seconds of the recent frame rates
_SAMPLE_EVERY = 0.2  # seconds between two samples of the counters


class Series:
    """The last ``window`` values of one measure (milliseconds), thread-safe enough for stats."""

    def __init__(self, window: int = 1024) -> None:
        self._buf = np.zeros(window, np.float64)
        self._n = 0

    def add(self, value: float) -> None:
        self._buf[self._n % len(self._buf)] = value
        self._n += 1

    @property
    def count(self) -> int:
        return self._n

    def summary(self) -> dict:
        n = min(self._n, len(self._buf))
        if n == 0:
            return {"p50": None, "p95": None, "mean": None, "n": 0}
        values = self._buf[:n]
        p50, p95 = np.percentile(values, [50, 95])
        return {"p50": round(float(p50), 2), "p95": round(float(p95), 2),
                "mean": round(float(values.mean()), 2), "n": self._n}


class _Counter:
    """A frame counter attribute of ``PipelineStats`` (``stats.captured += 1``) that also samples the
    counters for the recent rates, at most every ``_SAMPLE_EVERY`` seconds."""

    def __set_name__(self, owner, name: str) -> None:
        self.attr = "_" + name

    def __get__(self, obj, objtype=None):
        return self if obj is None else getattr(obj, self.attr)

    def __set__(self, obj, value: int) -> None:
        setattr(obj, self.attr, value)
        obj._sample()


class PipelineStats:
    """Counters and timing series of one run. Stage threads call the ``add``/``count`` methods.

    ``fps_recent`` are the rates of the last ``rate_window`` seconds (a stall shows at once and is
    forgotten once the frames flow again), ``fps`` the averages over the whole run. ``clock`` is the
    monotonic time source (a test may pass its own).
    """

    captured = _Counter()
    processed = _Counter()
    output = _Counter()

    def __init__(self, stages: Iterable[str] = STAGES, window: int = 1024, rate_window: float = RATE_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.rate_window = float(rate_window)
        self._samples: deque = deque(maxlen=int(self.rate_window / _SAMPLE_EVERY) + 8)
        self._sample_lock = threading.Lock()
        self._captured = self._processed = self._output = 0
        self.started = clock()
        self.stopped: Optional[float] = None
        self.stages = {name: Series(window) for name in stages}
        self.frame_age = Series(window)
        self._slots: list = []
        self._source_stats: Callable[[], dict] = dict
        self._lock = threading.Lock()

    def attach(self, slots: Iterable, source_stats: Callable[[], dict] = dict) -> None:
        """Slots whose ``dropped`` counters are reported, and the source's own counters."""
        self._slots = list(slots)
        self._source_stats = source_stats

    def start(self) -> None:
        self.started = self.clock()
        self.stopped = None
        with self._sample_lock:
            self._samples.clear()

    def stop(self) -> None:
        self.stopped = self.clock()

    def _counts(self) -> tuple[int, int, int]:
        return self._captured, self._processed, self._output

    def _sample(self) -> None:
        """Keep the counters' history in buckets ``(first, last, counts at last)`` of ``_SAMPLE_EVERY`` s:
        between a bucket's ``last`` and the next one's ``first`` nothing was counted."""
        now = self.clock()
        with self._sample_lock:
            samples = self._samples
            if samples and now - samples[-1][0] < _SAMPLE_EVERY:
                samples[-1] = (samples[-1][0], now, self._counts())
            else:
                samples.append((now, now, self._counts()))

    def recent_rates(self, end: float) -> tuple[float, ...]:
        """Frames per second (captured, processed, output) over the ``rate_window`` seconds up to ``end``."""
        since = max(end - self.rate_window, self.started)
        base: tuple = (0, 0, 0)
        with self._sample_lock:
            samples = list(self._samples)
        prev_last = self.started
        for first, last, counts in samples:  # the counts at ``since``
            if first > since:
                break
            if last > since:  # inside a bucket: frames came evenly within it
                share = (since - prev_last) / max(last - prev_last, 1e-9)
                base = tuple(b + (c - b) * share for b, c in zip(base, counts))
                break
            base, prev_last = counts, last
        span = max(end - since, 1e-9)
        return tuple(max(now - then, 0) / span for now, then in zip(self._counts(), base))

    def add(self, stage: str, ms: float) -> None:
        self.stages[stage].add(ms)

    def snapshot(self) -> dict:
        with self._lock:
            end = self.stopped if self.stopped is not None else self.clock()
            elapsed = max(end - self.started, 1e-9)
            dropped = {slot.name: int(slot.dropped) for slot in self._slots}
            dropped["total"] = sum(dropped.values())
            try:
                source = dict(self._source_stats() or {})
            except Exception as exc:  # a source's counters must never break the report
                source = {"error": str(exc)}
            return {
                "elapsed_s": round(elapsed, 3),
                "frames": {"captured": self.captured, "processed": self.processed, "output": self.output},
                "fps_recent": dict(zip(("in", "processed", "out"), (round(r, 2) for r in self.recent_rates(end)))),
                "fps": {
                    "in": round(self.captured / elapsed, 2),
                    "processed": round(self.processed / elapsed, 2),
                    "out": round(self.output / elapsed, 2),
                },
                "rate_window_s": self.rate_window,
                "dropped": dropped,
                "stages_ms": {name: series.summary() for name, series in self.stages.items()},
                "frame_age_ms": self.frame_age.summary(),
                "source": source,
            }


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_text(snap: dict, title: str = "stats") -> str:
    """A compact multi-line block for stderr."""
    fr, avg, dr = snap["frames"], snap["fps"], snap["dropped"]
    fps = snap.get("fps_recent") or avg
    per_slot = ", ".join(f"{k} {v}" for k, v in dr.items() if k != "total")
    window = f" (last {snap['rate_window_s']:g}s)" if "rate_window_s" in snap else ""
    lines = [
        f"edgedet {title} after {snap['elapsed_s']:.1f}s: fps in {fps['in']:.1f} | processed "
        f"{fps['processed']:.1f} | out {fps['out']:.1f}{window}, average {avg['in']:.1f}/{avg['processed']:.1f}/"
        f"{avg['out']:.1f}; frames {fr['captured']}/{fr['processed']}/{fr['output']}; dropped {dr['total']}"
        + (f" ({per_slot})" if per_slot else ""),
        "  ms p50/p95: " + "  ".join(
            f"{name} {_fmt(s['p50'])}/{_fmt(s['p95'])}" for name, s in snap["stages_ms"].items()
        ),
        f"  frame age at output p50/p95: {_fmt(snap['frame_age_ms']['p50'])}/"
        f"{_fmt(snap['frame_age_ms']['p95'])} ms",
    ]
    source = {k: v for k, v in (snap.get("source") or {}).items() if not isinstance(v, (dict, list))}
    if source:
        lines.append("  source: " + ", ".join(f"{k} {v}" for k, v in source.items()))
    return "\n".join(lines)


def write_json(snap: dict, path: str | os.PathLike) -> None:
    """Write a snapshot as JSON (atomically: a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(snap, indent=2) + "\n")
    os.replace(tmp, path)
