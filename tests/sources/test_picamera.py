"""The Pi camera source against a faithful fake of picamera2 (tests/fakes/picamera2) serving real images."""

from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgedet.config import Config, PiCameraConfig, config_from_dict
from edgedet.errors import ConfigError, SourceError
from edgedet.sources.picamera import (
    INSTALL_HINT,
    PiCameraSource,
    choose_lores_size,
    lores_to_rgb,
    pack_yuv420,
)

FAKES = Path(__file__).resolve().parents[1] / "fakes" / "picamera2"


@pytest.fixture
def picamera2(monkeypatch):
    """The fake ``picamera2`` (and ``libcamera``) importable, reset, with a real image as the scene."""
    for name in ("picamera2", "libcamera"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(FAKES))
    import picamera2 as module

    module.fake.reset()
    yield module
    module.fake.reset()
    for name in ("picamera2", "libcamera"):
        sys.modules.pop(name, None)


def pi_cfg(**kw) -> PiCameraConfig:
    return dataclasses.replace(PiCameraConfig(), **kw)


# ---------------------------------------------------------------------------------------------
# without picamera2

def test_without_picamera2_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails, as on a PC
    source = PiCameraSource(PiCameraConfig(), (300, 300))
    with pytest.raises(SourceError) as err:
        source.open()
    msg = str(err.value)
    assert msg == INSTALL_HINT
    assert "sudo apt install python3-picamera2" in msg and "--system-site-packages" in msg


def test_the_source_factory_builds_it_for_camera_pi_and_the_cli_prints_one_line(monkeypatch):
    from edgedet.sources import open_source

    monkeypatch.setitem(sys.modules, "picamera2", None)
    cfg = config_from_dict({"source": {"camera": "pi"}, "picamera": {"main_size": [640, 480]}})
    source = open_source(cfg, lores_size=(300, 300))
    assert isinstance(source, PiCameraSource) and source.lores_size == (300, 300)
    src2 = open_source(config_from_dict({"source": {"uri": "picamera2:1"}}), lores_size=(320, 320))
    assert src2.name == "picamera2:1"
    with pytest.raises(SourceError, match="python3-picamera2"):
        source.open()


# ---------------------------------------------------------------------------------------------
# configuration

def test_dual_stream_configuration_main_bgr_and_lores_yuv420_at_the_model_size(picamera2, grace_hopper):
    picamera2.fake.scene = str(grace_hopper)
    with PiCameraSource(pi_cfg(main_size=[1280, 720]), (300, 300)) as source:
        cam = picamera2.fake.opened[-1]
        conf = cam.camera_config
        assert conf["use_case"] == "video"
        assert conf["main"]["size"] == (1280, 720) and conf["main"]["format"] == "RGB888"
        assert conf["lores"]["size"] == (300, 300) and conf["lores"]["format"] == "YUV420"
        assert conf["lores"]["stride"] == 320  # the ISP pads lores rows on a Pi 4
        frame = source.read()
    assert frame.image.shape == (720, 1280, 3) and frame.image.dtype == np.uint8
    assert frame.lores_format == "YUV420" and frame.lores.shape == (450, 300)  # padding removed
    scene = cv2.imread(str(grace_hopper))
    # main is BGR (picamera2's RGB888 byte order): same colours as the scene scaled by the "ISP"
    expected_main = cv2.resize(scene, (1280, 720), interpolation=cv2.INTER_AREA)
    assert np.abs(frame.image.astype(int) - expected_main).mean() < 1.0
    expected_lores = cv2.cvtColor(cv2.resize(scene, (300, 300), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    rgb = lores_to_rgb(frame.lores, (300, 300))
    assert rgb.shape == (300, 300, 3)
    assert np.abs(rgb.astype(int) - expected_lores).mean() < 4.0  # YUV 4:2:0 round trip
    # the pipeline's own conversion (I420 -> BGR) reads the packed lores the same way
    bgr = cv2.cvtColor(frame.lores, cv2.COLOR_YUV2BGR_I420)
    assert np.array_equal(bgr[:, :, ::-1], rgb)
    assert frame.index == 0 and abs(frame.timestamp - time.monotonic()) < 1.0
    assert source.fps == 30.0  # create_video_configuration's default frame duration
    assert cam.closed_count == 1 and not cam.started


def test_lores_to_rgb_accepts_the_strided_array_picamera2_returns(picamera2, grace_hopper):
    picamera2.fake.scene = str(grace_hopper)
    with picamera2.Picamera2() as cam:
        cam.configure(cam.create_preview_configuration(main={"size": (640, 480), "format": "RGB888"},
                                                       lores={"size": (300, 300), "format": "YUV420"}))
        cam.start()
        (main, lores), metadata = cam.capture_arrays(["main", "lores"])
    assert lores.shape == (450, 320) and "SensorTimestamp" in metadata
    packed = pack_yuv420(lores, (300, 300))
    assert packed.shape == (450, 300)
    assert np.array_equal(lores_to_rgb(lores, (300, 300)), lores_to_rgb(packed, (300, 300)))
    with pytest.raises(ValueError, match="YUV420"):
        lores_to_rgb(main, (640, 480))


def test_lores_size_follows_the_model_and_never_exceeds_main():
    assert choose_lores_size((300, 300), (1280, 720)) == (300, 300)
    assert choose_lores_size((320, 320), (1280, 720)) == (320, 320)
    assert choose_lores_size((128, 128), (640, 480)) == (128, 128)
    assert choose_lores_size((640, 640), (640, 480)) == (480, 480)
    assert choose_lores_size((301, 225), (1280, 720)) == (300, 224)  # even sizes only


def test_bad_sizes_are_configuration_errors():
    with pytest.raises(ConfigError, match="picamera.lores_size: 640x480 may not exceed"):
        PiCameraSource(pi_cfg(main_size=[320, 240], lores_size=[640, 480]))
    with pytest.raises(ConfigError, match="picamera.main_size: width and height must be even"):
        PiCameraSource(pi_cfg(main_size=[641, 480]))
    with pytest.raises(ConfigError, match="picamera.main_size"):
        PiCameraSource(pi_cfg(main_size=["wide", 480]))


def test_controls_transform_and_sensor_mode_reach_the_camera(picamera2, grace_hopper):
    picamera2.fake.scene = str(grace_hopper)
    cfg = pi_cfg(main_size=[640, 480], fps=15, exposure_time=10000, analogue_gain=2.0, awb_mode="daylight",
                 rotation=180, hflip=True, sensor_mode=1)
    with PiCameraSource(cfg, (300, 300)) as source:
        cam = picamera2.fake.opened[-1]
        conf = cam.camera_config
        assert conf["controls"]["FrameDurationLimits"] == (66666, 66666)  # FrameRate 15
        assert conf["controls"]["AeEnable"] is False and conf["controls"]["ExposureTime"] == 10000
        assert conf["controls"]["AnalogueGain"] == 2.0
        assert int(conf["controls"]["AwbMode"]) == int(sys.modules["libcamera"].controls.AwbModeEnum.Daylight)
        # rotation 180 = hflip + vflip; with hflip on top only the vertical flip remains
        assert conf["transform"].vflip and not conf["transform"].hflip
        assert conf["sensor"] == {"bit_depth": 10, "output_size": (1640, 1232)}  # sensor_modes[1]
        assert source.fps == 15.0
        frame = source.read()
    scene = cv2.resize(cv2.imread(str(grace_hopper)), (640, 480), interpolation=cv2.INTER_AREA)
    assert np.abs(frame.image.astype(int) - cv2.flip(scene, 0)).mean() < 1.0
    assert source.stats()["sensor"]["output_size"] == (1640, 1232)


def test_an_unknown_sensor_mode_lists_the_modes(picamera2):
    with pytest.raises(ConfigError, match=r"picamera.sensor_mode: no mode 9 \(modes: 0: \(640, 480\) 10-bit"):
        PiCameraSource(pi_cfg(sensor_mode=9), (300, 300)).open()
    assert all(not cam.is_open for cam in picamera2.fake.opened)  # nothing left open


def test_no_camera_or_a_wrong_number_is_a_clear_source_error(picamera2):
    with pytest.raises(SourceError, match=r"no Raspberry Pi camera 1 \(found 0: imx219\)"):
        PiCameraSource(pi_cfg(camera_num=1), (300, 300)).open()
    picamera2.fake.cameras = []
    with pytest.raises(SourceError, match="no Raspberry Pi camera found"):
        PiCameraSource(PiCameraConfig(), (300, 300)).open()
    picamera2.fake.reset()
    picamera2.fake.fail_open(1)
    with pytest.raises(SourceError, match="cannot open picamera2:0: Failed to acquire camera: Device or resource busy"):
        PiCameraSource(PiCameraConfig(), (300, 300)).open()


def test_main_only_when_no_lores_size_is_given(picamera2, grace_hopper):
    picamera2.fake.scene = str(grace_hopper)
    with PiCameraSource(pi_cfg(main_size=[640, 480]), None) as source:
        frame = source.read()
        assert picamera2.fake.opened[-1].camera_config["lores"] is None
    assert frame.lores is None and frame.image.shape == (480, 640, 3)


# ---------------------------------------------------------------------------------------------
# the camera failing mid-run

def test_a_camera_failing_mid_run_is_logged_and_reopened(picamera2, pedestrians_video, caplog):
    picamera2.fake.scene = str(pedestrians_video)
    caplog.set_level(logging.INFO, logger="edgedet.sources.picamera")
    with PiCameraSource(pi_cfg(main_size=[480, 360]), (300, 300)) as source:
        picamera2.fake.fail_after(2)
        frames = [source.read() for _ in range(5)]
        stats = source.stats()
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]  # no gap in what the pipeline sees
    assert stats["capture_errors_total"] == 1 and stats["reopens_total"] == 1
    assert stats["last_error"] == "Camera frontend has timed out!"
    assert len(picamera2.fake.opened) == 2 and picamera2.fake.opened[0].closed_count == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["picamera2:0 failed: Camera frontend has timed out!; reopening the camera"]
    assert any("camera reopened" in r.getMessage() for r in caplog.records)


def test_a_camera_that_cannot_be_reopened_ends_with_a_source_error(picamera2, grace_hopper):
    picamera2.fake.scene = str(grace_hopper)
    source = PiCameraSource(pi_cfg(main_size=[640, 480], reopen_attempts=2), (300, 300))
    with source:
        assert source.read() is not None
        picamera2.fake.fail_after(0)
        picamera2.fake.fail_open(10)  # unplugged: every reopen fails
        t0 = time.monotonic()
        with pytest.raises(SourceError, match=r"picamera2:0 failed and could not be reopened \(2 attempts\)"):
            source.read()
        assert time.monotonic() - t0 < 5.0  # backoff 0.5 s, then 1 s
    assert source.stats()["capture_errors_total"] == 1


def test_close_from_another_thread_ends_a_read_waiting_to_reopen(picamera2, grace_hopper):
    picamera2.fake.scene = str(grace_hopper)
    source = PiCameraSource(pi_cfg(main_size=[640, 480], reopen_attempts=0), (300, 300))
    source.open()
    picamera2.fake.fail_after(0)
    picamera2.fake.fail_open(1000)
    result = {}
    reader = threading.Thread(target=lambda: result.setdefault("frame", source.read()))
    reader.start()
    time.sleep(0.8)  # inside the reopen backoff
    t0 = time.monotonic()
    source.close()
    reader.join(5)
    assert not reader.is_alive() and result["frame"] is None
    assert time.monotonic() - t0 < 2.0


# ---------------------------------------------------------------------------------------------
# the real detector on frames from the camera

def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def test_the_real_detector_on_the_pi_camera_gives_boxes_in_main_coordinates(picamera2, grace_hopper, v1_model,
                                                                             coco_labels):
    detector_mod = pytest.importorskip("edgedet.detector")
    from edgedet.pipeline import Pipeline
    from edgedet.sinks.base import BaseSink

    class Collect(BaseSink):
        def __init__(self):
            self.results = []

        def write(self, result):
            self.results.append(result)

    picamera2.fake.scene = str(grace_hopper)  # 517x606: main keeps the picture's aspect
    det = detector_mod.Detector.from_path(v1_model, threads=2, labels=str(coco_labels), score_threshold=0.5)
    source = PiCameraSource(pi_cfg(main_size=[1034, 1212]), tuple(det.input_size))
    sink = Collect()
    with Pipeline(source, det, [sink], drop=False, max_frames=3, handle_signals=False) as pipe:
        pipe.run()
    assert len(sink.results) == 3
    result = sink.results[0]
    assert result.frame.lores.shape == (450, 300) and result.frame.image.shape == (1212, 1034, 3)
    labels = det.labels
    persons = result.detections[np.array([labels[c] == "person" for c in result.detections.class_ids], bool)]
    assert len(persons) >= 1
    box = persons.xyxy[np.argmax(persons.scores)]
    # in main pixels: the person fills most of the 1034x1212 picture, far beyond the 300x300 lores
    assert box[2] > 600 and box[3] > 900 and box[2] <= 1034 and box[3] <= 1212
    # the same detector on the main image itself finds the same box
    prepared = det.prepare(result.frame.image, fmt="BGR")
    direct = det.decode(det.infer(prepared), prepared)
    direct_person = direct.xyxy[[labels[c] == "person" for c in direct.class_ids]]
    assert max(_iou(box, d) for d in direct_person) > 0.85


def test_examples_pi_config_drives_the_pi_camera_source(picamera2, grace_hopper):
    from edgedet.config import load_config

    root = Path(__file__).resolve().parents[2]
    cfg: Config = load_config(root / "examples" / "edgedet-pi.yaml")
    picamera2.fake.scene = str(grace_hopper)
    with PiCameraSource(cfg.picamera, (300, 300)) as source:
        frame = source.read()
    assert frame.image.shape[1::-1] == tuple(cfg.picamera.main_size)


def test_both_example_configs_load():
    from edgedet.config import load_config

    root = Path(__file__).resolve().parents[2]
    pi = load_config(root / "examples" / "edgedet-pi.yaml")
    assert pi.source.camera == "pi" and pi.output.headless
    rtsp = load_config(root / "examples" / "edgedet-rtsp.yaml")
    assert rtsp.source.uri.startswith("rtsp://") and rtsp.source.rtsp_transport == "tcp"


def test_a_configuration_error_exits_2_so_the_service_does_not_restart_in_a_loop(tmp_path):
    import subprocess

    root = Path(__file__).resolve().parents[2]
    unit = (root / "tools" / "edgedet.service").read_text()
    assert "RestartPreventExitStatus=2" in unit and "Restart=on-failure" in unit
    assert "ExecStart=/opt/edgedet/venv/bin/edgedet run --config /etc/edgedet/edgedet.yaml" in unit
    bad = tmp_path / "edgedet.yaml"
    bad.write_text("picamera:\n  main_size: [1280, 720]\n  lores: [300, 300]\n")
    res = subprocess.run([sys.executable, "-m", "edgedet", "run", "--config", str(bad)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.startswith("edgedet: error: picamera.lores: unknown option") and res.stderr.count("\n") == 1


def test_picamera2_broken_by_numpy_2_says_how_to_fix_it(monkeypatch, tmp_path):
    # what Raspberry Pi OS's picamera2 does in a venv where pip installed numpy 2 (picamera2 issue #1211)
    pkg = tmp_path / "picamera2"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "raise ValueError('numpy.dtype size changed, may indicate binary incompatibility. "
        "Expected 96 from C header, got 88 from PyObject')\n")
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SourceError, match=r"pip install --force-reinstall simplejpeg") as err:
        PiCameraSource(PiCameraConfig(), (300, 300)).open()
    assert "numpy.dtype size changed" in str(err.value)
    sys.modules.pop("picamera2", None)


def test_edgedet_run_camera_pi_end_to_end(tmp_path, grace_hopper, v1_model, coco_labels):
    """The CLI as a user runs it: the fake camera in a real `edgedet run` process."""
    import json
    import os
    import subprocess

    root = Path(__file__).resolve().parents[2]
    cfg = tmp_path / "edgedet.yaml"
    cfg.write_text(f"model: {{path: {v1_model}, labels: {coco_labels}}}\n"
                   "source: {camera: pi, max_frames: 3}\n"
                   "picamera: {main_size: [1034, 1212], fps: 30}\n"
                   f"output: {{headless: true, events: {tmp_path / 'events.jsonl'}}}\n")
    env = dict(os.environ, FAKE_PICAMERA2_SCENE=str(grace_hopper),
               PYTHONPATH=os.pathsep.join([str(FAKES), str(root), os.environ.get("PYTHONPATH", "")]))
    res = subprocess.run([sys.executable, "-m", "edgedet", "run", "--config", str(cfg)], capture_output=True,
                         text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert len(events) == 3
    first = events[0]
    assert (first["width"], first["height"]) == (1034, 1212)  # the main stream, not the 300x300 lores
    person = max((d for d in first["detections"] if d["label"] == "person"), key=lambda d: d["score"])
    assert person["box"][2] > 600 and person["box"][3] > 900
