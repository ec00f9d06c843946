"""Regions: squares placed on motion (centred, inside the frame), boxes mapped back and merged, and a
small, far person in a large frame found with regions and missed without."""

from __future__ import annotations

import time

import numpy as np
import pytest
from assets import require_asset
from collect import Collect

from edgedet.config import config_from_dict, validate
from edgedet.detections import Detections
from edgedet.errors import ConfigError
from edgedet.frame import Frame
from edgedet.motion import MotionGate, MotionSettings
from edgedet.pipeline import Pipeline, build_motion
from edgedet.regions import merge_regions, place_regions, region_side
from edgedet.sources.base import BaseSource

STEP = 8  # frame pixels per mask sample
FRAME = (1280, 720)


def mask_with(*blobs, size=FRAME):
    """A motion mask (samples of STEP pixels) moving over each (x1, y1, x2, y2) blob in frame pixels."""
    mask = np.zeros((size[1] // STEP, size[0] // STEP), bool)
    for x1, y1, x2, y2 in blobs:
        mask[y1 // STEP:y2 // STEP, x1 // STEP:x2 // STEP] = True
    return mask


def contains(region, box):
    return region[0] <= box[0] and region[1] <= box[1] and region[2] >= box[2] and region[3] >= box[3]


def test_a_region_is_a_model_sized_square_centred_on_the_motion():
    regions = place_regions(mask_with((600, 304, 640, 384)), STEP, FRAME, side=300, count=2)
    assert regions.tolist() == [[470, 194, 770, 494]]  # centre (620, 344); one blob: one region


def test_regions_stay_inside_the_frame_and_are_clipped_to_a_small_one():
    corner = place_regions(mask_with((1240, 680, 1280, 720)), STEP, FRAME, side=300, count=1)
    assert corner.tolist() == [[980, 420, 1280, 720]]  # moved inside, still 300 x 300
    low = place_regions(mask_with((100, 40, 140, 80), size=(1280, 200)), STEP, (1280, 200), side=300, count=1)
    assert low.tolist() == [[0, 0, 300, 200]]  # the frame is lower than a region: its full height


def test_the_most_motion_first_and_every_blob_inside_its_region():
    big, small = (100, 100, 260, 260), (1000, 500, 1024, 540)
    regions = place_regions(mask_with(small, big), STEP, FRAME, side=300, count=3)
    assert len(regions) == 2
    assert contains(regions[0], big) and contains(regions[1], small)
    assert place_regions(mask_with(small, big), STEP, FRAME, side=300, count=1).shape == (1, 4)
    assert place_regions(mask_with(), STEP, FRAME, side=300, count=2).shape == (0, 4)  # nothing moves
    assert place_regions(mask_with((8, 8, 16, 16)), STEP, FRAME, side=300, count=2).shape == (0, 4)  # one sample


def test_region_side_is_the_model_input_and_needs_a_large_frame():
    assert region_side((300, 300), (1280, 720)) == 300
    assert region_side((320, 320), (1920, 1080), scale=1.5) == 480
    assert region_side((300, 300), (480, 360)) == 0  # a region would show nothing larger


def dets(rows):
    rows = np.array(rows, np.float32).reshape(-1, 6)
    return Detections(rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int32))


def test_region_boxes_come_back_in_frame_pixels_and_merge_with_the_whole_frame():
    full = dets([[100, 100, 200, 300, 0.6, 0]])
    regions = np.array([[50, 80, 350, 380], [980, 420, 1280, 720]], np.int32)
    parts = [
        dets([[52, 22, 148, 218, 0.8, 0],      # the whole frame's person again, sharper: replaces it
              [200, 100, 240, 160, 0.7, 0],    # a small one only the region sees
              [270, 50, 300, 120, 0.9, 0]]),   # cut by the region's inner right border: dropped
        dets([[250, 250, 300, 300, 0.7, 2]]),  # at the frame's corner: the frame's border, kept
    ]
    merged = merge_regions(full, parts, regions, FRAME)
    order = np.argsort(-merged.scores)
    np.testing.assert_allclose(merged.xyxy[order], [[102, 102, 198, 298], [250, 180, 290, 240],
                                                    [1230, 670, 1280, 720]])
    assert merged.class_ids[order].tolist() == [0, 0, 2]
    assert merge_regions(full, [Detections.empty()], regions[:1], FRAME) is full


def test_regions_need_motion_and_are_bounded():
    with pytest.raises(ConfigError, match="motion.regions"):
        validate(config_from_dict({"motion": {"regions": 2}}))
    with pytest.raises(ConfigError, match="motion.regions"):
        config_from_dict({"motion": {"enabled": True, "regions": 9}})
    gate = build_motion(config_from_dict({"motion": {"enabled": True, "regions": 2}}))
    assert gate is not None and gate.settings.regions == 2


# -- a user's view: a small, far person in a large frame -----------------------------------------

class Canvas(BaseSource):
    """A 1920 x 1080 grey scene; from frame 1 on a person stands at ``(x, y)`` (top left)."""

    fps = 10.0
    name = "canvas"

    def __init__(self, person: np.ndarray, x: int, y: int, n: int = 4) -> None:
        self.person, self.x, self.y, self.n, self.i = person, x, y, n, 0

    def read(self):
        if self.i >= self.n:
            return None
        image = np.full((1080, 1920, 3), 120, np.uint8)
        if self.i:
            h, w = self.person.shape[:2]
            image[self.y:self.y + h, self.x:self.x + w] = self.person
        frame = Frame(image, self.i, time.monotonic(), time.time())
        self.i += 1
        return frame


def detected(regions: int, width: int = 100, x: int = 1500, y: int = 600) -> list:
    """Each frame's detections once a person ``width`` pixels wide appeared at ``(x, y)``."""
    import cv2

    from edgedet.detector import Detector

    model = require_asset("models/ssd_mobilenet_v1_coco_quant_postprocess.tflite")
    picture = cv2.imread(str(require_asset("images/coral/grace_hopper.bmp")))
    person = cv2.resize(picture, (width, width * 600 // 512), interpolation=cv2.INTER_AREA)
    detector = Detector.from_path(model, threads=1)
    sink = Collect()
    gate = MotionGate(MotionSettings(regions=regions))
    with Pipeline(Canvas(person, x, y), detector, [sink], drop=False, motion=gate, workers=1) as p:
        p.run()
    return [r.detections for r in sink.results[1:]]


def people(regions: int) -> list:
    return [d.xyxy[d.class_ids == 0] for d in detected(regions)]  # 0: person


def test_a_small_far_person_is_found_with_regions_and_missed_without():
    without, with_regions = people(0), people(1)
    assert all(len(boxes) == 0 for boxes in without)
    assert all(len(boxes) == 1 for boxes in with_regions)
    box = with_regions[0][0]
    assert 1480 <= box[0] < box[2] <= 1620 and 580 <= box[1] < box[3] <= 740  # where the person stands


def test_a_person_near_the_camera_gets_no_extra_boxes_from_regions():
    """Motion over more than a region is left to the whole frame, and boxes inside a larger one are
    its parts: regions add nothing (without these rules: a tie, a remote, half a person)."""
    without, with_regions = detected(0, width=600, x=600, y=200), detected(4, width=600, x=600, y=200)
    for a, b in zip(without, with_regions):
        assert b.class_ids.tolist() == a.class_ids.tolist() == [0]
        np.testing.assert_allclose(b.xyxy, a.xyxy)


def test_a_region_box_inside_a_much_larger_box_is_a_part_of_it():
    full = dets([[300, 100, 900, 700, 0.8, 0]])  # a person near the camera
    regions = np.array([[400, 300, 700, 600]], np.int32)
    parts = [dets([[100, 100, 160, 140, 0.7, 27]])]  # a tie on them, seen by the region
    assert len(merge_regions(full, parts, regions, FRAME)) == 1
    kept = merge_regions(full, parts, regions, FRAME, drop_parts=False)
    assert kept.class_ids.tolist() == [0, 27] and kept.xyxy[1].tolist() == [500, 400, 560, 440]
