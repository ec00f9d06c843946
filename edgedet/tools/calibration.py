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

import numpy as np
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
    from ..tflite import write_atomic

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


BALANCES = ("kind", "source")


@dataclass
class _Source:
    uri: str
    kind: str  # video | camera | stream | images | image
    available: Optional[int]  # images or frames it can give (None: unbounded, a live source)
    quota: int = 0

    @property
    def still(self) -> bool:
        return self.kind in ("images", "image")


def _available(uri: str, kind: str) -> Optional[int]:
    if kind == "images":
        return len(list_images(uri))
    if kind == "image":
        return 1
    if kind != "video":
        return None
    import cv2

    cap = cv2.VideoCapture(uri)
    try:
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if cap.isOpened() else 0
    finally:
        cap.release()
    return count or None


def fair_shares(total: int, caps: Sequence[Optional[int]]) -> list[int]:
    """``total`` split as evenly as possible over len(caps) takers, none above its cap (None: no cap);
    what a capped taker cannot take goes to the others."""
    shares = [0] * len(caps)
    open_ = [i for i, c in enumerate(caps) if c is None or c > 0]
    left = total
    while left > 0 and open_:
        each, extra = divmod(left, len(open_))
        given = 0
        for rank, i in enumerate(open_):
            want = each + (1 if rank < extra else 0)
            room = want if caps[i] is None else min(want, caps[i] - shares[i])
            shares[i] += room
            given += room
        left -= given
        open_ = [i for i in open_ if caps[i] is None or shares[i] < caps[i]]
        if given == 0:
            break
    return shares


def plan_quotas(sources: Sequence[_Source], num: int, balance: str) -> None:
    """Set each source's quota. ``source``: an equal share of ``num`` each (a source with fewer images
    gives fewer). ``kind``: still images (all photo sources together) and moving sources (videos,
    cameras, streams together) get half each, split evenly within a kind; whatever a source or kind
    cannot give goes to the others."""
    if balance == "source":
        for i, src in enumerate(sources):
            share = num // len(sources) + (1 if i < num % len(sources) else 0)
            src.quota = share if src.available is None else min(share, src.available)
        return
    kinds = [[s for s in sources if s.still], [s for s in sources if not s.still]]
    caps = [None if any(s.available is None for s in k) else sum(s.available for s in k) for k in kinds]
    caps = [c if k else 0 for c, k in zip(caps, kinds)]
    for members, share in zip(kinds, fair_shares(num, caps)):
        for src, quota in zip(members, fair_shares(share, [s.available for s in members])):
            src.quota = quota


def build_calibration_set(sources: Sequence[str], out_dir, *, num: int = 64, every: Optional[int] = None,
                          max_side: Optional[int] = 1280, timeout: float = 10.0, progress: bool = False,
                          balance: str = "source", augment: float = 0.0, seed: int = 0,
                          exclude: Sequence[str] = ()) -> CalibrationSet:
    """Sample ``num`` images from ``sources`` into ``out_dir`` and write the manifest.

    ``balance`` splits ``num`` over the sources (``plan_quotas``). Videos are sampled evenly over
    their length (or every ``every``-th frame); cameras and streams every ``every``-th frame
    (default: one per second); image folders evenly. ``augment`` is the fraction of ``num`` made of
    crops and horizontal flips of the sampled images (chosen with ``seed``: the same call gives the
    same set). Sources holding an image of an evaluation set (``exclude``: COCO annotation files or
    image folders; folders beside an ``annotations/`` folder count as evaluation sets too) are
    refused. An existing manifest in ``out_dir`` is extended, so a set can be built from several runs.
    """
    if not sources:
        raise ConfigError("give at least one calibration --source")
    if num < 1:
        raise ConfigError("--num must be at least 1")
    if every is not None and every < 1:
        raise ConfigError("--every must be at least 1")
    if balance not in BALANCES:
        raise ConfigError(f"--balance must be one of {', '.join(BALANCES)}")
    if not 0 <= augment < 1:
        raise ConfigError("--augment must be in [0, 1)")
    plan = [_Source(str(u), _source_kind(str(u)), None) for u in sources]
    check_not_eval([s.uri for s in plan if s.still], exclude)
    for src in plan:
        src.available = _available(src.uri, src.kind)
    n_aug = round(num * augment)
    plan_quotas(plan, num - n_aug, balance)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(out_dir / MANIFEST)
    existing = {e.get("file") for e in manifest["images"] if isinstance(e, dict)}
    taken: list[tuple[dict, object]] = []  # (manifest entry, image) of this run
    for src in plan:
        if src.quota == 0:
            continue
        record: dict = {"uri": src.uri, "kind": src.kind}
        if src.still:
            got = _take_stills(src, existing)
        else:
            got = _take_frames(src, every, timeout, existing, record)
        if not got:
            raise SourceError(f"no frames could be read from calibration source {src.uri}")
        record["taken"] = len(got)
        manifest["sources"].append(record)
        taken.extend(got)
    augmented = augment_images(taken, n_aug, seed, existing)
    for entry, image in taken + augmented:
        _write_image(image, out_dir / entry["file"], max_side)
        manifest["images"].append({**entry, "sha256": sha256_file(out_dir / entry["file"])})
    if augmented:
        manifest["sources"].append({"uri": "augment", "kind": "augment", "seed": int(seed), "taken": len(augmented)})
    manifest["balance"] = balance
    manifest["created"] = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    from ..tflite import write_atomic

    write_atomic(out_dir / MANIFEST, yaml.safe_dump(manifest, sort_keys=False).encode())
    return load_calibration_set(out_dir)


def _read_manifest(path: Path) -> dict:
    manifest = {"version": 1, "sources": [], "images": []}
    if path.is_file():
        old = yaml.safe_load(path.read_text()) or {}
        if isinstance(old, dict):
            manifest["sources"] = list(old.get("sources") or [])
            manifest["images"] = list(old.get("images") or [])
    return manifest


def _take_stills(src: _Source, existing: set) -> list[tuple[dict, object]]:
    import cv2

    files = list_images(src.uri) if src.kind == "images" else [Path(src.uri)]
    if not files:
        raise SourceError(f"no images in calibration source {src.uri}")
    stem = _safe_stem(src.uri)
    step = len(files) / src.quota
    picks = sorted({int(i * step) for i in range(min(src.quota, len(files)))})
    got = []
    for i in picks:
        image = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
        if image is None:
            raise SourceError(f"cannot read image {files[i]}")
        name = _unique(f"{stem}_{files[i].stem}.jpg" if src.kind == "images" else f"{files[i].stem}.jpg", existing)
        got.append(({"file": name, "source": str(files[i])}, image))
    return got


def _take_frames(src: _Source, every: Optional[int], timeout: float, existing: set,
                 record: dict) -> list[tuple[dict, object]]:
    n = src.quota
    frames = _sample_capture(src.uri, src.kind, n, every, timeout)
    info = next(frames)
    taken = list(frames)
    if src.kind == "video" and every is None and len(taken) < n and taken:
        # the container over-reported its length: sample again over the frames it has
        seen = taken[-1][0] + info["every"]
        info["every"] = max(1, seen // n)
        frames = _sample_capture(src.uri, src.kind, n, info["every"], timeout)
        next(frames)
        taken = list(frames)
    info["frames"] = info["frames"] if len(taken) >= n else None
    record.update({k: v for k, v in info.items() if v is not None})
    stem = _safe_stem(src.uri)
    return [({"file": _unique(f"{stem}_{index:06d}.jpg", existing), "source": src.uri, "frame": int(index)}, image)
            for index, image in taken]


AUGMENTS = ("crop", "flip", "crop+flip")


def augment_images(taken: Sequence[tuple[dict, object]], count: int, seed: int,
                   existing: set) -> list[tuple[dict, object]]:
    """``count`` crops / horizontal flips of images in ``taken``, reproducible from ``seed``.

    Originals are drawn in turn from each source (so every source gets its share of variants),
    without repeats while there are enough; a crop keeps 40-85 % of each side at a random place.
    """
    if count <= 0 or not taken:
        return []
    rng = np.random.default_rng(seed)
    by_source: dict[str, list[int]] = {}
    for i, (entry, _) in enumerate(taken):
        by_source.setdefault(str(entry["source"]) if "frame" in entry else "stills", []).append(i)
    queues = [list(rng.permutation(ix)) for ix in by_source.values()]
    order: list[int] = []
    k = 0
    while len(order) < count:  # round robin over the sources, each cycling through its images
        order.extend(int(q[k % len(q)]) for q in queues)
        k += 1
    out = []
    for n, i in enumerate(order[:count]):
        entry, image = taken[int(i)]
        kind = AUGMENTS[n % len(AUGMENTS)]
        h, w = image.shape[:2]
        record: dict = {"augment": kind, "of": entry["file"]}
        if "crop" in kind:
            fw, fh = rng.uniform(0.4, 0.85, size=2)
            cw, ch = max(8, int(w * fw)), max(8, int(h * fh))
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            image = image[y0:y0 + ch, x0:x0 + cw]
            record["crop"] = [x0, y0, x0 + cw, y0 + ch]
        if "flip" in kind:
            image = image[:, ::-1]
        base, _ = os.path.splitext(entry["file"])
        name = _unique(f"{base}_{kind.replace('+', '_')}.jpg", existing)
        out.append(({"file": name, "source": entry["source"], **record}, np.ascontiguousarray(image)))
    return out


def eval_file_names(path) -> set[str]:
    """File names of an evaluation set: a COCO annotation JSON or a folder of images."""
    import json

    path = Path(path)
    if path.is_dir():
        return {p.name for p in list_images(path)}
    if not path.is_file():
        raise ConfigError(f"--exclude: not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--exclude: not a COCO annotation file: {path}") from exc
    return {Path(str(im.get("file_name", ""))).name for im in data.get("images") or [] if isinstance(im, dict)}


def check_not_eval(still_sources: Sequence[str], exclude: Sequence[str] = ()) -> None:
    """One-line ``ConfigError`` when a still-image source holds images of an evaluation set: one
    of ``exclude``, or the source itself looks annotated (an ``annotations/`` folder with JSON beside
    it or inside it)."""
    forbidden: dict[str, str] = {}
    for ex in exclude:
        for name in eval_file_names(ex):
            forbidden.setdefault(name, str(ex))
    for uri in still_sources:
        path = Path(uri)
        folder = path if path.is_dir() else path.parent
        for ann in (folder.parent / "annotations", folder / "annotations"):
            if ann.is_dir() and any(ann.glob("*.json")):
                raise ConfigError(f"calibration source {uri} looks like an evaluation set ({ann} beside it): "
                                  "never calibrate on the images you evaluate on")
        names = {p.name for p in list_images(path)} if path.is_dir() else {path.name}
        clash = sorted(names & set(forbidden))
        if clash:
            raise ConfigError(f"calibration source {uri} holds {len(clash)} images of the evaluation set "
                              f"{forbidden[clash[0]]} (e.g. {clash[0]}): never calibrate on them")


def _unique(name: str, existing: set) -> str:
    base, ext = os.path.splitext(name)
    candidate, k = name, 1
    while candidate in existing:
        candidate = f"{base}_{k}{ext}"
        k += 1
    existing.add(candidate)
    return candidate
