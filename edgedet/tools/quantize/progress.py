"""Progress of the long phases of a quantization: a bar per phase on a terminal (tqdm, from the
extras), plain lines otherwise (a line when a phase starts and one when it ends, with its time)."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional


@contextmanager
def phase(desc: str, total: int, log: Optional[Callable[[str], None]] = None) -> Iterator[Callable[[], None]]:
    """Yield a function to call once per unit of work done (``total`` units) in the phase ``desc``."""
    bar = None
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm

            bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, leave=False)
        except ImportError:
            bar = None
    t0 = time.perf_counter()
    if bar is None and log is not None:
        log(f"{desc} ({total} images)")
    try:
        yield (lambda: bar.update(1)) if bar is not None else (lambda: None)
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log(f"{desc}: {time.perf_counter() - t0:.1f} s")
