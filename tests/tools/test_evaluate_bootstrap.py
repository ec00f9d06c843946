"""Bootstrap intervals of ``edgedet eval``: exact against pycocotools on repeated images, seedable, fast."""

from __future__ import annotations

import contextlib
import io
import time

import numpy as np
import pytest

from edgedet.tools.evaluate import category_ap, coco_eval, interval, resample_weights, summary_ap

pytest.importorskip("pycocotools")


def synthetic_set(n_images: int, seed: int = 0, n_cats: int = 3, crowd: bool = True):
    """A COCO set with noisy detections of its boxes, false positives and (optionally) crowd boxes;
    all scores distinct (pycocotools orders tied scores by image, the bootstrap by weight)."""
    rng = np.random.default_rng(seed)
    cats = [{"id": c + 1, "name": f"c{c + 1}"} for c in range(n_cats)]
    images, anns, dets = [], [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 640, "height": 480})
        for _ in range(rng.integers(0, 4)):
            x, y, w, h = rng.uniform(0, 400), rng.uniform(0, 300), rng.uniform(8, 200), rng.uniform(8, 150)
            cat = int(rng.integers(1, n_cats + 1))
            is_crowd = int(crowd and rng.random() < 0.1)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": is_crowd})
            if rng.random() < 0.8:
                jit = rng.normal(0, 0.08, 4) * [w, h, w, h]
                dets.append({"image_id": i, "category_id": cat, "bbox": list(np.add([x, y, w, h], jit)),
                             "score": 0.0})
        for _ in range(rng.integers(0, 3)):
            dets.append({"image_id": i, "category_id": int(rng.integers(1, n_cats + 1)),
                         "bbox": [rng.uniform(0, 500), rng.uniform(0, 400), 40.0, 40.0], "score": 0.0})
    for d, s in zip(dets, rng.permutation(len(dets))):
        d["score"] = float(0.01 + 0.98 * s / max(len(dets), 1))
    return {"images": images, "annotations": anns, "categories": cats}, dets


def repeated(data: dict, dets: list, counts: np.ndarray):
    """The set with image ``k`` present ``counts[k]`` times (copies next to each other, new ids)."""
    images, anns, out = [], [], []
    by_img = {im["id"]: [] for im in data["images"]}
    for a in data["annotations"]:
        by_img[a["image_id"]].append(a)
    det_by_img = {im["id"]: [] for im in data["images"]}
    for d in dets:
        det_by_img[d["image_id"]].append(d)
    for k, im in enumerate(data["images"]):
        for _ in range(int(counts[k])):
            new = len(images) + 1
            images.append({**im, "id": new})
            anns += [{**a, "id": len(anns) + j + 1, "image_id": new} for j, a in enumerate(by_img[im["id"]])]
            out += [{**d, "image_id": new} for d in det_by_img[im["id"]]]
    return {**data, "images": images, "annotations": anns}, out


def test_resampled_ap_equals_pycocotools_on_the_repeated_images():
    data, dets = synthetic_set(40)
    ids = [im["id"] for im in data["images"]]
    metrics, table = coco_eval(data, ids, dets)
    ones = summary_ap(category_ap(table, np.ones((1, len(ids)))), table.iou_thresholds)
    assert abs(ones["mAP"][0] - metrics["mAP"]) < 1e-12 and abs(ones["AP50"][0] - metrics["AP50"]) < 1e-12
    weights = resample_weights(len(ids), 4, seed=3)
    got = summary_ap(category_ap(table, weights), table.iou_thresholds)
    for b, counts in enumerate(weights):
        rep_data, rep_dets = repeated(data, dets, counts)
        want, _ = coco_eval(rep_data, [im["id"] for im in rep_data["images"]], rep_dets)
        assert abs(got["mAP"][b] - want["mAP"]) < 1e-12
        assert abs(got["AP50"][b] - want["AP50"]) < 1e-12


def test_bootstrap_is_seedable_and_takes_seconds():
    data, dets = synthetic_set(500, seed=1, n_cats=1, crowd=False)
    ids = [im["id"] for im in data["images"]]
    metrics, table = coco_eval(data, ids, dets)
    t0 = time.perf_counter()
    samples = summary_ap(category_ap(table, resample_weights(len(ids), 1000, seed=7)), table.iou_thresholds)
    assert time.perf_counter() - t0 < 10.0
    again = summary_ap(category_ap(table, resample_weights(len(ids), 1000, seed=7)), table.iou_thresholds)
    other = summary_ap(category_ap(table, resample_weights(len(ids), 1000, seed=8)), table.iou_thresholds)
    assert np.array_equal(samples["mAP"], again["mAP"]) and not np.array_equal(samples["mAP"], other["mAP"])
    iv = interval(metrics["mAP"], samples["mAP"])
    assert iv.low < metrics["mAP"] < iv.high and iv.high - iv.low < 0.2


def test_no_detections_scores_zero_with_an_interval():
    data, _ = synthetic_set(10)
    metrics, table = coco_eval(data, [im["id"] for im in data["images"]], [])
    assert metrics["mAP"] == 0.0
    samples = summary_ap(category_ap(table, resample_weights(10, 50)), table.iou_thresholds)
    assert np.nanmax(samples["mAP"]) == 0.0


def test_quiet():
    # pycocotools prints its tables; the evaluation keeps stdout clean for --json
    data, dets = synthetic_set(5)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        coco_eval(data, [im["id"] for im in data["images"]], dets)
    assert out.getvalue() == ""
