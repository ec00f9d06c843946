"""``edgedet prune``: zero weights of a ``.tflite`` model (one shot, optionally data-aware), or remove whole
channels (``--structured``, experimental)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..tools.prune import ALLOCATIONS, DEFAULT_SKIP, METHODS, PruneOptions, RecoverOptions


def _resolve(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".tflite" or path.exists():
        return path
    try:
        from ..registry import resolve_model
    except ImportError:
        return path
    return Path(resolve_model(name_or_path))


@click.command("prune")
@click.argument("src")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="where to write the pruned .tflite (written atomically, with a .yaml sidecar)")
@click.option("--sparsity", type=float, default=0.5, show_default=True,
              help="fraction of the selected layers' weights to zero, in (0, 1)")
@click.option("--calibration", "calibration", multiple=True, type=click.Path(),
              help="images / videos / folders of them (repeatable); needed by --method reconstruct")
@click.option("--num-calib", type=int, default=PruneOptions.num_calib, show_default=True,
              help="calibration inputs to use (--structured: images in its pool, every 5th held back)")
@click.option("--method", type=click.Choice(METHODS), default="reconstruct", show_default=True,
              help="magnitude: smallest weights; reconstruct: data-aware saliency and refit of the rest")
@click.option("--skip", default=",".join(DEFAULT_SKIP), show_default=True,
              help="comma list of layers not to prune: depthwise, conv (kxk), pointwise, fc, first, "
                   "last (detection heads) or parts of layer names; '' prunes all")
@click.option("--allocation", type=click.Choice(ALLOCATIONS), default=None,
              help="per-layer sparsity: from sensitivity measured on calibration data (default with "
                   "--calibration), or the same for every layer (default without)")
@click.option("--max-layer-sparsity", type=float, default=0.9, show_default=True,
              help="no layer is pruned beyond this")
@click.option("--sequential/--no-sequential", default=PruneOptions.sequential, show_default=True,
              help="feed each layer's refit with the already-pruned model's activations")
@click.option("--threads", type=click.IntRange(1, 64), default=None, help="interpreter threads")
@click.option("--eval", "do_eval", is_flag=True, help="also report COCO mAP before/after (--images, --annotations)")
@click.option("--images", type=click.Path(), default=None, help="annotated image folder for --eval")
@click.option("--annotations", type=click.Path(), default=None, help="COCO instances JSON for --eval")
@click.option("--sensitivity", is_flag=True,
              help="also print per-layer sensitivity (mAP drop with --eval, else calibration error) "
                   "and the sparsity curve of both methods")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="with --sensitivity: save the sparsity curve as a PNG")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="write the full report as JSON here")
@click.option("--keep-classes", "keep", default=None,
              help="also slice the class predictors to these classes (comma list, e.g. person,car)")
@click.option("--structured", is_flag=True,
              help="EXPERIMENTAL: remove whole channels (a smaller, faster int8 model) instead of zeroing "
                   "weights; needs --calibration and TensorFlow (edgedet[convert]). It costs a lot of "
                   "accuracy: on SSD MobileNet v1, 25 % of the channels (about 1.3x faster than the same "
                   "model requantized to int8, on x86) lost ~10 person AP and ~11 COCO mAP points one-shot, and "
                   "still ~9.5 / ~10 after 400-800 distillation steps")
@click.option("--ratio", type=click.FloatRange(0.0, 0.9), default=None,
              help="with --structured: fraction of the channels of backbone pointwise convs 2-13 to "
                   "remove; 0 removes none and only requantizes (per-channel int8, float I/O)  "
                   "[default: 0.25]")
@click.option("--speedup", type=click.FloatRange(1.0, min_open=True), default=None,
              help="with --structured: remove the fraction predicted (from MACs, fixed share measured on "
                   "SSD MobileNet v1, x86) to give this invoke speed-up over the requantized model, e.g. 1.3")
@click.option("--distill-steps", type=click.IntRange(0), default=None,
              help="label-free recovery after pruning: steps of 8 crops/flips of the calibration images, the "
                   "pruned network trained towards the dense one with its zeros held, written back in the "
                   "source's format; needs TensorFlow (edgedet[convert]); 0 skips it  "
                   f"[default: {RecoverOptions.steps} with --calibration; --structured: 0]")
@click.option("--quiet", "-q", is_flag=True, help="no progress messages")
def command(src, out, sparsity, calibration, num_calib, method, skip, allocation, max_layer_sparsity,
            sequential, threads, do_eval, images, annotations, sensitivity, plot, json_out, quiet, keep=None,
            structured=False, ratio=None, speedup=None, distill_steps=None):
    """Prune SRC (a .tflite path or registry name) into OUTPUT.

    Weights are zeroed layer by layer with refits; with --calibration the pruned network is then
    recovered by a short distillation against the dense one (TensorFlow; --distill-steps 0 skips it).
    Pruned weights are stored as their zero point: the file keeps its size and format and runs
    anywhere, and it compresses better (gzip/zstd sizes are reported). Invoke time does not improve
    on int8 XNNPACK, which has no sparse kernels.

    --structured (experimental) removes whole channels instead: the int8 output is smaller and
    faster, but loses about 10 points of person AP at 25 % of the channels (see docs/pruning.md).
    """
    from ..errors import ConfigError
    from ..tools.prune import prune

    if (do_eval or images or annotations) and not (images and annotations):
        raise ConfigError("--eval needs both --images DIR and --annotations FILE")
    if plot and not sensitivity:
        raise ConfigError("--plot needs --sensitivity")
    if plot:  # checked before the work, not after it
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise ConfigError("--plot needs matplotlib: pip install 'edgedet[prune]' (or drop --plot)")
    src_path = _resolve(src)
    say = None if quiet else (lambda msg: click.echo(f"  {msg}", err=True))
    if not structured and (ratio is not None or speedup is not None):
        raise ConfigError("--ratio and --speedup go with --structured")
    if structured and (sensitivity or json_out or keep or do_eval or images):
        raise ConfigError("--structured does not take --sensitivity, --json, --keep-classes or --eval: run "
                          "`edgedet eval --compare` (or `edgedet convert --keep-classes`) on its output")
    if structured:
        _structured(src_path, out, calibration, num_calib, ratio, speedup, distill_steps or 0, say)
        return
    steps = _recovery_steps(distill_steps, calibration, say)
    if keep:
        from ..tools.convert import check_classes

        check_classes(src_path, keep)
    opts = PruneOptions(
        sparsity=sparsity, method=method, skip=tuple(t for t in skip.split(",") if t.strip()),
        calibration=tuple(calibration), num_calib=num_calib, threads=threads,
        max_layer_sparsity=max_layer_sparsity, sequential=sequential, allocation=allocation, progress=say)
    if steps:
        from ..tools.prune import prune_and_recover

        report, recovery = prune_and_recover(src_path, out, opts, RecoverOptions(steps=steps))
    else:
        report, recovery = prune(src_path, out, opts), None
    if keep:
        from ..tools.convert import keep_classes

        click.echo(keep_classes(out, out, keep).format_summary(), err=True)
    click.echo(report.format_table())
    if recovery is not None:
        click.echo("\n".join(recovery.format_lines()))
    click.echo(f"wrote {out}")
    data = report.to_dict()
    if recovery is not None:
        data["recovery"] = recovery.to_dict()
    if images and annotations:
        from ..tools.prune import map_of

        before = map_of(src_path, images, annotations, threads)
        after = map_of(out, images, annotations, threads)
        click.echo(f"mAP: {before:.4f} -> {after:.4f} ({(after - before) * 100:+.2f} points)")
        data["mAP"] = {"src": before, "out": after}
        report.save_accuracy(after, annotations)
    if sensitivity:
        from ..tools.prune import run_sensitivity

        sens = run_sensitivity(src_path, opts, images=images, annotations=annotations, plot=plot)
        click.echo(sens.format_table())
        if plot:
            click.echo(f"curve saved to {plot}")
        data["sensitivity"] = sens.to_dict()
    if json_out:
        from ..tflite import write_atomic

        write_atomic(json_out, json.dumps(data, indent=2).encode())


def _recovery_steps(distill_steps, calibration, say) -> int:
    """Recovery steps after unstructured pruning (0: none); a one-line error, before any work, when
    recovery is asked for (or the default) and cannot run."""
    from ..errors import ConfigError
    from ..tools.prune import require_tensorflow

    steps = RecoverOptions.steps if distill_steps is None else distill_steps
    if steps and not calibration:
        if distill_steps is not None:
            raise ConfigError("--distill-steps needs --calibration DIR (the images it trains on)")
        if say:
            say("no --calibration: no recovery (nothing to train on)")
        return 0
    if steps:
        require_tensorflow("recovery after pruning (the default with --calibration)",
                           ", or skip it with --distill-steps 0 (larger accuracy loss)")
    return steps


def _structured(src_path: Path, out, calibration, num_calib: int, ratio, speedup, steps: int, say) -> None:
    """``edgedet prune --structured``: channel pruning, optional recovery, int8 export; phase minutes."""
    from ..errors import ConfigError
    from ..tools.prune import require_tensorflow

    if not calibration:
        raise ConfigError("--structured needs --calibration DIR (see `edgedet calibration build`)")
    if ratio is not None and speedup is not None:
        raise ConfigError("give --ratio or --speedup, not both")
    require_tensorflow("--structured")
    from ..detector import Detector
    from ..tools.prune import DistillOptions, StructuredOptions, format_proxy, prune_structured

    labels = list(Detector.from_path(src_path, threads=1).labels)
    opts = StructuredOptions(ratio=0.25 if ratio is None else ratio, speedup=speedup, pool=max(num_calib, 10),
                             distill=DistillOptions(steps=steps, max_seconds=float("inf")) if steps else None)
    report = prune_structured(src_path, out, list(calibration), opts, labels=labels, log=say)
    click.echo(f"structured: {report.ratio:.0%} of the channels removed, MACs {report.macs_before / 1e6:.1f} M -> "
               f"{report.macs_after / 1e6:.1f} M ({1 - report.macs_after / max(report.macs_before, 1):.1%} fewer)")
    for stage, proxy in report.proxies.items():
        click.echo(f"held-back agreement with the dense model, {stage.replace('_', '-')}: {format_proxy(proxy)}")
    click.echo("minutes: " + ", ".join(f"{k.replace('_', '-')} {v / 60:.1f}" for k, v in report.seconds.items()))
    click.echo(f"wrote {out}")
