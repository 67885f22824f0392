"""ST-reward for GRPO: format, accuracy, camera and object rewards (TRL reward functions).

Each reward has TRL's signature ``reward(completions, **kwargs) -> list[float]`` and returns
one UNWEIGHTED score in [0, 1] per completion; the weights (release: format 0.2, accuracy 0.6,
camera 0.1, object 0.1) live in the recipe's ``reward_weights``. Completions may be plain text
or conversational (``[{"role": "assistant", "content": "..." | [{"type": "text", "text": ...}]}]``).
Dataset columns arrive through ``**kwargs`` as lists, one item per completion (a scalar or a
one-item list is broadcast): ``answer``, ``choices``, ``question_type`` (accuracy) and
``solution`` (camera, object), as written to ``rft.jsonl`` (see design.md).

A malformed completion never raises: it scores 0 (or what the definition gives it) and is
counted in :data:`REWARD_STATS` by reward and reason; inside TRL each call also reports the
fraction of malformed completions through the trainer's ``log_metric`` hook as
``malformed/<reward>``; the accuracy reward also logs ``accuracy/<category>``, the mean
accuracy per question category of the call (when the ``category`` column is there). A missing
dataset column, or a column of the wrong length, is a wiring error and raises ``ValueError``.

Definitions (release: ``qwen-vl-rft/ST-reward.py`` of GVCLab/MLLM-4D)
------------------------------------------------------------------------
- format: 0.5 if a ``<thinking>…</thinking>`` and an ``<answer>…</answer>`` block are present;
  +0.4 if a ``Camera Center: [...]`` and an ``Object Center: [...]`` are stated; +0.1 if the
  thinking block is longer than 20 characters.
- accuracy: multiple choice, 1 if the option extracted from the reply by
  :func:`mllm4d_lite.eval.answers.extract_choice` (the evaluator's extractor: the letter, or the
  option's text, inside ``<answer>``, else a declared answer, ...) is the right option, else 0.
  Numeric questions: the VSI-Bench mean relative accuracy of :func:`~mllm4d_lite.eval.answers.
  extract_number`'s number (ten thresholds 0.50, 0.55, ..., 0.95). Scored by
  :func:`mllm4d_lite.eval.answers.score_response`, i.e. exactly as the benchmark scores it.
- camera / object: ``exp(-mean L2 error)`` (metres) between predicted and ground-truth centres
  paired in order; 0 when counts or shapes differ; when the ground truth has no centre: 1 if
  the prediction states none, else 0. Computed with ``math.hypot``/``math.exp``, so a huge
  error gives exactly 0.0 (no overflow, no NaN); a non-finite number scores 0.

Deviations from the release (each a field of :class:`RewardOptions`; ``strict_release=True``,
i.e. ``RewardOptions.release()``, switches all of them off and gives the release formulas)
------------------------------------------------------------------------------------------
D1 ``empty_answer_guard``: an empty (whitespace-only) ``<answer></answer>`` earns no accuracy
   (the extractor would otherwise fall back to a letter elsewhere in the reply) and not the
   0.5 answer-format credit. Release: the empty block counts as present.
D2 ``repeated_block_guard``: a reply with more than one ``<thinking>`` or ``<answer>`` tag
   (opening or closing) earns format 0. Release: any number of blocks earn full credit.
D3 ``think_inner_length``: the +0.1 needs more than 20 characters INSIDE the thinking block
   (stripped). Release: the length of the whole match including both tags, so any thinking
   block, even ``<thinking></thinking>`` (21 characters), earns it.
D4 ``lenient_centers``: a centre is ``<label>: [x, y, z]`` with the label matched
   case-insensitively and with optional spaces (``camera center : [...]``); numbers may be
   negative, decimal or scientific; ``null`` (bare, as the kit's ST-CoT prompt asks, or
   inside brackets) is a stated-but-unknown centre and counts as stated for the format
   reward. Every label followed by something else (``[a, b, c]``, ``[1, 2]``, ``[[1,2,3]]``,
   ``unknown``, a non-finite number) is an UNPARSABLE entry: it is kept, not dropped, so the
   completion scores 0 (and, when the ground truth has no centre, it is a stated centre, so
   also 0). Release: a case-sensitive ``Camera Center:\\s*[...]`` parsed with
   ``ast.literal_eval``; one unparsable entry empties the whole prediction (so garbage scores
   1 when the ground truth has no centre); format credit needs brackets, so a bare ``null``
   does not count as stated.
D5 ``position_pairing``: ``null`` entries keep their slot and centres are paired first-with-
   first, last-with-last; the prediction must have as many entries (nulls included) as the
   ground truth, and a null must sit where the ground truth has none, else 0. Release: nulls
   are dropped from both lists and the rest paired in order (a shifted null pairs the last
   state with the first).
D6 ``choice_matching``: accuracy by extracted option / numeric MRA as described above.
   Release: 1 iff the stripped text inside ``<answer>`` (or the whole stripped reply without
   the tag) equals the ``answer`` column exactly (kit data: the option's text, so a letter
   answer scores 0 in release mode).
D7 ``answer_part_only`` (with D6): the option or number is read only from the part of the reply
   that may hold the answer (:func:`mllm4d_lite.eval.answers.answer_part`): the ``<answer>`` block, else
   what follows a closed ``</thinking>``; a reply whose ``<thinking>`` never closes has no answer.
   Without it the extractor's fallbacks read the reasoning: in tiny GRPO runs, replies whose tags
   had broken earned accuracy for the "right" in "dx = 0.00 m (right +)", so breaking the
   format paid and the format reward fell (0.93 -> 0.52 in 30 steps). Release: D6 off, exact
   string equality.

Example::

    >>> sol = {"camera_center": [[0, 0, 0], [0, 0, 2]], "object_center": [], "frames": [0, 7]}
    >>> text = "<thinking>Camera Center: [0, 0, 0] ... Camera Center: [0, 0, 1.5]</thinking><answer>B</answer>"
    >>> round(camera_reward([text], solution=[sol])[0], 4)   # exp(-(0 + 0.5) / 2)
    0.7788
    >>> object_reward([text], solution=[sol])                 # no object centre, none stated
    [1.0]
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import logging
import math
import re
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from mllm4d_lite.eval.answers import ANSWER_BLOCK, answer_part, normalize_text, score_response

log = logging.getLogger(__name__)

REWARD_NAMES = ("format", "accuracy", "camera", "object")
RELEASE_REWARD_WEIGHTS = {"format": 0.2, "accuracy": 0.6, "camera": 0.1, "object": 0.1}
"""The release's weights, for reference and tests; a run takes its weights from the recipe."""


@dataclass(frozen=True)
class RewardOptions:
    """Switches for the kit's deviations from the release formulas (D1-D7, module docstring).

    ``RewardOptions()`` is the kit's default (all on); ``RewardOptions.release()`` is the exact
    release formula (all off).
    """

    empty_answer_guard: bool = True  # D1
    repeated_block_guard: bool = True  # D2
    think_inner_length: bool = True  # D3
    lenient_centers: bool = True  # D4
    position_pairing: bool = True  # D5
    choice_matching: bool = True  # D6
    answer_part_only: bool = True  # D7

    @classmethod
    def release(cls) -> "RewardOptions":
        return cls(**{f.name: False for f in dataclasses.fields(cls)})


def _resolve_options(strict_release: bool, options: RewardOptions | None) -> RewardOptions:
    if options is not None:
        if not isinstance(options, RewardOptions):
            raise TypeError(f"options must be a RewardOptions, got {type(options).__name__}")
        return options
    return RewardOptions.release() if strict_release else RewardOptions()


# --------------------------------------------------------------------------- malformed counter

class RewardStats:
    """Counts of scored and malformed completions, per reward and reason (thread-safe).

    ``REWARD_STATS.count("camera", "unparsable_center")``; ``snapshot()`` gives
    ``{"camera": {"scored": 96, "unparsable_center": 3, ...}, ...}``. Reasons: ``scored`` (every
    completion), ``unreadable`` (not text), ``internal_error`` (a bug: logged with its traceback),
    ``non_finite``; format: ``missing_blocks``, ``empty_answer``, ``repeated_blocks``; accuracy:
    ``empty_answer``, ``no_answer`` (nothing extractable), ``bad_ground_truth``; camera/object:
    ``count_mismatch``, ``unparsable_center``, ``null_mismatch``, ``unexpected_center`` (stated
    where the truth has none), ``bad_ground_truth``.
    """

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def add(self, reward: str, reason: str, n: int = 1) -> None:
        with self._lock:
            self._counts[(reward, reason)] += n

    def count(self, reward: str | None = None, reason: str | None = None) -> int:
        with self._lock:
            return sum(v for (rw, rs), v in self._counts.items()
                       if (reward is None or rw == reward) and (reason is None or rs == reason))

    def malformed(self, reward: str | None = None) -> int:
        """All counted problems (every reason except ``scored``)."""
        return self.count(reward) - self.count(reward, "scored")

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            out: dict[str, dict[str, int]] = {}
            for (rw, rs), v in sorted(self._counts.items()):
                out.setdefault(rw, {})[rs] = v
            return out

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


REWARD_STATS = RewardStats()


# --------------------------------------------------------------------------- inputs

def completion_text(completion: Any) -> str | None:
    """The text of one completion, or None when it cannot be read.

    Accepts a string, a message ``{"role": "assistant", "content": ...}``, or a list of
    messages (TRL's conversational form; the assistant messages' texts are joined with
    newlines, messages without a role count as the assistant's). ``content`` may be a string
    or a list of parts ``{"type": "text", "text": ...}`` (other parts are skipped).

    >>> completion_text([{"role": "assistant", "content": [{"type": "text", "text": "hi"}]}])
    'hi'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    if not isinstance(completion, (list, tuple)):
        return None
    texts = []
    for message in completion:
        if not isinstance(message, Mapping) or message.get("role", "assistant") != "assistant":
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, (list, tuple)):
            parts = [p if isinstance(p, str) else p.get("text") for p in content
                     if isinstance(p, str) or (isinstance(p, Mapping) and p.get("type", "text") == "text")]
            if not all(isinstance(p, str) for p in parts):
                return None
            texts.append("".join(parts))
        else:
            return None
    return "\n".join(texts) if texts else None


def _completions(completions: Any, reward: str) -> list[Any]:
    """The batch as a list; a bare string or non-sequence is a wiring error (not model output)."""
    if isinstance(completions, (str, bytes)) or not isinstance(completions, (list, tuple)):
        raise ValueError(f"{reward}_reward takes a list of completions (one per sample), got "
                         f"{type(completions).__name__}; wrap a single completion as [completion]")
    return list(completions)


def _column(kwargs: Mapping[str, Any], name: str, n: int, reward: str, required: bool = True) -> list[Any]:
    """Column ``name`` as a list of ``n`` items; a scalar or a one-item list is broadcast."""
    if name not in kwargs:
        if not required:
            return [None] * n
        raise ValueError(
            f"{reward}_reward needs the dataset column {name!r} (rft.jsonl records carry it); got "
            f"columns {sorted(k for k in kwargs if k not in ('trainer_state', 'log_extra', 'log_metric'))}"
        )
    value = kwargs[name]
    if isinstance(value, (list, tuple)):
        if len(value) == n:
            return list(value)
        if len(value) == 1:
            return list(value) * n
        raise ValueError(f"column {name!r} has {len(value)} items for {n} completions; pass one per completion")
    return [value] * n


def _maybe_json(value: Any) -> Any:
    """Columns stored as JSON strings (to dodge Arrow's struct columns) are decoded."""
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _report(reward: str, reasons: list[str | None], log_metric: Any) -> None:
    """Count this call's outcomes and, inside TRL, log the malformed fraction."""
    REWARD_STATS.add(reward, "scored", len(reasons))
    for reason in reasons:
        if reason is not None:
            REWARD_STATS.add(reward, reason)
    if callable(log_metric) and reasons:
        try:
            log_metric(f"malformed/{reward}", sum(r is not None for r in reasons) / len(reasons))
        except Exception:  # logging must never break a training step
            log.debug("log_metric failed for %s", reward, exc_info=True)


def _safe(reward: str, score: Callable[[], tuple[float, str | None]]) -> tuple[float, str | None]:
    """Run one completion's scoring; an unexpected error scores 0, is logged and counted."""
    try:
        value, reason = score()
    except Exception:
        log.warning("%s reward: unexpected error, scored 0", reward, exc_info=True)
        return 0.0, "internal_error"
    if not math.isfinite(value):
        return 0.0, "non_finite"
    return min(1.0, max(0.0, float(value))), reason


# --------------------------------------------------------------------------- format

_THINK_BLOCK = re.compile(r"<thinking>(.*?)</thinking>", re.DOTALL)
_TAGS = ("<thinking>", "</thinking>", "<answer>", "</answer>")


def _center_label(kind: str, lenient: bool) -> re.Pattern[str]:
    if lenient:
        return re.compile(kind + r"\s*center\s*:", re.IGNORECASE)
    return re.compile(kind.capitalize() + r" Center:")


_STATED_LENIENT = {k: re.compile(k + r"\s*center\s*:\s*(?:\[|null\b)", re.IGNORECASE) for k in ("camera", "object")}
# The release's presence test: a bracketed span after the exact label.
_STATED_RELEASE = {k: re.compile(k.capitalize() + r" Center:\s*(\[+.*?\]+)", re.DOTALL) for k in ("camera", "object")}


def _format_score(text: str, opts: RewardOptions) -> tuple[float, str | None]:
    if opts.repeated_block_guard and any(text.count(tag) > 1 for tag in _TAGS):
        return 0.0, "repeated_blocks"
    think = _THINK_BLOCK.search(text)
    answer = ANSWER_BLOCK.search(text)
    reason = None if think and answer else "missing_blocks"
    if opts.empty_answer_guard and answer and not answer.group(1).strip():
        answer, reason = None, "empty_answer"
    stated = _STATED_LENIENT if opts.lenient_centers else _STATED_RELEASE
    score = 0.0
    if think and answer:
        score += 0.5
    if stated["camera"].search(text) and stated["object"].search(text):
        score += 0.4
    if think:
        length = len(think.group(1).strip()) if opts.think_inner_length else len(think.group(0))
        if length > 20:
            score += 0.1
    return score, reason


def format_reward(completions: Sequence[Any], *, strict_release: bool = False,
                  options: RewardOptions | None = None, **kwargs: Any) -> list[float]:
    """Format of an ST-CoT reply, in [0, 1]: 0.5 thinking + answer blocks, 0.4 camera and
    object centres stated, 0.1 thinking longer than 20 characters (guards D1-D4).

    >>> format_reward(["<thinking>Camera Center: [0, 0, 0]; Object Center: null</thinking><answer>A</answer>"])
    [1.0]
    """
    opts = _resolve_options(strict_release, options)
    completions = _completions(completions, "format")
    scores, reasons = [], []
    for completion in completions:
        text = completion_text(completion)
        if text is None:
            value, reason = 0.0, "unreadable"
        else:
            value, reason = _safe("format", lambda: _format_score(text, opts))
        scores.append(value)
        reasons.append(reason)
    _report("format", reasons, kwargs.get("log_metric"))
    return scores


# --------------------------------------------------------------------------- accuracy

def _clean_choices(choices: Any) -> dict[str, Any] | None:
    """Choices as ``{letter: text}`` without the ``None`` entries Arrow adds to struct columns."""
    choices = _maybe_json(choices)
    if not isinstance(choices, Mapping):
        return None
    cleaned = {str(k): v for k, v in choices.items() if v is not None}
    return cleaned or None


def _is_number(text: Any) -> bool:
    try:
        return math.isfinite(float(str(text).strip()))
    except ValueError:
        return False


def _accuracy_score(text: str, answer: Any, choices: Any, question_type: Any,
                    opts: RewardOptions) -> tuple[float, str | None]:
    if answer is None:
        return 0.0, "bad_ground_truth"
    tagged = ANSWER_BLOCK.search(text)
    if opts.empty_answer_guard and tagged and not tagged.group(1).strip():
        return 0.0, "empty_answer"
    if not opts.choice_matching:  # the release: exact string equality
        generated = tagged.group(1).strip() if tagged else text.strip()
        return (1.0 if generated == str(answer) else 0.0), None
    choices = _clean_choices(choices)
    if question_type is None:  # column absent: a number without choices is a numeric question
        question_type = "numeric" if choices is None and _is_number(answer) else "multiple-choice"
    entry = {"question_type": question_type, "choices": choices, "answer": answer}
    numeric = str(question_type).lower() in ("numeric", "numerical", "number")
    if numeric and not _is_number(answer):
        return 0.0, "bad_ground_truth"
    if not numeric and choices is None:  # free-text answer without options: normalised equality
        generated = tagged.group(1) if tagged else text
        ok = normalize_text(generated) == normalize_text(answer) != ""
        return (1.0 if ok else 0.0), None
    if opts.answer_part_only:
        text = answer_part(text)
    try:
        score, extracted = score_response(entry, text)
    except ValueError:  # the answer is none of the choices: a broken record
        return 0.0, "bad_ground_truth"
    return score, "no_answer" if extracted is None else None


def accuracy_reward(completions: Sequence[Any], *, strict_release: bool = False,
                    options: RewardOptions | None = None, **kwargs: Any) -> list[float]:
    """Answer correctness in [0, 1], scored as evaluation scores it (columns ``answer``,
    ``choices``, optional ``question_type``).

    >>> accuracy_reward(["<answer>B</answer>", "<answer>left</answer>", "A"],
    ...                 answer="left", choices={"A": "right", "B": "left"})
    [1.0, 1.0, 0.0]
    """
    opts = _resolve_options(strict_release, options)
    completions = _completions(completions, "accuracy")
    n = len(completions)
    answers = _column(kwargs, "answer", n, "accuracy")
    choices = _column(kwargs, "choices", n, "accuracy", required=False)
    qtypes = _column(kwargs, "question_type", n, "accuracy", required=False)
    scores, reasons = [], []
    for completion, answer, choice_map, qtype in zip(completions, answers, choices, qtypes):
        text = completion_text(completion)
        if text is None:
            value, reason = 0.0, "unreadable"
        else:
            value, reason = _safe("accuracy", lambda: _accuracy_score(text, answer, choice_map, qtype, opts))
        if reason == "bad_ground_truth":
            log.warning("accuracy reward: answer %r fits neither choices %r nor question_type %r, scored 0; "
                        "fix the rft.jsonl record", answer, choice_map, qtype)
        scores.append(value)
        reasons.append(reason)
    _report("accuracy", reasons, kwargs.get("log_metric"))
    _report_by_category(scores, kwargs)
    return scores


def _report_by_category(scores: Sequence[float], kwargs: Mapping[str, Any]) -> None:
    """Inside TRL, log the mean accuracy of each question category in this call as
    ``accuracy/<category>`` (the ``category`` column of ``rft.jsonl``; nothing without it), so a
    run shows which categories GRPO raises and which it unlearns."""
    log_metric = kwargs.get("log_metric")
    if not callable(log_metric):
        return
    categories = _column(kwargs, "category", len(scores), "accuracy", required=False)
    by: dict[str, list[float]] = {}
    for category, score in zip(categories, scores):
        if category:
            by.setdefault(str(category), []).append(score)
    for category, values in sorted(by.items()):
        try:
            log_metric(f"accuracy/{category}", sum(values) / len(values))
        except Exception:  # logging must never break a training step
            log.debug("log_metric failed for accuracy/%s", category, exc_info=True)


# --------------------------------------------------------------------------- camera / object centres

_UNPARSABLE = "unparsable"  # marker for an entry that states a centre we cannot read
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_VALUE_LENIENT = re.compile(r"\s*(null\b|\[[^\[\]]*\])", re.IGNORECASE)
_VALUE_RELEASE = re.compile(r"\s*(\[.*?\])")


def _parse_vector_lenient(span: str) -> Any:
    inner = span.strip()[1:-1]
    if "null" in inner.lower():
        return None
    tokens = [t.strip() for t in inner.split(",")]
    if len(tokens) != 3 or not all(_NUMBER.fullmatch(t) for t in tokens):
        return _UNPARSABLE
    vector = tuple(float(t) for t in tokens)
    return vector if all(math.isfinite(v) for v in vector) else _UNPARSABLE


def _parse_vector_release(span: str) -> Any:
    """One release entry: ``ast.literal_eval`` of the bracketed text (raises when unparsable)."""
    if "null" in span.lower():
        return None
    value = ast.literal_eval(span.strip())
    if not (isinstance(value, (list, tuple)) and len(value) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        return _UNPARSABLE  # other shapes or types: the release's shape check gives 0
    try:
        vector = tuple(float(v) for v in value)
    except OverflowError:  # an integer beyond float range
        return _UNPARSABLE
    return vector if all(math.isfinite(v) for v in vector) else _UNPARSABLE


def parse_centers(text: str, kind: str, *, lenient: bool = True) -> list[Any]:
    """The ``kind`` ("camera" | "object") centres stated in ``text``, in order.

    Each entry is ``(x, y, z)`` floats, ``None`` for ``null``, or the marker ``"unparsable"``.
    ``lenient=False`` reads as the release does: exact label, ``ast.literal_eval``, and one
    unparsable entry empties the list.

    >>> parse_centers("Camera Center: [1, -2.5, 3e-1] camera center : null Camera Center: [a, b]", "camera")
    [(1.0, -2.5, 0.3), None, 'unparsable']
    """
    label = _center_label(kind, lenient)
    value_re = _VALUE_LENIENT if lenient else _VALUE_RELEASE
    entries: list[Any] = []
    for m in label.finditer(text):
        value = value_re.match(text, m.end())
        if not lenient:
            if value is None:
                continue  # the release's regex needs a bracket after the label
            try:
                entries.append(_parse_vector_release(value.group(1)))
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                return []  # the release: any failure empties the whole prediction
            continue
        if value is None:
            entries.append(_UNPARSABLE)
        elif value.group(1).lower() == "null":
            entries.append(None)
        else:
            entries.append(_parse_vector_lenient(value.group(1)))
    return entries


def _ground_truth_centers(solution: Any, key: str) -> list[tuple[float, float, float] | None] | None:
    """``solution[key]`` as a list of (x, y, z) | None; None when the record is broken."""
    solution = _maybe_json(solution)
    if isinstance(solution, (list, tuple)) and len(solution) == 1:  # the release's [dict] form
        solution = solution[0]
    if not isinstance(solution, Mapping):
        return None
    raw = solution.get(key) or []
    if not isinstance(raw, (list, tuple)):
        return None
    out: list[tuple[float, float, float] | None] = []
    for c in raw:
        if c is None:
            out.append(None)
            continue
        if (not isinstance(c, (list, tuple)) or len(c) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in c)):
            return None
        out.append(tuple(float(v) for v in c))
    return out


def _center_score(text: str, gt: list[Any] | None, kind: str, opts: RewardOptions) -> tuple[float, str | None]:
    if gt is None:
        return 0.0, "bad_ground_truth"
    entries = parse_centers(text, kind, lenient=opts.lenient_centers)
    stated = [e for e in entries if e is not None]  # centres and unparsable entries
    if all(g is None for g in gt):
        return (1.0, None) if not stated else (0.0, "unexpected_center")
    if opts.position_pairing:
        if len(entries) != len(gt):
            return 0.0, "count_mismatch"
        pairs = [(p, g) for p, g in zip(entries, gt) if not (p is None and g is None)]
    else:  # the release: drop nulls, pair the rest in order
        truth = [g for g in gt if g is not None]
        if len(stated) != len(truth):
            return 0.0, "count_mismatch"
        pairs = list(zip(stated, truth))
    errors_m = []
    for p, g in pairs:
        if p is _UNPARSABLE:
            return 0.0, "unparsable_center"
        if p is None or g is None:
            return 0.0, "null_mismatch"
        errors_m.append(math.hypot(*(a - b for a, b in zip(p, g))))  # scaled: no overflow to NaN
    mean_error_m = math.fsum(errors_m) / len(errors_m)
    return math.exp(-mean_error_m), None  # exp(-inf) == 0.0


def _centers_reward(kind: str, completions: Sequence[Any], strict_release: bool,
                    options: RewardOptions | None, kwargs: Mapping[str, Any]) -> list[float]:
    opts = _resolve_options(strict_release, options)
    completions = _completions(completions, kind)
    solutions = _column(kwargs, "solution", len(completions), kind)
    key = f"{kind}_center"
    scores, reasons = [], []
    for completion, solution in zip(completions, solutions):
        text = completion_text(completion)
        if text is None:
            value, reason = 0.0, "unreadable"
        else:
            value, reason = _safe(kind, lambda: _center_score(text, _ground_truth_centers(solution, key), kind, opts))
        if reason == "bad_ground_truth":
            log.warning("%s reward: unreadable solution[%r] %r, scored 0; fix the rft.jsonl record",
                        kind, key, solution)
        scores.append(value)
        reasons.append(reason)
    _report(kind, reasons, kwargs.get("log_metric"))
    return scores


def camera_reward(completions: Sequence[Any], *, strict_release: bool = False,
                  options: RewardOptions | None = None, **kwargs: Any) -> list[float]:
    """``exp(-mean L2 error in metres)`` between the stated and the true camera centres
    (column ``solution["camera_center"]``), in [0, 1] (D4, D5).

    >>> sol = {"camera_center": [[0, 0, 0], [3, 4, 0]], "object_center": []}
    >>> camera_reward(["Camera Center: [0, 0, 0] Camera Center: [0, 0, 0]"], solution=[sol]) == [math.exp(-2.5)]
    True
    """
    return _centers_reward("camera", completions, strict_release, options, kwargs)


def object_reward(completions: Sequence[Any], *, strict_release: bool = False,
                  options: RewardOptions | None = None, **kwargs: Any) -> list[float]:
    """``exp(-mean L2 error in metres)`` between the stated and the true object centres
    (column ``solution["object_center"]``), in [0, 1] (D4, D5).

    >>> object_reward(["Object Center: null"], solution={"object_center": []})
    [1.0]
    """
    return _centers_reward("object", completions, strict_release, options, kwargs)


# --------------------------------------------------------------------------- registry

REWARD_FUNCS: dict[str, Callable[..., list[float]]] = {
    "format": format_reward,
    "accuracy": accuracy_reward,
    "camera": camera_reward,
    "object": object_reward,
}


def _reward_names(names: Sequence[str] | str) -> list[str]:
    """``["format", "accuracy"]`` or ``"format,accuracy"`` -> checked list (known, non-empty, unique)."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names)
    unknown = [n for n in names if n not in REWARD_FUNCS]
    if unknown:
        raise ValueError(f"unknown reward(s) {unknown}; choose from {list(REWARD_NAMES)}")
    if not names:
        raise ValueError(f"no reward selected; choose one or more of {list(REWARD_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"reward names repeat in {names}; name each reward once")
    return names


def get_reward_funcs(names: Sequence[str], strict_release: bool = False,
                     options: RewardOptions | None = None) -> list[Callable[..., list[float]]]:
    """The reward functions for ``names`` (a subset of ``REWARD_NAMES``, in the given order),
    bound to the release formulas (``strict_release``) or to ``options``.

    The results are picklable ``functools.partial`` objects whose ``__name__`` is the
    function's (``format_reward``, ...), so TRL logs ``rewards/format_reward/mean`` in every
    mode. Leaving names out is the paper's reward ablation.
    """
    names = _reward_names(names)
    opts = _resolve_options(strict_release, options)
    funcs = []
    for name in names:
        bound = functools.partial(REWARD_FUNCS[name], options=opts)
        functools.update_wrapper(bound, REWARD_FUNCS[name])
        funcs.append(bound)
    return funcs


def check_reward_config(names: Sequence[str], weights: Sequence[float] | None) -> None:
    """Validate a recipe's ``reward_funcs`` names and ``reward_weights`` (same length, finite,
    non-negative, not all zero); raise ``ValueError`` naming the fix. ``weights=None`` means
    TRL's default (1.0 each)."""
    names = _reward_names(names)
    if weights is None:
        return
    weights = list(weights)
    if len(weights) != len(names):
        raise ValueError(f"reward_weights has {len(weights)} values for {len(names)} rewards {list(names)}; "
                         f"give one weight per reward (release: {RELEASE_REWARD_WEIGHTS})")
    bad = [w for w in weights if not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0]
    if bad or not any(weights):
        raise ValueError(f"reward_weights {weights} must be finite, non-negative and not all zero")


def weighted_total(scores: Mapping[str, Sequence[float]], weights: Mapping[str, float]) -> list[float]:
    """Per-completion ``sum_k weights[k] * scores[k][i]`` (what GRPO maximises), for tests and logs.

    >>> weighted_total({"format": [1.0, 0.5], "accuracy": [1.0, 0.0]}, {"format": 0.2, "accuracy": 0.6})
    [0.8, 0.1]
    """
    missing = [k for k in scores if k not in weights]
    if missing:
        raise ValueError(f"no weight for reward(s) {missing}; weights given for {sorted(weights)}")
    lengths = {len(v) for v in scores.values()}
    if len(lengths) > 1:
        raise ValueError(f"reward score lists differ in length: { {k: len(v) for k, v in scores.items()} }")
    n = lengths.pop() if lengths else 0
    return [math.fsum(float(weights[k]) * float(scores[k][i]) for k in scores) for i in range(n)]
