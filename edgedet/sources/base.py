"""The Source protocol: cameras, files, image folders, network streams, the Pi camera."""

from __future__ import annotations

from typing import Optional, Protocol, TypeVar, runtime_checkable

from ..frame import Frame

S = TypeVar("S", bound="BaseSource")


@runtime_checkable
class Source(Protocol):
    """A producer of frames, used as a context manager.

    ``open`` raises ``SourceError`` naming the source (credentials masked) if it cannot be opened.
    ``read`` blocks until the next frame and returns it, or ``None`` at the end of input (a live
    source that loses its stream reconnects inside ``read`` and never returns ``None`` for that).
    ``interrupt`` ends the waiting: a ``read`` in progress returns ``None`` soon and later ones at
    once, until the next ``open``; it is safe from any thread and from a signal handler, and
    ``close`` still releases the device. The pipeline calls it when it stops.
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

    def interrupt(self) -> None: ...

    def close(self) -> None: ...

    def stats(self) -> dict: ...


class BaseSource:
    """Convenience base: context manager around ``open``/``close``; ``interrupt`` does nothing
    (right for a source whose ``read`` never waits long); no counters."""

    live = False
    fps = 0.0
    name = ""

    def open(self) -> None:  # pragma: no cover - trivial
        pass

    def read(self) -> Optional[Frame]:  # pragma: no cover - trivial
        return None

    def interrupt(self) -> None:
        pass

    def close(self) -> None:  # pragma: no cover - trivial
        pass

    def stats(self) -> dict:
        return {}

    def __enter__(self: S) -> S:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()
