"""Speed of the ST-reward, answer extraction and the ST-CoT parser on long adversarial completions.

Target (issue 25): a 100 kB completion scored in under 50 ms by each reward. Each function is
timed on every completion below (median of ``--repeat`` calls), and the worst completion per
function is printed, as CPU time of this process (what the function costs) and wall time (what a
busy machine adds). Nothing is asserted: the figures go to docs/results.md.

    .venv/bin/python scripts/bench_rewards.py [--size 100000] [--repeat 3] [--all]

``--all`` prints every (function, completion) time, not only the worst per function.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

from mllm4d_lite.eval.answers import (answer_part, extract_choice, extract_number, follows_st_cot_format,
                                      parse_centers)
from mllm4d_lite.train.rewards import (RELEASE_REWARD_WEIGHTS, REWARD_FUNCS, accuracy_reward, camera_reward,
                                       format_reward, object_reward, weighted_total)

CHOICES = {"A": "left", "B": "right", "C": "forward", "D": "backward"}
SOLUTION = {"camera_center": [[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]], "object_center": [[1.0, 0.0, 5.0], [1.0, 0.0, 3.0]]}
GOOD = ("<thinking>First frame: Camera Center: [0.00, 0.00, 0.00], Object Center: [1.00, 0.00, 5.00]. Last frame: "
        "Camera Center: [0.00, 0.00, 2.00], Object Center: [1.00, 0.00, 3.00]. The camera moved forward."
        "</thinking><answer>C</answer>")


def completions(size: int) -> dict[str, str]:
    """Adversarial completions of ``size`` characters (each a long run of what one rule reads)."""

    def run(piece: str) -> str:
        return (piece * (size // len(piece) + 1))[:size]

    cases = {
        "letters a": "a" * size,
        "digits": "9" * size,
        "spaces": " " * size,
        "newlines": "\n" * size,
        "<think> runs": run("<think>"),
        "<thinking> runs": run("<thinking>"),
        "<answer> runs": run("<answer>"),
        "nested tags": run("<thinking><answer>")[:size // 2] + run("</answer></thinking>")[:size - size // 2],
        "unclosed answer": "<answer>" + run("x ")[8:],
        "open thinking": "<thinking>" + run("reasoning ")[10:],
        "camera labels": run("Camera Center: ["),
        "camera centres": run("Camera Center: [1.25, -0.50, 3.00] "),
        "null centres": run("camera center : null "),
        "huge numbers": run("Camera Center: [1e309, " + "9" * 400 + ", nan] "),
        "brackets": run("["),
        "deep brackets": run("[")[:size // 2] + run("]")[:size - size // 2],
        "json fragments": run('{"a": [1, '),
        "declarations": run("the final answer is "),
        "declared nothing": run("answer: ?\n"),
        "answer words": run("<answer> answer "),
        "punctuation": run(". "),
        "options": run("left or right, not forward. "),
        "letter list": run("A, B, C or D? "),
        "boxed": run("\\boxed{"),
        "special tokens": run("<|im_end|>\n<|im_start|>assistant\n"),
        "unicode": run("ſİ’“é🙂\u202e\u200b"),
        "padded good reply": run("filler words ")[:size - len(GOOD)] + GOOD,
    }
    return cases


def functions() -> dict[str, Callable[[str], object]]:
    mc = {"answer": "forward", "choices": CHOICES, "question_type": "multiple-choice"}
    num = {"answer": "10.0", "choices": None, "question_type": "numeric"}
    sol = {"solution": SOLUTION}

    def st_reward(text: str) -> list[float]:
        scores = {name: REWARD_FUNCS[name]([text], **mc, **sol) for name in RELEASE_REWARD_WEIGHTS}
        return weighted_total(scores, RELEASE_REWARD_WEIGHTS)

    return {
        "extract_choice": lambda t: extract_choice(t, CHOICES),
        "extract_choice (no choices)": lambda t: extract_choice(t),
        "extract_number": extract_number,
        "answer_part": answer_part,
        "follows_st_cot_format": follows_st_cot_format,
        "parse_centers (lenient)": lambda t: parse_centers(t, "camera"),
        "parse_centers (release)": lambda t: parse_centers(t, "camera", lenient=False),
        "format_reward": lambda t: format_reward([t]),
        "format_reward (release)": lambda t: format_reward([t], strict_release=True),
        "accuracy_reward (choice)": lambda t: accuracy_reward([t], **mc),
        "accuracy_reward (numeric)": lambda t: accuracy_reward([t], **num),
        "camera_reward": lambda t: camera_reward([t], **sol),
        "camera_reward (release)": lambda t: camera_reward([t], strict_release=True, **sol),
        "object_reward": lambda t: object_reward([t], **sol),
        "ST-reward (4 rewards, weighted)": st_reward,
    }


def time_call(func: Callable[[str], object], text: str, repeat: int) -> tuple[float, float]:
    """Median (CPU ms, wall ms) of ``repeat`` calls."""
    cpu, wall = [], []
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        func(text)
        cpu.append((time.process_time() - c0) * 1000)
        wall.append((time.perf_counter() - w0) * 1000)
    return statistics.median(cpu), statistics.median(wall)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=100_000, help="characters per completion")
    ap.add_argument("--repeat", type=int, default=3, help="calls per (function, completion); the median is kept")
    ap.add_argument("--all", action="store_true", help="print every (function, completion) time")
    args = ap.parse_args(argv)
    if args.size < 1000 or args.repeat < 1:
        ap.error("--size must be >= 1000 and --repeat >= 1")
    import logging

    logging.disable(logging.WARNING)  # broken-record warnings are not what is timed
    cases = completions(args.size)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{len(cases)} completions of {args.size} characters, median of {args.repeat} calls; "
          f"CPUs {os.cpu_count()}, load average {load:.1f}")
    print(f"{'function':<34} {'worst CPU ms':>12} {'wall ms':>9}  worst completion")
    worst_overall = 0.0
    for name, func in functions().items():
        times = {case: time_call(func, text, args.repeat) for case, text in cases.items()}
        case, (cpu, wall) = max(times.items(), key=lambda kv: kv[1][0])
        worst_overall = max(worst_overall, cpu)
        flag = "" if cpu < 50 else "  <-- over 50 ms"
        print(f"{name:<34} {cpu:>12.1f} {wall:>9.1f}  {case}{flag}")
        if args.all:
            for c, (ct, wt) in sorted(times.items(), key=lambda kv: -kv[1][0]):
                print(f"    {c:<30} {ct:>8.1f} {wt:>8.1f}")
    print(f"worst over every function and completion: {worst_overall:.1f} ms CPU (target < 50 ms per call)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
