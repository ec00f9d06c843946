"""``edgedet run``: detect objects in a camera, stream, video file or images, live."""

from __future__ import annotations

import logging
import sys

import click

from ..config import load_config
from .options import config_options, overrides_from_params


class _StderrHandler(logging.Handler):
    """Log lines as ``edgedet: message`` on whatever ``sys.stderr`` is at the time."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(f"edgedet: {record.getMessage()}\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


def setup_logging(level: str) -> None:
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        root.addHandler(_StderrHandler())
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    # OpenCV's own warnings (a camera index that does not open, a file it cannot read) would add
    # lines to our one-line errors; keep them for --log-level debug
    try:
        import cv2

        cv2.utils.logging.setLogLevel(
            cv2.utils.logging.LOG_LEVEL_DEBUG if level == "debug" else cv2.utils.logging.LOG_LEVEL_ERROR
        )
    except (ImportError, AttributeError):  # pragma: no cover - an OpenCV without the logging module
        pass


@click.command("run", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False), default=None,
              help="YAML configuration file (command-line options override it)")
@config_options
def command(config_path, **params):
    """Run the detector on a source and write the results to the outputs.

    \b
    Examples:
      edgedet run --source video.mp4 --headless --events events.jsonl
      edgedet run --camera 0 --record out.mp4 --stats 5
      edgedet run --source rtsp://user:pass@cam/stream --http :8080
      edgedet run --config edgedet.yaml --max-frames 100

    Stops at the end of the input, after --max-frames, or on Ctrl-C / SIGTERM (the recording is
    finalized and the events file complete); a second Ctrl-C forces the exit. Stats go to stderr.
    """
    setup_logging("info")  # the configuration's own warnings (an old option name) come first
    cfg = load_config(config_path, overrides_from_params(params))
    setup_logging(cfg.output.log_level)
    from ..heap import HeapTrimmer
    from ..pipeline import run_from_config

    with HeapTrimmer():  # a long run's resident size stays flat
        run_from_config(cfg)
