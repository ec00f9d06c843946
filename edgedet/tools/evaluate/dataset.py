"""The annotated image set: a COCO instances file checked against its image folder, model class ->
dataset category mapping, and the categories that are scored."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ...errors import ConfigError

CLASS_MAPS = ("auto", "name", "coco90", "index")


@dataclass
class CocoSet:
    """The images of an annotation file that exist on disk (sorted by image id)."""

    annotations: Path
    images_dir: Path
    images: list  # [{id, file_name, width, height}]
    categories: list  # [{id, name}]
    data: dict


def load_coco(images_dir, annotations, limit: Optional[int] = None) -> CocoSet:
    """Read a COCO instances file and check it against ``images_dir`` (one-line errors)."""
    images_dir = Path(images_dir)
    annotations = Path(annotations)
    if not images_dir.is_dir():
        raise ConfigError(f"images directory not found: {images_dir}")
    if not annotations.is_file():
        raise ConfigError(f"annotation file not found: {annotations}")
    try:
        data = json.loads(annotations.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read annotation file {annotations}: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("categories"), list) or "annotations" not in data:
        raise ConfigError(f"{annotations} is not a COCO instances file (needs images, annotations, categories)")
    try:
        images = sorted(
            ({"id": int(im["id"]), "file_name": str(im["file_name"]),
              "width": int(im.get("width", 0)), "height": int(im.get("height", 0))}
             for im in data["images"]),
            key=lambda im: im["id"],
        )
        categories = [{"id": int(c["id"]), "name": str(c["name"])} for c in data["categories"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{annotations}: malformed image or category entry ({exc})") from exc
    if not images:
        raise ConfigError(f"{annotations} lists no images")
    present = [im for im in images if (images_dir / im["file_name"]).is_file()]
    if not present:
        raise ConfigError(
            f"annotation file {annotations} does not match {images_dir}: none of its {len(images)} "
            f"image files (e.g. {images[0]['file_name']}) is there"
        )
    if len(present) < len(images):
        missing = [im["file_name"] for im in images if not (images_dir / im["file_name"]).is_file()]
        raise ConfigError(
            f"{len(missing)} of {len(images)} images of {annotations.name} are missing from {images_dir} "
            f"(first: {missing[0]})"
        )
    if limit is not None:
        if limit < 1:
            raise ConfigError("limit must be at least 1")
        present = present[:limit]
    return CocoSet(annotations, images_dir, present, categories, data)


def norm_name(name: str) -> str:
    """A category or label name compared case-insensitively, ignoring spaces, ``-`` and ``_``."""
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


def class_id_map(labels: Optional[Sequence[str]], categories: list, mode: str = "auto",
                 num_classes: Optional[int] = None) -> tuple[np.ndarray, list]:
    """Array ``m`` with ``m[model_index] = category_id`` (-1 = not in the dataset) and the unmapped labels.

    See the package docstring for the modes.
    """
    if mode not in CLASS_MAPS:
        raise ConfigError(f"class map must be one of {', '.join(CLASS_MAPS)}, not {mode!r}")
    cat_ids = {c["id"] for c in categories}
    by_name = {norm_name(c["name"]): c["id"] for c in categories}
    n = len(labels) if labels is not None else int(num_classes or 0)
    if labels is None and mode in ("auto", "name"):
        if n > 90 or not num_classes:
            raise ConfigError("the model has no labels: give --labels or --class-map coco90|index")
        mode = "coco90"
    n = max(n, int(num_classes or 0))
    out = np.full(max(n, 1), -1, np.int64)
    unmapped = []
    coco90 = labels is not None and len(labels) in (90, 91)
    for i in range(n):
        label = labels[i] if labels is not None and i < len(labels) else None
        cid = -1
        if mode in ("auto", "name") and label is not None:
            cid = by_name.get(norm_name(label), -1)
        if cid < 0 and (mode == "coco90" or (mode == "auto" and coco90 and norm_name(label or "") in ("", "n/a"))):
            cid = i + 1 if (i + 1) in cat_ids else -1
        if mode == "index":
            cid = i if i in cat_ids else -1
        out[i] = cid
        if cid < 0 and label is not None and norm_name(label) not in ("n/a", "na", "", "background", "???"):
            unmapped.append(label)
    if not (out >= 0).any():
        raise ConfigError(
            "no model class matches a category of the annotation file: check --labels or --class-map"
        )
    return out, unmapped


def parse_categories(text: Union[str, Sequence[Union[str, int]], None]) -> Optional[list]:
    """``"person,car"`` or ``"1,3"`` (or a list of names / ids) as a list; None or empty -> None."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    out = [x.strip() if isinstance(x, str) else x for x in items]
    out = [x for x in out if x != ""]
    return out or None


def annotated_categories(coco_set: CocoSet) -> set:
    """Ids of the categories with at least one annotation on the images of ``coco_set``."""
    ids = {im["id"] for im in coco_set.images}
    try:
        return {int(a["category_id"]) for a in coco_set.data["annotations"] if int(a["image_id"]) in ids}
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{coco_set.annotations}: malformed annotation entry ({exc})") from exc


def select_categories(coco_set: CocoSet, wanted: Optional[Sequence[Union[str, int]]],
                      cat_map: np.ndarray) -> tuple[list, list]:
    """The dataset categories (``[{id, name}]``, by id) that are scored - ``wanted`` (names or ids)
    if given, else those the model's classes map to - that are annotated on the images, and the
    names of the wanted ones that are not (pycocotools leaves a category without ground truth out)."""
    categories = coco_set.categories
    by_id = {c["id"]: c for c in categories}
    scorable = set(int(c) for c in cat_map[cat_map >= 0])
    if not wanted:
        chosen = scorable & annotated_categories(coco_set)
        if not chosen:
            raise ConfigError("none of the model's classes is annotated on these images: check --labels or --class-map")
        return [by_id[i] for i in sorted(chosen) if i in by_id], []
    by_name = {norm_name(c["name"]): c for c in categories}
    picked = {}
    for w in wanted:
        text = str(w).strip()
        cat = by_id.get(int(text)) if text.isdigit() else by_name.get(norm_name(text))
        if cat is None:
            names = ", ".join(c["name"] for c in categories[:8])
            raise ConfigError(f"category {text!r} is not in the annotation file (it has: {names}"
                              f"{', ...' if len(categories) > 8 else ''})")
        picked[cat["id"]] = cat
    if not scorable & set(picked):
        raise ConfigError("none of the chosen categories is among the model's classes: check --categories or --labels")
    annotated = annotated_categories(coco_set)
    if not annotated & set(picked):
        raise ConfigError(f"none of the chosen categories is annotated on the images of {coco_set.annotations.name}")
    return ([picked[i] for i in sorted(picked) if i in annotated],
            [picked[i]["name"] for i in sorted(picked) if i not in annotated])


def load_labels(path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"label file not found: {path}")
    lines = [line.strip() for line in path.read_text().splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines
