"""Config: YAML + CLI overrides, errors that name the field."""

from __future__ import annotations

import pytest

from edgedet.config import Config, config_from_dict, iter_options, load_config, to_dict
from edgedet.errors import ConfigError


def test_defaults_and_yaml_with_overrides(tmp_path):
    path = tmp_path / "edgedet.yaml"
    path.write_text("model:\n  threads: 2\n  score_threshold: 0.4\nsource:\n  uri: video.mp4\n")
    cfg = load_config(path, {"model": {"threads": 3}})
    assert cfg.model.threads == 3  # CLI wins
    assert cfg.model.score_threshold == 0.4  # file kept
    assert cfg.source.uri == "video.mp4"
    assert Config().model.path == "ssd_mobilenet_v1_coco_quant"


@pytest.mark.parametrize("data, message", [
    ({"modle": {}}, "modle: unknown option"),
    ({"http": {"port": 1}}, "http.port: unknown option"),
    ({"model": {"threads": "two"}}, "model.threads: expected an integer"),
    ({"model": {"threads": 0}}, "model.threads: must be >= 1"),
    ({"model": {"score_threshold": 1.5}}, "model.score_threshold: must be <= 1.0"),
    ({"mqtt": {"qos": 3}}, "mqtt.qos: expected one of"),
    ({"output": {"headless": "yes"}}, "output.headless: expected true/false"),
    ({"source": "video.mp4"}, "source: expected a mapping"),
])
def test_errors_name_the_field(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML.*line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_every_cli_flag_is_unique_and_secrets_are_redacted():
    flags = [fl for _, f, _ in iter_options() for fl in f.metadata.get("flags", ())]
    names = [n for fl in flags for n in fl.split("/")]
    assert len(names) == len(set(names))
    cfg = config_from_dict({"mqtt": {"password": "hunter2"}, "http": {"auth": "a:b"}})
    d = to_dict(cfg)
    assert d["mqtt"]["password"] == "***" and d["http"]["auth"] == "***"
