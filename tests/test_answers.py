"""Answer extraction, numeric scoring, and agreement with real judged outputs."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from mllm4d_lite.eval import answers
from mllm4d_lite.eval.answers import (
    MRA_THRESHOLDS,
    answer_letter,
    answer_letters,
    explain_choice,
    extract_choice,
    extract_number,
    follows_st_cot_format,
    is_correct,
    mean_relative_accuracy,
    score_response,
    states_center,
)

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"

LR = {"A": "right", "B": "left", "C": "not moving", "D": "towards the camera"}
COUNT = {"A": "1", "B": "2", "C": "3", "D": "0"}
UPDOWN = {"A": "up", "B": "down", "C": "left", "D": "right"}
NESTED = {"A": "left", "B": "right", "C": "left and away from the camera", "D": "not moving"}
ABSENT = {"A": "left", "B": "there are no buses in the video", "C": "right", "D": "not moving"}

# (reply, choices, expected letter or None)
CASES = [
    # answer tags
    ("<thinking>Camera Center: [0, 0, 0]</thinking><answer>B</answer>", None, "B"),
    ("<thinking>A is wrong, so is D</thinking>\n<answer> (c) </answer>", None, "C"),
    ("<answer> B: left </answer>", LR, "B"),
    ("<answer>left</answer>", LR, "B"),
    ("<answer>C</answer> <answer>A</answer>", None, "A"),  # the last tag counts
    ("<thinking>x</thinking><answer>The box moves left.</answer>", LR, "B"),
    ("<thinking>A looks likely</thinking><answer>unknown</answer>", LR, None),  # thinking not read
    ("<thinking>A looks likely</thinking><answer>", None, None),  # unclosed, empty tag: read on
    # declared answers
    ("Therefore, the final answer is: D", None, "D"),
    ("Therefore, the final answer is: $\\boxed{D}$", None, "D"),
    ("Answer: (C)", None, "C"),
    ("answer: b", None, "B"),
    ("The answer is C.", None, "C"),
    ("**Answer:** C", None, "C"),
    ("Final Answer: \\( B \\)", None, "B"),
    ("Therefore, the final answer is: 'D'", None, "D"),
    ("Answer: (A) downhill", {"A": "downhill", "B": "uphill"}, "A"),
    ("I first thought B, maybe C. Therefore, the final answer is: A", None, "A"),
    ("因此，最终答案是：C", None, "C"),
    ("Therefore, the final answer is: 3.", COUNT, "C"),  # option text after the declaration
    ("The correct answer is that the bus is not moving.", LR, "C"),
    ("The answer is: there are no buses in the video", ABSENT, "B"),
    # the reply is an option
    ("C: left", None, "C"),
    ("C. left", None, "C"),
    ("(B)", None, "B"),
    ("  d  ", None, "D"),
    ("B.", None, "B"),
    ("D) Right.", None, "D"),
    # a letter named as the choice, a lone letter at the end
    ("Looking at the frames, option B is correct.", None, "B"),
    ("B is the correct answer because the car drives off.", None, "B"),
    ("After looking at all frames I pick\n\nA", None, "A"),
    # option text instead of a letter (word forms folded)
    ("The man is walking to the left.", LR, "B"),
    ("It moves downwards.", UPDOWN, "B"),
    ("The dancer spins twice.", COUNT, "B"),
    ("The bus is moving towards the camera.", LR, "D"),
    ("It goes left and away from the camera.", NESTED, "C"),  # longer option contains "left"
    ("A car is moving to the right.", LR, "A"),  # "A car" is an article; "right" is option A
    ("No bus can be seen in the video, so it is not moving anywhere.", ABSENT, "B"),
    ("The bus is not visible in the video.", ABSENT, "B"),
    # tricky: no answer
    ("Clockwise", None, None),  # a letter inside a word
    ("Because of the dog, I cannot tell.", None, None),
    ("The answer is A or B", None, None),
    ("Therefore, the final answer is: A and C", None, None),
    ("B.A.", None, None),  # two letters
    ("CDD", None, None),
    ("Therefore, the answer is: C. B", None, None),
    ("It moves either left or right.", LR, None),  # text matching two options
    ("Therefore, the final answer is: N/A", LR, None),
    ("Therefore, the final answer is: $LETTER (without quotes)", None, None),
    ("", None, None),
    (None, None, None),
]


@pytest.mark.parametrize("reply,choices,expected", CASES)
def test_extract_choice_table(reply, choices, expected):
    assert extract_choice(reply, choices) == expected, explain_choice(reply, choices)


def test_table_is_big_enough():
    assert len(CASES) >= 30
    assert sum(expected is None for _, _, expected in CASES) >= 6


def test_duplicated_option_text_counts_any_of_its_letters():
    entry = {"question_type": "multiple-choice", "answer": "away from the camera",
             "choices": {"A": "not sure", "B": "not moving", "C": "away from the camera", "D": "away from the camera"}}
    assert answer_letters(entry["answer"], entry["choices"]) == ["C", "D"]
    assert is_correct(entry, "C") and is_correct(entry, "D") and not is_correct(entry, "B")
    with pytest.raises(ValueError, match="several"):
        answer_letter(entry["answer"], entry["choices"])


def test_answer_letter_matches_text_and_numbers():
    assert answer_letter("left", LR) == "B"
    assert answer_letter(" To the left. ", {"A": "To the left.", "B": "To the right"}) == "A"
    assert answer_letter(5, {"A": 0, "B": 5, "C": 6}) == "B"  # VLM4D stores counts as ints
    with pytest.raises(ValueError, match="matches none"):
        answer_letter("upwards", LR)


def test_extract_number():
    assert extract_number("<thinking>moved 3 m</thinking><answer>2.5 m</answer>") == 2.5
    assert extract_number("first 1 then 4.25") == 4.25
    assert extract_number("about 1,200.5 metres") == 1200.5
    assert extract_number("<answer>-0.75</answer>") == -0.75
    assert extract_number("no digits here") is None
    assert extract_number(None) is None


def test_mean_relative_accuracy_thresholds():
    assert MRA_THRESHOLDS == (0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95)
    assert mean_relative_accuracy(2.0, 2.0) == 1.0
    # 10 % off passes thresholds with 1 - t > 0.10: t = 0.50 ... 0.85 -> 8 of 10
    assert mean_relative_accuracy(2.2, 2.0) == pytest.approx(0.8)
    assert mean_relative_accuracy(1.8, 2.0) == pytest.approx(0.8)
    # 30 % off: 1 - t > 0.3 for t = 0.50 ... 0.65 -> 4 of 10
    assert mean_relative_accuracy(1.3, 1.0) == pytest.approx(0.4)
    assert mean_relative_accuracy(4.0, 2.0) == 0.0
    assert mean_relative_accuracy(0.0, 0.0) == 1.0 and mean_relative_accuracy(0.1, 0.0) == 0.0
    assert mean_relative_accuracy(math.nan, 1.0) == 0.0


def test_numeric_entries_score_by_mra():
    entry = {"id": "n1", "question_type": "numeric", "choices": None, "answer": "2.0"}
    assert score_response(entry, "<answer>2.2</answer>") == (pytest.approx(0.8), "2.2")
    assert score_response(entry, "I cannot tell") == (0.0, None)
    assert is_correct(entry, "<answer>2.2</answer>") and not is_correct(entry, "<answer>3.5</answer>")


def test_broken_entry_answer_is_an_error_naming_it():
    entry = {"id": "q7", "question_type": "multiple-choice", "choices": LR, "answer": "upwards"}
    with pytest.raises(ValueError, match="q7"):
        score_response(entry, "A")


def test_st_cot_format_check():
    ok = "<thinking>Camera Center: [0.00, 0.00, 0.00]; Object Center: [1.0, 0.0, 4.0]</thinking><answer>B</answer>"
    assert follows_st_cot_format(ok)
    assert follows_st_cot_format(ok.replace("[1.0, 0.0, 4.0]", "null"))
    assert not follows_st_cot_format(ok.replace("<answer>B</answer>", "B"))
    assert not follows_st_cot_format(ok.replace("Object Center", "Object"))
    assert not follows_st_cot_format("B")


@pytest.mark.parametrize("text, closed, lenient, release", [
    ("Camera Center: [1, 2, 3]", True, True, True),
    ("Camera Center: null", True, True, False),  # the release wants brackets
    ("camera center : [1, 2, 3]", False, True, False),  # only the kit's reward reads any case and spacing
    ("Camera Center: [1, 2", False, True, False),  # unclosed: the kit's reward counts it as stated
    ("Camera Center: [[1, 2, 3]]", True, True, True),
    ("Camera Center: unknown", False, False, False),
])
def test_the_three_readings_of_a_stated_centre(text, closed, lenient, release):
    assert [states_center(text, "camera", r) for r in ("closed", "lenient", "release")] == [closed, lenient, release]
    assert not states_center(text, "object", "lenient")


def test_module_doctests():
    import doctest

    result = doctest.testmod(answers)
    assert result.attempted >= 10 and result.failed == 0


RELEASE = SHARED / "mllm4d_release_outputs"
RELEASE_EXPECTED = {  # README of the release folder: file -> (questions, correct, accuracy %)
    "real_mc_MLLM-4D-SFT-1.0.json": (1371, 804, 58.64),
    "real_mc_MLLM-4D-RFT-1.0.json": (1371, 825, 60.18),
    "synthetic_mc_MLLM-4D-SFT-1.0.json": (445, 238, 53.48),
    "synthetic_mc_MLLM-4D-RFT-1.0.json": (445, 242, 54.38),
}


@pytest.mark.skipif(not RELEASE.is_dir(), reason=f"{RELEASE} not present (shared release prediction files)")
@pytest.mark.parametrize("name", sorted(RELEASE_EXPECTED))
def test_release_prediction_files_reproduce_readme(name):
    entries = json.loads((RELEASE / name).read_text())
    correct = sum(score_response(e, e["response"])[0] for e in entries)
    n, want_correct, want_acc = RELEASE_EXPECTED[name]
    assert (len(entries), correct, round(100 * correct / n, 2)) == (n, want_correct, want_acc)


VLM4D = SHARED / "vlm4d"


@pytest.mark.skipif(not VLM4D.is_dir(), reason=f"{VLM4D} not present (VLM4D judged outputs)")
def test_agreement_with_vlm4d_llm_judge(capsys):
    """The extractor's targets on 81,720 judged replies: >= 98 % same option as the judge, and
    per-file accuracy within 1 point of the judged accuracy on >= 95 % of the files."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import bench_extraction
    finally:
        sys.path.pop(0)
    assert bench_extraction.main(["--data", str(VLM4D), "--examples", "0"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    agree = float(lines[-2].split("=")[1].split("%")[0])
    files_ok = float(lines[-1].split("=")[1].split("%")[0])
    assert "replies: 81720" in lines[-2]
    assert agree >= 98.0, lines[-2]
    assert files_ok >= 95.0, lines[-1]
