"""``edgedet eval``: COCO mAP of a model (or the paired difference of two) with bootstrap intervals."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..tools.evaluate import CLASS_MAPS, DEFAULT_RESAMPLES

MODEL_OWN = ("model", "own")


def resolve_model_arg(name_or_path: str) -> Path:
    """A registry name (fetched into the cache if needed) or a path."""
    path = Path(name_or_path)
    if path.exists() or path.suffix == ".tflite":
        return path
    from ..registry import resolve_model

    return Path(resolve_model(name_or_path))


def decoder_choice(decoder, old_decoder) -> str:
    """``--decoder``, or its old spelling ``--postprocess`` (where ``ours`` meant ``edgedet``)."""
    from ..errors import ConfigError

    old = {"ours": "edgedet"}.get(old_decoder, old_decoder)
    if decoder and old and decoder != old:
        raise ConfigError("give --decoder only (--postprocess is its old spelling)")
    if old:
        click.echo("note: --postprocess is now spelled --decoder (ours = edgedet)", err=True)
    return decoder or old or "auto"


def parse_max_detections(ctx, param, value: str) -> tuple:
    """``"100,model"`` -> ``(100, None)``: numbers, or ``model`` for the model's own setting."""
    caps = []
    for item in str(value).split(","):
        item = item.strip().lower()
        if item in MODEL_OWN:
            caps.append(None)
        elif item.isdigit() and 1 <= int(item) <= 10000:
            caps.append(int(item))
        else:
            raise click.BadParameter(f"{item!r}: give numbers from 1 to 10000 or 'model', comma-separated")
    return tuple(dict.fromkeys(caps))


@click.command("eval")
@click.option("--model", "-m", "model", default=None, help="registry name or path of a .tflite model")
@click.option("--compare", "compare_models", nargs=2, default=None, metavar="A B",
              help="evaluate two models on the same images: the paired difference B - A with its interval")
@click.option("--images", "images", required=True, type=click.Path(), help="folder of the annotated images")
@click.option("--annotations", "annotations", required=True, type=click.Path(),
              help="COCO instances JSON (e.g. instances_val2017.json)")
@click.option("--categories", default=None, metavar="NAMES|IDS",
              help="categories to score, e.g. person,car or 1,3 [default: those the model's labels have]")
@click.option("--labels", default=None, type=click.Path(), help="label file (default: the model's own)")
@click.option("--threads", type=click.IntRange(1, 64), default=None, help="interpreter threads")
@click.option("--threshold", "score_threshold", type=click.FloatRange(0.0, 1.0), default=0.01,
              show_default=True, help="minimum score of a detection that is scored")
@click.option("--iou", "iou_threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="NMS IoU (default: the model's own)")
@click.option("--max-detections", default="100,model", show_default=True, callback=parse_max_detections,
              help="detections per image, one report each: numbers and/or 'model' (the model's own setting)")
@click.option("--class-map", type=click.Choice(CLASS_MAPS), default="auto", show_default=True,
              help="model class -> dataset category: by label name, index+1 (COCO-90), or index")
@click.option("--decoder", type=click.Choice(["auto", "edgedet", "op"]), default=None,
              help="who decodes: edgedet's decode + NMS (numpy) or the model's detection op [default: auto]")
@click.option("--postprocess", "old_decoder", type=click.Choice(["auto", "ours", "op"]), default=None, hidden=True,
              help="old spelling of --decoder (ours = edgedet)")
@click.option("--resamples", type=click.IntRange(0, 100000), default=DEFAULT_RESAMPLES, show_default=True,
              help="bootstrap resamples of the images for the intervals (0: none)")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the bootstrap resamples")
@click.option("--confidence", type=click.FloatRange(0.5, 0.999), default=0.95, show_default=True,
              help="confidence of the intervals")
@click.option("--limit", type=click.IntRange(1), default=None, help="only the first N images (by id)")
@click.option("--out", "out_json", type=click.Path(), default=None,
              help="write the COCO results JSON here (other settings: NAME.maxdetN.json)")
@click.option("--json", "as_json", is_flag=True, help="print the reports as JSON")
@click.option("--progress/--no-progress", default=True, help="progress bar on stderr")
def command(model, compare_models, images, annotations, categories, labels, threads, score_threshold, iou_threshold,
            max_detections, class_map, decoder, old_decoder, resamples, seed, confidence, limit, out_json, as_json,
            progress):
    """COCO mAP of MODEL on IMAGES annotated by ANNOTATIONS (pycocotools), each with a bootstrap
    interval over the images; with --compare A B, the paired difference B - A."""
    from ..errors import ConfigError
    from ..tools.evaluate import compare, evaluate_settings, require_backend

    require_backend()
    if bool(model) == bool(compare_models):
        raise ConfigError("give --model MODEL, or --compare A B")
    if compare_models and not resamples:
        raise ConfigError("--compare needs the bootstrap (--resamples > 0)")
    options = dict(threads=threads, score_threshold=score_threshold, iou_threshold=iou_threshold,
                   max_detections=max_detections, labels=labels, progress=progress, limit=limit,
                   class_map=class_map, decoder=decoder_choice(decoder, old_decoder), categories=categories,
                   resamples=resamples, seed=seed, confidence=confidence)
    if model:
        reports = evaluate_settings(resolve_model_arg(model), images, annotations, out_json=out_json, **options)
        drops = []
    else:
        a, b = (resolve_model_arg(m) for m in compare_models)
        ra = evaluate_settings(a, images, annotations, **options)
        rb = evaluate_settings(b, images, annotations, out_json=out_json, **options)
        drops = [compare(x, y, confidence) for x, y in zip(ra, rb)]
        reports = ra + rb
    _print(reports, drops, as_json)


def _print(reports: list, drops: list, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"reports": [r.to_dict() for r in reports], "drops": [d.to_dict() for d in drops]},
                              indent=2))
    elif drops:
        click.echo("\n\n".join(d.format_table() for d in drops))
    else:
        click.echo("\n\n".join(r.format_table() for r in reports))
    unmapped = reports[0].unmapped_classes
    if unmapped:
        click.echo(f"note: {len(unmapped)} model labels match no dataset category "
                   f"(e.g. {unmapped[0]!r}); their detections are not scored", err=True)
