"""Question: one generated question (facts, answer, ST-CoT states) before option letters are assigned."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mllm4d_lite.qa.vocabulary import NUMERIC_CATEGORIES


@dataclass
class Question:
    """One generated question before letters are assigned.

    ``answer`` / ``distractors``: option texts (MC) or the number as text (numeric);
    ``canonical``: a wording-free answer key used to compare questions built from two annotation
    sources; ``value``: the numeric answer in metres (numeric questions only).
    ``camera_centers`` / ``object_centers``: the states the ST-CoT states, in metres rounded to cm,
    at ``frames`` (first, last) of the question's segment (see :meth:`solution`).
    """

    clip_id: str
    category: str
    subject: str
    key: str
    question: str
    answer: str
    canonical: str
    distractors: list[str]
    frames: tuple[int, int]
    camera_centers: list[list[float]]              # [first, last] (cm-rounded)
    object_centers: list[tuple[str, list[float], list[float]]]  # (label, first, last) per subject
    reasoning: str
    value: float | None = None
    clip_dir: str = ""

    @property
    def question_type(self) -> str:
        return "numeric" if self.category in NUMERIC_CATEGORIES else "multiple-choice"

    @property
    def match_key(self) -> tuple[str, str, str, str]:
        return (self.clip_id, self.category, self.subject, self.key)

    def solution(self) -> dict[str, Any]:
        """RFT solution: camera centres [first, last]; object centres frame-major (every subject at
        the first frame, then every subject at the last frame; [first, last] for one object)."""
        objs = [o[1] for o in self.object_centers] + [o[2] for o in self.object_centers]
        return {"camera_center": [list(c) for c in self.camera_centers],
                "object_center": [list(c) for c in objs],
                "frames": [int(self.frames[0]), int(self.frames[1])]}
