"""``--keep-classes``: class predictors sliced in the flatbuffer; the kept classes' scores and
detections are those of the full model."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from edgedet.cli import main
from edgedet.detector import Detector
from edgedet.errors import ConfigError
from edgedet.model import open_model
from edgedet.postprocess.decode import DecodeSettings, SSDDecoder
from edgedet.tflite import find_detection_op, read_detection_op_options, read_model
from edgedet.tools.convert import keep_classes, parse_classes
from tests.assets import require_asset

V1 = "models/ssd_mobilenet_v1_coco_quant_postprocess.tflite"
IMAGES = ("images/coral/kite_and_cold.jpg", "images/coral/grace_hopper.bmp", "images/coral/traffic_frames/0001.bmp",
          "images/skimage/astronaut.png")


def _raw(loaded, tensor):
    loaded.interpreter.set_tensor(loaded.input_index, tensor)
    loaded.interpreter.invoke()
    return loaded.interpreter.get_tensor(loaded.roles.boxes), loaded.interpreter.get_tensor(loaded.roles.scores)


def _per_class_decoder(loaded):
    """Per-class NMS with no overall cap: its detections of a class depend on that class's scores only."""
    o = loaded.options
    settings = DecodeSettings(score_threshold=0.05, iou_threshold=o.iou_threshold, max_detections=100000,
                              mode="regular", detections_per_class=100, background=o.background,
                              scales=(o.y_scale, o.x_scale, o.h_scale, o.w_scale),
                              score_activation=o.score_activation)
    dtype = next(d["dtype"] for d in loaded.interpreter.get_output_details() if d["index"] == loaded.roles.scores)
    return SSDDecoder(loaded.anchors, settings, boxes_quant=loaded.roles.boxes_quant,
                      scores_quant=loaded.roles.scores_quant, scores_dtype=dtype)


@pytest.fixture(scope="module")
def sliced(tmp_path_factory):
    src = require_asset(V1)
    out = tmp_path_factory.mktemp("keep") / "person_car.tflite"
    report = keep_classes(src, out, "person, car")
    return src, out, report


def test_outputs_are_background_plus_kept_classes(sliced):
    src, out, report = sliced
    assert report.kept == ["person", "car"] and report.ids == [0, 2] and report.predictors == 6
    model = read_model(out)
    si, oi = find_detection_op(model)
    op = model.subgraphs[si].operators[oi]
    assert read_detection_op_options(op)["num_classes"] == 2
    assert list(model.subgraphs[si].tensors[op.inputs[1]].shape) == [1, 1917, 3]  # background + 2
    assert report.size_after < 0.8 * report.size_before
    side = yaml.safe_load(out.with_suffix(".yaml").read_text())
    assert side["labels"] == ["person", "car"] and side["classes"]["source_ids"] == [0, 2]
    det = Detector.from_path(out, threads=1)
    assert det.labels == ["person", "car"] and det.info.num_classes == 2


def test_kept_scores_and_per_class_detections_equal_the_full_model(sliced):
    src, out, _ = sliced
    full, small = open_model(src, threads=1, decoder="ours"), open_model(out, threads=1, decoder="ours")
    dec_full, dec_small = _per_class_decoder(full), _per_class_decoder(small)
    prep = Detector.from_path(src, threads=1)
    kept_cols = [0, 1, 3]  # background, person, car
    persons = 0
    for rel in IMAGES:
        tensor = prep.prepare(cv2.imread(str(require_asset(rel)))).tensor
        (bf, sf), (bs, ss) = _raw(full, tensor), _raw(small, tensor)
        assert np.array_equal(bf, bs) and np.array_equal(sf[..., kept_cols], ss)  # bit for bit
        b1, s1, c1 = dec_full(bf, sf)
        keep = np.isin(c1, [0, 2])
        b2, s2, c2 = dec_small(bs, ss)
        assert np.array_equal(b1[keep], b2) and np.array_equal(s1[keep], s2)
        assert np.array_equal(np.where(c1[keep] == 2, 1, 0), c2)
        persons += int(np.sum((c2 == 0) & (s2 > 0.5)))
    assert persons >= 3


def test_raw_form_model_updates_the_sidecar(tmp_path):
    src = require_asset(V1)
    raw = tmp_path / "raw.tflite"
    from edgedet.tools.convert import strip_file

    strip_file(src, raw)
    labels = require_asset("labels/coco_labels.txt")
    out = tmp_path / "sub" / "person.tflite"
    out.parent.mkdir()
    report = keep_classes(raw, out, ["person"], labels=labels)
    assert report.form == "raw"
    side = yaml.safe_load(out.with_suffix(".yaml").read_text())
    assert side["postprocess"]["num_classes"] == 1 and side["labels"] == ["person"]
    det = Detector.from_path(out, threads=1, score_threshold=0.5)
    found = det.detect(cv2.imread(str(require_asset("images/coral/grace_hopper.bmp"))))
    assert len(found.scores) >= 1 and set(found.class_ids.tolist()) == {0}


def test_unknown_class_and_empty_list_are_one_line_errors(tmp_path):
    src = require_asset(V1)
    with pytest.raises(ConfigError, match="unknown label 'unicorn'"):
        keep_classes(src, tmp_path / "x.tflite", "person,unicorn")
    with pytest.raises(ConfigError):
        parse_classes(" , ")
    assert parse_classes("person, Person ,car") == ["person", "car"]
    assert not (tmp_path / "x.tflite").exists()


def test_cli_convert_keep_classes(tmp_path):
    src = require_asset(V1)
    out = tmp_path / "person.tflite"
    result = CliRunner().invoke(main, ["convert", str(src), "-o", str(out), "--keep-classes", "person"])
    assert result.exit_code == 0, result.output
    assert "kept 1 of 90 classes (person)" in result.output
    assert Detector.from_path(out, threads=1).labels == ["person"]


def test_cli_prune_keep_classes(tmp_path):
    src = require_asset(V1)
    out = tmp_path / "pruned_person.tflite"
    result = CliRunner().invoke(main, ["prune", str(src), "-o", str(out), "--method", "magnitude",
                                       "--sparsity", "0.2", "--keep-classes", "person", "-q"])
    assert result.exit_code == 0, result.output
    side = yaml.safe_load(out.with_suffix(".yaml").read_text())
    assert side["labels"] == ["person"] and [h["tool"] for h in side["history"]][-2:] == ["prune", "keep-classes"]
    model = read_model(out)
    si, oi = find_detection_op(model)
    assert read_detection_op_options(model.subgraphs[si].operators[oi])["num_classes"] == 1


def test_fpnlite_shared_class_head_is_sliced_once(tmp_path):
    src = require_asset("models/ssd_mobilenet_v2_fpnlite_320_coco_fp.tflite")
    out = tmp_path / "fpn_person.tflite"
    report = keep_classes(src, out, "person", labels=require_asset("labels/coco_labels.txt"))
    assert report.predictors == 5  # five levels, one weight tensor shared by all
    full, small = open_model(src, threads=1, decoder="ours"), open_model(out, threads=1, decoder="ours")
    tensor = Detector.from_path(src, threads=1).prepare(cv2.imread(str(require_asset(IMAGES[0])))).tensor
    (bf, sf), (bs, ss) = _raw(full, tensor), _raw(small, tensor)
    assert ss.shape == (1, 12804, 2)
    assert np.array_equal(bf, bs) and np.array_equal(sf[..., [0, 1]], ss)
