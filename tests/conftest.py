"""Shared fixtures: the real assets at ``../shared/assets`` or ``$EDGEDET_ASSETS``.

A test that needs them skips with a reason when they are absent; with
``EDGEDET_REQUIRE_ASSETS=1`` (as in CI) a missing asset fails instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from assets import ROOT, assets_dir, require_asset  # noqa: F401


@pytest.fixture
def asset():
    """``asset("models/ssd_mobilenet_v1_coco_quant_postprocess.tflite")`` -> Path."""
    return require_asset


@pytest.fixture
def v1_model() -> Path:
    return require_asset("models/ssd_mobilenet_v1_coco_quant_postprocess.tflite")


@pytest.fixture
def fpnlite_model() -> Path:
    return require_asset("models/ssd_mobilenet_v2_fpnlite_320_coco_fp.tflite")


@pytest.fixture
def blazeface_model() -> Path:
    return require_asset("models/blazeface_short_range.tflite")


@pytest.fixture
def coco_labels() -> Path:
    return require_asset("labels/coco_labels.txt")


@pytest.fixture
def pedestrians_video() -> Path:
    return require_asset("videos/pedestrians_480x360.avi")


@pytest.fixture
def highway_video() -> Path:
    return require_asset("videos/highway_cars_720p.mp4")


@pytest.fixture
def coco_tiny() -> Path:
    return require_asset("datasets/coco_tiny_val2017")


@pytest.fixture
def grace_hopper() -> Path:
    return require_asset("images/coral/grace_hopper.bmp")
