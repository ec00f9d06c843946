"""CPU facts read from /sys and /proc: copies of real boards' files under a temporary root."""

from __future__ import annotations

import os
import platform
import shutil

import cv2
import pytest

from edgedet import cpu


def board(root, capacities=None, max_freqs=None, online=None, model=None, cpuinfo=None):
    n = len(capacities or max_freqs or [])
    base = root / "sys/devices/system/cpu"
    base.mkdir(parents=True)
    (base / "online").write_text(online or f"0-{n - 1}\n")
    for i in range(n):
        d = base / f"cpu{i}"
        d.mkdir()
        if capacities:
            (d / "cpu_capacity").write_text(f"{capacities[i]}\n")
        if max_freqs:
            (d / "cpufreq").mkdir()
            (d / "cpufreq/cpuinfo_max_freq").write_text(f"{max_freqs[i]}\n")
    if model is not None:
        (root / "proc/device-tree").mkdir(parents=True)
        (root / "proc/device-tree/model").write_bytes(model.encode() + b"\x00")
    if cpuinfo is not None:
        (root / "proc").mkdir(exist_ok=True)
        (root / "proc/cpuinfo").write_text(cpuinfo)
    return root


def test_raspberry_pi_5_all_cores_are_big(tmp_path):
    root = board(tmp_path, capacities=[1024] * 4, max_freqs=[2400000] * 4, model="Raspberry Pi 5 Model B Rev 1.0")
    assert cpu.big_cores(root) == [0, 1, 2, 3]
    d = cpu.describe_machine(root)
    assert d["model"] == "Raspberry Pi 5 Model B Rev 1.0" and d["cores"] == 4 and d["big_cores"] == [0, 1, 2, 3]
    assert d["arch"] == platform.machine() and d["available_cores"] == sorted(os.sched_getaffinity(0))


def test_rk3588_big_little_picks_the_a76_cores(tmp_path):
    root = board(tmp_path, capacities=[414] * 4 + [1024] * 4)
    assert cpu.big_cores(root) == [4, 5, 6, 7]
    assert cpu.core_capacities(root)[0] == 414


def test_without_cpu_capacity_the_max_frequency_decides(tmp_path):
    # Exynos 5422 (Odroid XU4): 4x A7 at 1.4 GHz, 4x A15 at 2.0 GHz
    root = board(tmp_path, max_freqs=[1400000] * 4 + [2000000] * 4)
    assert cpu.big_cores(root) == [4, 5, 6, 7]


def test_nothing_reported_means_every_online_core(tmp_path):
    base = tmp_path / "sys/devices/system/cpu"
    base.mkdir(parents=True)
    (base / "online").write_text("0-2,5\n")
    assert cpu.all_cores(tmp_path) == [0, 1, 2, 5]
    assert cpu.big_cores(tmp_path) == [0, 1, 2, 5]


def test_inference_threads_are_the_big_cores_this_process_may_use(tmp_path):
    pi4 = board(tmp_path / "pi4", capacities=[1024] * 4)
    allowed = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(allowed)})  # like `taskset -c 0`
        assert cpu.default_inference_threads(pi4) == 1
    finally:
        os.sched_setaffinity(0, allowed)
    assert cpu.default_inference_threads(pi4) == len(allowed & {0, 1, 2, 3})
    # pinned to no big core at all (e.g. the little cores of an RK3588): use what is allowed
    rk = board(tmp_path / "rk", capacities=[414] * 4 + [1024] * 4)
    if not allowed & {4, 5, 6, 7}:
        assert cpu.default_inference_threads(rk) == len(allowed)


def test_runtime_default_threads_comes_from_here():
    from edgedet.tflite import default_threads

    assert default_threads() == cpu.default_inference_threads() >= 1


def test_machine_model_from_cpuinfo_when_there_is_no_device_tree(tmp_path):
    info = "processor\t: 0\nBogoMIPS\t: 108.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd08\n\n"
    root = board(tmp_path / "a", capacities=[1024], cpuinfo=info)
    assert cpu.machine_model(root) == "Cortex-A72"
    root = board(tmp_path / "b", capacities=[1024], cpuinfo="processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\n")
    assert cpu.machine_model(root) == "Intel(R) Xeon(R)"


def test_limit_opencv_threads_sets_and_returns_the_previous_value():
    before = cv2.getNumThreads()
    try:
        assert cpu.limit_opencv_threads(1) == before
        assert cv2.getNumThreads() == 1 and cpu.opencv_threads() == 1
        assert cpu.limit_opencv_threads(None) == 1 and cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)


def test_hardware_h264_needs_the_pi4_encoder_device_and_ffmpeg_support(tmp_path):
    assert cpu.hardware_h264_available(tmp_path) is False  # no /dev/video11 (a Pi 5, a PC)
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/video11").touch()
    sysfs = tmp_path / "sys/class/video4linux/video11"
    sysfs.mkdir(parents=True)
    (sysfs / "name").write_text("USB 2.0 Camera: USB Camera\n")
    assert cpu.hardware_h264_available(tmp_path) is False  # a webcam at that number is no encoder
    (sysfs / "name").write_text("bcm2835-codec-encode\n")
    expected = "h264_v4l2m2m" in cpu.ffmpeg_encoders() or cpu.pyav_has_encoder("h264_v4l2m2m")
    assert cpu.hardware_h264_available(tmp_path) is expected
    assert cpu.hardware_h264_available(tmp_path, ffmpeg="no-such-ffmpeg") is cpu.pyav_has_encoder("h264_v4l2m2m")


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_ffmpeg_encoder_list_is_read():
    names = cpu.ffmpeg_encoders()
    assert "libx264" in names or "h264_v4l2m2m" in names
    assert "------" not in names
