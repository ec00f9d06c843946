"""Unlabelled images for fitting and distillation: the calibration pool, split into a fitting part
and a held-back part (for choosing settings), and augmented views (random crops and flips)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..calib import load_bgr_samples


@dataclass
class ImagePool:
    """RGB images (any size) split into ``fit`` and ``held`` (every ``hold_every``-th image)."""

    fit: list
    held: list

    @classmethod
    def load(cls, paths: Sequence, count: int = 128, hold_every: int = 5) -> ImagePool:
        rgb = [np.ascontiguousarray(img[:, :, ::-1]) for img in load_bgr_samples(list(paths), count)]
        held = [img for i, img in enumerate(rgb) if i % hold_every == hold_every - 1]
        fit = [img for i, img in enumerate(rgb) if i % hold_every != hold_every - 1]
        return cls(fit, held)


def resize(rgb: np.ndarray, size: tuple) -> np.ndarray:
    import cv2

    h, w = size
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)


def random_view(rgb: np.ndarray, size: tuple, rng: np.random.Generator, min_area: float = 0.35) -> np.ndarray:
    """A random crop (``min_area``..1 of the image, aspect 3:4..4:3), flipped half the time, at ``size``."""
    h, w = rgb.shape[:2]
    area = rng.uniform(min_area, 1.0) * h * w
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch = int(min(h, max(8, round(np.sqrt(area / aspect)))))
    cw = int(min(w, max(8, round(np.sqrt(area * aspect)))))
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    view = resize(rgb[y:y + ch, x:x + cw], size)
    return view[:, ::-1] if rng.random() < 0.5 else view


def augmented_views(images: Sequence, size: tuple, per_image: int, seed: int = 0) -> np.ndarray:
    """``per_image`` views of each image: the full image first, then random crops/flips."""
    rng = np.random.default_rng(seed)
    views = []
    for img in images:
        views.append(resize(img, size))
        views.extend(random_view(img, size, rng) for _ in range(per_image - 1))
    return np.stack(views).astype(np.uint8)
