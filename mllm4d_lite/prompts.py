"""Prompts shared by QA generation, training and evaluation (one place, so they never drift).

Formats follow the MLLM-4D release as summarised in the kit's docs:
- direct prompt: the question, the options one per line as ``A: text``, then an instruction to
  answer with the option letter only (SFT model, benchmark "direct" mode);
- ST-CoT prompt: question, options, then an instruction to reason inside ``<thinking>`` stating
  ``Camera Center: [x, y, z]`` and ``Object Center: [x, y, z]`` at the first and last frame of
  the relevant segment, and to answer inside ``<answer>`` (cold start, GRPO, "st-cot" mode).
"""

from __future__ import annotations

from typing import Mapping

LETTERS = ("A", "B", "C", "D")

DIRECT_INSTRUCTION = "Answer with the option's letter from the given choices directly."
NUMERIC_DIRECT_INSTRUCTION = "Answer with a single number in metres."

ST_COT_SYSTEM_PROMPT = (
    "You are a helpful assistant that reasons about how the camera and objects move through "
    "3D space over time. First think inside <thinking> </thinking>: state the physical state at "
    "the first and at the last frame of the relevant segment as 'Camera Center: [x, y, z]' and "
    "'Object Center: [x, y, z]' (metres, camera frame of the first frame; write null when a value "
    "cannot be inferred), then reason from those states to the answer. Then give the final answer "
    "inside <answer> </answer>."
)

ST_COT_INSTRUCTION = (
    "Think step by step inside <thinking> </thinking>, stating the Camera Center and Object Center "
    "at the first and last frame, then give only the final answer inside <answer> </answer>."
)


def format_options(choices: Mapping[str, str]) -> str:
    """``{"A": "left", ...}`` -> ``"A: left\\nB: ..."`` in letter order."""
    return "\n".join(f"{letter}: {choices[letter]}" for letter in sorted(choices))


def direct_prompt(question: str, choices: Mapping[str, str] | None) -> str:
    """The direct-answer user text: question, options, answer-with-letter instruction."""
    if not choices:
        return f"{question}\n{NUMERIC_DIRECT_INSTRUCTION}"
    return f"{question}\n{format_options(choices)}\n{DIRECT_INSTRUCTION}"


def st_cot_prompt(question: str, choices: Mapping[str, str] | None) -> str:
    """The ST-CoT user text: question, options, think-then-answer instruction."""
    if not choices:
        return f"{question}\n{ST_COT_INSTRUCTION} The answer is a single number in metres."
    return f"{question}\n{format_options(choices)}\n{ST_COT_INSTRUCTION}"


def build_prompt(question: str, choices: Mapping[str, str] | None, mode: str) -> str:
    """``mode`` is ``"direct"`` or ``"st-cot"``."""
    if mode == "direct":
        return direct_prompt(question, choices)
    if mode in ("st-cot", "st_cot", "cot"):
        return st_cot_prompt(question, choices)
    raise ValueError(f"unknown prompt mode {mode!r}; use 'direct' or 'st-cot'")


def format_center(center) -> str:
    """``[1.234, -0.5, 3]`` -> ``"[1.23, -0.50, 3.00]"`` (centimetre precision); ``None`` -> ``"null"``."""
    if center is None:
        return "null"
    return "[" + ", ".join(f"{float(v):.2f}" for v in center) + "]"
