"""Calibration sets: folders of images (plus a manifest) that int8 quantization measures ranges on.

A calibration set should look like what the camera will see. ``build_calibration_set`` samples
frames from the user's own videos, cameras, streams or image folders into a directory and writes
``manifest.yaml`` beside them::

    version: 1
    created: 2026-11-22T03:30:00Z
    sources:
      - {uri: videos/yard.mp4, kind: video, frames: 795, fps: 10.0, every: 12, taken: 64}
    images:
      - {file: yard_000012.jpg, sha256: 9f2c..., source: videos/yard.mp4, frame: 12}
      - {file: dog.jpg, sha256: 41aa..., source: photos/dog.jpg}

``load_calibration_set`` reads a folder (with or without manifest), checks the checksums and
returns the image paths and a hash that identifies the set (recorded in the model sidecar).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import yaml

from ..errors import ConfigError, SourceError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".h264")
MANIFEST = "manifest.yaml"


@dataclass
class CalibrationSet:
    path: Path
    images: list  # [Path]
    hash: str  # sha256 over the sorted (file name, sha256) pairs
    manifest: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def describe(self) -> dict:
        """What the model sidecar records about the set."""
        return {"path": str(self.path), "size": len(self.images), "manifest_sha256": self.hash,
                "has_manifest": bool(self.manifest)}

    def split(self, holdout: float = 0.25) -> tuple[list, list]:
        """Deterministic (calibration, held-out) split: every k-th image is held out."""
        if not 0 < holdout < 1 or len(self.images) < 2:
            return list(self.images), []
        k = max(2, round(1 / holdout))
        held = [p for i, p in enumerate(self.images) if i % k == k - 1]
        return [p for i, p in enumerate(self.images) if i % k != k - 1], held


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def list_images(directory) -> list[Path]:
    directory = Path(directory)
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _set_hash(entries: Iterable[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for name, digest in sorted(entries):
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()


def load_calibration_set(directory, *, verify: bool = True, limit: Optional[int] = None) -> CalibrationSet:
    """The images of a calibration folder; one-line ``ConfigError`` when there are none.

    With a manifest, its list is authoritative and every checksum is verified (``verify``).
    ``limit`` takes that many images spread evenly over the set.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"calibration directory not found: {directory}")
    manifest_path = directory / MANIFEST
    manifest: dict = {}
    if manifest_path.is_file():
        try:
            manifest = yaml.safe_load(manifest_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid calibration manifest {manifest_path}: {str(exc).splitlines()[0]}") from exc
        entries = manifest.get("images") if isinstance(manifest, dict) else None
        if not isinstance(entries, list):
            raise ConfigError(f"invalid calibration manifest {manifest_path}: no 'images' list")
        images, pairs = [], []
        for entry in entries:
            if not isinstance(entry, dict) or "file" not in entry:
                raise ConfigError(f"invalid calibration manifest {manifest_path}: entry without 'file'")
            path = directory / str(entry["file"])
            if not path.is_file():
                raise ConfigError(f"calibration image listed in {manifest_path.name} is missing: {path}")
            digest = str(entry.get("sha256") or "")
            if verify and digest:
                actual = sha256_file(path)
                if actual != digest:
                    raise ConfigError(f"calibration image {path} does not match its manifest sha256")
            images.append(path)
            pairs.append((path.name, digest or sha256_file(path)))
    else:
        images = list_images(directory)
        pairs = [(p.name, sha256_file(p)) for p in images]
    if not images:
        raise ConfigError(f"no calibration images ({', '.join(IMAGE_EXTS)}) in {directory}")
    if limit is not None and limit < len(images):
        if limit < 1:
            raise ConfigError("the number of calibration images must be at least 1")
        step = len(images) / limit
        keep = sorted({int(i * step) for i in range(limit)})
        images = [images[i] for i in keep]
        pairs = [pairs[i] for i in keep]
    return CalibrationSet(directory, images, _set_hash(pairs), manifest if isinstance(manifest, dict) else {})


# ---------------------------------------------------------------------------------------------
# building a set


def _source_kind(uri: str) -> str:
    if "://" in uri:
        return "stream"
    if uri.isdigit():
        return "camera"
    path = Path(uri)
    if path.is_dir():
        return "images"
    if path.is_file() and path.suffix.lower() in IMAGE_EXTS:
        return "image"
    if path.is_file():
        return "video"
    raise SourceError(f"calibration source not found: {uri}")


def _safe_stem(uri: str) -> str:
    stem = Path(uri.split("?")[0].rstrip("/")).stem or "stream"
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:40]


def _write_image(image, path: Path, max_side: Optional[int]) -> None:
    import cv2

    if max_side:
        h, w = image.shape[:2]
        s = max_side / max(h, w)
        if s < 1:
            image = cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(path.suffix, image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise ConfigError(f"cannot encode {path.name}")
    from ..tflite_file import write_atomic

    write_atomic(path, data.tobytes())


def _sample_capture(uri: str, kind: str, num: int, every: Optional[int], timeout: float):
    """Yield ``(frame_index, image)`` for ``num`` frames of a video, camera or stream."""
    import time

    import cv2

    cap = cv2.VideoCapture(int(uri) if kind == "camera" else uri)
    if not cap.isOpened():
        raise SourceError(f"cannot open calibration source {uri}")
    try:
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if kind == "video" else 0
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0)
        if every is None:
            every = max(1, total // num) if total > 0 else max(1, round(fps) or 1)
        info = {"frames": total or None, "fps": round(fps, 3) or None, "every": every}
        yield info
        taken, index = 0, 0
        deadline = time.monotonic() + timeout
        offset = every // 2 if total else 0  # centre the samples in their intervals
        while taken < num:
            ok = cap.grab()
            if not ok:
                if kind == "video":
                    break
                if time.monotonic() > deadline:
                    raise SourceError(f"calibration source {uri} stopped delivering frames")
                time.sleep(0.05)
                continue
            deadline = time.monotonic() + timeout
            if index % every == offset:
                ok, image = cap.retrieve()
                if ok and image is not None:
                    yield index, image
                    taken += 1
            index += 1
    finally:
        cap.release()


def build_calibration_set(sources: Sequence[str], out_dir, *, num: int = 64, every: Optional[int] = None,
                          max_side: Optional[int] = 1280, timeout: float = 10.0,
                          progress: bool = False) -> CalibrationSet:
    """Sample ``num`` images (split evenly over ``sources``) into ``out_dir`` and write the manifest.

    Videos are sampled evenly over their length (or every ``every``-th frame); cameras and
    streams every ``every``-th frame (default: one per second); image folders evenly. An
    existing manifest in ``out_dir`` is extended, so a set can be built from several runs.
    """
    import cv2

    if not sources:
        raise ConfigError("give at least one calibration --source")
    if num < 1:
        raise ConfigError("--num must be at least 1")
    if every is not None and every < 1:
        raise ConfigError("--every must be at least 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = out_dir / MANIFEST
    manifest = {"version": 1, "sources": [], "images": []}
    if manifest_path.is_file():
        old = yaml.safe_load(manifest_path.read_text()) or {}
        if isinstance(old, dict):
            manifest["sources"] = list(old.get("sources") or [])
            manifest["images"] = list(old.get("images") or [])
    existing = {e.get("file") for e in manifest["images"] if isinstance(e, dict)}
    per_source = [num // len(sources) + (1 if i < num % len(sources) else 0) for i in range(len(sources))]
    for uri, n in zip(sources, per_source):
        if n == 0:
            continue
        uri = str(uri)
        kind = _source_kind(uri)
        stem = _safe_stem(uri)
        added = 0
        record: dict = {"uri": uri, "kind": kind}
        if kind in ("images", "image"):
            files = list_images(uri) if kind == "images" else [Path(uri)]
            if not files:
                raise SourceError(f"no images in calibration source {uri}")
            step = max(1, len(files) / n) if every is None else every
            picks = [files[int(i * step)] for i in range(min(n, len(files))) if int(i * step) < len(files)]
            for src in picks:
                image = cv2.imread(str(src), cv2.IMREAD_COLOR)
                if image is None:
                    raise SourceError(f"cannot read image {src}")
                name = _unique(f"{stem}_{src.stem}.jpg" if kind == "images" else f"{src.stem}.jpg", existing)
                _write_image(image, out_dir / name, max_side)
                manifest["images"].append({"file": name, "sha256": sha256_file(out_dir / name),
                                           "source": str(src)})
                added += 1
        else:
            frames = _sample_capture(uri, kind, n, every, timeout)
            info = next(frames)
            taken = list(frames)
            if kind == "video" and every is None and len(taken) < n and taken:
                # the container over-reported its length: sample again over the frames it has
                seen = taken[-1][0] + info["every"]
                info["every"] = max(1, seen // n)
                frames = _sample_capture(uri, kind, n, info["every"], timeout)
                next(frames)
                taken = list(frames)
            info["frames"] = info["frames"] if len(taken) >= n else None
            record.update({k: v for k, v in info.items() if v is not None})
            for index, image in taken:
                name = _unique(f"{stem}_{index:06d}.jpg", existing)
                _write_image(image, out_dir / name, max_side)
                manifest["images"].append({"file": name, "sha256": sha256_file(out_dir / name),
                                           "source": uri, "frame": int(index)})
                added += 1
        if added == 0:
            raise SourceError(f"no frames could be read from calibration source {uri}")
        record["taken"] = added
        manifest["sources"].append(record)
    manifest["created"] = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    from ..tflite_file import write_atomic

    write_atomic(manifest_path, yaml.safe_dump(manifest, sort_keys=False).encode())
    return load_calibration_set(out_dir)


def _unique(name: str, existing: set) -> str:
    base, ext = os.path.splitext(name)
    candidate, k = name, 1
    while candidate in existing:
        candidate = f"{base}_{k}{ext}"
        k += 1
    existing.add(candidate)
    return candidate
