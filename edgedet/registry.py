"""The model registry: names in ``models/registry.yaml`` -> verified files in a local cache.

``resolve_model("ssd_mobilenet_v1_coco_quant")`` returns the cached ``.tflite`` (pulling it first when
needed); ``resolve_model("path/to/model.tflite")`` returns that path. Pulls come from the entry's URL,
or from ``EDGEDET_MODEL_MIRROR`` (a directory or an http(s) URL holding the files by their ``file``
name) for offline devices and tests. Every pull is checked against the entry's sha256 and written
atomically; a sidecar (labels, input, source) is written beside the cached model.

Entries of form ``tf1`` are TensorFlow 1 Object Detection API exports (the detection zoo's
tarballs): the pull keeps the verified tarball in the cache and hands it to a converter given by
the caller (``edgedet models pull`` passes ``edgedet.tools.convert``'s; this module never imports
the tools), which writes ``<name>.tflite`` (float) or ``<name>_<quantize>.tflite`` beside it.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import yaml

from .errors import AssetError, ModelError
from .sidecar import load_sidecar, save_sidecar

PACKAGE_ROOT = Path(__file__).resolve().parent
_REPO_MODELS = PACKAGE_ROOT.parent / "models"
_SHARE_MODELS = Path(sys.prefix) / "share" / "edgedet" / "models"
CONVERTED_FORMS = ("tf1",)  # pulled as an archive, converted to .tflite into the cache

# (verified archive, output .tflite) -> None; writes the .tflite and its sidecar
ArchiveConverter = Callable[[Path, Path], None]


@dataclass
class ModelEntry:
    name: str
    description: str = ""
    url: Optional[str] = None
    file: str = ""
    sha256: Optional[str] = None
    form: str = "op"
    input: dict = field(default_factory=dict)
    labels: Optional[str] = None
    member: Optional[str] = None
    license: Optional[str] = None
    origin: Optional[str] = None
    published: dict = field(default_factory=dict)


def models_dir() -> Path:
    """Where ``registry.yaml`` and ``labels/`` live: a source checkout, or the installed share dir."""
    env = os.environ.get("EDGEDET_REGISTRY")
    if env:
        return Path(env).parent
    for candidate in (_REPO_MODELS, _SHARE_MODELS):
        if (candidate / "registry.yaml").is_file():
            return candidate
    raise AssetError("model registry not found (models/registry.yaml); reinstall edgedet")


def registry_path() -> Path:
    env = os.environ.get("EDGEDET_REGISTRY")
    return Path(env) if env else models_dir() / "registry.yaml"


def load_registry() -> tuple[dict[str, ModelEntry], str]:
    """All entries by name, and the default model's name."""
    path = registry_path()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise AssetError(f"cannot read model registry {path}: {exc}") from exc
    known = {f for f in ModelEntry.__dataclass_fields__}
    entries = {}
    for name, raw in (data.get("models") or {}).items():
        extra = set(raw) - known
        if extra:
            raise AssetError(f"{path}: models.{name}.{sorted(extra)[0]}: unknown key")
        entries[name] = ModelEntry(name=name, **raw)
    return entries, str(data.get("default") or next(iter(entries), ""))


def get_entry(name: str) -> ModelEntry:
    entries, _ = load_registry()
    if name not in entries:
        raise AssetError(f"unknown model {name!r}: not a file and not in the registry "
                         f"(known: {', '.join(sorted(entries))})")
    return entries[name]


def default_model_name() -> str:
    return load_registry()[1]


def labels_path(ref: str) -> Path:
    """A registry label file name -> its path under ``models/labels``."""
    p = Path(ref)
    return p if p.is_absolute() else models_dir() / "labels" / p


def cache_dir() -> Path:
    env = os.environ.get("EDGEDET_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgedet" / "models"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cached_path(entry: ModelEntry, variant: str = "") -> Path:
    """The cached model file; for a converted form, the ``.tflite`` made from the archive
    (``variant``: "" for float, else the quantization, e.g. ``int8``)."""
    if entry.form in CONVERTED_FORMS:
        return cache_dir() / f"{entry.name}{'_' + variant if variant else ''}.tflite"
    return cache_dir() / entry.file


def is_cached(entry: ModelEntry, variant: str = "") -> bool:
    path = cached_path(entry, variant)
    if not path.is_file():
        return False
    if entry.form in CONVERTED_FORMS:  # made from the archive the registry names
        source = load_sidecar(path).get("source") or {}
        return not entry.sha256 or source.get("archive_sha256") == entry.sha256
    return not entry.sha256 or sha256_of(path) == entry.sha256


def looks_like_path(ref: str) -> bool:
    return os.sep in ref or "/" in ref or ref.endswith((".tflite", ".lite")) or ref.startswith(".")


def resolve_model(ref: Optional[str] = None, *, pull: bool = True, progress: bool = True) -> Path:
    """A model file for ``ref`` (a path, or a registry name; None = the default model)."""
    ref = ref or default_model_name()
    path = Path(os.path.expanduser(ref))
    if path.is_file():
        return path
    if path.is_dir():
        raise ModelError(f"model path is a directory, not a .tflite file: {ref}")
    if looks_like_path(ref):
        raise ModelError(f"model file not found: {ref}")
    entry = get_entry(ref)
    if entry.form == "tf":
        raise AssetError(f"model {ref!r} is a TensorFlow export: convert it first with "
                         f"`edgedet convert` (needs the [convert] extra), then pass the .tflite path")
    if entry.form in CONVERTED_FORMS and not is_cached(entry):
        raise AssetError(f"model {ref!r} is a TensorFlow export that is converted when pulled: run "
                         f"`edgedet models pull {ref}` once (needs the [convert] extra)")
    if is_cached(entry):
        return cached_path(entry)
    if not pull:
        raise AssetError(f"model {ref!r} is not cached: run `edgedet models pull {ref}`")
    return pull_model(ref, progress=progress)


# ---------------------------------------------------------------------------------------------
# pulling

def _mirror() -> Optional[str]:
    return os.environ.get("EDGEDET_MODEL_MIRROR") or None


def _open_url(url: str, timeout: float = 30.0):
    req = urllib.request.Request(url, headers={"User-Agent": "edgedet"})
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - http(s) only, checked by caller


def _copy_stream(src, dst, total: Optional[int], desc: str, progress: bool) -> None:
    bar = _progress_bar(total, desc) if progress else None
    try:
        for chunk in iter(lambda: src.read(1 << 16), b""):
            dst.write(chunk)
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()


def _progress_bar(total: Optional[int], desc: str):
    try:
        from tqdm import tqdm
    except ImportError:
        return _PlainProgress(total, desc)
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                leave=False, disable=not sys.stderr.isatty() and os.environ.get("EDGEDET_PROGRESS") != "1")


class _PlainProgress:
    """Progress on stderr without tqdm: a line at every 10%."""

    def __init__(self, total: Optional[int], desc: str) -> None:
        self.total, self.desc, self.done, self.next_mark = total, desc, 0, 0.1

    def update(self, n: int) -> None:
        self.done += n
        if self.total and self.done / self.total >= self.next_mark:
            print(f"{self.desc}: {int(100 * self.done / self.total)}%", file=sys.stderr)
            self.next_mark += 0.1

    def close(self) -> None:
        pass


def _fetch(source: str, dest: Path, desc: str, progress: bool) -> None:
    """Copy ``source`` (a local path, file:// or http(s):// URL) to ``dest``."""
    if source.startswith(("http://", "https://")):
        try:
            with _open_url(source) as resp, open(dest, "wb") as out:
                total = resp.headers.get("Content-Length")
                _copy_stream(resp, out, int(total) if total else None, desc, progress)
        except urllib.error.HTTPError as exc:
            raise AssetError(f"download failed: {source}: HTTP {exc.code}") from exc
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AssetError(f"download failed: {source}: {reason}") from exc
        return
    local = Path(source[7:] if source.startswith("file://") else source)
    if not local.is_file():
        raise AssetError(f"not found: {local}")
    with open(local, "rb") as src, open(dest, "wb") as out:
        _copy_stream(src, out, local.stat().st_size, desc, progress)


def _sources_for(entry: ModelEntry) -> list[str]:
    mirror = _mirror()
    sources = []
    if mirror and "://" in mirror:
        sources.append(mirror.rstrip("/") + "/" + entry.file)
    elif mirror:
        sources.append(str(Path(mirror) / entry.file))
    elif entry.url:
        sources.append(entry.url)
    return sources


def _extract_member(archive: Path, member: str, dest: Path) -> None:
    data = archive.read_bytes()
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            with zf.open(member) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
        return
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        src = tf.extractfile(member)
        if src is None:
            raise AssetError(f"{member} not found in {archive.name}")
        with open(dest, "wb") as out:
            shutil.copyfileobj(src, out)


def pull_model(name: str, *, progress: bool = True, force: bool = False,
               log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
               converter: Optional[ArchiveConverter] = None, variant: str = "") -> Path:
    """Download (or copy from the mirror) a registry model into the cache; verify; write its sidecar.

    A converted form (``tf1``) needs ``converter``; ``variant`` names its output (see ``cached_path``).
    """
    entry = get_entry(name)
    if entry.form in CONVERTED_FORMS:
        return _pull_converted(entry, progress=progress, force=force, log=log, converter=converter, variant=variant)
    target = cached_path(entry)
    if not force and is_cached(entry):
        return target
    digest = _download(entry, target, progress, log)
    write_entry_sidecar(entry, target, digest)
    return target


def _download(entry: ModelEntry, target: Path, progress: bool, log: Callable[[str], None]) -> str:
    """``entry``'s file fetched to ``target`` (atomically) after its sha256 (and, for a model, its
    format) checked; returns the sha256."""
    name = entry.name
    sources = _sources_for(entry)
    if not sources:
        raise AssetError(f"model {name!r} has no download URL: set EDGEDET_MODEL_MIRROR to a directory "
                         f"or URL holding {entry.file}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    errors = []
    try:
        for source in sources:
            try:
                _fetch(source, tmp, f"pull {name}", progress)
                break
            except AssetError as exc:
                errors.append(str(exc))
        else:
            hint = ("set EDGEDET_MODEL_MIRROR to a directory or http(s) URL holding "
                    f"{entry.file}, or copy it to {target}")
            raise AssetError(f"cannot get model {name!r} ({'; '.join(errors)}): {hint}")
        if entry.member and not _mirror() and entry.form not in CONVERTED_FORMS:
            raw = tmp.with_suffix(".archive")
            os.replace(tmp, raw)
            try:
                _extract_member(raw, entry.member, tmp)
            finally:
                raw.unlink(missing_ok=True)
        digest = sha256_of(tmp)
        if entry.sha256 and digest != entry.sha256:
            raise AssetError(f"checksum mismatch for {name}: got {digest[:16]}..., expected "
                             f"{entry.sha256[:16]}... (corrupt download or wrong mirror file); "
                             "nothing was saved")
        if not entry.sha256:
            log(f"note: {name} has no published checksum; recorded sha256 {digest}")
        with open(tmp, "rb") as fh:
            head = fh.read(8)
        if entry.form not in CONVERTED_FORMS and head[4:8] != b"TFL3":
            raise AssetError(f"pulled file for {name} is not a .tflite model; nothing was saved")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return digest


def _pull_converted(entry: ModelEntry, *, progress: bool, force: bool, log: Callable[[str], None],
                    converter: Optional[ArchiveConverter], variant: str) -> Path:
    """The archive fetched and verified into the cache (kept: another variant converts from it),
    then converted to ``cached_path(entry, variant)``."""
    target = cached_path(entry, variant)
    if not force and is_cached(entry, variant):
        return target
    if converter is None:
        raise AssetError(f"model {entry.name!r} is a TensorFlow export converted when pulled: run "
                         f"`edgedet models pull {entry.name}` (needs the [convert] extra)")
    archive = cache_dir() / entry.file
    if force or not archive.is_file() or (entry.sha256 and sha256_of(archive) != entry.sha256):
        digest = _download(entry, archive, progress, log)
    else:
        digest = sha256_of(archive)
    log(f"converting {entry.file} to {target.name}")
    converter(archive, target)
    side = load_sidecar(target)
    side.update({"name": entry.name, "description": entry.description, "published": entry.published,
                 "source": {**(side.get("source") or {}), "url": entry.url or entry.origin,
                            "archive_sha256": digest, "registry": True}})
    save_sidecar(target, side)
    return target


def write_entry_sidecar(entry: ModelEntry, model_path: Path, digest: str) -> Path:
    data = dict(load_sidecar(model_path))
    data.update({
        "name": entry.name,
        "description": entry.description,
        "source": {"url": entry.url or entry.origin, "sha256": digest, "registry": True},
        "input": {k: v for k, v in (entry.input or {}).items() if k != "size"},
        "published": entry.published,
    })
    if entry.labels:
        data["labels"] = str(labels_path(entry.labels))
    return save_sidecar(model_path, data)


def registry_labels_for_file(model_path: str | os.PathLike) -> Optional[Path]:
    """The registry's label file for a model file with a registry checksum (None if unknown)."""
    try:
        entries, _ = load_registry()
        by_sha = {e.sha256: e for e in entries.values() if e.sha256 and e.labels}
        if not by_sha:
            return None
        entry = by_sha.get(sha256_of(Path(model_path)))
        return labels_path(entry.labels) if entry is not None else None
    except (AssetError, OSError):
        return None
