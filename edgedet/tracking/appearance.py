"""What a tracked object looks like: the colours of its upper and lower half, cheap enough for every frame.

``colour_histograms(frame, xyxy)`` describes each box by two hue-saturation histograms (8 x 8
bins), one of its upper half (head and torso of a person) and one of its lower half (legs), over
the middle 60% of its width (less background beside the object). The pixels are a fixed grid of
16 x 8 samples per box, read straight from the frame and binned through a table of every colour
(6 bits a channel, built once), so the cost is a few thousand pixels per frame whatever the frame
and box sizes, with no pass over the whole frame and no colour conversion. Hue and saturation do not
change with brightness, so a person walking from sun into shade keeps their colours.

``hellinger(a, b)`` compares them: 0 for the same colours, 1 for colours with nothing in common.
The rows are square roots of the normalised histograms, so the Hellinger distance is a Euclidean
distance and a running average of rows (``ByteTracker``'s memory of an object) is still comparable.

In a grey picture (or a grey object) every pixel has zero saturation: all its samples fall in one
bin, every box looks alike and the distance is 0, i.e. appearance tells nothing apart and never
vetoes a match; ``colourless`` finds such boxes, which must not be recognised by their colours.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["APPEARANCE_SIZE", "colour_histograms", "colourless", "hellinger"]

HUE_BINS, SAT_BINS = 8, 8
PARTS = 2  # upper and lower half
GRID_ROWS, GRID_COLS = 16, 8  # samples per box
INSET = 0.2  # of the width, on each side
APPEARANCE_SIZE = PARTS * HUE_BINS * SAT_BINS

_COLS = INSET + (1.0 - 2.0 * INSET) * (np.arange(GRID_COLS) + 0.5) / GRID_COLS
_ROWS = (np.arange(GRID_ROWS) + 0.5) / GRID_ROWS
_PART = (np.arange(GRID_ROWS) * PARTS // GRID_ROWS)[None, :, None]


@lru_cache(maxsize=1)
def _hs_bin_of_colour() -> np.ndarray:
    """Hue-saturation bin of every colour at 6 bits a channel, ``[64 ** 3]`` uint8, indexed by b << 12 | g << 6 | r."""
    import cv2

    level = np.arange(64, dtype=np.uint8) * 4 + 2
    b, g, r = np.meshgrid(level, level, level, indexing="ij")
    hsv = cv2.cvtColor(np.stack([b, g, r], -1).reshape(-1, 1, 3), cv2.COLOR_BGR2HSV).reshape(-1, 3).astype(np.intp)
    return (hsv[:, 0] * HUE_BINS // 180 * SAT_BINS + hsv[:, 1] * SAT_BINS // 256).astype(np.uint8)  # hue 0..179


def colour_histograms(frame: np.ndarray, xyxy: np.ndarray) -> np.ndarray:
    """``[N, APPEARANCE_SIZE]`` float32 rows of unit length for the boxes ``xyxy`` (pixels) of a BGR frame."""
    n = len(xyxy)
    if n == 0:
        return np.zeros((0, APPEARANCE_SIZE), np.float32)
    height, width = frame.shape[:2]
    box = np.asarray(xyxy, np.float64)
    xs = np.clip(box[:, 0:1] + (box[:, 2:3] - box[:, 0:1]) * _COLS, 0, width - 1).astype(np.intp)
    ys = np.clip(box[:, 1:2] + (box[:, 3:4] - box[:, 1:2]) * _ROWS, 0, height - 1).astype(np.intp)
    pixels = frame[ys[:, :, None], xs[:, None, :]] >> 2  # [N, rows, cols(, channels)] at 6 bits
    if pixels.ndim == 3:  # a grey frame
        pixels = pixels[..., None]
    colour = (pixels[..., 0].astype(np.intp) << 12) | (pixels[..., 1 % pixels.shape[3]].astype(np.intp) << 6) \
        | pixels[..., 2 % pixels.shape[3]]
    bins = (np.arange(n)[:, None, None] * PARTS + _PART) * (HUE_BINS * SAT_BINS) + _hs_bin_of_colour()[colour]
    counts = np.bincount(bins.ravel(), minlength=n * APPEARANCE_SIZE).astype(np.float32)
    samples_per_part = GRID_ROWS // PARTS * GRID_COLS
    return np.sqrt(counts / (samples_per_part * PARTS)).reshape(n, APPEARANCE_SIZE)


def hellinger(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise Hellinger distance ``[len(a), len(b)]`` in 0..1 of rows from ``colour_histograms``.

    A row of NaN (an object never seen in a picture) is at distance 0 from everything.
    """
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    d = np.sqrt(np.maximum(d2, 0.0) * 0.5)
    return np.where(np.isnan(d), 0.0, np.minimum(d, 1.0)).astype(np.float32)


def colourless(rows: np.ndarray, share: float = 0.99) -> np.ndarray:
    """Mask of the rows from ``colour_histograms`` with at least ``share`` of their samples without colour
    (saturation in the lowest bin): a grey picture or a grey object, whose colours tell nothing; and rows of
    NaN (never seen in a picture)."""
    rows = np.asarray(rows, np.float32)
    grey = (rows[:, ::SAT_BINS] ** 2).sum(axis=1)  # squares of the rows are the shares of the samples
    return ~(grey < share * (rows**2).sum(axis=1))
