"""Recording file names (``strftime`` patterns, segments) and the retention limit (``--record-keep``).

A recording split into segments (``--record-segment SECONDS``) is named after the wall-clock time
of each segment's first frame: ``--record /rec/cam.mp4`` gives ``/rec/cam_20261122_030405.mp4``;
a name with ``%`` codes (``/rec/front-%Y%m%d-%H%M%S.mkv``) is used as the pattern itself. Two
segments starting in the same second get ``_1``, ``_2``... before the extension.

``--record-keep`` bounds what the recordings may take: a total size (``20GB``, ``500MB``, ``1.5G``)
and/or an age (``7d``, ``12h``, ``90min``, ``2w``), comma separated (``20GB,7d``). After each
segment the oldest files matching the pattern are deleted (never other files, never the one being
written) until both limits hold.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import parse_keep

log = logging.getLogger("edgedet.recorder")

# strftime codes -> what they match in a file name (others match any run of characters)
CODE_PATTERNS = {"Y": r"\d{4}", "y": r"\d{2}", "m": r"\d{2}", "d": r"\d{2}", "H": r"\d{2}", "M": r"\d{2}",
                 "S": r"\d{2}", "j": r"\d{3}", "%": "%"}
DEFAULT_PATTERN = "_%Y%m%d_%H%M%S"


@dataclass(frozen=True)
class Keep:
    max_bytes: Optional[int] = None
    max_age_s: Optional[float] = None


def keep_limits(text: Optional[str], field: str = "output.record_keep") -> Optional[Keep]:
    """``"20GB"``, ``"7d"``, ``"20GB,7d"`` -> ``Keep`` (``None`` for no limit); ``ConfigError`` otherwise."""
    if text is None or not str(text).strip():
        return None
    return Keep(*parse_keep(text, field))


class RecordingNames:
    """The files of one recording: a fixed name, or a ``strftime`` pattern (segments)."""

    def __init__(self, path: str | Path, segmented: bool) -> None:
        path = Path(path)
        self.directory = path.parent if str(path.parent) else Path(".")
        name = path.name
        if segmented and "%" not in name:
            name = f"{path.stem}{DEFAULT_PATTERN}{path.suffix}"
        self.pattern = name
        self.patterned = "%" in name
        self.suffix = path.suffix
        stem = name[: len(name) - len(self.suffix)] if self.suffix else name
        self._regex = re.compile(self._to_regex(stem) + r"(?:_\d+)?" + re.escape(self.suffix))

    @staticmethod
    def _to_regex(stem: str) -> str:
        out, i = [], 0
        while i < len(stem):
            if stem[i] == "%" and i + 1 < len(stem):
                out.append(CODE_PATTERNS.get(stem[i + 1], ".+?"))
                i += 2
            else:
                out.append(re.escape(stem[i]))
                i += 1
        return "".join(out)

    def path_for(self, wall_time: float) -> Path:
        """The file for a segment starting at ``wall_time``; never an existing file when patterned."""
        if not self.patterned:
            return self.directory / self.pattern
        base = time.strftime(self.pattern, time.localtime(wall_time))
        path = self.directory / base
        stem = base[: len(base) - len(self.suffix)] if self.suffix else base
        n = 0
        while path.exists():
            n += 1
            path = self.directory / f"{stem}_{n}{self.suffix}"
        return path

    def matches(self, path: Path) -> bool:
        return bool(self._regex.fullmatch(path.name))

    def existing(self) -> list[Path]:
        """Files of this recording in its directory, oldest first (by modification time)."""
        if not self.patterned:
            return []
        found = []
        try:
            entries = list(self.directory.iterdir())
        except OSError:
            return []
        for entry in entries:
            if self.matches(entry):
                try:
                    if entry.is_file():
                        found.append((entry.stat().st_mtime, entry.name))
                except OSError:
                    continue
        return [self.directory / name for _, name in sorted(found)]


def enforce_keep(names: RecordingNames, keep: Optional[Keep], current: Optional[Path] = None,
                 now: Optional[float] = None) -> list[Path]:
    """Delete the oldest files of the recording beyond ``keep``; returns the deleted paths."""
    if keep is None:
        return []
    now = time.time() if now is None else now
    files = [p for p in names.existing() if current is None or p != current]
    removed: list[Path] = []
    sizes = {}
    for p in files:
        try:
            st = p.stat()
        except OSError:
            continue
        sizes[p] = (st.st_size, st.st_mtime)
    total = sum(s for s, _ in sizes.values())
    if current is not None:
        try:
            total += current.stat().st_size
        except OSError:
            pass
    for p in [p for p in files if p in sizes]:
        size, mtime = sizes[p]
        too_old = keep.max_age_s is not None and now - mtime > keep.max_age_s
        too_big = keep.max_bytes is not None and total > keep.max_bytes
        if not (too_old or too_big):
            continue
        try:
            p.unlink()
        except OSError as exc:
            log.warning("could not delete old recording %s: %s", p, exc.strerror or exc)
            continue
        total -= size
        removed.append(p)
        log.debug("deleted old recording %s (%s)", p, "age" if too_old else "size")
    return removed
