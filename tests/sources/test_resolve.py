"""One classification of the configured source: kind, target, live and a printable name."""

from __future__ import annotations

import pytest

from edgedet.config import config_from_dict
from edgedet.errors import ConfigError, SourceError
from edgedet.sources import resolve
from edgedet.sources.resolve import SourceKind, resolve_source


def _resolve(**source):
    return resolve_source(config_from_dict({"source": source}))


def test_each_kind_with_its_target_live_policy_and_name(pedestrians_video, grace_hopper):
    cases = [
        (dict(camera="pi"), "picamera", 0, True, "picamera2:0"),
        (dict(uri="picamera2:1"), "picamera", 1, True, "picamera2:1"),
        (dict(camera="2"), "camera", 2, True, "camera 2"),
        (dict(uri="0"), "camera", 0, True, "camera 0"),
        (dict(uri="rtsp://admin:hunter2@cam/stream"), "network", "rtsp://admin:hunter2@cam/stream", True,
         "rtsp://admin:***@cam/stream"),
        (dict(uri=str(grace_hopper)), "images", grace_hopper, False, str(grace_hopper)),
        (dict(uri=str(grace_hopper.parent)), "images", grace_hopper.parent, False, str(grace_hopper.parent)),
        (dict(uri=str(pedestrians_video)), "video", pedestrians_video, False, str(pedestrians_video)),
        (dict(uri=str(pedestrians_video), realtime=True), "video", pedestrians_video, True, str(pedestrians_video)),
    ]
    for source, kind, target, live, name in cases:
        got = _resolve(**source)
        assert (got.kind.name, got.target, got.live, got.name) == (kind, target, live, name), source


def test_the_built_source_agrees_with_the_resolution(pedestrians_video):
    cfg = config_from_dict({"source": {"uri": str(pedestrians_video), "realtime": True, "loop": True}})
    resolved = resolve_source(cfg)
    source = resolved.build(cfg)
    assert source.live is resolved.live and source.name == resolved.name and source.loop


def test_what_is_wrong_is_found_without_opening_anything(tmp_path):
    with pytest.raises(ConfigError, match="no input"):
        _resolve()
    with pytest.raises(SourceError, match="source not found: .*missing.mp4"):
        _resolve(uri=str(tmp_path / "missing.mp4"))
    with pytest.raises(SourceError, match="source not found: .*missing.jpg"):
        _resolve(uri=str(tmp_path / "missing.jpg"))
    with pytest.raises(SourceError, match="cannot open camera /dev/video99: no such device"):
        _resolve(uri="/dev/video99")
    with pytest.raises(SourceError, match="file://"):
        _resolve(uri="file:///tmp/x.mp4")


def test_a_new_kind_of_source_is_one_table_entry(monkeypatch):
    built = []

    def claim(text, cfg):
        return text[len("test:"):] if text.startswith("test:") else None

    def build(resolved, cfg, lores_size):
        built.append((resolved.target, lores_size))
        return object()

    kind = SourceKind("test", claim, lambda src: True, build, lambda target: f"test source {target}")
    monkeypatch.setattr(resolve, "KINDS", (kind,) + resolve.KINDS)
    got = _resolve(uri="test:door")
    assert (got.kind.name, got.target, got.live, got.name) == ("test", "door", True, "test source door")
    got.build(config_from_dict({"source": {"uri": "test:door"}}), lores_size=(300, 300))
    assert built == [("door", (300, 300))]
