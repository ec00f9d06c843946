"""The Sink protocol: every output (window, recorder, events, RTSP out, HTTP, MQTT)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, runtime_checkable

from ..frame import Result

MetricsProvider = Callable[[], dict]  # () -> {metric name: (kind "counter"|"gauge", help, value)}
OutputReport = Callable[[], dict]  # () -> {sink name: its counters}


class Providers:
    """Callables that sinks offer to the run's web view while they are open: their metrics for
    ``/metrics`` (e.g. the MQTT queue), their counters for ``/stats`` (e.g. RTSP out failures). A
    sink ``add``s a provider when it opens (again is a no-op) and ``remove``s it when it closes;
    the web view calls every provider at each request. Thread-safe."""

    def __init__(self) -> None:
        self._providers: list[Callable[[], dict]] = []
        self._lock = threading.Lock()

    def add(self, provider: Callable[[], dict]) -> None:
        with self._lock:
            if provider not in self._providers:
                self._providers.append(provider)

    def remove(self, provider: Callable[[], dict]) -> None:
        with self._lock:
            if provider in self._providers:
                self._providers.remove(provider)

    def __call__(self) -> list[Callable[[], dict]]:
        with self._lock:
            return list(self._providers)


@dataclass
class SinkContext:
    """What the sinks of one run share and may know about it when they are built (before the first frame).

    ``stats`` returns the pipeline's live stats snapshot (see ``edgedet.stats``), ``source_stats``
    the source's own counters (connected, reconnects_total, ...). ``live``: the source delivers in
    real time (frames may be dropped). ``metrics`` and ``outputs`` collect what sinks add to
    ``/metrics`` and ``/stats``. Frame
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
    metrics: Providers = field(default_factory=Providers)  # MetricsProvider: for /metrics
    outputs: Providers = field(default_factory=Providers)  # OutputReport: {sink name: counters} for /stats


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
