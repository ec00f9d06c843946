"""Detection events: one JSON object per processed frame (JSON Lines), flushed per line.

Each line::

    {"frame": 12, "source": "0", "time": "2026-11-22T03:04:05.123456+00:00", "epoch": 1795316645.123456,
     "width": 480, "height": 360,
     "detections": [{"label": "person", "class_id": 0, "score": 0.87, "box": [x1, y1, x2, y2]}]}

``time``/``epoch`` are the capture time of the frame (wall clock); boxes are pixels of the frame.
The path ``-`` writes to standard output. The file always ends on a complete line, even when the
disk fills up (see ``EventsSink``).
"""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

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
    """JSON Lines file written whole line by whole line.

    Each line goes out in one ``write`` system call (no user-space buffer: a killed run loses no
    line it reported). A write that fails (a full disk, a device error) cuts the file back to its
    last complete line and raises one ``SinkError`` naming the file and the cause. Appending to a
    file whose last line was cut (a power cut) first removes that partial line.
    """

    needs_annotated = False
    reads_frame = False

    def __init__(self, path: str, *, append: bool = False) -> None:
        self.path = path
        self.append = append
        self.lines = 0
        self._fd: Optional[int] = None
        self._end = 0  # bytes of complete lines in the file
        self._stdout = False

    def open(self) -> None:
        if self._fd is not None or self._stdout:
            return
        if self.path == "-":
            self._stdout = True
            return
        path = Path(self.path)
        if path.is_dir():
            raise SinkError(f"events file {path} is a directory")
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if self.append else os.O_TRUNC)
        try:
            self._fd = os.open(path, flags, 0o644)
            self._end = os.lseek(self._fd, 0, os.SEEK_END)
            if self._end:
                self._end = _complete_length(path, self._end)
                os.ftruncate(self._fd, self._end)
        except OSError as exc:
            self._close_fd()
            raise SinkError(f"cannot write events file {path}: {exc.strerror or exc}") from exc

    def write(self, result: Result) -> None:
        self.write_line(json.dumps(event_record(result), separators=(",", ":")) + "\n")

    def write_line(self, line: str) -> None:
        """One complete line (ending in a newline), written whole."""
        if self._fd is None and not self._stdout:
            self.open()
        if self._stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
        else:
            self._write_line(line.encode("utf-8"))
        self.lines += 1

    def _write_line(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            try:
                os.ftruncate(self._fd, self._end)  # no cut line: back to the last complete one
            except OSError:
                pass
            self._close_fd()
            raise SinkError(f"cannot write events file {self.path}: {exc.strerror or exc}") from None
        self._end += len(data)

    def _close_fd(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def close(self) -> None:
        if self._stdout:
            sys.stdout.flush()
            self._stdout = False
        self._close_fd()


def _complete_length(path: Path, size: int) -> int:
    """Bytes of ``path`` up to and including its last newline (``size`` if it ends with one)."""
    with open(path, "rb") as fh:
        pos = size
        while pos > 0:
            start = max(0, pos - 65536)
            fh.seek(start)
            chunk = fh.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                return start + nl + 1
            pos = start
    return 0
