#!/usr/bin/env python3
"""Measure ``edgedet convert --quantize int8`` on the FPNLite asset model, end to end.

1. builds a calibration set from the asset videos and photos (never the evaluation images),
2. converts the dynamic-range FPNLite model to full int8 (range rule chosen on held-out
   calibration frames by the SNR of the raw box encodings and scores against the float model;
   adaptive rounding of the weights that were float in the source; the input range set by its
   int8 round trip; weight-rounding bias correction; the score sigmoid in front of the
   postprocess op kept float),
3. counts int8 conv weights/activations in the output file,
4. times ``invoke()`` of both models with the same threads in one run (interleaved rounds),
5. evaluates both once on coco_tiny_val2017 with identical settings: the models' own (10
   detections, as the op is configured; this decides the mAP target) and 100 detections.

    python tools/bench_quantize.py [--threads 2] [--work /tmp/edgedet-bench-quantize] [--json]
    python tools/bench_quantize.py --ablation     # recipe variants, held-out calibration SNR only
    python tools/bench_quantize.py --ablation --rows 15,20 --agreement   # some rows, + pseudo mAP / F1

Exit status 0 when all three targets hold: every conv int8, mAP within 1.0 point of the
source, invoke at least 1.5x faster.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def assets_dir() -> Path:
    env = os.environ.get("EDGEDET_ASSETS")
    return Path(env) if env else ROOT.parent / "shared" / "assets"


def interleaved_invoke_ms(paths, threads: int, rounds: int = 5, runs: int = 20) -> list[float]:
    """Median invoke ms of each model, alternating between them so CPU noise hits both alike."""
    from edgedet.tflite import load_interpreter

    interps = []
    for p in paths:
        it = load_interpreter(p, threads)
        d = it.get_input_details()[0]
        x = np.random.default_rng(0).uniform(-1, 1, size=d["shape"]).astype(d["dtype"])
        it.set_tensor(d["index"], x)
        for _ in range(5):
            it.invoke()
        interps.append(it)
    times: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for k, it in enumerate(interps):
            for _ in range(runs):
                t = time.perf_counter()
                it.invoke()
                times[k].append((time.perf_counter() - t) * 1000)
    return [float(np.median(t)) for t in times]


# the recipe before adaptive rounding and the input range rule: nearest rounding, min/max input range
_OLD = {"weight_rounding": "nearest", "input_ranges": "minmax", "head_ranges": "minmax"}
_NEW = {"weight_rounding": "adaptive", "input_ranges": "roundtrip", "head_ranges": "minmax"}
ABLATION = (
    ("min/max ranges, int8 sigmoid, no bias correction",
     {**_OLD, "percentile": 100.0, "float_sigmoid": False, "bias_correction": "none"}),
    ("mse ranges, int8 sigmoid, no bias correction",
     {**_OLD, "percentile": "mse", "float_sigmoid": False, "bias_correction": "none"}),
    ("min/max ranges, int8 sigmoid, weight bias correction",
     {**_OLD, "percentile": 100.0, "float_sigmoid": False}),
    ("mse ranges, int8 sigmoid, weight bias correction", {**_OLD, "percentile": "mse", "float_sigmoid": False}),
    ("min/max ranges, float sigmoid, weight bias correction", {**_OLD, "percentile": 100.0}),
    ("99.99 ranges, float sigmoid, weight bias correction", {**_OLD, "percentile": 99.99}),
    ("mse ranges, float sigmoid, weight bias correction", {**_OLD, "percentile": "mse"}),
    ("  + empirical bias correction of linear convs", {**_OLD, "percentile": "mse", "bias_correction": "both"}),
    ("  empirical instead of weight bias correction",
     {**_OLD, "percentile": "mse", "bias_correction": "empirical"}),
    ("  + head ranges by the body's rule", {**_OLD, "percentile": "mse", "head_ranges": "same"}),
    ("  + cross-layer range equalization", {**_OLD, "percentile": "mse", "equalize": True}),
    ("  + residual-stream equalization (alpha 1, gain <= 16)",
     {**_OLD, "percentile": "mse", "residual_equalize": True, "residual_alpha": 1.0, "residual_max_gain": 16.0}),
    ("  + residual-stream equalization (alpha 0.5, gain <= 8)",
     {**_OLD, "percentile": "mse", "residual_equalize": True, "residual_alpha": 0.5, "residual_max_gain": 8.0}),
    ("  + adaptive rounding of the off-grid weights", {**_OLD, "percentile": "mse", "weight_rounding": "adaptive"}),
    ("  + input range by int8 round trip", {**_OLD, "percentile": "mse", "input_ranges": "roundtrip"}),
    ("mse, adaptive rounding, input range by round trip", {**_NEW, "percentile": "mse"}),
    ("  + cross-layer range equalization", {**_NEW, "percentile": "mse", "equalize": True}),
    ("  + residual-stream equalization (alpha 1, gain <= 16)",
     {**_NEW, "percentile": "mse", "residual_equalize": True, "residual_alpha": 1.0, "residual_max_gain": 16.0}),
    ("  + residual-stream equalization (alpha 0.5, gain <= 4)",
     {**_NEW, "percentile": "mse", "residual_equalize": True, "residual_alpha": 0.5, "residual_max_gain": 4.0}),
    ("99.99 ranges, adaptive rounding, input range by round trip", {**_NEW, "percentile": 99.99}),
    ("  + compensating rounding (conv depth <= 0.8 of the deepest)",
     {**_NEW, "percentile": "mse", "weight_rounding": "compensate"}),
    ("  + compensating rounding of every layer",
     {**_NEW, "percentile": "mse", "weight_rounding": "compensate", "rounding_depth": 1.0}),
    ("  + compensating rounding (depth <= 0.8), |q - nearest| <= 2",
     {**_NEW, "percentile": "mse", "weight_rounding": "compensate", "rounding_max_move": 2}),
    ("  + compensating rounding (depth <= 0.6)",
     {**_NEW, "percentile": "mse", "weight_rounding": "compensate", "rounding_depth": 0.6}),
    ("  + head ranges for the scores / score-weighted boxes (default)",
     {**_NEW, "percentile": "mse", "head_ranges": "task"}),
)


def ablation(src: Path, calib: Path, work: Path, threads: int, rows=None, agreement: bool = False) -> None:
    """Each recipe of ``ABLATION`` (or the ``rows`` indices of it) calibrated on 75% of the set,
    measured on the held-out 25%: SNR (dB) of the raw head outputs against the float model and,
    with ``agreement``, the pseudo mAP / AP50 and detection F1 against the source (no evaluation
    images)."""
    from edgedet import tflite as tfl
    from edgedet.sidecar import update_sidecar
    from edgedet.tools.calibration import load_calibration_set
    from edgedet.tools.quantize import (
        calibration_preprocessor,
        compare_models,
        copy_sidecar,
        head_snr,
        load_inputs,
        prepare_float_model,
        pseudo_map,
        quantize_int8,
    )

    cal, held = load_calibration_set(calib).split()
    model = tfl.read_model(src)
    prepare_float_model(model)
    float_path = work / "float.tflite"
    tfl.write_model(model, float_path)
    held_in = load_inputs(held, calibration_preprocessor(src))
    print(f"{len(cal)} calibration / {len(held)} held-out images; SNR dB on the held-out ones")
    print(f"{'recipe':66s} {'mean':>6s} {'boxes_w':>7s} {'scores':>6s} {'logits':>6s} {'seconds':>7s}"
          + (f" {'pmAP':>5s} {'pAP50':>5s} {'F1':>5s}" if agreement else ""))
    for k, (name, kw) in enumerate(ABLATION):
        if rows is not None and k not in rows:
            continue
        out = work / f"ablation_{k}.tflite"
        t0 = time.perf_counter()
        result = quantize_int8(src, out, cal, threads=threads, **kw)
        seconds = time.perf_counter() - t0
        snr = head_snr(float_path, out, held_in, threads=threads)
        line = (f"{name:66s} {snr['mean']:6.2f} {snr['boxes_w']:7.2f} {snr['scores']:6.2f} {snr['logits']:6.2f} "
                f"{seconds:7.0f}")
        if agreement:
            copy_sidecar(src, out)
            if result.sidecar:
                update_sidecar(out, **result.sidecar)
            pm = pseudo_map(src, out, held, threads=threads)
            f1 = compare_models(src, out, held, threads=threads)["f1"]
            line += f" {pm['pseudo_mAP'] * 100:5.1f} {pm['pseudo_AP50'] * 100:5.1f} {f1:5.3f}"
        print(line, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", default="/tmp/edgedet-bench-quantize")
    ap.add_argument("--num-calib", type=int, default=260,
                    help="calibration images to sample (the photo folders hold fewer than their share)")
    ap.add_argument("--percentile", default="auto")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--ablation", action="store_true", help="compare recipe variants on held-out calibration "
                    "images (head SNR against the float model) instead of the end-to-end measure")
    ap.add_argument("--rows", default=None, help="with --ablation: comma-separated row indices of ABLATION")
    ap.add_argument("--agreement", action="store_true", help="with --ablation: also the pseudo mAP and "
                    "detection F1 against the source on the held-out calibration images")
    args = ap.parse_args()

    from edgedet.tools.calibration import build_calibration_set
    from edgedet.tools.convert import convert
    from edgedet.tools.evaluate import evaluate
    from edgedet.tools.quantize import census_of

    A = assets_dir()
    src = A / "models" / "ssd_mobilenet_v2_fpnlite_320_coco_fp.tflite"
    labels = A / "labels" / "coco_labels.txt"
    images = A / "datasets" / "coco_tiny_val2017" / "val2017"
    ann = A / "datasets" / "coco_tiny_val2017" / "annotations" / "instances_val2017.json"
    work = Path(args.work)
    calib = work / "calibration"
    out = work / "fpnlite_int8.tflite"
    if calib.exists():
        import shutil

        shutil.rmtree(calib)
    sources = [A / "videos" / "pedestrians_480x360.avi", A / "videos" / "highway_cars_720p.mp4",
               A / "videos" / "crowd_overhead_720p.avi", A / "images" / "coral", A / "images" / "skimage"]
    t0 = time.perf_counter()
    cs = build_calibration_set([str(s) for s in sources], calib, num=args.num_calib)
    print(f"calibration set: {len(cs)} images in {calib} (sha256 {cs.hash[:12]})", file=sys.stderr)
    if args.ablation:
        rows = None if args.rows is None else {int(r) for r in args.rows.split(",")}
        ablation(src, calib, work, args.threads, rows, args.agreement)
        return 0

    rep = convert(src, out, quantize="int8", calibration=calib, percentile=args.percentile, threads=args.threads,
                  measure_speed=False, progress=False, log=lambda m: print(m, file=sys.stderr))
    census = census_of(out)
    ms_src, ms_q = interleaved_invoke_ms([src, out], args.threads)
    # the models' own settings (the op's 10 detections, NMS IoU 0.6) decide the target; the
    # 100-detection figures (COCO's usual) are reported beside them
    ev_src = evaluate(src, images, ann, labels=labels, threads=args.threads, progress=False, max_detections=None)
    ev_q = evaluate(out, images, ann, labels=labels, threads=args.threads, progress=False, max_detections=None)
    ev100_src = evaluate(src, images, ann, labels=labels, threads=args.threads, progress=False)
    ev100_q = evaluate(out, images, ann, labels=labels, threads=args.threads, progress=False)

    result = {
        "source": str(src), "output": str(out), "threads": args.threads,
        "calibration": {"images": len(cs), "sha256": cs.hash, "held_out_agreement": rep.agreement},
        "percentile": rep.recipe.get("percentile"),
        "census": census, "repaired_channels": rep.repaired_channels,
        "size_bytes": {"source": src.stat().st_size, "int8": out.stat().st_size},
        "invoke_ms": {"source": round(ms_src, 2), "int8": round(ms_q, 2), "speedup": round(ms_src / ms_q, 2)},
        "eval": {"settings": ev_q.settings, "n_images": ev_q.n_images,
                 "source": {k: round(v, 4) for k, v in ev_src.metrics.items()},
                 "int8": {k: round(v, 4) for k, v in ev_q.metrics.items()}},
        "eval_100": {"settings": ev100_q.settings,
                     "source": {k: round(v, 4) for k, v in ev100_src.metrics.items()},
                     "int8": {k: round(v, 4) for k, v in ev100_q.metrics.items()}},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    d_map = (ev_src.metrics["mAP"] - ev_q.metrics["mAP"]) * 100
    checks = {
        "all_conv_int8": census["conv_int8"] == census["conv_total"]
        and census["activations_int8"] == census["activations_total"],
        "map_within_1pt": d_map <= 1.0,
        "speedup_ge_1.5x": ms_src / ms_q >= 1.5,
    }
    result["checks"] = checks
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"model        {src.name} -> {out}")
        print(f"calibration  {len(cs)} images (asset videos + photos), percentile {result['percentile']}, "
              f"held-out agreement {rep.agreement}")
        print(f"int8         conv {census['conv_int8']}/{census['conv_total']}, activation tensors "
              f"{census['activations_int8']}/{census['activations_total']}, "
              f"{rep.repaired_channels} dead channels repaired"
              + (", score sigmoid before the postprocess op float" if census.get("float_score_sigmoid") else ""))
        print(f"recipe       bias correction {rep.recipe.get('bias_correction')} "
              f"({rep.recipe.get('bias_corrected_layers')} layers), head ranges {rep.recipe.get('head_ranges')}, "
              f"weight rounding {rep.recipe.get('weight_rounding')} ({rep.recipe.get('rerounded_layers')} layers), "
              f"input range {rep.recipe.get('input_ranges')}, residual streams equalized "
              f"{rep.recipe.get('residual_streams')}")
        print(f"size         {src.stat().st_size / 1e6:.2f} MB -> {out.stat().st_size / 1e6:.2f} MB")
        print(f"invoke       {ms_src:.1f} ms -> {ms_q:.1f} ms  ({ms_src / ms_q:.2f}x, {args.threads} threads, "
              "one run, interleaved)")
        print(f"mAP          {ev_src.metrics['mAP'] * 100:.1f} -> {ev_q.metrics['mAP'] * 100:.1f} "
              f"(AP50 {ev_src.metrics['AP50'] * 100:.1f} -> {ev_q.metrics['AP50'] * 100:.1f}) on "
              f"{ev_q.n_images} coco_tiny_val2017 images; the models' own settings {ev_q.settings}")
        print(f"mAP@100      {ev100_src.metrics['mAP'] * 100:.1f} -> {ev100_q.metrics['mAP'] * 100:.1f} "
              f"(AP50 {ev100_src.metrics['AP50'] * 100:.1f} -> {ev100_q.metrics['AP50'] * 100:.1f}); "
              f"settings {ev100_q.settings}")
        print("checks       " + ", ".join(f"{k}={'PASS' if v else 'FAIL'}" for k, v in checks.items()))
        print(f"total        {result['seconds']} s")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
