"""Drawing detections on a frame, apart from detecting (like supervision's annotators).

``Overlay.draw(image, detections, labels, fps=..., infer_ms=...)`` returns an annotated copy:
boxes in a colour per class, a filled label tag ``person 0.87`` above each box, and an
``FPS / inference ms`` line in the corner. Tracked boxes carry their id (``person #12 0.87``);
zones are drawn as outlines named with how many objects are inside, counting lines with their
``in / out`` counts. Line thickness and font scale follow the frame size so
the text reads the same on a 320p and a 1080p frame. Sizes are computed once per frame size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import cv2
import numpy as np

from ..detections import Detections, label_for
from ..frame import Result

if TYPE_CHECKING:
    from ..tracking import ZoneCounter, ZoneUpdate

ZONE_COLOR = (0, 200, 255)  # BGR: amber
LINE_COLOR = (255, 0, 255)  # BGR: magenta

FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_palette(n: int = 256, seed: int = 7) -> np.ndarray:
    """``n`` distinct, bright BGR colours (uint8 ``[n, 3]``): golden-ratio hues at high saturation."""
    hues = (np.arange(n) * 0.618033988749895 * 180 + seed) % 180
    hsv = np.stack([hues, np.full(n, 200), np.full(n, 255)], axis=1).astype(np.uint8)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0]


@dataclass(frozen=True)
class Style:
    """Sizes for one frame size (computed by ``Style.for_size``)."""

    thickness: int
    font_scale: float
    font_thickness: int
    pad: int
    text_height: int

    @classmethod
    def for_size(cls, width: int, height: int) -> Style:
        # reference: 1.0 at 720 px on the short side; never below what is legible at 240p
        ref = max(min(width, height), 1) / 720.0
        thickness = max(1, int(round(3 * ref)))
        font_scale = max(0.35, 0.8 * ref)
        font_thickness = max(1, int(round(2 * ref)))
        (_, th), baseline = cv2.getTextSize("Ag", FONT, font_scale, font_thickness)
        pad = max(2, int(round(4 * ref)))
        return cls(thickness, font_scale, font_thickness, pad, th + baseline)


class Overlay:
    """Stateless drawing apart from a cache of sizes per frame size and of label colours."""

    def __init__(self, *, show_scores: bool = True, show_status: bool = True,
                 palette: Optional[np.ndarray] = None) -> None:
        self.show_scores = show_scores
        self.show_status = show_status
        self.palette = class_palette() if palette is None else np.asarray(palette, np.uint8)
        self._colors = [tuple(int(c) for c in row) for row in self.palette]
        self._style: Optional[Style] = None
        self._style_size = (0, 0)

    def style(self, width: int, height: int) -> Style:
        if self._style is None or self._style_size != (width, height):
            self._style = Style.for_size(width, height)
            self._style_size = (width, height)
        return self._style

    def color(self, class_id: int) -> tuple[int, int, int]:
        return self._colors[int(class_id) % len(self._colors)]

    def draw(self, image: np.ndarray, detections: Detections, labels: Optional[Sequence[str]] = None, *,
             fps: Optional[float] = None, infer_ms: Optional[float] = None,
             out: Optional[np.ndarray] = None, counter: Optional[ZoneCounter] = None,
             zones: Optional[ZoneUpdate] = None, line_counts: Optional[dict] = None) -> np.ndarray:
        """Draw on a copy of ``image`` (or into ``out``, same shape) and return it.

        ``counter``: the zones and lines to draw (in pixels of this frame); ``zones`` who is inside
        each zone now, ``line_counts`` the crossings so far (``ZoneCounter.line_counts()``)."""
        if out is None:
            out = image.copy()
        elif out is not image:
            np.copyto(out, image)
        h, w = out.shape[:2]
        st = self.style(w, h)
        if counter is not None:
            self._shapes(out, counter, zones, line_counts or {}, st, h, w)
        n = len(detections)
        if n:
            boxes = np.round(detections.xyxy).astype(np.int32)
            np.clip(boxes[:, 0::2], 0, w - 1, out=boxes[:, 0::2])
            np.clip(boxes[:, 1::2], 0, h - 1, out=boxes[:, 1::2])
            ids = detections.class_ids.tolist()
            texts = [label_for(labels, c) for c in ids]
            if detections.track_ids is not None:
                texts = [f"{t} #{k}" if k >= 0 else t for t, k in zip(texts, detections.track_ids.tolist())]
            if self.show_scores:
                texts = [f"{t} {s:.2f}" for t, s in zip(texts, detections.scores.tolist())]
            # draw lowest score first so the strongest box ends on top
            order = np.argsort(detections.scores, kind="stable").tolist()
            for i in order:
                x1, y1, x2, y2 = boxes[i].tolist()
                color = self.color(ids[i])
                cv2.rectangle(out, (x1, y1), (x2, y2), color, st.thickness, cv2.LINE_AA)
                self._tag(out, texts[i], x1, y1, color, st, h, w)
        if self.show_status and (fps is not None or infer_ms is not None):
            parts = []
            if fps is not None:
                parts.append(f"FPS {fps:.1f}")
            if infer_ms is not None:
                parts.append(f"inference {infer_ms:.1f} ms")
            self._tag(out, "  ".join(parts), 0, 0, (32, 32, 32), st, h, w, inside=True,
                      text_color=(255, 255, 255))
        return out

    def _shapes(self, img: np.ndarray, counter: ZoneCounter, zones: Optional[ZoneUpdate], line_counts: dict,
                st: Style, h: int, w: int) -> None:
        inside = zones.inside.sum(axis=0).tolist() if zones is not None and len(zones.zone_names) else None
        for z, (zone, polygon) in enumerate(zip(counter.zones, counter.polygons)):
            pts = np.round(polygon).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(img, [pts], True, ZONE_COLOR, st.thickness, cv2.LINE_AA)
            text = zone.name if inside is None else f"{zone.name}: {int(inside[z])}"
            x, y = (int(v) for v in polygon.min(axis=0))
            self._tag(img, text, x, y, ZONE_COLOR, st, h, w, inside=True)
        for line, seg in zip(counter.lines, counter.segments):
            a, b = (tuple(int(round(v)) for v in p) for p in seg)
            cv2.line(img, a, b, LINE_COLOR, st.thickness, cv2.LINE_AA)
            c = line_counts.get(line.name, {"in": 0, "out": 0})
            self._tag(img, f"{line.name} in {c['in']} out {c['out']}", a[0], a[1], LINE_COLOR, st, h, w)

    @staticmethod
    def _tag(img: np.ndarray, text: str, x: int, y: int, color, st: Style, h: int, w: int, *,
             inside: bool = False, text_color=None) -> None:
        (tw, th), base = cv2.getTextSize(text, FONT, st.font_scale, st.font_thickness)
        box_h = th + base + 2 * st.pad
        x = max(0, min(x, w - tw - 2 * st.pad))  # keep the whole tag inside the frame
        top = y if inside or y - box_h < 0 else y - box_h
        top = min(top, max(h - box_h, 0))
        cv2.rectangle(img, (x, top), (x + tw + 2 * st.pad, top + box_h), color, cv2.FILLED)
        if text_color is None:  # dark text on light colours, white on dark ones
            luma = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
            text_color = (0, 0, 0) if luma > 140 else (255, 255, 255)
        cv2.putText(img, text, (x + st.pad, top + st.pad + th), FONT, st.font_scale, text_color,
                    st.font_thickness, cv2.LINE_AA)


def annotate(result: Result, overlay: Optional[Overlay] = None) -> np.ndarray:
    """Draw ``result`` (boxes, labels, fps, inference ms) and store it in ``result.annotated``."""
    overlay = overlay or Overlay()
    infer = result.timings.get("invoke")
    result.annotated = overlay.draw(result.frame.image, result.detections, result.labels,
                                    fps=result.fps or None, infer_ms=infer)
    return result.annotated
