"""Prometheus metrics of a run, in their own ``CollectorRegistry`` (never the global one).

Counters and gauges are read from the pipeline's own stats snapshot (``edgedet.stats``) and the
source's counters at scrape time, so ``/metrics`` always matches ``/stats`` and the final report::

    edgedet_frames_captured_total            frames.captured
    edgedet_frames_processed_total           frames.processed
    edgedet_frames_output_total              frames.output
    edgedet_frames_dropped_total             dropped.total
    edgedet_frames_dropped_at_total{slot}    dropped.<slot>
    edgedet_fps{kind="in|processed|out"}     fps.*
    edgedet_uptime_seconds                   elapsed_s
    edgedet_source_connected                 source.connected (1 when the source has no such notion)
    edgedet_source_reconnects_total          source.reconnects_total
    edgedet_source_last_frame_age_seconds    source.last_frame_age_s

Latencies are histograms observed from each result's timings (milliseconds -> seconds)::

    edgedet_inference_latency_seconds        timings["invoke"]
    edgedet_stage_latency_seconds{stage}     every timing of the result (capture, preprocess, ...)

Other sinks of the same run add their own gauges/counters (e.g. MQTT queue drops) with
``register_extra(ctx, fn)``: ``fn() -> {name: (kind, help, value)}``, read at scrape time.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from ..errors import SinkError
from ..frame import Result

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


_EXTRAS: dict[int, list[Callable[[], dict]]] = {}  # id(SinkContext) -> callables
_EXTRAS_LOCK = threading.Lock()


def register_extra(ctx, fn: Callable[[], dict]) -> None:
    """Expose ``fn()``'s metrics on the ``/metrics`` of the run that shares ``ctx``."""
    with _EXTRAS_LOCK:
        _EXTRAS.setdefault(id(ctx), []).append(fn)


def unregister_extra(ctx, fn: Callable[[], dict]) -> None:
    with _EXTRAS_LOCK:
        fns = _EXTRAS.get(id(ctx), [])
        if fn in fns:
            fns.remove(fn)
        if not fns:
            _EXTRAS.pop(id(ctx), None)


def extras_for(ctx) -> list[Callable[[], dict]]:
    with _EXTRAS_LOCK:
        return list(_EXTRAS.get(id(ctx), []))


def _prometheus():
    try:
        import prometheus_client  # noqa: F401
        from prometheus_client import core
    except ImportError:
        raise SinkError("the metrics endpoint needs prometheus-client: pip install 'edgedet[stream]'") from None
    return prometheus_client, core


class _StatsCollector:
    """A custom collector: every scrape reads the live snapshot (no separate counts)."""

    def __init__(self, stats: Callable[[], dict], source_stats: Callable[[], dict],
                 extra: Callable[[], list]) -> None:
        self.stats = stats
        self.source_stats = source_stats
        self.extra = extra

    def describe(self):  # auto_describe is off; nothing to pre-register
        return []

    def collect(self):
        _, core = _prometheus()
        snap = _safe(self.stats)
        source = snap.get("source") if isinstance(snap.get("source"), dict) else None
        if not source:
            source = _safe(self.source_stats)
        frames = snap.get("frames") or {}
        for key in ("captured", "processed", "output"):
            if key in frames:
                yield core.CounterMetricFamily(f"edgedet_frames_{key}", f"frames {key} by the pipeline",
                                               value=float(frames[key]))
        dropped = snap.get("dropped") or {}
        if dropped:
            yield core.CounterMetricFamily("edgedet_frames_dropped", "frames dropped (all hand-offs)",
                                           value=float(dropped.get("total", 0)))
            per = core.CounterMetricFamily("edgedet_frames_dropped_at", "frames dropped at a hand-off",
                                           labels=["slot"])
            for slot, n in dropped.items():
                if slot != "total":
                    per.add_metric([str(slot)], float(n))
            yield per
        fps = snap.get("fps") or {}
        if fps:
            g = core.GaugeMetricFamily("edgedet_fps", "frames per second", labels=["kind"])
            for kind, value in fps.items():
                g.add_metric([str(kind)], float(value or 0.0))
            yield g
        if "elapsed_s" in snap:
            yield core.GaugeMetricFamily("edgedet_uptime_seconds", "seconds since the run started",
                                         value=float(snap["elapsed_s"]))
        connected = source.get("connected", True)
        yield core.GaugeMetricFamily("edgedet_source_connected", "1 while the source delivers frames",
                                     value=1.0 if connected else 0.0)
        yield core.CounterMetricFamily("edgedet_source_reconnects", "source reconnections",
                                       value=float(source.get("reconnects_total", 0) or 0))
        age = source.get("last_frame_age_s")
        if isinstance(age, (int, float)) and age >= 0:
            yield core.GaugeMetricFamily("edgedet_source_last_frame_age_seconds",
                                         "seconds since the source's last frame", value=float(age))
        for fn in self.extra():
            for name, (kind, help_text, value) in _safe(fn).items():
                family = core.CounterMetricFamily if kind == "counter" else core.GaugeMetricFamily
                yield family(name, help_text, value=float(value))


def _safe(fn: Callable[[], dict]) -> dict:
    try:
        out = fn()
    except Exception:  # a broken stats callable must never break a scrape
        return {}
    return out if isinstance(out, dict) else {}


class Metrics:
    """The run's Prometheus registry. ``observe(result)`` per result; ``render()`` per scrape."""

    def __init__(self, stats: Callable[[], dict] = dict, source_stats: Callable[[], dict] = dict,
                 extra: Optional[Callable[[], list]] = None) -> None:
        prometheus_client, _ = _prometheus()
        self._client = prometheus_client
        self.registry = prometheus_client.CollectorRegistry(auto_describe=False)
        self.registry.register(_StatsCollector(stats, source_stats, extra or list))
        self.inference = prometheus_client.Histogram(
            "edgedet_inference_latency_seconds", "interpreter invoke time per frame",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.stage = prometheus_client.Histogram(
            "edgedet_stage_latency_seconds", "time per frame in each pipeline stage", ["stage"],
            buckets=LATENCY_BUCKETS, registry=self.registry)

    def observe(self, result: Result) -> None:
        for stage, ms in (result.timings or {}).items():
            if ms is None:
                continue
            seconds = float(ms) / 1000.0
            self.stage.labels(stage=str(stage)).observe(seconds)
            if stage == "invoke":
                self.inference.observe(seconds)

    def render(self) -> bytes:
        return self._client.generate_latest(self.registry)
