"""Hand-offs between pipeline stages.

``LatestSlot`` keeps only the newest value (live sources: a slow stage always gets the freshest
frame) and counts every value it overwrote. ``BoundedQueue`` keeps every value and makes the
producer wait when it is full (files, ``--no-drop``). Both share one interface::

    slot.put(item)        # False once the slot is closed or aborted (the item was not taken)
    slot.get(timeout)     # the next item; raises Closed when closed and empty, or aborted
    slot.close()          # graceful end: the consumer still gets what is in it, then Closed
    slot.abort()          # immediate end: waiting producers and consumers return at once

A closed slot makes ``put`` return False; counters (``puts``, ``gets``, ``dropped``) are plain
ints read without a lock (a momentary off-by-one in a stats report is fine).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Deque, Generic, Optional, TypeVar

T = TypeVar("T")


class Closed(Exception):
    """The slot was closed (and is empty) or aborted: the producer is done."""


class _Handoff(Generic[T]):
    def __init__(self, name: str) -> None:
        self.name = name
        self.puts = 0
        self.gets = 0
        self.dropped = 0
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._aborted = False

    @property
    def closed(self) -> bool:
        return self._closed or self._aborted

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._clear()
            self._cond.notify_all()

    def _clear(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __len__(self) -> int:  # pragma: no cover - overridden
        raise NotImplementedError


class LatestSlot(_Handoff[T]):
    """A single-value hand-off: ``put`` never blocks and replaces an unread value (counted)."""

    def __init__(self, name: str = "slot") -> None:
        super().__init__(name)
        self._value: Optional[T] = None
        self._full = False

    def __len__(self) -> int:
        return int(self._full)

    def _clear(self) -> None:
        self._value = None
        self._full = False

    def put(self, item: T) -> bool:
        with self._cond:
            if self._closed or self._aborted:
                return False
            if self._full:
                self.dropped += 1
            self._value = item
            self._full = True
            self.puts += 1
            self._cond.notify()
            return True

    def get(self, timeout: Optional[float] = None) -> T:
        """The newest value; raises ``Closed``, or ``TimeoutError`` after ``timeout`` seconds."""
        with self._cond:
            while not self._full:
                if self._aborted or self._closed:
                    raise Closed(self.name)
                if not self._cond.wait(timeout):
                    raise TimeoutError(self.name)
            if self._aborted:
                raise Closed(self.name)
            item = self._value
            self._value = None
            self._full = False
            self.gets += 1
            return item  # type: ignore[return-value]


class BoundedQueue(_Handoff[T]):
    """A FIFO of at most ``maxsize`` values: ``put`` waits for room, nothing is ever dropped."""

    def __init__(self, name: str = "queue", maxsize: int = 2) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        super().__init__(name)
        self.maxsize = maxsize
        self._items: Deque[T] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def _clear(self) -> None:
        self._items.clear()

    def put(self, item: T, timeout: Optional[float] = None) -> bool:
        """Append ``item``; waits while full. False if the queue is closed/aborted or on timeout."""
        with self._cond:
            while len(self._items) >= self.maxsize and not (self._closed or self._aborted):
                if not self._cond.wait(timeout):
                    return False
            if self._closed or self._aborted:
                return False
            self._items.append(item)
            self.puts += 1
            self._cond.notify_all()
            return True

    def get(self, timeout: Optional[float] = None) -> T:
        with self._cond:
            while not self._items:
                if self._aborted or self._closed:
                    raise Closed(self.name)
                if not self._cond.wait(timeout):
                    raise TimeoutError(self.name)
            item = self._items.popleft()
            self.gets += 1
            self._cond.notify_all()
            return item


def make_handoff(name: str, drop: bool, maxsize: int = 2) -> LatestSlot | BoundedQueue:
    """A ``LatestSlot`` when frames may be dropped, else a ``BoundedQueue`` of ``maxsize``."""
    return LatestSlot(name) if drop else BoundedQueue(name, maxsize)
