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


@pytest.mark.parametrize("data, message", [
    ({"model": {"iou_threshold": 0}}, r"model.iou_threshold: must be > 0.0, got 0"),
    ({"model": {"decoder": "ours"}}, r"model.decoder: expected one of \['auto', 'edgedet', 'op'\]"),
    ({"http": {"listen": "not a host"}}, r"http.listen: expected \[HOST\]:PORT"),
    ({"http": {"listen": ":70000"}}, r"http.listen: port must be 1-65535"),
    ({"http": {"auth": "nopassword"}}, r"http.auth: expected USER:PASSWORD or token:SECRET"),
    ({"mqtt": {"host": "bad host:xx"}}, r"mqtt.host: expected HOST\[:PORT\]"),
    ({"rtsp_out": {"url": "http://x/y"}}, r"rtsp_out.url: expected rtsp://HOST\[:PORT\]/PATH"),
    ({"rtsp_out": {"bitrate": "fast"}}, r"rtsp_out.bitrate: expected e.g. 1500k"),
    ({"source": {"camera": "front"}}, r"source.camera: expected a camera index or 'pi'"),
    ({"source": {"uri": "a.mp4", "camera": "0"}}, r"source: give either --source or --camera"),
    ({"picamera": {"main_size": [641, 480]}}, r"picamera.main_size: width and height must be even"),
    ({"picamera": {"main_size": [320, 240], "lores_size": [640, 480]}}, r"picamera.lores_size: 640x480 may not exceed"),
])
def test_every_check_is_in_the_config_layer(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data)


def test_a_password_in_a_bad_url_is_never_shown():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"rtsp_out": {"url": "rtsp://u:hunter2@h:port/x"}})
    assert "bad port" in str(err.value) and "hunter2" not in str(err.value)


def test_the_yaml_file_is_checked_even_where_the_command_line_overrides_it(tmp_path):
    path = tmp_path / "edgedet.yaml"
    path.write_text("model:\n  threads: 0\nhttp:\n  listen: 'not a host'\n")
    with pytest.raises(ConfigError, match="model.threads: must be >= 1"):
        load_config(path, {"model": {"threads": 2}, "http": {"listen": ":8080"}})
    path.write_text("model:\n  threads: 2\n")
    with pytest.raises(ConfigError, match="model.iou_threshold: must be > 0"):
        load_config(path, {"model": {"iou_threshold": 0.0}})  # and the command line itself


def test_a_config_built_in_code_gets_the_same_checks():
    from edgedet.config import HttpConfig, ModelConfig, validate

    assert validate(Config()) == Config()
    with pytest.raises(ConfigError, match="model.iou_threshold"):
        validate(Config(model=ModelConfig(iou_threshold=0.0)))
    with pytest.raises(ConfigError, match="http.listen"):
        validate(Config(http=HttpConfig(listen="x:y")))


def test_postprocess_is_the_old_name_of_decoder(tmp_path, caplog):
    path = tmp_path / "old.yaml"
    path.write_text("model:\n  postprocess: ours\n")
    with caplog.at_level("WARNING", logger="edgedet.config"):
        assert load_config(path).model.decoder == "edgedet"
    assert "model.postprocess (--postprocess) is now model.decoder (--decoder)" in caplog.text
    assert load_config(path, {"model": {"decoder": "op"}}).model.decoder == "op"  # the command line wins
    assert load_config(None, {"model": {"postprocess": "op"}}).model.decoder == "op"  # the old flag
    assert config_from_dict({"model": {"postprocess": "auto", "decoder": "auto"}}).model.decoder == "auto"
    with pytest.raises(ConfigError, match="model.postprocess: the old name of model.decoder"):
        config_from_dict({"model": {"postprocess": "ours", "decoder": "op"}})
    with pytest.raises(ConfigError, match="model.postprocess: expected one of"):
        config_from_dict({"model": {"postprocess": "edgedet"}})


def test_env_variables_in_yaml_values_and_command_line_overrides(tmp_path, monkeypatch):
    from edgedet.config import expand_env

    monkeypatch.setenv("CAM_PASSWORD", "hunter2")
    monkeypatch.setenv("MODEL_DIR", "/opt/models")
    monkeypatch.delenv("CAM_HOST", raising=False)
    path = tmp_path / "edgedet.yaml"
    path.write_text("model:\n  path: ${MODEL_DIR}/v1.tflite\n"
                    "source:\n  uri: 'rtsp://admin:${CAM_PASSWORD}@${CAM_HOST:-10.0.0.7}/stream'\n")
    cfg = load_config(path)
    assert cfg.source.uri == "rtsp://admin:hunter2@10.0.0.7/stream" and cfg.model.path == "/opt/models/v1.tflite"
    cfg = load_config(None, {"http": {"listen": ":8080", "auth": "token:${CAM_PASSWORD}"}})
    assert cfg.http.auth == "token:hunter2"
    assert expand_env("pa$$word $${NOT_A_VAR}") == "pa$$word ${NOT_A_VAR}"
    with pytest.raises(ConfigError, match=r"^source.uri: environment variable CAM_HOST is not set$"):
        load_config(None, {"source": {"uri": "rtsp://${CAM_HOST}/x"}})
    with pytest.raises(ConfigError, match=r"^model.path: expected \$\{NAME\}"):
        load_config(None, {"model": {"path": "${1bad}"}})


def _edgedet_run(args, env, timeout=120):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "edgedet", "run", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_secret_from_the_environment_never_shows_in_ps(tmp_path):
    """A real ``edgedet run``: the web view's token comes from the environment; ``/proc/PID/cmdline``
    holds only ``${WEB_TOKEN}``, and the token works."""
    import os
    import socket
    import time
    import urllib.error
    import urllib.request

    from assets import require_asset

    models = require_asset("models/ssd_mobilenet_v1_coco_quant_postprocess.tflite").parent
    video = require_asset("videos/pedestrians_480x360.avi")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, EDGEDET_MODEL_MIRROR=str(models), EDGEDET_CACHE=str(tmp_path / "cache"),
               WEB_TOKEN="s3cret-from-env", VIDEO_DIR=str(video.parent))
    missing = _edgedet_run(["--source", "${NO_SUCH_VAR}/x.avi", "--headless"], env)
    _, err = missing.communicate(timeout=60)
    assert missing.returncode == 2 and err.strip() == \
        "edgedet: error: source.uri: environment variable NO_SUCH_VAR is not set", err
    proc = _edgedet_run(["--source", "${VIDEO_DIR}/" + video.name, "--loop", "--realtime", "--headless",
                         "--http", f"127.0.0.1:{port}", "--http-auth", "token:${WEB_TOKEN}"], env)
    try:
        status, deadline = None, time.monotonic() + 60
        while status is None and time.monotonic() < deadline and proc.poll() is None:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/stats",
                                         headers={"Authorization": "Bearer s3cret-from-env"})
            try:
                with urllib.request.urlopen(req, timeout=5) as resp:
                    status = resp.status
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        cmdline = open(f"/proc/{proc.pid}/cmdline", "rb").read()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert status == 200, err
    assert b"${WEB_TOKEN}" in cmdline and b"s3cret-from-env" not in cmdline
    assert "s3cret-from-env" not in err


def test_run_help_names_the_yaml_key_of_every_flag():
    import re
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "edgedet", "run", "--help"], capture_output=True, text=True,
                       timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    text = " ".join(p.stdout.split())
    assert re.search(r"--threshold FLOAT .*?\[model\.score_threshold\]", text)
    for path, f, _ in iter_options():
        if f.metadata.get("flags"):
            assert f"[{path}]" in text, path


def _config_install_line(text: str) -> list[str]:
    import shlex

    for line in text.splitlines():
        line = line.lstrip("# ").split("  #")[0]
        if line.startswith("sudo install") and line.rstrip().endswith("/etc/edgedet/edgedet.yaml"):
            return shlex.split(line)[2:]
    raise AssertionError("no install command for /etc/edgedet/edgedet.yaml")


def test_the_service_recipe_installs_a_config_its_user_can_read(tmp_path):
    """The unit's own install command, applied with the service's uid/gid (a real process as that user)."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    unit = (root / "tools" / "edgedet.service").read_text()
    doc = next(line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("Documentation="))
    assert (root / doc.split("/edgedet/edgedet/", 1)[1]).is_file(), doc  # the linked page exists
    assert "EnvironmentFile=-/etc/edgedet/edgedet.env" in unit and "User=edgedet" in unit
    recipes = [unit, (root / "README.md").read_text(), (root / "docs" / "raspberry-pi.md").read_text()]
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run as another user")
    service_uid, service_gid = 64999, 64998  # stand for the user and group edgedet
    for text in recipes:
        args = _config_install_line(text)
        mode = int(args[args.index("-m") + 1], 8)
        owner = args[args.index("-o") + 1] if "-o" in args else "root"
        group = args[args.index("-g") + 1] if "-g" in args else "root"
        assert owner == "root" and not mode & 0o007, args  # other users cannot read it
        etc = Path(tempfile.mkdtemp(prefix="edgedet-etc-"))  # /etc/edgedet: traversable by the service
        try:
            os.chmod(etc, 0o755)
            cfg = etc / "edgedet.yaml"
            cfg.write_text("source:\n  uri: /nonexistent/video.mp4\n")
            os.chown(cfg, 0, service_gid if group == "edgedet" else 0)
            os.chmod(cfg, mode)
            p = subprocess.run(["setpriv", f"--reuid={service_uid}", f"--regid={service_gid}", "--clear-groups",
                                sys.executable, "-m", "edgedet", "run", "--config", str(cfg), "--headless"],
                               capture_output=True, text=True, timeout=60, cwd="/")
        finally:
            shutil.rmtree(etc)
        # the config was read: the run gets as far as the source
        assert p.returncode == 3 and "source not found" in p.stderr, (args, p.stderr)
