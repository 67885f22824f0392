"""Property tests (issue 25): answer extraction, every ST-reward and the ST-CoT parser on random
and adversarial model output never raise and always stay in range.

Strategies mix random text, unicode, the chat special tokens, partial / nested / duplicated
``<thinking>`` / ``<answer>`` tags (and Qwen3's ``<think>``), centre labels in every spelling,
numbers such as ``nan``, ``inf``, ``1e309`` and 400-digit integers, JSON-ish fragments, and
long runs of one fragment. Ground truths are drawn valid and broken. The speed target (a 100 kB
completion scored in under 50 ms) is measured by ``scripts/bench_rewards.py``, not asserted here.

Hypothesis runs derandomised (``ci`` profile, the same examples on every run); for a longer,
random search set ``MLLM4D_HYPOTHESIS=deep``.
"""

from __future__ import annotations

import json
import math
import os
import re
import unicodedata
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mllm4d_lite import prompts
from mllm4d_lite.eval.answers import (UNPARSABLE, answer_part, explain_choice, extract_choice, extract_number,
                                      follows_st_cot_format, mean_relative_accuracy, normalize_text, parse_centers,
                                      score_response, states_center)
from mllm4d_lite.eval.choice_rules import DEFAULT_LETTERS
from mllm4d_lite.train.rewards import (REWARD_FUNCS, REWARD_STATS, RELEASE_REWARD_WEIGHTS, RewardOptions,
                                       accuracy_reward, camera_reward, format_reward, get_reward_funcs,
                                       object_reward, weighted_total)

settings.register_profile("ci", max_examples=100, deadline=timedelta(seconds=5), derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("deep", max_examples=5000, deadline=timedelta(seconds=5), database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("MLLM4D_HYPOTHESIS", "ci"))

# ----------------------------------------------------------------------------- strategies

SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|vision_start|>", "<|vision_end|>",
                  "<|video_pad|>", "<|image_pad|>", "<|im_start|>assistant\n", "<|im_end|>\n<|im_start|>user\n"]
TAGS = ["<thinking>", "</thinking>", "<answer>", "</answer>", "<think>", "</think>", "<answer", "</answer",
        "<Answer>", "</ANSWER>", "<thinking><answer>", "</answer></thinking>", "<answer></answer>"]
LABELS = ["Camera Center:", "Object Center:", "camera center :", "OBJECT  CENTER:", "Camera Center", "Center:",
          "Camera Center: ", "camera\ncenter:"]
NUMBERS = ["0", "-0.0", "1", "2.5", "+.5e+3", "1e309", "-1e309", "1e-400", "nan", "NaN", "inf", "-inf", "Infinity",
           "9" * 400, "1,000", "1_000", "0x1F", "1e", ".", "-", "1.2.3", "٣", "²"]
VALUES = ["[1, 2, 3]", "[0, 0, 0]", "null", "NULL", "[null, 1, 2]", "[nan, inf, -inf]", "[1e309, 0, 0]",
          "[1, 2]", "[1, 2, 3, 4]", "[[1, 2, 3]]", "[a, b, c]", "[", "]", "[1, 2, 3", "1, 2, 3]", "[]",
          "[True, False, None]", "['x', 1, 2]", "[1e308, 1e308, 1e308]", "[-1e308, 1e308, 0]", "[1 2 3]",
          '{"camera_center": [1, 2, 3]}', '[{"a": [1, ', "[" * 30 + "]" * 30, "[" * 30, "(1, 2, 3)"]
WORDS = ["A", "B", "C", "D", "E", "Z", "(C)", "C.", "C:", "B)", "a", "left", "right", "forward", "backward",
         "not", "no", "or", "and", "answer", "Answer:", "The final answer is", "the correct option is",
         "I choose", "option", "\\boxed{", "}", "$", "**", "答案是", "N/A", ".", "?", "!", ",", ":", "\n", " ",
         "\t", "\r\n", "\u2019", "\u201c", "\u202e", "\u200b", "\x00", "\udcff", "é", "ſ", "İ", "🙂", "\ufeff"]
FRAGMENTS = SPECIAL_TOKENS + TAGS + LABELS + NUMBERS + VALUES + WORDS

CHOICES = {"A": "left", "B": "right", "C": "forward", "D": "backward"}

fragment = st.sampled_from(FRAGMENTS)
piece = st.one_of(fragment, fragment, st.text(max_size=12))
text = st.one_of(
    st.lists(piece, max_size=40).map("".join),
    st.text(max_size=200),
    st.tuples(piece, st.integers(1, 400)).map(lambda p: p[0] * p[1]),  # long runs of one fragment
)
completion = st.one_of(
    text, text, text,
    text.map(lambda t: [{"role": "assistant", "content": t}]),
    text.map(lambda t: [{"role": "assistant", "content": [{"type": "text", "text": t}]}]),
    st.none(), st.integers(), st.floats(), st.binary(max_size=20),
    st.lists(st.one_of(st.none(), st.text(max_size=5), st.dictionaries(st.text(max_size=5), st.text(max_size=5))),
             max_size=3),
    st.just([{"role": "assistant", "content": None}]),
    st.just([{"role": "assistant", "content": [{"type": "text", "text": 7}]}]),
)
# text with no letter, digit or tag: names no option, no number, no centre, no block
garbage = st.text(st.characters(blacklist_categories=("Lu", "Ll", "Lt", "Lm", "Lo", "Nd", "Nl", "No", "Cs")),
                  max_size=200).filter(lambda t: not re.search(r"[A-Za-z0-9]", unicodedata.normalize("NFKC", t)))
# text that states no centre itself (no "center" in any case)
filler = text.filter(lambda t: "center" not in t.lower())

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
center = st.lists(finite, min_size=3, max_size=3)
good_solution = st.fixed_dictionaries({
    "camera_center": st.lists(center, min_size=1, max_size=3),
    "object_center": st.lists(st.one_of(center, st.none()), max_size=4),
})
bad_value = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=8), st.floats(),
    st.lists(st.one_of(st.floats(), st.booleans(), st.text(max_size=3), st.none()), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
any_solution = st.one_of(
    good_solution, good_solution.map(json.dumps), good_solution.map(lambda s: [s]),
    st.fixed_dictionaries({"camera_center": bad_value, "object_center": bad_value}),
    st.fixed_dictionaries({"camera_center": st.lists(bad_value, max_size=3),
                           "object_center": st.lists(bad_value, max_size=3)}),
    bad_value, st.text(max_size=30).map(lambda t: "{" + t),
)
choice_maps = st.one_of(
    st.just(CHOICES),
    st.dictionaries(st.sampled_from(["A", "B", "C", "D", "E", "a", " b", "AB", "", "1"]),
                    st.one_of(text, st.none(), st.integers(), st.lists(st.integers(), max_size=2)), max_size=5),
)
answer_value = st.one_of(st.sampled_from(["left", "forward", "10", "10.0", "-3", "0", "nan", "inf", "1e309", ""]),
                         st.none(), st.integers(), st.floats(), text)
question_type = st.one_of(st.none(), st.sampled_from(["multiple-choice", "numeric", "NUMERIC", "free", ""]),
                          st.integers())

ALL_OPTIONS = [RewardOptions(), RewardOptions.release(), RewardOptions(lenient_centers=False),
               RewardOptions(position_pairing=False, answer_part_only=False)]
options = st.sampled_from(ALL_OPTIONS)


def _valid_centre(c) -> bool:
    return (isinstance(c, list) and len(c) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in c))


def in_unit_range(values: list[float], n: int) -> bool:
    return len(values) == n and all(type(v) is float and math.isfinite(v) and 0.0 <= v <= 1.0 for v in values)


# ----------------------------------------------------------------------------- answer extraction

@pytest.mark.hostile(
    stage="eval",
    case="random and adversarial replies (unicode, special tokens, nested or duplicated tags, "
         "long runs) and odd choice keys",
    gets="answer extraction never raises; gives one of the options' letters or no answer")
@given(text, st.one_of(st.none(), choice_maps))
def test_extract_choice_returns_one_of_the_letters_or_none(reply, choices):
    letter, rule = explain_choice(reply, choices)
    assert isinstance(rule, str)
    if choices:
        allowed = {str(k).strip().upper() for k in choices}
    else:
        allowed = set(DEFAULT_LETTERS)
    assert letter is None or letter in allowed, (letter, allowed)
    assert extract_choice(reply, choices) == letter


@given(text)
def test_extract_number_is_a_float_or_none(reply):
    got = extract_number(reply)
    assert got is None or type(got) is float


@given(text, st.sampled_from([CHOICES, {"A": "1", "B": "2", "C": "two", "D": "zero"}]), st.integers(0, 3))
def test_score_response_is_in_range_for_valid_entries(reply, choices, right):
    answer = list(choices.values())[right]
    score, extracted = score_response({"question_type": "multiple-choice", "choices": choices, "answer": answer},
                                      reply)
    assert score in (0.0, 1.0) and (extracted is None or extracted in choices)
    score, extracted = score_response({"question_type": "numeric", "answer": "2.5"}, reply)
    assert 0.0 <= score <= 1.0 and (extracted is None) == (extract_number(reply) is None)


@given(st.one_of(finite, st.floats()), st.one_of(finite, st.floats()))
def test_mean_relative_accuracy_is_in_range(pred, gt):
    got = mean_relative_accuracy(pred, gt)
    assert 0.0 <= got <= 1.0
    if math.isfinite(pred) and pred == gt:
        assert got == 1.0


@given(st.one_of(text, st.integers(), st.floats(), st.none()))
def test_normalize_text_is_idempotent(value):
    once = normalize_text(value)
    assert normalize_text(once) == once


# ----------------------------------------------------------------------------- the ST-CoT parser

@pytest.mark.hostile(
    stage="grpo",
    case="centre labels followed by NaN, inf, 1e309, 400-digit numbers, nested or unclosed "
         "brackets",
    gets="the ST-CoT parser never raises: each entry is three finite floats, null or "
         "\"unparsable\"")
@given(text, st.sampled_from(["camera", "object"]), st.booleans())
def test_parse_centers_entries_are_finite_vectors_null_or_unparsable(reply, kind, lenient):
    for entry in parse_centers(reply, kind, lenient=lenient):
        assert entry is None or entry == UNPARSABLE or (
            isinstance(entry, tuple) and len(entry) == 3 and all(type(v) is float and math.isfinite(v) for v in entry))


@given(text)
def test_st_cot_checks_are_booleans_and_consistent(reply):
    readings = {(kind, r): states_center(reply, kind, r) for kind in ("camera", "object")
                for r in ("closed", "lenient", "release")}
    assert all(type(v) is bool for v in readings.values())
    for kind in ("camera", "object"):
        # the release's bracketed span and evaluation's closed bracket need the same thing
        assert not readings[(kind, "release")] or readings[(kind, "closed")]
    fmt = follows_st_cot_format(reply)
    assert type(fmt) is bool
    if fmt:
        assert readings[("camera", "closed")] and readings[("object", "closed")]
        assert "<thinking>" in reply and "</answer>" in reply


@given(text)
def test_answer_part_is_a_piece_of_the_reply(reply):
    part = answer_part(reply)
    assert isinstance(part, str) and part in reply
    if "<answer>" in reply and "</answer>" in reply.split("<answer>", 1)[1]:
        assert part == reply.split("<answer>", 1)[1].split("</answer>", 1)[0]


@given(st.lists(center, min_size=1, max_size=3), st.lists(st.one_of(center, st.none()), max_size=3), filler, filler)
def test_centres_written_as_the_prompt_asks_are_read_back(cameras, objects, before, after):
    """A reply stating centres with ``prompts.format_center`` reads back as those centres (to the
    centimetre), whatever text surrounds them."""
    body = before + "\n" + " ".join([f"Camera Center: {prompts.format_center(c)}" for c in cameras]
                                    + [f"Object Center: {prompts.format_center(o)}" for o in objects]) + "\n" + after
    for lenient in (True, False):
        got = parse_centers(body, "camera", lenient=lenient)
        assert len(got) == len(cameras)
        assert all(math.dist(g, c) <= 0.01 for g, c in zip(got, cameras))
    got = parse_centers(body, "object")
    assert [g is None for g in got] == [o is None for o in objects]


# ----------------------------------------------------------------------------- rewards

@pytest.mark.hostile(
    stage="grpo",
    case="any completion (text, messages, None, numbers, bytes, junk lists) with any ground "
         "truth, valid or broken, in every reward mode",
    gets="every reward and the weighted ST-reward finite and in [0, 1]; no internal error")
@given(st.lists(completion, min_size=1, max_size=4), any_solution, answer_value, st.one_of(st.none(), choice_maps),
       question_type, options)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_every_reward_is_finite_and_in_range_on_anything(completions, solution, answer, choices, qtype, opts):
    REWARD_STATS.reset()
    n = len(completions)
    columns = {"solution": [solution] * n, "answer": [answer] * n, "choices": [choices] * n,
               "question_type": [qtype] * n}  # TRL passes one item per completion
    scores = {}
    for name, func in REWARD_FUNCS.items():
        scores[name] = func(completions, options=opts, **columns)
        assert in_unit_range(scores[name], n), (name, scores[name])
    assert REWARD_STATS.count(reason="internal_error") == 0, REWARD_STATS.snapshot()
    total = weighted_total(scores, RELEASE_REWARD_WEIGHTS)
    assert all(math.isfinite(t) and 0.0 <= t <= 1.0 + 1e-12 for t in total)
    for func in get_reward_funcs(list(REWARD_FUNCS), strict_release=True):
        assert in_unit_range(func(completions, **columns), n)


@given(text, options)
def test_format_reward_takes_only_its_defined_values(reply, opts):
    """0.5 (both blocks) + 0.4 (both centres stated) + 0.1 (long thinking), nothing else."""
    allowed = {0.0, 0.1, 0.4, 0.5, 0.4 + 0.1, 0.5 + 0.1, 0.5 + 0.4, 0.5 + 0.4 + 0.1}
    [got] = format_reward([reply], options=opts)
    assert got in allowed
    if "<thinking>" not in reply:
        assert got in (0.0, 0.4)


@pytest.mark.hostile(
    stage="grpo",
    case="completions without letters, digits, tags or centres",
    gets="every reward 0 (object reward 1.0 when the truth has no object, as defined)")
@given(garbage, good_solution, options)
def test_garbage_scores_zero(reply, solution, opts):
    """No tags, letters, digits or centre labels: every reward gives 0, except the object reward
    where the truth has no object centre (stating none is right, 1.0 by definition)."""
    assert format_reward([reply], options=opts) == [0.0]
    assert accuracy_reward([reply], options=opts, answer="forward", choices=CHOICES) == [0.0]
    assert accuracy_reward([reply], options=opts, answer="10", question_type="numeric") == [0.0]
    assert camera_reward([reply], options=opts, solution=solution) == [0.0]
    no_object = all(c is None for c in solution["object_center"])
    assert object_reward([reply], options=opts, solution=solution) == [1.0 if no_object else 0.0]


@pytest.mark.hostile(
    stage="grpo",
    case="completions that are not text (None, numbers, bytes, objects, messages without "
         "content)",
    gets="every reward 0, counted as unreadable")
@given(st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=20), st.just(object()),
                 st.just([{"role": "assistant", "content": None}]), st.just({"role": "assistant"}),
                 st.lists(st.integers(), min_size=1, max_size=3)), good_solution)
def test_unreadable_completions_score_zero(thing, solution):
    for func in REWARD_FUNCS.values():
        assert func([thing], answer="forward", choices=CHOICES, solution=solution) == [0.0]


@given(st.lists(center, min_size=2, max_size=2), st.lists(center, min_size=2, max_size=2), filler)
def test_right_centres_score_near_one_and_every_error_lowers_the_score(cameras, objects, filler):
    solution = {"camera_center": cameras, "object_center": objects}

    def reply(cams):
        return ("<thinking>" + filler.replace("</thinking>", "") + " " + " ".join(
            f"Camera Center: {prompts.format_center(c)} Object Center: {prompts.format_center(o)}"
            for c, o in zip(cams, objects)) + "</thinking><answer>C</answer>")

    [exact] = camera_reward([reply(cameras)], solution=solution)
    assert exact >= math.exp(-0.01)  # centimetre rounding of the stated centres
    off = [[c[0] + 1.0, c[1], c[2]] for c in cameras]
    [worse] = camera_reward([reply(off)], solution=solution)
    assert worse < exact and worse == pytest.approx(math.exp(-1.0), abs=0.02)


@pytest.mark.hostile(
    stage="grpo",
    case="`solution` centres that are not three finite numbers (NaN, inf, booleans, text, wrong "
         "lengths)",
    gets="camera / object reward 0, counted as `bad_ground_truth`, logged with \"fix the "
         "rft.jsonl record\"")
@given(st.lists(st.one_of(bad_value, st.lists(bad_value, max_size=4)), min_size=1, max_size=3)
       .filter(lambda centres: any(c is not None and not _valid_centre(c) for c in centres)), text)
def test_malformed_ground_truth_scores_zero_and_is_counted(bad_centres, reply):
    """A record whose centres are not lists of three finite numbers scores 0 (never raises) and
    is counted as ``bad_ground_truth`` (the reward logs "fix the rft.jsonl record")."""
    good = [[0.0, 0.0, 0.0]]
    REWARD_STATS.reset()
    assert camera_reward([reply], solution={"camera_center": bad_centres, "object_center": good}) == [0.0]
    assert object_reward([reply], solution={"camera_center": good, "object_center": bad_centres}) == [0.0]
    assert REWARD_STATS.count("camera", "bad_ground_truth") == REWARD_STATS.count("object", "bad_ground_truth") == 1


@given(text, st.sampled_from(["left", "right", "forward", "backward"]))
def test_accuracy_reward_agrees_with_evaluation(reply, answer):
    """Training is rewarded the way the benchmark is scored: the accuracy reward of a reply is
    evaluation's score of its answer part."""
    entry = {"question_type": "multiple-choice", "choices": CHOICES, "answer": answer}
    [reward] = accuracy_reward([reply], answer=answer, choices=CHOICES, question_type="multiple-choice")
    tagged = "<answer>" in reply and "</answer>" in reply.split("<answer>", 1)[1]
    if tagged and not reply.split("<answer>", 1)[1].split("</answer>", 1)[0].strip():
        assert reward == 0.0  # an empty answer block (D1)
    else:
        assert reward == score_response(entry, answer_part(reply))[0]
