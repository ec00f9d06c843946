"""``edgedet models list|info|pull``: the model registry."""

from __future__ import annotations

import json

import click

from ..registry import cached_path, get_entry, is_cached, load_registry, pull_model


@click.group("models")
def command() -> None:
    """List, describe and pull the registry's models."""


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def list_models(as_json: bool) -> None:
    """Registry models, the default one marked with *."""
    entries, default = load_registry()
    rows = []
    for name, e in entries.items():
        rows.append({
            "name": name, "default": name == default, "form": e.form,
            "input": "x".join(map(str, e.input.get("size", []))), "dtype": e.input.get("dtype", ""),
            "coco_map": e.published.get("coco_map"), "cached": e.form != "tf" and is_cached(e),
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'':1} {'name':34} {'form':4} {'input':8} {'dtype':8} {'mAP*':>5}  cached")
    for r in rows:
        mark = "*" if r["default"] else " "
        cmap = "" if r["coco_map"] is None else f"{r['coco_map']:.1f}"
        click.echo(f"{mark} {r['name']:34} {r['form']:4} {r['input']:8} {r['dtype']:8} {cmap:>5}  "
                   f"{'yes' if r['cached'] else 'no'}")
    click.echo("* mAP: published COCO figure (see `edgedet models info NAME` for its source)")


@command.command("info")
@click.argument("name")
def info(name: str) -> None:
    """Everything the registry knows about NAME, or what a model file (a path) holds."""
    from pathlib import Path

    from ..registry import looks_like_path

    if Path(name).is_file() or looks_like_path(name):
        _file_info(Path(name))
        return
    e = get_entry(name)
    click.echo(f"{e.name}: {e.description}")
    for key in ("url", "origin", "file", "sha256", "form", "input", "labels", "license"):
        value = getattr(e, key)
        if value:
            click.echo(f"  {key}: {value}")
    if e.published:
        click.echo(f"  published COCO mAP: {e.published.get('coco_map')} ({e.published.get('source')})")
    click.echo(f"  cache: {cached_path(e)} ({'present' if is_cached(e) else 'not pulled'})")


def _file_info(path) -> None:
    """A model file: its form, input, decode settings, labels and the sidecar's record."""
    from ..detector import Detector
    from ..errors import ModelError
    from ..labels import generic_labels
    from ..sidecar import load_sidecar

    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    det = Detector.from_path(path, threads=1)
    i, o = det.info, det.info.options
    w, h = i.input_size
    click.echo(f"{i.name}: {path} ({path.stat().st_size / 1e6:.2f} MB)")
    click.echo(f"  form: {i.form} (decoded by {'the in-graph op' if i.postprocess == 'op' else 'edgedet'})")
    q = f", quantized scale {i.input_quantization[0]:g} zero point {i.input_quantization[1]}" \
        if i.input_quantization[0] else ""
    norm = "raw pixels" if i.normalization is None else \
        f"mean {list(i.normalization[0])} std {list(i.normalization[1])}"
    click.echo(f"  input: {w}x{h} {i.input_dtype} {i.color}, {norm}, resize {i.resize}{q}")
    if i.num_anchors:
        click.echo(f"  anchors: {i.num_anchors}" + (f" ({i.anchors_source})" if i.anchors_source else ""))
    click.echo(f"  decode: scores {o.score_activation}, {o.background} background column(s), NMS IoU "
               f"{o.iou_threshold:g}, max {o.max_detections} detections, "
               f"{'per-class' if o.use_regular_nms else 'class-agnostic'}")
    generic = det.labels == generic_labels(len(det.labels))
    shown = ", ".join(det.labels[:8]) + (", ..." if len(det.labels) > 8 else "")
    click.echo(f"  labels: {len(det.labels)} classes: {shown}" + (" (generic: no label file)" if generic else ""))
    side = load_sidecar(path)
    for key in ("source", "quantization", "accuracy", "speed"):
        if isinstance(side.get(key), dict):
            brief = {k: v for k, v in side[key].items() if not isinstance(v, (dict, list))}
            click.echo(f"  {key}: " + ", ".join(f"{k} {v}" for k, v in brief.items()))


@command.command("pull")
@click.argument("names", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="download again even if cached")
@click.option("--quantize", type=click.Choice(["int8", "fp16", "dynamic"]), default=None,
              help="TensorFlow exports (form tf1) only: quantize the converted model (default: float32)")
@click.option("--calibration", type=click.Path(), default=None,
              help="--quantize int8: calibration image folder (see `edgedet calibration build`)")
@click.option("--num-calib", type=click.IntRange(1), default=None, help="--quantize int8: use this many images")
def pull(names: tuple[str, ...], force: bool, quantize, calibration, num_calib) -> None:
    """Download NAMES into the cache (or copy them from EDGEDET_MODEL_MIRROR), checking sha256.

    TensorFlow exports (form tf1, e.g. ssdlite_mobilenet_v2_coco) are converted to .tflite once
    pulled (needs the [convert] extra): float32, or --quantize int8 --calibration DIR.
    """
    from ..errors import ConfigError
    from ..registry import CONVERTED_FORMS

    entries = [get_entry(name) for name in names]
    if quantize and any(e.form not in CONVERTED_FORMS for e in entries):
        raise ConfigError("--quantize applies to TensorFlow exports (form tf1) only; use `edgedet convert` for "
                          "a .tflite")
    if quantize == "int8" and not calibration:
        raise ConfigError("--quantize int8 needs --calibration DIR (make one with `edgedet calibration build`)")
    if calibration and quantize != "int8":
        raise ConfigError("--calibration is only used with --quantize int8")
    converter = _converter(quantize, calibration, num_calib)
    for e in entries:
        path = pull_model(e.name, force=force, converter=converter, variant=quantize or "")
        click.echo(f"{e.name}: {path}")


def _converter(quantize, calibration, num_calib):
    """The registry's archive converter: ``edgedet convert`` of a TF1 export."""
    def log(msg: str) -> None:
        click.echo(msg, err=True)

    def run(archive, out) -> None:
        from ..tools.convert import convert_tf1

        report = convert_tf1(archive, out, quantize=quantize, calibration=calibration, num_calib=num_calib, log=log)
        log(report.format_summary())

    return run
