"""Training records: ``sft.jsonl`` / ``cot.jsonl`` / ``rft.jsonl`` rows -> checked, subset, prompted.

Shared by the SFT / cold-start stage (:mod:`mllm4d_lite.train.sft`) and GRPO.

- :func:`load_records` reads a jsonl (one JSON object a line, see docs/data-format.md) or a
  VLM4D-format ``.json`` list and resolves each record's ``video`` (relative to the file's folder)
  into an absolute ``video_path``; it keeps the asked-for categories and a seeded, optionally
  balanced subset (:func:`balanced_subset`).
- :func:`record_prompt` / :func:`record_messages` turn a record into the chat the model sees
  (optional system turn, user turn = video + prompt, assistant turn = ``response``).
- :func:`model_special_tokens` / :func:`check_record_text` refuse records whose text holds one
  of the model's special tokens (``<|im_end|>``, ``<|im_start|>``, ...): such text would become
  chat structure (and, in SFT, loss targets). See docs/data-format.md ("Validation rules").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from mllm4d_lite import prompts
from mllm4d_lite.train.video_inputs import build_messages


class DataError(ValueError):
    """A data file is unusable; the message names the file and the fix."""


#: record fields whose text reaches the chat template (``choices`` may be a dict or a list)
CHAT_TEXT_FIELDS = ("system", "prompt", "question", "choices", "answer", "response")


def model_special_tokens(tokenizer: Any) -> tuple[str, ...]:
    """The special tokens of ``tokenizer`` (a tokenizer or a processor holding one): its
    ``all_special_tokens`` plus every added token marked ``special`` (``<|im_start|>``,
    ``<|im_end|>``, ``<|video_pad|>``, ...), longest first. Added tokens that are not special
    (Qwen3's ``<think>``, the tool / FIM tokens) are ordinary text and not listed."""
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    found = {str(t) for t in (getattr(tok, "all_special_tokens", None) or [])}
    decoder = getattr(tok, "added_tokens_decoder", None) or {}
    found.update(str(t.content) for t in decoder.values() if getattr(t, "special", False))
    return tuple(sorted((t for t in found if t), key=lambda t: (-len(t), t)))


def _texts(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _texts(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _texts(v)


def special_token_in(record: dict[str, Any], tokens: Sequence[str],
                     fields: Sequence[str] = CHAT_TEXT_FIELDS) -> tuple[str, str] | None:
    """``(field, token)`` of the first special token found in the record's chat text, else None."""
    for name in fields:
        for text in _texts(record.get(name)):
            for token in tokens:
                if token in text:
                    return name, token
    return None


def check_record_text(records: Iterable[dict[str, Any]], tokens: Sequence[str],
                      source: str | Path | None = None, error: type[ValueError] = DataError,
                      fields: Sequence[str] = CHAT_TEXT_FIELDS) -> None:
    """Raise ``error`` (one line naming the file, the record, the field and the token) when a
    record's ``system`` / ``prompt`` / ``question`` / ``choices`` / ``answer`` / ``response`` text
    holds one of the model's special ``tokens`` (:func:`model_special_tokens`); ``source`` is the
    file, else each record's ``records_file`` (set by :func:`load_records`); ``fields`` are the
    fields checked."""
    if not tokens:
        return
    for i, record in enumerate(records):
        hit = special_token_in(record, tokens, fields)
        if hit is None:
            continue
        where = source if source is not None else record.get("records_file", "records")
        name, token = hit
        raise error(f"{where}: record {record.get('id', f'#{i + 1}')!r} has the model's special token {token!r} "
                    f"in its '{name}' text, which would act as chat structure (and be trained on); remove "
                    "it from the record or re-generate the file")


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All JSON objects of a ``.jsonl`` file (blank lines skipped). Errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (make it with `mllm4d curate ... --out DIR`)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: not valid JSON ({err}); re-generate the file") from None
    return rows


def load_records(path: str | Path, max_samples: int | None = None, seed: int = 0,
                 categories: Sequence[str] | None = None,
                 balance_key: str | Sequence[str] | None = None,
                 special_tokens: Sequence[str] = ()) -> list[dict[str, Any]]:
    """QA records of a jsonl (or a VLM4D-format ``.json`` list) with ``video_path`` resolved.

    ``video`` is relative to the file's folder (absolute paths are kept). ``categories`` keeps
    only records of those categories (none left is an error naming the categories present);
    ``max_samples`` then keeps a seeded random subset (order preserved), with as even a share of
    each value of ``balance_key`` (e.g. ``"answer"``) as the records allow when it is given; several
    keys (e.g. ``["category", "answer"]``) balance nested, see :func:`balanced_subset`.
    Records lacking ``id`` get ``<file>:<line>``; every record gets ``records_file`` (the file's
    path, for messages). With ``special_tokens`` (:func:`model_special_tokens`), a record whose
    text holds one is refused (:func:`check_record_text`); the SFT collator checks again with the
    model's own tokens before training.
    """
    path = Path(path)
    if path.suffix == ".json":
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        try:
            rows = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON ({err}); re-generate the file, or fix it by hand") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of entries (VLM4D format)")
    else:
        rows = read_jsonl(path)
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}: record {i + 1} is a {type(row).__name__}, not a JSON object; "
                            "each record must be an object with 'video', 'question', ... (re-generate the file)")
        row = dict(row)
        row.setdefault("id", f"{path.name}:{i + 1}")
        row.setdefault("records_file", str(path))
        if "video" not in row:
            raise DataError(f"{path}: record {row['id']!r} has no 'video' field")
        video = Path(str(row["video"]))
        row["video_path"] = str(video if video.is_absolute() else (path.parent / video).resolve())
        out.append(row)
    check_record_text(out, special_tokens, path)
    if categories:
        wanted = set(categories)
        kept = [r for r in out if r.get("category") in wanted]
        if not kept:
            present = sorted({str(r.get("category")) for r in out})
            raise DataError(f"{path}: no record of the categories {sorted(wanted)}; the file has {present}; "
                            "fix `train_categories` (empty = all)")
        out = kept
    if max_samples is not None and 0 < max_samples < len(out):
        rng = np.random.default_rng(seed)
        if balance_key:
            names = [balance_key] if isinstance(balance_key, str) else list(balance_key)
            labels = [tuple(str(r.get(k)) for k in names) for r in out]
            keep = sorted(balanced_subset(labels, max_samples, rng))
        else:
            keep = sorted(rng.choice(len(out), size=max_samples, replace=False).tolist())
        out = [out[i] for i in keep]
    return out


def balanced_subset(labels: Sequence[Any], size: int, rng: np.random.Generator) -> list[int]:
    """Indices of a seeded subset of ``size`` items taking the labels in turn (each label's items in
    random order), so every label gets ``size // n_labels`` items or one more, unless it has fewer.

    A label may be a tuple, e.g. ``(category, answer)``: then the first values are taken in turn,
    and within each, the next values in turn (nested), so a category with many distinct answers
    does not crowd out a category with few."""
    keys = [tuple(label) if isinstance(label, tuple) else (label,) for label in labels]
    if len({len(k) for k in keys}) > 1:
        raise ValueError("balanced_subset: every label needs the same number of keys")
    return _round_robin(list(range(len(keys))), keys, 0, rng)[:size]


def _round_robin(indices: list[int], keys: list[tuple], depth: int, rng: np.random.Generator) -> list[int]:
    """``indices`` ordered so that every prefix takes the values of ``keys[i][depth]`` in turn."""
    if not indices:
        return []
    if depth == len(keys[indices[0]]):  # reversed: the order the seeded pools have always been drawn in
        return [int(i) for i in reversed(rng.permutation(indices))]
    groups: dict[Any, list[int]] = {}
    for i in indices:
        groups.setdefault(keys[i][depth], []).append(i)
    queues = [_round_robin(idx, keys, depth + 1, rng) for _, idx in sorted(groups.items())]
    order = list(rng.permutation(len(queues)))
    out: list[int] = []
    while len(out) < len(indices):
        for q in order:
            if queues[q]:
                out.append(queues[q].pop(0))
    return out


def record_prompt(record: dict[str, Any], mode: str = "direct") -> str:
    """The user text of a record: its ``prompt`` when present, else built from question + choices."""
    if record.get("prompt"):
        return str(record["prompt"])
    return prompts.build_prompt(record["question"], record.get("choices"), mode)


def record_messages(record: dict[str, Any], with_answer: bool = True) -> list[dict[str, Any]]:
    """The chat of one record: ``system`` (if any), user (video + prompt), assistant (``response``)."""
    answer = str(record["response"]) if with_answer else None
    return build_messages(record_prompt(record), has_video=True, system=record.get("system"), answer=answer)


def records_by_category(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Count of records per ``category`` (for logs)."""
    counts: dict[str, int] = {}
    for r in records:
        counts[str(r.get("category", "?"))] = counts.get(str(r.get("category", "?")), 0) + 1
    return dict(sorted(counts.items()))
