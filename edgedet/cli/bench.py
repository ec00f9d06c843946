"""``edgedet bench``: invoke, preprocess, decode and pipeline speed of a model on this machine."""

from __future__ import annotations

import json
import sys

import click


@click.command("bench", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "-m", default="ssd_mobilenet_v1_coco_quant", show_default=True,
              help="registry name or path of a .tflite model")
@click.option("--source", "-s", default=None,
              help="video file or image folder: frames to measure on, and the pipeline fps")
@click.option("--threads", type=click.IntRange(1, 64), default=None,
              help="interpreter threads (default: the big cores); with --sweep the highest count")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="pipeline inference workers (default: one single-thread interpreter per thread)")
@click.option("--runs", type=click.IntRange(1, 100000), default=50, show_default=True, help="timed invokes")
@click.option("--warmup", type=click.IntRange(0, 1000), default=5, show_default=True, help="untimed invokes first")
@click.option("--frames", type=click.IntRange(1, 1000000), default=200, show_default=True,
              help="frames for the pipeline fps")
@click.option("--decoder", type=click.Choice(["auto", "edgedet", "op"]), default=None,
              help="who decodes, as the pipeline runs it: edgedet's decode+NMS or the model's detection op "
                   "[default: auto]")
@click.option("--postprocess", "old_decoder", type=click.Choice(["auto", "ours", "op"]), default=None, hidden=True,
              help="old spelling of --decoder (ours = edgedet)")
@click.option("--labels", default=None, help="label file (default: the model's)")
@click.option("--opencv-threads", type=click.IntRange(0, 64), default=None,
              help="cap OpenCV's thread pool (default: OpenCV's own)")
@click.option("--sweep", type=click.Choice(["threads"]), default=None,
              help="also measure 1..N interpreter threads (N = --threads or the number of cores)")
@click.option("--json", "as_json", is_flag=True, help="print the results as one JSON object")
def command(model, source, threads, workers, runs, warmup, frames, decoder, old_decoder, labels, opencv_threads, sweep,
            as_json):
    """Measure a model here: invoke, preprocess, decode+NMS (ours and the op's), pipeline fps.

    \b
    Examples:
      edgedet bench --model ssd_mobilenet_v1_coco_quant --source video.mp4
      edgedet bench --model model.tflite --source video.mp4 --sweep threads --threads 4
      edgedet bench --model model.tflite --runs 200 --json > bench.json
    """
    import logging

    from ..tools.bench import BenchSettings, format_report, run_bench
    from .evaluate import decoder_choice

    logging.getLogger("edgedet").setLevel(logging.WARNING)
    sweep_n = None
    if sweep == "threads":
        from ..cpu import available_cores

        sweep_n = threads or len(available_cores())
    settings = BenchSettings(model=model, source=source, threads=threads, workers=workers, runs=runs, warmup=warmup,
                             frames=frames, decoder=decoder_choice(decoder, old_decoder), labels=labels,
                             opencv_threads=opencv_threads,
                             sweep_threads=sweep_n)

    def progress(msg: str) -> None:
        if not as_json:
            click.echo(f"edgedet bench: {msg} ...", err=True)

    report = run_bench(settings, progress)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=1) + "\n")
    else:
        click.echo(format_report(report))
