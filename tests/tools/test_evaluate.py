"""``edgedet eval`` on the real COCO subset, checked against an independent pycocotools run."""

from __future__ import annotations

import contextlib
import io
import json
import sys

import numpy as np
import pytest
from assets import require_asset
from click.testing import CliRunner

from edgedet.cli import main
from edgedet.errors import ConfigError, EdgedetError
from edgedet.tools.evaluate import category_ap, class_id_map, evaluate, summary_ap


@pytest.fixture
def coco_ann(coco_tiny):
    return coco_tiny / "annotations" / "instances_val2017.json"


def test_map_matches_independent_pycocotools(v1_model, coco_tiny, coco_ann, coco_labels, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = tmp_path / "dets.json"
    report = evaluate(v1_model, coco_tiny / "val2017", coco_ann, labels=coco_labels, threads=2,
                      progress=False, out_json=out, limit=10)
    assert report.n_images == 10
    assert set(report.metrics) >= {"mAP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"}
    assert 0.05 < report.metrics["mAP"] < 0.8
    assert report.settings["score_threshold"] == 0.01 and report.settings["max_detections"] == 100

    results = json.loads(out.read_text())
    assert results and {"image_id", "category_id", "bbox", "score"} <= set(results[0])
    gt_data = json.loads(coco_ann.read_text())
    img_ids = sorted(im["id"] for im in gt_data["images"])[:10]
    assert {r["image_id"] for r in results} <= set(img_ids)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(coco_ann))
        ev = COCOeval(gt, gt.loadRes(str(out)), "bbox")
        ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert abs(ev.stats[0] - report.metrics["mAP"]) < 0.005
    assert abs(ev.stats[1] - report.metrics["AP50"]) < 0.005
    # the AP recomputed from the per-image matches (every image drawn once) is pycocotools' own
    point = summary_ap(category_ap(report.matches, np.ones((1, 10))), report.matches.iou_thresholds)
    assert abs(point["mAP"][0] - report.metrics["mAP"]) < 1e-12
    assert abs(point["AP50"][0] - report.metrics["AP50"]) < 1e-12
    assert report.ap.low < report.metrics["mAP"] < report.ap.high and report.ap.resamples == 1000


def test_settings_change_the_score_and_show_in_report(v1_model, coco_tiny, coco_ann):
    # no labels given: a 90-class COCO model maps index + 1 -> category id
    few = evaluate(v1_model, coco_tiny / "val2017", coco_ann, max_detections=None, progress=False, limit=10)
    many = evaluate(v1_model, coco_tiny / "val2017", coco_ann, max_detections=50, progress=False, limit=10)
    assert few.settings["max_detections"] == 10  # the model's own
    assert many.settings["max_detections"] == 50
    assert many.n_detections > few.n_detections
    assert many.metrics["AR100"] >= few.metrics["AR100"]
    table = many.format_table()
    assert "max_detections=50" in table and "mAP" in table


def test_class_map_by_name_and_coco90(coco_labels, coco_ann):
    cats = json.loads(coco_ann.read_text())["categories"]
    labels = coco_labels.read_text().splitlines()
    m, unmapped = class_id_map(labels, cats)
    assert m[0] == 1 and m[labels.index("toothbrush")] == 90 and m[labels.index("n/a")] == -1
    assert not unmapped
    # a custom label list in another order maps by name
    m2, _ = class_id_map(["dog", "Person", "traffic_light", "unicorn"], cats)
    by_name = {c["name"]: c["id"] for c in cats}
    assert list(m2) == [by_name["dog"], 1, by_name["traffic light"], -1]
    with pytest.raises(ConfigError):
        class_id_map(["unicorn"], cats)


def test_cli_eval_json_and_bad_annotations(v1_model, coco_tiny, coco_ann, grace_hopper, tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["eval", "-m", str(v1_model), "--images", str(coco_tiny / "val2017"),
                               "--annotations", str(coco_ann), "--limit", "3", "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert [r["settings"]["max_detections"] for r in data["reports"]] == [100, 10]  # 100 and the model's own
    first = data["reports"][0]
    assert first["n_images"] == 3 and "mAP" in first["metrics"]
    iv = first["intervals"]["mAP"]
    assert iv["low"] <= iv["value"] <= iv["high"] and iv["resamples"] == 1000

    res = runner.invoke(main, ["eval", "-m", str(v1_model), "--images", str(grace_hopper.parent),
                               "--annotations", str(coco_ann), "--no-progress"])
    assert res.exit_code != 0
    assert "does not match" in res.stderr and "Traceback" not in res.output
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = runner.invoke(main, ["eval", "-m", str(v1_model), "--images", str(coco_tiny / "val2017"),
                               "--annotations", str(bad), "--no-progress"])
    assert res.exit_code != 0 and res.stderr.startswith("edgedet: error:")


def test_eval_without_pycocotools_fails_before_running_the_model(v1_model, coco_tiny, coco_ann, monkeypatch):
    import edgedet.tools.evaluate.runner as runner_module

    def no_model(*args, **kwargs):
        raise AssertionError("the model ran before the missing library was reported")

    monkeypatch.setitem(sys.modules, "pycocotools", None)
    monkeypatch.setitem(sys.modules, "pycocotools.cocoeval", None)
    monkeypatch.setattr(runner_module, "make_detector", no_model)
    res = CliRunner().invoke(main, ["eval", "-m", str(v1_model), "--images", str(coco_tiny / "val2017"),
                                    "--annotations", str(coco_ann), "--no-progress"])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert lines == ["edgedet: error: evaluation needs pycocotools: pip install 'edgedet[eval]'"]
    with pytest.raises(EdgedetError, match="pycocotools"):
        evaluate(v1_model, coco_tiny / "val2017", coco_ann, progress=False)


def test_categories_by_name_or_id_and_a_person_only_model(v1_model, coco_tiny, coco_ann):
    from edgedet.tools.evaluate import make_detector

    by_name = evaluate(v1_model, coco_tiny / "val2017", coco_ann, categories="person", progress=False, limit=20,
                       resamples=0)
    by_id = evaluate(v1_model, coco_tiny / "val2017", coco_ann, categories=[1], progress=False, limit=20,
                     resamples=0)
    assert [c["name"] for c in by_name.categories] == ["person"] and by_name.metrics == by_id.metrics
    assert "categories  person" in by_name.format_table() and not by_name.intervals
    everything = evaluate(v1_model, coco_tiny / "val2017", coco_ann, progress=False, limit=20, resamples=0)
    assert len(everything.categories) > 10 and everything.metrics["mAP"] != by_name.metrics["mAP"]

    # a model whose only label is person is scored on person (by default), as the full model is with --categories
    det, _ = make_detector(v1_model, score_threshold=0.01, max_detections=100)

    def person_only(image):
        d = det.detect(image)
        return d[d.class_ids == 0]

    only = evaluate("person-model", coco_tiny / "val2017", coco_ann, detect=person_only, labels=["person"],
                    progress=False, limit=20, resamples=0)
    assert [c["name"] for c in only.categories] == ["person"]
    assert abs(only.metrics["mAP"] - by_name.metrics["mAP"]) < 1e-9
    with pytest.raises(ConfigError, match="unicorn"):
        evaluate(v1_model, coco_tiny / "val2017", coco_ann, categories="person,unicorn", progress=False, limit=2)


def test_person_set_is_scored_on_person_only(v1_model):
    person = require_asset("datasets/coco_person_val2017")
    report = evaluate(v1_model, person / "val2017", person / "annotations" / "instances_val2017.json",
                      progress=False, limit=30, resamples=200)
    assert [c["name"] for c in report.categories] == ["person"]
    assert report.ap.low < report.metrics["mAP"] < report.ap.high


def test_compare_gives_the_paired_drop(v1_model, coco_tiny, coco_ann):
    from edgedet.tools.evaluate import compare, make_detector

    det, _ = make_detector(v1_model, score_threshold=0.01, max_detections=100)

    def worse(image):  # every box shifted by a tenth of its size: a lower AP at high IoU
        d = det.detect(image)
        xyxy = d.xyxy.copy()
        xyxy[:, [0, 2]] += 0.1 * (xyxy[:, 2:3] - xyxy[:, 0:1])
        return type(d)(xyxy, d.scores, d.class_ids)

    a = evaluate(v1_model, coco_tiny / "val2017", coco_ann, progress=False, limit=40)
    b = evaluate("shifted", coco_tiny / "val2017", coco_ann, detect=worse, labels=det.labels, progress=False,
                 limit=40)
    drop = compare(a, b)
    assert drop.ap.value == pytest.approx(b.metrics["mAP"] - a.metrics["mAP"])
    assert drop.ap.high < 0  # the paired interval excludes no change
    # paired: narrower than the two unpaired intervals would suggest
    assert drop.ap.high - drop.ap.low < (a.ap.high - a.ap.low)
    assert "B - A (paired)" in drop.format_table()


def test_cli_compare_same_model_is_zero(v1_model, coco_tiny, coco_ann):
    res = CliRunner().invoke(main, ["eval", "--compare", str(v1_model), str(v1_model), "--images",
                                    str(coco_tiny / "val2017"), "--annotations", str(coco_ann), "--limit", "5",
                                    "--max-detections", "model", "--resamples", "200", "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert len(data["reports"]) == 2 and len(data["drops"]) == 1
    diff = data["drops"][0]["difference"]["mAP"]
    assert diff["value"] == diff["low"] == diff["high"] == 0.0 and diff["resamples"] == 200
    res = CliRunner().invoke(main, ["eval", "--images", str(coco_tiny / "val2017"), "--annotations", str(coco_ann)])
    assert res.exit_code == 2 and "--compare" in res.stderr
