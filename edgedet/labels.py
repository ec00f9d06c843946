"""Class labels: plain text files (one label per line) and the model sidecar's ``labels``."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from .errors import ModelError

_ID_LINE = re.compile(r"^\s*(\d+)[\s:,]+(.*\S)\s*$")
_BACKGROUND = {"background", "???", "__background__", "bg"}


def read_label_file(path: str | os.PathLike) -> list[str]:
    """Labels from a text file: one per line (line index = class id).

    Files where every line is ``<id> <label>`` (Coral style) are read by id; missing ids read ``n/a``.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"label file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"cannot read label file {path}: {exc}") from exc
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ModelError(f"label file is empty: {path}")
    matches = [_ID_LINE.match(line) for line in lines]
    if all(matches) and len(lines) > 1:
        table = {int(m.group(1)): m.group(2) for m in matches}  # type: ignore[union-attr]
        return [table.get(i, "n/a") for i in range(max(table) + 1)]
    return [line.strip() for line in lines]


def generic_labels(num_classes: int) -> list[str]:
    return [f"class{i}" for i in range(num_classes)]


def fit_labels(labels: Sequence[str], num_classes: int | None, *, offset: int = 0, source: str = "labels") -> list[str]:
    """The ``num_classes`` labels of a model: ``labels[i + offset]`` for class ``i``.

    A list that is one longer than the model's classes and starts with a background entry is
    accepted (offset 1). Anything else whose length does not fit is a ``ModelError``.
    """
    labels = [str(x) for x in labels]
    if num_classes is None:
        return labels[offset:]
    if offset == 0 and len(labels) == num_classes + 1 and labels[0].strip().lower() in _BACKGROUND:
        offset = 1
    if offset < 0 or len(labels) - offset != num_classes:
        raise ModelError(
            f"{source} has {len(labels)} labels (offset {offset}) but the model has {num_classes} classes"
        )
    return labels[offset:]


def class_ids_for(names: Sequence[str | int], labels: Sequence[str]) -> list[int]:
    """Class ids of ``names`` (labels, case-insensitive, or integer ids); unknown names are a ConfigError."""
    from .errors import ConfigError

    lookup: dict[str, int] = {}
    for i, label in enumerate(labels):
        lookup.setdefault(label.strip().lower(), i)
    ids = []
    for name in names:
        if isinstance(name, int) or (isinstance(name, str) and name.strip().isdigit()):
            cid = int(name)
            if not 0 <= cid < len(labels):
                raise ConfigError(f"model.classes: class id {cid} is out of range 0..{len(labels) - 1}")
            ids.append(cid)
            continue
        key = str(name).strip().lower()
        if key not in lookup:
            raise ConfigError(f"model.classes: unknown label {name!r} (not in the model's labels)")
        ids.append(lookup[key])
    return ids
