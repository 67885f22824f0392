"""Question builders: one function per category turns a clip's motion into questions.

``generate_questions`` runs every builder on one annotation. The rules each builder applies (which
segment, which threshold, when a question is dropped) are in docs/questions.md.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any, Sequence

import numpy as np

from mllm4d_lite.curation.annotation import AnnotationError, validate_annotation
from mllm4d_lite.qa.config import QAConfig
from mllm4d_lite.qa.motion import ClipView, classify_angle, classify_change, classify_translation, round_cm, wrap_deg
from mllm4d_lite.qa.question import Question
from mllm4d_lite.qa.vocabulary import (APPROACH_TEXT, CAMERA_DIRECTION_TEXT, CAMERA_TURN_TEXT, COUNT_PREDICATES,
                                       NUMERIC_CATEGORIES, OBJECT_DIRECTION_TEXT, PAIR_TEXT, ROTATION_TEXT,
                                       absent_text, phrasings)


#: what an annotation's ``objects`` cover (docs/data-format.md ``object_coverage``): every object in
#: view, or only those the curation saw move (the mask-free flow backend reports no static object)
OBJECT_COVERAGES = ("all", "moving")


def object_coverage(ann: dict[str, Any]) -> str:
    """``ann["object_coverage"]`` ("all" | "moving"); when absent, "moving" for an annotation of the
    mask-free flow backend (``quality.objects`` starts with "flow") and "all" otherwise."""
    coverage = ann.get("object_coverage")
    if coverage is None:
        quality = ann.get("quality") if isinstance(ann.get("quality"), dict) else {}
        return "moving" if str(quality.get("objects", "")).startswith("flow") else "all"
    if coverage not in OBJECT_COVERAGES:
        raise AnnotationError(f"annotation of clip {ann.get('clip_id', '?')!r}: object_coverage {coverage!r} is "
                              f"not one of {list(OBJECT_COVERAGES)}; fix the value or re-run `mllm4d curate`")
    return coverage


def _rng(cfg: QAConfig, *parts: Any) -> random.Random:
    """A generator seeded by the question's identity (same question -> same phrasing, any source)."""
    return random.Random("|".join([str(cfg.qa_seed), *map(str, parts)]))


def _fmt(v: float) -> str:
    return f"{v:.2f}"


def _fmt_m(v: float) -> str:
    """Numeric answers: metres with one decimal."""
    return f"{v:.1f}"


def _make(view: ClipView, cfg: QAConfig, category: str, subject: str, key: str, fill: dict[str, str],
          answer: str, canonical: str, pool: Sequence[str], frames: tuple[int, int],
          objs: Sequence[dict[str, Any]], reasoning: str, value: float | None = None) -> Question:
    """A :class:`Question` whose phrasing and distractors (3 from ``pool``, MC only) are drawn by
    a generator seeded with the question's identity."""
    rng = _rng(cfg, view.clip_id, category, subject, key)
    templates = phrasings(category, key)
    t_idx = rng.randrange(len(templates))
    others = [p for p in dict.fromkeys(pool) if p != answer]
    distractors = rng.sample(others, 3) if category not in NUMERIC_CATEGORIES else []
    f0, f1 = frames
    return Question(
        clip_id=view.clip_id, category=category, subject=subject, key=key,
        question=templates[t_idx].format(**fill), answer=answer, canonical=canonical,
        distractors=distractors, frames=(f0, f1), camera_centers=view.cam_state(f0, f1),
        object_centers=[(o["label"], round_cm(o["centers"][f0]), round_cm(o["centers"][f1])) for o in objs],
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
    d = np.subtract(round_cm(obj["centers"][f1]), round_cm(obj["centers"][f0]))
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
        label = classify_change(raw, cfg)
        if label is None:
            drops["object_approach"] += 1
            continue
        a = obj["label"]
        cam = view.cam_state(f0, f1)
        o0, o1 = round_cm(obj["centers"][f0]), round_cm(obj["centers"][f1])
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
    turn = float(sum(wrap_deg(b - a) for a, b in zip(headings[:-1], headings[1:])))
    label = classify_angle(turn, cfg.qa_turn_static_deg, cfg.qa_turn_min_deg)
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
        label = classify_angle(turn, cfg.qa_rotation_static_deg, cfg.qa_rotation_min_deg)
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
    seen object must be seen often enough and at both ends of the common segment. An annotation that
    holds only moving objects (``object_coverage: moving``) gets no "not moving" count: its answer
    counts objects the annotation does not hold (the other counts do not: a left-out object is, by
    the annotation's claim, not moving, so it adds 0 to them)."""
    moving_only = object_coverage(view.ann) == "moving"
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
        if moving_only and key == "static":
            continue
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
            d = np.subtract(round_cm(o["centers"][f1]), round_cm(o["centers"][f0]))
            why_parts.append(f"the {o['label']} moved [{', '.join(_fmt(v) for v in d)}] m ({OBJECT_DIRECTION_TEXT.get(lab, 'moving diagonally')})")
        why = "Displacements in the first frame's camera view: " + "; ".join(why_parts) + f". So {n} of them {'is' if n == 1 else 'are'} {phrase}."
        if moving_only:
            why = "Only the objects seen moving are listed; the others stand still. " + why
        pool = [str(k) for k in range(0, max(6, len(objs) + 2))]
        out.append(_make(view, cfg, "counting", "all", key, {"p": phrase}, str(n), str(n), pool, (f0, f1), objs, why))
    return out


def _q_false_positive(view, cfg, drops):
    """Questions about a label no annotated object has. Not asked of an annotation that holds only
    moving objects: a static object of that label may be in view (and its labels are not the
    clip's object names), so "no <label> there" would not be known to be true."""
    if object_coverage(view.ann) == "moving":
        return []
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
        label = classify_change(raw, cfg)
        if label is None:
            drops["relative_position"] += 1
            continue
        r0 = float(np.linalg.norm(np.subtract(round_cm(a["centers"][f0]), round_cm(b["centers"][f0]))))
        r1 = float(np.linalg.norm(np.subtract(round_cm(a["centers"][f1]), round_cm(b["centers"][f1]))))
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
        sa = float(np.linalg.norm(np.subtract(round_cm(a["centers"][f1]), round_cm(a["centers"][f0])))) / dur_s
        sb = float(np.linalg.norm(np.subtract(round_cm(b["centers"][f1]), round_cm(b["centers"][f0])))) / dur_s
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
        d = np.subtract(round_cm(obj["centers"][f1]), round_cm(obj["centers"][f0]))
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
        d = np.subtract(round_cm(a["centers"][f1]), round_cm(b["centers"][f1]))
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


def generate_questions(ann: dict[str, Any], cfg: QAConfig, capped: bool = True,
                       drops: Counter | None = None) -> list[Question]:
    """All questions of one clip (deterministic). ``capped``: at most
    ``qa_max_per_category_per_clip`` per category, picked by a clip-seeded generator."""
    validate_annotation(ann, f"annotation of clip {ann.get('clip_id', '?') if isinstance(ann, dict) else '?'}")
    object_coverage(ann)  # a bad value is an error before any question is built
    view = ClipView(ann, cfg)
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
