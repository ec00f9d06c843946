"""Where the real assets are: ``../shared/assets`` beside the repository, or ``$EDGEDET_ASSETS``.

``require_asset`` skips a test when an asset is missing, and fails it under
``EDGEDET_REQUIRE_ASSETS=1`` (as in CI).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def assets_dir() -> Path:
    env = os.environ.get("EDGEDET_ASSETS")
    return Path(env) if env else (ROOT.parent / "shared" / "assets")


def require_asset(relpath: str) -> Path:
    """Path of an asset, or skip (fail under EDGEDET_REQUIRE_ASSETS=1) when it is missing."""
    path = assets_dir() / relpath
    if not path.exists():
        msg = f"asset {relpath} not found under {assets_dir()} (set EDGEDET_ASSETS)"
        if os.environ.get("EDGEDET_REQUIRE_ASSETS") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path
