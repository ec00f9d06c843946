"""Still images: one file, or every image of a directory in name order (one frame each)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import cv2

from ..errors import SourceError
from ..frame import Frame
from .base import BaseSource

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".jp2"}
)


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


class ImageSource(BaseSource):
    """Frames from an image file or a directory of images (not recursive).

    In a directory, files that cannot be decoded are skipped with a warning (counted in
    ``stats()['skipped']``); a single file that cannot be decoded is a ``SourceError``.
    ``loop=True`` starts over at the end.
    """

    live = False
    fps = 0.0

    def __init__(self, path: str | Path, *, loop: bool = False, fps: Optional[float] = None,
                 source_id: str = "0") -> None:
        self.path = Path(path)
        self.name = str(self.path)
        self.loop = loop
        self.fps = float(fps or 0.0)
        self.source_id = source_id
        self.files: list[Path] = []
        self.skipped = 0
        self._pos = 0
        self._index = 0
        self._opened = False

    def open(self) -> None:
        if self._opened:
            return
        if not self.path.exists():
            raise SourceError(f"source not found: {self.path}")
        if self.path.is_dir():
            try:
                files = sorted(p for p in self.path.iterdir() if p.is_file() and is_image_path(p))
            except OSError as exc:
                raise SourceError(f"cannot list directory {self.path}: {exc.strerror or exc}") from exc
            if not files:
                raise SourceError(
                    f"no images in directory {self.path} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
            self.files = files
        else:
            try:
                with open(self.path, "rb") as fh:
                    fh.read(1)
            except OSError as exc:
                raise SourceError(f"cannot read source {self.path}: {exc.strerror or exc}") from exc
            if cv2.imread(str(self.path), cv2.IMREAD_COLOR) is None:
                raise SourceError(f"cannot decode image {self.path}")
            self.files = [self.path]
        self._opened = True

    def close(self) -> None:
        self._opened = False

    def read(self) -> Optional[Frame]:
        while True:
            if self._pos >= len(self.files):
                if not self.loop or not self.files or self._index == 0:
                    return None
                self._pos = 0
            path = self.files[self._pos]
            self._pos += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                self.skipped += 1
                log.warning("skipping %s: cannot decode image", path)
                continue
            frame = Frame(image=image, index=self._index, timestamp=time.monotonic(), wall_time=time.time(),
                          source_id=self.source_id)
            self._index += 1
            return frame

    def stats(self) -> dict:
        return {"frames_read": self._index, "images": len(self.files), "skipped": self.skipped}
