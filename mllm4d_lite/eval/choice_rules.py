"""The rules that read a chosen option out of a free-form reply, one function each.

:func:`mllm4d_lite.eval.answers.explain_choice` applies them in order (its docstring lists the
order and why); each rule returns a letter, ``""`` when the text it reads is ambiguous ("A or B")
or names nothing it should, or ``None`` when it does not apply. Option texts are compared after
folding word forms ("downwards" = "down", "twice" = "2", "dogs" = "dog"); letters inside words
("Clockwise") never count.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import Any, Mapping

DEFAULT_LETTERS = ("A", "B", "C", "D", "E", "F")
TEXT_WINDOW = 3  # sentences, from the end of a reply, searched for an option named in words


def letter_key(key: Any) -> str:
    """An option's letter as every rule returns it: ``" b"`` -> ``"B"``."""
    return str(key).strip().upper()


def letters_of(choices: Mapping[str, Any] | None) -> tuple[str, ...]:
    if choices:
        return tuple(letter_key(k) for k in choices)
    return DEFAULT_LETTERS


def clean_reply(response: str) -> str:
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
    return list(_tokens_of(str(text)))


@functools.lru_cache(maxsize=64)
def _tokens_of(text: str) -> tuple[str, ...]:
    """:func:`_tokens`, remembered: the rules read the same sentences and options several times."""
    s = unicodedata.normalize("NFKC", text).casefold().replace("\u2019", "'")
    for pattern, repl in _PHRASE_CANON:
        s = pattern.sub(repl, s)
    words = re.findall(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9.,;:!?'\"()\[\]*]", s)
    folded = {w: _singular(_WORD_CANON.get(w, w)) for w in set(words)}  # each distinct word once
    return tuple(folded[w] for w in words if w not in ("the", "a", "an"))


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
    """Start positions of ``sub`` inside ``seq`` (``sub`` not empty)."""
    n, first = len(sub), sub[0]
    return [i for i, w in enumerate(seq) if w == first and seq[i:i + n] == sub]


def option_in_text(text: str, choices: Mapping[str, Any] | None, *, whole: bool) -> str | None:
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
    options = {letter_key(k): _tokens(v) for k, v in choices.items()}
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


def letter_at_start(span: str, letters: tuple[str, ...], choices: Mapping[str, Any] | None,
                     reply_start: bool = False) -> str | None:
    """Read a chosen option from the start of ``span`` (the text after "answer is:" etc.;
    the whole reply when ``reply_start``).

    Returns a letter, ``""`` when the span is clearly ambiguous ("A or B"), or None when it
    names no option.
    """
    first = _ALNUM.search(span)
    if first is None:
        return None
    # the first line holding a letter or digit (read without splitting the whole span)
    line_end = span.find("\n", first.start())
    line = span[span.rfind("\n", 0, first.start()) + 1:line_end if line_end >= 0 else len(span)]
    s = line.strip().lstrip(":-=>*#\"'(;,[ \t")
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
                by_text = option_in_text(s, choices, whole=True)
                if by_text or reply_start:
                    return by_text
            return letter
    # the option's text instead of a letter
    first_sentence = re.split(r"(?<=[.!?])\s", s)[0]
    for candidate in (s, first_sentence):
        by_text = option_in_text(candidate, choices, whole=True)
        if by_text:
            return by_text
    return None


# --------------------------------------------------------------------------- declared answers

_THEN = r"(?:\s*,?\s*(?:then|therefore|thus|clearly|simply|hence)\b\s*,?\s*:?)?"
# The lookaheads only skip, at one character's cost, positions where no declaration (or no
# "is"/"would"/"will"/"should"/"="/":" after one) can start; the matches are the same.
_DECLARED = re.compile(
    r"(?=[fcrbmai答])(?:"
    r"(?:final|correct|right|best|most\s+(?:likely|appropriate|accurate|plausible|suitable)|my)\s+"
    r"(?:answer|option|choice|response)\b[^.\n:]{0,100}?(?=[isw=:])"
    r"(?:\bis|\bwould\s+be|\bwill\s+be|\bshould\s+be|=|:)\s*:?"
    + _THEN +
    r"|\banswer\b[^.\n:]{0,100}?(?=[isw=])(?:\bis|\bwould\s+be|\bwill\s+be|\bshould\s+be|=)\s*:?" + _THEN +
    r"|\banswer\s*:"
    r"|\banswer\s+(?=(?-i:[A-Z])\b)"
    r"|\bI\s+(?:choose|select|pick|would\s+choose|will\s+choose)\b\s*:?"
    r"|答案\s*(?:是|为)?\s*:?)",
    re.I,
)


def declared_answer(text: str, letters: tuple[str, ...], choices: Mapping[str, Any] | None) -> str | None:
    """The option of the last declared answer that names one.

    ``""`` (no answer) when that declaration is ambiguous ("A or B"), or when the reply's
    last declaration is followed by text that names no option ("the final answer is: N/A",
    "…is: $LETTER"); None when the reply declares nothing.
    """
    matches = list(_DECLARED.finditer(text))
    if not matches:
        return None
    alnum_after = _FirstFrom(text, _ALNUM)
    line_start: dict[int, int] = {}  # per first letter or digit: where its line starts
    read: dict[int, str | None] = {}  # per first letter or digit: what its line names
    for m in reversed(matches):
        first = alnum_after(m.end())  # the first letter or digit after the declaration
        if first == len(text):
            continue  # nothing but punctuation follows: names nothing, decides nothing
        start = _SPACES.match(text, m.end()).end()
        if first not in line_start:
            line_start[first] = text.rfind("\n", 0, first) + 1
        if line_start[first] > start:
            # the line right after the declaration holds no letter or digit; the first line
            # that does is the same for every earlier declaration up to here: read it once
            if first not in read:
                line_end = text.find("\n", first)
                read[first] = letter_at_start(text[line_start[first]:line_end if line_end >= 0 else len(text)],
                                              letters, choices)
            if read[first] is not None:
                return read[first]
            continue
        got = letter_at_start(text[start:], letters, choices)
        if got is not None:
            return got
        # "the correct answer is that the dog is not moving": an option named in words;
        # a declaration naming nothing ("the final answer is: N/A") means no answer
        first_sentence = re.split(r"(?<=[.!?\n])\s", text[start:].rstrip())[0]
        return option_in_text(first_sentence, choices, whole=False) or ""
    return None


_ALNUM = re.compile(r"[A-Za-z0-9]")
_SPACES = re.compile(r"\s*")


class _FirstFrom:
    """The first match of ``pattern`` at or after a position (``len(text)`` when none), asked
    for positions in non-increasing order: each stretch of the text is searched only once."""

    def __init__(self, text: str, pattern: re.Pattern[str]) -> None:
        self.text, self.pattern = text, pattern
        self.searched_from = self.found = len(text)

    def __call__(self, pos: int) -> int:
        if pos > self.searched_from:
            raise ValueError("positions must not increase")
        m = self.pattern.search(self.text, pos, self.searched_from)
        if m is not None:
            self.found = m.start()
        self.searched_from = pos
        return self.found


_MENTION = re.compile(
    r"\b(?:option|choice)\s*[\(\[]?([A-Z])(?![A-Za-z0-9])"
    r"|(?<![A-Za-z0-9'])[\(\[]?([A-Z])[\)\]]?\s+is\s+(?:the\s+)?(?:correct|right|best|most)\b"
    r"|(?<![A-Za-z0-9'])([A-Z])\s*[:)]\s*(\S[^\n]*)"
)


def letter_mention(sentence: str, letters: tuple[str, ...], choices: Mapping[str, Any] | None) -> str | None:
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
        if letter_key(k) == letter:
            return v
    return ""


_ABSENT_AFTER = {"visible", "present", "seen", "shown", "there", "found", "detected", "depicted", "appear"}


def absence_option(sentence: str, choices: Mapping[str, Any]) -> str | None:
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
                found.append(letter_key(letter))
                break
    return found[0] if len(found) == 1 else None


_STOPWORDS = {"is", "are", "was", "were", "be", "of", "in", "on", "to", "it", "its", "and", "at",
              "from", "with", "by", "video", "image", "frame", "there", "this", "that", "thi"}


def closest_option(sentence: str, choices: Mapping[str, Any]) -> str | None:
    """The option most of whose content words (≥ 2/3, at least two words) occur in
    ``sentence``, un-negated, when exactly one option scores best."""
    words = _tokens(sentence)
    # words one or two places after a negation
    negated = {words[j] for i, w in enumerate(words) if w in _NEGATIONS for j in (i + 1, i + 2) if j < len(words)}
    present = set(words) - negated
    scores = {}
    for letter, option in choices.items():
        content = [w for w in _tokens(option) if w not in _STOPWORDS]
        if len(content) < 2 or content[0] in _NEGATIONS:
            continue
        scores[letter_key(letter)] = sum(w in present for w in content) / len(content)
    if not scores:
        return None
    best = max(scores.values())
    winners = [k for k, v in scores.items() if v == best]
    return winners[0] if best >= 2 / 3 and len(winners) == 1 else None
