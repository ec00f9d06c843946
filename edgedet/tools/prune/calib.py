"""Calibration inputs for data-aware tools: images and video frames -> model input tensors.

``collect_calibration(paths, n, input_shape, ...)`` walks files and folders, takes every image and
evenly spaced frames from every video until it has ``n`` inputs, and preprocesses them the way
the detector does (stretch to the input size, RGB; quantized or normalized to the input tensor).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import ConfigError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
VIDEO_EXTS = {".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg"}


def list_media(paths) -> tuple[list[Path], list[Path]]:
    """``(images, videos)`` found in ``paths`` (files or folders, searched recursively, sorted)."""
    images: list[Path] = []
    videos: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise ConfigError(f"calibration path not found: {p}")
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            ext = f.suffix.lower()
            if ext in IMAGE_EXTS:
                images.append(f)
            elif ext in VIDEO_EXTS:
                videos.append(f)
    return images, videos


def _evenly(items: list, n: int) -> list:
    if n >= len(items):
        return list(items)
    idx = np.linspace(0, len(items) - 1, n).round().astype(int)
    return [items[i] for i in idx]


def _video_frames(path: Path, n: int) -> list[np.ndarray]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames: list[np.ndarray] = []
    try:
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if total <= 0:
            return frames
        wanted = set(np.linspace(0, total - 1, min(n, total)).round().astype(int).tolist())
        i = 0
        while len(frames) < len(wanted):
            if not cap.grab():  # decode only; convert just the frames we keep
                break
            if i in wanted:
                ok, frame = cap.retrieve()
                if ok:
                    frames.append(frame)
            i += 1
    finally:
        cap.release()
    return frames


def load_bgr_samples(paths, n: int) -> list[np.ndarray]:
    """Up to ``n`` BGR images: evenly chosen images first, the rest as video frames."""
    import cv2

    images, videos = list_media(paths)
    if not images and not videos:
        shown = ", ".join(str(p) for p in paths)
        raise ConfigError(f"no images or videos found for calibration in {shown}")
    n_img = min(len(images), n if not videos else max(n // 2, n - 8 * len(videos)))
    out: list[np.ndarray] = []
    for f in _evenly(images, n_img):
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is not None:
            out.append(img)
    remaining = n - len(out)
    for k, v in enumerate(videos):
        share = remaining // (len(videos) - k) if remaining > 0 else 0
        frames = _video_frames(v, share)
        out.extend(frames)
        remaining -= len(frames)
    if not out:
        raise ConfigError("calibration images and videos could not be decoded")
    return out[:n]


def input_spec(interpreter) -> dict:
    d = interpreter.get_input_details()[0]
    scale, zp = d.get("quantization", (0.0, 0))
    return {"index": d["index"], "shape": tuple(int(s) for s in d["shape"]), "dtype": np.dtype(d["dtype"]),
            "scale": float(scale), "zero_point": int(zp)}


def preprocess(bgr: np.ndarray, spec: dict, mean: float = 127.5, std: float = 127.5) -> np.ndarray:
    """BGR image -> ``[1, H, W, 3]`` input tensor (stretched; RGB; normalized ``(x-mean)/std``)."""
    import cv2

    _, h, w, _ = spec["shape"]
    rgb = cv2.cvtColor(cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    dtype = spec["dtype"]
    if dtype == np.uint8 and abs(spec["scale"] * std - 1.0) < 0.02 and abs(spec["zero_point"] - mean) <= 1:
        return rgb[None]  # the usual "raw pixels" uint8 input
    x = (rgb.astype(np.float32) - mean) / std
    if dtype in (np.dtype(np.uint8), np.dtype(np.int8)) and spec["scale"] > 0:
        info = np.iinfo(dtype)
        q = np.clip(np.rint(x / spec["scale"] + spec["zero_point"]), info.min, info.max)
        return q.astype(dtype)[None]
    return x.astype(dtype)[None]


def calibration_inputs(paths, n: int, interpreter, normalization=None) -> list[np.ndarray]:
    """Preprocessed input tensors for ``interpreter`` from ``paths`` (see ``load_bgr_samples``)."""
    spec = input_spec(interpreter)
    mean, std = normalization if normalization else (127.5, 127.5)
    return [preprocess(img, spec, float(mean), float(std)) for img in load_bgr_samples(paths, n)]


def default_calibration_paths(assets: str | os.PathLike) -> list[Path]:
    """The asset videos and photos (never the evaluation set) under an assets folder."""
    root = Path(assets)
    return [p for p in (root / "videos", root / "images") if p.exists()]
