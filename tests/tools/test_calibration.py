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
