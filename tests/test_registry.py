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


# -- the TF1 zoo entry: pulled as a tarball, verified, converted into the cache --------------------

ZOO = "ssdlite_mobilenet_v2_coco_2018_05_09"
ZOO_CONFIG = """model { ssd {
  num_classes: 1
  image_resizer { fixed_shape_resizer { height: 300 width: 300 } }
  post_processing { batch_non_max_suppression { iou_threshold: 0.6 max_total_detections: 100 }
                    score_converter: SIGMOID }
} }
"""


@pytest.fixture
def zoo_mirror(tmp_path, monkeypatch):
    """A mirror holding a tarball in the zoo's layout around the asset's TF1 graph, and a registry
    (copied from the real one) whose entry carries that tarball's checksum: the zoo's own tarball
    cannot be fetched here, so only its checksum differs from the shipped entry."""
    import hashlib
    import shutil
    import tarfile

    import yaml
    from assets import require_asset

    from edgedet.registry import registry_path

    graph = require_asset("models/tf1/ssdlite_mobilenet_v2_person/frozen_inference_graph.pb")
    root = tmp_path / "zoo" / ZOO
    (root / "saved_model" / "variables").mkdir(parents=True)
    (root / "frozen_inference_graph.pb").write_bytes(graph.read_bytes())
    (root / "pipeline.config").write_text(ZOO_CONFIG)
    (root / "person_label_map.pbtxt").write_text('item {\n  id: 1\n  display_name: "person"\n}\n')
    for part in ("model.ckpt.index", "model.ckpt.meta", "model.ckpt.data-00000-of-00001", "checkpoint",
                 "saved_model/saved_model.pb"):
        (root / part).write_bytes(b"not read: the frozen graph is")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    tarball = mirror / f"{ZOO}.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(root, arcname=ZOO)
    models = tmp_path / "models"
    shutil.copytree(registry_path().parent / "labels", models / "labels")
    data = yaml.safe_load(registry_path().read_text())
    entry = data["models"]["ssdlite_mobilenet_v2_coco"]
    assert entry["file"] == tarball.name and entry["url"].startswith("http://download.tensorflow.org/")
    entry["sha256"] = hashlib.sha256(tarball.read_bytes()).hexdigest()
    (models / "registry.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("EDGEDET_REGISTRY", str(models / "registry.yaml"))
    monkeypatch.setenv("EDGEDET_MODEL_MIRROR", str(mirror))
    monkeypatch.setenv("EDGEDET_CACHE", str(tmp_path / "cache"))
    return tarball


def _edgedet(*args):
    import os
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "edgedet", *args], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ))


def test_zoo_tarball_is_pulled_verified_converted_and_cached(zoo_mirror, tmp_path):
    pytest.importorskip("tensorflow")
    cache = tmp_path / "cache"
    with pytest.raises(AssetError, match="edgedet models pull ssdlite_mobilenet_v2_coco"):
        resolve_model("ssdlite_mobilenet_v2_coco")  # the runtime never converts on its own
    res = _edgedet("models", "pull", "ssdlite_mobilenet_v2_coco")
    assert res.returncode == 0, res.stderr
    model = cache / "ssdlite_mobilenet_v2_coco.tflite"
    assert res.stdout.strip() == f"ssdlite_mobilenet_v2_coco: {model}"
    assert (cache / zoo_mirror.name).read_bytes() == zoo_mirror.read_bytes()  # kept for other variants
    side = load_sidecar(model)
    assert side["source"]["registry"] and side["source"]["archive_sha256"] == get_entry(
        "ssdlite_mobilenet_v2_coco").sha256
    assert side["labels"] == ["person"] and side["input"]["normalization"] == [127.5, 127.5]
    assert resolve_model("ssdlite_mobilenet_v2_coco", pull=False) == model
    import cv2
    from assets import require_asset

    from edgedet.detector import Detector

    cap = cv2.VideoCapture(str(require_asset("videos/pedestrians_480x360.avi")))
    ok, frame = cap.read()
    cap.release()
    det = Detector.from_path(resolve_model("ssdlite_mobilenet_v2_coco"), threads=2, score_threshold=0.5)
    found = det.detect(frame)
    assert ok and len(found) and {det.labels[c] for c in found.class_ids} == {"person"}


def test_zoo_tarball_with_a_wrong_checksum_is_refused_before_converting(zoo_mirror, tmp_path):
    data = bytearray(zoo_mirror.read_bytes())
    data[-1] ^= 0xFF
    zoo_mirror.write_bytes(bytes(data))
    res = _edgedet("models", "pull", "ssdlite_mobilenet_v2_coco")
    assert res.returncode != 0 and "checksum mismatch" in res.stderr and "Traceback" not in res.stderr
    assert not any((tmp_path / "cache").glob("*"))


def test_int8_pull_needs_calibration_frames(zoo_mirror):
    res = _edgedet("models", "pull", "ssdlite_mobilenet_v2_coco", "--quantize", "int8")
    assert res.returncode == 2 and "--calibration" in res.stderr
