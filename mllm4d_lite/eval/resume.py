"""Resume state of ``mllm4d eval run``: what a run folder's predictions were made from.

``OUT/run_key.json`` holds the settings the predictions depend on (model, adapter, prompt,
generation settings, bench path; built by :func:`mllm4d_lite.eval.evaluate._run_key`) and
``bench_digest`` (:func:`bench_digest`). :func:`check_resume` refuses other settings and, when only
the bench's content changed, removes the stale predictions and says so. Rules: docs/data-format.md
("Validation rules", "Resume is keyed on content").
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from mllm4d_lite.eval.bench_files import BenchError
from mllm4d_lite.io import atomic_write_json, atomic_write_text

log = logging.getLogger("mllm4d_lite.eval.evaluate")  # the stage's logger: its messages belong to eval run


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """The predictions stored in a ``predictions*.jsonl`` (none when it is missing); a broken line
    (a run killed mid-write) is skipped with a warning, so its question is answered again."""
    if not path.is_file():
        return []
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            # a run killed mid-write leaves at most one broken last line: answer it again
            log.warning("%s: line %d is incomplete; that question will be answered again", path, lineno)
    return rows


def repair_predictions(path: Path) -> None:
    """Rewrite ``path`` (atomically) without its incomplete lines when it has any, or when it does
    not end with a newline: a run killed mid-write leaves a torn last line, and the next answer
    appended to it would be lost in that line."""
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    rows = read_predictions(path)
    if text.endswith("\n") and len(rows) == sum(1 for line in text.splitlines() if line.strip()):
        return
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


#: what :func:`mllm4d_lite.eval.evaluate.scored` adds to a bench entry; everything else of a stored prediction is the entry
PREDICTION_FIELDS = ("response", "extracted", "score")
PREDICTION_FILES = ("predictions.jsonl", "predictions_blind.jsonl")


def bench_digest(entries: Sequence[Mapping[str, Any]]) -> str:
    """``sha256:<hex>`` of the bench entries as read (canonical JSON: sorted keys), before ``--limit``.

    The content a run's predictions depend on besides the model / prompt settings of
    :func:`mllm4d_lite.eval.evaluate._run_key`. The videos are not hashed (a re-rendered clip with the same entries keeps
    its predictions)."""
    text = json.dumps(list(entries), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def predictions_match(out: Path, entries: Sequence[Mapping[str, Any]]) -> bool:
    """Whether every stored prediction in ``out`` is the answer to an entry of ``entries`` as it is now
    (same id, same fields): how a folder written before run keys held a digest is checked."""
    by_id = {str(e["id"]): e for e in entries}
    for name in PREDICTION_FILES:
        for p in read_predictions(out / name):
            entry = by_id.get(str(p.get("id")))
            if entry is None or {k: v for k, v in p.items() if k not in PREDICTION_FIELDS} != dict(entry):
                return False
    return True


def check_resume(key: dict[str, Any], bench: str | Path, out: Path, entries: Sequence[Mapping[str, Any]],
                 digest: str) -> None:
    """A resumed run must use the same model/prompt/bench path, or its predictions would be mixed
    (refused); and the same bench content (``digest``, :func:`bench_digest`): when the bench
    changed under the same path, the stored predictions are removed, the change is logged, and
    every question is answered again. A folder whose key has no digest (written before digests)
    resumes when its predictions are answers to the current ``entries``, and gets the digest. A
    torn last line (a run killed while writing it) is dropped (:func:`repair_predictions`)."""
    key_path = out / "run_key.json"
    old_digest = None
    if key_path.is_file():
        try:
            old = json.loads(key_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = None
        if not isinstance(old, dict):
            raise BenchError(f"{key_path} is unreadable, so what its predictions were made from is unknown; "
                             "use another --out, or delete that folder to start over")
        old_digest = old.pop("bench_digest", None)
        if old != key:
            diff = {k: (old.get(k), key[k]) for k in key if old.get(k) != key[k]}
            raise BenchError(f"{out} holds predictions of a different run (changed: {diff}); "
                             "use another --out, or delete that folder to start over")
    stored = [out / name for name in PREDICTION_FILES if (out / name).is_file()]
    changed = old_digest != digest if old_digest is not None else not predictions_match(out, entries)
    if stored and changed:
        log.warning("%s changed since the predictions in %s were made (bench digest %s -> %s): the old "
                    "predictions are removed and every question is answered again",
                    bench, out, (old_digest or "unrecorded")[:19], digest[:19])
        for path in stored:
            path.unlink()
    if old_digest != digest:
        atomic_write_json(key_path, {**key, "bench_digest": digest})
    for name in PREDICTION_FILES:
        repair_predictions(out / name)
