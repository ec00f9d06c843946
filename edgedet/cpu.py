"""CPU facts for ARM boards: big cores, thread defaults, OpenCV threads, hardware H.264.

On a homogeneous SoC (Raspberry Pi 4: 4x Cortex-A72, Pi 5: 4x Cortex-A76) every core is a big
core. On big.LITTLE boards (RK3588: 4x A76 + 4x A55) the interpreter should run on the fast cores
only: the little ones finish their share of each layer last and the whole invoke waits for them.

Every reader takes a ``root`` (default ``/``) so it can be pointed at a copy of another
machine's ``/sys`` and ``/proc``.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

_CPU_DIR = "sys/devices/system/cpu"


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _parse_cpu_list(text: str) -> list[int]:
    """``"0-3,6"`` -> ``[0, 1, 2, 3, 6]`` (the kernel's cpulist format)."""
    out: list[int] = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        else:
            out.append(int(part))
    return out


def all_cores(root: str | os.PathLike = "/") -> list[int]:
    """Online CPU ids of the machine (not only the ones this process may use)."""
    text = _read(Path(root) / _CPU_DIR / "online")
    if text:
        try:
            return _parse_cpu_list(text)
        except ValueError:
            pass
    cpus = sorted(
        int(m.group(1))
        for p in (Path(root) / _CPU_DIR).glob("cpu[0-9]*")
        if (m := re.fullmatch(r"cpu(\d+)", p.name))
    )
    return cpus or list(range(os.cpu_count() or 1))


def core_capacities(root: str | os.PathLike = "/") -> dict[int, int]:
    """Relative speed of each core: ``cpu_capacity`` (arm64 kernels), else cpufreq's max frequency.

    Empty when the machine reports neither.
    """
    base = Path(root) / _CPU_DIR
    cores = all_cores(root)
    for name in ("cpu_capacity", "cpufreq/cpuinfo_max_freq", "cpufreq/scaling_max_freq"):
        values = {c: _read_int(base / f"cpu{c}" / name) for c in cores}
        if all(v is not None and v > 0 for v in values.values()) and values:
            return {c: int(v) for c, v in values.items()}  # type: ignore[arg-type]
    return {}


def big_cores(root: str | os.PathLike = "/") -> list[int]:
    """The fastest cores: all cores whose capacity is within 10% of the highest one.

    On a homogeneous SoC (Pi 4, Pi 5) or when nothing is reported, every online core.
    """
    caps = core_capacities(root)
    if not caps:
        return all_cores(root)
    top = max(caps.values())
    return sorted(c for c, v in caps.items() if v >= 0.9 * top)


def available_cores() -> list[int]:
    """CPU ids this process may run on (``sched_getaffinity``: respects taskset, cgroups cpusets)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def default_inference_threads(root: str | os.PathLike = "/") -> int:
    """Interpreter threads: the big cores this process may use (at least 1).

    If none of the big cores are in the affinity mask (pinned to little cores), all allowed cores.
    """
    allowed = set(available_cores())
    big = allowed.intersection(big_cores(root))
    return max(1, len(big) if big else len(allowed))


def limit_opencv_threads(n: int | None) -> int:
    """Cap OpenCV's own thread pool (resize, colour conversion) to ``n``; returns the previous value.

    OpenCV defaults to one thread per core; with the interpreter already using every big core,
    its pool only adds contention. ``n=None`` leaves it alone; ``0`` disables OpenCV threading.
    """
    import cv2

    previous = int(cv2.getNumThreads())
    if n is not None:
        cv2.setNumThreads(int(max(0, n)))
    return previous


def opencv_threads() -> int:
    import cv2

    return int(cv2.getNumThreads())


def machine_model(root: str | os.PathLike = "/") -> str:
    """Board name (``/proc/device-tree/model``, e.g. "Raspberry Pi 5 Model B Rev 1.0"), else the CPU name."""
    root = Path(root)
    model = _read(root / "proc/device-tree/model") or _read(root / "sys/firmware/devicetree/base/model")
    if model:
        return model.rstrip("\x00").strip()
    cpuinfo = _read(root / "proc/cpuinfo") or ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    for key in ("Model", "model name", "Hardware", "Processor", "cpu model"):
        if fields.get(key):
            return fields[key]
    part = fields.get("CPU part")
    if part:
        return _ARM_PARTS.get(part.lower(), f"ARM CPU part {part}")
    return platform.processor() or platform.machine() or "unknown"


# MIDR part numbers of the ARM cores found on single-board computers (from the kernel's cputype.h).
_ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
    "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510",
    "0xd47": "Cortex-A710", "0xc07": "Cortex-A7", "0xc0f": "Cortex-A15",
}


def describe_machine(root: str | os.PathLike = "/") -> dict:
    """What a benchmark was run on: board, architecture, cores, big cores, usable cores, Python."""
    caps = core_capacities(root)
    return {
        "model": machine_model(root),
        "arch": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cores": len(all_cores(root)),
        "big_cores": big_cores(root),
        "available_cores": available_cores(),
        "core_capacity": {str(k): v for k, v in sorted(caps.items())} if caps else None,
        "default_inference_threads": default_inference_threads(root),
    }


# ---------------------------------------------------------------------------------------------
# hardware H.264 (Raspberry Pi 4: bcm2835-codec behind V4L2 mem2mem; the Pi 5 has no encoder)

V4L2_ENCODER_DEVICE = "/dev/video11"


def _v4l2_encoder_present(root: Path) -> bool:
    dev = root / V4L2_ENCODER_DEVICE.lstrip("/")
    if not dev.exists():
        return False
    name = _read(root / "sys/class/video4linux" / dev.name / "name")
    # When sysfs tells the device's name it must be the encoder, not e.g. a USB webcam.
    return name is None or "encode" in name.lower()


@functools.lru_cache(maxsize=8)
def ffmpeg_encoders(ffmpeg: str = "ffmpeg") -> frozenset:
    """Encoder names of the ``ffmpeg`` binary (empty if it is not installed)."""
    exe = shutil.which(ffmpeg)
    if not exe:
        return frozenset()
    try:
        out = subprocess.run([exe, "-hide_banner", "-encoders"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) == 6 and parts[0][0] in "VAS" and parts[1] != "=":
            names.add(parts[1])
    return frozenset(names)


def pyav_has_encoder(name: str) -> bool:
    """True when PyAV is installed and its FFmpeg build can encode with ``name``."""
    try:
        import av  # type: ignore
    except ImportError:
        return False
    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:  # unknown codec, or a decoder only
        return False


def hardware_h264_available(root: str | os.PathLike = "/", ffmpeg: str = "ffmpeg") -> bool:
    """True when a V4L2 M2M H.264 encoder can be used: the Pi 4's ``/dev/video11`` exists and
    ffmpeg (binary or PyAV) has ``h264_v4l2m2m``. False on a Pi 5 (no hardware encoder) and on PCs.
    """
    if not _v4l2_encoder_present(Path(root)):
        return False
    return "h264_v4l2m2m" in ffmpeg_encoders(ffmpeg) or pyav_has_encoder("h264_v4l2m2m")
