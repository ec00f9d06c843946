"""Prometheus metrics of a run, in their own ``CollectorRegistry`` (never the global one).

Counters and gauges are read from the pipeline's own stats snapshot (``edgedet.stats``) and the
source's counters at scrape time, so ``/metrics`` always matches ``/stats`` and the final report::

    edgedet_frames_captured_total            frames.captured
    edgedet_frames_processed_total           frames.processed
    edgedet_frames_output_total              frames.output
    edgedet_frames_dropped_total             dropped.total
    edgedet_frames_dropped_at_total{slot}    dropped.<slot>
    edgedet_fps{kind="in|processed|out"}     fps_recent.* (the last few seconds; or rate() the counters)
    edgedet_fps_average{kind=...}            fps.* (averages over the whole run)
    edgedet_uptime_seconds                   elapsed_s
    edgedet_source_connected                 source.connected (1 when the source has no such notion)
    edgedet_source_reconnects_total          source.reconnects_total
    edgedet_source_last_frame_age_seconds    source.last_frame_age_s

With tracking (``/stats`` ``pipeline.tracking``), and zones or lines in the configuration::

    edgedet_objects_alive                    tracking.alive (objects being tracked now)
    edgedet_zone_occupancy{zone}             objects in the zone now (sum of tracking.zones.<zone>)
    edgedet_zone_objects{zone,label}         of them, those of a label
    edgedet_line_crossings_total{line,direction="in|out"}   tracking.lines.<line>.in / .out

Objects are counted from the object events the sink receives (``observe_objects``)::

    edgedet_objects_total{label}             objects seen (``new`` events) since the start

Latencies are histograms observed from each result's timings (milliseconds -> seconds)::

    edgedet_inference_latency_seconds        timings["invoke"]
    edgedet_stage_latency_seconds{stage}     every timing of the result (capture, preprocess, ...)

Other sinks of the same run add their own gauges/counters (e.g. MQTT queue drops) to the run's
``SinkContext.metrics``: ``fn() -> {name: (kind, help, value)}``, read at scrape time.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from ..errors import SinkError
from ..frame import Result
from ..tracking import ObjectEvent

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _prometheus():
    try:
        import prometheus_client  # noqa: F401
        from prometheus_client import core
    except ImportError:
        raise SinkError("the metrics endpoint needs prometheus-client: pip install prometheus-client") from None
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
        for name, key, help_text in (("edgedet_fps", "fps_recent", "frames per second, last few seconds"),
                                     ("edgedet_fps_average", "fps", "frames per second, whole run")):
            rates = snap.get(key) or {}
            if rates:
                g = core.GaugeMetricFamily(name, help_text, labels=["kind"])
                for kind, value in rates.items():
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
        yield from _tracking_families(core, snap.get("tracking"))
        for fn in self.extra():
            for name, (kind, help_text, value) in _safe(fn).items():
                family = core.CounterMetricFamily if kind == "counter" else core.GaugeMetricFamily
                yield family(name, help_text, value=float(value))


def _tracking_families(core, tracking) -> list:
    """The tracking figures of a stats snapshot: objects alive, zone occupancy, line crossings."""
    if not isinstance(tracking, dict):
        return []
    out = []
    if "alive" in tracking:
        out.append(core.GaugeMetricFamily("edgedet_objects_alive", "objects being tracked now",
                                          value=float(tracking["alive"])))
    zones = tracking.get("zones") or {}
    if zones:
        total = core.GaugeMetricFamily("edgedet_zone_occupancy", "objects in a zone now", labels=["zone"])
        per = core.GaugeMetricFamily("edgedet_zone_objects", "objects of a label in a zone now",
                                     labels=["zone", "label"])
        for zone, by_label in zones.items():
            total.add_metric([str(zone)], float(sum(by_label.values())))
            for label, n in by_label.items():
                per.add_metric([str(zone), str(label)], float(n))
        out += [total, per]
    lines = tracking.get("lines") or {}
    if lines:
        crossings = core.CounterMetricFamily("edgedet_line_crossings", "objects that crossed a line",
                                             labels=["line", "direction"])
        for line, counts in lines.items():
            for direction in ("in", "out"):
                crossings.add_metric([str(line), direction], float(counts.get(direction, 0)))
        out.append(crossings)
    return out


class _ObjectsCollector:
    """``edgedet_objects_total{label}`` from the counts ``Metrics.observe_objects`` keeps."""

    def __init__(self, counts: dict) -> None:
        self.counts = counts

    def describe(self):
        return []

    def collect(self):
        if not self.counts:  # no object yet, or tracking off
            return
        _, core = _prometheus()
        family = core.CounterMetricFamily("edgedet_objects", "objects seen (confirmed tracks) since the start",
                                          labels=["label"])
        for label, n in list(self.counts.items()):
            family.add_metric([label], float(n))
        yield family


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
        self._objects: dict[str, int] = {}  # label -> objects seen (``new`` events)
        self.registry.register(_ObjectsCollector(self._objects))

    def observe_objects(self, events: Sequence[ObjectEvent]) -> None:
        for event in events:
            if event.kind == "new":
                label = str(event.label)
                self._objects[label] = self._objects.get(label, 0) + 1

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
