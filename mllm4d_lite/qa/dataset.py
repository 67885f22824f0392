"""4D annotations -> question/answer data: SFT, cold-start (ST-CoT), RFT and a VLM4D-format benchmark.

Input: annotation dicts (design.md, ``annotations/<clip_id>.json``)::

    {"clip_id", "num_frames", "fps", "clip_dir", "source",
     "camera_to_world": N x 4x4, "camera_centers": N x [x,y,z],
     "objects": [{"id", "label", "centers": N x ([x,y,z] | null), "yaw_rad": N x (float | null)}],
     "quality": {...}}

Output (``build_datasets``): ``sft.jsonl``, ``cot.jsonl``, ``rft.jsonl``, ``bench.json`` and
``qa_summary.json``; training files come from train clips only, the benchmark from bench clips
only (split by clip, seeded). The three training files hold the same questions (SFT: direct
prompt, letter / number response; CoT: ST-CoT system prompt and target; RFT: ST-CoT prompt +
``solution``), unless ``rft_fraction`` > 0 sets clips aside for ``rft.jsonl`` alone: then GRPO
prompts come from clips that SFT and the cold start never saw. Records follow design.md plus
``answer_letter`` (MC; null for numeric).

Command line: ``mllm4d qa --annotations runs/curate/annotations --out runs/qa`` (estimated),
``mllm4d qa --use-gt --clips tiny_data --out runs/qa_gt`` (ground truth), and ``--score`` with
both ``--annotations`` and ``--clips`` prints the est-vs-gt agreement line (see :func:`agreement`).

Categories (:data:`CATEGORIES`; VLM4D's translational / rotational / counting / false-positive
kinds, split by camera and object): object_direction, object_direction_phase (first / second half
of the visible span, "... at the end of the video?"), object_approach, camera_direction,
camera_rotation, object_rotation, counting, false_positive, relative_position, speed_comparison,
and numeric object_distance, camera_distance, object_pair_distance.

Conventions (all questions are judged in ONE frame, so camera and object motion never mix)
------------------------------------------------------------------------------------------
World frame = the LEFT camera's frame at the clip's first frame: x right, y DOWN, z forward,
metres. "Directions in the camera's view at the first frame" means directions in this frame.

* Segment: a question about one object looks at the first and last frame where the object is
  visible (its centre is not null); about two objects, the first and last frame where both are;
  about the camera only, or about all objects (counting), the whole clip (counting requires every
  object visible at both ends). The ST-CoT target and the RFT ``solution`` state the camera and
  object centres at exactly these two frames; with several objects, ``object_center`` lists them
  frame-major (every object at the first frame, then every object at the last), the order in
  which the ST-CoT states them. Questions with no object (camera, false positives) have
  ``object_center: []`` and the ST-CoT writes ``Object Center: null``.
* Object centres and yaw are first replaced by a robust quadratic fit in time over the object's
  visible frames (:func:`smooth_track`, ``qa_smooth_degree``): exact for ground truth moving at
  constant velocity or acceleration, and it keeps one noisy estimated frame (e.g. an object half
  out of view at the first frame) from deciding an answer. The ST-CoT states these fitted centres.
* Translation (objects and camera): displacement ``d = c[last] - c[first]``.
  - "not moving" when ``|d| < qa_static_max_m`` (default 0.15 m);
  - a direction is asked only when the horizontal displacement ``hypot(dx, dz) > qa_moving_min_m``
    (default 0.3 m); in between the question is dropped (label not trustworthy);
  - direction = dominant horizontal axis: -x "left", +x "right", -z "towards the camera"
    (camera: "backward"), +z "away from the camera" (camera: "forward"); dropped when the
    direction lies within ``qa_direction_margin_deg`` of a diagonal, or when the vertical part
    ``|dy|`` exceeds ``qa_max_vertical_ratio`` x the horizontal part.
* Approaching / receding: change of the object-to-camera distance ``|o_t - c_t|`` between the two
  ends (this one DOES include the camera's own motion); same thresholds as translation.
* Turning, top-down view: plot x to the right and z up the page (a bird's-eye view, looking down,
  forward up the page). The heading of a horizontal vector v is ``atan2(v_z, v_x)``; increasing
  heading = counter-clockwise seen from above.
  - camera turn = change of the heading of its forward axis ``camera_to_world[:3, 2]``;
    negative (clockwise, toward +x) = "turning right", positive = "turning left"; "not turning"
    when ``|turn| < qa_turn_static_deg`` (3 deg), asked when ``> qa_turn_min_deg`` (10 deg);
    dropped when the camera pitches by more than ``qa_turn_static_deg`` (the options include
    "tilting up/down", which must then be false).
  - object rotation = change of ``yaw_rad`` (unwrapped over the visible frames; the heading vector
    is (cos yaw, sin yaw) in the same plot), positive = "counter-clockwise" seen from above;
    "not rotating" below ``qa_rotation_static_deg`` (5 deg), asked above ``qa_rotation_min_deg``
    (15 deg). Estimated yaw may be relative: only differences are used.
* Relative position of two objects: change of the distance between their centres; same
  thresholds as translation. Speed comparison: average speed = net displacement / duration over
  the common segment; "about the same" when the ratio < ``qa_speed_same_ratio`` (1.15), a winner
  when > ``qa_speed_faster_ratio`` (1.5); an object below ``qa_static_max_m`` is "not moving".
* Numeric answers (metres, one decimal): net distance an object / the camera travelled (asked only
  when it moved more than ``qa_moving_min_m``: relative errors of near-zero values mean nothing),
  and the distance between two objects at the end of their common segment. The value is computed
  from the centres as shown in the ST-CoT (rounded to cm), so the reasoning adds up.
* False positives: a question about an object that is not in the clip (a label from
  ``qa_absent_labels`` that no object carries); the right choice is ``"no <label> there"`` (the
  VLM4D wording), which also appears as a distractor in ordinary object questions.
* Objects whose label occurs twice in a clip are not asked about by name (the question would be
  ambiguous); they still count in counting questions.

Data balance: at most ``qa_max_per_category_per_clip`` questions per category and clip; per split
and MC category the most common answer (typically "not moving") is cut to at most
``qa_max_answer_share`` of the category (seeded), so constant guessing cannot score high; in the
training split, rare categories are repeated in the family's other phrasings up to the median
category count (``qa_balance_train``; the summary reports unique questions and repeats).

Multiple choice: 4 options; the right answer's letter is assigned by a seeded round-robin over
shuffled blocks of A-D within each split (exact balance), the distractors fill the other letters
in random order; ``answer`` is the TEXT of the right choice (VLM4D convention). With
``qa_option_order: fixed`` the four options are listed in one canonical order instead (left,
right, towards, away, not moving, ...): the tiny random model cannot learn to look up a shuffled
letter (see ``scripts/bench_learning.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from mllm4d_lite import prompts
from mllm4d_lite.config import ConfigError, build_config, merge_config_classes, parse_config, save_resolved, split_config
from mllm4d_lite.io import atomic_write_json

log = logging.getLogger(__name__)

CATEGORIES: tuple[str, ...] = (
    "object_direction",      # left / right / towards / away / not moving (world frame)
    "object_direction_phase",  # the same over the first / second half ("at the end of the video")
    "object_approach",       # closer to / farther from the (moving) camera
    "camera_direction",      # forward / backward / left / right / not moving
    "camera_rotation",       # turning left / right / not turning
    "object_rotation",       # clockwise / counter-clockwise / not rotating, seen from above
    "counting",              # how many objects move in a given way
    "false_positive",        # question about an object that is not there
    "relative_position",     # two objects: closer together / farther apart / same
    "speed_comparison",      # which of two objects is faster
    "object_distance",       # numeric: metres an object travelled
    "camera_distance",       # numeric: metres the camera travelled
    "object_pair_distance",  # numeric: metres between two objects at the end
)
NUMERIC_CATEGORIES = ("object_distance", "camera_distance", "object_pair_distance")

DEFAULT_ABSENT_LABELS = [
    f"{colour} {shape}"
    for colour in ("red", "green", "blue", "yellow", "purple", "orange", "cyan")
    for shape in ("cube", "sphere", "cylinder", "cone")
]


class QAError(ValueError):
    """Bad annotation input; the message names the file / clip and the fix."""


@dataclass
class QAConfig:
    """Question generation (thresholds are physical: metres, degrees; see the module docs)."""

    qa_seed: int = field(default=0, metadata={"help": "seed of the clip split, phrasing, distractors and letters"})
    bench_fraction: float = field(default=0.25, metadata={"help": "share of clips (not questions) held out for bench.json"})
    rft_fraction: float = field(default=0.0, metadata={"help": "share of all clips whose questions go to rft.jsonl only, so that GRPO prompts come from clips SFT and the cold start never saw (as the paper's RFT set is its own); 0 = rft.jsonl holds the training clips' questions"})
    qa_static_max_m: float = field(default=0.15, metadata={"help": "displacement / distance change below this = 'not moving' / 'same' (m)"})
    qa_moving_min_m: float = field(default=0.3, metadata={"help": "displacement / distance change above this = moving / changing (m); between the two: dropped"})
    qa_direction_margin_deg: float = field(default=15.0, metadata={"help": "drop direction questions whose motion lies within this angle of a diagonal (deg)"})
    qa_max_vertical_ratio: float = field(default=0.5, metadata={"help": "drop direction questions when |dy| > this x horizontal displacement"})
    qa_turn_static_deg: float = field(default=3.0, metadata={"help": "camera heading change below this = 'not turning' (deg); also max pitch change"})
    qa_turn_min_deg: float = field(default=10.0, metadata={"help": "camera heading change above this = turning (deg)"})
    qa_rotation_static_deg: float = field(default=5.0, metadata={"help": "object yaw change below this = 'not rotating' (deg)"})
    qa_rotation_min_deg: float = field(default=15.0, metadata={"help": "object yaw change above this = rotating (deg)"})
    qa_speed_same_ratio: float = field(default=1.15, metadata={"help": "speed ratio below this = 'about the same speed'"})
    qa_speed_faster_ratio: float = field(default=1.5, metadata={"help": "speed ratio above this = one is faster"})
    qa_min_visible_fraction: float = field(default=0.5, metadata={"help": "ask about an object only if its centre is known in at least this share of frames"})
    qa_smooth_degree: int = field(default=2, metadata={"help": "object centres and yaw are replaced by a robust polynomial fit of this degree in time over the visible frames (0 = raw annotations)"})
    qa_smooth_outlier_m: float = field(default=0.1, metadata={"help": "centres farther than this (m, or 3x the median residual) from the first fit are ignored by the second"})
    qa_smooth_outlier_deg: float = field(default=5.0, metadata={"help": "the same for yaw (deg)"})
    qa_max_per_category_per_clip: int = field(default=4, metadata={"help": "at most this many questions of one category per clip"})
    qa_false_positives_per_clip: int = field(default=2, metadata={"help": "false-positive (absent object) questions per clip"})
    qa_max_answer_share: float = field(default=0.5, metadata={"help": "per split and multiple-choice category, drop seeded questions of the most common answer until it is at most this share (1 = keep all); false positives exempt"})
    qa_numeric: bool = field(default=True, metadata={"help": "include numeric (metres) questions"})
    qa_balance_train: bool = field(default=True, metadata={"help": "repeat under-represented categories in the training split with other phrasings, up to the median category count"})
    qa_option_order: str = field(default="balanced", metadata={"help": "balanced: the right answer's letter cycles through shuffled A-D blocks (VLM4D style); fixed: options listed in one canonical order (left, right, towards, away, not moving, ...), for the tiny random model, which cannot learn a shuffled letter lookup"})
    qa_absent_labels: list[str] = field(default_factory=lambda: list(DEFAULT_ABSENT_LABELS), metadata={"help": "labels for false-positive questions (those present in a clip are skipped)"})

    def validate(self) -> None:
        if not 0.0 <= self.bench_fraction < 1.0:
            raise ConfigError(f"bench_fraction must be in [0, 1), got {self.bench_fraction}")
        if not 0.0 <= self.rft_fraction < 1.0 or self.bench_fraction + self.rft_fraction >= 1.0:
            raise ConfigError(f"rft_fraction must be in [0, 1) with bench_fraction + rft_fraction < 1 (training clips "
                              f"must remain), got rft_fraction {self.rft_fraction}, bench_fraction {self.bench_fraction}")
        pairs = [("qa_static_max_m", "qa_moving_min_m"), ("qa_turn_static_deg", "qa_turn_min_deg"),
                 ("qa_rotation_static_deg", "qa_rotation_min_deg"), ("qa_speed_same_ratio", "qa_speed_faster_ratio")]
        for low, high in pairs:
            if not 0 <= getattr(self, low) <= getattr(self, high):
                raise ConfigError(f"need 0 <= {low} <= {high}, got {getattr(self, low)} and {getattr(self, high)}")
        if not 0 <= self.qa_direction_margin_deg < 45:
            raise ConfigError(f"qa_direction_margin_deg must be in [0, 45), got {self.qa_direction_margin_deg}")
        if not 0.25 <= self.qa_max_answer_share <= 1.0:
            raise ConfigError(f"qa_max_answer_share must be in [0.25, 1], got {self.qa_max_answer_share}")
        if self.qa_option_order not in OPTION_ORDERS:
            raise ConfigError(f"qa_option_order must be one of {list(OPTION_ORDERS)}, got {self.qa_option_order!r}")
        if self.qa_max_per_category_per_clip < 1:
            raise ConfigError(f"qa_max_per_category_per_clip must be >= 1, got {self.qa_max_per_category_per_clip}")


@dataclass
class Question:
    """One generated question before letters are assigned.

    ``answer`` / ``distractors``: option texts (MC) or the number as text (numeric);
    ``canonical``: a wording-free answer key used to compare questions built from two annotation
    sources; ``value``: the numeric answer in metres (numeric questions only).
    ``camera_centers`` / ``object_centers``: the states the ST-CoT states, in metres rounded to cm,
    at ``frames`` (first, last) of the question's segment (see :meth:`solution`).
    """

    clip_id: str
    category: str
    subject: str
    key: str
    question: str
    answer: str
    canonical: str
    distractors: list[str]
    frames: tuple[int, int]
    camera_centers: list[list[float]]              # [first, last] (cm-rounded)
    object_centers: list[tuple[str, list[float], list[float]]]  # (label, first, last) per subject
    reasoning: str
    value: float | None = None
    clip_dir: str = ""

    @property
    def question_type(self) -> str:
        return "numeric" if self.category in NUMERIC_CATEGORIES else "multiple-choice"

    @property
    def match_key(self) -> tuple[str, str, str, str]:
        return (self.clip_id, self.category, self.subject, self.key)

    def solution(self) -> dict[str, Any]:
        """RFT solution: camera centres [first, last]; object centres frame-major (every subject at
        the first frame, then every subject at the last frame; [first, last] for one object)."""
        objs = [o[1] for o in self.object_centers] + [o[2] for o in self.object_centers]
        return {"camera_center": [list(c) for c in self.camera_centers],
                "object_center": [list(c) for c in objs],
                "frames": [int(self.frames[0]), int(self.frames[1])]}


# --------------------------------------------------------------------------- geometry helpers


def _round_cm(v: np.ndarray) -> list[float]:
    return [round(float(x), 2) + 0.0 for x in v]  # + 0.0 turns -0.0 into 0.0


def _heading_deg(vec_xz: tuple[float, float]) -> float:
    """Heading of a horizontal vector in the top-down plot (x right, z up): atan2(z, x) in degrees."""
    return math.degrees(math.atan2(vec_xz[1], vec_xz[0]))


def _wrap_deg(a: float) -> float:
    return (a + 180.0) % 360.0 - 180.0


def classify_translation(d: np.ndarray, cfg: QAConfig) -> str | None:
    """Direction label of a displacement ``d = [dx, dy, dz]`` (m, world frame), or None when it is
    too close to a decision threshold. Labels: static, left, right, towards, away (objects);
    the camera uses the same keys (towards = backward, away = forward)."""
    dx, dy, dz = (float(v) for v in d)
    horizontal = math.hypot(dx, dz)
    if math.sqrt(dx * dx + dy * dy + dz * dz) < cfg.qa_static_max_m:
        return "static"
    if horizontal <= cfg.qa_moving_min_m or abs(dy) > cfg.qa_max_vertical_ratio * horizontal:
        return None
    angle = math.degrees(math.atan2(abs(dz), abs(dx)))  # 0 = purely sideways, 90 = purely depth
    if abs(angle - 45.0) < cfg.qa_direction_margin_deg:
        return None
    if angle < 45.0:
        return "right" if dx > 0 else "left"
    return "away" if dz > 0 else "towards"


def _classify_change(change: float, cfg: QAConfig) -> str | None:
    """'same' / 'increase' / 'decrease' for a signed distance change (m), None near thresholds."""
    if abs(change) < cfg.qa_static_max_m:
        return "same"
    if abs(change) <= cfg.qa_moving_min_m:
        return None
    return "increase" if change > 0 else "decrease"


def _classify_angle(delta_deg: float, static_deg: float, min_deg: float) -> str | None:
    """'none' / 'ccw' (positive) / 'cw' (negative), None near thresholds."""
    if abs(delta_deg) < static_deg:
        return "none"
    if abs(delta_deg) <= min_deg:
        return None
    return "ccw" if delta_deg > 0 else "cw"


def smooth_track(values: np.ndarray, degree: int, outlier: float) -> np.ndarray:
    """Robust polynomial fit in time of a per-frame track.

    values: (N, D) with NaN rows where unknown. Fits a degree-``degree`` polynomial per column by
    least squares over the known rows, drops rows whose residual norm exceeds
    ``max(outlier, 3 x median residual)`` and refits once; returns the fitted values at the known
    rows (NaN rows stay NaN). ``degree < 1``, or too few known rows, returns ``values`` unchanged.
    Exact for ground truth moving at constant velocity or acceleration; on estimates it removes
    per-frame noise, e.g. the centroid shift of an object half out of view at the first frame.
    """
    known = ~np.isnan(values).any(axis=1)
    t = np.flatnonzero(known).astype(np.float64)
    if degree < 1 or t.size < degree + 3:
        return values
    x = (t - t.mean()) / max(float(t.std()), 1.0)  # centred and scaled: well-conditioned Vandermonde
    vander = np.vander(x, degree + 1)
    y = values[known]
    coef, *_ = np.linalg.lstsq(vander, y, rcond=None)
    residual = np.linalg.norm(y - vander @ coef, axis=1)
    keep = residual <= max(outlier, 3.0 * float(np.median(residual)))
    if not keep.all() and keep.sum() >= degree + 3:
        coef, *_ = np.linalg.lstsq(vander[keep], y[keep], rcond=None)
    out = values.copy()
    out[known] = vander @ coef
    return out


class _ClipView:
    """Numpy view of one annotation: camera (N,3), rotations (N,3,3), object centres (N,3) with NaN."""

    def __init__(self, ann: dict[str, Any], cfg: QAConfig):
        self.ann = ann
        self.clip_id = str(ann["clip_id"])
        self.n = int(ann["num_frames"])
        self.fps = float(ann["fps"])
        self.cam = np.asarray(ann["camera_centers"], dtype=np.float64).reshape(self.n, 3)
        self.c2w = np.asarray(ann["camera_to_world"], dtype=np.float64).reshape(self.n, 4, 4)
        self.objects: list[dict[str, Any]] = []
        labels = Counter(str(o["label"]) for o in ann["objects"])
        for o in ann["objects"]:
            centers = np.full((self.n, 3), np.nan)
            for t, c in enumerate(o["centers"]):
                if c is not None:
                    centers[t] = c
            yaw = np.full(self.n, np.nan)
            for t, y in enumerate(o.get("yaw_rad") or [None] * self.n):
                if y is not None:
                    yaw[t] = y
            visible = ~np.isnan(centers).any(axis=1)
            idx = np.flatnonzero(visible)
            centers = smooth_track(centers, cfg.qa_smooth_degree, cfg.qa_smooth_outlier_m)
            known_yaw = ~np.isnan(yaw)
            if known_yaw.sum() >= 2:
                yaw[known_yaw] = np.unwrap(yaw[known_yaw])
                yaw = smooth_track(yaw[:, None], cfg.qa_smooth_degree, math.radians(cfg.qa_smooth_outlier_deg))[:, 0]
            self.objects.append({
                "id": o.get("id"), "label": str(o["label"]), "centers": centers, "yaw": yaw,
                "visible": visible, "unique": labels[str(o["label"])] == 1,
                "span": (int(idx[0]), int(idx[-1])) if idx.size else None,
            })

    def object_ok(self, obj: dict[str, Any], cfg: QAConfig) -> bool:
        """Visible often enough to be asked about, with distinct first and last frames."""
        span = obj["span"]
        return (span is not None and span[1] > span[0]
                and obj["visible"].sum() >= cfg.qa_min_visible_fraction * self.n)

    def common_span(self, objs: Sequence[dict[str, Any]], cfg: QAConfig) -> tuple[int, int] | None:
        """First and last frame where all ``objs`` are visible (co-visible in enough frames), else None."""
        both = np.logical_and.reduce([o["visible"] for o in objs])
        idx = np.flatnonzero(both)
        if idx.size < 2 or idx.size < cfg.qa_min_visible_fraction * self.n:
            return None
        return int(idx[0]), int(idx[-1])

    def cam_state(self, f0: int, f1: int) -> list[list[float]]:
        return [_round_cm(self.cam[f0]), _round_cm(self.cam[f1])]

    def camera_heading_pitch_deg(self, t: int) -> tuple[float, float]:
        fwd = self.c2w[t, :3, 2]
        pitch = math.degrees(math.asin(float(np.clip(-fwd[1] / max(np.linalg.norm(fwd), 1e-9), -1, 1))))
        return _heading_deg((fwd[0], fwd[2])), pitch


# --------------------------------------------------------------------------- phrasings and options

TEMPLATES: dict[str, list[str]] = {
    "object_direction": [
        "What direction is the {a} moving towards?",
        "Seen from where the camera starts, which way is the {a} moving?",
        "In which direction does the {a} move, relative to the camera's first view?",
    ],
    "object_direction_start": [
        "What direction is the {a} moving towards at the beginning of the video?",
        "At the beginning of the video, which way is the {a} moving, seen from where the camera starts?",
        "In the first half of the video, in which direction does the {a} move?",
    ],
    "object_direction_end": [
        "What direction is the {a} moving towards at the end of the video?",
        "At the end of the video, which way is the {a} moving, seen from where the camera starts?",
        "In the second half of the video, in which direction does the {a} move?",
    ],
    "object_approach": [
        "Is the {a} getting closer to the camera or farther from it?",
        "How does the distance between the camera and the {a} change over the video?",
        "Over the video, does the {a} approach the camera or recede from it?",
    ],
    "camera_direction": [
        "Which direction is the camera moving?",
        "In which direction does the camera travel, relative to where it first points?",
        "How is the camera moving through the scene?",
    ],
    "camera_rotation": [
        "Which way is the camera turning?",
        "How does the camera's viewing direction change over the video?",
        "Does the camera rotate during the video, and if so, which way?",
    ],
    "object_rotation": [
        "Seen from above, which way is the {a} rotating?",
        "Viewed from above, how is the {a} turning?",
        "How does the {a} rotate about its vertical axis, seen from above?",
    ],
    "counting": [
        "How many objects are {p}?",
        "Count the objects that are {p}. How many are there?",
        "How many of the objects in the video are {p}?",
    ],
    "relative_position": [
        "How does the distance between the {a} and the {b} change over the video?",
        "Do the {a} and the {b} get closer together or farther apart?",
        "Over the video, are the {a} and the {b} moving towards each other or apart?",
    ],
    "speed_comparison": [
        "Which moves faster, the {a} or the {b}?",
        "Between the {a} and the {b}, which one is moving faster?",
        "Compare the speeds of the {a} and the {b}. Which is faster?",
    ],
    "object_distance": [
        "How far does the {a} move between the first and the last frame it is seen in, in metres?",
        "What distance does the {a} travel from where it is first seen to where it is last seen, in metres?",
        "By how many metres is the {a} displaced between its first and last appearance in the video?",
    ],
    "camera_distance": [
        "How far does the camera move between the first and the last frame, in metres?",
        "What distance does the camera travel from start to end of the video, in metres?",
        "By how many metres is the camera displaced over the video?",
    ],
    "object_pair_distance": [
        "How far apart are the {a} and the {b} at the end of the video, in metres?",
        "At the last frame, what is the distance between the {a} and the {b} in metres?",
        "What is the distance in metres between the {a} and the {b} at the end?",
    ],
}

OBJECT_DIRECTION_TEXT = {"left": "left", "right": "right", "towards": "towards the camera",
                         "away": "away from the camera", "static": "not moving"}
CAMERA_DIRECTION_TEXT = {"left": "to the left", "right": "to the right", "towards": "backward",
                         "away": "forward", "static": "not moving"}
APPROACH_TEXT = {"decrease": "getting closer to the camera", "increase": "getting farther from the camera",
                 "same": "staying at about the same distance"}
CAMERA_TURN_TEXT = {"cw": "turning right", "ccw": "turning left", "none": "not turning",
                    "tilt_up": "tilting up", "tilt_down": "tilting down"}
ROTATION_TEXT = {"cw": "clockwise", "ccw": "counter-clockwise", "none": "not rotating"}
PAIR_TEXT = {"decrease": "they get closer together", "increase": "they move farther apart",
             "same": "their distance stays about the same"}
OPTION_ORDERS = ("balanced", "fixed")
# The canonical option order of ``qa_option_order: fixed`` (duplicates keep their first place).
CANONICAL_OPTIONS = list(dict.fromkeys(
    v for d in (OBJECT_DIRECTION_TEXT, CAMERA_DIRECTION_TEXT, APPROACH_TEXT, CAMERA_TURN_TEXT, ROTATION_TEXT, PAIR_TEXT)
    for v in d.values()))
COUNT_PREDICATES = {  # predicate key -> (phrase, test on a translation label)
    "left": "moving to the left", "right": "moving to the right",
    "towards": "moving towards the camera", "away": "moving away from the camera",
    "moving": "moving", "static": "not moving",
}


def absent_text(label: str) -> str:
    """The VLM4D false-positive choice."""
    return f"no {label} there"


def _family(category: str, key: str) -> list[str]:
    """The phrasings of a question: false positives borrow the family of the question they mimic;
    direction-in-phase questions have one family per phase."""
    if category == "false_positive":
        return TEMPLATES[key]
    if category == "object_direction_phase":
        return TEMPLATES[f"object_direction_{key}"]
    return TEMPLATES[category]


def _rng(cfg: QAConfig, *parts: Any) -> random.Random:
    """A generator seeded by the question's identity (same question -> same phrasing, any source)."""
    return random.Random("|".join([str(cfg.qa_seed), *map(str, parts)]))


def _fmt(v: float) -> str:
    return f"{v:.2f}"


def _fmt_m(v: float) -> str:
    """Numeric answers: metres with one decimal."""
    return f"{v:.1f}"


# --------------------------------------------------------------------------- question builders


def _make(view: _ClipView, cfg: QAConfig, category: str, subject: str, key: str, fill: dict[str, str],
          answer: str, canonical: str, pool: Sequence[str], frames: tuple[int, int],
          objs: Sequence[dict[str, Any]], reasoning: str, value: float | None = None,
          template: int | None = None) -> Question:
    rng = _rng(cfg, view.clip_id, category, subject, key)
    templates = _family(category, key)
    t_idx = rng.randrange(len(templates)) if template is None else template % len(templates)
    others = [p for p in dict.fromkeys(pool) if p != answer]
    distractors = rng.sample(others, 3) if category not in NUMERIC_CATEGORIES else []
    f0, f1 = frames
    return Question(
        clip_id=view.clip_id, category=category, subject=subject, key=key,
        question=templates[t_idx].format(**fill), answer=answer, canonical=canonical,
        distractors=distractors, frames=(f0, f1), camera_centers=view.cam_state(f0, f1),
        object_centers=[(o["label"], _round_cm(o["centers"][f0]), _round_cm(o["centers"][f1])) for o in objs],
        reasoning=reasoning, value=value, clip_dir=str(view.ann.get("clip_dir", "")),
    )


def _displacement_sentence(label: str, d: Sequence[float]) -> str:
    return (f"In the first frame's camera view the {label} moved by dx = {_fmt(d[0])} m (right +), "
            f"dy = {_fmt(d[1])} m (down +), dz = {_fmt(d[2])} m (away +), "
            f"{_fmt(math.sqrt(sum(v * v for v in d)))} m in total")


def _direction_question(view, cfg, drops, obj, category: str, key: str, frames: tuple[int, int]):
    f0, f1 = frames
    label = classify_translation(obj["centers"][f1] - obj["centers"][f0], cfg)
    if label is None:
        drops[category] += 1
        return None
    a = obj["label"]
    d = np.subtract(_round_cm(obj["centers"][f1]), _round_cm(obj["centers"][f0]))
    why = _displacement_sentence(a, d)
    if key != "direction":
        why = f"Looking at the {'first' if key == 'start' else 'second'} half of the time the {a} is seen, frames {f0} to {f1}. " + why
    why += (", which is below the 'not moving' threshold." if label == "static"
            else f"; the largest horizontal part is {'dx' if label in ('left', 'right') else 'dz'}, "
                 f"so it moves {OBJECT_DIRECTION_TEXT[label]}.")
    pool = list(OBJECT_DIRECTION_TEXT.values()) + [absent_text(a)]
    return _make(view, cfg, category, a, key, {"a": a}, OBJECT_DIRECTION_TEXT[label], label, pool, (f0, f1), [obj], why)


def _q_object_direction(view, cfg, drops):
    out = []
    for obj in view.objects:
        if obj["unique"] and view.object_ok(obj, cfg):
            out.append(_direction_question(view, cfg, drops, obj, "object_direction", "direction", obj["span"]))
    return [q for q in out if q is not None]


def _q_object_direction_phase(view, cfg, drops):
    """Direction over the first / second half of the object's visible span (VLM4D asks e.g. "...
    moving towards at the end of the video?"): an object on an arc changes direction."""
    out = []
    for obj in view.objects:
        if not (obj["unique"] and view.object_ok(obj, cfg)):
            continue
        f0, f1 = obj["span"]
        mid = (f0 + f1) // 2
        if mid - f0 < 2 or not (obj["visible"][mid]):
            continue
        out.append(_direction_question(view, cfg, drops, obj, "object_direction_phase", "start", (f0, mid)))
        out.append(_direction_question(view, cfg, drops, obj, "object_direction_phase", "end", (mid, f1)))
    return [q for q in out if q is not None]


def _q_object_approach(view, cfg, drops):
    out = []
    for obj in view.objects:
        if not (obj["unique"] and view.object_ok(obj, cfg)):
            continue
        f0, f1 = obj["span"]
        raw = np.linalg.norm(obj["centers"][f1] - view.cam[f1]) - np.linalg.norm(obj["centers"][f0] - view.cam[f0])
        label = _classify_change(raw, cfg)
        if label is None:
            drops["object_approach"] += 1
            continue
        a = obj["label"]
        cam = view.cam_state(f0, f1)
        o0, o1 = _round_cm(obj["centers"][f0]), _round_cm(obj["centers"][f1])
        r0 = float(np.linalg.norm(np.subtract(o0, cam[0])))
        r1 = float(np.linalg.norm(np.subtract(o1, cam[1])))
        why = (f"The {a} is {_fmt(r0)} m from the camera at the first frame and {_fmt(r1)} m at the last, "
               f"a change of {r1 - r0:+.2f} m, so it is {APPROACH_TEXT[label]}.")
        pool = list(APPROACH_TEXT.values()) + [absent_text(a)]
        out.append(_make(view, cfg, "object_approach", a, "approach", {"a": a}, APPROACH_TEXT[label], label,
                         pool, (f0, f1), [obj], why))
    return out


def _q_camera_direction(view, cfg, drops):
    f0, f1 = 0, view.n - 1
    label = classify_translation(view.cam[f1] - view.cam[f0], cfg)
    if label is None:
        drops["camera_direction"] += 1
        return []
    cam = view.cam_state(f0, f1)
    d = np.subtract(cam[1], cam[0])
    why = (f"The camera moved by dx = {_fmt(d[0])} m (right +), dy = {_fmt(d[1])} m (down +), "
           f"dz = {_fmt(d[2])} m (forward +), {_fmt(float(np.linalg.norm(d)))} m in total"
           + (", below the 'not moving' threshold." if label == "static" else
              f"; the largest horizontal part is {'dx' if label in ('left', 'right') else 'dz'}, "
              f"so it moves {CAMERA_DIRECTION_TEXT[label]}."))
    return [_make(view, cfg, "camera_direction", "camera", "direction", {}, CAMERA_DIRECTION_TEXT[label], label,
                  list(CAMERA_DIRECTION_TEXT.values()), (f0, f1), [], why)]


def _q_camera_rotation(view, cfg, drops):
    f0, f1 = 0, view.n - 1
    h0, p0 = view.camera_heading_pitch_deg(f0)
    h1, p1 = view.camera_heading_pitch_deg(f1)
    # unwrap the heading over all frames so that turns beyond 180 degrees are not folded
    headings = [view.camera_heading_pitch_deg(t)[0] for t in range(view.n)]
    turn = float(sum(_wrap_deg(b - a) for a, b in zip(headings[:-1], headings[1:])))
    label = _classify_angle(turn, cfg.qa_turn_static_deg, cfg.qa_turn_min_deg)
    if label is None or abs(p1 - p0) > cfg.qa_turn_static_deg:
        drops["camera_rotation"] += 1
        return []
    side = {"cw": "clockwise seen from above, i.e. towards +x: the camera turns right",
            "ccw": "counter-clockwise seen from above, i.e. towards -x: the camera turns left",
            "none": "below the turning threshold: the camera is not turning"}[label]
    why = (f"The camera's forward axis points at heading {h0:.0f} deg in the top-down view at the first frame "
           f"and {h1:.0f} deg at the last (pitch change {p1 - p0:+.0f} deg), a turn of {turn:+.0f} deg, {side}.")
    return [_make(view, cfg, "camera_rotation", "camera", "turn", {}, CAMERA_TURN_TEXT[label], label,
                  list(CAMERA_TURN_TEXT.values()), (f0, f1), [], why)]


def _q_object_rotation(view, cfg, drops):
    out = []
    for obj in view.objects:
        if not (obj["unique"] and view.object_ok(obj, cfg)):
            continue
        f0, f1 = obj["span"]
        yaw = obj["yaw"][f0:f1 + 1]
        known = yaw[~np.isnan(yaw)]
        if np.isnan(obj["yaw"][f0]) or np.isnan(obj["yaw"][f1]) or known.size < 2:
            continue  # no heading estimate for this object: no rotation question
        turn = math.degrees(float(np.unwrap(known)[-1] - known[0]))
        label = _classify_angle(turn, cfg.qa_rotation_static_deg, cfg.qa_rotation_min_deg)
        if label is None:
            drops["object_rotation"] += 1
            continue
        a = obj["label"]
        why = (f"Seen from above, the {a}'s heading changes by {turn:+.0f} deg between these frames "
               f"(positive = counter-clockwise), so it is {ROTATION_TEXT[label]}.")
        pool = list(ROTATION_TEXT.values()) + [absent_text(a)]
        out.append(_make(view, cfg, "object_rotation", a, "rotation", {"a": a}, ROTATION_TEXT[label], label,
                         pool, (f0, f1), [obj], why))
    return out


def _q_counting(view, cfg, drops):
    """Counts over the objects seen in the clip (never-seen ones are not "in the video"); every
    seen object must be seen often enough and at both ends of the common segment."""
    objs = [o for o in view.objects if o["span"] is not None]
    if not objs:
        return []
    if not all(view.object_ok(o, cfg) for o in objs):
        drops["counting"] += 1
        return []
    span = view.common_span(objs, cfg)
    if span is None:
        return []
    f0, f1 = span
    disp = [o["centers"][f1] - o["centers"][f0] for o in objs]
    labels = [classify_translation(d, cfg) for d in disp]
    # moving / not moving use the displacement length only (a diagonal motion is still clearly moving)
    moved = [None if cfg.qa_static_max_m <= np.linalg.norm(d) <= cfg.qa_moving_min_m
             else bool(np.linalg.norm(d) > cfg.qa_moving_min_m) for d in disp]
    out = []
    for key, phrase in COUNT_PREDICATES.items():
        if key in ("moving", "static"):
            undecided = any(m is None for m in moved)
            hits = [bool(m) == (key == "moving") for m in moved]
        else:
            undecided = any(lab is None for lab in labels)
            hits = [lab == key for lab in labels]
        if undecided:
            drops["counting"] += 1
            continue
        n = int(sum(hits))
        why_parts = []
        for o, lab in zip(objs, labels):
            d = np.subtract(_round_cm(o["centers"][f1]), _round_cm(o["centers"][f0]))
            why_parts.append(f"the {o['label']} moved [{', '.join(_fmt(v) for v in d)}] m ({OBJECT_DIRECTION_TEXT.get(lab, 'moving diagonally')})")
        why = "Displacements in the first frame's camera view: " + "; ".join(why_parts) + f". So {n} of them {'is' if n == 1 else 'are'} {phrase}."
        pool = [str(k) for k in range(0, max(6, len(objs) + 2))]
        out.append(_make(view, cfg, "counting", "all", key, {"p": phrase}, str(n), str(n), pool, (f0, f1), objs, why))
    return out


def _q_false_positive(view, cfg, drops):
    present = {o["label"] for o in view.objects}
    candidates = [lab for lab in cfg.qa_absent_labels if lab not in present]
    rng = _rng(cfg, view.clip_id, "false_positive", "labels")
    chosen = rng.sample(candidates, min(cfg.qa_false_positives_per_clip, len(candidates)))
    out = []
    f0, f1 = 0, view.n - 1
    for lab in chosen:
        kind = _rng(cfg, view.clip_id, "false_positive", lab).choice(["object_direction", "object_approach", "object_rotation"])
        pool = {"object_direction": OBJECT_DIRECTION_TEXT, "object_approach": APPROACH_TEXT,
                "object_rotation": ROTATION_TEXT}[kind]
        named = ", ".join(sorted(present)) if present else "no named object"
        why = f"The objects in the video are: {named}. There is no {lab} in any frame, so the question asks about something that is not there."
        q = _make(view, cfg, "false_positive", lab, kind, {"a": lab}, absent_text(lab), "absent",
                  list(pool.values()) + [absent_text(lab)], (f0, f1), [], why)
        out.append(q)
    return out


def _pairs(view, cfg):
    objs = [o for o in view.objects if o["unique"] and view.object_ok(o, cfg)]
    for i in range(len(objs)):
        for j in range(i + 1, len(objs)):
            a, b = sorted([objs[i], objs[j]], key=lambda o: o["label"])
            span = view.common_span([a, b], cfg)
            if span is not None:
                yield a, b, span


def _q_relative_position(view, cfg, drops):
    out = []
    for a, b, (f0, f1) in _pairs(view, cfg):
        raw = np.linalg.norm(a["centers"][f1] - b["centers"][f1]) - np.linalg.norm(a["centers"][f0] - b["centers"][f0])
        label = _classify_change(raw, cfg)
        if label is None:
            drops["relative_position"] += 1
            continue
        r0 = float(np.linalg.norm(np.subtract(_round_cm(a["centers"][f0]), _round_cm(b["centers"][f0]))))
        r1 = float(np.linalg.norm(np.subtract(_round_cm(a["centers"][f1]), _round_cm(b["centers"][f1]))))
        why = (f"The {a['label']} and the {b['label']} are {_fmt(r0)} m apart at the first frame and {_fmt(r1)} m at the last, "
               f"a change of {r1 - r0:+.2f} m, so {PAIR_TEXT[label]}.")
        subject = f"{a['label']}|{b['label']}"
        pool = list(PAIR_TEXT.values()) + [absent_text(b["label"])]
        out.append(_make(view, cfg, "relative_position", subject, "distance_change", {"a": a["label"], "b": b["label"]},
                         PAIR_TEXT[label], label, pool, (f0, f1), [a, b], why))
    return out


def _q_speed_comparison(view, cfg, drops):
    out = []
    for a, b, (f0, f1) in _pairs(view, cfg):
        dur_s = (f1 - f0) / view.fps
        da = float(np.linalg.norm(a["centers"][f1] - a["centers"][f0]))
        db = float(np.linalg.norm(b["centers"][f1] - b["centers"][f0]))
        lo, hi = cfg.qa_static_max_m, cfg.qa_moving_min_m
        if any(lo <= d <= hi for d in (da, db)):
            drops["speed_comparison"] += 1
            continue
        fast_a, fast_b = f"the {a['label']}", f"the {b['label']}"
        texts = {"a": fast_a, "b": fast_b, "same": "about the same speed", "neither": "neither is moving"}
        if da < lo and db < lo:
            label = "neither"
        elif da < lo or db < lo:
            label = "a" if db < lo else "b"
        else:
            ratio = max(da, db) / min(da, db)
            if cfg.qa_speed_same_ratio <= ratio <= cfg.qa_speed_faster_ratio:
                drops["speed_comparison"] += 1
                continue
            label = "same" if ratio < cfg.qa_speed_same_ratio else ("a" if da > db else "b")
        sa = float(np.linalg.norm(np.subtract(_round_cm(a["centers"][f1]), _round_cm(a["centers"][f0])))) / dur_s
        sb = float(np.linalg.norm(np.subtract(_round_cm(b["centers"][f1]), _round_cm(b["centers"][f0])))) / dur_s
        why = (f"Over {dur_s:.2f} s the {a['label']} moves at {_fmt(sa)} m/s on average and the {b['label']} "
               f"at {_fmt(sb)} m/s, so the answer is: {texts[label]}.")
        canonical = {"a": a["label"], "b": b["label"]}.get(label, label)
        subject = f"{a['label']}|{b['label']}"
        out.append(_make(view, cfg, "speed_comparison", subject, "faster", {"a": a["label"], "b": b["label"]},
                         texts[label], canonical, list(texts.values()), (f0, f1), [a, b], why))
    return out


def _q_object_distance(view, cfg, drops):
    out = []
    for obj in view.objects:
        if not (obj["unique"] and view.object_ok(obj, cfg)):
            continue
        f0, f1 = obj["span"]
        if float(np.linalg.norm(obj["centers"][f1] - obj["centers"][f0])) <= cfg.qa_moving_min_m:
            continue
        d = np.subtract(_round_cm(obj["centers"][f1]), _round_cm(obj["centers"][f0]))
        value = float(np.linalg.norm(d))
        why = _displacement_sentence(obj["label"], d) + f", i.e. about {_fmt_m(value)} m."
        out.append(_make(view, cfg, "object_distance", obj["label"], "travel", {"a": obj["label"]}, _fmt_m(value),
                         _fmt_m(value), [], (f0, f1), [obj], why, value=value))
    return out


def _q_camera_distance(view, cfg, drops):
    f0, f1 = 0, view.n - 1
    if float(np.linalg.norm(view.cam[f1] - view.cam[f0])) <= cfg.qa_moving_min_m:
        return []
    cam = view.cam_state(f0, f1)
    d = np.subtract(cam[1], cam[0])
    value = float(np.linalg.norm(d))
    why = (f"The camera moved by [{', '.join(_fmt(v) for v in d)}] m, a distance of {_fmt(value)} m, "
           f"i.e. about {_fmt_m(value)} m.")
    return [_make(view, cfg, "camera_distance", "camera", "travel", {}, _fmt_m(value), _fmt_m(value), [],
                  (f0, f1), [], why, value=value)]


def _q_object_pair_distance(view, cfg, drops):
    out = []
    for a, b, (f0, f1) in _pairs(view, cfg):
        d = np.subtract(_round_cm(a["centers"][f1]), _round_cm(b["centers"][f1]))
        value = float(np.linalg.norm(d))
        why = (f"At the last frame the {a['label']} minus the {b['label']} is [{', '.join(_fmt(v) for v in d)}] m, "
               f"a distance of {_fmt(value)} m, i.e. about {_fmt_m(value)} m.")
        out.append(_make(view, cfg, "object_pair_distance", f"{a['label']}|{b['label']}", "final_distance",
                         {"a": a["label"], "b": b["label"]}, _fmt_m(value), _fmt_m(value), [], (f0, f1), [a, b],
                         why, value=value))
    return out


BUILDERS = {
    "object_direction": _q_object_direction, "object_direction_phase": _q_object_direction_phase,
    "object_approach": _q_object_approach,
    "camera_direction": _q_camera_direction, "camera_rotation": _q_camera_rotation,
    "object_rotation": _q_object_rotation, "counting": _q_counting, "false_positive": _q_false_positive,
    "relative_position": _q_relative_position, "speed_comparison": _q_speed_comparison,
    "object_distance": _q_object_distance, "camera_distance": _q_camera_distance,
    "object_pair_distance": _q_object_pair_distance,
}


# --------------------------------------------------------------------------- validation


def validate_annotation(ann: Any, name: str = "annotation") -> None:
    """Raise :class:`QAError` naming ``name`` when the annotation does not follow design.md."""
    if not isinstance(ann, dict):
        raise QAError(f"{name}: expected a JSON object (design.md annotation), got {type(ann).__name__}")
    missing = [k for k in ("clip_id", "num_frames", "fps", "camera_to_world", "camera_centers", "objects") if k not in ann]
    if missing:
        raise QAError(f"{name}: missing key(s) {missing}; re-run `mllm4d curate` to rewrite the annotation")
    n = ann["num_frames"]
    if not isinstance(n, int) or n < 2:
        raise QAError(f"{name}: num_frames must be an integer >= 2, got {n!r}")
    if not (isinstance(ann["fps"], (int, float)) and ann["fps"] > 0):
        raise QAError(f"{name}: fps must be > 0, got {ann['fps']!r}")
    for key, shape in (("camera_to_world", (n, 4, 4)), ("camera_centers", (n, 3))):
        try:
            arr = np.asarray(ann[key], dtype=np.float64)
        except (TypeError, ValueError):
            raise QAError(f"{name}: {key} is not a numeric array; expected {shape}") from None
        if arr.shape != shape or not np.isfinite(arr).all():
            raise QAError(f"{name}: {key} must be finite with shape {shape}, got {arr.shape}")
    for i, obj in enumerate(ann["objects"]):
        if not isinstance(obj, dict) or "label" not in obj or "centers" not in obj:
            raise QAError(f"{name}: objects[{i}] needs 'label' and 'centers'")
        if len(obj["centers"]) != n:
            raise QAError(f"{name}: objects[{i}] ({obj['label']}) has {len(obj['centers'])} centres for {n} frames")
        for t, c in enumerate(obj["centers"]):
            if c is not None and (len(c) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in c)):
                raise QAError(f"{name}: objects[{i}].centers[{t}] must be [x, y, z] or null, got {c!r}")
        yaw = obj.get("yaw_rad")
        if yaw is not None and len(yaw) != n:
            raise QAError(f"{name}: objects[{i}] ({obj['label']}) has {len(yaw)} yaw values for {n} frames")


def load_annotations(ann_dir: str | Path) -> list[dict[str, Any]]:
    """Read and validate every ``<ann_dir>/*.json`` (sorted by name)."""
    ann_dir = Path(ann_dir)
    files = sorted(ann_dir.glob("*.json"))
    if not files:
        raise QAError(f"no annotations in {ann_dir}; run `mllm4d curate` first (it writes annotations/<clip_id>.json)")
    out = []
    for path in files:
        try:
            ann = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise QAError(f"{path}: not valid JSON ({err}); delete it and re-run curation") from None
        validate_annotation(ann, str(path))
        out.append(ann)
    return out


# --------------------------------------------------------------------------- generation


def generate_questions(ann: dict[str, Any], cfg: QAConfig, capped: bool = True,
                       drops: Counter | None = None) -> list[Question]:
    """All questions of one clip (deterministic). ``capped``: at most
    ``qa_max_per_category_per_clip`` per category, picked by a clip-seeded generator."""
    validate_annotation(ann, f"annotation of clip {ann.get('clip_id', '?') if isinstance(ann, dict) else '?'}")
    view = _ClipView(ann, cfg)
    drops = Counter() if drops is None else drops
    out: list[Question] = []
    for category, builder in BUILDERS.items():
        if category in NUMERIC_CATEGORIES and not cfg.qa_numeric:
            continue
        qs = builder(view, cfg, drops)
        if capped and len(qs) > cfg.qa_max_per_category_per_clip:
            qs = _rng(cfg, view.clip_id, category, "cap").sample(qs, cfg.qa_max_per_category_per_clip)
            qs.sort(key=lambda q: (q.subject, q.key))
        out.extend(qs)
    return out


def split_clips(clip_ids: Iterable[str], cfg: QAConfig) -> dict[str, str]:
    """clip_id -> "train" | "rft" | "bench", seeded; at least one bench clip when there are >= 2
    clips and bench_fraction > 0, likewise one RFT clip when rft_fraction > 0, and always one train
    clip. The bench clips do not depend on ``rft_fraction``: RFT clips are taken from the rest."""
    ids = sorted(set(clip_ids))
    random.Random(f"{cfg.qa_seed}|split").shuffle(ids)
    n_bench = int(round(cfg.bench_fraction * len(ids)))
    if cfg.bench_fraction > 0 and len(ids) >= 2:
        n_bench = min(max(n_bench, 1), len(ids) - 1)
    n_rft = int(round(cfg.rft_fraction * len(ids)))
    if cfg.rft_fraction > 0 and len(ids) - n_bench >= 2:
        n_rft = min(max(n_rft, 1), len(ids) - n_bench - 1)
    else:
        n_rft = 0
    return {cid: ("bench" if i < n_bench else "rft" if i < n_bench + n_rft else "train") for i, cid in enumerate(ids)}


def _limit_answer_share(questions: list[Question], cfg: QAConfig, split: str) -> tuple[list[Question], int]:
    """Drop seeded questions of a category's most common answer (e.g. "not moving") until it is at
    most ``qa_max_answer_share`` of the category, so that a constant guess cannot score high."""
    share = cfg.qa_max_answer_share
    if share >= 1.0:
        return questions, 0
    by_cat: dict[str, list[Question]] = defaultdict(list)
    for q in questions:
        by_cat[q.category].append(q)
    keep: list[Question] = []
    dropped = 0
    for category, qs in sorted(by_cat.items()):
        if category in NUMERIC_CATEGORIES or category == "false_positive":
            keep += qs
            continue
        counts = Counter(q.canonical for q in qs)
        allowed = dict(counts)
        for _ in range(len(counts)):
            total = sum(allowed.values())
            top, n_top = max(sorted(allowed.items()), key=lambda kv: kv[1])
            limit = max(1, math.floor(share * (total - n_top) / (1.0 - share))) if share < 1 else n_top
            if n_top <= limit:
                break
            allowed[top] = limit
        rng = random.Random(f"{cfg.qa_seed}|share|{split}|{category}")
        for answer in sorted(counts):
            group = sorted((q for q in qs if q.canonical == answer), key=lambda q: (q.clip_id, q.subject, q.key))
            chosen = rng.sample(group, allowed[answer]) if allowed[answer] < len(group) else group
            dropped += len(group) - len(chosen)
            keep += chosen
    return keep, dropped


def _balance_train(questions: list[Question], cfg: QAConfig) -> list[Question]:
    """Repeat under-represented categories up to the median category count, each copy in another
    phrasing of the same family (same facts, same answer); at most one copy per other phrasing."""
    by_cat: dict[str, list[Question]] = defaultdict(list)
    for q in questions:
        by_cat[q.category].append(q)
    if len(by_cat) < 2:
        return questions
    target = int(statistics.median(len(v) for v in by_cat.values()))
    extra: list[Question] = []
    for category, qs in sorted(by_cat.items()):
        need, k = target - len(qs), 1
        while need > 0 and k < 3:  # every family has 3 phrasings
            batch = qs[:need]
            extra += [dataclasses.replace(q, question=_rephrase(q, k), key=f"{q.key}#r{k}",
                                          distractors=list(q.distractors)) for q in batch]
            need -= len(batch)
            k += 1
    return questions + extra


def _rephrase(q: Question, k: int) -> str:
    """Another template of the same family for ``q`` (k-th next one)."""
    family = _family(q.category, q.key.split("#")[0])
    current = next((i for i, t in enumerate(family) if _matches(t, q.question)), 0)
    fill = _fill_of(q)
    return family[(current + k) % len(family)].format(**fill)


def _fill_of(q: Question) -> dict[str, str]:
    if q.category == "counting":
        return {"p": COUNT_PREDICATES[q.key.split("#")[0]]}
    if q.category == "false_positive":
        return {"a": q.subject}
    parts = q.subject.split("|")
    fill = {"a": parts[0]}
    if len(parts) > 1:
        fill["b"] = parts[1]
    return fill


def _matches(template: str, text: str) -> bool:
    head = template.split("{")[0]
    tail = template.split("}")[-1]
    return text.startswith(head) and text.endswith(tail)


def _option_rank(text: str) -> tuple[int, str]:
    """Place of an option text in the canonical order of ``qa_option_order: fixed``: the answer
    vocabularies in the order they are defined here (left, right, towards, away, not moving, ...),
    then anything else (absent-object options, numbers) alphabetically."""
    return (CANONICAL_OPTIONS.index(text), "") if text in CANONICAL_OPTIONS else (len(CANONICAL_OPTIONS), text)


def _assign_letters(questions: list[Question], cfg: QAConfig, split: str) -> list[dict[str, str] | None]:
    """Choices per question: the answer's letter cycles through seeded shuffled blocks of A-D (exact
    balance within a split), distractors fill the remaining letters in random order.

    ``qa_option_order: fixed`` lists the same four options in the canonical order instead
    (:func:`_option_rank`): a letter then follows from the answer and its distractors alone, so the
    letters are no longer balanced (the blind control sees the same order)."""
    if cfg.qa_option_order == "fixed":
        return [None if q.question_type == "numeric" else
                dict(zip(prompts.LETTERS, sorted([q.answer, *q.distractors], key=_option_rank)))
                for q in questions]
    rng = random.Random(f"{cfg.qa_seed}|letters|{split}")
    block: list[str] = []
    out: list[dict[str, str] | None] = []
    for q in questions:
        if q.question_type == "numeric":
            out.append(None)
            continue
        if not block:
            block = list(prompts.LETTERS)
            rng.shuffle(block)
        letter = block.pop()
        rest = [lt for lt in prompts.LETTERS if lt != letter]
        distractors = list(q.distractors)
        rng.shuffle(distractors)
        choices = {letter: q.answer, **dict(zip(rest, distractors))}
        out.append({lt: choices[lt] for lt in prompts.LETTERS})
    return out


def cot_target(q: Question, answer_tag: str) -> str:
    """The ST-CoT response: ``<thinking>`` states (camera and object centres at the segment's first
    and last frame), the reasoning, ``</thinking><answer>answer_tag</answer>``."""
    f0, f1 = q.frames
    lines = []
    for when, frame, idx in (("first", f0, 1), ("last", f1, 2)):
        parts = [f"Camera Center: {prompts.format_center(q.camera_centers[idx - 1])}"]
        if q.object_centers:
            parts += [f"Object Center: {prompts.format_center(o[idx])} ({o[0]})" for o in q.object_centers]
        else:
            parts.append("Object Center: null")
        lines.append(f"At frame {frame} ({when} frame of the segment): " + "; ".join(parts) + ".")
    return "<thinking>" + " ".join(lines) + " " + q.reasoning + f"</thinking><answer>{answer_tag}</answer>"


def _record(q: Question, choices: dict[str, str] | None, out_dir: Path, qid: str) -> dict[str, Any]:
    video = os.path.relpath(Path(os.path.abspath(q.clip_dir)) / "left.mp4", os.path.abspath(out_dir))
    letter = next((lt for lt, text in choices.items() if text == q.answer), None) if choices else None
    return {"id": qid, "clip_id": q.clip_id, "video": video, "category": q.category, "question": q.question,
            "question_type": q.question_type, "choices": choices, "answer": q.answer,
            "answer_letter": letter, "solution": q.solution()}


def build_datasets(annotations: list[dict[str, Any]], out_dir: Path, cfg: QAConfig) -> dict[str, Any]:
    """Write ``sft.jsonl``, ``cot.jsonl``, ``rft.jsonl`` (train clips, or the RFT clips when
    ``rft_fraction`` > 0), ``bench.json`` (bench clips)
    and ``qa_summary.json`` into ``out_dir`` (all written to temporary names first, then renamed).

    ``video`` in each record is ``<clip_dir>/left.mp4`` relative to ``out_dir``. SFT ``response`` is
    the option letter (or the number); CoT/RFT carry the ST-CoT system prompt; RFT adds ``solution``.
    Returns the summary (counts per category and split, answer-letter balance, dropped questions).
    """
    start = time.perf_counter()
    cfg.validate()
    out_dir = Path(out_dir)
    seen: set[str] = set()
    for i, ann in enumerate(annotations):
        validate_annotation(ann, f"annotations[{i}] (clip {ann.get('clip_id', '?') if isinstance(ann, dict) else '?'})")
        if not ann.get("clip_dir"):
            raise QAError(f"annotation of clip {ann['clip_id']!r} has no clip_dir (the clip folder holding left.mp4); "
                          "re-run curation, which records it")
        if ann["clip_id"] in seen:
            raise QAError(f"clip {ann['clip_id']!r} appears twice in the annotations; clip ids must be unique")
        seen.add(ann["clip_id"])
    split_of = split_clips(seen, cfg)
    drops: Counter = Counter()
    by_split: dict[str, list[Question]] = {"train": [], "bench": []}
    if "rft" in split_of.values():
        by_split["rft"] = []
    for ann in tqdm(sorted(annotations, key=lambda a: a["clip_id"]), desc="qa", unit="clip", disable=None):
        by_split[split_of[ann["clip_id"]]].extend(generate_questions(ann, cfg, drops=drops))
    dropped_share = {}
    for split in by_split:
        by_split[split], dropped_share[split] = _limit_answer_share(by_split[split], cfg, split)
    unique = {split: len(qs) for split, qs in by_split.items()}
    if cfg.qa_balance_train:
        by_split["train"] = _balance_train(by_split["train"], cfg)

    records: dict[str, list[dict[str, Any]]] = {}
    for split, qs in by_split.items():
        qs.sort(key=lambda q: (q.category, q.clip_id, q.subject, q.key))
        choice_list = _assign_letters(qs, cfg, split)
        recs = []
        per_clip: Counter = Counter()
        for q, choices in zip(qs, choice_list):
            per_clip[q.clip_id] += 1
            recs.append((q, choices, _record(q, choices, out_dir, f"{q.clip_id}-{per_clip[q.clip_id]:03d}")))
        records[split] = recs

    sft, cot = [], []
    for q, choices, rec in records["train"]:
        tag = rec["answer_letter"] if choices else q.answer
        sft.append({**rec, "prompt": prompts.direct_prompt(q.question, choices), "response": tag})
        cot_prompt = prompts.st_cot_prompt(q.question, choices)
        cot.append({**rec, "system": prompts.ST_COT_SYSTEM_PROMPT, "prompt": cot_prompt, "response": cot_target(q, tag)})
    rft = [{**rec, "system": prompts.ST_COT_SYSTEM_PROMPT, "prompt": prompts.st_cot_prompt(q.question, choices)}
           for q, choices, rec in records.get("rft", records["train"])]
    bench = [rec for _, _, rec in records["bench"]]

    summary = _summary(records, split_of, drops, time.perf_counter() - start)
    summary["unique_questions"] = unique
    summary["train_rephrased_repeats"] = len(by_split["train"]) - unique["train"]
    summary["dropped_for_answer_share"] = dropped_share
    files = {
        "sft.jsonl": "".join(json.dumps(r) + "\n" for r in sft),
        "cot.jsonl": "".join(json.dumps(r) + "\n" for r in cot),
        "rft.jsonl": "".join(json.dumps(r) + "\n" for r in rft),
        "bench.json": json.dumps(bench, indent=1),
        "qa_summary.json": json.dumps(summary, indent=1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out_dir / f".{name}.tmp").write_text(text)
    for name in files:
        (out_dir / f".{name}.tmp").replace(out_dir / name)
    log.info("qa: %d train / %d rft / %d bench questions from %d clips in %.2f s -> %s",
             len(sft), len(rft), len(bench), len(split_of), summary["elapsed_s"], out_dir)
    return summary


def _summary(records, split_of, drops, elapsed_s) -> dict[str, Any]:
    counts = {split: dict(sorted(Counter(r["category"] for _, _, r in recs).items())) for split, recs in records.items()}
    letters = {}
    for split, recs in records.items():
        c = Counter(r["answer_letter"] for _, _, r in recs if r["answer_letter"])
        total = sum(c.values())
        letters[split] = {lt: {"count": c[lt], "share": round(c[lt] / total, 4) if total else 0.0} for lt in prompts.LETTERS}
    return {
        "clips": {split: sorted(cid for cid, s in split_of.items() if s == split) for split in records},
        "num_clips": dict(Counter(split_of.values())),
        "questions": {split: len(recs) for split, recs in records.items()},
        "total_questions": sum(len(recs) for recs in records.values()),
        "per_category": counts,
        "question_types": {split: dict(Counter(r["question_type"] for _, _, r in recs)) for split, recs in records.items()},
        "answer_letters": letters,
        "dropped_near_threshold": dict(sorted(drops.items())),
        "elapsed_s": round(elapsed_s, 3),
    }


# --------------------------------------------------------------------------- ground truth and agreement


def _annotation_from_gt_dict(clip_id: str, fps: float, clip_dir: str, source: str, gt: dict[str, Any],
                             num_frames: int | None = None) -> dict[str, Any]:
    c2w = np.asarray(gt["camera_to_world"], dtype=np.float64)
    n = int(num_frames or c2w.shape[0])
    if c2w.shape != (n, 4, 4):
        raise QAError(f"{clip_dir}/gt.json: camera_to_world has shape {c2w.shape}, expected ({n}, 4, 4)")
    objects = []
    for i, obj in enumerate(gt.get("objects", [])):
        centers = obj.get("centers_world") or [None] * n
        visible = obj.get("visible") or [c is not None for c in centers]
        yaw = obj.get("yaw_rad") or [None] * n
        if len(centers) != n or len(visible) != n or len(yaw) != n:
            raise QAError(f"{clip_dir}/gt.json: objects[{i}] has per-frame lists of length "
                          f"{len(centers)}/{len(visible)}/{len(yaw)}, expected {n}")
        objects.append({
            "id": obj.get("id", i + 1), "label": str(obj.get("label", f"object {i + 1}")),
            "centers": [[float(v) for v in c] if (c is not None and vis) else None for c, vis in zip(centers, visible)],
            "yaw_rad": [float(y) if (y is not None and vis) else None for y, vis in zip(yaw, visible)],
        })
    return {"clip_id": clip_id, "num_frames": n, "fps": float(fps), "clip_dir": str(clip_dir), "source": source,
            "camera_to_world": c2w.tolist(), "camera_centers": c2w[:, :3, 3].tolist(), "objects": objects,
            "quality": {"annotation": "ground truth"}}


def annotation_from_gt(clip: Any) -> dict[str, Any]:
    """The annotation schema built from a ``Clip``'s ground truth (``clip.gt`` as in gt.json).

    Object centres (true centroids) and yaw are set to null where the object is not visible, so the
    ground-truth annotation states only what an estimator could see."""
    if not clip.gt:
        raise QAError(f"clip {clip.clip_id} ({clip.path}) has no gt.json; --use-gt needs synthetic clips with ground truth")
    return _annotation_from_gt_dict(clip.clip_id, clip.fps, str(clip.path or clip.clip_id), clip.source, clip.gt,
                                    num_frames=clip.num_frames)


def annotation_from_gt_dir(clip_dir: str | Path) -> dict[str, Any]:
    """Like :func:`annotation_from_gt`, read straight from ``clip.json`` + ``gt.json`` (no video decode)."""
    clip_dir = Path(clip_dir)
    for name in ("clip.json", "gt.json"):
        if not (clip_dir / name).is_file():
            raise QAError(f"{clip_dir / name} not found; --use-gt needs clips with ground truth (e.g. from `mllm4d synth`)")
    meta = json.loads((clip_dir / "clip.json").read_text())
    gt = json.loads((clip_dir / "gt.json").read_text())
    return _annotation_from_gt_dict(str(meta.get("clip_id", clip_dir.name)), float(meta["fps"]), str(clip_dir),
                                    str(meta.get("source", "unknown")), gt, num_frames=meta.get("num_frames"))


def agreement(est_annotations: list[dict[str, Any]], gt_annotations: list[dict[str, Any]], cfg: QAConfig,
              rel_tol: float = 0.15) -> dict[str, Any]:
    """Compare questions generated (uncapped, deterministically) from estimated and ground-truth
    annotations of the same clips, matched by (clip, category, subject, question key).

    Returns shares of matched multiple-choice answers that agree and of matched numeric answers
    within ``rel_tol`` of the ground truth, counts per category, unmatched counts and a few
    disagreements."""
    def index(anns):
        out = {}
        for ann in anns:
            for q in generate_questions(ann, cfg, capped=False):
                out[q.match_key] = q
        return out

    est, gt = index(est_annotations), index(gt_annotations)
    shared = sorted(set(est) & set(gt))
    per_cat: dict[str, dict[str, int]] = defaultdict(lambda: {"matched": 0, "agree": 0})
    mc_n = mc_ok = num_n = num_ok = 0
    rel_errors: list[float] = []
    disagreements = []
    for key in shared:
        e, g = est[key], gt[key]
        if g.question_type == "numeric":
            rel_errors.append(abs(e.value - g.value) / max(abs(g.value), 1e-9))
            ok = rel_errors[-1] <= rel_tol
            num_n += 1
            num_ok += ok
        else:
            ok = e.canonical == g.canonical
            mc_n += 1
            mc_ok += ok
        per_cat[g.category]["matched"] += 1
        per_cat[g.category]["agree"] += int(ok)
        if not ok and len(disagreements) < 20:
            disagreements.append({"key": list(key), "estimated": e.answer, "ground_truth": g.answer})
    return {
        "mc_matched": mc_n, "mc_agree": mc_ok, "mc_agreement": mc_ok / mc_n if mc_n else float("nan"),
        "numeric_matched": num_n, "numeric_within": num_ok,
        "numeric_within_tol": num_ok / num_n if num_n else float("nan"), "rel_tol": rel_tol,
        "numeric_median_rel_error": float(np.median(rel_errors)) if rel_errors else float("nan"),
        "est_only": len(set(est) - set(gt)), "gt_only": len(set(gt) - set(est)),
        "per_category": dict(sorted(per_cat.items())), "disagreements": disagreements,
    }


def scorecard_line(result: dict[str, Any]) -> str:
    """One line for ``--score``."""
    return (f"qa agreement est vs gt: multiple-choice {100 * result['mc_agreement']:.1f}% "
            f"({result['mc_agree']}/{result['mc_matched']}), numeric within {100 * result['rel_tol']:.0f}% "
            f"{100 * result['numeric_within_tol']:.1f}% ({result['numeric_within']}/{result['numeric_matched']}; "
            f"median relative error {100 * result['numeric_median_rel_error']:.1f}%), "
            f"unmatched est {result['est_only']} / gt {result['gt_only']}")


# --------------------------------------------------------------------------- command line


@dataclass
class QARunOptions:
    """Inputs and outputs of the stand-alone ``mllm4d qa`` command (``curate`` passes its own)."""

    annotations: str = field(default="", metadata={"help": "folder of estimated <clip_id>.json annotations (from mllm4d curate)"})
    clips: str = field(default="", metadata={"help": "folder of clip folders with gt.json (needed by use_gt and score)"})
    out: str = field(default="runs/qa", metadata={"help": "output folder for sft/cot/rft.jsonl, bench.json, qa_summary.json"})
    use_gt: bool = field(default=False, metadata={"help": "build the data from ground-truth annotations of --clips instead"})
    score: bool = field(default=False, metadata={"help": "print the est-vs-gt agreement scorecard (needs --annotations and --clips)"})


def gt_annotations_from_clips(clips_dir: str | Path) -> list[dict[str, Any]]:
    """Ground-truth annotations of every ``<clips_dir>/*/gt.json`` clip folder (sorted)."""
    dirs = sorted(p.parent for p in Path(clips_dir).glob("*/gt.json"))
    if not dirs:
        raise QAError(f"no clip folders with gt.json under {clips_dir}; generate some with `mllm4d synth --out {clips_dir}`")
    return [annotation_from_gt_dir(d) for d in dirs]


def main(argv: list[str] | None = None) -> int:
    """``mllm4d qa --annotations DIR --out DIR [--clips DIR --use-gt] [--score]`` plus any
    :class:`QAConfig` key as ``--key value`` (and ``--config recipe.yaml``)."""
    merged = merge_config_classes("QARunConfig", QARunOptions, QAConfig)
    run = parse_config(merged, argv, prog="mllm4d qa",
                       description="4D annotations -> sft/cot/rft.jsonl, bench.json (VLM4D format), qa_summary.json")
    opts = split_config(run, QARunOptions)
    try:
        cfg = split_config(run, QAConfig)
        if opts.use_gt and not opts.clips:
            raise ConfigError("--use-gt needs --clips DIR (clip folders with gt.json)")
        if opts.score and not (opts.clips and opts.annotations):
            raise ConfigError("--score needs --annotations DIR (estimated) and --clips DIR (ground truth)")
        if not (opts.use_gt or opts.annotations):
            raise ConfigError("give --annotations DIR, or --use-gt with --clips DIR")
        est = load_annotations(opts.annotations) if opts.annotations else None
        gt = gt_annotations_from_clips(opts.clips) if (opts.use_gt or opts.score) else None
    except (ConfigError, QAError) as err:
        sys.stderr.write(f"mllm4d qa: error: {err}\n")
        return 2
    anns = gt if opts.use_gt else est
    summary = build_datasets(anns, Path(opts.out), cfg)
    save_resolved(run, opts.out, name="qa_config.yaml")
    line = (f"mllm4d qa: {summary['unique_questions']['train']} train (+{summary['train_rephrased_repeats']} rephrased) "
            f"+ {summary['unique_questions']['bench']} bench questions from {len(anns)} clips "
            f"({'ground truth' if opts.use_gt else 'estimated'}), {summary['elapsed_s']:.2f} s -> {opts.out}")
    if opts.score:
        gt_by_id = {a["clip_id"]: a for a in gt}
        shared = [a for a in est if a["clip_id"] in gt_by_id]
        result = agreement(shared, [gt_by_id[a["clip_id"]] for a in shared], cfg)
        atomic_write_json(Path(opts.out) / "qa_agreement.json", result)
        line += "\n" + scorecard_line(result)
    print(line)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
