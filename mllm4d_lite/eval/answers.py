"""Answer extraction and per-question scoring, shared by evaluation and the GRPO rewards.

One module, so that training is rewarded the way the benchmark is scored.

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

Ambiguous replies ("A or B", "A and C", two different letters) give ``None``, which is
scored wrong and counted as "no answer". Letters inside words ("Clockwise") never count.

Numeric questions use :func:`extract_number` and the VSI-Bench mean relative accuracy
(:func:`mean_relative_accuracy`).
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any, Mapping

DEFAULT_LETTERS = ("A", "B", "C", "D", "E", "F")

# VSI-Bench MRA thresholds, written out: 0.50, 0.55, ..., 0.95 (ten of them).
MRA_THRESHOLDS = (0.50, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95)


# --------------------------------------------------------------------------- text helpers

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
    s = s.strip(" \"'`*")
    s = re.sub(r"[\s.!;,:]+$", "", s)
    return s.strip(" \"'`*")


def _letters(choices: Mapping[str, Any] | None) -> tuple[str, ...]:
    if choices:
        return tuple(str(k).strip().upper() for k in choices)
    return DEFAULT_LETTERS


def _clean(response: str) -> str:
    """Strip markup that hides letters: LaTeX boxes, ``$``, markdown emphasis, fancy quotes."""
    s = unicodedata.normalize("NFKC", response)
    s = s.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    for _ in range(2):  # \boxed{\text{B}}
        s = re.sub(r"\\?(?:boxed|text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\[()\[\]]", " ", s)  # LaTeX inline math \( B \)
    s = s.replace("$", "").replace("**", "").replace("__", "").replace("`", "")
    return s


# --------------------------------------------------------------------------- option texts

# Word forms folded together before option texts are matched against a reply, so that
# "moves downwards" names the option "down" and "spins twice" names the option "2".
_WORD_CANON = {
    "once": "1", "one": "1", "single": "1", "twice": "2", "two": "2", "thrice": "3",
    "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
    "nine": "9", "ten": "10", "zero": "0", "none": "0",
    "downwards": "down", "downward": "down", "upwards": "up", "upward": "up",
    "leftwards": "left", "leftward": "left", "rightwards": "right", "rightward": "right",
    "forwards": "forward", "backwards": "backward", "toward": "towards",
    "anticlockwise": "counterclockwise",
}
_PHRASE_CANON = (
    (re.compile(r"\b(?:counter|anti)[\s-]*clock[\s-]*wise\b"), "counterclockwise"),
    (re.compile(r"\bclock[\s-]+wise\b"), "clockwise"),
)
_NEGATIONS = {"not", "no", "nor", "neither", "never", "n't", "isn't", "doesn't", "aren't", "don't"}


def _tokens(text: Any) -> list[str]:
    """Lower-case word tokens with the forms in ``_WORD_CANON`` folded together."""
    s = unicodedata.normalize("NFKC", str(text)).casefold().replace("\u2019", "'")
    for pattern, repl in _PHRASE_CANON:
        s = pattern.sub(repl, s)
    words = re.findall(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9.,;:!?'\"()\[\]*]", s)
    return [_singular(_WORD_CANON.get(t, t)) for t in words if t not in ("the", "a", "an")]


def _singular(word: str) -> str:
    """Crude plural folding, applied to reply and options alike ("dogs" -> "dog")."""
    if len(word) <= 3 or not word.isalpha() or word.endswith(("ss", "us", "is")):
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("xes", "ches", "shes", "sses")):
        return word[:-2]
    return word[:-1] if word.endswith("s") else word


def _find(seq: list[str], sub: list[str]) -> list[int]:
    n = len(sub)
    return [i for i in range(len(seq) - n + 1) if seq[i:i + n] == sub]


def _option_in_text(text: str, choices: Mapping[str, Any] | None, *, whole: bool) -> str | None:
    """The one option whose text equals ``text`` (``whole``) or occurs in it as a phrase.

    Word forms are folded first (``_WORD_CANON``). When several options occur, those whose
    words lie inside another matched option's words are dropped ("left" inside "left and
    away from the camera"), as are mentions right after a negation ("not left"); two options
    joined by "or"/"and" ("left or right") name none; otherwise the one mentioned last wins
    ("moving towards the right": "right", not "towards").
    """
    if not choices:
        return None
    words = _tokens(text)
    if not words:
        return None
    options = {str(k).upper(): _tokens(v) for k, v in choices.items()}
    if whole:
        found = [k for k, v in options.items() if v and v == words]
        return found[0] if len(set(map(tuple, (options[k] for k in found)))) == 1 and found else None
    spans: dict[str, tuple[int, int]] = {}
    for letter, opt in options.items():
        if not opt:
            continue
        for i in _find(words, opt):
            negated = opt[0] not in _NEGATIONS and any(w in _NEGATIONS for w in words[max(0, i - 2):i])
            if not negated:
                spans[letter] = (i, i + len(opt))  # the last mention
    # drop options covered by another match's span ("left" inside "left and right")
    keep = {k: (a, b) for k, (a, b) in spans.items()
            if not any(j != k and c <= a and b <= d and (d - c) > (b - a) for j, (c, d) in spans.items())}
    if not keep:
        return None
    if len({tuple(options[k]) for k in keep}) == 1:
        return sorted(keep)[0]
    ordered = sorted(keep.values())
    if any(words[b:c] in (["or"], ["either"], ["and"]) for (_, b), (c, _) in zip(ordered, ordered[1:])):
        return None  # "left or right": undecided
    return max(keep, key=lambda k: (keep[k][1], keep[k][1] - keep[k][0]))


# --------------------------------------------------------------------------- letters in a span

_JOINED_LETTER = re.compile(r"\s*(?:,|/|&|\bor\b|\band\b|\bnor\b)\s*[\(\[]?([A-Za-z])(?![A-Za-z0-9])")


def _letter_at_start(span: str, letters: tuple[str, ...], choices: Mapping[str, Any] | None,
                     reply_start: bool = False) -> str | None:
    """Read a chosen option from the start of ``span`` (the text after "answer is:" etc.;
    the whole reply when ``reply_start``).

    Returns a letter, ``""`` when the span is clearly ambiguous ("A or B"), or None when it
    names no option.
    """
    lines = [ln for ln in span.strip().split("\n") if re.search(r"[A-Za-z0-9]", ln)]
    if not lines:
        return None
    s = lines[0].strip().lstrip(":-=>*#\"'(;,[ \t")
    s = re.sub(r"^(?:option|choice|letter)\s*:?\s*", "", s, flags=re.I)
    m = re.match(r"([A-Za-z])\s*(?:[\)\]]|(?![A-Za-z0-9]))", s)
    if m:
        letter = m.group(1).upper()
        rest = s[m.end():]
        lone = ")" in m.group(0) or "]" in m.group(0) or not rest.strip() or re.match(r"\s*[.:,;)!\]'\"]", rest)
        if letter in letters and (m.group(1).isupper() or lone):
            other = _JOINED_LETTER.match(rest) or re.match(r"[\s.:,;)\]]*\(?([A-Z])[.)]?\s*$", rest)
            if other and other.group(1).upper() in letters and other.group(1).upper() != letter:
                return ""  # "A or B", "A, C", "B.A.", "C. B"
            if m.group(1) == "A" and re.match(r" [a-z]", rest) and not lone:
                # "A car" where an option reads "A car": the text decides; at the start of
                # a reply, "A car is moving …" is an article, not a choice
                by_text = _option_in_text(s, choices, whole=True)
                if by_text or reply_start:
                    return by_text
            return letter
    # the option's text instead of a letter
    first_sentence = re.split(r"(?<=[.!?])\s", s)[0]
    for candidate in (s, first_sentence):
        by_text = _option_in_text(candidate, choices, whole=True)
        if by_text:
            return by_text
    return None


# --------------------------------------------------------------------------- declared answers

_THEN = r"(?:\s*,?\s*(?:then|therefore|thus|clearly|simply|hence)\b\s*,?\s*:?)?"
_DECLARED = re.compile(
    r"(?:final|correct|right|best|most\s+(?:likely|appropriate|accurate|plausible|suitable)|my)\s+"
    r"(?:answer|option|choice|response)\b[^.\n:]{0,100}?(?:\bis|\bwould\s+be|\bwill\s+be|\bshould\s+be|=|:)\s*:?" + _THEN +
    r"|\banswer\b[^.\n:]{0,100}?(?:\bis|\bwould\s+be|\bwill\s+be|\bshould\s+be|=)\s*:?" + _THEN +
    r"|\banswer\s*:"
    r"|\banswer\s+(?=(?-i:[A-Z])\b)"
    r"|\bI\s+(?:choose|select|pick|would\s+choose|will\s+choose)\b\s*:?"
    r"|答案\s*(?:是|为)?\s*:?",
    re.I,
)


def _declared(text: str, letters: tuple[str, ...], choices: Mapping[str, Any] | None) -> str | None:
    """The option of the last declared answer that names one.

    ``""`` (no answer) when that declaration is ambiguous ("A or B"), or when the reply's
    last declaration is followed by text that names no option ("the final answer is: N/A",
    "…is: $LETTER"); None when the reply declares nothing.
    """
    matches = list(_DECLARED.finditer(text))
    for m in reversed(matches):
        got = _letter_at_start(text[m.end():], letters, choices)
        if got is not None:
            return got
        tail = text[m.end():].strip()
        if re.search(r"[A-Za-z0-9]", tail.split("\n")[0]):
            # "the correct answer is that the dog is not moving": an option named in words;
            # a declaration naming nothing ("the final answer is: N/A") means no answer
            first_sentence = re.split(r"(?<=[.!?\n])\s", tail)[0]
            return _option_in_text(first_sentence, choices, whole=False) or ""
    return None


_MENTION = re.compile(
    r"\b(?:option|choice)\s*[\(\[]?([A-Z])(?![A-Za-z0-9])"
    r"|(?<![A-Za-z0-9'])[\(\[]?([A-Z])[\)\]]?\s+is\s+(?:the\s+)?(?:correct|right|best|most)\b"
    r"|(?<![A-Za-z0-9'])([A-Z])\s*[:)]\s*(\S[^\n]*)"
)


def _letter_mention(sentence: str, letters: tuple[str, ...], choices: Mapping[str, Any] | None) -> str | None:
    """A letter named inside a sentence as the chosen option: "option D", "B is the correct
    answer", or "D: <D's own text>". ``""`` when the sentence names two different ones."""
    found = []
    for m in _MENTION.finditer(sentence):
        if m.group(1) or m.group(2):
            letter = m.group(1) or m.group(2)
        else:
            letter = m.group(3)
            if not choices or letter not in letters:
                continue
            option = _tokens(_choice_text(choices, letter))
            if not option or _tokens(m.group(4))[:len(option)] != option:
                continue
        if letter in letters:
            found.append(letter)
    if not found:
        return None
    return found[0] if len(set(found)) == 1 else ""


def _choice_text(choices: Mapping[str, Any], letter: str) -> Any:
    for k, v in choices.items():
        if str(k).strip().upper() == letter:
            return v
    return ""


_ABSENT_AFTER = {"visible", "present", "seen", "shown", "there", "found", "detected", "depicted", "appear"}


def _absence_option(sentence: str, choices: Mapping[str, Any]) -> str | None:
    """The "false positive" option ("no fairy there", "there are no cars in the video") when
    the sentence says that thing is absent: "There is no fairy visible", "No boat can be
    seen", "The car is not visible in the video"."""
    words = _tokens(sentence)
    found = []
    for letter, option in choices.items():
        opt = _tokens(option)
        if "no" not in opt or opt.index("no") + 1 >= len(opt):
            continue
        thing = opt[opt.index("no") + 1]
        for i, w in enumerate(words):
            if w.rstrip("e") != thing.rstrip("e"):  # "bus" / "buse" (from "buses")
                continue
            before, after = words[max(0, i - 2):i], words[i + 1:i + 5]
            if "no" in before or (("not" in after or "no" in after) and _ABSENT_AFTER & set(after)):
                found.append(str(letter).upper())
                break
    return found[0] if len(found) == 1 else None


_STOPWORDS = {"is", "are", "was", "were", "be", "of", "in", "on", "to", "it", "its", "and", "at",
              "from", "with", "by", "video", "image", "frame", "there", "this", "that", "thi"}


def _closest_option(sentence: str, choices: Mapping[str, Any]) -> str | None:
    """The option most of whose content words (≥ 2/3, at least two words) occur in
    ``sentence``, un-negated, when exactly one option scores best."""
    words = _tokens(sentence)
    negated = {w for i, w in enumerate(words) if any(x in _NEGATIONS for x in words[max(0, i - 2):i])}
    present = set(words) - negated
    scores = {}
    for letter, option in choices.items():
        content = [w for w in _tokens(option) if w not in _STOPWORDS]
        if len(content) < 2 or content[0] in _NEGATIONS:
            continue
        scores[str(letter).upper()] = sum(w in present for w in content) / len(content)
    if not scores:
        return None
    best = max(scores.values())
    winners = [k for k, v in scores.items() if v == best]
    return winners[0] if best >= 2 / 3 and len(winners) == 1 else None


# sentences, from the end of a reply, searched for an option named in words
_TEXT_WINDOW = 3


# --------------------------------------------------------------------------- public API

ANSWER_BLOCK = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)  # also the ST-reward's


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
    text = _clean(str(response)).strip()
    if not text:
        return None, "none"
    letters = _letters(choices)

    def done(got: str, rule: str) -> tuple[str | None, str]:
        return (got, rule) if got else (None, f"{rule}:ambiguous-or-unreadable")

    # 1. <answer> ... </answer> (the last one; an unclosed tag reads to the end)
    tags = [t for t in re.findall(r"<answer>(.*?)(?:</answer>|$)", text, flags=re.S | re.I)
            if re.search(r"[A-Za-z0-9]", t)]
    if tags:
        inner = tags[-1]
        got = _letter_at_start(inner, letters, choices)
        if got is None:
            got = _declared(inner, letters, choices)
        if got is None and choices:  # "<answer>The box moves left.</answer>"
            got = _option_in_text(inner, choices, whole=False) or _closest_option(inner, choices)
        # an answer block naming no option is no answer (the thinking above it is not read)
        return done(got or "", "answer-tag")

    # 2. a declared answer
    got = _declared(text, letters, choices)
    if got is not None:
        return done(got, "declared")

    # 3. the reply is an option: "C", "(C)", "C.", "C: left", "C) left"
    got = _letter_at_start(text, letters, choices, reply_start=True)
    if got is not None:
        return done(got, "option-reply")

    window = re.split(r"(?<=[.!?\n])\s+", text)[-_TEXT_WINDOW:]
    # 4. a letter named as an option near the end: "… is 'D: further away from the camera'",
    #    "option D", "B is the correct answer"
    for sentence in reversed(window):
        got = _letter_mention(sentence, letters, choices)
        if got is not None:
            return done(got, "letter-mention")

    # 5. the thing asked about is said to be absent, and an option says so ("no fairy there")
    if choices:
        for sentence in reversed(window):
            got = _absence_option(sentence, choices)
            if got:
                return got, "absent-option"

    # 6. an option's text instead of a letter: the last sentence naming an option
    if choices:
        for sentence in reversed(window):
            got = _option_in_text(sentence, choices, whole=False)
            if got:
                return got, "option-text"

    # 7. the last sentence shares most of one option's content words ("moving towards the
    #    camera" for "closer towards the camera")
    if choices and window:
        got = _closest_option(window[-1], choices)
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
    exact = [str(k).upper() for k, v in choices.items() if str(v) == str(answer_text)]
    if exact:
        return exact
    target = normalize_text(answer_text)
    return [str(k).upper() for k, v in choices.items() if normalize_text(v) == target]


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


__all__ = ["MRA_THRESHOLDS", "answer_letter", "answer_letters", "entry_answer", "explain_choice", "extract_choice",
           "extract_number", "is_correct", "is_numeric", "mean_relative_accuracy", "normalize_text", "score_response"]
