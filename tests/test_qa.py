"""QA generation: every category on hand-built annotations whose answer is obvious, threshold
margins, false positives, record formats, splits, letter balance and the est-vs-gt agreement."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mllm4d_lite import prompts
from mllm4d_lite.config import ConfigError
from mllm4d_lite.curation import synth
from mllm4d_lite.curation.annotation import AnnotationError, annotation_from_gt, annotation_from_gt_dir, load_annotations
from mllm4d_lite.eval import answers
from mllm4d_lite.qa import stage
from mllm4d_lite.qa.agreement import agreement
from mllm4d_lite.qa.builders import generate_questions
from mllm4d_lite.qa.config import QAConfig
from mllm4d_lite.qa.dataset import _limit_answer_share, build_datasets, split_clips
from mllm4d_lite.qa.motion import smooth_track
from mllm4d_lite.qa.vocabulary import CATEGORIES, option_rank
from mllm4d_lite.train import rewards

N = 16
FPS = 8.0


def yaw_matrix(turn_deg: float) -> np.ndarray:
    """Camera rotation turning by ``turn_deg`` in the top-down view (positive = counter-clockwise
    seen from above = towards -x = left). Forward axis = third column."""
    heading = math.radians(90.0 + turn_deg)  # forward starts along +z = heading 90 deg
    fwd = np.array([math.cos(heading), 0.0, math.sin(heading)])
    down = np.array([0.0, 1.0, 0.0])
    right = np.cross(down, fwd)
    return np.stack([right, down, fwd], axis=1)


def make_ann(clip_id="clip", objects=(), cam_end=(0.0, 0.0, 0.0), cam_turn_deg=0.0, n=N, clip_dir=None):
    """objects: dicts with label, start, end (world m), optional yaw_deg (start, end), visible (n bools)."""
    s = np.linspace(0.0, 1.0, n)
    c2w, cams = [], []
    for t in range(n):
        m = np.eye(4)
        m[:3, :3] = yaw_matrix(cam_turn_deg * s[t])
        m[:3, 3] = np.asarray(cam_end) * s[t]
        c2w.append(m.tolist())
        cams.append(m[:3, 3].tolist())
    objs = []
    for i, o in enumerate(objects):
        start, end = np.asarray(o["start"], float), np.asarray(o["end"], float)
        vis = o.get("visible", [True] * n)
        y0, y1 = o.get("yaw_deg", (0.0, 0.0))
        objs.append({
            "id": i + 1, "label": o["label"],
            "centers": [(start + (end - start) * s[t]).tolist() if vis[t] else None for t in range(n)],
            "yaw_rad": [math.radians(y0 + (y1 - y0) * s[t]) if vis[t] else None for t in range(n)],
        })
    return {"clip_id": clip_id, "num_frames": n, "fps": FPS, "clip_dir": clip_dir or f"/data/clips/{clip_id}",
            "source": "test", "camera_to_world": c2w, "camera_centers": cams, "objects": objs, "quality": {}}


def questions(ann, cfg=None, category=None):
    qs = generate_questions(ann, cfg or QAConfig(), capped=False)
    return [q for q in qs if category is None or q.category == category]


def one(ann, category, subject, cfg=None):
    found = [q for q in questions(ann, cfg, category) if q.subject == subject]
    assert len(found) == 1, f"expected one {category} question about {subject}, got {found}"
    return found[0]


# ---------------------------------------------------------------- every category, obvious answers

SCENE = make_ann(objects=[
    {"label": "red cube", "start": [0.5, 0.5, 4.0], "end": [-1.0, 0.5, 4.0]},          # left 1.5 m
    {"label": "blue sphere", "start": [-0.5, 0.5, 6.0], "end": [-0.5, 0.5, 3.0]},     # towards 3 m
    {"label": "green cylinder", "start": [1.5, 0.5, 6.0], "end": [1.5, 0.5, 6.0], "yaw_deg": (0, 90)},  # static, ccw
])


@pytest.mark.parametrize("label,answer", [("red cube", "left"), ("blue sphere", "towards the camera"),
                                          ("green cylinder", "not moving")])
def test_object_direction(label, answer):
    q = one(SCENE, "object_direction", label)
    assert q.answer == answer
    assert answer not in q.distractors and len(set(q.distractors)) == 3


@pytest.mark.parametrize("end,answer", [([2.0, 0.5, 4.0], "right"), ([0.0, 0.5, 6.0], "away from the camera")])
def test_object_direction_right_and_away(end, answer):
    ann = make_ann(objects=[{"label": "red cube", "start": [0.0, 0.5, 4.0], "end": end}])
    assert one(ann, "object_direction", "red cube").answer == answer


def test_object_direction_is_in_first_frame_world_not_camera():
    # camera slides 1.5 m right, object static: in the moving camera it drifts left, in the world it is still
    ann = make_ann(objects=[{"label": "red cube", "start": [0.0, 0.5, 4.0], "end": [0.0, 0.5, 4.0]}], cam_end=(1.5, 0, 0))
    assert one(ann, "object_direction", "red cube").answer == "not moving"
    assert one(ann, "camera_direction", "camera").answer == "to the right"


def test_object_approach_uses_camera_motion():
    # static object, camera drives 2 m forward towards it: the object gets closer to the camera
    ann = make_ann(objects=[{"label": "red cube", "start": [0.0, 0.5, 6.0], "end": [0.0, 0.5, 6.0]}], cam_end=(0, 0, 2.0))
    assert one(ann, "object_approach", "red cube").answer == "getting closer to the camera"
    ann = make_ann(objects=[{"label": "red cube", "start": [0.0, 0.5, 3.0], "end": [0.0, 0.5, 5.0]}])
    assert one(ann, "object_approach", "red cube").answer == "getting farther from the camera"
    assert one(SCENE, "object_approach", "green cylinder").answer == "staying at about the same distance"


@pytest.mark.parametrize("cam_end,answer", [((0, 0, 1.0), "forward"), ((0, 0, -1.0), "backward"),
                                            ((-1.0, 0, 0), "to the left"), ((0.05, 0, 0), "not moving")])
def test_camera_direction(cam_end, answer):
    assert one(make_ann(cam_end=cam_end), "camera_direction", "camera").answer == answer


@pytest.mark.parametrize("turn,answer", [(-30.0, "turning right"), (30.0, "turning left"), (1.0, "not turning")])
def test_camera_rotation(turn, answer):
    ann = make_ann(cam_turn_deg=turn)
    if turn < 0:  # turning right must bring the forward axis towards +x
        assert np.asarray(ann["camera_to_world"][-1])[0, 2] > 0.3
    assert one(ann, "camera_rotation", "camera").answer == answer


def test_camera_rotation_beyond_180_is_not_folded():
    assert one(make_ann(cam_turn_deg=-200.0), "camera_rotation", "camera").answer == "turning right"


@pytest.mark.parametrize("yaw,answer", [((0, 90), "counter-clockwise"), ((10, -60), "clockwise"),
                                        ((0, 2), "not rotating"), ((170, 260), "counter-clockwise")])
def test_object_rotation(yaw, answer):
    ann = make_ann(objects=[{"label": "red cube", "start": [0, 0.5, 4], "end": [0, 0.5, 4], "yaw_deg": yaw}])
    assert one(ann, "object_rotation", "red cube").answer == answer


def test_object_rotation_skipped_without_yaw():
    ann = make_ann(objects=[{"label": "red cube", "start": [0, 0.5, 4], "end": [0, 0.5, 4]}])
    ann["objects"][0]["yaw_rad"] = [None] * N
    assert questions(ann, category="object_rotation") == []


def test_counting():
    qs = {q.key: q for q in questions(SCENE, category="counting")}
    assert qs["left"].answer == "1" and qs["towards"].answer == "1"
    assert qs["right"].answer == "0" and qs["away"].answer == "0"
    assert qs["moving"].answer == "2" and qs["static"].answer == "1"
    assert all(len(set(q.distractors + [q.answer])) == 4 for q in qs.values())
    # every object's centres at both ends are the ST-CoT state (frame-major)
    sol = qs["left"].solution()
    assert len(sol["object_center"]) == 6 and sol["object_center"][0] == [0.5, 0.5, 4.0]
    assert sol["object_center"][3] == [-1.0, 0.5, 4.0]


def test_false_positive_absent_object():
    qs = questions(SCENE, category="false_positive")
    assert len(qs) == QAConfig().qa_false_positives_per_clip
    present = {o["label"] for o in SCENE["objects"]}
    for q in qs:
        assert q.subject not in present
        assert q.answer == f"no {q.subject} there" and q.subject in q.question
        assert q.solution()["object_center"] == [] and len(q.solution()["camera_center"]) == 2
    # the same wording appears as a distractor in ordinary questions, so it is not a give-away
    assert any(q.distractors.count("no red cube there") for q in questions(SCENE) if q.subject == "red cube")


def test_relative_position_and_speed():
    rel = one(SCENE, "relative_position", "blue sphere|red cube")
    d0 = math.dist([-0.5, 0.5, 6.0], [0.5, 0.5, 4.0])
    d1 = math.dist([-0.5, 0.5, 3.0], [-1.0, 0.5, 4.0])
    assert d1 < d0 - 0.3 and rel.answer == "they get closer together"
    speed = one(SCENE, "speed_comparison", "blue sphere|red cube")
    assert speed.answer == "the blue sphere"  # 3 m vs 1.5 m in the same time
    assert one(SCENE, "speed_comparison", "green cylinder|red cube").answer == "the red cube"
    ann = make_ann(objects=[{"label": "a", "start": [0, 0, 4], "end": [1, 0, 4]},
                            {"label": "b", "start": [0, 0, 6], "end": [-1.05, 0, 6]}])
    assert one(ann, "speed_comparison", "a|b").answer == "about the same speed"
    ann = make_ann(objects=[{"label": "a", "start": [0, 0, 4], "end": [0, 0, 4]},
                            {"label": "b", "start": [1, 0, 6], "end": [1, 0, 6]}])
    assert one(ann, "speed_comparison", "a|b").answer == "neither is moving"
    assert one(ann, "relative_position", "a|b").answer == "their distance stays about the same"


def test_numeric_questions():
    q = one(SCENE, "object_distance", "red cube")
    assert q.question_type == "numeric" and q.answer == "1.5" and q.value == pytest.approx(1.5)
    assert [q.subject for q in questions(SCENE, category="object_distance")] == ["red cube", "blue sphere"]  # not the static one
    cam = one(make_ann(cam_end=(0.6, 0, 0.8)), "camera_distance", "camera")
    assert cam.answer == "1.0"
    pair = one(SCENE, "object_pair_distance", "blue sphere|red cube")
    assert pair.value == pytest.approx(math.dist([-0.5, 0.5, 3.0], [-1.0, 0.5, 4.0]), abs=0.01)
    assert questions(make_ann(cam_end=(0.1, 0, 0)), category="camera_distance") == []


def test_smooth_track():
    t = np.arange(16, dtype=float)
    truth = np.stack([0.1 * t, 0.5 + 0 * t, 4 - 0.01 * t ** 2], 1)  # constant acceleration: kept exactly
    np.testing.assert_allclose(smooth_track(truth, 2, 0.1), truth, atol=1e-9)
    noisy = truth + np.random.default_rng(0).normal(0, 0.03, truth.shape)
    noisy[0] += [0.5, 0, 0]  # one bad first frame (object half out of view)
    noisy[5] = np.nan
    fit = smooth_track(noisy, 2, 0.1)
    assert np.isnan(fit[5]).all()
    assert np.linalg.norm(fit[0] - truth[0]) < 0.06 and np.abs(fit[[1, 2, 3, 15]] - truth[[1, 2, 3, 15]]).max() < 0.06
    np.testing.assert_array_equal(smooth_track(noisy, 0, 0.1), noisy)  # degree 0: raw
    # a direction question is not decided by that single bad frame
    ann = make_ann(objects=[{"label": "red cube", "start": [0, 0.5, 4], "end": [0, 0.5, 4]}])
    ann["objects"][0]["centers"][0] = [0.6, 0.5, 4.0]
    assert one(ann, "object_direction", "red cube").answer == "not moving"
    assert one(ann, "object_direction", "red cube", QAConfig(qa_smooth_degree=0)).answer == "left"


# ---------------------------------------------------------------- threshold margins


@pytest.mark.parametrize("dist,expect", [(0.10, "not moving"), (0.2, None), (0.28, None), (0.4, "left")])
def test_translation_margin(dist, expect):
    ann = make_ann(objects=[{"label": "red cube", "start": [0, 0.5, 4], "end": [-dist, 0.5, 4]}])
    qs = questions(ann, category="object_direction")
    assert [q.answer for q in qs] == ([] if expect is None else [expect])


def test_margins_are_configurable():
    ann = make_ann(objects=[{"label": "red cube", "start": [0, 0.5, 4], "end": [-0.2, 0.5, 4]}])
    cfg = QAConfig(qa_static_max_m=0.05, qa_moving_min_m=0.1)
    assert one(ann, "object_direction", "red cube", cfg).answer == "left"


def test_diagonal_and_vertical_motion_dropped():
    diag = make_ann(objects=[{"label": "red cube", "start": [0, 0.5, 4], "end": [1.0, 0.5, 5.1]}])
    assert questions(diag, category="object_direction") == []
    assert one(diag, "object_distance", "red cube").value == pytest.approx(math.hypot(1.0, 1.1), abs=0.01)
    up = make_ann(objects=[{"label": "red cube", "start": [0, 0.5, 4], "end": [0.5, -0.5, 4]}])
    assert questions(up, category="object_direction") == []
    # 30 deg off the x axis is clear enough
    ok = make_ann(objects=[{"label": "red cube", "start": [0, 0.5, 4], "end": [1.0, 0.5, 4.4]}])
    assert one(ok, "object_direction", "red cube").answer == "right"


def test_turn_and_rotation_margins_and_speed_ratio():
    assert questions(make_ann(cam_turn_deg=6.0), category="camera_rotation") == []
    ann = make_ann(objects=[{"label": "red cube", "start": [0, 0.5, 4], "end": [0, 0.5, 4], "yaw_deg": (0, 10)}])
    assert questions(ann, category="object_rotation") == []
    ann = make_ann(objects=[{"label": "a", "start": [0, 0, 4], "end": [1, 0, 4]},
                            {"label": "b", "start": [0, 0, 6], "end": [-1.3, 0, 6]}])  # ratio 1.3: dropped
    assert questions(ann, category="speed_comparison") == []


def test_visibility_segment_and_duplicate_labels():
    vis = [t >= 4 for t in range(N)]  # hidden in the first 4 frames
    ann = make_ann(objects=[{"label": "red cube", "start": [1, 0.5, 4], "end": [-1, 0.5, 4], "visible": vis},
                            {"label": "cone", "start": [0, 0, 5], "end": [0, 0, 5]},
                            {"label": "cone", "start": [1, 0, 5], "end": [1, 0, 5]}])
    q = one(ann, "object_direction", "red cube")
    assert q.frames == (4, N - 1)
    assert q.solution()["object_center"][0] == pytest.approx([1 - 2 * 4 / (N - 1), 0.5, 4], abs=0.01)
    assert not [q for q in questions(ann) if q.subject == "cone"]  # ambiguous name: never asked about
    rarely = make_ann(objects=[{"label": "red cube", "start": [1, 0.5, 4], "end": [-1, 0.5, 4],
                                "visible": [t < 3 for t in range(N)]}])
    assert questions(rarely, category="object_direction") == []


# ---------------------------------------------------------------- records, splits, balance


def random_scene(i: int, rng: random.Random) -> dict:
    """A clip like the synthetic generator's: 1-4 named objects, static or moving >= 0.5 m along
    an axis, camera static / translating / turning."""
    labels = rng.sample(["red cube", "blue sphere", "yellow cylinder", "green cone", "purple cube"], rng.randint(1, 4))
    objs = []
    for lab in labels:
        start = [rng.uniform(-1.5, 1.5), 0.5, rng.uniform(3, 7)]
        move = rng.choice([[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 0, 1], [0, 0, -1]])
        dist = rng.uniform(0.5, 2.0)
        objs.append({"label": lab, "start": start, "end": [s + m * dist for s, m in zip(start, move)],
                     "yaw_deg": (0, rng.choice([0, 60, -60]))})
    cam = rng.choice([((0, 0, 0), 0.0), ((0, 0, 1.2), 0.0), ((-1.0, 0, 0), 0.0), ((0, 0, 0), 25.0), ((0, 0, 0), -25.0)])
    return make_ann(f"clip_{i:03d}", objs, cam_end=cam[0], cam_turn_deg=cam[1])


def test_build_datasets_formats_splits_and_balance(tmp_path):
    rng = random.Random(0)
    anns = [random_scene(i, rng) for i in range(32)]
    out = tmp_path / "qa"
    summary = build_datasets(anns, out, QAConfig())
    sft = [json.loads(l) for l in (out / "sft.jsonl").read_text().splitlines()]
    cot = [json.loads(l) for l in (out / "cot.jsonl").read_text().splitlines()]
    rft = [json.loads(l) for l in (out / "rft.jsonl").read_text().splitlines()]
    bench = json.loads((out / "bench.json").read_text())
    assert json.loads((out / "qa_summary.json").read_text()) == summary
    assert summary["total_questions"] >= 500
    assert set(summary["per_category"]["train"]) == set(CATEGORIES)
    assert set(summary["per_category"]["bench"]) == set(CATEGORIES)

    train_clips = {r["clip_id"] for r in sft}
    bench_clips = {r["clip_id"] for r in bench}
    assert train_clips and bench_clips and not train_clips & bench_clips
    assert {r["clip_id"] for r in cot} == {r["clip_id"] for r in rft} == train_clips
    assert len(bench_clips) == 8
    assert len({r["id"] for r in sft}) == len(sft) and len({r["id"] for r in bench}) == len(bench)

    for split, recs in (("train", sft), ("bench", bench)):
        letters = Counter(r["answer_letter"] for r in recs if r["question_type"] == "multiple-choice")
        total = sum(letters.values())
        assert all(abs(letters[lt] / total - 0.25) <= 0.05 for lt in "ABCD"), letters
        assert summary["answer_letters"][split]["A"]["count"] == letters["A"]

    for r in sft + bench:
        assert r["video"] == f"../../../data/clips/{r['clip_id']}/left.mp4" or r["video"].endswith(f"{r['clip_id']}/left.mp4")
        assert (out / r["video"]).resolve() == Path(f"/data/clips/{r['clip_id']}/left.mp4").resolve()
        if r["question_type"] == "multiple-choice":
            assert sorted(r["choices"]) == ["A", "B", "C", "D"] and len(set(r["choices"].values())) == 4
            assert r["choices"][r["answer_letter"]] == r["answer"]
        else:
            assert r["choices"] is None and float(r["answer"]) > 0
        sol = r["solution"]
        assert len(sol["camera_center"]) == 2 and len(sol["object_center"]) % 2 == 0
        assert sol["frames"][0] < sol["frames"][1]
    for r in sft:
        assert r["prompt"] == prompts.direct_prompt(r["question"], r["choices"])
        assert r["response"] == (r["answer_letter"] if r["choices"] else r["answer"])
    for r in cot:
        assert r["system"] == prompts.ST_COT_SYSTEM_PROMPT
        assert r["prompt"] == prompts.st_cot_prompt(r["question"], r["choices"])
        tag = r["answer_letter"] if r["choices"] else r["answer"]
        assert r["response"].startswith("<thinking>") and r["response"].endswith(f"</thinking><answer>{tag}</answer>")
        # the centres stated in the ST-CoT are exactly the RFT solution, in order
        import re
        cams = re.findall(r"Camera Center: \[([^\]]*)\]", r["response"])
        objs = re.findall(r"Object Center: \[([^\]]*)\]", r["response"])
        parse = lambda xs: [[float(v) for v in x.split(",")] for x in xs]
        assert parse(cams) == r["solution"]["camera_center"]
        assert parse(objs) == r["solution"]["object_center"]
    assert all("solution" in r and "system" in r for r in rft)
    # category balance of the training set: rare categories get re-phrased repeats (at most 2 each)
    assert summary["train_rephrased_repeats"] > 0
    assert summary["unique_questions"]["train"] + summary["train_rephrased_repeats"] == len(sft)
    counts = sorted(summary["per_category"]["train"].values())
    assert counts[0] >= 0.4 * counts[len(counts) // 2]
    repeats = [r for r in sft if r["category"] == "camera_distance"]
    assert len({r["question"] for r in repeats}) > 1


def test_rft_fraction_sets_clips_aside_for_grpo(tmp_path):
    rng = random.Random(0)
    anns = [random_scene(i, rng) for i in range(32)]
    plain = build_datasets(anns, tmp_path / "plain", QAConfig())
    summary = build_datasets(anns, tmp_path / "split", QAConfig(rft_fraction=0.25))
    read = lambda name: [json.loads(l) for l in (tmp_path / "split" / name).read_text().splitlines()]
    sft, cot, rft = read("sft.jsonl"), read("cot.jsonl"), read("rft.jsonl")
    bench = json.loads((tmp_path / "split" / "bench.json").read_text())
    train, rft_clips, bench_clips = ({r["clip_id"] for r in recs} for recs in (sft, rft, bench))
    assert summary["num_clips"] == {"train": 16, "rft": 8, "bench": 8}
    assert {r["clip_id"] for r in cot} == train and not train & rft_clips and not (train | rft_clips) & bench_clips
    assert sorted(rft_clips) == summary["clips"]["rft"] and len(rft) == summary["questions"]["rft"] > 0
    # the bench is unchanged by the split; RFT clips come out of the training clips
    assert summary["clips"]["bench"] == plain["clips"]["bench"]
    assert sorted(train | rft_clips) == plain["clips"]["train"]
    assert (tmp_path / "split" / "bench.json").read_text() == (tmp_path / "plain" / "bench.json").read_text()
    for r in rft:
        assert r["system"] == prompts.ST_COT_SYSTEM_PROMPT and r["prompt"] == prompts.st_cot_prompt(r["question"], r["choices"])
        assert "response" not in r and len(r["solution"]["camera_center"]) == 2
        if r["choices"]:
            assert r["choices"][r["answer_letter"]] == r["answer"]
    # small clip counts keep one clip in every split
    assert set(split_clips(["a", "b", "c"], QAConfig(rft_fraction=0.1)).values()) == {"train", "rft", "bench"}
    assert set(split_clips(["a", "b"], QAConfig(rft_fraction=0.4)).values()) == {"train", "bench"}
    for bad in (QAConfig(rft_fraction=-0.1), QAConfig(rft_fraction=0.8)):
        with pytest.raises(ConfigError, match="rft_fraction"):
            bad.validate()


def test_build_datasets_is_deterministic(tmp_path):
    rng = random.Random(1)
    anns = [random_scene(i, rng) for i in range(6)]
    build_datasets(anns, tmp_path / "a", QAConfig(qa_seed=3))
    build_datasets(list(reversed(anns)), tmp_path / "b", QAConfig(qa_seed=3))
    for name in ("sft.jsonl", "cot.jsonl", "rft.jsonl", "bench.json"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    build_datasets(anns, tmp_path / "c", QAConfig(qa_seed=4))
    assert (tmp_path / "a" / "sft.jsonl").read_text() != (tmp_path / "c" / "sft.jsonl").read_text()


def test_fixed_option_order(tmp_path):
    """qa_option_order fixed: the same questions and option sets, listed in the canonical order."""
    rng = random.Random(2)
    anns = [random_scene(i, rng) for i in range(12)]
    build_datasets(anns, tmp_path / "bal", QAConfig())
    build_datasets(anns, tmp_path / "fix", QAConfig(qa_option_order="fixed"))
    bal = {r["id"]: r for r in map(json.loads, (tmp_path / "bal" / "sft.jsonl").read_text().splitlines())}
    fix = [json.loads(l) for l in (tmp_path / "fix" / "sft.jsonl").read_text().splitlines()]
    assert len(fix) == len(bal)
    mc = [r for r in fix if r["question_type"] == "multiple-choice"]
    assert mc
    moved = 0
    for r in fix:
        b = bal[r["id"]]
        assert (r["question"], r["answer"]) == (b["question"], b["answer"])
        if r["choices"] is None:
            assert b["choices"] is None
            continue
        assert sorted(r["choices"].values()) == sorted(b["choices"].values())
        texts = [r["choices"][lt] for lt in "ABCD"]
        assert texts == sorted(texts, key=option_rank)
        assert r["choices"][r["answer_letter"]] == r["answer"] and r["response"] == r["answer_letter"]
        assert r["prompt"] == prompts.direct_prompt(r["question"], r["choices"])
        moved += r["choices"] != b["choices"]
    assert moved > len(mc) // 2
    # the canonical order puts direction words first: "left" is A wherever it is an option
    assert all(r["choices"]["A"] == "left" for r in mc if "left" in r["choices"].values())
    with pytest.raises(ConfigError, match="qa_option_order"):
        QAConfig(qa_option_order="sorted").validate()


def test_bad_annotation_errors(tmp_path):
    ann = make_ann(objects=[{"label": "red cube", "start": [0, 0, 4], "end": [1, 0, 4]}])
    bad = dict(ann, camera_centers=ann["camera_centers"][:-1])
    with pytest.raises(AnnotationError, match="camera_centers"):
        build_datasets([bad], tmp_path / "out", QAConfig())
    assert not (tmp_path / "out").exists()
    with pytest.raises(AnnotationError, match="clip_dir"):
        build_datasets([dict(ann, clip_dir="")], tmp_path / "out", QAConfig())
    with pytest.raises(AnnotationError, match="twice"):
        build_datasets([ann, ann], tmp_path / "out", QAConfig())
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "x.json").write_text("{not json")
    with pytest.raises(AnnotationError, match="x.json"):
        load_annotations(tmp_path / "ann")


# ---------------------------------------------------------------- ground truth and agreement


def gt_clip_dir(root: Path, ann: dict) -> Path:
    d = root / ann["clip_id"]
    d.mkdir(parents=True)
    (d / "clip.json").write_text(json.dumps({"clip_id": ann["clip_id"], "fps": FPS, "num_frames": N, "source": "synthetic"}))
    objs = [{"id": o["id"], "label": o["label"],
             "centers_world": [c if c is not None else [9.0, 9.0, 9.0] for c in o["centers"]],
             "yaw_rad": [y if y is not None else 0.0 for y in o["yaw_rad"]],
             "visible": [c is not None for c in o["centers"]]} for o in ann["objects"]]
    (d / "gt.json").write_text(json.dumps({"camera_to_world": ann["camera_to_world"], "objects": objs}))
    return d


def test_annotation_from_gt_masks_invisible(tmp_path):
    vis = [t >= 4 for t in range(N)]
    ann = make_ann("c1", objects=[{"label": "red cube", "start": [1, 0.5, 4], "end": [-1, 0.5, 4], "visible": vis}],
                   cam_end=(0, 0, 1))
    d = gt_clip_dir(tmp_path, ann)
    got = annotation_from_gt_dir(d)
    assert got["objects"][0]["centers"][:4] == [None] * 4 and got["objects"][0]["yaw_rad"][0] is None
    np.testing.assert_allclose(got["objects"][0]["centers"][4:], ann["objects"][0]["centers"][4:])
    np.testing.assert_allclose(got["camera_centers"], ann["camera_centers"])
    assert got["clip_dir"] == str(d)
    from mllm4d_lite.curation.clip import Clip

    gt = json.loads((d / "gt.json").read_text())
    frames = np.zeros((N, 4, 4, 3), np.uint8)
    clip = Clip("c1", frames, frames, np.eye(3), 0.1, FPS, source="synthetic", gt=gt, path=d)
    assert annotation_from_gt(clip) == got


def test_agreement_and_cli_scorecard(tmp_path, capsys):
    rng = random.Random(2)
    gts = [random_scene(i, rng) for i in range(12)]
    noise = np.random.default_rng(0)
    ests = json.loads(json.dumps(gts))
    for ann in ests:  # 3 cm centre noise: every kept answer must survive it
        for o in ann["objects"]:
            o["centers"] = [(np.asarray(c) + noise.normal(0, 0.03, 3)).tolist() for c in o["centers"]]
    result = agreement(ests, gts, QAConfig())
    assert result["mc_matched"] > 100 and result["mc_agreement"] >= 0.95
    assert result["numeric_matched"] > 20 and result["numeric_within_tol"] >= 0.95
    same = agreement(gts, gts, QAConfig())
    assert same["mc_agreement"] == 1.0 and same["numeric_within_tol"] == 1.0 and same["est_only"] == 0
    # a wrong estimate is caught: mirror every object's x motion
    flipped = json.loads(json.dumps(gts))
    for ann in flipped:
        for o in ann["objects"]:
            o["centers"] = [[-c[0], c[1], c[2]] for c in o["centers"]]
    assert agreement(flipped, gts, QAConfig())["mc_agreement"] < 0.9

    clips, ann_dir = tmp_path / "clips", tmp_path / "ann"
    ann_dir.mkdir()
    for gt, est in zip(gts, ests):
        d = gt_clip_dir(clips, gt)
        (ann_dir / f"{est['clip_id']}.json").write_text(json.dumps(dict(est, clip_dir=str(d))))
    assert stage.main(["--annotations", str(ann_dir), "--clips", str(clips), "--out", str(tmp_path / "o"),
                    "--score", "--qa-seed", "5"]) == 0
    line = capsys.readouterr().out
    assert "qa agreement est vs gt: multiple-choice" in line and "median relative error" in line
    assert (tmp_path / "o" / "bench.json").is_file() and (tmp_path / "o" / "qa_config.yaml").is_file()
    assert stage.main(["--use-gt", "--clips", str(clips), "--out", str(tmp_path / "g")]) == 0
    assert json.loads((tmp_path / "g" / "qa_summary.json").read_text())["num_clips"]["bench"] == 3


def test_direction_phase_on_a_bend():
    # right for 8 frames, then towards the camera: whole-clip direction is diagonal (dropped),
    # but the first and second half are clear
    ann = make_ann(objects=[{"label": "red cube", "start": [0, 0.5, 5], "end": [0, 0.5, 5]}], n=17)
    ann["objects"][0]["centers"] = [[1.5 * min(t, 8) / 8, 0.5, 5 - 1.5 * max(t - 8, 0) / 8] for t in range(17)]
    qs = {q.key: q for q in questions(ann, category="object_direction_phase")}
    assert qs["start"].answer == "right" and qs["start"].frames == (0, 8)
    assert qs["end"].answer == "towards the camera" and qs["end"].frames == (8, 16)
    assert "beginning" in qs["start"].question or "first half" in qs["start"].question
    assert questions(ann, category="object_direction") == []


def test_answer_share_cap():
    # 10 static objects, 2 moving: "not moving" would be 10/12 of object_direction
    objs = [{"label": f"box {i}", "start": [i - 5, 0.5, 6], "end": [i - 5, 0.5, 6]} for i in range(10)]
    objs += [{"label": "car", "start": [0, 0.5, 4], "end": [-1, 0.5, 4]},
             {"label": "bus", "start": [0, 0.5, 8], "end": [1, 0.5, 8]}]
    qs = questions(make_ann(objects=objs), category="object_direction")
    kept, dropped = _limit_answer_share(qs, QAConfig(qa_max_answer_share=0.5), "train")
    kept_answers = Counter(q.answer for q in kept)
    assert kept_answers == {"not moving": 2, "left": 1, "right": 1} and dropped == 8
    assert _limit_answer_share(qs, QAConfig(qa_max_answer_share=1.0), "train")[0] == qs


def test_cot_targets_score_full_reward(tmp_path):
    """The ST-CoT targets earn every ST-reward term in full against their own RFT records."""
    rng = random.Random(3)
    build_datasets([random_scene(i, rng) for i in range(8)], tmp_path, QAConfig(bench_fraction=0.0))
    cot = [json.loads(l) for l in (tmp_path / "cot.jsonl").read_text().splitlines()]
    rft = {r["id"]: r for r in (json.loads(l) for l in (tmp_path / "rft.jsonl").read_text().splitlines())}
    cols = {k: [rft[r["id"]][k] for r in cot] for k in ("answer", "choices", "question_type", "solution")}
    assert {r["category"] for r in cot} >= set(CATEGORIES) - {"object_direction_phase"}
    for name in ("format", "accuracy", "camera", "object"):
        scores = rewards.REWARD_FUNCS[name]([r["response"] for r in cot], **cols)
        assert min(scores) == 1.0, name
    # and the evaluator's extraction reads both kinds of targets as right, a wrong letter as wrong
    sft = [json.loads(l) for l in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert all(answers.score_response(r, r["response"])[0] == 1.0 for r in cot + sft)
    assert all(answers.score_response(r, "B" if r["answer_letter"] == "A" else "A")[0] == 0.0
               for r in sft if r["choices"])


def test_synthetic_clips_agree_with_generator_motions():
    """Questions from the synthetic generator's ground truth agree with the motion it was told to make."""
    expect_dir = {"static": "not moving", "forward": "forward", "backward": "backward", "left": "to the left",
                  "right": "to the right", "pan_left": "not moving", "forward_pan_right": "forward"}
    expect_turn = {"static": "not turning", "forward": "not turning", "pan_left": "turning left",
                   "pan_right": "turning right", "forward_pan_right": "turning right", "left": "not turning"}
    checked = Counter()
    for i, motion in enumerate(sorted(set(expect_dir) | set(expect_turn))):
        clip = synth.generate_clip(i, 16, 96, 72, 8.0, camera_motion=motion)
        qs = questions(annotation_from_gt(clip))
        got = {q.category: q.answer for q in qs if q.subject == "camera"}
        if motion in expect_dir:
            assert got["camera_direction"] == expect_dir[motion], motion
        if motion in expect_turn:
            assert got["camera_rotation"] == expect_turn[motion], motion
        moves = {o["label"]: o["motion"] for o in clip.gt["objects"]}
        for q in qs:
            m = moves.get(q.subject, "")
            if q.category == "object_rotation":
                want = {"static": "not rotating", "turn_left": "counter-clockwise", "turn_right": "clockwise",
                        "arc_left": "counter-clockwise", "arc_right": "clockwise",
                        "translate": "not rotating"}.get(m.split("_")[0] if m.startswith("translate") else m)
                assert want is None or q.answer == want, (motion, q.subject, m, q.answer)
                checked["rotation"] += 1
            if q.category == "object_direction" and m in ("static", "translate_left", "translate_right",
                                                          "translate_toward", "translate_away"):
                assert q.answer == {"static": "not moving", "translate_left": "left", "translate_right": "right",
                                    "translate_toward": "towards the camera", "translate_away": "away from the camera"}[m]
                checked["direction"] += 1
    assert checked["rotation"] >= 5 and checked["direction"] >= 5, checked


def test_edge_cases(tmp_path):
    # no objects: camera questions and false positives only; two frames; one clip -> all train
    ann = make_ann(objects=[], cam_end=(0, 0, 1.0), n=2)
    cats = {q.category for q in questions(ann)}
    assert cats == {"camera_direction", "camera_rotation", "camera_distance", "false_positive"}
    summary = build_datasets([ann], tmp_path, QAConfig())
    assert summary["num_clips"] == {"train": 1} and summary["questions"]["bench"] == 0
    assert json.loads((tmp_path / "bench.json").read_text()) == []


def test_cli_errors(tmp_path, capsys):
    assert stage.main(["--use-gt", "--out", str(tmp_path / "o")]) == 2
    assert "--use-gt needs --clips" in capsys.readouterr().err
    assert stage.main(["--annotations", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "no annotations in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        stage.main(["--qa-bogus", "1"])
    assert stage.main(["--use-gt", "--clips", str(tmp_path), "--bench-fraction", "1.5"]) == 2
    assert "bench_fraction" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- annotations that hold only moving objects

def moving_only(ann: dict, **extra) -> dict:
    """``ann`` without its objects that do not move (as the mask-free flow backend reports it)."""
    keep = [o for o in ann["objects"] if np.linalg.norm(np.subtract(o["centers"][-1], o["centers"][0])) > 0.3]
    return {**ann, "objects": keep, **extra}


@pytest.mark.parametrize("extra", [{"object_coverage": "moving"},
                                   {"quality": {"objects": "flow: moving objects from residual scene flow"}}])
def test_moving_coverage_counts_only_what_it_holds(extra, tmp_path):
    ann = moving_only(SCENE, **extra)  # the static green cylinder is left out
    assert len(ann["objects"]) == 2
    full = {q.key: q for q in questions(SCENE, category="counting")}
    part = {q.key: q for q in questions(ann, category="counting")}
    # "how many are not moving" would count the left-out cylinder: not asked; the rest unchanged
    assert sorted(part) == sorted(set(full) - {"static"})
    assert all(part[k].answer == full[k].answer for k in part)
    assert part["moving"].answer == "2" and "Only the objects seen moving" in part["moving"].reasoning
    # "no yellow cone there" is unknown when static objects are not annotated
    assert questions(ann, category="false_positive") == [] and questions(SCENE, category="false_positive")
    result = agreement([ann], [SCENE], QAConfig())
    assert result["per_category"]["counting"] == {"matched": 5, "agree": 5} and result["est_only"] == 0
    summary = build_datasets([dict(ann, clip_id="m"), dict(SCENE, clip_id="a")], tmp_path, QAConfig())
    assert summary["clips_moving_objects_only"] == ["m"]
    assert "clips_moving_objects_only" not in build_datasets([SCENE], tmp_path / "all", QAConfig())


def test_bad_object_coverage_is_an_error(tmp_path):
    with pytest.raises(AnnotationError, match="object_coverage 'some'.*'all', 'moving'"):
        build_datasets([dict(SCENE, object_coverage="some")], tmp_path / "out", QAConfig())
    assert not (tmp_path / "out").exists()
    assert len(questions(dict(SCENE, object_coverage="all"))) == len(questions(SCENE))


def test_moving_only_ground_truth_agrees_with_full_ground_truth():
    # tiny_data's ground truth without its static objects, declared "moving": every question it asks,
    # the full ground truth asks too, with the same answer (counting included)
    root = Path(__file__).resolve().parent.parent / "tiny_data"
    full, part = [], []
    for d in sorted(root.glob("synth_s*")):
        gt = json.loads((d / "gt.json").read_text())
        static = {g["id"] for g in gt["objects"] if g["motion"] == "static"}
        ann = annotation_from_gt_dir(d)
        full.append(ann)
        part.append({**ann, "objects": [o for o in ann["objects"] if o["id"] not in static], "object_coverage": "moving"})
    result = agreement(part, full, QAConfig())
    assert result["est_only"] == 0 and result["per_category"]["counting"]["matched"] >= 50
    assert all(c["agree"] == c["matched"] for c in result["per_category"].values()), result["disagreements"]
    assert "false_positive" not in result["per_category"]
