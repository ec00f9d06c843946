"""One BLAS thread while quantizing.

The statistics here multiply small matrices (input patches ``[2048, 27]`` into ``[27, 27]``
moments, per image and layer). NumPy's OpenBLAS splits even those over its threads; on a busy
machine each such product then waits for a second core: 85 ms instead of 0.9 ms measured on a
loaded 2-core machine, with the same result (OpenBLAS splits the rows and columns of the
output, never a dot product, so the values do not depend on the thread count).
"""

from __future__ import annotations

import ctypes
import glob
import os
from contextlib import contextmanager
from typing import Iterator, Optional

_PREFIXES = ("scipy_openblas_", "openblas_")
_SUFFIXES = ("64_", "")


def openblas_thread_control():
    """NumPy's bundled OpenBLAS (its thread setter and getter), or None."""
    import numpy as np

    base = os.path.dirname(np.__file__)
    for path in sorted(glob.glob(os.path.join(base, "..", "numpy.libs", "*openblas*"))
                       + glob.glob(os.path.join(base, ".libs", "*openblas*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in _PREFIXES:
            for suffix in _SUFFIXES:
                setter = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
                getter = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    return setter, getter
    return None


@contextmanager
def single_blas_thread() -> Iterator[None]:
    """Run the body with one OpenBLAS thread, then restore the count (a no-op without OpenBLAS)."""
    found: Optional[tuple] = openblas_thread_control()
    if found is None:
        yield
        return
    setter, getter = found
    before = int(getter())
    setter(1)
    try:
        yield
    finally:
        setter(before)
