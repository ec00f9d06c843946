"""Feeding a child process through its stdin pipe without ever blocking for long.

The encoders (``ffmpeg`` for recordings and RTSP out, the GStreamer RTSP server of
``--rtsp-serve``) read raw frames on a pipe that ``feed`` makes non-blocking. ``write_all`` writes
whole frames with a deadline, wakes at least every ``POLL`` seconds to notice a stop or a dead
reader, and says why it gave up with one of three exceptions; each sink turns them into its own
error, with the child's own last words. ``end_process`` ends a child the gentle way first: end of
input, then SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import os
import select
import subprocess
import threading
import time
from typing import Optional, Sequence, Union

POLL = 0.1
F_SETPIPE_SZ = 1031  # fcntl(2), Linux


class PipeError(Exception):
    """The frame was not written whole."""


class PipeClosed(PipeError):
    """The child exited or closed its end."""


class PipeStalled(PipeError):
    """The child took nothing for the whole timeout."""


class PipeCancelled(PipeError):
    """``cancel`` was set while waiting."""


def feed(proc: subprocess.Popen, pipe_size: int = 0) -> None:
    """Make ``proc``'s stdin ready for ``write_all``: non-blocking, and ``pipe_size`` bytes deep when
    given (Linux; fewer wake-ups per large frame; the default size where refused)."""
    fd = proc.stdin.fileno()
    if pipe_size:
        try:
            import fcntl

            fcntl.fcntl(fd, F_SETPIPE_SZ, pipe_size)
        except (ImportError, OSError):
            pass  # not Linux, or above /proc/sys/fs/pipe-max-size
    os.set_blocking(fd, False)


def write_all(proc: subprocess.Popen, parts: Sequence[Union[bytes, memoryview]], timeout: float,
              cancel: Optional[threading.Event] = None) -> None:
    """Write every byte of ``parts`` to ``proc``'s non-blocking stdin within ``timeout`` seconds."""
    fd = proc.stdin.fileno()
    deadline = time.monotonic() + timeout
    for part in parts:
        view = memoryview(part).cast("B")
        offset = 0
        while offset < len(view):
            if cancel is not None and cancel.is_set():
                raise PipeCancelled()
            left = deadline - time.monotonic()
            if left <= 0:
                raise PipeStalled()
            _, writable, _ = select.select([], [fd], [], min(left, POLL))
            if not writable:
                if proc.poll() is not None:
                    raise PipeClosed()
                continue
            try:
                offset += os.write(fd, view[offset:])
            except BlockingIOError:
                continue
            except OSError:  # broken pipe: the reader is gone
                raise PipeClosed() from None


def end_process(proc: subprocess.Popen, wait: float) -> None:
    """Close ``proc``'s stdin (a child that reads it to the end finishes by itself), then terminate,
    then kill, waiting up to ``wait`` seconds after each step."""
    try:
        proc.stdin.close()
    except OSError:
        pass
    for end in (None, proc.terminate, proc.kill):
        if end is not None:
            end()
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
