"""Reading replies: the chosen option, a number, the ST-CoT format and its centres; per-question scoring.

Shared by evaluation and the GRPO rewards, so that training is rewarded the way the benchmark is
scored.

Multiple-choice replies are read by :func:`extract_choice`, a deterministic extractor
tuned against VLM4D's own LLM-judged outputs of 23 models (``scripts/bench_extraction.py``
prints the agreement). It looks, in this order, for

1. the last ``<answer>…</answer>`` block (a letter, ``(B)``, ``B: text`` or an option's text);
2. a declared answer, the last one in the reply: "the final answer is: X",
   "Answer: (X)", "the correct option is X", ``\\boxed{X}``, "the correct answer is that
   the dog is not moving" (an option in words); a last declaration that names no option
   ("the final answer is: N/A") means no answer;
3. a reply that *is* an option: "C", "C.", "(C)", "C: left", "C) left", "left";
4. a letter named as the choice in the last sentences: "option D", "B is the correct
   answer", "… is 'D: further away from the camera'";
5. the thing asked about said to be absent, matched to the option saying so ("There is no
   fairy visible" -> "no fairy there");
6. an option's text in the last sentences ("The man is moving towards the left.");
   word forms are folded ("downwards" = "down", "twice" = "2", "dogs" = "dog");
7. the last sentence holding most of one option's content words;
8. a lone letter closing the reply ("… so the answer is\\n\\nC").

Each rule is a function of :mod:`mllm4d_lite.eval.choice_rules`. Ambiguous replies ("A or B",
"A and C", two different letters) give ``None``, which is scored wrong and counted as "no answer".
A reply longer than :data:`MAX_REPLY_CHARS` (20,000) is read from its last 20,000 characters.
Every reader here runs in time linear in the reply (``tests/test_properties.py`` tries random and
adversarial replies; ``scripts/bench_rewards.py`` times 100 kB ones).

Numeric questions use :func:`extract_number` and the VSI-Bench mean relative accuracy
(:func:`mean_relative_accuracy`).

ST-CoT replies (``<thinking>`` with ``Camera Center: [x, y, z]`` / ``Object Center: [x, y, z]``
states, then ``<answer>``): :func:`answer_part` is the part that may hold the answer,
:func:`follows_st_cot_format` the format check of evaluation, :func:`states_center` and
:func:`parse_centers` read the stated centres in the three ways the kit needs (evaluation's
format check, the kit's ST-reward, the release's ST-reward).
"""

from __future__ import annotations

import ast
import math
import re
import unicodedata
from typing import Any, Iterator, Mapping

from mllm4d_lite.eval.choice_rules import (TEXT_WINDOW, absence_option, clean_reply, closest_option, declared_answer,
                                           letter_at_start, letter_key, letter_mention, letters_of,
                                           option_in_text)

# VSI-Bench MRA thresholds, written out: 0.50, 0.55, ..., 0.95 (ten of them).
MRA_THRESHOLDS = (0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95)


# The closing run normalize_text drops, matched on the reversed text: ``re.sub(r"[…]+$", …)``
# retries the run from every position of a long punctuation run (quadratic in its length).
_CLOSING_RUN = re.compile(r"[\s.!;,:]*")


def normalize_text(text: Any) -> str:
    """Option/answer text for comparison: ``str``, NFKC, case-folded, inner whitespace
    collapsed, surrounding whitespace, quotes and closing punctuation removed.

    >>> normalize_text("  To the left. ")
    'to the left'
    >>> normalize_text(3)
    '3'
    """
    s = unicodedata.normalize("NFKC", str(text)).casefold()
    s = s.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    s = re.sub(r"\s+", " ", s).strip()
    while True:  # until quotes and closing punctuation are all gone ('left.".' -> 'left')
        stripped = s.strip(" \"'`*")
        stripped = stripped[:len(stripped) - _CLOSING_RUN.match(stripped[::-1]).end()]  # read from the end: linear
        if stripped == s:
            return s
        s = stripped


# --------------------------------------------------------------------------- ST-CoT replies

class FirstBlock:
    """The first complete ``open…close`` block of a text, as ``re.search`` of
    ``open(.*?)close`` (DOTALL) finds it, in linear time.

    ``search`` returns the same ``re.Match`` (``group(0)``, ``group(1)``, ``start()``), but tries
    only the first ``open``: the regex search would retry from every later ``open`` and scan
    to the end each time (quadratic on ``"<answer>" * 12_500``). Trying only the
    first is exact: if no ``close`` follows the first ``open``, none follows a later one.

    >>> FirstBlock("<answer>", "</answer>").search("x <answer>A <answer>B</answer>").group(1)
    'A <answer>B'
    """

    def __init__(self, open_tag: str, close_tag: str) -> None:
        self.open_tag, self.close_tag = open_tag, close_tag
        self.pattern = re.compile(re.escape(open_tag) + r"(.*?)" + re.escape(close_tag), re.DOTALL)

    def search(self, text: str) -> re.Match[str] | None:
        start = text.find(self.open_tag)
        return None if start < 0 else self.pattern.match(text, start)


THINK_BLOCK = FirstBlock("<thinking>", "</thinking>")
ANSWER_BLOCK = FirstBlock("<answer>", "</answer>")
ST_COT_TAGS = ("<thinking>", "</thinking>", "<answer>", "</answer>")
CENTER_KINDS = ("camera", "object")


def center_label(kind: str, lenient: bool = True) -> re.Pattern[str]:
    """The label of a stated ``kind`` ("camera" | "object") centre: ``Camera Center:`` exactly, or
    (``lenient``) in any case and spacing (``camera center :``)."""
    if lenient:
        return re.compile(kind + r"\s*center\s*:", re.IGNORECASE)
    return re.compile(kind.capitalize() + r" Center:")


_READINGS = ("closed", "lenient", "release")
_LABELS = {(kind, lenient): center_label(kind, lenient) for kind in CENTER_KINDS for lenient in (False, True)}
_SPACES = re.compile(r"\s*")
_NULL_CLOSED = re.compile(r"null")
_NULL_LENIENT = re.compile(r"null\b", re.IGNORECASE)


def states_center(text: str, kind: str, reading: str = "lenient") -> bool:
    """True when ``text`` states a ``kind`` centre, read as ``reading``: ``closed`` (exact label,
    then ``[...]`` or ``null``), ``lenient`` (any case and spacing, then ``[`` or ``null``) or
    ``release`` (exact label, then a bracketed span).

    As regexes (after the label): closed ``\\s*(\\[[^\\]]*\\]|null)``, lenient
    ``\\s*(?:\\[|null\\b)`` (any case), release ``\\s*(\\[+.*?\\]+)`` (DOTALL). A bracket
    "closes" in the closed and release readings when any ``]`` follows it, which is checked
    against the text's last ``]`` instead of scanning from every label (quadratic on
    ``"Camera Center: [" * 6_000``).

    >>> states_center("camera center : [1, 2", "camera"), states_center("camera center : [1, 2", "camera", "closed")
    (True, False)
    """
    if reading not in _READINGS:
        raise ValueError(f"unknown reading {reading!r}; use one of {_READINGS}")
    last_close = text.rfind("]")
    for label in _LABELS[(kind, reading == "lenient")].finditer(text):
        value = _SPACES.match(text, label.end()).end()
        if text.startswith("[", value):
            if reading == "lenient" or last_close > value:
                return True
        elif reading != "release" and (_NULL_LENIENT if reading == "lenient" else _NULL_CLOSED).match(text, value):
            return True
    return False


def follows_st_cot_format(text: str) -> bool:
    """Both tags and both centres: ``<thinking>…</thinking>``, ``<answer>…</answer>``,
    ``Camera Center: [...]`` and ``Object Center: [...]`` (``null`` allowed for a centre).

    >>> follows_st_cot_format("<thinking>Camera Center: [0, 0, 0] Object Center: null</thinking><answer>A</answer>")
    True
    """
    return bool(THINK_BLOCK.search(text) and ANSWER_BLOCK.search(text)
                and all(states_center(text, kind, "closed") for kind in CENTER_KINDS))


UNPARSABLE = "unparsable"  # marks an entry that states a centre which cannot be read
_CENTER_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_VALUE_LENIENT = re.compile(r"\s*(null\b|\[[^\[\]]*\])", re.IGNORECASE)


def _parse_vector_lenient(span: str) -> Any:
    inner = span.strip()[1:-1]
    if "null" in inner.lower():
        return None
    tokens = [t.strip() for t in inner.split(",")]
    if len(tokens) != 3 or not all(_CENTER_NUMBER.fullmatch(t) for t in tokens):
        return UNPARSABLE
    vector = tuple(float(t) for t in tokens)
    return vector if all(math.isfinite(v) for v in vector) else UNPARSABLE


# Three plain decimals in brackets, read without ast.literal_eval (15-20 us a call): integers
# without leading zeros and floats with digits after the point, up to 30 digits, where
# literal_eval and float() agree; anything else goes through literal_eval.
_PLAIN = r"[-+]?(?:0|[1-9]\d{0,29})(?:\.\d{1,30})?(?:[eE][-+]?\d{1,3})?"
_PLAIN_VECTOR = re.compile(rf"\[[ \t]*({_PLAIN})[ \t]*,[ \t]*({_PLAIN})[ \t]*,[ \t]*({_PLAIN})[ \t]*\]")


def _parse_vector_release(span: str) -> Any:
    """One release entry: ``ast.literal_eval`` of the bracketed text (raises when unparsable)."""
    if "null" in span.lower():
        return None
    plain = _PLAIN_VECTOR.fullmatch(span.strip())
    if plain:
        vector = tuple(float(v) for v in plain.groups())
        return vector if all(math.isfinite(v) for v in vector) else UNPARSABLE
    value = ast.literal_eval(span.strip())
    if not (isinstance(value, (list, tuple)) and len(value) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        return UNPARSABLE  # other shapes or types: the release's shape check gives 0
    try:
        vector = tuple(float(v) for v in value)
    except OverflowError:  # an integer beyond float range
        return UNPARSABLE
    return vector if all(math.isfinite(v) for v in vector) else UNPARSABLE


def _release_values(text: str, label: re.Pattern[str]) -> Iterator[str]:
    """The release's value spans: after each label, ``\\s*(\\[.*?\\])`` (``.`` stops at a newline),
    labels without one skipped. The next ``]`` and newline are remembered from label to label
    instead of being scanned for again (the regex is quadratic on ``"Camera Center: [" * 6_000``)."""
    next_close = next_newline = -1
    for m in label.finditer(text):
        start = _SPACES.match(text, m.end()).end()
        if not text.startswith("[", start):
            continue
        if next_close < start:
            next_close = text.find("]", start)
            if next_close < 0:
                return  # no "]" after this label, so none after the later ones
        if next_newline < start:
            next_newline = text.find("\n", start)
            if next_newline < 0:
                next_newline = len(text)
        if next_newline > next_close:
            yield text[start:next_close + 1]


def parse_centers(text: str, kind: str, *, lenient: bool = True) -> list[Any]:
    """The ``kind`` ("camera" | "object") centres stated in ``text``, in order.

    Each entry is ``(x, y, z)`` floats, ``None`` for ``null``, or the marker ``"unparsable"``.
    ``lenient=False`` reads as the release does: exact label, ``ast.literal_eval``, and one
    unparsable entry empties the list.

    >>> parse_centers("Camera Center: [1, -2.5, 3e-1] camera center : null Camera Center: [a, b]", "camera")
    [(1.0, -2.5, 0.3), None, 'unparsable']
    """
    label = center_label(kind, lenient)
    entries: list[Any] = []
    if not lenient:
        for span in _release_values(text, label):
            try:
                entries.append(_parse_vector_release(span))
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                return []  # the release: any failure empties the whole prediction
        return entries
    for m in label.finditer(text):
        value = _VALUE_LENIENT.match(text, m.end())
        if value is None:
            entries.append(UNPARSABLE)
        elif value.group(1).lower() == "null":
            entries.append(None)
        else:
            entries.append(_parse_vector_lenient(value.group(1)))
    return entries


# --------------------------------------------------------------------------- answers

def answer_part(response: str | None) -> str | None:
    """The part of an ST-CoT reply that may hold its answer, so that the words of its reasoning
    ("moved by dx = 1.2 m (right +)") are never read as the answer.

    The inside of the first complete ``<answer>…</answer>`` block; else, after a closed
    ``<thinking>…</thinking>``, the text that follows it; else, when a ``<thinking>`` block is
    opened and never closed, nothing (``""``); else the whole reply (no tags: a direct reply).

    >>> answer_part("<thinking>it moves (right +)</thinking><answer>B</answer>")
    'B'
    >>> answer_part("<thinking>it moves (right +)</thinking> so B")
    ' so B'
    >>> answer_part("<thinking>it moves (right +) <answer B</answer")
    ''
    >>> answer_part("The answer is B.")
    'The answer is B.'
    """
    if response is None:
        return None
    tagged = ANSWER_BLOCK.search(response)
    if tagged:
        return tagged.group(1)
    if "</thinking>" in response:
        return response.split("</thinking>", 1)[1]
    if "<thinking>" in response:
        return ""
    return response



MAX_REPLY_CHARS = 20_000
""":func:`extract_choice` reads at most the last 20,000 characters of a reply, four times the
longest of the 85,352 judged VLM4D and MLLM-4D replies (5.0 kB) and of a 1,024-token completion:
every rule looks for the answer at the end of a reply, and the work per reply stays bounded
(scripts/bench_rewards.py)."""


def extract_choice(response: str | None, choices: Mapping[str, Any] | None = None) -> str | None:
    """The option letter (upper case) a free-form reply chose, or None ("no answer").

    ``choices`` maps letters to option texts (``{"A": "left", ...}``); with it, replies that
    give an option's text instead of its letter are understood too. Without it the letters
    A–F are accepted.

    >>> extract_choice("<thinking>…</thinking><answer>B</answer>")
    'B'
    >>> extract_choice("Therefore, the final answer is: $\\\\boxed{D}$")
    'D'
    >>> extract_choice("Answer: (c) going further away")
    'C'
    >>> extract_choice("C: left")
    'C'
    >>> extract_choice("The man is walking to the left.", {"A": "right", "B": "left"})
    'B'
    >>> extract_choice("Clockwise") is None       # a letter inside a word is not an answer
    True
    >>> extract_choice("The answer is A or B") is None
    True
    """
    return explain_choice(response, choices)[0]


def explain_choice(response: str | None, choices: Mapping[str, Any] | None = None) -> tuple[str | None, str]:
    """:func:`extract_choice` plus the name of the rule that decided: ``answer-tag``,
    ``declared``, ``option-reply``, ``letter-mention``, ``absent-option``, ``option-text``,
    ``closest-option``, ``trailing-letter``, or ``none`` (``ambiguous`` / ``unreadable`` when a declared answer
    names two options or none)."""
    if response is None:
        return None, "none"
    text = str(response)
    if len(text) > MAX_REPLY_CHARS:  # bounded work per reply: a long reply is read from its end
        text = text[-MAX_REPLY_CHARS:]
    text = clean_reply(text).strip()
    if not text:
        return None, "none"
    letters = letters_of(choices)

    def done(got: str, rule: str) -> tuple[str | None, str]:
        return (got, rule) if got else (None, f"{rule}:ambiguous-or-unreadable")

    # 1. <answer> ... </answer> (the last one; an unclosed tag reads to the end)
    tags = [t for t in re.findall(r"<answer>(.*?)(?:</answer>|$)", text, flags=re.S | re.I)
            if re.search(r"[A-Za-z0-9]", t)]
    if tags:
        inner = tags[-1]
        got = letter_at_start(inner, letters, choices)
        if got is None:
            got = declared_answer(inner, letters, choices)
        if got is None and choices:  # "<answer>The box moves left.</answer>"
            got = option_in_text(inner, choices, whole=False) or closest_option(inner, choices)
        # an answer block naming no option is no answer (the thinking above it is not read)
        return done(got or "", "answer-tag")

    # 2. a declared answer
    got = declared_answer(text, letters, choices)
    if got is not None:
        return done(got, "declared")

    # 3. the reply is an option: "C", "(C)", "C.", "C: left", "C) left"
    got = letter_at_start(text, letters, choices, reply_start=True)
    if got is not None:
        return done(got, "option-reply")

    window = re.split(r"(?<=[.!?\n])\s+", text)[-TEXT_WINDOW:]
    # 4. a letter named as an option near the end: "… is 'D: further away from the camera'",
    #    "option D", "B is the correct answer"
    for sentence in reversed(window):
        got = letter_mention(sentence, letters, choices)
        if got is not None:
            return done(got, "letter-mention")

    # 5. the thing asked about is said to be absent, and an option says so ("no fairy there")
    if choices:
        for sentence in reversed(window):
            got = absence_option(sentence, choices)
            if got:
                return got, "absent-option"

    # 6. an option's text instead of a letter: the last sentence naming an option
    if choices:
        for sentence in reversed(window):
            got = option_in_text(sentence, choices, whole=False)
            if got:
                return got, "option-text"

    # 7. the last sentence shares most of one option's content words ("moving towards the
    #    camera" for "closer towards the camera")
    if choices and window:
        got = closest_option(window[-1], choices)
        if got:
            return got, "closest-option"

    # 8. a lone letter closing the reply
    m = re.search(r"(?<![A-Za-z0-9'_])[\(\[]?([A-Z])[\)\]]?[.!]?\s*$", text)
    if m and m.group(1) in letters:
        return m.group(1), "trailing-letter"
    return None, "none"


def answer_letters(answer_text: Any, choices: Mapping[str, Any]) -> list[str]:
    """All letters whose option text equals ``answer_text`` (exactly, else after
    :func:`normalize_text`). Benchmarks sometimes repeat an option's text; any of those
    letters is then right."""
    exact = [letter_key(k) for k, v in choices.items() if str(v) == str(answer_text)]
    if exact:
        return exact
    target = normalize_text(answer_text)
    return [letter_key(k) for k, v in choices.items() if normalize_text(v) == target]


def answer_letter(answer_text: Any, choices: Mapping[str, Any]) -> str:
    """The letter whose option text equals the entry's ``answer``.

    >>> answer_letter("left", {"A": "right", "B": "left"})
    'B'

    Raises ValueError when no option or more than one option matches.
    """
    found = answer_letters(answer_text, choices)
    if not found:
        raise ValueError(f"answer {answer_text!r} matches none of the choices {dict(choices)!r}")
    if len(found) > 1:
        raise ValueError(f"answer {answer_text!r} matches several choices {found} of {dict(choices)!r}")
    return found[0]


_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


def extract_number(response: str | None) -> float | None:
    """A numeric reply: the (last) number inside ``<answer>…</answer>`` if there is one,
    else the last number of the reply; None when there is none.

    >>> extract_number("<thinking>it moved 3 m</thinking><answer>2.5 m</answer>")
    2.5
    >>> extract_number("about 1,200.5 metres")
    1200.5
    """
    if response is None:
        return None
    text = str(response)
    tags = re.findall(r"<answer>(.*?)(?:</answer>|$)", text, flags=re.S | re.I)
    for inner in reversed(tags):
        nums = _NUMBER.findall(inner)
        if nums:
            return float(nums[-1].replace(",", ""))
    nums = _NUMBER.findall(text)
    return float(nums[-1].replace(",", "")) if nums else None


def mean_relative_accuracy(pred: float, gt: float) -> float:
    """VSI-Bench mean relative accuracy in [0, 1]: the fraction of the ten thresholds
    θ ∈ {0.50, 0.55, …, 0.95} for which ``|pred − gt| / |gt| < 1 − θ``.

    >>> mean_relative_accuracy(2.0, 2.0)
    1.0
    >>> mean_relative_accuracy(2.2, 2.0)    # 10 % off: passes θ = 0.50 … 0.85
    0.8
    >>> mean_relative_accuracy(4.0, 2.0)
    0.0

    ``gt == 0``: 1.0 when ``pred == 0`` else 0.0. A non-finite ``pred`` scores 0.
    """
    pred, gt = float(pred), float(gt)
    if not math.isfinite(pred) or not math.isfinite(gt):
        return 0.0
    if gt == 0.0:
        return 1.0 if pred == 0.0 else 0.0
    rel_err = abs(pred - gt) / abs(gt)
    return sum(rel_err < 1.0 - t for t in MRA_THRESHOLDS) / len(MRA_THRESHOLDS)


def entry_answer(entry: Mapping[str, Any]) -> Any:
    """The entry's right answer: ``answer`` (VLM4D / ours), else ``ground_truth_answer``
    (VLM4D's judged output files)."""
    if "answer" in entry:
        return entry["answer"]
    if "ground_truth_answer" in entry:
        return entry["ground_truth_answer"]
    raise KeyError("answer")


def is_numeric(entry: Mapping[str, Any]) -> bool:
    return str(entry.get("question_type", "")).lower() in ("numeric", "numerical", "number")


def score_response(entry: Mapping[str, Any], response: str | None) -> tuple[float, str | None]:
    """Score one reply: ``(score, extracted)``.

    Multiple choice: score 1.0 when the extracted letter names an option whose text is the
    entry's answer, else 0.0; ``extracted`` is the letter or None (no answer).
    Numeric (``question_type == "numeric"``): score = MRA in [0, 1]; ``extracted`` is the
    number as text or None.

    Raises ValueError when the entry's answer matches no choice (a broken benchmark entry).
    """
    if is_numeric(entry):
        pred = extract_number(response)
        if pred is None:
            return 0.0, None
        return mean_relative_accuracy(pred, float(entry_answer(entry))), f"{pred:g}"
    choices = entry["choices"]
    right = answer_letters(entry_answer(entry), choices)
    if not right:
        raise ValueError(
            f"entry {entry.get('id', '?')!r}: answer {entry_answer(entry)!r} matches none of its "
            f"choices {dict(choices)!r}; fix the benchmark file"
        )
    letter = extract_choice(response, choices)
    return (1.0 if letter in right else 0.0), letter


def is_correct(entry: Mapping[str, Any], response: str | None) -> bool:
    """True when ``response`` answers ``entry`` right.

    Multiple choice: the extracted letter's option text equals ``entry["answer"]``.
    Numeric: MRA ≥ 0.5 (i.e. within 50 % of the truth at the loosest threshold and within
    25 % on average); the report itself averages the MRA, not this verdict.

    >>> e = {"question_type": "multiple-choice", "choices": {"A": "left", "B": "right"}, "answer": "right"}
    >>> is_correct(e, "<answer>B</answer>"), is_correct(e, "A")
    (True, False)
    """
    score, _ = score_response(entry, response)
    return score >= 0.5 if is_numeric(entry) else score == 1.0


__all__ = ["ANSWER_BLOCK", "MAX_REPLY_CHARS", "MRA_THRESHOLDS", "ST_COT_TAGS", "THINK_BLOCK", "UNPARSABLE",
           "answer_letter", "answer_letters", "answer_part", "center_label", "entry_answer", "explain_choice",
           "extract_choice", "extract_number", "follows_st_cot_format", "is_correct", "is_numeric",
           "mean_relative_accuracy", "normalize_text", "parse_centers", "score_response", "states_center"]
