"""How well a quantized model reproduces its source's detections (on calibration images, never
the eval set), and the choice of the backbone range rule by the head outputs' SNR."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ... import tflite as tfl
from ...errors import ConfigError
from ...postprocess.nms import iou_matrix
from .blas import single_blas_thread
from .graph import prepare_float_model
from .int8 import quantize_int8
from .source import copy_sidecar


def detection_agreement(ref, test, images: Sequence, *, score_threshold: float = 0.3,
                        iou_threshold: float = 0.5) -> dict:
    """How well ``test`` reproduces ``ref``'s detections (both ``detect(image) -> Detections``).

    Greedy one-to-one matching per class at ``iou_threshold``: F1 of the matches, mean IoU and
    mean absolute score difference of matched pairs.
    """
    import cv2

    tp = n_ref = n_test = 0
    ious, dscore = [], []
    for p in images:
        image = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if image is None:
            raise ConfigError(f"cannot read image {p}")
        a, b = ref(image), test(image)
        a, b = a[a.scores >= score_threshold], b[b.scores >= score_threshold]
        n_ref += len(a)
        n_test += len(b)
        if not len(a) or not len(b):
            continue
        iou = iou_matrix(a.xyxy, b.xyxy)
        iou[a.class_ids[:, None] != b.class_ids[None, :]] = 0
        while True:
            i, j = np.unravel_index(np.argmax(iou), iou.shape)
            if iou[i, j] < iou_threshold:
                break
            tp += 1
            ious.append(float(iou[i, j]))
            dscore.append(abs(float(a.scores[i]) - float(b.scores[j])))
            iou[i, :] = 0
            iou[:, j] = 0
    f1 = 2 * tp / max(n_ref + n_test, 1)
    return {"f1": round(f1, 4), "matched": tp, "ref": n_ref, "test": n_test,
            "mean_iou": round(float(np.mean(ious)), 4) if ious else 0.0,
            "score_mae": round(float(np.mean(dscore)), 4) if dscore else 0.0}


def compare_models(ref_path, test_path, images: Sequence, *, threads: Optional[int] = None,
                   score_threshold: float = 0.3) -> dict:
    """Detection agreement of two models on ``images`` (held-out calibration frames), both run by
    the inference ``Detector`` (op-form or raw models alike)."""
    from ..evaluate import make_detector

    ref, _ = make_detector(ref_path, threads=threads, score_threshold=score_threshold)
    test, _ = make_detector(test_path, threads=threads, score_threshold=score_threshold)
    result = detection_agreement(ref.detect, test.detect, images, score_threshold=score_threshold)
    return {**result, "score_threshold": score_threshold}


def pseudo_map(ref_path, test_path, images: Sequence, *, threads: Optional[int] = None,
               teacher_threshold: float = 0.3) -> dict:
    """Label-free accuracy proxy on calibration images: the COCO mAP of ``test`` (scores >= 0.01,
    up to 100 detections) against ``ref``'s confident detections (>= ``teacher_threshold``) taken
    as ground truth. Sensitive to the ranking of low scores, as a real mAP is."""
    import cv2

    from ..evaluate import CocoSet, coco_metrics, make_detector

    ref, _ = make_detector(ref_path, threads=threads, score_threshold=teacher_threshold)
    test, _ = make_detector(test_path, threads=threads, score_threshold=0.01, max_detections=100)
    gt_images, gt_anns, results = [], [], []
    classes = set()
    for k, p in enumerate(images):
        image = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if image is None:
            raise ConfigError(f"cannot read image {p}")
        h, w = image.shape[:2]
        gt_images.append({"id": k + 1, "file_name": str(p), "width": w, "height": h})
        a, b = ref.detect(image), test.detect(image)
        for box, c in zip(a.xyxy.tolist(), a.class_ids.tolist()):
            x1, y1, x2, y2 = box
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": k + 1, "category_id": int(c) + 1,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
            classes.add(int(c) + 1)
        for box, c, sc in zip(b.xyxy.tolist(), b.class_ids.tolist(), b.scores.tolist()):
            x1, y1, x2, y2 = box
            results.append({"image_id": k + 1, "category_id": int(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": sc})
    data = {"images": gt_images, "annotations": gt_anns,
            "categories": [{"id": c, "name": str(c)} for c in sorted(classes | {r["category_id"] for r in results})]}
    metrics = coco_metrics(CocoSet(Path("pseudo"), Path("."), gt_images, data["categories"], data), results)
    return {"pseudo_mAP": round(metrics["mAP"], 4), "pseudo_AP50": round(metrics["AP50"], 4),
            "teacher_boxes": len(gt_anns)}


PERCENTILE_CANDIDATES = (100.0, 99.99, "mse")


def choose_percentile(src, calibration, held_out, *, candidates: Sequence = PERCENTILE_CANDIDATES,
                      threads: Optional[int] = None, log=None) -> tuple:
    """Quantize with each candidate range rule (ranges from ``calibration``) and keep the one whose
    raw head outputs are closest to the float model's on the ``held_out`` calibration images:
    highest mean of the confidence-weighted box SNR and the score SNR (``measure.head_snr``,
    every anchor of every held-out image). Detection F1 against the source is reported beside it.
    Returns the chosen candidate and ``{candidate: measures}``."""
    import tempfile

    from .int8 import Int8Calibration, QuantizeOptions

    images = list(calibration) + list(held_out)
    with tempfile.TemporaryDirectory(prefix="edgedet-pct-") as tmp, single_blas_thread():
        session = Int8Calibration(src, images, QuantizeOptions(threads=threads),
                                  {"cal": range(len(calibration))}, Path(tmp), log=log)
        return _choose(session, src, "cal", held_out, range(len(calibration), len(images)), candidates,
                       Path(tmp), log)


def quantize_int8_auto(src, out, images: Sequence, held_out: Sequence, options=None, *,
                       candidates: Sequence = PERCENTILE_CANDIDATES, log=None) -> tuple:
    """``choose_percentile`` on ``images`` minus ``held_out`` (a subset of ``images``), then
    ``quantize_int8`` of ``src`` on all ``images`` with the chosen rule, to ``out``: the same
    files as those two calls, with every float-model statistic computed once, for both image
    sets in one pass (``int8.Int8Calibration``). Returns (``QuantizeResult``, the chosen
    candidate, ``{candidate: measures}``)."""
    import tempfile
    import time

    from .int8 import Int8Calibration, QuantizeOptions

    t0 = time.perf_counter()
    opts = options or QuantizeOptions()
    held = set(map(str, held_out))
    held_idx = [k for k, p in enumerate(images) if str(p) in held]
    cal_idx = [k for k, p in enumerate(images) if str(p) not in held]
    if not held_idx or not cal_idx:
        raise ConfigError("choosing the range rule needs held-out images and calibration images")
    with tempfile.TemporaryDirectory(prefix="edgedet-pct-") as tmp, single_blas_thread():
        if opts.equalize or opts.residual_equalize:  # the float model differs per image set
            session = Int8Calibration(src, images, opts, {"cal": cal_idx}, Path(tmp) / "cal", log=log)
            best, scores = _choose(session, src, "cal", [images[k] for k in held_idx], held_idx, candidates,
                                   Path(tmp), log)
            result = quantize_int8(src, out, images, opts, log=log, percentile=best)
        else:
            session = Int8Calibration(src, images, opts, {"cal": cal_idx, "all": range(len(images))}, Path(tmp),
                                      log=log)
            best, scores = _choose(session, src, "cal", [images[k] for k in held_idx], held_idx, candidates,
                                   Path(tmp), log)
            if log:
                log(f"quantizing to int8 with {len(images)} calibration images")
            result = session.quantize(out, "all", best)
    result.seconds = time.perf_counter() - t0
    return result, best, scores


def _choose(session, src, subset: str, held_out: Sequence, held_idx: Sequence, candidates: Sequence, folder: Path,
            log) -> tuple:
    """Each candidate rule quantized on the ``subset`` of ``session`` and scored on the held-out
    images (their paths and their indices in the session's inputs)."""
    from ...sidecar import update_sidecar
    from .measure import head_snr

    scores = {}
    model = tfl.read_model(src)
    prepare_float_model(model)
    float_path = folder / "float_ref.tflite"
    tfl.write_model(model, float_path)
    held_inputs = [session.inputs[k] for k in held_idx]
    threads = session.opts.threads
    for p in candidates:
        out = folder / f"p{p}.tflite"
        result = session.quantize(out, subset, p)
        copy_sidecar(src, out)
        if result.sidecar:
            update_sidecar(out, **result.sidecar)
        snr = head_snr(float_path, out, held_inputs, threads=threads,
                       skip_columns=0 if session.opts.head_columns == "all" else None)
        agree = compare_models(src, out, held_out, threads=threads)
        scores[p] = {"snr_db": snr["mean"], "box_snr_db": snr.get("boxes_w"),
                     "score_snr_db": snr.get("scores", snr.get("logits")), "f1": agree["f1"]}
        if log:
            log(f"percentile {p}: {scores[p]}")
    best = max(candidates, key=lambda p: scores[p]["snr_db"])
    return best, scores
