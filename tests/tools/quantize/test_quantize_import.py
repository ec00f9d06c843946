"""The quantizer is imported on demand: a missing package and a broken one are told apart."""
from __future__ import annotations

import importlib.util
import sys

import pytest

from edgedet.errors import EdgedetError
from edgedet.tools.quantize import int8


def test_missing_quantizer_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_quantizer.quantizer", None)
    monkeypatch.setitem(sys.modules, "ai_edge_quantizer", None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(EdgedetError, match=r"pip install 'edgedet\[quantize\]'"):
        int8.require_quantizer()


def test_installed_quantizer_that_fails_to_import_says_so(monkeypatch):
    package = pytest.importorskip("ai_edge_quantizer")
    monkeypatch.delattr(package, "quantizer", raising=False)
    monkeypatch.setitem(sys.modules, "ai_edge_quantizer.quantizer", None)
    with pytest.raises(EdgedetError, match="installed but does not import"):
        int8.require_quantizer()
