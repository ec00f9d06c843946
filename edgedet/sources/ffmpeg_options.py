"""OpenCV's FFmpeg captures take their options from one process-wide environment variable.

``OPENCV_FFMPEG_CAPTURE_OPTIONS`` (``key;value|key;value``) is read when a capture opens. Users set
it for their cameras (``rtsp_transport;tcp``, ``fflags;nobuffer`` for low delay), and network
sources set their own; but options meant for a live stream break files (with ``fflags;nobuffer``
a video file loses frames: 545 of 795 read, the first one wrong). ``capture_options`` sets the
variable for the opening of one capture, under a lock, and puts the user's value back after.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_LOCK = threading.Lock()


@contextmanager
def capture_options(options: Optional[str]) -> Iterator[None]:
    """Captures opened in this block get exactly ``options`` (None or "": none)."""
    with _LOCK:
        old = os.environ.get(ENV)
        if options:
            os.environ[ENV] = options
        else:
            os.environ.pop(ENV, None)
        try:
            yield
        finally:
            if old is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = old
