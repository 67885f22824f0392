"""ST-reward for GRPO: format, accuracy, camera and object rewards (TRL reward functions).

Each reward has TRL's signature ``reward(completions, **kwargs) -> list[float]`` and returns
one UNWEIGHTED score in [0, 1] per completion; the weights (release: format 0.2, accuracy 0.6,
camera 0.1, object 0.1) live in the recipe's ``reward_weights``. Completions and the dataset
columns (``answer``, ``choices``, ``question_type`` for accuracy, ``solution`` for camera and
object, as written to ``rft.jsonl``, see docs/data-format.md) are read by
:mod:`mllm4d_lite.train.reward_inputs`; replies are read by :mod:`mllm4d_lite.eval.answers`, so
training is rewarded the way the benchmark is scored.

A malformed completion never raises: it scores 0 (or what the definition gives it) and is
counted in :data:`REWARD_STATS` by reward and reason; inside TRL each call also reports the
fraction of malformed completions through the trainer's ``log_metric`` hook as
``malformed/<reward>``; the accuracy reward also logs ``accuracy/<category>``, the mean
accuracy per question category of the call (when the ``category`` column is there).

The definitions (the release's ``qwen-vl-rft/ST-reward.py`` of GVCLab/MLLM-4D) and the kit's
deviations from them, D1-D7 (each a field of :class:`RewardOptions`; ``strict_release=True``
gives the release formulas), are in docs/method.md.

Example::

    >>> sol = {"camera_center": [[0, 0, 0], [0, 0, 2]], "object_center": [], "frames": [0, 7]}
    >>> text = "<thinking>Camera Center: [0, 0, 0] ... Camera Center: [0, 0, 1.5]</thinking><answer>B</answer>"
    >>> round(camera_reward([text], solution=[sol])[0], 4)   # exp(-(0 + 0.5) / 2)
    0.7788
    >>> object_reward([text], solution=[sol])                 # no object centre, none stated
    [1.0]
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import reprlib
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from mllm4d_lite.eval.answers import (ANSWER_BLOCK, CENTER_KINDS, ST_COT_TAGS, THINK_BLOCK, UNPARSABLE, answer_part,
                                      normalize_text, parse_centers, score_response, states_center)
from mllm4d_lite.train.reward_inputs import as_completion_list, column, completion_text, maybe_json

log = logging.getLogger(__name__)

REWARD_NAMES = ("format", "accuracy", "camera", "object")
RELEASE_REWARD_WEIGHTS = {"format": 0.2, "accuracy": 0.6, "camera": 0.1, "object": 0.1}
"""The release's weights, for reference and tests; a run takes its weights from the recipe."""


@dataclass(frozen=True)
class RewardOptions:
    """Switches for the kit's deviations from the release formulas (D1-D7, docs/method.md).

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


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 120


def _short(value: Any) -> str:
    """``repr`` cut to a log line's length (a broken record may hold megabytes)."""
    return _REPR.repr(value)


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

def _format_score(text: str, opts: RewardOptions) -> tuple[float, str | None]:
    if opts.repeated_block_guard and any(text.count(tag) > 1 for tag in ST_COT_TAGS):
        return 0.0, "repeated_blocks"
    think = THINK_BLOCK.search(text)
    answer = ANSWER_BLOCK.search(text)
    reason = None if think and answer else "missing_blocks"
    if opts.empty_answer_guard and answer and not answer.group(1).strip():
        answer, reason = None, "empty_answer"
    reading = "lenient" if opts.lenient_centers else "release"
    score = 0.0
    if think and answer:
        score += 0.5
    if all(states_center(text, kind, reading) for kind in CENTER_KINDS):
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
    completions = as_completion_list(completions, "format")
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
    choices = maybe_json(choices)
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
    completions = as_completion_list(completions, "accuracy")
    n = len(completions)
    answers = column(kwargs, "answer", n, "accuracy")
    choices = column(kwargs, "choices", n, "accuracy", required=False)
    qtypes = column(kwargs, "question_type", n, "accuracy", required=False)
    scores, reasons = [], []
    for completion, answer, choice_map, qtype in zip(completions, answers, choices, qtypes):
        text = completion_text(completion)
        if text is None:
            value, reason = 0.0, "unreadable"
        else:
            value, reason = _safe("accuracy", lambda: _accuracy_score(text, answer, choice_map, qtype, opts))
        if reason == "bad_ground_truth":
            log.warning("accuracy reward: answer %s fits neither choices %s nor question_type %s, scored 0; "
                        "fix the rft.jsonl record", _short(answer), _short(choice_map), _short(qtype))
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
    categories = column(kwargs, "category", len(scores), "accuracy", required=False)
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

def _ground_truth_centers(solution: Any, key: str) -> list[tuple[float, float, float] | None] | None:
    """``solution[key]`` as a list of (x, y, z) | None; None when the record is broken."""
    solution = maybe_json(solution)
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
        if p is UNPARSABLE:
            return 0.0, "unparsable_center"
        if p is None or g is None:
            return 0.0, "null_mismatch"
        errors_m.append(math.hypot(*(a - b for a, b in zip(p, g))))  # scaled: no overflow to NaN
    mean_error_m = math.fsum(errors_m) / len(errors_m)
    return math.exp(-mean_error_m), None  # exp(-inf) == 0.0


def _centers_reward(kind: str, completions: Sequence[Any], strict_release: bool,
                    options: RewardOptions | None, kwargs: Mapping[str, Any]) -> list[float]:
    opts = _resolve_options(strict_release, options)
    completions = as_completion_list(completions, kind)
    solutions = column(kwargs, "solution", len(completions), kind)
    key = f"{kind}_center"
    scores, reasons = [], []
    for completion, solution in zip(completions, solutions):
        text = completion_text(completion)
        if text is None:
            value, reason = 0.0, "unreadable"
        else:
            value, reason = _safe(kind, lambda: _center_score(text, _ground_truth_centers(solution, key), kind, opts))
        if reason == "bad_ground_truth":
            log.warning("%s reward: unreadable solution[%r] %s, scored 0; fix the rft.jsonl record",
                        kind, key, _short(solution))
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
