"""Loading the TFLite interpreter (ai_edge_litert, then tflite_runtime, then tensorflow.lite) from a
file or from model bytes already in memory."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

from ..errors import ModelError

_RUNTIME_CHATTER = ("INFO: Created TensorFlow Lite XNNPACK delegate", "INFO: Initialized TensorFlow Lite runtime")


@contextlib.contextmanager
def native_stderr_filtered(drop_prefixes: tuple[str, ...] = _RUNTIME_CHATTER):
    """Hide the TFLite runtime's start-up notices (printed by C++ straight to fd 2) while a model loads.

    Everything else written to stderr meanwhile is passed on. Used around interpreter creation, so
    one-line errors and piped output stay clean.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests capturing stderr)
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode(errors="replace").splitlines(keepends=True)
                    if not line.startswith(drop_prefixes)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def interpreter_class():
    """Return ``(Interpreter, OpResolverType or None, backend_name)``."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType  # type: ignore

        return Interpreter, OpResolverType, "ai_edge_litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter  # type: ignore

        try:
            from tflite_runtime.interpreter import OpResolverType  # type: ignore
        except ImportError:
            OpResolverType = None
        return Interpreter, OpResolverType, "tflite_runtime"
    except ImportError:
        pass
    try:
        import tensorflow as tf  # type: ignore

        return tf.lite.Interpreter, getattr(tf.lite.experimental, "OpResolverType", None), "tensorflow"
    except ImportError as exc:
        raise ModelError(
            "no TFLite runtime found: pip install ai-edge-litert"
        ) from exc


def default_threads() -> int:
    """Interpreter threads: the number of CPUs this process may use (see ``edgedet.cpu``)."""
    try:
        from ..cpu import default_inference_threads

        return default_inference_threads()
    except ImportError:  # pragma: no cover
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def load_interpreter(path: str | os.PathLike, threads: int | None = None, *, preserve_all_tensors: bool = False,
                     xnnpack: bool = True):
    """Create and allocate an interpreter for ``path``.

    XNNPACK stays on (it is the default delegate); ``preserve_all_tensors=True`` turns it off and
    keeps every intermediate tensor readable (for calibration statistics and pruning; ~4x slower).
    Raises a one-line ``ModelError`` for a missing, non-tflite or unloadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    with open(path, "rb") as fh:
        _check_identifier(fh.read(8), path)
    kwargs = _interpreter_kwargs(threads, preserve_all_tensors, xnnpack)
    return _allocated(dict(kwargs, model_path=str(path)), path)


def load_interpreter_from_bytes(data: bytes, threads: int | None = None, name: str = "model", *,
                                preserve_all_tensors: bool = False, xnnpack: bool = True):
    """Create and allocate an interpreter for the model ``data`` (no file). Interpreters made from
    one ``bytes`` object share it; ``name`` is what errors call the model."""
    _check_identifier(data[:8], name)
    kwargs = _interpreter_kwargs(threads, preserve_all_tensors, xnnpack)
    return _allocated(dict(kwargs, model_content=bytes(data)), name)


def _check_identifier(head: bytes, what) -> None:
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise ModelError(f"not a .tflite model: {what}")


def _interpreter_kwargs(threads: int | None, preserve_all_tensors: bool, xnnpack: bool) -> dict:
    _, OpResolverType, _ = interpreter_class()
    kwargs: dict = {"num_threads": int(threads or default_threads())}
    if (preserve_all_tensors or not xnnpack) and OpResolverType is not None:
        kwargs["experimental_op_resolver_type"] = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if preserve_all_tensors:
        kwargs["experimental_preserve_all_tensors"] = True
    return kwargs


def _allocated(kwargs: dict, what):
    Interpreter = interpreter_class()[0]
    try:
        with native_stderr_filtered():
            interp = Interpreter(**kwargs)
            interp.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load model {what}: {msg}") from exc
    return interp


def median_invoke_ms(path: str | os.PathLike, threads: int | None = None, *, runs: int = 30, warmup: int = 5,
                     sample=None, fill: str = "random") -> float:
    """Median milliseconds of one ``invoke()`` with the default (XNNPACK) interpreter.

    ``sample`` is the input to use; without it, zeros (``fill="zeros"``) or a fixed random input
    over the input's range (``fill="random"``).
    """
    import time

    import numpy as np

    interp = load_interpreter(path, threads)
    d = interp.get_input_details()[0]
    if sample is None and fill == "zeros":
        sample = np.zeros(d["shape"], dtype=d["dtype"])
    elif sample is None:
        rng = np.random.default_rng(0)
        if np.issubdtype(d["dtype"], np.integer):
            info = np.iinfo(d["dtype"])
            sample = rng.integers(info.min, info.max, size=d["shape"], endpoint=True).astype(d["dtype"])
        else:
            sample = rng.uniform(-1, 1, size=d["shape"]).astype(d["dtype"])
    interp.set_tensor(d["index"], sample)
    for _ in range(max(1, warmup)):
        interp.invoke()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        interp.invoke()
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))
