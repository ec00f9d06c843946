"""The model registry: names -> verified cached files, mirror for offline devices."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest

from edgedet.errors import AssetError, ModelError
from edgedet.registry import get_entry, load_registry, pull_model, resolve_model
from edgedet.sidecar import load_sidecar

V1_SHA = "e4b118e5e4531945de2e659742c7c590f7536f8d0ed26d135abcfe83b4779d13"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("EDGEDET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EDGEDET_MODEL_MIRROR", raising=False)
    return tmp_path / "cache"


def test_registry_lists_default_and_ssdlite_family():
    entries, default = load_registry()
    assert default == "ssd_mobilenet_v1_coco_quant"
    assert entries[default].sha256 == V1_SHA
    for name in ("ssdlite_mobiledet_coco_qat", "ssdlite_mobilenet_v2_coco", "efficientdet_lite0"):
        assert entries[name].url and entries[name].published.get("source")


def test_pull_from_directory_mirror_verifies_and_writes_sidecar(cache, v1_model, monkeypatch):
    monkeypatch.setenv("EDGEDET_MODEL_MIRROR", str(v1_model.parent))
    path = resolve_model()  # the default model
    assert path.parent == cache and path.read_bytes()[4:8] == b"TFL3"
    side = load_sidecar(path)
    assert side["source"]["sha256"] == V1_SHA
    labels = Path(side["labels"]).read_text().splitlines()
    assert labels[0] == "person" and len(labels) == 90
    # cached now: no mirror needed any more
    monkeypatch.delenv("EDGEDET_MODEL_MIRROR")
    assert resolve_model("ssd_mobilenet_v1_coco_quant", pull=False) == path


def test_pull_from_http_mirror(cache, v1_model, monkeypatch):
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(v1_model.parent), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("EDGEDET_MODEL_MIRROR", f"http://127.0.0.1:{server.server_port}/")
        path = pull_model("ssd_mobilenet_v1_coco_quant", progress=False)
        assert path.is_file()
    finally:
        server.shutdown()
        server.server_close()


def test_checksum_mismatch_saves_nothing(cache, tmp_path, v1_model, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    bad = bytearray(v1_model.read_bytes())
    bad[-1] ^= 0xFF
    (mirror / get_entry("ssd_mobilenet_v1_coco_quant").file).write_bytes(bytes(bad))
    monkeypatch.setenv("EDGEDET_MODEL_MIRROR", str(mirror))
    with pytest.raises(AssetError, match="checksum mismatch"):
        pull_model("ssd_mobilenet_v1_coco_quant", progress=False)
    assert not any(cache.glob("*.tflite")) and not any(cache.glob(".*part"))


def test_offline_with_nothing_cached_says_what_to_do(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEDET_MODEL_MIRROR", str(tmp_path / "empty"))
    with pytest.raises(AssetError, match="EDGEDET_MODEL_MIRROR"):
        resolve_model("ssd_mobilenet_v1_coco_quant")
    with pytest.raises(AssetError, match="edgedet models pull"):
        resolve_model("ssd_mobilenet_v1_coco_quant", pull=False)


def test_paths_and_unknown_names(cache, v1_model, tmp_path):
    assert resolve_model(str(v1_model)) == v1_model
    with pytest.raises(ModelError, match="not found"):
        resolve_model(str(tmp_path / "missing.tflite"))
    with pytest.raises(AssetError, match="unknown model 'nope'"):
        resolve_model("nope")
    with pytest.raises(AssetError, match="convert"):
        resolve_model("ssdlite_mobilenet_v2_coco")


def test_registry_model_used_by_path_gets_its_labels(v1_model, grace_hopper):
    """The default model's file, given by path with no sidecar, still speaks COCO names."""
    import cv2

    from edgedet.detector import Detector

    det = Detector.from_path(v1_model, threads=1)
    assert det.labels[0] == "person"
    found = det.detect(cv2.imread(str(grace_hopper)))
    assert "person" in {det.labels[c] for c in found.class_ids}
