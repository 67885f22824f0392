"""Questions -> data files: split by clip, answer balancing, option letters, ST-CoT targets, records.

:func:`build_datasets` writes ``sft.jsonl``, ``cot.jsonl``, ``rft.jsonl``, ``bench.json`` and
``qa_summary.json``; docs/questions.md describes the splits, the balancing and every record field.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import statistics
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable

from tqdm import tqdm

from mllm4d_lite import prompts
from mllm4d_lite.io import atomic_write_many
from mllm4d_lite.curation.annotation import AnnotationError, validate_annotation
from mllm4d_lite.qa.builders import generate_questions, object_coverage
from mllm4d_lite.qa.config import QAConfig
from mllm4d_lite.qa.question import Question
from mllm4d_lite.qa.vocabulary import COUNT_PREDICATES, NUMERIC_CATEGORIES, option_rank, phrasings

log = logging.getLogger(__name__)


def split_clips(clip_ids: Iterable[str], cfg: QAConfig) -> dict[str, str]:
    """clip_id -> "train" | "rft" | "bench", seeded; at least one bench clip when there are >= 2
    clips and bench_fraction > 0, likewise one RFT clip when rft_fraction > 0, and always one train
    clip. The bench clips do not depend on ``rft_fraction``: RFT clips are taken from the rest."""
    ids = sorted(set(clip_ids))
    random.Random(f"{cfg.qa_seed}|split").shuffle(ids)
    n_bench = int(round(cfg.bench_fraction * len(ids)))
    if cfg.bench_fraction > 0 and len(ids) >= 2:
        n_bench = min(max(n_bench, 1), len(ids) - 1)
    n_rft = int(round(cfg.rft_fraction * len(ids)))
    if cfg.rft_fraction > 0 and len(ids) - n_bench >= 2:
        n_rft = min(max(n_rft, 1), len(ids) - n_bench - 1)
    else:
        n_rft = 0
    return {cid: ("bench" if i < n_bench else "rft" if i < n_bench + n_rft else "train") for i, cid in enumerate(ids)}


def _limit_answer_share(questions: list[Question], cfg: QAConfig, split: str) -> tuple[list[Question], int]:
    """Drop seeded questions of a category's most common answer (e.g. "not moving") until it is at
    most ``qa_max_answer_share`` of the category, so that a constant guess cannot score high."""
    share = cfg.qa_max_answer_share
    if share >= 1.0:
        return questions, 0
    by_cat: dict[str, list[Question]] = defaultdict(list)
    for q in questions:
        by_cat[q.category].append(q)
    keep: list[Question] = []
    dropped = 0
    for category, qs in sorted(by_cat.items()):
        if category in NUMERIC_CATEGORIES or category == "false_positive":
            keep += qs
            continue
        counts = Counter(q.canonical for q in qs)
        allowed = dict(counts)
        for _ in range(len(counts)):
            total = sum(allowed.values())
            top, n_top = max(sorted(allowed.items()), key=lambda kv: kv[1])
            limit = max(1, math.floor(share * (total - n_top) / (1.0 - share))) if share < 1 else n_top
            if n_top <= limit:
                break
            allowed[top] = limit
        rng = random.Random(f"{cfg.qa_seed}|share|{split}|{category}")
        for answer in sorted(counts):
            group = sorted((q for q in qs if q.canonical == answer), key=lambda q: (q.clip_id, q.subject, q.key))
            chosen = rng.sample(group, allowed[answer]) if allowed[answer] < len(group) else group
            dropped += len(group) - len(chosen)
            keep += chosen
    return keep, dropped


def _balance_train(questions: list[Question], cfg: QAConfig) -> list[Question]:
    """Repeat under-represented categories up to the median category count, each copy in another
    phrasing of the same family (same facts, same answer); at most one copy per other phrasing."""
    by_cat: dict[str, list[Question]] = defaultdict(list)
    for q in questions:
        by_cat[q.category].append(q)
    if len(by_cat) < 2:
        return questions
    target = int(statistics.median(len(v) for v in by_cat.values()))
    extra: list[Question] = []
    for category, qs in sorted(by_cat.items()):
        need, k = target - len(qs), 1
        while need > 0 and k < 3:  # every family has 3 phrasings
            batch = qs[:need]
            extra += [dataclasses.replace(q, question=_rephrase(q, k), key=f"{q.key}#r{k}",
                                          distractors=list(q.distractors)) for q in batch]
            need -= len(batch)
            k += 1
    return questions + extra


def _rephrase(q: Question, k: int) -> str:
    """Another template of the same family for ``q`` (k-th next one)."""
    family = phrasings(q.category, q.key.split("#")[0])
    current = next((i for i, t in enumerate(family) if _matches(t, q.question)), 0)
    fill = _fill_of(q)
    return family[(current + k) % len(family)].format(**fill)


def _fill_of(q: Question) -> dict[str, str]:
    if q.category == "counting":
        return {"p": COUNT_PREDICATES[q.key.split("#")[0]]}
    if q.category == "false_positive":
        return {"a": q.subject}
    parts = q.subject.split("|")
    fill = {"a": parts[0]}
    if len(parts) > 1:
        fill["b"] = parts[1]
    return fill


def _matches(template: str, text: str) -> bool:
    head = template.split("{")[0]
    tail = template.split("}")[-1]
    return text.startswith(head) and text.endswith(tail)


def _assign_letters(questions: list[Question], cfg: QAConfig, split: str) -> list[dict[str, str] | None]:
    """Choices per question: the answer's letter cycles through seeded shuffled blocks of A-D (exact
    balance within a split), distractors fill the remaining letters in random order.

    ``qa_option_order: fixed`` lists the same four options in the canonical order instead
    (:func:`~mllm4d_lite.qa.vocabulary.option_rank`): a letter then follows from the answer and its
    distractors alone, so the letters are no longer balanced (the blind control sees the same order)."""
    if cfg.qa_option_order == "fixed":
        return [None if q.question_type == "numeric" else
                dict(zip(prompts.LETTERS, sorted([q.answer, *q.distractors], key=option_rank)))
                for q in questions]
    rng = random.Random(f"{cfg.qa_seed}|letters|{split}")
    block: list[str] = []
    out: list[dict[str, str] | None] = []
    for q in questions:
        if q.question_type == "numeric":
            out.append(None)
            continue
        if not block:
            block = list(prompts.LETTERS)
            rng.shuffle(block)
        letter = block.pop()
        rest = [lt for lt in prompts.LETTERS if lt != letter]
        distractors = list(q.distractors)
        rng.shuffle(distractors)
        choices = {letter: q.answer, **dict(zip(rest, distractors))}
        out.append({lt: choices[lt] for lt in prompts.LETTERS})
    return out


def cot_target(q: Question, answer_tag: str) -> str:
    """The ST-CoT response: ``<thinking>`` states (camera and object centres at the segment's first
    and last frame), the reasoning, ``</thinking><answer>answer_tag</answer>``."""
    f0, f1 = q.frames
    lines = []
    for when, frame, idx in (("first", f0, 1), ("last", f1, 2)):
        parts = [f"Camera Center: {prompts.format_center(q.camera_centers[idx - 1])}"]
        if q.object_centers:
            parts += [f"Object Center: {prompts.format_center(o[idx])} ({o[0]})" for o in q.object_centers]
        else:
            parts.append("Object Center: null")
        lines.append(f"At frame {frame} ({when} frame of the segment): " + "; ".join(parts) + ".")
    return "<thinking>" + " ".join(lines) + " " + q.reasoning + f"</thinking><answer>{answer_tag}</answer>"


def _record(q: Question, choices: dict[str, str] | None, out_dir: Path, qid: str) -> dict[str, Any]:
    video = os.path.relpath(Path(os.path.abspath(q.clip_dir)) / "left.mp4", os.path.abspath(out_dir))
    letter = next((lt for lt, text in choices.items() if text == q.answer), None) if choices else None
    return {"id": qid, "clip_id": q.clip_id, "video": video, "category": q.category, "question": q.question,
            "question_type": q.question_type, "choices": choices, "answer": q.answer,
            "answer_letter": letter, "solution": q.solution()}


def build_datasets(annotations: list[dict[str, Any]], out_dir: Path, cfg: QAConfig) -> dict[str, Any]:
    """Write ``sft.jsonl``, ``cot.jsonl``, ``rft.jsonl`` (train clips, or the RFT clips when
    ``rft_fraction`` > 0), ``bench.json`` (bench clips)
    and ``qa_summary.json`` into ``out_dir`` (all written to temporary names first, then renamed).

    ``video`` in each record is ``<clip_dir>/left.mp4`` relative to ``out_dir``. SFT ``response`` is
    the option letter (or the number); CoT/RFT carry the ST-CoT system prompt; RFT adds ``solution``.
    Returns the summary (counts per category and split, answer-letter balance, dropped questions).
    """
    start = time.perf_counter()
    cfg.validate()
    out_dir = Path(out_dir)
    seen: set[str] = set()
    for i, ann in enumerate(annotations):
        validate_annotation(ann, f"annotations[{i}] (clip {ann.get('clip_id', '?') if isinstance(ann, dict) else '?'})")
        if not ann.get("clip_dir"):
            raise AnnotationError(f"annotation of clip {ann['clip_id']!r} has no clip_dir (the clip folder holding left.mp4); "
                          "re-run curation, which records it")
        if ann["clip_id"] in seen:
            raise AnnotationError(f"clip {ann['clip_id']!r} appears twice in the annotations; clip ids must be unique")
        seen.add(ann["clip_id"])
    split_of = split_clips(seen, cfg)
    drops: Counter = Counter()
    by_split: dict[str, list[Question]] = {"train": [], "bench": []}
    if "rft" in split_of.values():
        by_split["rft"] = []
    for ann in tqdm(sorted(annotations, key=lambda a: a["clip_id"]), desc="qa", unit="clip", disable=None):
        by_split[split_of[ann["clip_id"]]].extend(generate_questions(ann, cfg, drops=drops))
    dropped_share = {}
    for split in by_split:
        by_split[split], dropped_share[split] = _limit_answer_share(by_split[split], cfg, split)
    unique = {split: len(qs) for split, qs in by_split.items()}
    if cfg.qa_balance_train:
        by_split["train"] = _balance_train(by_split["train"], cfg)

    records: dict[str, list[dict[str, Any]]] = {}
    for split, qs in by_split.items():
        qs.sort(key=lambda q: (q.category, q.clip_id, q.subject, q.key))
        choice_list = _assign_letters(qs, cfg, split)
        recs = []
        per_clip: Counter = Counter()
        for q, choices in zip(qs, choice_list):
            per_clip[q.clip_id] += 1
            recs.append((q, choices, _record(q, choices, out_dir, f"{q.clip_id}-{per_clip[q.clip_id]:03d}")))
        records[split] = recs

    sft, cot = [], []
    for q, choices, rec in records["train"]:
        tag = rec["answer_letter"] if choices else q.answer
        sft.append({**rec, "prompt": prompts.direct_prompt(q.question, choices), "response": tag})
        cot_prompt = prompts.st_cot_prompt(q.question, choices)
        cot.append({**rec, "system": prompts.ST_COT_SYSTEM_PROMPT, "prompt": cot_prompt, "response": cot_target(q, tag)})
    rft = [{**rec, "system": prompts.ST_COT_SYSTEM_PROMPT, "prompt": prompts.st_cot_prompt(q.question, choices)}
           for q, choices, rec in records.get("rft", records["train"])]
    bench = [rec for _, _, rec in records["bench"]]

    summary = _summary(records, split_of, drops, time.perf_counter() - start)
    summary["unique_questions"] = unique
    summary["train_rephrased_repeats"] = len(by_split["train"]) - unique["train"]
    summary["dropped_for_answer_share"] = dropped_share
    moving_only = sorted(a["clip_id"] for a in annotations if object_coverage(a) == "moving")
    if moving_only:  # no "not moving" counts, no false-positive questions there (docs/questions.md)
        summary["clips_moving_objects_only"] = moving_only
    files = {
        "sft.jsonl": "".join(json.dumps(r) + "\n" for r in sft),
        "cot.jsonl": "".join(json.dumps(r) + "\n" for r in cot),
        "rft.jsonl": "".join(json.dumps(r) + "\n" for r in rft),
        "bench.json": json.dumps(bench, indent=1),
        "qa_summary.json": json.dumps(summary, indent=1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_many({out_dir / name: text for name, text in files.items()})  # unique temp names, then renames
    log.info("qa: %d train / %d rft / %d bench questions from %d clips in %.2f s -> %s",
             len(sft), len(rft), len(bench), len(split_of), summary["elapsed_s"], out_dir)
    return summary


def _summary(records, split_of, drops, elapsed_s) -> dict[str, Any]:
    counts = {split: dict(sorted(Counter(r["category"] for _, _, r in recs).items())) for split, recs in records.items()}
    letters = {}
    for split, recs in records.items():
        c = Counter(r["answer_letter"] for _, _, r in recs if r["answer_letter"])
        total = sum(c.values())
        letters[split] = {lt: {"count": c[lt], "share": round(c[lt] / total, 4) if total else 0.0} for lt in prompts.LETTERS}
    return {
        "clips": {split: sorted(cid for cid, s in split_of.items() if s == split) for split in records},
        "num_clips": dict(Counter(split_of.values())),
        "questions": {split: len(recs) for split, recs in records.items()},
        "total_questions": sum(len(recs) for recs in records.values()),
        "per_category": counts,
        "question_types": {split: dict(Counter(r["question_type"] for _, _, r in recs)) for split, recs in records.items()},
        "answer_letters": letters,
        "dropped_near_threshold": dict(sorted(drops.items())),
        "elapsed_s": round(elapsed_s, 3),
    }
