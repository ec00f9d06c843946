"""``edgedet calibration``: build and inspect calibration image sets for int8 quantization."""

from __future__ import annotations

import click


@click.group("calibration")
def command() -> None:
    """Calibration image sets (frames of your own camera or videos) for `convert --quantize int8`."""


@command.command("build")
@click.option("--source", "-s", "sources", multiple=True, required=True,
              help="video file, image or image folder, camera index or rtsp:// URL (repeatable)")
@click.option("-o", "--out", "out", required=True, type=click.Path(file_okay=False), help="calibration folder")
@click.option("--num", type=click.IntRange(1), default=100, show_default=True,
              help="images to take (split over the sources, see --balance)")
@click.option("--balance", type=click.Choice(["kind", "source"]), default="kind", show_default=True,
              help="kind: half still photos, half video/camera frames, split evenly within each and capped "
                   "by what a source has; source: an equal share per --source")
@click.option("--augment", type=click.FloatRange(0, 1, max_open=True), default=0.25, show_default=True,
              help="fraction of --num made of crops and horizontal flips of the sampled images")
@click.option("--seed", type=int, default=0, show_default=True, help="seed of the crops and flips")
@click.option("--exclude", "exclude", multiple=True, type=click.Path(exists=True),
              help="an evaluation set (COCO annotation JSON or image folder) whose images must not be used "
                   "(repeatable)")
@click.option("--every", type=click.IntRange(1), default=None,
              help="take every K-th frame (default: spread over a file, one per second live)")
@click.option("--max-side", type=click.IntRange(16), default=1280, show_default=True,
              help="shrink larger images to this many pixels on their long side")
@click.option("--timeout", type=click.FloatRange(0.1), default=10.0, show_default=True,
              help="seconds a live source may deliver no frame")
def build(sources, out, num, balance, augment, seed, exclude, every, max_side, timeout):
    """Sample frames and photos from SOURCEs into OUT and write OUT/manifest.yaml."""
    from ..tools.calibration import build_calibration_set

    cs = build_calibration_set(list(sources), out, num=num, every=every, max_side=max_side, timeout=timeout,
                               balance=balance, augment=augment, seed=seed, exclude=list(exclude))
    click.echo(f"{len(cs)} images in {cs.path} (manifest sha256 {cs.hash[:12]})")
    _print_sources(cs)


def _print_sources(cs) -> None:
    for src in cs.manifest.get("sources") or []:
        click.echo(f"  {src.get('taken', '?'):>4} from {src.get('uri')} ({src.get('kind')})")


@command.command("info")
@click.argument("directory", type=click.Path())
def info(directory):
    """Check a calibration folder (manifest checksums) and summarise it."""
    from ..tools.calibration import load_calibration_set

    cs = load_calibration_set(directory)
    click.echo(f"{len(cs)} images, manifest sha256 {cs.hash}")
    _print_sources(cs)
