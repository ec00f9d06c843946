"""A desktop window showing the annotated video (``q``, Esc or closing the window stops the run).

Only where a display exists: ``DISPLAY`` or ``WAYLAND_DISPLAY`` is set and OpenCV was built
with a GUI (``opencv-python``, not ``opencv-python-headless``). ``display_problem()`` says why
not, in one line, so the caller can log it and carry on headless.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Optional

import cv2
import numpy as np

from ..errors import SinkError
from ..frame import Result
from .base import BaseSink


class StopRequested(Exception):
    """Raised by a sink's ``write`` when the user asked to stop (window closed, ``q`` pressed)."""


def opencv_has_gui() -> bool:
    info = cv2.getBuildInformation()
    m = re.search(r"^\s*GUI:\s*(\S+)", info, re.MULTILINE)
    return bool(m) and m.group(1).upper() != "NONE"


def display_problem() -> Optional[str]:
    """None when a window can be shown, else the reason it cannot."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY/WAYLAND_DISPLAY not set)"
    if not opencv_has_gui():
        return "OpenCV has no GUI support (opencv-python-headless is installed; install opencv-python for a window)"
    return None


class WindowSink(BaseSink):
    """Shows the newest annotated frame.

    GUI toolkits want their windows driven from the main thread: ``write`` (output thread) only
    hands the image over; ``poll`` (called by the pipeline from the main thread every few ms)
    shows it and handles keys. ``poll`` returns False once the user asked to stop. Used on its
    own (no pipeline), call ``poll`` after ``write``.
    """

    needs_annotated = True
    reads_frame = False

    def __init__(self, title: str = "edgedet") -> None:
        self.title = title
        self._open = False
        self._lock = threading.Lock()
        self._pending: Optional[np.ndarray] = None
        self.shown = 0

    def open(self) -> None:
        problem = display_problem()
        if problem:
            raise SinkError(f"cannot open a window: {problem}")
        try:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL | getattr(cv2, "WINDOW_KEEPRATIO", 0))
        except cv2.error as exc:
            raise SinkError(f"cannot open a window: {str(exc).strip().splitlines()[-1]}") from exc
        self._open = True

    def write(self, result: Result) -> None:
        image = result.annotated if result.annotated is not None else result.frame.image
        with self._lock:
            self._pending = image

    def poll(self) -> bool:
        """Show the newest image (main thread); False when the window was closed or q/Esc pressed."""
        if not self._open:
            return True
        with self._lock:
            image, self._pending = self._pending, None
        if image is not None:
            cv2.imshow(self.title, image)
            self.shown += 1
        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27):
            return False
        return self.shown == 0 or cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1

    def close(self) -> None:
        if self._open:
            try:
                cv2.destroyWindow(self.title)
                cv2.waitKey(1)
            except cv2.error:
                pass
            self._open = False
