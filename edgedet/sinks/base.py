"""The Sink protocol: every output (window, recorder, events, RTSP out, HTTP, MQTT)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, runtime_checkable

from ..frame import Result

MetricsProvider = Callable[[], dict]  # () -> {metric name: (kind "counter"|"gauge", help, value)}


class MetricsProviders:
    """The metrics sinks add to the run's ``/metrics`` (e.g. the MQTT queue): a sink ``add``s its
    provider when it opens and ``remove``s it when it closes; the metrics endpoint calls every
    provider at each scrape. Thread-safe."""

    def __init__(self) -> None:
        self._providers: list[MetricsProvider] = []
        self._lock = threading.Lock()

    def add(self, provider: MetricsProvider) -> None:
        with self._lock:
            self._providers.append(provider)

    def remove(self, provider: MetricsProvider) -> None:
        with self._lock:
            if provider in self._providers:
                self._providers.remove(provider)

    def __call__(self) -> list[MetricsProvider]:
        with self._lock:
            return list(self._providers)


@dataclass
class SinkContext:
    """What the sinks of one run share and may know about it when they are built (before the first frame).

    ``stats`` returns the pipeline's live stats snapshot (see ``edgedet.stats``), ``source_stats``
    the source's own counters (connected, reconnects_total, ...). ``live``: the source delivers in
    real time (frames may be dropped). ``metrics`` collects what sinks add to ``/metrics``. Frame
    size is only known at the first ``write``: sinks that need it (recorder, RTSP out) open lazily there.
    """

    labels: list[str] = field(default_factory=list)
    source_name: str = ""
    source_fps: float = 0.0
    model_name: str = ""
    stats: Callable[[], dict] = dict
    source_stats: Callable[[], dict] = dict
    device: Optional[str] = None
    live: bool = False
    metrics: MetricsProviders = field(default_factory=MetricsProviders)


@runtime_checkable
class Sink(Protocol):
    """A consumer of results. ``open`` may raise ``SinkError`` (a one-line user error).

    ``write`` is called from the output thread for every processed result, in order; it must not
    block for long (network sinks hand off to their own thread and keep only what they must).
    ``close`` flushes and finalizes (playable video, complete events file) and is idempotent.
    ``needs_annotated`` tells the pipeline to draw the overlay once for this sink.
    ``reads_frame`` (optional, default True) says the sink reads ``result.frame.image`` itself;
    when no sink does, the overlay is drawn straight onto the frame (no copy of the picture).
    """

    needs_annotated: bool

    def open(self) -> None: ...

    def write(self, result: Result) -> None: ...

    def close(self) -> None: ...


class BaseSink:
    """Convenience base: context manager around ``open``/``close``."""

    needs_annotated = False
    reads_frame = True

    def open(self) -> None:  # pragma: no cover - trivial
        pass

    def write(self, result: Result) -> None:  # pragma: no cover - trivial
        pass

    def close(self) -> None:  # pragma: no cover - trivial
        pass

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
