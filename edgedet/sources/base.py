"""The Source protocol: cameras, files, image folders, network streams, the Pi camera."""

from __future__ import annotations

from typing import Optional, Protocol, runtime_checkable

from ..frame import Frame


@runtime_checkable
class Source(Protocol):
    """A producer of frames, used as a context manager.

    ``open`` raises ``SourceError`` naming the source (credentials masked) if it cannot be opened.
    ``read`` blocks until the next frame and returns it, or ``None`` at the end of input (a live
    source that loses its stream reconnects inside ``read`` and never returns ``None`` for that).
    ``live`` is True for cameras and network streams (frames arrive in real time); a run takes its
    drop policy from ``resolve_source`` (the same answer, decided before the source is built).
    ``fps`` is the nominal frame rate (0.0 if unknown); ``name`` is safe to print.
    ``stats()`` returns source-specific counters (e.g. connected, reconnects_total).
    """

    live: bool
    fps: float
    name: str

    def open(self) -> None: ...

    def read(self) -> Optional[Frame]: ...

    def close(self) -> None: ...

    def stats(self) -> dict: ...
