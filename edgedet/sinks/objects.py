"""Object events: one JSON line per ``new`` / ``update`` / ``end`` of a tracked object, and snapshots.

``--object-events FILE`` writes each event as it happens (JSON Lines, one ``write`` per line, so
a killed run loses no reported line; at the end of the run, Ctrl-C or SIGTERM included, every
object still alive gets its ``end``)::

    {"type": "end", "t": 31.4, "id": 7, "label": "person", "class_id": 0, "first_seen": 12.1,
     "last_seen": 26.4, "duration": 14.3, "score": 0.71, "top_score": 0.93, "box": [x1, y1, x2, y2],
     "zones": ["door"], "current_zones": [], "has_snapshot": true, "source": "0",
     "snapshot": "snapshots/person-7-....jpg"}

Times (``t``, ``first_seen``, ``last_seen``) are seconds of the video for files and Unix times
for live sources; boxes are pixels of the frame.

``--snapshots DIR`` saves the best picture of each object (the crop at its top score, see
``tracking.snapshot``) as ``DIR/<label>-<id>-<run start>.jpg`` when the object ends; the event
line names it. The path ``-`` writes the events to standard output.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional, Sequence

from ..errors import SinkError
from ..frame import Result
from ..tracking import ObjectEvent
from .base import BaseSink
from .events import EventsSink

__all__ = ["ObjectEventsSink", "SnapshotWriter", "object_record"]


def object_record(event: ObjectEvent, source: str = "0", snapshot: Optional[str] = None) -> dict:
    record = event.to_record()
    record["source"] = source
    if snapshot is not None:
        record["snapshot"] = snapshot
    return record


class SnapshotWriter:
    """Writes each ended object's best snapshot as a JPEG in ``directory``; returns its path."""

    def __init__(self, directory: str, quality: int = 90) -> None:
        self.directory = Path(directory)
        self.quality = int(quality)
        self.written = 0
        self._stamp = time.strftime("%Y%m%d-%H%M%S")

    def open(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"cannot create snapshot directory {self.directory}: {exc.strerror or exc}") from None
        if not self.directory.is_dir():
            raise SinkError(f"snapshot directory {self.directory} is not a directory")

    def save(self, event: ObjectEvent) -> Optional[str]:
        if event.kind != "end" or event.snapshot is None:
            return None
        label = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in event.label) or "object"
        path = self.directory / f"{label}-{event.track_id}-{self._stamp}.jpg"
        tmp = path.with_suffix(".jpg.part")
        try:
            tmp.write_bytes(event.snapshot.jpeg(self.quality))
            tmp.replace(path)  # a snapshot file is always whole
        except OSError as exc:
            raise SinkError(f"cannot write snapshot {path}: {exc.strerror or exc}") from None
        self.written += 1
        return str(path)


class ObjectEventsSink(BaseSink):
    """Object events as JSON Lines (``path``, may be None: snapshots only) and snapshots (``snapshots``)."""

    needs_annotated = False
    reads_frame = False

    def __init__(self, path: Optional[str], snapshots: Optional[str] = None, *, append: bool = False) -> None:
        self.lines: Optional[EventsSink] = EventsSink(path, append=append) if path else None
        self.snapshots = SnapshotWriter(snapshots) if snapshots else None
        self.counts = {"new": 0, "update": 0, "end": 0}
        self._source = "0"

    def open(self) -> None:
        if self.snapshots is not None:
            self.snapshots.open()
        if self.lines is not None:
            self.lines.open()

    def write(self, result: Result) -> None:
        self._source = result.frame.source_id  # events come through on_objects

    def on_objects(self, events: Sequence[ObjectEvent]) -> None:
        for event in events:
            path = self.snapshots.save(event) if self.snapshots is not None else None
            self.counts[event.kind] = self.counts.get(event.kind, 0) + 1
            if self.lines is not None:
                record = object_record(event, self._source, path)
                self.lines.write_line(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self.lines is not None:
            self.lines.close()
