"""GRPO's prompts: the ``rft.jsonl`` pool a run trains on and the dataset TRL draws from.

:func:`load_pool` / :func:`load_rft_records` read and check the records and take a balanced
subset (each category in turn, then each right answer); :func:`build_dataset` turns them, lazily,
into TRL's conversational rows (:func:`prompt_messages`, with the decoded frames in the video
part) plus the columns the ST-reward reads (:func:`reward_columns`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from mllm4d_lite import prompts
from mllm4d_lite.train.records import DataError, load_records
from mllm4d_lite.train.video_inputs import build_messages

if TYPE_CHECKING:
    from mllm4d_lite.train.grpo_config import GRPOConfig


def prompt_messages(record: dict[str, Any], use_st_cot_prompt: bool = True) -> list[dict[str, Any]]:
    """The GRPO prompt of one record, without the frames: system (ST-CoT) + user (video part, text).

    ST-CoT on: the record's ``system``/``prompt`` when present (``rft.jsonl`` has both), else the
    kit's ST-CoT system prompt and instruction. Off (ablation): the direct-answer prompt, no system.
    """
    if use_st_cot_prompt:
        text = record.get("prompt") or prompts.st_cot_prompt(record["question"], record.get("choices"))
        system = record.get("system") or prompts.ST_COT_SYSTEM_PROMPT
    else:
        text = prompts.direct_prompt(record["question"], record.get("choices"))
        system = None
    return build_messages(text, has_video=True, system=system)


def build_dataset(records: Sequence[dict[str, Any]], cache, use_st_cot_prompt: bool = True):
    """A ``datasets.Dataset`` whose rows decode lazily into TRL's conversational format.

    Each row: ``prompt`` (messages; the user's video part carries ``video`` = frames (T, H, W, 3)
    uint8 and ``metadata`` = fps / frame indices, from ``cache``), plus the reward columns
    ``answer``, ``choices``, ``question_type``, ``solution`` and ``id``, ``category``.
    The records travel as JSON strings so Arrow never unifies (and pads) the nested schema.
    """
    from datasets import Dataset

    ds = Dataset.from_dict({"record": [json.dumps(r) for r in records]})

    def transform(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in ("prompt", "id", "category", "answer", "choices",
                                                "question_type", "solution")}
        for raw in batch["record"]:
            rec = json.loads(raw)
            frames, meta = cache.get(rec["video_path"])
            messages = prompt_messages(rec, use_st_cot_prompt)
            for part in messages[-1]["content"]:
                if part["type"] == "video":
                    part["video"], part["metadata"] = frames, meta
            out["prompt"].append(messages)
            out["id"].append(str(rec["id"]))
            out["category"].append(rec.get("category"))
            for key, value in reward_columns(rec).items():
                out[key].append(value)
        return out

    return ds.with_transform(transform)


def reward_columns(record: dict[str, Any]) -> dict[str, Any]:
    """The columns the ST-reward reads for one record: ``answer``, ``choices``, ``question_type``
    and ``solution`` (no centres when the record has none)."""
    return {"answer": record.get("answer"), "choices": record.get("choices"),
            "question_type": record.get("question_type", "multiple-choice"),
            "solution": record.get("solution") or {"camera_center": [], "object_center": []}}


def load_pool(cfg: GRPOConfig) -> list[dict[str, Any]]:
    """The prompts a run trains on: ``cfg.train_file`` filtered and subset as ``cfg`` says."""
    return load_rft_records(cfg.train_file, cfg.max_samples, cfg.seed, cfg.train_categories, cfg.balance_answers,
                            cfg.balance_categories,
                            centre_rewards=[n for n in cfg.reward_funcs if n in ("camera", "object")])


def load_rft_records(path: str | Path, max_samples: int | None = None, seed: int = 0,
                     categories: Sequence[str] | None = None, balance_answers: bool = True,
                     balance_categories: bool = True, centre_rewards: Sequence[str] = ()) -> list[dict[str, Any]]:
    """``rft.jsonl`` records (``video_path`` resolved) checked for the fields GRPO's rewards need;
    a ``max_samples`` subset takes each category in turn when ``balance_categories``, and within
    that each right answer in turn when ``balance_answers``.

    With ``centre_rewards`` (the camera / object rewards that are on), every record must carry a
    ``solution`` (the true centres, as ``rft.jsonl`` does): scored against none, those rewards
    would pay for writing no centres. ``sft.jsonl`` / ``cot.jsonl`` or VLM4D-format files have none."""
    records = load_records(path, max_samples=max_samples, seed=seed, categories=categories,
                           balance_key=[k for k, on in (("category", balance_categories),
                                                        ("answer", balance_answers)) if on] or None)
    if not records:
        raise DataError(f"{path}: no records; make rft.jsonl with `mllm4d curate`")
    for rec in records:
        missing = [k for k in ("question", "answer") if k not in rec]
        if missing:
            raise DataError(f"{path}: record {rec['id']!r} lacks {missing}; GRPO needs rft.jsonl records "
                            "(question, answer, solution) from `mllm4d curate`")
    lacking = [r["id"] for r in records if not isinstance(r.get("solution"), dict)]
    if centre_rewards and lacking:
        raise DataError(f"{path}: {len(lacking)} of {len(records)} prompts (e.g. {lacking[0]!r}) have no "
                        f"`solution` with the true camera / object centres, which the {' and '.join(centre_rewards)} "
                        "reward scores against; train on rft.jsonl from `mllm4d curate` / `mllm4d qa`, or leave "
                        "those rewards out (reward_funcs: [format, accuracy], reward_weights to match)")
    return records
