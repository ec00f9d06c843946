"""Fixtures of the sink tests that run the real command: its environment, a small real filesystem."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    """Environment where the default registry model comes from the assets into a private cache."""
    from assets import require_asset

    models = require_asset("models/ssd_mobilenet_v1_coco_quant_postprocess.tflite").parent
    return dict(os.environ, EDGEDET_MODEL_MIRROR=str(models), EDGEDET_CACHE=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def start_edgedet():
    """``start_edgedet(args, env)``: ``edgedet run --headless ARGS`` in its own process group (like a
    command started from a shell); killed at the end of the test if still running."""
    procs: list[subprocess.Popen] = []

    def start(args: list, env: dict) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-m", "edgedet", "run", "--headless", *map(str, args)], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.fixture
def small_fs(tmp_path):
    """A real 2 MB filesystem (tmpfs; needs root), unmounted afterwards."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a 2 MB tmpfs here: {p.stderr.strip() or p.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
