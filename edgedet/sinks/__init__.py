"""Outputs of a run, chosen from one table: ``SINKS``.

Each entry says when the sink is wanted (``enabled(cfg)``) and builds it (``factory(cfg, ctx)``,
which imports the sink's module only then, and may return None: a window without a display).
``build_sinks(cfg, ctx)`` returns the enabled sinks (not yet opened) in table order::

    window     unless --headless (without a display: a one-line notice, the run carries on)
    recorder   --record FILE
    events     --events FILE
    objects    --object-events FILE, --snapshots DIR
    rtsp_out   --rtsp-out URL
    rtsp_serve --rtsp-serve [HOST:]PORT/PATH
    http       --http [HOST]:PORT
    mqtt       --mqtt HOST[:PORT]

A new output is one module with its ``Sink`` and one entry here. Sinks of one run share the
``SinkContext`` (labels, source, live stats, the metrics they add to ``/metrics``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

from ..config import Config
from .base import BaseSink, Providers, Sink, SinkContext

__all__ = ["SINKS", "BaseSink", "Providers", "Sink", "SinkContext", "SinkEntry", "build_sinks"]

log = logging.getLogger("edgedet.sinks")


@dataclass(frozen=True)
class SinkEntry:
    name: str
    enabled: Callable[[Config], bool]
    factory: Callable[[Config, SinkContext], Optional[Sink]]


def _window(cfg: Config, ctx: SinkContext) -> Optional[Sink]:
    from .window import WindowSink, display_problem

    problem = display_problem()
    if problem is not None:
        log.info("%s: running headless (--headless hides this notice)", problem)
        return None
    return WindowSink(title=f"edgedet - {ctx.source_name}" if ctx.source_name else "edgedet")


def _recorder(cfg: Config, ctx: SinkContext) -> Sink:
    from .recorder import RecorderSink

    out = cfg.output
    return RecorderSink(out.record, fps=out.record_fps, encoder=out.encoder, timed=ctx.live, context=ctx,
                        segment=out.record_segment, keep=out.record_keep)


def _events(cfg: Config, ctx: SinkContext) -> Sink:
    from .events import EventsSink

    return EventsSink(cfg.output.events)


def _objects(cfg: Config, ctx: SinkContext) -> Sink:
    from .objects import ObjectEventsSink

    return ObjectEventsSink(cfg.output.object_events, cfg.output.snapshots)


def _rtsp_out(cfg: Config, ctx: SinkContext) -> Sink:
    from .rtsp_out import RtspOutSink

    return RtspOutSink(cfg.rtsp_out, cfg.output, ctx)


def _rtsp_serve(cfg: Config, ctx: SinkContext) -> Sink:
    from .rtsp_serve import RtspServeSink

    return RtspServeSink(cfg.rtsp_out, cfg.http, cfg.output, ctx)


def _http(cfg: Config, ctx: SinkContext) -> Sink:
    from .http import HttpSink

    return HttpSink(cfg.http, ctx)


def _mqtt(cfg: Config, ctx: SinkContext) -> Sink:
    from .mqtt import MqttSink

    return MqttSink(cfg.mqtt, ctx)


SINKS: tuple[SinkEntry, ...] = (
    SinkEntry("window", lambda cfg: not cfg.output.headless, _window),
    SinkEntry("recorder", lambda cfg: bool(cfg.output.record), _recorder),
    SinkEntry("events", lambda cfg: bool(cfg.output.events), _events),
    SinkEntry("objects", lambda cfg: bool(cfg.output.object_events or cfg.output.snapshots), _objects),
    SinkEntry("rtsp_out", lambda cfg: cfg.rtsp_out.url is not None, _rtsp_out),
    SinkEntry("rtsp_serve", lambda cfg: cfg.rtsp_out.serve is not None, _rtsp_serve),
    SinkEntry("http", lambda cfg: cfg.http.listen is not None, _http),
    SinkEntry("mqtt", lambda cfg: cfg.mqtt.host is not None, _mqtt),
)


def build_sinks(cfg: Config, ctx: SinkContext) -> list[Sink]:
    """The enabled sinks of ``SINKS``, built in table order (``ctx.live`` tells the recorder to
    keep real time)."""
    sinks = (entry.factory(cfg, ctx) for entry in SINKS if entry.enabled(cfg))
    return [sink for sink in sinks if sink is not None]
