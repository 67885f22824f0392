"""ST-reward tests: a table of hand-written completions with exact expected scores.

Expected values are worked out by hand from the definitions in ``mllm4d_lite/train/rewards.py``
(release formulas plus the kit's deviations D1-D7); errors in metres, e.g. a camera off by
5 m at the first frame and exact at the last scores exp(-(5 + 0) / 2) = exp(-2.5).
"""

from __future__ import annotations

import doctest
import math
import pickle
from dataclasses import dataclass, field
from typing import Any

import pytest

from mllm4d_lite.train import rewards
from mllm4d_lite.train.rewards import (
    REWARD_FUNCS,
    REWARD_STATS,
    RELEASE_REWARD_WEIGHTS,
    RewardOptions,
    accuracy_reward,
    camera_reward,
    check_reward_config,
    completion_text,
    format_reward,
    get_reward_funcs,
    object_reward,
    parse_centers,
    weighted_total,
)

E = math.exp

# ----------------------------------------------------------------------------- ground truths

CHOICES = {"A": "left", "B": "right", "C": "forward", "D": "backward"}  # right answer: C
MC = {"answer": "forward", "choices": CHOICES, "question_type": "multiple-choice"}
NUM = {"answer": "10.0", "choices": None, "question_type": "numeric"}  # 10 metres

SOL = {"camera_center": [[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]],
       "object_center": [[1.0, 0.0, 5.0], [1.0, 0.0, 3.0]], "frames": [0, 7]}
SOL_NO_OBJ = {"camera_center": [[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]], "object_center": [], "frames": [0, 7]}
SOL_HALF_OBJ = {"camera_center": [[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]],  # object unseen at the first frame
                "object_center": [None, [1.0, 0.0, 3.0]], "frames": [0, 7]}

# The exact ST-CoT state for SOL, as the kit's prompt asks for it.
GOOD_THINK = ("<thinking>First frame: Camera Center: [0, 0, 0], Object Center: [1, 0, 5]. "
              "Last frame: Camera Center: [0, 0, 2], Object Center: [1, 0, 3]. "
              "The camera moved 2 m along +z: forward.</thinking>")


@dataclass
class Row:
    name: str
    completion: Any
    expected: tuple[float, float, float, float]  # format, accuracy, camera, object (kit default)
    columns: dict = field(default_factory=lambda: dict(MC))
    solution: dict = field(default_factory=lambda: SOL)
    release: tuple[float, float, float, float] | None = None  # with strict_release=True, where checked


TABLE = [
    # --- well-formed and accuracy variants
    Row("well_formed_letter", GOOD_THINK + "<answer>C</answer>", (1.0, 1.0, 1.0, 1.0),
        release=(1.0, 0.0, 1.0, 1.0)),  # release: "C" != "forward" (exact string)
    Row("option_text_instead_of_letter", GOOD_THINK + "<answer>forward</answer>", (1.0, 1.0, 1.0, 1.0),
        release=(1.0, 1.0, 1.0, 1.0)),
    Row("letter_and_text", GOOD_THINK + "<answer>(C) forward</answer>", (1.0, 1.0, 1.0, 1.0),
        release=(1.0, 0.0, 1.0, 1.0)),
    Row("lowercase_letter", GOOD_THINK + "<answer>c</answer>", (1.0, 1.0, 1.0, 1.0)),
    Row("wrong_letter", GOOD_THINK + "<answer>A</answer>", (1.0, 0.0, 1.0, 1.0), release=(1.0, 0.0, 1.0, 1.0)),
    Row("wrong_option_text", GOOD_THINK + "<answer>backward</answer>", (1.0, 0.0, 1.0, 1.0)),
    Row("two_letters_is_no_answer", GOOD_THINK + "<answer>A or C</answer>", (1.0, 0.0, 1.0, 1.0)),
    # --- centre errors: exp(-mean L2 error)
    Row("centres_off", "<thinking>First frame: Camera Center: [3, 4, 0], Object Center: [1, 0, 5]. Last frame: "
        "Camera Center: [0, 0, 2], Object Center: [1, 0, 4]. Forward.</thinking><answer>C</answer>",
        (1.0, 1.0, E(-(5.0 + 0.0) / 2), E(-(0.0 + 1.0) / 2)),
        release=(1.0, 0.0, E(-2.5), E(-0.5))),
    Row("signed_decimal_scientific", "<thinking>Camera Center: [3e-1, -4E-1, 0.0] then Camera Center: [0, 0, 2.0e0]; "
        "Object Center: [+1.0, -0, 5.] then Object Center: [1.00, 0.00, 3.00].</thinking><answer>C</answer>",
        (1.0, 1.0, E(-(0.5 + 0.0) / 2), 1.0), release=(1.0, 0.0, E(-0.25), 1.0)),
    Row("case_and_spacing", "<thinking>camera center : [0,0,0] and OBJECT CENTER:[1,0,5] at the start; "
        "Camera  Center :[0,0,2] and object Center: [1,0,3] at the end.</thinking><answer>C</answer>",
        (1.0, 1.0, 1.0, 1.0),
        release=(0.5 + 0.1, 0.0, 0.0, 0.0)),  # release labels are case- and space-exact: no centre read
    # --- missing or malformed tags
    Row("no_tags_declared_answer", "The camera moves forward, so the answer is C.", (0.0, 1.0, 0.0, 0.0),
        release=(0.0, 0.0, 0.0, 0.0)),
    Row("no_answer_tag_lone_letter", "<thinking>Camera Center: [0, 0, 0], Object Center: [1, 0, 5]; "
        "Camera Center: [0, 0, 2], Object Center: [1, 0, 3].</thinking>\nC", (0.4 + 0.1, 1.0, 1.0, 1.0),
        release=(0.4 + 0.1, 0.0, 1.0, 1.0)),
    Row("no_thinking", "<answer>C</answer>", (0.0, 1.0, 0.0, 0.0), release=(0.0, 0.0, 0.0, 0.0)),
    Row("unclosed_thinking_reasoning_names_the_option", "<thinking>Camera Center: [0, 0, 0], Object Center: "
        "[1, 0, 5]; Camera Center: [0, 0, 2], Object Center: [1, 0, 3]; it moved forward (forward +). <answer C",
        (0.4, 0.0, 1.0, 1.0), release=(0.4, 0.0, 1.0, 1.0)),  # D7: the reasoning's "forward" is no answer
    Row("broken_answer_tags_after_thinking", GOOD_THINK.replace("</thinking>", "</thinking ") + "<answer>C</answer",
        (0.4, 0.0, 1.0, 1.0), release=(0.4, 0.0, 1.0, 1.0)),
    Row("short_thinking_no_centres", "<thinking>forward</thinking><answer>C</answer>", (0.5, 1.0, 0.0, 0.0),
        release=(0.5 + 0.1, 0.0, 0.0, 0.0)),  # D3: release counts the tags (28 chars > 20)
    Row("thinking_of_20_chars", "<thinking>moving forward, so C</thinking><answer>C</answer>", (0.5, 1.0, 0.0, 0.0),
        release=(0.5 + 0.1, 0.0, 0.0, 0.0)),  # 20 is not longer than 20
    Row("thinking_of_21_chars", "<thinking> moving forward, so C. </thinking><answer>C</answer>",
        (0.5 + 0.1, 1.0, 0.0, 0.0), release=(0.5 + 0.1, 0.0, 0.0, 0.0)),  # stripped: 21
    Row("padded_thinking", "<thinking>\n\n\n\n\n\n\n\n\n\n forward \n\n\n\n\n\n\n\n\n\n</thinking><answer>C</answer>",
        (0.5, 1.0, 0.0, 0.0), release=(0.5 + 0.1, 0.0, 0.0, 0.0)),  # D3: whitespace is not thinking
    Row("empty_thinking", "<thinking></thinking><answer>C</answer>", (0.5, 1.0, 0.0, 0.0),
        release=(0.5 + 0.1, 0.0, 0.0, 0.0)),  # "<thinking></thinking>" is 21 characters
    Row("empty_answer", "<thinking>First frame: Camera Center: [0, 0, 0], Object Center: [1, 0, 5]. Last frame: "
        "Camera Center: [0, 0, 2], Object Center: [1, 0, 3]. Answer: C</thinking><answer> </answer>",
        (0.4 + 0.1, 0.0, 1.0, 1.0), release=(1.0, 0.0, 1.0, 1.0)),  # D1
    Row("repeated_blocks", GOOD_THINK + "<answer>C</answer><thinking>Let me answer again.</thinking><answer>C</answer>",
        (0.0, 1.0, 1.0, 1.0), release=(1.0, 0.0, 1.0, 1.0)),  # D2
    # --- null centres
    Row("camera_null_but_known", "<thinking>First frame: Camera Center: null, Object Center: [1, 0, 5]. Last frame: "
        "Camera Center: null, Object Center: [1, 0, 3]. Forward.</thinking><answer>C</answer>",
        (1.0, 1.0, 0.0, 1.0), release=(0.5 + 0.1, 0.0, 0.0, 1.0)),  # release: bare null is not "stated"
    Row("object_null_and_unknown", "<thinking>First frame: Camera Center: [0, 0, 0], Object Center: null. Last frame: "
        "Camera Center: [0, 0, 2], Object Center: null. Forward.</thinking><answer>C</answer>",
        (1.0, 1.0, 1.0, 1.0), solution=SOL_NO_OBJ, release=(0.5 + 0.1, 0.0, 1.0, 1.0)),
    Row("bracketed_null", "<thinking>First frame: Camera Center: [0, 0, 0], Object Center: [null, null, null]. Last "
        "frame: Camera Center: [0, 0, 2], Object Center: [null]. Forward.</thinking><answer>C</answer>",
        (1.0, 1.0, 1.0, 1.0), solution=SOL_NO_OBJ, release=(1.0, 0.0, 1.0, 1.0)),
    Row("object_stated_but_none", GOOD_THINK + "<answer>C</answer>", (1.0, 1.0, 1.0, 0.0), solution=SOL_NO_OBJ,
        release=(1.0, 0.0, 1.0, 0.0)),
    Row("null_in_its_slot", "<thinking>First frame: Camera Center: [0, 0, 0], Object Center: null. Last frame: "
        "Camera Center: [0, 0, 2], Object Center: [1, 0, 3]. Forward.</thinking><answer>C</answer>",
        (1.0, 1.0, 1.0, 1.0), solution=SOL_HALF_OBJ, release=(1.0, 0.0, 1.0, 1.0)),
    Row("null_in_wrong_slot", "<thinking>First frame: Camera Center: [0, 0, 0], Object Center: [1, 0, 3]. Last frame: "
        "Camera Center: [0, 0, 2], Object Center: null. Forward.</thinking><answer>C</answer>",
        (1.0, 1.0, 1.0, 0.0), solution=SOL_HALF_OBJ, release=(1.0, 0.0, 1.0, 1.0)),  # D5
    # --- wrong number of centres
    Row("three_camera_centres", "<thinking>First frame: Camera Center: [0, 0, 0], Object Center: [1, 0, 5]. Midway: "
        "Camera Center: [0, 0, 1]. Last frame: Camera Center: [0, 0, 2], Object Center: [1, 0, 3]. Forward."
        "</thinking><answer>C</answer>", (1.0, 1.0, 0.0, 1.0), release=(1.0, 0.0, 0.0, 1.0)),
    Row("one_camera_centre", "<thinking>First frame: Camera Center: [0, 0, 0], Object Center: [1, 0, 5]. Last frame: "
        "Object Center: [1, 0, 3]. Forward.</thinking><answer>C</answer>", (1.0, 1.0, 0.0, 1.0)),
    # --- unparsable centres
    Row("non_numeric_centre", "<thinking>First frame: Camera Center: [x, y, z], Object Center: [1, 0, 5]. Last frame: "
        "Camera Center: [0, 0, 2], Object Center: [1, 0, 3]. Forward.</thinking><answer>C</answer>",
        (1.0, 1.0, 0.0, 1.0), release=(1.0, 0.0, 0.0, 1.0)),
    Row("garbage_centre_when_none", "<thinking>First frame: Camera Center: [0, 0, 0], Object Center: [unknown, 0, 0]. "
        "Last frame: Camera Center: [0, 0, 2], Object Center: null. Forward.</thinking><answer>C</answer>",
        (1.0, 1.0, 1.0, 0.0), solution=SOL_NO_OBJ,
        release=(1.0, 0.0, 1.0, 1.0)),  # D4: release's literal_eval failure empties the list -> "none stated"
    Row("wrong_length_centre", "<thinking>First frame: Camera Center: [0, 0], Object Center: [1, 0, 5]. Last frame: "
        "Camera Center: [0, 0, 2], Object Center: [1, 0, 3]. Forward.</thinking><answer>C</answer>",
        (1.0, 1.0, 0.0, 1.0), release=(1.0, 0.0, 0.0, 1.0)),
    Row("wrong_length_centre_when_none", "<thinking>First frame: Camera Center: [0, 0, 0], Object Center: [1, 2]. "
        "Last frame: Camera Center: [0, 0, 2], Object Center: null. Forward.</thinking><answer>C</answer>",
        (1.0, 1.0, 1.0, 0.0), solution=SOL_NO_OBJ, release=(1.0, 0.0, 1.0, 0.0)),  # a stated (bad) centre
    Row("nested_brackets", "<thinking>First frame: Camera Center: [[0, 0, 0]], Object Center: [1, 0, 5]. Last frame: "
        "Camera Center: [0, 0, 2], Object Center: [1, 0, 3]. Forward.</thinking><answer>C</answer>",
        (1.0, 1.0, 0.0, 1.0), release=(1.0, 0.0, 0.0, 1.0)),
    Row("nan_word", "<thinking>First frame: Camera Center: [nan, 0, 0], Object Center: [1, 0, 5]. Last frame: "
        "Camera Center: [0, 0, 2], Object Center: [1, 0, inf]. Forward.</thinking><answer>C</answer>",
        (1.0, 1.0, 0.0, 0.0), release=(1.0, 0.0, 0.0, 0.0)),
    # --- huge values: exp(-huge) is exactly 0.0, never NaN
    Row("huge_finite_centre", "<thinking>First frame: Camera Center: [1e300, 0, 0], Object Center: [1, 0, 5]. Last "
        "frame: Camera Center: [0, 0, 2], Object Center: [1, 0, 3]. Forward.</thinking><answer>C</answer>",
        (1.0, 1.0, 0.0, 1.0), release=(1.0, 0.0, 0.0, 1.0)),
    Row("beyond_float_range", "<thinking>First frame: Camera Center: [1e999, 0, 0], Object Center: [1, 0, 5]. Last "
        "frame: Camera Center: [0, 0, 2], Object Center: [1, 0, 3]. Forward.</thinking><answer>C</answer>",
        (1.0, 1.0, 0.0, 1.0), release=(1.0, 0.0, 0.0, 1.0)),
    Row("overflowing_error", "<thinking>First frame: Camera Center: [1.7e308, 1.7e308, 1.7e308], Object Center: "
        "[-1.7e308, 0, 5]. Last frame: Camera Center: [0, 0, 2], Object Center: [1, 0, 3]. Forward.</thinking>"
        "<answer>C</answer>", (1.0, 1.0, 0.0, 0.0), release=(1.0, 0.0, 0.0, 0.0)),
    # --- empty and conversational
    Row("empty_string", "", (0.0, 0.0, 0.0, 0.0), release=(0.0, 0.0, 0.0, 0.0)),
    Row("empty_string_nothing_to_state", "", (0.0, 0.0, 0.0, 1.0), solution=SOL_NO_OBJ,
        release=(0.0, 0.0, 0.0, 1.0)),
    Row("conversational", [{"role": "assistant", "content": GOOD_THINK + "<answer>C</answer>"}],
        (1.0, 1.0, 1.0, 1.0), release=(1.0, 0.0, 1.0, 1.0)),
    Row("conversational_parts", [{"role": "assistant", "content": [
        {"type": "text", "text": GOOD_THINK}, {"type": "text", "text": "<answer>forward</answer>"}]}],
        (1.0, 1.0, 1.0, 1.0), release=(1.0, 1.0, 1.0, 1.0)),
    # --- numeric questions: VSI-Bench mean relative accuracy over ten thresholds 0.50 ... 0.95
    Row("numeric_within_5pct", GOOD_THINK + "<answer>10.3</answer>", (1.0, 1.0, 1.0, 1.0), columns=dict(NUM),
        release=(1.0, 0.0, 1.0, 1.0)),
    Row("numeric_exact_text", GOOD_THINK + "<answer>10.0</answer>", (1.0, 1.0, 1.0, 1.0), columns=dict(NUM),
        release=(1.0, 1.0, 1.0, 1.0)),
    Row("numeric_20pct_off", GOOD_THINK + "<answer>12</answer>", (1.0, 6 / 10, 1.0, 1.0), columns=dict(NUM)),
    Row("numeric_32pct_off_with_unit", GOOD_THINK + "<answer>13.2 m</answer>", (1.0, 4 / 10, 1.0, 1.0),
        columns=dict(NUM)),
    Row("numeric_60pct_off", GOOD_THINK + "<answer>4</answer>", (1.0, 0.0, 1.0, 1.0), columns=dict(NUM)),
    Row("numeric_no_number", "<thinking>I cannot judge the distance from these frames.</thinking><answer>far</answer>",
        (0.5 + 0.1, 0.0, 0.0, 0.0), columns=dict(NUM)),
]

FUNCS = (format_reward, accuracy_reward, camera_reward, object_reward)


def _kwargs(row: Row) -> dict:
    return {"answer": [row.columns["answer"]], "choices": [row.columns["choices"]],
            "question_type": [row.columns["question_type"]], "solution": [row.solution]}


def test_table_is_large_and_covers_the_cases():
    assert len(TABLE) >= 25
    assert len({r.name for r in TABLE}) == len(TABLE)
    assert sum(r.release is not None for r in TABLE) >= 25


@pytest.mark.parametrize("row", TABLE, ids=[r.name for r in TABLE])
def test_table_default(row):
    got = tuple(f([row.completion], **_kwargs(row))[0] for f in FUNCS)
    assert got == pytest.approx(row.expected, abs=1e-12), row.name


@pytest.mark.parametrize("row", [r for r in TABLE if r.release], ids=[r.name for r in TABLE if r.release])
def test_table_strict_release(row):
    got = tuple(f([row.completion], strict_release=True, **_kwargs(row))[0] for f in FUNCS)
    assert got == pytest.approx(row.release, abs=1e-12), row.name


def test_table_as_one_batch_keeps_rows_aligned():
    """One call per reward with TRL-style list columns gives the same scores as row by row."""
    kwargs = {"answer": [r.columns["answer"] for r in TABLE], "choices": [r.columns["choices"] for r in TABLE],
              "question_type": [r.columns["question_type"] for r in TABLE], "solution": [r.solution for r in TABLE]}
    completions = [r.completion for r in TABLE]
    for i, f in enumerate(FUNCS):
        got = f(completions, **kwargs)
        assert len(got) == len(TABLE)
        assert all(type(v) is float for v in got)
        assert got == pytest.approx([r.expected[i] for r in TABLE], abs=1e-12), f.__name__


def test_weighted_total_with_release_weights():
    rows = [r for r in TABLE if r.name in ("well_formed_letter", "centres_off", "empty_string")]
    kwargs = {"answer": ["forward"] * 3, "choices": [CHOICES] * 3, "solution": [SOL] * 3}
    scores = {name: REWARD_FUNCS[name]([r.completion for r in rows], **kwargs) for name in REWARD_FUNCS}
    total = weighted_total(scores, RELEASE_REWARD_WEIGHTS)
    assert total == pytest.approx([1.0, 0.2 + 0.6 + 0.1 * E(-2.5) + 0.1 * E(-0.5), 0.0], abs=1e-12)
    with pytest.raises(ValueError, match="no weight"):
        weighted_total(scores, {"format": 0.2})
    with pytest.raises(ValueError, match="differ in length"):
        weighted_total({"format": [1.0], "accuracy": [1.0, 0.0]}, RELEASE_REWARD_WEIGHTS)


# ----------------------------------------------------------------------------- each deviation's switch

def _one(func, completion, solution=SOL, **options):
    return func([completion], solution=[solution], options=RewardOptions(**options), **MC)[0]


def test_each_deviation_switches_alone():
    empty = TABLE[[r.name for r in TABLE].index("empty_answer")].completion
    assert _one(format_reward, empty) == pytest.approx(0.5)
    assert _one(format_reward, empty, empty_answer_guard=False) == pytest.approx(1.0)
    assert _one(accuracy_reward, empty) == 0.0
    # the extractor finds "Answer: C" in the reasoning unless D7 also reads the empty block only
    assert _one(accuracy_reward, empty, empty_answer_guard=False, answer_part_only=False) == 1.0
    assert _one(accuracy_reward, empty, empty_answer_guard=False) == 0.0

    repeated = GOOD_THINK + "<answer>C</answer>" + GOOD_THINK + "<answer>C</answer>"
    assert _one(format_reward, repeated) == 0.0
    assert _one(format_reward, repeated, repeated_block_guard=False) == pytest.approx(1.0)

    short = "<thinking>ok</thinking><answer>C</answer>"
    assert _one(format_reward, short) == pytest.approx(0.5)
    assert _one(format_reward, short, think_inner_length=False) == pytest.approx(0.6)

    lower = "<thinking>camera center: [0, 0, 0] object center: [1, 0, 5] camera center: [0, 0, 2] " \
            "object center: [1, 0, 3]</thinking><answer>C</answer>"
    assert _one(camera_reward, lower) == 1.0
    assert _one(camera_reward, lower, lenient_centers=False) == 0.0

    shifted = TABLE[[r.name for r in TABLE].index("null_in_wrong_slot")].completion
    assert _one(object_reward, shifted, SOL_HALF_OBJ) == 0.0
    assert _one(object_reward, shifted, SOL_HALF_OBJ, position_pairing=False) == 1.0

    broken = "<thinking>Camera Center: [0, 0, 0]; it moved by dz = 2 m (forward +) <answer>"
    assert _one(accuracy_reward, broken) == 0.0
    assert _one(accuracy_reward, broken, answer_part_only=False) == 1.0  # "forward" read from the reasoning

    letter = GOOD_THINK + "<answer>C</answer>"
    assert _one(accuracy_reward, letter) == 1.0
    assert _one(accuracy_reward, letter, choice_matching=False) == 0.0
    assert _one(accuracy_reward, GOOD_THINK + "<answer>forward</answer>", choice_matching=False) == 1.0


def test_release_options_are_all_off_and_default_all_on():
    assert not any(vars(RewardOptions.release()).values())
    assert all(vars(RewardOptions()).values())


def test_mra_uses_ten_explicit_thresholds():
    from mllm4d_lite.eval.answers import MRA_THRESHOLDS  # shared with evaluation

    assert MRA_THRESHOLDS == (0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95)
    # 2.2 vs 2.0 is 10 % off: passes 0.50 ... 0.85 (eight of ten); 1.5 vs 2.0 (25 %): 0.50 ... 0.70 (five).
    got = accuracy_reward(["<answer>2.2</answer>", "<answer>1.5</answer>", "<answer>2</answer>"],
                          answer="2.0", choices=None, question_type="numeric")
    assert got == [0.8, 0.5, 1.0]
    # without question_type: a number and no choices is numeric
    assert accuracy_reward(["<answer>2.2</answer>"], answer="2.0", choices=None) == [0.8]


# ----------------------------------------------------------------------------- parsing

def test_parse_centers_entries():
    text = ("Camera Center: [1, -2.5, 3e-1] camera center : null CAMERA CENTER:[null] Camera Center: [a, b, c] "
            "Camera Center: [1, 2] Camera Center: unknown Object Center: [9, 9, 9]")
    assert parse_centers(text, "camera") == [(1.0, -2.5, 0.3), None, None, "unparsable", "unparsable", "unparsable"]
    assert parse_centers(text, "object") == [(9.0, 9.0, 9.0)]
    # the release: exact label, [...] only, any literal_eval failure empties the list
    assert parse_centers("Camera Center: [1, 2, 3] Camera Center: [0, 0, 1]", "camera", lenient=False) == [
        (1.0, 2.0, 3.0), (0.0, 0.0, 1.0)]
    assert parse_centers("Camera Center: [1, 2, 3] Camera Center: [a, b, c]", "camera", lenient=False) == []


def test_completion_text_forms():
    assert completion_text("x") == "x"
    assert completion_text({"role": "assistant", "content": "x"}) == "x"
    assert completion_text([{"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]) == "x"
    assert completion_text([{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]) == "a\nb"
    for junk in (None, 3, 2.5, b"<answer>C</answer>", [], [1, 2], [{"role": "user", "content": "x"}],
                 [{"role": "assistant", "content": None}], [{"role": "assistant", "content": [{"type": "text"}]}]):
        assert completion_text(junk) is None, junk


# ----------------------------------------------------------------------------- columns

def test_kwargs_broadcasting():
    completions = [GOOD_THINK + "<answer>C</answer>", GOOD_THINK + "<answer>A</answer>", "<answer>forward</answer>"]
    expected = [1.0, 0.0, 1.0]
    # scalars, one-item lists and full lists all work
    assert accuracy_reward(completions, answer="forward", choices=CHOICES) == expected
    assert accuracy_reward(completions, answer=["forward"], choices=[CHOICES]) == expected
    assert accuracy_reward(completions, answer=["forward"] * 3, choices=[CHOICES] * 3,
                           question_type=["multiple-choice"] * 3) == expected
    assert camera_reward(completions, solution=SOL) == [1.0, 1.0, 0.0]
    assert camera_reward(completions, solution=[SOL]) == [1.0, 1.0, 0.0]
    # the release's per-row [dict] form and JSON-string columns are read too
    import json
    assert camera_reward(completions, solution=[[SOL]] * 3) == [1.0, 1.0, 0.0]
    assert object_reward(completions, solution=[json.dumps(SOL)] * 3) == [1.0, 1.0, 0.0]
    assert accuracy_reward(completions, answer="forward", choices=json.dumps(CHOICES)) == expected
    # Arrow struct columns fill absent options with None: ignored
    assert accuracy_reward(["<answer>B</answer>"], answer="right", choices={"A": "left", "B": "right", "C": None}) == [1.0]


def test_wiring_errors_raise_clearly():
    with pytest.raises(ValueError, match="list of completions"):
        format_reward("<answer>C</answer>")
    with pytest.raises(ValueError, match="'answer'"):
        accuracy_reward(["<answer>C</answer>"], choices=CHOICES)
    with pytest.raises(ValueError, match="'solution'"):
        camera_reward(["x"], answer="forward")
    with pytest.raises(ValueError, match="2 items for 3 completions"):
        object_reward(["a", "b", "c"], solution=[SOL, SOL])


def test_trl_call_convention_and_metrics():
    """TRL passes prompts, completion_ids, every dataset column and its hooks as keywords."""
    logged = {}
    completions = [[{"role": "assistant", "content": GOOD_THINK + "<answer>C</answer>"}],
                   [{"role": "assistant", "content": "no idea"}]]
    kwargs = dict(prompts=[[{"role": "user", "content": "q"}]] * 2, completion_ids=[[1, 2], [3]],
                  id=["q1", "q1"], video=["a.mp4"] * 2, question=["?"] * 2, category=["camera_direction"] * 2,
                  clip_id=["c"] * 2, answer=["forward"] * 2, choices=[CHOICES] * 2,
                  question_type=["multiple-choice"] * 2, solution=[SOL] * 2, trainer_state=None,
                  log_extra=lambda column, values: None, log_metric=lambda name, value: logged.update({name: value}))
    for func in get_reward_funcs(["format", "accuracy", "camera", "object"]):
        assert func(completions, **kwargs) == [1.0, 0.0]
    assert logged == {"malformed/format": 0.5, "malformed/accuracy": 0.5, "malformed/camera": 0.5,
                      "malformed/object": 0.5, "accuracy/camera_direction": 0.5}


def test_accuracy_is_logged_per_category():
    """Each category's mean accuracy of the call, so a run shows what GRPO raises and unlearns."""
    logged = {}
    completions = ["<answer>C</answer>", "<answer>A</answer>", "<answer>C</answer>", "<answer>C</answer>",
                   "<answer>B</answer>"]
    scores = accuracy_reward(completions, answer="forward", choices=CHOICES,
                             category=["counting", "counting", "false_positive", "false_positive", None],
                             log_metric=lambda name, value: logged.update({name: value}))
    assert scores == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert logged == {"malformed/accuracy": 0.0, "accuracy/counting": 0.5, "accuracy/false_positive": 1.0}
    logged.clear()
    accuracy_reward(completions[:2], answer="forward", choices=CHOICES,
                    log_metric=lambda name, value: logged.update({name: value}))
    assert logged == {"malformed/accuracy": 0.0}, "no category column: no per-category metric"


# ----------------------------------------------------------------------------- registry

def test_registry_and_names():
    assert list(REWARD_FUNCS) == ["format", "accuracy", "camera", "object"]
    funcs = get_reward_funcs(["accuracy", "format"])
    assert [f.__name__ for f in funcs] == ["accuracy_reward", "format_reward"]
    from trl.trainer.utils import get_callable_name  # the name TRL logs as rewards/<name>/mean

    assert [get_callable_name(f) for f in get_reward_funcs(["format", "camera"], strict_release=True)] == [
        "format_reward", "camera_reward"]
    assert [f.__name__ for f in get_reward_funcs("object,format")] == ["object_reward", "format_reward"]
    for bad in (["format", "fromat"], [], ["format", "format"]):
        with pytest.raises(ValueError):
            get_reward_funcs(bad)


def test_check_reward_config():
    check_reward_config(["format", "accuracy", "camera", "object"], [0.2, 0.6, 0.1, 0.1])
    check_reward_config("format,accuracy", [0.25, 0.75])
    check_reward_config(["accuracy"], None)
    for names, weights, message in ((["format", "accuracy"], [0.2], "2 rewards"),
                                    (["format"], [-1.0], "non-negative"), (["format"], [0.0], "not all zero"),
                                    (["format"], [float("nan")], "finite"), (["formats"], [1.0], "unknown")):
        with pytest.raises(ValueError, match=message):
            check_reward_config(names, weights)


def test_bound_functions_apply_the_mode_and_pickle():
    short = ["<thinking>ok</thinking><answer>C</answer>"]
    default_fn, = get_reward_funcs(["format"])
    strict_fn, = get_reward_funcs(["format"], strict_release=True)
    assert default_fn(short) == [0.5]
    assert strict_fn(short) == [0.6]
    clone = pickle.loads(pickle.dumps(strict_fn))
    assert clone(short) == [0.6] and clone.__name__ == "format_reward"
    custom, = get_reward_funcs(["format"], options=RewardOptions(think_inner_length=False))
    assert custom(short) == [0.6]


# ----------------------------------------------------------------------------- never raise

GARBAGE_COMPLETIONS = [
    None, 0, 3.5, b"<answer>C</answer>", object(), [], [1, [2, [3]]], {"role": "assistant"},
    [{"role": "assistant", "content": None}], [{"role": "assistant", "content": [{"type": "text", "text": 7}]}],
    [{"content": {"nested": ["junk"]}}], "<answer>" * 500, "Camera Center: [" * 500, "Object Center: ]]][[[" * 100,
    "Camera Center: [" + "9" * 5000 + ", 0, 0]", "Camera Center: [1e-400, -0.0, +.5e+3]", "\x00\udcff<thinking>",
    "<answer>" + "A" * 10_000 + "</answer>", "<thinking>" + "x" * 10_000,
]


def test_garbage_completions_never_raise():
    REWARD_STATS.reset()
    n = len(GARBAGE_COMPLETIONS)
    for func in FUNCS:
        for strict in (False, True):
            got = func(GARBAGE_COMPLETIONS, strict_release=strict, answer="forward", choices=CHOICES, solution=SOL)
            assert len(got) == n
            assert all(type(v) is float and 0.0 <= v <= 1.0 for v in got), (func.__name__, got)
    snap = REWARD_STATS.snapshot()
    assert "internal_error" not in str(snap)
    assert snap["format"]["unreadable"] == 2 * 11  # the first eleven cannot be read as text
    assert REWARD_STATS.count("camera", "scored") == 2 * n


def test_garbage_ground_truth_scores_zero_and_is_counted(caplog):
    REWARD_STATS.reset()
    good = GOOD_THINK + "<answer>C</answer>"
    bad_solutions = [None, "junk", 3, {"camera_center": "abc", "object_center": 5},
                     {"camera_center": [[1, 2]], "object_center": [[1, 2, "z"]]},
                     {"camera_center": [[float("nan"), 0, 0], [0, 0, 2]], "object_center": [[True, 0, 0], None]}]
    for func in (camera_reward, object_reward):
        assert func([good] * len(bad_solutions), solution=bad_solutions) == [0.0] * len(bad_solutions)
    assert REWARD_STATS.count("camera", "bad_ground_truth") == len(bad_solutions)
    bad_answers = [None, "sideways", "ten"]
    got = accuracy_reward([good] * 3, answer=bad_answers, choices=[CHOICES, CHOICES, None],
                          question_type=["multiple-choice", "multiple-choice", "numeric"])
    assert got == [0.0, 0.0, 0.0]
    assert REWARD_STATS.count("accuracy", "bad_ground_truth") == 3
    assert "fix the rft.jsonl record" in caplog.text
    # junk choices do not raise either
    assert accuracy_reward([good, good], answer="forward", choices=[["junk"], 5]) == [0.0, 0.0]


def test_malformed_outputs_are_counted_by_reason():
    REWARD_STATS.reset()
    for row in TABLE:
        for f in FUNCS:
            f([row.completion], **_kwargs(row))
    assert REWARD_STATS.count("format", "scored") == len(TABLE)
    assert REWARD_STATS.count("format", "repeated_blocks") == 1
    assert REWARD_STATS.count("format", "empty_answer") == 1
    assert REWARD_STATS.count("accuracy", "empty_answer") == 1
    assert REWARD_STATS.count("camera", "unparsable_center") == 5  # x,y,z / [0, 0] / [[..]] / nan / 1e999
    assert REWARD_STATS.count("object", "null_mismatch") == 1
    assert REWARD_STATS.count("object", "unexpected_center") == 3  # stated where the truth has none
    assert REWARD_STATS.count(reason="internal_error") == 0
    assert REWARD_STATS.malformed("format") == REWARD_STATS.count("format") - len(TABLE)


def test_module_doctests():
    result = doctest.testmod(rewards, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10 and result.failed == 0


# ----------------------------------------------------------------------------- inside TRL's GRPOTrainer

def test_rewards_run_inside_trl_grpo_trainer(tmp_path):
    """One real GRPO step of a tiny random text model: TRL calls the rewards with the dataset's
    columns (Arrow struct ``choices``/``solution``), logs them under their names, and the
    logged total is the recipe's weighted sum."""
    import torch
    from datasets import Dataset
    from transformers import Qwen2Config, Qwen2ForCausalLM
    import trl

    from mllm4d_lite.train.tiny_model import build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer()
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                         "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=256, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.pad_token_id, tie_word_embeddings=True))
    rows = [dict(prompt=[{"role": "user", "content": "Which way did the camera move?"}], **MC, solution=SOL),
            dict(prompt=[{"role": "user", "content": "How far did the camera move?"}], **NUM, solution=SOL_NO_OBJ)]
    names = ["format", "accuracy", "camera", "object"]
    weights = [RELEASE_REWARD_WEIGHTS[n] for n in names]
    args = trl.GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=8, max_steps=1, logging_steps=1, report_to=[], use_cpu=True,
                      reward_weights=weights, save_strategy="no", disable_tqdm=True)
    REWARD_STATS.reset()
    trainer = trl.GRPOTrainer(model=model, reward_funcs=get_reward_funcs(names), args=args,
                          train_dataset=Dataset.from_list(rows * 2), processing_class=tok)
    trainer.train()
    logs = trainer.state.log_history[0]
    means = [logs[f"rewards/{n}_reward/mean"] for n in names]
    assert all(0.0 <= m <= 1.0 for m in means)
    assert logs["reward"] == pytest.approx(sum(w * m for w, m in zip(weights, means)), abs=1e-6)
    assert all(f"malformed/{n}" in logs for n in names)
    assert REWARD_STATS.count("format", "scored") == 4 and REWARD_STATS.count(reason="internal_error") == 0
