"""``edgedet eval``: COCO mAP of a model on an annotated image folder."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..tools.evaluate import CLASS_MAPS


def resolve_model_arg(name_or_path: str) -> Path:
    """A registry name (fetched into the cache if needed) or a path."""
    path = Path(name_or_path)
    if path.exists() or path.suffix == ".tflite":
        return path
    from ..registry import resolve_model

    return Path(resolve_model(name_or_path))


@click.command("eval")
@click.option("--model", "-m", "model", required=True, help="registry name or path of a .tflite model")
@click.option("--images", "images", required=True, type=click.Path(), help="folder of the annotated images")
@click.option("--annotations", "annotations", required=True, type=click.Path(),
              help="COCO instances JSON (e.g. instances_val2017.json)")
@click.option("--labels", default=None, type=click.Path(), help="label file (default: the model's own)")
@click.option("--threads", type=click.IntRange(1, 64), default=None, help="interpreter threads")
@click.option("--threshold", "score_threshold", type=click.FloatRange(0.0, 1.0), default=0.01,
              show_default=True, help="minimum score of a detection that is scored")
@click.option("--iou", "iou_threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="NMS IoU (default: the model's own)")
@click.option("--max-detections", type=click.IntRange(1, 10000), default=100, show_default=True,
              help="detections per image")
@click.option("--class-map", type=click.Choice(CLASS_MAPS), default="auto", show_default=True,
              help="model class -> dataset category: by label name, index+1 (COCO-90), or index")
@click.option("--postprocess", type=click.Choice(["auto", "ours", "op"]), default="auto", show_default=True,
              help="decode + NMS: the model's in-graph op or ours (numpy)")
@click.option("--limit", type=click.IntRange(1), default=None, help="only the first N images (by id)")
@click.option("--out", "out_json", type=click.Path(), default=None, help="write the COCO results JSON here")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
@click.option("--progress/--no-progress", default=True, help="progress bar on stderr")
def command(model, images, annotations, labels, threads, score_threshold, iou_threshold, max_detections,
            class_map, postprocess, limit, out_json, as_json, progress):
    """COCO mAP of MODEL on IMAGES annotated by ANNOTATIONS (pycocotools)."""
    from ..tools.evaluate import evaluate

    report = evaluate(
        resolve_model_arg(model), images, annotations, threads=threads, score_threshold=score_threshold,
        iou_threshold=iou_threshold, max_detections=max_detections, labels=labels, progress=progress,
        out_json=out_json, limit=limit, class_map=class_map, postprocess=postprocess,
    )
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.format_table())
        if report.unmapped_classes:
            click.echo(f"note: {len(report.unmapped_classes)} model labels match no dataset category "
                       f"(e.g. {report.unmapped_classes[0]!r}); their detections are not scored", err=True)
