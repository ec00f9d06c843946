#!/usr/bin/env python3
"""Our decode + NMS against the in-graph TFLite_Detection_PostProcess op, on real images.

For each model (default: the SSD MobileNet v1 quant and the FPNLite assets) the op is stripped in
memory; every image of the dataset is prepared once and run through both interpreters. Reported:

* match: our detections vs the op's (at the op's own score threshold, so all its outputs count):
  same classes, box IoU >= 0.99, scores within one quantization step; differences only where
  scores tie exactly are counted apart;
* time: op = median over images of (invoke with op - invoke without it), per image the median of
  ``--repeat`` back-to-back pairs; ours = median over images of the median of ``--repeat`` decodes
  (at the op's threshold and at ``--threshold``);
  copy = time to copy the raw outputs out of the interpreter (``Detector.infer`` does it);
  op_alone = the op by itself (a one-op model fed the same raw outputs; median of ``--repeat``),
  a low-noise cross-check of the difference above.

    python tools/bench_decode.py                     # table
    python tools/bench_decode.py --json out.json     # and machine-readable results
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edgedet.model import DecodeOptions  # noqa: E402
from edgedet.postprocess.decode import DecodeSettings, SSDDecoder  # noqa: E402
from edgedet.postprocess.nms import iou_matrix  # noqa: E402
from edgedet.preprocess import InputSpec, Preprocessor, default_normalization  # noqa: E402
from edgedet.tflite import (  # noqa: E402
    find_detection_op,
    load_interpreter,
    load_interpreter_from_bytes,
    read_detection_op_options,
    read_model,
    strip_detection_op,
)
from edgedet.tflite.detection_op import drop_unused_opcodes, drop_unused_tensors  # noqa: E402


def assets_dir() -> Path:
    import os

    env = os.environ.get("EDGEDET_ASSETS")
    return Path(env) if env else ROOT.parent / "shared" / "assets"


DEFAULT_MODELS = [
    "models/ssd_mobilenet_v1_coco_quant_postprocess.tflite",
    "models/ssd_mobilenet_v2_fpnlite_320_coco_fp.tflite",
]


def op_only_model(path: Path) -> bytes:
    """The detection op alone: its box encodings and class predictions become graph inputs."""
    from edgedet.tflite import model_to_bytes

    model = read_model(path)
    si, oi = find_detection_op(model)
    sub = model.subgraphs[si]
    op = sub.operators[oi]
    sub.operators = [op]
    sub.inputs = np.array(list(op.inputs)[:2], np.int32)
    sub.outputs = np.array(list(op.outputs), np.int32)
    model.signatureDefs = None
    drop_unused_tensors(model, si)
    drop_unused_opcodes(model)
    return model_to_bytes(model)


class Pair:
    """One model with its op and the same model stripped, plus our decoder for it."""

    def __init__(self, path: Path, threads: int) -> None:
        self.path = path
        self.op = load_interpreter(path, threads)
        model_t = read_model(path)
        si, oi = find_detection_op(model_t)
        op = model_t.subgraphs[si].operators[oi]
        self.op_options = read_detection_op_options(op)
        stripped = strip_detection_op(model_t)
        self.raw = load_interpreter_from_bytes(stripped.model_bytes, threads, path.stem)
        self.op_only = load_interpreter_from_bytes(op_only_model(path), threads, path.stem + ".op")
        ins = self.op_only.get_input_details()
        self.op_only_in = sorted(ins, key=lambda d: int(d["shape"][-1]) == 4)  # scores first, then boxes
        d = self.op.get_input_details()[0]
        mean, std = default_normalization(d["dtype"])
        scale, zp = d["quantization"]
        self.spec = InputSpec(int(d["shape"][2]), int(d["shape"][1]), np.dtype(d["dtype"]), scale, zp, mean, std)
        self.pre = Preprocessor(self.spec, "stretch")
        self.in_op = d["index"]
        self.in_raw = self.raw.get_input_details()[0]["index"]
        outs = {x["name"]: x for x in self.raw.get_output_details()}
        self.box_d, self.score_d = outs[stripped.boxes_name], outs[stripped.scores_name]
        self.opts = DecodeOptions.from_op(self.op_options, background=stripped.background)
        self.anchors = stripped.anchors
        self.activation = stripped.score_activation
        # the op's outputs by value: boxes [1,M,4], count [1], then classes (whole numbers) / scores
        self.op_outs = self.op.get_output_details()
        self.turn = 0

    def decoder(self, threshold: float) -> SSDDecoder:
        o = self.opts
        s = DecodeSettings(score_threshold=threshold, iou_threshold=o.iou_threshold, max_detections=o.max_detections,
                           mode="regular" if o.use_regular_nms else "fast",
                           max_classes_per_detection=o.max_classes_per_detection,
                           detections_per_class=o.detections_per_class, background=o.background,
                           scales=(o.y_scale, o.x_scale, o.h_scale, o.w_scale), score_activation=self.activation)
        return SSDDecoder(self.anchors, s, boxes_quant=tuple(self.box_d["quantization"]),
                          scores_quant=tuple(self.score_d["quantization"]), scores_dtype=self.score_d["dtype"])

    def op_result(self):
        from edgedet.model import identify_op_outputs

        values = {d["index"]: self.op.get_tensor(d["index"]) for d in self.op_outs}
        roles = identify_op_outputs(self.op_outs, values)
        n = int(values[roles.count].reshape(-1)[0])
        return (values[roles.boxes].reshape(-1, 4)[:n], values[roles.scores].reshape(-1)[:n],
                values[roles.classes].reshape(-1)[:n].astype(np.int32))


def _invoke_ms(interp, index, tensor) -> float:
    interp.set_tensor(index, tensor)
    t0 = time.perf_counter()
    interp.invoke()
    return (time.perf_counter() - t0) * 1000.0


def interleaved_invokes(pair: Pair, tensor, repeat: int) -> tuple[float, float, float]:
    """``repeat`` back-to-back pairs of runs (which one goes first alternates): median invoke with op,
    without, and the median of the paired differences (slow phases of the machine hit both alike)."""
    op, raw = [], []
    _invoke_ms(pair.op, pair.in_op, tensor)
    _invoke_ms(pair.raw, pair.in_raw, tensor)
    for i in range(repeat):
        if (i + pair.turn) % 2:  # alternate which runs first: no bias from the order within a pair
            op.append(_invoke_ms(pair.op, pair.in_op, tensor))
            raw.append(_invoke_ms(pair.raw, pair.in_raw, tensor))
        else:
            raw.append(_invoke_ms(pair.raw, pair.in_raw, tensor))
            op.append(_invoke_ms(pair.op, pair.in_op, tensor))
    pair.turn += 1
    diffs = [a - b for a, b in zip(op, raw)]
    return statistics.median(op), statistics.median(raw), statistics.median(diffs)


def op_only_ms(pair: Pair, enc: np.ndarray, sc: np.ndarray, repeat: int) -> float:
    """Median time of the op alone on these raw outputs."""
    scores_d, boxes_d = pair.op_only_in
    times = []
    for _ in range(repeat + 1):
        pair.op_only.set_tensor(boxes_d["index"], enc)
        pair.op_only.set_tensor(scores_d["index"], sc)
        t0 = time.perf_counter()
        pair.op_only.invoke()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times[1:])


def compare(op, ours, score_step: float) -> tuple[str, float, float]:
    """'match' | 'tie' | 'mismatch', min IoU, max |score diff| (matched by rank)."""
    ob, os_, oc = op
    wb, ws, wc = ours
    n = min(len(os_), len(ws))
    ious = np.diag(iou_matrix(ob[:n], wb[:n])) if n else np.ones(0)
    dscore = np.abs(os_[:n] - ws[:n]) if n else np.zeros(0)
    ok = (len(os_) == len(ws)) and np.all(oc == wc) and np.all(ious >= 0.99) and np.all(
        dscore <= score_step + 1e-6)
    if ok:
        return "match", float(ious.min(initial=1.0)), float(dscore.max(initial=0.0))
    # differences only where scores tie: the same multiset of scores, and each differing rank's score
    # occurs more than once among the candidates at that rank (or sits at the max-detections cut)
    if len(os_) == len(ws) and np.allclose(np.sort(os_), np.sort(ws), atol=score_step + 1e-6):
        bad = np.flatnonzero((oc != wc) | (ious < 0.99))
        tied = all(np.sum(os_ == os_[i]) > 1 or i == len(os_) - 1 for i in bad)
        if tied:
            return "tie", float(ious.min(initial=1.0)), float(dscore.max(initial=0.0))
    return "mismatch", float(ious.min(initial=1.0)), float(dscore.max(initial=0.0))


def images_of(dataset: Path) -> list[Path]:
    folder = dataset / "images" if (dataset / "images").is_dir() else dataset
    exts = {".jpg", ".jpeg", ".png", ".bmp"}
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts)


def bench_model(path: Path, images: list[Path], threads: int, repeat: int, threshold: float) -> dict:
    pair = Pair(path, threads)
    dec_op_thr = pair.decoder(pair.opts.score_threshold)
    dec_user = pair.decoder(threshold)
    step = float(pair.score_d["quantization"][0]) or 0.0
    rows = {"match": 0, "tie": 0, "mismatch": 0}
    mismatches = []
    op_ms, raw_ms, diff_ms, ours_ms, ours_user_ms, copy_ms, alone_ms = [], [], [], [], [], [], []
    min_iou, max_ds = 1.0, 0.0
    for img_path in images:
        image = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
        if image is None:
            continue
        tensor = pair.pre.prepare(image).tensor
        t_op, t_raw, t_diff = interleaved_invokes(pair, tensor, repeat)
        op_ms.append(t_op)
        raw_ms.append(t_raw)
        diff_ms.append(t_diff)
        op = pair.op_result()
        t0 = time.perf_counter()
        enc = pair.raw.get_tensor(pair.box_d["index"])
        sc = pair.raw.get_tensor(pair.score_d["index"])
        copy_ms.append((time.perf_counter() - t0) * 1000.0)
        ours = None
        times, times_user = [], []
        for _ in range(repeat):
            t0 = time.perf_counter()
            ours = dec_op_thr(enc, sc)
            times.append((time.perf_counter() - t0) * 1000.0)
            t0 = time.perf_counter()
            dec_user(enc, sc)
            times_user.append((time.perf_counter() - t0) * 1000.0)
        alone_ms.append(op_only_ms(pair, enc, sc, repeat))
        ours_ms.append(statistics.median(times))
        ours_user_ms.append(statistics.median(times_user))
        verdict, iou, ds = compare(op, ours, step or 1e-6)
        rows[verdict] += 1
        if verdict == "mismatch":
            mismatches.append(img_path.name)
        if verdict != "mismatch":
            min_iou, max_ds = min(min_iou, iou), max(max_ds, ds)
    med = statistics.median
    return {
        "model": path.name,
        "images": sum(rows.values()),
        "match": rows["match"],
        "tie_only": rows["tie"],
        "mismatch": rows["mismatch"],
        "mismatched_images": mismatches,
        "min_iou": round(min_iou, 6),
        "max_score_diff": round(max_ds, 6),
        "score_step": step,
        "op_threshold": pair.opts.score_threshold,
        "threshold": threshold,
        "invoke_op_ms": round(med(op_ms), 3),
        "invoke_raw_ms": round(med(raw_ms), 3),
        "op_ms": round(med(diff_ms), 3),
        "op_alone_ms": round(med(alone_ms), 3),
        "ours_ms_at_op_threshold": round(med(ours_ms), 3),
        f"ours_ms_at_{threshold:g}": round(med(ours_user_ms), 3),
        "copy_raw_outputs_ms": round(med(copy_ms), 3),
        "ours_not_slower": bool(med(ours_ms) <= med(diff_ms)),
        "ours_not_slower_than_op_alone": bool(med(ours_ms) <= med(alone_ms)),
        "threads": threads,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="model(s) ending in the op (default: the v1 and FPNLite assets)")
    ap.add_argument("--dataset", default=None, help="image folder (default: datasets/coco_tiny_val2017 of the assets)")
    ap.add_argument("--threads", type=int, default=1,
                    help="interpreter threads (default 1: the op runs on one thread anyway, and a "
                         "single-threaded invoke is far less disturbed by other load, so the "
                         "difference of two invokes is stable)")
    ap.add_argument("--repeat", type=int, default=9, help="timed runs per image and step")
    ap.add_argument("--threshold", type=float, default=0.5, help="the second decode threshold timed")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON ('-' for stdout)")
    args = ap.parse_args(argv)
    models = [Path(m) for m in args.model] if args.model else [assets_dir() / m for m in DEFAULT_MODELS]
    dataset = Path(args.dataset) if args.dataset else assets_dir() / "datasets" / "coco_tiny_val2017"
    images = images_of(dataset)[: args.limit]
    if not images:
        print(f"no images under {dataset}", file=sys.stderr)
        return 2
    results = [bench_model(m, images, args.threads, args.repeat, args.threshold) for m in models]
    cols = ["model", "images", "match", "tie_only", "mismatch", "min_iou", "max_score_diff", "invoke_op_ms",
            "invoke_raw_ms", "op_ms", "op_alone_ms", "ours_ms_at_op_threshold", f"ours_ms_at_{args.threshold:g}",
            "copy_raw_outputs_ms", "ours_not_slower"]
    table = [cols] + [[str(r[c]) for c in cols] for r in results]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    for r in results:
        if r["mismatched_images"]:
            print(f"{r['model']}: mismatches on {', '.join(r['mismatched_images'])}")
    if args.json:
        text = json.dumps(results, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0 if all(r["mismatch"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
