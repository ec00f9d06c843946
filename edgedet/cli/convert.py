"""``edgedet convert``: float / dynamic-range / fp16 ``.tflite`` -> int8, fp16 or dynamic; TF models (SavedModel,
Keras, TF1 Object Detection API exports); SSDLite."""

from __future__ import annotations

import json

import click

from ..tools.convert import DETECTION_OP_MODES, QUANTIZE_MODES


@click.command("convert")
@click.argument("src", required=False)
@click.option("-o", "--out", "out", required=True, type=click.Path(dir_okay=False), help="output .tflite")
@click.option("--quantize", type=click.Choice(QUANTIZE_MODES), default=None,
              help="int8 (full integer, needs --calibration), fp16 weights, or dynamic range")
@click.option("--calibration", type=click.Path(), default=None,
              help="calibration image folder (see `edgedet calibration build`)")
@click.option("--num-calib", type=click.IntRange(1), default=None,
              help="use this many calibration images (spread over the set; default all)")
@click.option("--percentile", default="auto", show_default=True,
              help="backbone activation range: a percentile (e.g. 99.99; 100 = min/max), 'mse' (least "
                   "int8 error per tensor) or 'auto' (the candidate whose detections best match the "
                   "source model's on held-out calibration images)")
@click.option("--detection-op", "detection_op", type=click.Choice(DETECTION_OP_MODES), default=None,
              help="keep the detection op, TFLite_Detection_PostProcess (float), or strip it (raw outputs + "
                   "anchors)  [default: keep]")
@click.option("--postprocess", "old_detection_op", type=click.Choice(DETECTION_OP_MODES), default=None, hidden=True,
              help="deprecated spelling of --detection-op")
@click.option("--threads", type=click.IntRange(1, 64), default=None, help="interpreter threads")
@click.option("--eval", "do_eval", is_flag=True, help="measure COCO mAP before and after")
@click.option("--images", type=click.Path(), default=None, help="--eval: annotated image folder")
@click.option("--annotations", type=click.Path(), default=None, help="--eval: COCO instances JSON")
@click.option("--labels", type=click.Path(), default=None,
              help="label file (text, one name a line, or a .pbtxt label map) written to the output's sidecar "
                   "and used by --eval (default: the source's labels)")
@click.option("--eval-limit", type=click.IntRange(1), default=None, help="--eval: only the first N images")
@click.option("--build", "build_arch", type=click.Choice(["ssdlite"]), default=None,
              help="build a new model instead of converting SRC (needs TensorFlow)")
@click.option("--backbone", default="mobilenet_v2", show_default=True, help="--build: backbone")
@click.option("--width", type=float, default=1.0, show_default=True, help="--build: width multiplier")
@click.option("--input", "--input-size", "input_size", type=click.IntRange(32, 2048), default=None,
              help="--build: input size [default: 320]; a .tflite whose input size is dynamic ([1, 1, 1, 3] in "
                   "the file): its real size, recorded in the output's sidecar")
@click.option("--classes", "--num-classes", "num_classes", type=click.IntRange(1), default=90, show_default=True,
              help="--build: classes")
@click.option("--keep-classes", "keep", default=None,
              help="slice the class predictors to these classes (comma list, e.g. person,car); labels from "
                   "--labels or the model's")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def command(src, out, quantize, calibration, num_calib, percentile, detection_op, old_detection_op, threads, do_eval,
            images, annotations, labels, eval_limit, build_arch, backbone, width, input_size, num_classes, as_json,
            keep=None):
    """Convert SRC (.tflite or registry name, SavedModel dir, .keras/.h5, or a TF1 Object Detection API
    export: frozen_inference_graph.pb, the zoo's .tar.gz or its saved_model/) to a deployable .tflite at OUT.

    \b
    edgedet convert ssdlite_mobilenet_v2_coco_2018_05_09.tar.gz -o ssdlite.tflite
    edgedet convert model_fp32.tflite -o model_int8.tflite --quantize int8 --calibration calib/
    edgedet convert model.tflite -o m8.tflite --quantize int8 --calibration calib/ \\
        --eval --images val2017/ --annotations instances_val2017.json
    """
    from ..errors import ConfigError
    from ..tools import convert as conv

    def log(msg: str) -> None:
        click.echo(msg, err=True)

    if detection_op and old_detection_op and detection_op != old_detection_op:
        raise ConfigError("give --detection-op only (--postprocess is its old spelling)")
    if old_detection_op:
        log("note: --postprocess is now spelled --detection-op")
    detection_op = detection_op or old_detection_op or "keep"
    if do_eval and (not images or not annotations):
        raise ConfigError("--eval needs --images and --annotations")
    if (images or annotations) and not do_eval:
        raise ConfigError("--images/--annotations are only used with --eval")
    if build_arch:
        if src:
            raise ConfigError("give either SRC or --build, not both")
        report = conv.build(out, backbone=backbone, width=width, input_size=input_size or 320, num_classes=num_classes,
                            quantize=quantize, calibration=calibration, num_calib=num_calib,
                            detection_op=detection_op, log=log)
    else:
        if not src:
            raise ConfigError("missing SRC (a model to convert) or --build ssdlite")
        from .evaluate import resolve_model_arg

        if keep and conv.source_kind(resolve_model_arg(src)) == "tflite":
            conv.check_classes(resolve_model_arg(src), keep, labels=labels)  # before a long conversion
        report = conv.convert(resolve_model_arg(src), out, quantize=quantize, calibration=calibration,
                              num_calib=num_calib, detection_op=detection_op, percentile=percentile, threads=threads,
                              eval_images=images if do_eval else None,
                              eval_annotations=annotations if do_eval else None, eval_limit=eval_limit,
                              labels=labels, input_size=input_size, log=log)
    if keep:
        log(conv.keep_classes(out, out, keep, labels=labels).format_summary())
    click.echo(json.dumps(report.to_dict(), indent=2, default=str) if as_json else report.format_summary())
