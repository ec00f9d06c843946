"""``edgedet eval`` on the real COCO subset, checked against an independent pycocotools run."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
from click.testing import CliRunner

from edgedet.cli import main
from edgedet.errors import ConfigError
from edgedet.tools.evaluate import class_id_map, evaluate


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
    assert data["n_images"] == 3 and "mAP" in data["metrics"]

    res = runner.invoke(main, ["eval", "-m", str(v1_model), "--images", str(grace_hopper.parent),
                               "--annotations", str(coco_ann), "--no-progress"])
    assert res.exit_code != 0
    assert "does not match" in res.stderr and "Traceback" not in res.output
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = runner.invoke(main, ["eval", "-m", str(v1_model), "--images", str(coco_tiny / "val2017"),
                               "--annotations", str(bad), "--no-progress"])
    assert res.exit_code != 0 and res.stderr.startswith("edgedet: error:")
