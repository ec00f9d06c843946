"""ByteTracker: ids a user sees stay on their objects through motion, misses, crossings and dips."""

from __future__ import annotations

import numpy as np
import pytest

from edgedet.detections import Detections
from edgedet.errors import ConfigError
from edgedet.tracking import ByteTracker, TrackerSettings, part_boxes
from edgedet.tracking.matching import greedy_match, hungarian_match

PERSON, CAR = 0, 2


def box(x: float, y: float, w: float = 40, h: float = 100) -> list[float]:
    return [x, y, x + w, y + h]


def dets(boxes, scores=None, classes=None) -> Detections:
    n = len(boxes)
    return Detections(np.array(boxes, np.float32).reshape(-1, 4),
                      np.full(n, 0.8, np.float32) if scores is None else np.array(scores, np.float32),
                      np.zeros(n, np.int32) if classes is None else np.array(classes, np.int32))


def ids_of(tracked: Detections) -> list[int]:
    return tracked.track_ids.tolist()


def test_a_box_moving_across_frames_keeps_its_id():
    tracker = ByteTracker()
    seen = []
    for i in range(60):
        out = tracker.update(dets([box(10 + 8 * i, 50 + 2 * i)]), i / 10)
        seen.append(int(out.track_ids[0]))
    assert seen[:2] == [-1, -1]  # tentative until min_hits detections
    assert set(seen[2:]) == {1}
    assert len(tracker) == 1


@pytest.mark.parametrize("fps", [5, 10, 30])
def test_an_object_is_confirmed_after_the_same_time_at_any_frame_rate(fps):
    tracker = ByteTracker(TrackerSettings(confirm_s=0.5, min_hits=2))
    confirmed_at = None
    for i in range(3 * fps):
        out = tracker.update(dets([box(10 + 30 * i / fps, 50)]), i / fps)
        if confirmed_at is None and out.track_ids[0] >= 0:
            confirmed_at = (i + 1) / fps  # time the detections so far stand for
    assert confirmed_at == pytest.approx(max(np.ceil(0.5 * fps - 1e-9), 2) / fps)  # whole frames


@pytest.mark.parametrize("fps, gaps_confirmed", [(10, False), (30, True), (50, True)])
def test_a_candidate_may_miss_a_frame_at_high_frame_rates_only(fps, gaps_confirmed):
    # a detector's flicker: every fourth frame without the box, for one second
    tracker = ByteTracker(TrackerSettings(confirm_s=0.5, confirm_gap_s=0.1, min_hits=3))
    confirmed = False
    for i in range(fps):
        boxes = [] if i % 4 == 3 else [box(10 + 30 * i / fps, 50)]
        out = tracker.update(dets(boxes), i / fps)
        confirmed |= bool((out.track_ids >= 0).any())
    assert confirmed == gaps_confirmed


def test_missed_frames_do_not_end_the_track():
    tracker = ByteTracker()
    ids = []
    for i in range(40):
        d = dets([]) if 15 <= i < 20 else dets([box(10 + 6 * i, 50)])  # five frames (0.5 s) without a box
        out = tracker.update(d, i / 10)
        ids += ids_of(out)
    assert set(ids) - {-1} == {1}
    assert ids[-1] == 1


@pytest.mark.parametrize("hidden_while_overlapping", [False, True])
def test_two_crossing_objects_keep_their_ids(hidden_while_overlapping):
    tracker = ByteTracker()
    history: dict[int, list[float]] = {}
    for i in range(50):
        a, b = box(20 + 10 * i, 100), box(520 - 10 * i, 110)
        overlapping = abs(a[0] - b[0]) < 40
        out = tracker.update(dets([a] if hidden_while_overlapping and overlapping else [a, b]), i / 10)
        for tid, xyxy in zip(out.track_ids.tolist(), out.xyxy):
            if tid >= 0:
                history.setdefault(tid, []).append(float(xyxy[0]))
    assert sorted(history) == [1, 2]
    moves = [np.diff(xs) for xs in history.values()]
    assert sorted((bool(np.all(m > 0)), bool(np.all(m < 0))) for m in moves) == [(False, True), (True, False)]


@pytest.mark.parametrize("merge_iou", [0.3, 0.0])
def test_one_box_around_two_crossing_objects_goes_to_neither(merge_iou):
    tracker = ByteTracker(TrackerSettings(merge_iou=merge_iou))
    history: dict[int, list[float]] = {}
    merged_ids = []
    for i in range(50):
        a, b = box(20 + 10 * i, 100), box(520 - 10 * i, 100)
        if abs(a[0] - b[0]) < 30:  # the detector sees one person-sized box where the two overlap
            centre = (a[0] + b[0]) / 2
            out = tracker.update(dets([box(centre, 100)]), i / 10)
            merged_ids += ids_of(out)
            continue
        out = tracker.update(dets([a, b]), i / 10)
        for tid, xyxy in zip(out.track_ids.tolist(), out.xyxy):
            if tid >= 0:
                history.setdefault(tid, []).append(float(xyxy[0]))
    moves = sorted((bool(np.all(np.diff(xs) > 0)), bool(np.all(np.diff(xs) < 0))) for xs in history.values())
    assert len(merged_ids) >= 2
    if merge_iou > 0:  # neither takes the box around the two: both coast and come out on their own side
        assert merged_ids[0] == -1
        assert sorted(history) == [1, 2]
        assert moves == [(False, True), (True, False)]
    else:  # one track takes the box around the two at once
        assert merged_ids[0] >= 0


def test_low_score_detections_keep_a_partly_hidden_object_tracked():
    settings = TrackerSettings(max_unseen_s=1.0)
    tracker = ByteTracker(settings)
    out_ids = []
    for i in range(60):
        score = 0.8 if i < 10 else 0.47  # partly hidden for 5 s: score below high_score, above low_score
        out = tracker.update(dets([box(10 + 4 * i, 50)], [score]), i / 10)
        out_ids.append(ids_of(out))
    assert out_ids[-1] == [1]  # still the same object, shown with its id although below high_score
    assert tracker.ended_ids.size == 0


def test_weak_detections_alone_neither_start_nor_show_tracks():
    tracker = ByteTracker()
    for i in range(20):
        out = tracker.update(dets([box(10 + 4 * i, 50)], [0.47]), i / 10)
        assert len(out) == 0
    assert len(tracker) == 0


def test_flicker_never_becomes_an_object():
    tracker = ByteTracker()
    for i in range(30):
        present = i % 3 == 0  # one frame in three: never min_hits in a row
        out = tracker.update(dets([box(100, 100)] if present else []), i / 10)
        assert all(t == -1 for t in ids_of(out))
    assert len(tracker) == 0


@pytest.mark.parametrize("fps", [5, 10, 30])
def test_a_track_ends_after_the_configured_time_unseen_at_any_frame_rate(fps):
    tracker = ByteTracker(TrackerSettings(max_unseen_s=1.0))
    last_seen = None
    ended_at = None
    for i in range(10 * fps):
        t = i / fps
        visible = t < 2.0
        tracker.update(dets([box(100, 100)] if visible else []), t)
        if visible:
            last_seen = t
        if tracker.ended_ids.size:
            assert tracker.ended_ids.tolist() == [1]
            ended_at = t
            break
    assert ended_at is not None
    assert 1.0 < ended_at - last_seen <= 1.0 + 1.0 / fps + 1e-9
    assert len(tracker) == 0


def test_an_object_back_after_an_occlusion_keeps_its_id():
    tracker = ByteTracker()
    ids = []
    for i in range(60):
        hidden = 20 <= i < 32  # 1.2 s behind something, walking on at the same speed
        out = tracker.update(dets([] if hidden else [box(10 + 5 * i, 80)]), i / 10)
        ids += [t for t in ids_of(out) if t >= 0]
    assert set(ids) == {1}
    assert ids[-1] == 1


def test_a_new_object_far_from_a_lost_one_gets_a_new_id():
    tracker = ByteTracker()
    for i in range(10):
        tracker.update(dets([box(10, 80)]), i / 10)
    ids = []
    for i in range(10, 20):
        ids += ids_of(tracker.update(dets([box(600, 300)]), i / 10))
    assert ids[-1] == 2


def test_a_person_never_continues_as_a_car():
    tracker = ByteTracker()
    for i in range(10):
        tracker.update(dets([box(100, 100)], classes=[PERSON]), i / 10)
    ids = []
    for i in range(10, 20):
        out = tracker.update(dets([box(100, 100)], classes=[CAR]), i / 10)
        ids += ids_of(out)
    assert 1 not in ids
    assert ids[-1] == 2
    assert tracker.boxes().class_ids.tolist() == [PERSON, CAR]


def test_output_keeps_input_order_and_confident_untracked_boxes():
    tracker = ByteTracker()
    for i in range(5):
        tracker.update(dets([box(10, 10)]), i / 10)
    out = tracker.update(dets([box(300, 300), box(10, 10), box(600, 10)], [0.9, 0.8, 0.3]), 0.5)
    assert out.xyxy[:, 0].tolist() == [300, 10]  # the 0.3 box (no track) is dropped
    assert ids_of(out) == [-1, 1]


def test_first_seen_is_when_the_object_was_first_detected():
    tracker = ByteTracker()
    for i in range(5):
        out = tracker.update(dets([box(10, 10)]), 3.0 + i / 10)
    assert tracker.first_seen(out.track_ids).tolist() == [3.0]
    assert np.isnan(tracker.first_seen(np.array([99]))).all()


def test_tracked_detections_slice_scale_and_clip_with_their_ids():
    d = Detections(np.array([box(0, 0), box(50, 50), box(100, 100)], np.float32), [0.9, 0.8, 0.7], [0, 0, 2],
                   track_ids=[4, -1, 7])
    assert d[d.scores > 0.75].track_ids.tolist() == [4, -1]
    assert d[2].track_ids.tolist() == [7]
    assert d[np.array([2, 0])].track_ids.tolist() == [7, 4]
    assert d.scaled(2, 2).track_ids.tolist() == [4, -1, 7]
    assert d.clipped(60, 60).track_ids.tolist() == [4, -1, 7]
    untracked = Detections(d.xyxy, d.scores, d.class_ids)
    assert untracked.track_ids is None and untracked[:1].track_ids is None
    with pytest.raises(ValueError):
        Detections(d.xyxy, d.scores, d.class_ids, track_ids=[1, 2])


def test_reset_forgets_tracks_and_restarts_ids():
    tracker = ByteTracker()
    for i in range(5):
        tracker.update(dets([box(10, 10)]), i / 10)
    tracker.reset()
    assert len(tracker) == 0
    for i in range(5):
        out = tracker.update(dets([box(10, 10)]), i / 10)
    assert ids_of(out) == [1]


def dressed(people, size=(240, 640)) -> np.ndarray:
    """A grey street with each person drawn as a box of (top colour, bottom colour), BGR."""
    image = np.full((*size, 3), 128, np.uint8)
    for (x1, y1, x2, y2), top, bottom in people:
        mid = (y1 + y2) // 2
        image[int(y1):int(mid), int(x1):int(x2)] = top
        image[int(mid):int(y2), int(x1):int(x2)] = bottom
    return image


RED, BLUE, GREEN, YELLOW = (0, 0, 200), (200, 0, 0), (0, 160, 0), (0, 220, 220)
GREY, WHITE = (60, 60, 60), (230, 230, 230)


def lost_then_someone_at_its_place(with_frames: bool, newcomer=(GREEN, YELLOW)) -> list[tuple[int, list[int]]]:
    """A person in red and blue walks right, is hidden for 0.3 s; from then on someone walks on from where
    they were heading. (frame, ids) of the newcomer's detections."""
    tracker = ByteTracker()
    seen = []
    for i in range(40):
        x = 10 + 8 * i
        if i < 20:
            people = [(box(x, 60), RED, BLUE)]
        elif i < 23:
            people = []
        else:
            people = [(box(x, 60), *newcomer)]
        out = tracker.update(dets([p[0] for p in people]), i / 10, frame=dressed(people) if with_frames else None)
        if i >= 23:
            seen.append((i, ids_of(out)))
    return seen


def test_a_lost_object_does_not_continue_on_someone_dressed_differently():
    seen = lost_then_someone_at_its_place(with_frames=True)
    ids = {i for _, row in seen for i in row}
    assert 1 not in ids and seen[-1][1] == [2]  # the newcomer is a new object
    blind = lost_then_someone_at_its_place(with_frames=False)  # boxes alone cannot tell them apart
    assert blind[0][1] == [1]


def test_a_lost_object_back_in_the_same_clothes_keeps_its_id():
    seen = lost_then_someone_at_its_place(with_frames=True, newcomer=(RED, BLUE))
    assert {i for _, row in seen for i in row} == {1}


def back_where_it_stopped(with_frames: bool, comes_back=(RED, BLUE), dressed_as=(RED, BLUE), **settings) -> list[int]:
    """A person in red and blue walks right, stops behind something for a second and comes out where they
    stopped, far behind where the tracker predicts them (no overlap); their ids from then on."""
    tracker = ByteTracker(TrackerSettings(**settings))
    seen = []
    for i in range(40):
        x = 10 + 8 * min(i, 20)
        people = [] if 20 <= i < 30 else [(box(x, 60), *(comes_back if i >= 30 else dressed_as))]
        out = tracker.update(dets([p[0] for p in people]), i / 10, frame=dressed(people) if with_frames else None)
        if i >= 30:
            seen += ids_of(out)
    return seen


def test_a_lost_object_out_of_its_predicted_place_is_found_again_by_its_colours():
    assert back_where_it_stopped(with_frames=True) == [1] * 10  # at once
    # without re-identification (or frames) a candidate first, continuing the id once confirmed
    assert back_where_it_stopped(with_frames=True, reid_gate=0) == [-1, -1] + [1] * 8
    assert back_where_it_stopped(with_frames=False) == [-1, -1] + [1] * 8
    assert back_where_it_stopped(with_frames=True, comes_back=(GREEN, YELLOW)) == [-1, -1] + [2] * 8  # someone else


def test_grey_objects_are_not_recognised_by_their_colours():
    grey = back_where_it_stopped(with_frames=True, comes_back=(GREY, WHITE), dressed_as=(GREY, WHITE))
    assert grey == [-1, -1] + [1] * 8  # as with boxes alone: colours tell nothing


def test_a_seen_object_does_not_jump_to_a_neighbour_dressed_differently():
    # two people side by side; the one in red and blue is missed once, while the detector finds the other one
    # a little to the left, on the first one's place
    def run(**settings):
        tracker = ByteTracker(TrackerSettings(**settings))
        for i in range(12):
            people = [(box(100 + 4 * i, 60), RED, BLUE), (box(140 + 4 * i, 60), GREEN, YELLOW)]
            if i == 11:  # IoU 0.43 with the first one's predicted box, 0.25 with the second's
                people = [(box(116 + 4 * i, 60), GREEN, YELLOW)]
            out = tracker.update(dets([p[0] for p in people]), i / 10, frame=dressed(people))
        return ids_of(out)

    assert run() == [2]  # the person in green and yellow keeps their id
    assert run(active_gate=0) == [1]  # without the colour limit, the first track takes the nearer box


def test_a_lost_object_is_not_handed_to_one_of_two_equally_likely_detections():
    def run(ambiguity: float) -> list[int]:
        tracker = ByteTracker(TrackerSettings(ambiguity=ambiguity))
        for i in range(20):
            tracker.update(dets([box(10 + 8 * i, 80)]), i / 10)
        tracker.update(dets([]), 2.0)  # lost for a frame
        x = 10 + 8 * 21
        return ids_of(tracker.update(dets([box(x, 50), box(x, 110)]), 2.1))  # one above, one below

    assert run(0.8) == [-1, -1]  # neither takes its id on a coin toss
    assert sorted(run(0.0)) == [-1, 1]  # without the test, one of them does


def test_a_box_around_a_group_is_neither_tracked_nor_reported():
    group = [box(100, 50), box(200, 60), box(300, 55)]
    around = [20, 20, 620, 220]  # the detector's box around everybody
    for settings, expected in ((TrackerSettings(), 3), (TrackerSettings(group_size=0), 4)):
        tracker = ByteTracker(settings)
        for i in range(5):
            out = tracker.update(dets(group + [around], [0.8, 0.8, 0.8, 0.7]), i / 10)
        assert len(out) == expected and (out.track_ids >= 0).all()


def test_a_box_around_part_of_a_person_is_no_second_object():
    # the detector's second box around the upper body of a walking person, beside the whole person
    def run(settings):
        tracker = ByteTracker(settings)
        for i in range(20):
            x = 10 + 8 * i
            whole, torso = box(x, 50), [x + 2, 48, x + 38, 100]  # torso box: 45% of the area, 94% inside
            out = tracker.update(dets([torso, whole] if i % 2 else [whole, torso], [0.8, 0.7]), i / 10)
        return out, tracker

    out, tracker = run(TrackerSettings())
    assert ids_of(out) == [1] and out.xyxy[0, 3] == 150  # the whole person, one object
    assert len(tracker) == 1
    out, tracker = run(TrackerSettings(part_share=0))
    assert len(tracker) == 2  # without the rule, the torso becomes an object of its own


def test_people_side_by_side_or_one_behind_the_other_are_not_parts():
    pair = [box(100, 50), box(130, 50)]  # overlapping by a quarter of their width
    behind = [box(300, 50), [325, 40, 355, 115]]  # a smaller, farther person, half hidden
    assert not part_boxes(np.array(pair, float), np.zeros(2, np.int32)).any()
    assert not part_boxes(np.array(behind, float), np.zeros(2, np.int32)).any()
    assert part_boxes(np.array([box(0, 0), [5, 0, 35, 60]], float), np.zeros(2, np.int32)).tolist() == [False, True]
    assert not part_boxes(np.array([box(0, 0), [5, 0, 35, 60]], float), np.array([0, 2], np.int32)).any()


def test_a_person_close_to_the_camera_is_tracked_unless_max_area_says_otherwise():
    close = [[20, 10, 600, 470]]  # 86% of a 640x480 picture, holding nobody else
    frame = np.zeros((480, 640, 3), np.uint8)
    for settings, expected in ((TrackerSettings(), [1]), (TrackerSettings(max_area=0.5), [])):
        tracker = ByteTracker(settings)
        for i in range(5):
            out = tracker.update(dets(close), i / 10, frame=frame)
        assert ids_of(out) == expected


@pytest.mark.parametrize("bad", [
    {"high_score": 1.5}, {"low_score": 0.7}, {"new_track_score": 0.3}, {"min_hits": 0},
    {"max_unseen_s": -1}, {"min_iou": -0.1}, {"resume_gate": -1}, {"appearance_gate": 1.5},
    {"appearance_memory": -0.1}, {"ambiguity": 2}, {"group_size": -1}, {"max_area": 0}, {"part_share": 1.5},
    {"active_gate": 2}, {"reid_gate": -0.1}, {"reid_speed": -1}, {"merge_iou": 1.5},
])
def test_bad_settings_are_config_errors(bad):
    with pytest.raises(ConfigError, match="tracking."):
        TrackerSettings(**bad)


def test_greedy_matching_takes_pairs_best_first():
    rng = np.random.default_rng(1)
    for _ in range(200):
        sim = rng.random((rng.integers(1, 9), rng.integers(1, 9)))
        rows, cols = greedy_match(sim, 0.3)
        expected, used_r, used_c = [], set(), set()
        for flat in np.argsort(-sim, axis=None):  # the plain best-first loop
            r, c = np.unravel_index(flat, sim.shape)
            if sim[r, c] >= 0.3 and r not in used_r and c not in used_c:
                expected.append((int(r), int(c)))
                used_r.add(r)
                used_c.add(c)
        assert sorted(zip(rows.tolist(), cols.tolist())) == sorted(expected)


def test_hungarian_matching_agrees_where_pairs_are_unambiguous():
    pytest.importorskip("scipy")
    sim = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.0, 0.0, 0.1]])
    for match in (greedy_match, hungarian_match):
        rows, cols = match(sim, 0.2)
        assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 0), (1, 1)]


def test_a_shrinking_object_that_goes_unseen_keeps_its_size_while_it_coasts():
    tracker = ByteTracker(TrackerSettings(max_unseen_s=5.0))
    for i in range(20):  # walking away: 4 pixels smaller every frame
        tracker.update(dets([box(100 + 2 * i, 50 + 2 * i, 40 - 1.2 * i, 100 - 4 * i)]), i / 10)
    for i in range(20, 60):  # four seconds unseen
        tracker.update(dets([]), i / 10)
    (x1, y1, x2, y2), = tracker.boxes().xyxy
    assert y2 - y1 > 15  # about its last size (24 pixels), not shrunk to nothing
    out = tracker.update(dets([box(x1 + 2, y1 + 2, 16, 24)]), 6.0)  # seen again where it was heading
    assert out.track_ids.tolist() == [1]
