"""Detection events: one JSON object per processed frame (JSON Lines), flushed per line.

Each line::

    {"frame": 12, "source": "0", "time": "2026-11-22T03:04:05.123456+00:00", "epoch": 1795316645.123456,
     "width": 480, "height": 360,
     "detections": [{"label": "person", "class_id": 0, "score": 0.87, "box": [x1, y1, x2, y2]}]}

``time``/``epoch`` are the capture time of the frame (wall clock); boxes are pixels of the frame.
The path ``-`` writes to standard output.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Optional

from ..errors import SinkError
from ..frame import Result
from .base import BaseSink


def event_record(result: Result) -> dict:
    frame = result.frame
    return {
        "frame": int(frame.index),
        "source": frame.source_id,
        "time": datetime.fromtimestamp(frame.wall_time, timezone.utc).isoformat(timespec="microseconds"),
        "epoch": round(float(frame.wall_time), 6),
        "width": frame.width,
        "height": frame.height,
        "detections": result.detections.to_records(result.labels),
    }


class EventsSink(BaseSink):
    needs_annotated = False
    reads_frame = False

    def __init__(self, path: str, *, append: bool = False) -> None:
        self.path = path
        self.append = append
        self.lines = 0
        self._fh: Optional[IO[str]] = None
        self._own = False

    def open(self) -> None:
        if self._fh is not None:
            return
        if self.path == "-":
            self._fh, self._own = sys.stdout, False
            return
        path = Path(self.path)
        if path.is_dir():
            raise SinkError(f"events file {path} is a directory")
        try:
            self._fh = open(path, "a" if self.append else "w", encoding="utf-8", buffering=1)
        except OSError as exc:
            raise SinkError(f"cannot write events file {path}: {exc.strerror or exc}") from exc
        self._own = True

    def write(self, result: Result) -> None:
        if self._fh is None:
            self.open()
        assert self._fh is not None
        self._fh.write(json.dumps(event_record(result), separators=(",", ":")) + "\n")
        self._fh.flush()
        self.lines += 1

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.flush()
                if self._own:
                    self._fh.close()
            finally:
                self._fh = None
