"""Calibration sets: sampling frames from real videos/photos, the manifest, and its checks."""

from __future__ import annotations

import yaml
from click.testing import CliRunner

from edgedet.cli import main
from edgedet.errors import ConfigError
from edgedet.tools.calibration import build_calibration_set, load_calibration_set, sha256_file


def test_build_from_video_and_photos_writes_manifest(pedestrians_video, grace_hopper, tmp_path):
    out = tmp_path / "calib"
    cs = build_calibration_set([str(pedestrians_video), str(grace_hopper.parent)], out, num=6)
    assert len(cs) == 6
    manifest = yaml.safe_load((out / "manifest.yaml").read_text())
    assert manifest["version"] == 1
    video = [e for e in manifest["images"] if e["source"] == str(pedestrians_video)]
    assert len(video) == 3 and all("frame" in e for e in video)
    # frames are spread over the whole video, not its first seconds
    assert max(e["frame"] for e in video) > 400
    for entry in manifest["images"]:
        assert sha256_file(out / entry["file"]) == entry["sha256"]
    assert manifest["sources"][0]["kind"] == "video" and manifest["sources"][1]["kind"] == "images"
    # the set's identity is stable and changes when an image changes
    again = load_calibration_set(out)
    assert again.hash == cs.hash
    assert cs.describe()["size"] == 6


def test_extending_a_set_and_limit(pedestrians_video, tmp_path):
    out = tmp_path / "calib"
    build_calibration_set([str(pedestrians_video)], out, num=4, every=25)
    cs = build_calibration_set([str(pedestrians_video)], out, num=2, every=7)
    assert len(cs) == 6 and len({p.name for p in cs.images}) == 6
    assert len(load_calibration_set(out, limit=3)) == 3
    cal, held = cs.split(0.25)
    assert len(held) >= 1 and not set(cal) & set(held) and len(cal) + len(held) == 6


def test_tampered_or_empty_sets_are_one_line_errors(pedestrians_video, tmp_path):
    out = tmp_path / "calib"
    cs = build_calibration_set([str(pedestrians_video)], out, num=2)
    cs.images[0].write_bytes(b"not the same image")
    try:
        load_calibration_set(out)
    except ConfigError as exc:
        assert "sha256" in str(exc)
    else:
        raise AssertionError("tampered image accepted")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    runner = CliRunner()
    res = runner.invoke(main, ["calibration", "info", str(empty)])
    assert res.exit_code != 0 and "no calibration images" in res.stderr and "Traceback" not in res.output


def test_cli_build(pedestrians_video, tmp_path):
    out = tmp_path / "c"
    res = CliRunner().invoke(main, ["calibration", "build", "--source", str(pedestrians_video), "-o", str(out),
                                    "--num", "3", "--max-side", "320"])
    assert res.exit_code == 0, res.output
    assert "3 images" in res.stdout
    import cv2

    img = cv2.imread(str(next(out.glob("*.jpg"))))
    assert max(img.shape[:2]) == 320
    res = CliRunner().invoke(main, ["calibration", "build", "--source", str(tmp_path / "nope.mp4"), "-o",
                                    str(out)])
    assert res.exit_code != 0 and res.stderr.startswith("edgedet: error:")


def test_fair_shares_cap_and_redistribute():
    from edgedet.tools.calibration import fair_shares

    assert fair_shares(10, [None, None]) == [5, 5]
    assert fair_shares(10, [2, None, None]) == [2, 4, 4]
    assert fair_shares(9, [2, 3, 1]) == [2, 3, 1]  # all capped: fewer than asked
    assert sum(fair_shares(7, [None, None, None])) == 7


def test_balanced_set_shares_crops_flips_and_determinism(pedestrians_video, tmp_path):
    from tests.assets import require_asset

    photos = require_asset("images/coco_train2017")
    coral = require_asset("images/coral")
    sources = [str(photos), str(coral), str(pedestrians_video)]
    a = build_calibration_set(sources, tmp_path / "a", num=24, balance="kind", augment=0.25, seed=3)
    manifest = a.manifest
    entries = manifest["images"]
    assert len(a) == 24
    originals = [e for e in entries if "augment" not in e]
    frames = [e for e in originals if "frame" in e]
    stills = [e for e in originals if "frame" not in e]
    # still photos and video frames get half of the 18 originals each; the photo folders split theirs
    assert len(frames) == 9 and len(stills) == 9
    per_folder = {f: sum(e["source"].startswith(f) for e in stills) for f in (str(photos), str(coral))}
    assert sorted(per_folder.values()) == [4, 5]
    augmented = [e for e in entries if "augment" in e]
    assert len(augmented) == 6 and {"crop", "flip", "crop+flip"} <= {e["augment"] for e in augmented}
    assert all(e["of"] in {o["file"] for o in originals} for e in augmented)
    crop = next(e for e in augmented if e["augment"] == "crop")
    import cv2

    x0, y0, x1, y1 = crop["crop"]
    img = cv2.imread(str(tmp_path / "a" / crop["file"]))
    assert img.shape[:2] == (y1 - y0, x1 - x0)
    # the same call gives the same set; another seed other crops
    b = build_calibration_set(sources, tmp_path / "b", num=24, balance="kind", augment=0.25, seed=3)
    assert b.hash == a.hash
    c = build_calibration_set(sources, tmp_path / "c", num=24, balance="kind", augment=0.25, seed=4)
    assert c.hash != a.hash


def test_evaluation_images_are_refused(tmp_path):
    import json

    from tests.assets import require_asset

    photos = require_asset("images/coco_train2017")
    evalset = tmp_path / "val" / "images"
    evalset.mkdir(parents=True)
    first = sorted(photos.iterdir())[0]
    (evalset / first.name).write_bytes(first.read_bytes())
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": first.name}]}))
    try:
        build_calibration_set([str(photos)], tmp_path / "c", num=4, exclude=[str(ann)])
    except ConfigError as exc:
        assert "evaluation set" in str(exc) and first.name in str(exc)
    else:
        raise AssertionError("an evaluation image was accepted")
    (tmp_path / "val" / "annotations").mkdir()
    (tmp_path / "val" / "annotations" / "instances_val.json").write_text("{}")
    res = CliRunner().invoke(main, ["calibration", "build", "-s", str(evalset), "-o", str(tmp_path / "d")])
    assert res.exit_code != 0 and "looks like an evaluation set" in res.stderr
    assert not (tmp_path / "c" / "manifest.yaml").exists()
    # disjoint sets pass
    cs = build_calibration_set([str(photos)], tmp_path / "e", num=4, exclude=[str(evalset.parent / "annotations"
                                                                                    / "instances_val.json")])
    assert len(cs) == 4
