"""Outputs of a run and the factory that builds them from the configuration.

``build_sinks(cfg, ctx)`` returns the sinks (not yet opened) in this order: window, recorder,
events, RTSP out, HTTP, MQTT. A window is built only when a display exists (``--headless``
never builds one; without a display a one-line notice is logged and the run carries on).
"""

from __future__ import annotations

import logging

from ..config import Config
from .base import BaseSink, Sink, SinkContext

__all__ = ["Sink", "BaseSink", "SinkContext", "build_sinks", "source_is_live"]

log = logging.getLogger("edgedet.sinks")


def source_is_live(cfg: Config) -> bool:
    """True when the configured source is a camera, a stream or a file paced with ``--realtime``."""
    src = cfg.source
    if src.camera is not None or src.realtime:
        return True
    uri = str(src.uri or "")
    return uri.isdigit() or "://" in uri or uri.startswith("/dev/video") or uri.lower().startswith("picamera")


def build_sinks(cfg: Config, ctx: SinkContext) -> list[Sink]:
    out = cfg.output
    sinks: list[Sink] = []
    if not out.headless:
        from .window import WindowSink, display_problem

        problem = display_problem()
        if problem is None:
            sinks.append(WindowSink(title=f"edgedet - {ctx.source_name}" if ctx.source_name else "edgedet"))
        else:
            log.info("%s: running headless (--headless hides this notice)", problem)
    if out.record:
        from .recorder import RecorderSink

        sinks.append(RecorderSink(out.record, fps=out.record_fps, encoder=out.encoder,
                                  timed=source_is_live(cfg), context=ctx))
    if out.events:
        from .events import EventsSink

        sinks.append(EventsSink(out.events))
    if cfg.rtsp_out.url is not None:
        from .rtsp_out import RtspOutSink

        sinks.append(RtspOutSink(cfg.rtsp_out, cfg.output, ctx))
    if cfg.http.listen is not None:
        from .http import HttpSink

        sinks.append(HttpSink(cfg.http, ctx))
    if cfg.mqtt.host is not None:
        from .mqtt import MqttSink

        sinks.append(MqttSink(cfg.mqtt, ctx))
    return sinks
