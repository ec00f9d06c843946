"""ByteTrack-style multi-object tracking: ``tracker.update(detections, t, frame) -> detections with track ids``.

Each frame:

0. boxes that are no object are set aside: a box holding ``group_size`` or more smaller boxes of its
   class (the detector's box around a group, or around the whole picture), a box lying mostly
   (``part_share`` of its area) inside a bigger box of its class (the detector's box around a
   person's upper body beside the one around the whole person) and, when the frame is given, a box
   covering more than ``max_area`` of it;
1. every track's box moves ahead to time ``t`` (constant-velocity Kalman filter, ``kalman.py``); a
   track not seen at the previous update keeps its size (as ByteTrack's filter does), so a box that
   was shrinking does not vanish while it coasts;
2. confident detections (score >= ``high_score``) are assigned to the confirmed tracks by IoU with
   their predicted boxes (at least ``min_iou``), then, when frames are given, to the lost tracks
   still unmatched by their colours (re-identification, ``reid_gate``) if within reach of where
   each was last detected (``reid_speed``), then to the tentative tracks (``min_iou_tentative``).
   A track takes no detection that looks unlike the object it followed (``active_gate``,
   ``appearance_gate`` for a lost track, i.e. one not seen at the previous update), and a lost
   track only a clear pairing: no other detection nearly as good for it and no other track nearly
   as good for that detection (``ambiguity``); otherwise it stays lost a little longer rather than
   continue on someone else. A lost track's predicted box drifts when its speed was off (from
   boxes spanning two people before it was lost): its colours find it again. When two tracks seen
   at the previous update overlap (``merge_iou``), a detection both could take is the detector's
   one box around the two: neither takes it and it starts no track; both coast on their prediction
   and, lost, take a detection again only by a clear pairing;
3. weaker detections (``low_score`` <= score < ``high_score``) are assigned to the confirmed tracks
   seen at the previous update and still unmatched (``min_iou_low``): a partly hidden person whose
   score dips keeps their track;
4. a tentative track is confirmed after ``min_hits`` detections covering ``confirm_s`` seconds (the
   same time at any frame rate) and dropped once unseen for ``confirm_gap_s`` (at the first miss
   when frames are further apart), so detector flicker never becomes an object. When it is
   confirmed next to a confirmed track of its class that lost its detections (its predicted centre
   within ``resume_gate``, a squared Mahalanobis distance under the lost track's grown uncertainty)
   and looks like it (``appearance_gate``), it continues that track's id: an object that came back
   after an occlusion keeps its id instead of becoming a new one;
5. a confident detection left over (score >= ``new_track_score``) starts a tentative track;
6. a confirmed track unseen for more than ``max_unseen_s`` seconds ends (``ended_ids``).

Appearance (``appearance.py``): given the frame, each detection's colours (hue-saturation histograms
of its upper and lower half) are read from it, and each track keeps a running average of the colours
of its detections. Without frames the tracker works from boxes alone.

Association is per class: a person never continues as a car. Times are seconds (frame timestamps),
so the same settings hold at any frame rate and across skipped frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..detections import Detections
from ..errors import ConfigError
from ..postprocess.nms import box_areas, iou_matrix
from .appearance import APPEARANCE_SIZE, colour_histograms, colourless, hellinger
from .kalman import BoxFilter, MotionNoise
from .matching import MatchFn, greedy_match, veto_ambiguous

__all__ = ["ByteTracker", "TrackerSettings", "group_boxes", "part_boxes"]

_NO_PAIRS = (np.zeros(0, np.intp), np.zeros(0, np.intp))


@dataclass(frozen=True)
class TrackerSettings:
    """How tracks are made, kept and ended (scores and IoU in 0..1, times in seconds).

    Defaults: ``high_score`` is the detector's own default threshold (what a user sees untracked);
    ``new_track_score`` = high + 0.1 and the three IoU thresholds (0.2 / 0.3 / 0.5) are ByteTrack's;
    ``low_score`` 0.45 keeps the weak band small for the quantized SSD (whose detections per frame
    double for each 0.1 below 0.5, mostly clutter): it adds about a quarter to the confident boxes;
    ``min_hits`` 3 is SORT's; ``confirm_s`` 0 leaves confirmation to ``min_hits`` alone (the
    configuration's default is 0.5: Frigate's ``min_initialized``, half the detection frame rate in
    frames); ``confirm_gap_s`` 0 drops a candidate at its first miss (the configuration's 0.1 lets a
    candidate miss a frame or two at 30 fps and more, as a detector does, and changes nothing at 10
    fps or less); ``max_unseen_s`` 5 is Frigate's time before an object is gone;
    ``resume_gate`` 9.21 is the 99% point of the chi-square distribution with two degrees of freedom
    (the box centre); 0 turns resuming off.

    ``appearance_gate`` (Hellinger distance of colours, 0..1; 0 turns appearance off): 0.55 is the
    5th percentile of the distances between two different people in the same frame of the PETS09
    street scene, where the same person one frame apart stays below 0.51 in 99 cases out of 100;
    ``active_gate`` 0.6 is the 99th percentile of the distance of a track's colours to its own
    person's next detection there (it rejects 58% of the detections of people nearby; 0: no limit);
    ``reid_gate`` 0.4 is the 5th percentile of the distance to the detections of people nearby (0
    turns re-identification off), ``reid_speed`` 1 height per second a walker's pace (1.4 m/s for
    1.7 m) beyond the track's own speed; ``appearance_memory`` 0.9 is the weight of the old colours
    in a track's running average (JDE / FairMOT's). ``merge_iou`` 0.3: two tracks seen at the
    previous update whose boxes overlap by that IoU or more are merged: the detector gives one box
    for both in about half the frames from 0.3 on (48-68%, against 10% or less below 0.2, on
    PETS09), so a detection both could take tells them apart no better than a coin toss (0 turns it
    off). ``ambiguity`` 0.8 is Lowe's ratio test: a lost track's best pairing must beat the next
    best by more than 1 / 0.8 in IoU or colour likeness (0 turns the test off). ``group_size`` 2:
    a box holding two smaller boxes of its class (each at least 90% inside it and at most half its
    area) is a group or whole-picture box (0 keeps them).
    ``part_share`` 0.7: a box with 70% of its area inside a bigger box of its class (at most four
    times its area) is part of that object, e.g. its upper body: non-maximum suppression by IoU
    keeps such a pair (a box inside one twice its size has IoU 0.5), and as a box of its own it
    starts a second track on the object or pulls the object's track off it (0 keeps them; on PETS09,
    0.6 to 0.75 behave alike, 0.9 changes nothing). ``max_area`` (a fraction of the frame, 1 keeps
    all) is off by default: a person close to the camera covers over half the picture in one COCO
    photo of five.
    """

    high_score: float = 0.5
    low_score: float = 0.45
    new_track_score: float = 0.6
    min_hits: int = 3
    confirm_s: float = 0.0
    confirm_gap_s: float = 0.0
    max_unseen_s: float = 5.0
    min_iou: float = 0.2
    min_iou_tentative: float = 0.3
    min_iou_low: float = 0.5
    resume_gate: float = 9.21
    appearance_gate: float = 0.55
    active_gate: float = 0.6
    appearance_memory: float = 0.9
    reid_gate: float = 0.4
    reid_speed: float = 1.0
    merge_iou: float = 0.3
    ambiguity: float = 0.8
    group_size: int = 2
    part_share: float = 0.7
    max_area: float = 1.0
    per_class: bool = True
    noise: MotionNoise = MotionNoise()

    def __post_init__(self) -> None:
        for name in ("high_score", "low_score", "new_track_score", "min_iou", "min_iou_tentative", "min_iou_low",
                     "appearance_gate", "active_gate", "appearance_memory", "reid_gate", "merge_iou", "ambiguity",
                     "part_share", "max_area"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"tracking.{name}: must be within 0..1, got {value}")
        if self.low_score > self.high_score:
            raise ConfigError(f"tracking.low_score: {self.low_score} is above high_score {self.high_score}")
        if self.new_track_score < self.high_score:
            raise ConfigError(
                f"tracking.new_track_score: {self.new_track_score} is below high_score {self.high_score}")
        if self.min_hits < 1:
            raise ConfigError(f"tracking.min_hits: must be at least 1, got {self.min_hits}")
        if not self.confirm_s >= 0.0:
            raise ConfigError(f"tracking.confirm_s: must be >= 0, got {self.confirm_s}")
        if not self.confirm_gap_s >= 0.0:
            raise ConfigError(f"tracking.confirm_gap_s: must be >= 0, got {self.confirm_gap_s}")
        if not self.max_unseen_s >= 0.0:
            raise ConfigError(f"tracking.max_unseen_s: must be >= 0, got {self.max_unseen_s}")
        if not self.reid_speed >= 0.0:
            raise ConfigError(f"tracking.reid_speed: must be >= 0, got {self.reid_speed}")
        if not self.resume_gate >= 0.0:
            raise ConfigError(f"tracking.resume_gate: must be >= 0, got {self.resume_gate}")
        if not self.max_area > 0.0:
            raise ConfigError(f"tracking.max_area: must be above 0 (a fraction of the frame), got {self.max_area}")
        if self.group_size < 0:
            raise ConfigError(f"tracking.group_size: must be >= 0, got {self.group_size}")


def _overlaps(xyxy: np.ndarray, class_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Box areas and the intersections ``[i, j]`` of boxes of one class (0 across classes)."""
    box = np.asarray(xyxy, np.float64)
    area = box_areas(box)
    inter = np.minimum(box[:, None, 2:], box[None, :, 2:]) - np.maximum(box[:, None, :2], box[None, :, :2])
    inter = np.clip(inter, 0.0, None).prod(axis=2)
    inter[class_ids[:, None] != class_ids[None, :]] = 0.0
    return area, inter


def _holds(area: np.ndarray, inter: np.ndarray, group_size: int) -> np.ndarray:
    holds = (inter >= 0.9 * area[None, :]) & (area[None, :] <= 0.5 * area[:, None]) & (area[None, :] > 0)
    return holds.sum(axis=1) >= group_size  # [outer, inner]


def _part_of(area: np.ndarray, inter: np.ndarray, share: float) -> np.ndarray:
    return (inter >= share * area[:, None]) & (area[:, None] < area[None, :]) & (4.0 * area[:, None] >= area[None, :])


def group_boxes(xyxy: np.ndarray, class_ids: np.ndarray, group_size: int = 2) -> np.ndarray:
    """Mask of the boxes that hold ``group_size`` or more smaller boxes of their class.

    A box holds another when at least 90% of the other lies inside it and the other is at most half
    its area: the detector's box around a group of people, or around the whole picture, which is
    no object itself. Duplicate boxes of one object (about the same size) never hold each other.
    """
    return _holds(*_overlaps(xyxy, np.asarray(class_ids)), group_size)


def part_boxes(xyxy: np.ndarray, class_ids: np.ndarray, share: float = 0.7) -> np.ndarray:
    """Mask of the boxes with at least ``share`` of their area inside a bigger box of their class.

    The bigger box is at most four times the area of the part (a group or whole-picture box around
    it is ``group_boxes``' business): the detector's box around a person's upper body next to its
    box around the whole person, which non-maximum suppression by IoU keeps (IoU = the area ratio).
    A person hidden that much behind a nearer one goes too, until they come out.
    """
    return _part_of(*_overlaps(xyxy, np.asarray(class_ids)), share).any(axis=1)


class _Tracks:
    """Every live track as parallel arrays (one row per track), beside its Kalman state."""

    def __init__(self, noise: MotionNoise) -> None:
        self.filter = BoxFilter(noise)
        self.ids = np.zeros(0, np.int64)  # -1 while tentative
        self.class_ids = np.zeros(0, np.int32)
        self.hits = np.zeros(0, np.int32)
        self.first_seen = np.zeros(0, np.float64)
        self.last_seen = np.zeros(0, np.float64)
        self.looks = np.zeros((0, APPEARANCE_SIZE), np.float32)  # running average of colours (NaN: none)
        self.seen_at = np.zeros((0, 2), np.float64)  # centre of the last detection

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, xyxy: np.ndarray, class_ids: np.ndarray, t: float, looks: np.ndarray | None) -> None:
        n = len(class_ids)
        self.filter.add(xyxy)
        self.ids = np.concatenate([self.ids, np.full(n, -1, np.int64)])
        self.class_ids = np.concatenate([self.class_ids, class_ids])
        self.hits = np.concatenate([self.hits, np.ones(n, np.int32)])
        self.first_seen = np.concatenate([self.first_seen, np.full(n, t)])
        self.last_seen = np.concatenate([self.last_seen, np.full(n, t)])
        looks = np.full((n, APPEARANCE_SIZE), np.nan, np.float32) if looks is None else looks
        self.looks = np.concatenate([self.looks, looks])
        self.seen_at = np.concatenate([self.seen_at, 0.5 * (xyxy[:, :2] + xyxy[:, 2:])])

    def keep(self, mask: np.ndarray) -> None:
        self.filter.keep(mask)
        self.ids, self.class_ids, self.hits = self.ids[mask], self.class_ids[mask], self.hits[mask]
        self.first_seen, self.last_seen = self.first_seen[mask], self.last_seen[mask]
        self.looks = self.looks[mask]
        self.seen_at = self.seen_at[mask]

    def remember(self, rows: np.ndarray, looks: np.ndarray, memory: float) -> None:
        """Fold the colours of this frame's detections into the running average of tracks ``rows``."""
        old = self.looks[rows]
        self.looks[rows] = np.where(np.isnan(old), looks, memory * old + (1.0 - memory) * looks)


class ByteTracker:
    """Give detections stable ids across frames; see the module docstring for the steps.

    ``match`` assigns detections to tracks from a similarity matrix (``matching.greedy_match`` by
    default; ``matching.hungarian_match`` for scipy's optimal assignment).
    """

    def __init__(self, settings: TrackerSettings = TrackerSettings(), *, match: MatchFn = greedy_match) -> None:
        self.settings = settings
        self._match = match
        self.reset()

    def reset(self) -> None:
        """Forget every track (ids start again at 1)."""
        self._tracks = _Tracks(self.settings.noise)
        self._t: float | None = None
        self._t_prev = 0.0
        self._next_id = 1
        self.ended_ids = np.zeros(0, np.int64)

    def __len__(self) -> int:
        """Confirmed tracks alive (seen within ``max_unseen_s``)."""
        return int(np.count_nonzero(self._tracks.ids >= 0))

    def update(self, detections: Detections, t: float, frame: np.ndarray | None = None) -> Detections:
        """Track the detections of ``frame`` (BGR pixels, optional), taken at ``t`` seconds.

        Returns the detections a user sees: every detection at or above ``high_score`` (but group
        and oversized boxes), and the weaker ones that continue a confirmed track, in input order,
        with ``track_ids`` (-1 where not on a confirmed track). ``ended_ids`` then holds the ids of
        the tracks that ended. Call it with empty detections when a frame is skipped, so tracks
        still end on time. With the frame, appearance takes part in finding lost objects again.
        """
        s = self.settings
        detections = self._screen(detections, frame)
        looks = colour_histograms(frame, detections.xyxy) if frame is not None and s.appearance_gate > 0 else None
        tracks = self._tracks
        t = float(t)
        self._t_prev = t if self._t is None else self._t
        if self._t is not None:  # an unseen track keeps its size: a shrinking box would vanish while it coasts
            tracks.filter.hold_size(tracks.last_seen < self._t)
        tracks.filter.predict(0.0 if self._t is None else t - self._t)
        self._t = t if self._t is None else max(t, self._t)
        rows, cols = self._associate(detections, looks)
        tracks.filter.correct(rows, detections.xyxy[cols])
        tracks.seen_at[rows] = 0.5 * (detections.xyxy[cols, :2] + detections.xyxy[cols, 2:])
        if looks is not None:
            tracks.remember(rows, looks[cols], s.appearance_memory)
        tracks.hits[rows] += 1
        tracks.last_seen[rows] = t
        matched = np.zeros(len(tracks), bool)
        matched[rows] = True
        row_ids = self._settle(matched, t)
        out_ids = np.full(len(detections), -1, np.int32)
        out_ids[cols] = row_ids[rows]
        self._birth(detections, cols, out_ids, t, looks)
        keep = (detections.scores >= s.high_score) | (out_ids >= 0)
        tracked = Detections(detections.xyxy, detections.scores, detections.class_ids, out_ids)
        return tracked if keep.all() else tracked[keep]

    def _screen(self, dets: Detections, frame: np.ndarray | None) -> Detections:
        """The detections without group boxes, parts of boxes and (with a frame) boxes over ``max_area`` of it."""
        s = self.settings
        keep = np.ones(len(dets), bool)
        if len(dets) > 1 and (s.group_size > 0 or s.part_share > 0):
            area, inter = _overlaps(dets.xyxy, dets.class_ids)
            if s.group_size > 0 and len(dets) > s.group_size:
                keep &= ~_holds(area, inter, s.group_size)
            if s.part_share > 0:  # parts of the boxes kept so far
                keep &= ~(_part_of(area, inter, s.part_share) & keep[None, :]).any(axis=1)
        if s.max_area < 1.0 and frame is not None:
            keep &= dets.area <= s.max_area * frame.shape[0] * frame.shape[1]
        return dets if keep.all() else dets[keep]

    def _associate(self, dets: Detections, looks: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(track rows, detection indices) of this frame's matches, pass after pass."""
        s = self.settings
        tracks = self._tracks
        if not len(tracks) or not len(dets):
            return _NO_PAIRS
        boxes = tracks.filter.boxes()
        iou = iou_matrix(boxes, dets.xyxy)
        if s.per_class:
            iou[tracks.class_ids[:, None] != dets.class_ids[None, :]] = -1.0
        confirmed = tracks.ids >= 0
        active = confirmed & (tracks.last_seen >= self._t_prev)
        merged = self._merged(active, boxes)  # [track, track]
        lost = confirmed & ~active
        unlike = np.zeros(iou.shape, np.float32)  # colour distances of the confirmed tracks
        if looks is not None:  # a track never continues on someone who looks different
            unlike[confirmed] = hellinger(tracks.looks[confirmed], looks)
            gate = np.where(lost, s.appearance_gate, s.active_gate if s.active_gate > 0 else np.inf)
            iou[unlike > gate[:, None]] = -1.0
        high = dets.scores >= s.high_score
        low = ~high & (dets.scores >= s.low_score)
        reid = looks is not None and s.reid_gate > 0
        passes = ((False, confirmed, high, s.min_iou), (True, lost & reid, high, 1.0 - s.reid_gate),
                  (False, ~confirmed, high, s.min_iou_tentative), (False, active, low, s.min_iou_low))
        free_t, free_d = np.ones(len(tracks), bool), np.ones(len(dets), bool)
        rows_out, cols_out = [], []
        for by_looks, track_ok, det_ok, min_sim in passes:
            r = np.flatnonzero(track_ok & free_t)
            c = np.flatnonzero(det_ok & free_d)
            if not len(r) or not len(c):
                continue
            sim = self._reid_similarity(r, c, dets, unlike, looks) if by_looks else iou[np.ix_(r, c)]
            if track_ok is confirmed and merged.any():  # one box around two overlapping tracks: both coast
                self._hold(sim >= min_sim, merged[np.ix_(r, r)], sim, c, free_d)
            if s.ambiguity > 0 and lost[r].any():
                sim = veto_ambiguous(sim, min_sim, s.ambiguity, lost[r])
            mr, mc = self._match(sim, min_sim)
            r, c = r[mr], c[mc]
            rows_out.append(r)
            cols_out.append(c)
            free_t[r] = False  # a matched track and detection take no part in later passes
            free_d[c] = False
        if not rows_out:
            return _NO_PAIRS
        return np.concatenate(rows_out), np.concatenate(cols_out)

    @staticmethod
    def _hold(claim: np.ndarray, merged: np.ndarray, sim: np.ndarray, cols: np.ndarray, free: np.ndarray) -> None:
        """Withhold (in ``sim`` and ``free``) each detection claimed by two tracks ``merged`` with each other."""
        shared = np.flatnonzero(claim.sum(axis=0) >= 2)
        if not len(shared):
            return
        both = claim[:, shared].astype(np.float32)
        held = (merged.astype(np.float32) @ both) * both > 0  # claimed, and by a merged partner too
        sim[:, shared] = np.where(held, -1.0, sim[:, shared])
        free[cols[shared[held.any(axis=0)]]] = False

    def _merged(self, among: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """``[i, j]``: tracks i != j, both in mask ``among``, of one class, overlapping by ``merge_iou`` or more."""
        s = self.settings
        merged = np.zeros((len(among), len(among)), bool)
        rows = np.flatnonzero(among)
        if s.merge_iou <= 0 or len(rows) < 2:
            return merged
        pair = iou_matrix(boxes[rows], boxes[rows]) >= s.merge_iou
        np.fill_diagonal(pair, False)
        if s.per_class:
            pair &= self._tracks.class_ids[rows][:, None] == self._tracks.class_ids[rows][None, :]
        merged[np.ix_(rows, rows)] = pair
        return merged

    def _reid_similarity(self, rows: np.ndarray, cols: np.ndarray, dets: Detections, unlike: np.ndarray,
                         looks: np.ndarray) -> np.ndarray:
        """1 - colour distance ``unlike`` of lost tracks ``rows`` to detections ``cols``, -1 where the detection
        is out of reach (see ``reid_gate``), of another class, or where either is grey (colours tell nothing)."""
        s = self.settings
        tracks = self._tracks
        st = tracks.filter.state[rows]
        height = np.maximum(st[:, 0, 3], 1.0)
        unseen = self._t - tracks.last_seen[rows]
        reach = 0.5 * height + (np.hypot(st[:, 1, 0], st[:, 1, 1]) + s.reid_speed * height) * unseen
        centres = 0.5 * (dets.xyxy[cols, :2] + dets.xyxy[cols, 2:])
        step = centres[None, :, :] - tracks.seen_at[rows][:, None, :]
        ok = np.hypot(step[..., 0], step[..., 1]) <= reach[:, None]
        ok &= ~colourless(tracks.looks[rows])[:, None] & ~colourless(looks[cols])[None, :]
        if s.per_class:
            ok &= tracks.class_ids[rows][:, None] == dets.class_ids[cols][None, :]
        return np.where(ok, 1.0 - unlike[np.ix_(rows, cols)], -1.0)

    def _settle(self, matched: np.ndarray, t: float) -> np.ndarray:
        """Confirm, resume, drop and end tracks after this frame's matches; the id of each row before."""
        s = self.settings
        tracks = self._tracks
        # detected over confirm_s (the time the first detection stands for included), no gap of confirm_gap_s
        covered = t - tracks.first_seen + (t - self._t_prev)
        promote = (tracks.ids < 0) & (tracks.hits >= s.min_hits) & (covered >= s.confirm_s - 1e-6)
        taken = self._resume(promote, matched, t) if s.resume_gate > 0 and promote.any() else None
        promote &= tracks.ids < 0
        n_new = int(np.count_nonzero(promote))
        if n_new:
            tracks.ids[promote] = np.arange(self._next_id, self._next_id + n_new)
            self._next_id += n_new
        row_ids = tracks.ids.copy()
        expired = (tracks.ids >= 0) & (t - tracks.last_seen > s.max_unseen_s)
        missed = (tracks.ids < 0) & ~matched
        if s.confirm_gap_s > 0:
            missed &= t - tracks.last_seen >= s.confirm_gap_s - 1e-6
        gone = expired | missed
        if taken is not None:
            expired &= ~taken
            gone |= taken
        self.ended_ids = tracks.ids[expired]
        if gone.any():
            tracks.keep(~gone)
        return row_ids

    def _resume(self, promote: np.ndarray, matched: np.ndarray, t: float) -> np.ndarray:
        """Tracks about to be confirmed near a lost track of their class that look like it take its id and first seen.

        Returns the mask of the lost tracks so continued (dropped without an end).
        """
        s = self.settings
        tracks = self._tracks
        taken = np.zeros(len(tracks), bool)
        lost = np.flatnonzero((tracks.ids >= 0) & ~matched & (t - tracks.last_seen <= s.max_unseen_s))
        if not len(lost):
            return taken
        fresh = np.flatnonzero(promote)
        sim = -tracks.filter.distance2(tracks.filter.boxes()[fresh], rows=lost, coords=2)
        if s.per_class:
            sim[tracks.class_ids[lost][:, None] != tracks.class_ids[fresh][None, :]] = -np.inf
        if s.appearance_gate > 0:  # NaN colours (no frames) are at distance 0: no veto
            sim[hellinger(tracks.looks[lost], tracks.looks[fresh]) > s.appearance_gate] = -np.inf
        ml, mf = self._match(sim, -s.resume_gate)
        lost, fresh = lost[ml], fresh[mf]
        tracks.ids[fresh] = tracks.ids[lost]
        tracks.first_seen[fresh] = tracks.first_seen[lost]
        taken[lost] = True
        return taken

    def _birth(self, dets: Detections, used: np.ndarray, out_ids: np.ndarray, t: float,
               looks: np.ndarray | None) -> None:
        """Start tentative tracks at the confident detections no track took."""
        s = self.settings
        free = dets.scores >= s.new_track_score
        free[used] = False
        if not free.any():
            return
        tracks = self._tracks
        first = len(tracks)
        idx = np.flatnonzero(free)
        tracks.add(dets.xyxy[idx], dets.class_ids[idx], t, None if looks is None else looks[idx])
        if s.min_hits <= 1 and s.confirm_s <= 0:
            n = len(idx)
            tracks.ids[first:] = np.arange(self._next_id, self._next_id + n)
            self._next_id += n
            out_ids[idx] = tracks.ids[first:]

    def first_seen(self, track_ids: np.ndarray) -> np.ndarray:
        """When each live track was first detected (seconds; NaN for ids not alive)."""
        tracks = self._tracks
        track_ids = np.asarray(track_ids, np.int64)
        out = np.full(len(track_ids), np.nan)
        live = tracks.ids >= 0
        if not live.any():
            return out
        order = np.argsort(tracks.ids[live])
        ids, times = tracks.ids[live][order], tracks.first_seen[live][order]
        pos = np.minimum(np.searchsorted(ids, track_ids), len(ids) - 1)
        found = ids[pos] == track_ids
        out[found] = times[pos[found]]
        return out

    def boxes(self) -> Detections:
        """The filtered box of every confirmed track alive (seen now or coasting), with its id; score 0."""
        tracks = self._tracks
        live = tracks.ids >= 0
        xyxy = tracks.filter.boxes()[live].astype(np.float32)
        return Detections(xyxy, np.zeros(len(xyxy), np.float32), tracks.class_ids[live], tracks.ids[live])
