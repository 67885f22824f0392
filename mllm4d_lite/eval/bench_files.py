"""Benchmark and prediction files: reading them, checking every entry, finding their videos.

A benchmark is a JSON list (or JSONL) of entries ``{"id", "video", "question",
"question_type": "multiple-choice" | "numeric", "choices": {"A": ...} | null, "answer"
(the text of the right option, or the number), "category"?}``: the kit's own ``bench.json``
or VLM4D's ``real_mc.json`` / ``synthetic_mc.json``. A prediction file adds ``response``.
Problems are :class:`BenchError` messages naming the file, the entry and the fix.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from mllm4d_lite.eval.answers import answer_letters, entry_answer, is_numeric


class BenchError(ValueError):
    """A benchmark or prediction file is unusable; the message names the file, the entry and the fix."""



def load_entries(path: str | Path) -> list[dict[str, Any]]:
    """A JSON list of objects, or JSONL (one object per line). Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if not stripped:
        raise BenchError(f"{path}: empty file; expected a JSON list of entries")
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise BenchError(f"{path}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    else:
        data = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise BenchError(f"{path}: line {lineno} is not valid JSON ({err.msg}); expected a JSON list "
                                 "or one JSON object per line") from None
    if not isinstance(data, list):
        raise BenchError(f"{path}: expected a JSON list of entries, got {type(data).__name__}")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise BenchError(f"{path}: entry #{i} is a {type(entry).__name__}, not an object")
    return data


def _where(path: Path, index: int, entry: Mapping[str, Any]) -> str:
    return f"{path}: entry #{index} (id {entry.get('id', '?')!r})"


def check_entry(entry: Mapping[str, Any], index: int, path: Path, need_response: bool = False) -> None:
    """Raise :class:`BenchError` when ``entry`` cannot be scored, naming the entry and the problem."""
    where = _where(path, index, entry)
    if "id" not in entry:
        raise BenchError(f"{where}: missing field 'id'")
    if not str(entry.get("question", "")).strip() and not need_response:
        raise BenchError(f"{where}: missing or empty field 'question'")
    if "answer" not in entry and "ground_truth_answer" not in entry:
        raise BenchError(f"{where}: missing field 'answer' (the text of the right option)")
    if need_response and "response" not in entry:
        raise BenchError(f"{where}: missing field 'response'; a predictions file needs the model's reply "
                         "in 'response' for every entry")
    if need_response and entry["response"] is not None and not isinstance(entry["response"], str):
        raise BenchError(f"{where}: 'response' must be a string, got {type(entry['response']).__name__}")
    if is_numeric(entry):
        try:
            value = float(entry_answer(entry))
        except (TypeError, ValueError):
            raise BenchError(f"{where}: numeric question with non-numeric answer {entry_answer(entry)!r}") from None
        if not math.isfinite(value):
            raise BenchError(f"{where}: numeric answer {value} is not finite")
        return
    choices = entry.get("choices")
    if not isinstance(choices, dict) or len(choices) < 2:
        raise BenchError(f"{where}: 'choices' must map at least two letters to option texts, got {choices!r} "
                         "(numeric questions need question_type 'numeric')")
    if not answer_letters(entry_answer(entry), choices):
        raise BenchError(f"{where}: answer {entry_answer(entry)!r} matches none of the choices {choices!r}; "
                         "'answer' must be the text of the right option")


def check_entries(entries: Sequence[Mapping[str, Any]], path: Path, need_response: bool = False) -> None:
    """Check every entry and that ids are unique; all problems are reported at once (first 10)."""
    problems = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        try:
            check_entry(entry, i, path, need_response)
        except BenchError as err:
            problems.append(str(err))
            continue
        key = str(entry["id"])
        if key in seen:
            problems.append(f"{_where(path, i, entry)}: duplicate id (also entry #{seen[key]})")
        seen[key] = i
    if problems:
        more = f"\n... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise BenchError(f"{len(problems)} bad entr{'y' if len(problems) == 1 else 'ies'}:\n" +
                         "\n".join(problems[:10]) + more)


#: entry fields whose text reaches the chat template in ``mllm4d eval run`` (``answer`` included:
#: a bench entry may also be used as a training record)
ENTRY_TEXT_FIELDS = ("system", "prompt", "question", "choices", "answer")


def check_entry_text(entries: Sequence[Mapping[str, Any]], special_tokens: Sequence[str], path: Path) -> None:
    """Raise :class:`BenchError` (one line naming the file, the entry, the field and the token) when
    an entry's text holds one of the model's ``special_tokens``
    (:func:`mllm4d_lite.train.records.model_special_tokens`): passed to the chat template, it would
    act as chat structure (end the user turn, open an assistant turn) instead of being read as text."""
    from mllm4d_lite.train.records import special_token_in

    for i, entry in enumerate(entries):
        hit = special_token_in(dict(entry), special_tokens, ENTRY_TEXT_FIELDS)
        if hit is not None:
            raise BenchError(f"{_where(path, i, entry)}: the model's special token {hit[1]!r} is in its "
                             f"'{hit[0]}' text, which would act as chat structure; remove it from the entry")


def file_labels(paths: Sequence[Path]) -> list[str]:
    """Short names for split files: the stem, or ``parent/stem`` where stems collide."""
    stems = [p.stem for p in paths]
    return [f"{p.parent.name}/{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]


def resolve_video(video: Any, bench_dir: Path, video_root: Path | None) -> Path | None:
    """The local file for an entry's ``video``, or None when it is not found.

    Tried in order: the path as given (absolute, or relative to the bench file's folder);
    then under ``video_root``: the relative path, and for absolute paths / URLs their
    trailing parts, longest first.
    """
    if not video:
        return None
    raw = str(video)
    is_url = "://" in raw
    candidate = Path(raw)
    if not is_url:
        direct = candidate if candidate.is_absolute() else bench_dir / candidate
        if direct.is_file():
            return direct
    if video_root is not None:
        parts = [p for p in (raw.split("://", 1)[1].split("/")[1:] if is_url else candidate.parts) if p not in ("", "/")]
        for start in range(len(parts)):
            path = video_root.joinpath(*parts[start:])
            if path.is_file():
                return path
    return None
