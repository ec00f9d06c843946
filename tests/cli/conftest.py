"""Fixtures of the command tests."""

from __future__ import annotations

import pytest


@pytest.fixture()
def tiny_model(tmp_path):
    """A float SSD with the detection op (3 backbone pointwise convs) and 10 calibration images
    (TensorFlow needed to write it): ``(model path, calibration dir)``."""
    pytest.importorskip("tensorflow")
    from tests.tools.prune.test_structured import tiny_ssd_file

    return tiny_ssd_file(tmp_path)
