"""Recordings: H.264 that browsers play, crash-safe (SIGKILL, full disk), segments and retention.

The end-to-end tests run the real ``edgedet run`` as a subprocess on a real video, kill it with real
signals and fill a real 2 MB filesystem; ``ffprobe`` says what plays.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from edgedet.config import parse_keep
from edgedet.detections import Detections
from edgedet.errors import ConfigError, SinkError
from edgedet.frame import Frame, Result
from edgedet.sinks import videofile
from edgedet.sinks.recorder import RecorderSink
from edgedet.sinks.retention import RecordingNames, enforce_keep, keep_limits
from edgedet.sinks.videofile import EncoderChoice, choose_file_encoder, trim_to_fragments

FFPROBE = shutil.which("ffprobe")
needs_ffprobe = pytest.mark.skipif(FFPROBE is None, reason="ffprobe (Debian package ffmpeg) is not installed")
pytestmark = pytest.mark.timeout(180)

BACKENDS = [
    pytest.param("ffmpeg", marks=pytest.mark.skipif(
        not (videofile.find_ffmpeg() and "libx264" in videofile.ffmpeg_encoders(videofile.find_ffmpeg())),
        reason="no ffmpeg program with libx264")),
    pytest.param("pyav", marks=pytest.mark.skipif(not videofile.pyav_has_encoder("libx264"),
                                                  reason="PyAV with libx264 is not installed")),
]


def probe(path: Path) -> dict:
    """codec, pix_fmt, decoded frame count and errors of the first video stream, by ffprobe."""
    p = subprocess.run([FFPROBE, "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                        "stream=codec_name,pix_fmt,nb_read_frames", "-of", "json", str(path)],
                       capture_output=True, text=True, timeout=60)
    streams = json.loads(p.stdout or "{}").get("streams") or [{}]
    s = streams[0]
    return {"codec": s.get("codec_name"), "pix_fmt": s.get("pix_fmt"),
            "frames": int(s.get("nb_read_frames") or 0), "errors": p.stderr.strip()}


def top_boxes(path: Path) -> list[str]:
    data, out, off = path.read_bytes(), [], 0
    while off + 8 <= len(data):
        size = int.from_bytes(data[off:off + 4], "big")
        out.append(data[off + 4:off + 8].decode("latin-1"))
        if size < 8:
            break
        off += size
    return out


def _result(index: int, ts: float, wall: float, w: int = 320, h: int = 240) -> Result:
    rng = np.random.default_rng(index)
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 1] = (index * 7) % 255
    img[h // 4: h // 2, (index * 5) % (w // 2): (index * 5) % (w // 2) + 40] = rng.integers(0, 255, 3, np.uint8)
    return Result(Frame(img, index, ts, wall), Detections.empty(), {}, [])


def _write(rec: RecorderSink, n: int, fps: float = 10.0, wall0: float = 1_795_000_000.0) -> None:
    rec.open()
    try:
        for i in range(n):
            rec.write(_result(i, 100.0 + i / fps, wall0 + i / fps))
    finally:
        rec.close()


# ---------------------------------------------------------------------------------------------
# the file

@needs_ffprobe
@pytest.mark.parametrize("backend", BACKENDS)
def test_recording_is_fragmented_h264_yuv420p(tmp_path, backend):
    path = tmp_path / "out.mp4"
    rec = RecorderSink(str(path), fps=10)
    rec.open()
    rec.choice = EncoderChoice(backend, "libx264")
    for i in range(35):
        rec.write(_result(i, 100.0 + i / 10, 1e9 + i / 10))
    rec.close()
    info = probe(path)
    assert (info["codec"], info["pix_fmt"], info["frames"]) == ("h264", "yuv420p", 35), info
    boxes = top_boxes(path)
    # fragmented: the moov comes first and each keyframe (every second) starts a moof+mdat
    assert boxes[:2] == ["ftyp", "moov"] and boxes.count("moof") >= 3, boxes


@pytest.mark.parametrize("backend", BACKENDS[:1])
def test_an_encoder_that_stops_is_reported_with_its_own_words(tmp_path, backend):
    """ffmpeg's error line (libx264 refuses odd sizes) reaches the one-line error, which names the file."""
    rec = RecorderSink(str(tmp_path / "odd.mp4"), fps=10)
    rec.open()
    rec.choice = EncoderChoice(backend, "libx264")
    with pytest.raises(SinkError) as err:
        try:
            for i in range(40):
                rec.write(_result(i, 100.0 + i / 10, 1e9 + i / 10, w=65, h=49))
        finally:
            rec.close()
    assert "odd.mp4" in str(err.value) and "width not divisible by 2" in str(err.value), err.value


@needs_ffprobe
def test_mkv_is_h264_and_avi_is_motion_jpeg(tmp_path):
    if not choose_file_encoder("auto", ".mkv").h264:
        pytest.skip("no H.264 encoder here")
    for name, codec in (("o.mkv", "h264"), ("o.avi", "mjpeg")):
        _write(RecorderSink(str(tmp_path / name), fps=10), 12)
        info = probe(tmp_path / name)
        assert (info["codec"], info["frames"]) == (codec, 12), info


def test_without_h264_the_recording_falls_back_to_opencv_with_one_notice(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(videofile, "find_ffmpeg", lambda: None)
    monkeypatch.setattr(videofile, "pyav_has_encoder", lambda name: False)
    path = tmp_path / "o.mp4"
    with caplog.at_level(logging.WARNING, logger="edgedet.recorder"):
        _write(RecorderSink(str(path), fps=10), 5)
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 1 and "no H.264 encoder" in notices[0] and "pip install av" in notices[0]
    assert path.stat().st_size > 0


def test_hardware_encoder_that_is_absent_is_a_sink_error(tmp_path, monkeypatch):
    monkeypatch.setattr(videofile, "hardware_h264_available", lambda: False)
    with pytest.raises(SinkError, match="no hardware H.264 encoder.*--encoder software"):
        RecorderSink(str(tmp_path / "o.mp4"), encoder="hardware").open()
    assert choose_file_encoder("auto", ".mp4").codec != videofile.HW_ENCODER


def test_auto_takes_the_hardware_encoder_when_the_pi_has_one(monkeypatch):
    monkeypatch.setattr(videofile, "hardware_h264_available", lambda: True)
    monkeypatch.setattr(videofile, "_backend_for", lambda codec: "ffmpeg")
    assert choose_file_encoder("auto", ".mp4") == EncoderChoice("ffmpeg", "h264_v4l2m2m")
    assert choose_file_encoder("software", ".mp4") == EncoderChoice("ffmpeg", "libx264")


def test_trim_cuts_a_fragmented_mp4_back_to_its_last_complete_fragment(tmp_path):
    def box(kind: bytes, n: int) -> bytes:
        return (8 + n).to_bytes(4, "big") + kind + bytes(n)

    whole = box(b"ftyp", 8) + box(b"moov", 40) + box(b"moof", 16) + box(b"mdat", 100)
    path = tmp_path / "cut.mp4"
    path.write_bytes(whole + box(b"moof", 16) + box(b"mdat", 100)[:50])  # a full disk cut the last one
    assert trim_to_fragments(path) == len(whole) and path.read_bytes() == whole
    path.write_bytes(whole + box(b"moof", 16))  # a fragment header without its data
    assert trim_to_fragments(path) == len(whole)
    assert trim_to_fragments(path) is None  # nothing left to cut


# ---------------------------------------------------------------------------------------------
# segments and retention

@needs_ffprobe
def test_segments_rotate_by_video_time_with_time_stamped_names(tmp_path):
    wall0 = time.mktime((2026, 11, 22, 3, 4, 5, 0, 0, -1))
    rec = RecorderSink(str(tmp_path / "cam.mp4"), fps=10, segment=1.0)
    _write(rec, 35, wall0=wall0)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["cam_20261122_030405.mp4", "cam_20261122_030406.mp4", "cam_20261122_030407.mp4",
                     "cam_20261122_030408.mp4"]
    assert [probe(tmp_path / n)["frames"] for n in names] == [10, 10, 10, 5]
    assert rec.segments == 4 and rec.current == tmp_path / names[-1]


def test_names_of_segments_starting_in_the_same_second_do_not_collide(tmp_path):
    names = RecordingNames(tmp_path / "rec_%Y%m%d_%H%M%S.mkv", segmented=True)
    first = names.path_for(1e9)
    first.touch()
    second = names.path_for(1e9)
    assert second.name == first.stem + "_1.mkv"
    assert names.matches(first) and names.matches(second)
    assert not names.matches(tmp_path / "rec_notes.mkv") and not names.matches(tmp_path / "other.mkv")


def test_retention_deletes_the_oldest_segments_beyond_size_and_age_and_nothing_else(tmp_path):
    names = RecordingNames(tmp_path / "cam.mp4", segmented=True)
    now = time.time()
    made = []
    for k in range(6):  # one a day, 1000 bytes each, oldest first
        p = names.path_for(now - (6 - k) * 86400)
        p.write_bytes(bytes(1000))
        os.utime(p, (now - (6 - k) * 86400, now - (6 - k) * 86400))
        made.append(p)
    other = tmp_path / "holiday.mp4"
    other.write_bytes(bytes(5000))
    os.utime(other, (now - 30 * 86400, now - 30 * 86400))
    assert enforce_keep(names, keep_limits("3500B"), now=now) == made[:3]
    assert enforce_keep(names, keep_limits("2.5d"), now=now) == made[3:4]
    assert sorted(tmp_path.iterdir()) == sorted([other, *made[4:]])
    assert enforce_keep(names, None) == []


@pytest.mark.parametrize("text, expected", [
    ("20GB", (20 * 10 ** 9, None)), ("500M", (500 * 10 ** 6, None)), ("1.5GiB", (int(1.5 * 2 ** 30), None)),
    ("7d", (None, 7 * 86400.0)), ("90min", (None, 5400.0)), ("20GB, 2w", (20 * 10 ** 9, 14 * 86400.0)),
])
def test_keep_accepts_sizes_and_ages(text, expected):
    assert parse_keep(text) == expected


@pytest.mark.parametrize("text", ["30m", "20", "big", "0GB", "7 days"])
def test_keep_refuses_what_it_cannot_read_naming_the_option(text):
    with pytest.raises(ConfigError, match="output.record_keep"):
        parse_keep(text)


def test_keep_without_segments_or_a_pattern_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigError, match="record_keep.*--record-segment"):
        RecorderSink(str(tmp_path / "one.mp4"), keep="1GB")
    RecorderSink(str(tmp_path / "day-%Y%m%d.mp4"), keep="1GB")  # a pattern: files of earlier runs


# ---------------------------------------------------------------------------------------------
# the real command: signals, full disk, segments

def wait_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} events after {timeout} s")


def descendants(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out += [int(child), *descendants(int(child))]
    return out


@needs_ffprobe
@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_leaves_a_recording_that_plays_up_to_the_last_two_seconds(tmp_path, cli_env, start_edgedet,
                                                                          pedestrians_video, backend):
    rec, ev = tmp_path / "rec.mp4", tmp_path / "events.jsonl"
    env = dict(cli_env, PATH="/nonexistent") if backend == "pyav" else cli_env  # no ffmpeg program
    proc = start_edgedet(["--source", pedestrians_video, "--loop", "--record", rec, "--events", ev], env)
    wait_lines(ev, 80, proc)
    for pid in [proc.pid, *descendants(proc.pid)]:  # power cut / cgroup kill: the encoder dies too
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=10)
    written = ev.read_bytes().count(b"\n")  # the recorder got each frame before the events line
    info = probe(rec)
    assert info["codec"] == "h264", info
    assert written - 20 <= info["frames"] <= written, (written, info)  # the source is 10 fps: 2 s


@needs_ffprobe
def test_ctrl_c_at_the_terminal_loses_no_frame(tmp_path, cli_env, start_edgedet, pedestrians_video):
    """SIGINT to the whole process group (what Ctrl-C does): the encoder must not stop before edgedet."""
    rec, ev = tmp_path / "rec.mp4", tmp_path / "events.jsonl"
    proc = start_edgedet(["--source", pedestrians_video, "--loop", "--record", rec, "--events", ev], cli_env)
    wait_lines(ev, 40, proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    info = probe(rec)
    assert info["codec"] == "h264" and info["frames"] == ev.read_bytes().count(b"\n"), info
    assert info["errors"] == ""


@needs_ffprobe
def test_stop_signal_to_every_process_of_the_service_loses_no_frame(tmp_path, cli_env, start_edgedet,
                                                                    pedestrians_video):
    """systemd's default stop (KillMode=control-group) sends SIGTERM to edgedet and its encoder at once."""
    rec, ev = tmp_path / "rec.mp4", tmp_path / "events.jsonl"
    proc = start_edgedet(["--source", pedestrians_video, "--loop", "--record", rec, "--events", ev], cli_env)
    wait_lines(ev, 40, proc)
    kids = descendants(proc.pid)
    for pid in [proc.pid, *kids]:
        os.kill(pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    info = probe(rec)
    assert info["codec"] == "h264" and info["frames"] == ev.read_bytes().count(b"\n"), info


@needs_ffprobe
def test_segments_and_retention_from_the_command_line(tmp_path, cli_env, start_edgedet, pedestrians_video):
    keep_me = tmp_path / "notes.mp4"
    keep_me.write_bytes(b"not a recording")
    proc = start_edgedet(["--source", pedestrians_video, "--record", tmp_path / "cam.mp4", "--record-segment", 2,
                          "--max-frames", 100], cli_env)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    segments = sorted(p for p in tmp_path.glob("cam_*.mp4"))
    assert len(segments) == 5 and sum(probe(p)["frames"] for p in segments) == 100
    # the same run again, keeping about one run's worth: the older files go, the new ones stay
    limit = int(sum(p.stat().st_size for p in segments) * 1.2)
    proc = start_edgedet(["--source", pedestrians_video, "--record", tmp_path / "cam.mp4", "--record-segment", 2,
                          "--max-frames", 100, "--record-keep", f"{limit}B"], cli_env)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    left = sorted(tmp_path.glob("cam_*.mp4"))
    assert sum(p.stat().st_size for p in left) <= limit and not set(segments[:4]) & set(left)
    assert len(set(left) - set(segments)) == 5
    assert keep_me.read_bytes() == b"not a recording"


@needs_ffprobe
def test_full_disk_while_recording_is_one_line_exit_6_and_a_playable_file(small_fs, cli_env, start_edgedet,
                                                                         pedestrians_video):
    rec = small_fs / "rec.mp4"
    proc = start_edgedet(["--source", pedestrians_video, "--loop", "--record", rec], cli_env)
    _, err = proc.communicate(timeout=150)
    assert proc.returncode == 6, err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and str(rec) in errors[0] and "no space left on device" in errors[0], err
    assert "Traceback" not in err
    info = probe(rec)
    assert info["codec"] == "h264" and info["frames"] >= 100 and info["errors"] == "", info
