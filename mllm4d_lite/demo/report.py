"""The demo's report: every stage's figures in ``<out>/report.json`` and ``<out>/report.md``.

It puts the evaluations side by side (accuracy, mean over categories, per category, plotted in
``accuracy.png``), gives the differences that matter with their standard errors (SFT - blind
control, GRPO - cold start, overall and per category), and adds the training curves, the
curation scorecard, the wall time of each stage and the machine the figures came from. Each
evaluation's own report is :mod:`mllm4d_lite.eval.report`'s.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

from mllm4d_lite.demo.schedule import cores
from mllm4d_lite.eval.report import markdown_row
from mllm4d_lite.io import atomic_write_json, atomic_write_text, save_figure

MIN_GAP_N = 10  # per-category differences are reported for categories with at least this many questions
GAP_PAIRS = (("sft", "blind"), ("grpo", "cold_start"))  # the differences the report gives with their noise


class Evaluation(NamedTuple):
    """One evaluation of the demo: written to ``<out>/eval/<key>/``, shown as ``label``."""

    key: str
    label: str
    adapter: Path | None  # the stage folder whose adapter/ is evaluated; None: the base model
    prompt: str  # direct | st-cot
    blind: bool  # blank frames (the report reads the eval report's "blind" section)


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when there is no such file."""
    return json.loads(path.read_text()) if path.is_file() else None


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------

def _gap(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Accuracy of ``a`` minus ``b`` (points) with the standard error of that difference, treating the
    two accuracies as independent binomial proportions over their n questions (conservative for
    two models scored on the same questions). |difference| <= 2 SE reads as within noise."""
    pa, pb = a["accuracy"] / 100.0, b["accuracy"] / 100.0
    se = 100.0 * math.sqrt(pa * (1 - pa) / max(a["n"], 1) + pb * (1 - pb) / max(b["n"], 1))
    diff = a["accuracy"] - b["accuracy"]
    return {"a": a["key"], "b": b["key"], "diff_points": round(diff, 2), "se_points": round(se, 2),
            "within_noise": bool(abs(diff) <= 2 * se)}


def _category_gaps(by_key: dict[str, dict[str, Any]], min_n: int = MIN_GAP_N) -> list[dict[str, Any]]:
    """SFT - blind and GRPO - cold start per category, for categories with at least ``min_n``
    questions, each with the standard error of the difference (:func:`_gap`)."""
    gaps = []
    for a, b in GAP_PAIRS:
        if a not in by_key or b not in by_key:
            continue
        ra, rb = by_key[a], by_key[b]
        for cat in sorted(set(ra["categories"]) & set(rb["categories"])):
            n_a, n_b = ra["category_n"][cat], rb["category_n"][cat]
            if min(n_a, n_b) >= min_n:
                gap = _gap({"key": a, "accuracy": ra["categories"][cat], "n": n_a},
                           {"key": b, "accuracy": rb["categories"][cat], "n": n_b})
                gaps.append({"category": cat, "n": n_a, **gap})
    return gaps


def _total_wall(times: dict[str, float], beside: dict[str, str]) -> float:
    """Wall time of the run: the stages that ran beside another add only what they ran beyond it.

    ``beside`` maps a stage to the stage it ran beside, e.g. ``"eval/sft": "cold_start"``. A chain
    such as ``"sft+cold_start"`` means the stage started beside ``sft`` and went on beside
    ``cold_start``: what it ran beyond ``sft`` is then charged against ``cold_start``, together
    with that stage's own companions (they run after it on the same core)."""
    main = [name for name in times if name not in beside]
    side: dict[str, float] = {}
    spills_into: set[str] = set()
    for name, chain in beside.items():
        if name in times:
            first, *rest = chain.split("+")
            side[first] = side.get(first, 0.0) + times[name]
            spills_into.update(rest)
    total, backlog = 0.0, 0.0
    for name in main:
        if name not in spills_into:
            total, backlog = total + backlog, 0.0
        total += times[name]
        backlog = max(0.0, backlog + side.get(name, 0.0) - times[name])
    return round(total + backlog, 1)


def machine_info() -> dict[str, Any]:
    """Where the report was built: CPU model, cores, torch version and the vector instruction set
    its CPU kernels use, GPU name. The tiny profile's figures depend on the CPU: kernels for other
    instruction sets round differently, and minutes of training carry the difference into the
    scores (docs/results.md)."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": cores(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def build_demo_report(cfg, out: Path, evals: list[Evaluation], times: dict[str, float]) -> dict[str, Any]:
    """Collect every stage's figures into ``report.json`` and ``report.md`` (with plots).
    ``cfg``: the run's :class:`~mllm4d_lite.demo.run.DemoConfig`."""
    beside = {name: marker["beside"] for name in times
              if (marker := read_json(out / name / ".done.json") or {}).get("beside")}
    rows: list[dict[str, Any]] = []
    chance = None
    for key, label, _, prompt, blind in evals:
        rep = read_json(out / "eval" / key / "report.json")
        if rep is None:
            continue
        section = rep["blind"] if blind else rep
        overall = section["overall"]
        chance = chance if chance is not None else overall.get("chance")
        rows.append({"key": key, "label": label, "prompt": prompt,
                     "accuracy": overall["accuracy"], "mean_over_categories": overall["mean_over_categories"],
                     "n": overall["n"], "no_answer": overall.get("no_answer"),
                     "categories": {c["category"]: c["accuracy"] for c in section["categories"]},
                     "category_n": {c["category"]: c["n"] for c in section["categories"]}})
    by_key = {r["key"]: r for r in rows}
    gaps = [_gap(by_key[a], by_key[b]) for a, b in GAP_PAIRS if a in by_key and b in by_key]
    category_gaps = _category_gaps(by_key)
    grpo_summary = read_json(out / "grpo" / "summary.json") or {}
    sft_summary = read_json(out / "sft" / "summary.json") or {}
    curate_score = read_json(out / "curate" / "scorecard.json")
    qa_summary = read_json(out / "curate" / "qa_summary.json")
    report = {
        "profile": cfg.profile,
        "chance": chance,
        "models": rows,
        "gaps": gaps,
        "category_gaps": category_gaps,
        "stage_wall_s": times,
        "stages_run_beside": beside,
        "total_wall_s": _total_wall(times, beside),
        "sft": {k: sft_summary.get(k) for k in ("train_records", "skipped_records", "final_loss", "steps", "train_s")
                if k in sft_summary},
        "grpo": grpo_summary,
        "curation_scorecard": curate_score,
        "qa_summary": {k: qa_summary.get(k) for k in ("num_clips", "questions", "per_category", "answer_letters")
                       if k in (qa_summary or {})},
        "machine": machine_info(),
    }
    plots = _accuracy_plot(rows, chance, out / "accuracy.png")
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", _report_markdown(report, out, plots))
    return report


def _accuracy_plot(rows: list[dict[str, Any]], chance: float | None, path: Path) -> Path | None:
    """Grouped bars: each evaluation's accuracy, overall and per category, with chance as a line."""
    if not rows:
        return None
    from mllm4d_lite.io import pyplot

    plt = pyplot()
    import numpy as np

    cats = sorted({c for r in rows for c in r["categories"]})
    labels = ["overall"] + cats
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(labels) + 2), 4.5))
    x = np.arange(len(labels))
    for i, r in enumerate(rows):
        vals = [r["accuracy"]] + [r["categories"].get(c, np.nan) for c in cats]
        ax.bar(x + i * width - 0.4 + width / 2, vals, width, label=r["label"])
    if chance is not None:
        ax.axhline(chance, color="k", ls="--", lw=1, label=f"chance ({chance:.0f}%)")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%) / MRA (numeric)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Held-out benchmark: accuracy per category")
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


# ----------------------------------------------------------------------------------------------
# report.md
# ----------------------------------------------------------------------------------------------

def _grpo_reward_line(grpo: dict[str, Any]) -> str:
    """The GRPO training reward, first -> last fifth, and whether the fifths compare the same prompts."""
    line = (f"GRPO training reward, first -> last fifth of the steps: {grpo['reward_first_fifth']:.3f} -> "
            f"{grpo['reward_last_fifth']:.3f} (rise {grpo['reward_rise']:+.3f}")
    if grpo.get("fifths_see_same_prompts"):
        line += f"; every fifth saw the same {grpo['train_prompts']} prompts)."
    elif grpo.get("train_prompts"):
        line += (f"; the fifths drew different prompts from {grpo['train_prompts']}, so the rise also "
                 "reflects which prompts were drawn).")
    else:
        line += ")."
    cats = grpo.get("accuracy_by_category_first_last_fifth") or {}
    both = {c: v for c, v in cats.items() if v[0] is not None and v[1] is not None}
    if both:
        line += " Training accuracy by category, first -> last fifth: " + ", ".join(
            f"{c} {100 * a:.0f} -> {100 * b:.0f} %" for c, (a, b) in both.items()) + "."
    return line


def _data_split_line(qa_summary: dict[str, Any]) -> str:
    """Which clips fed which stage: "Data split by clip: N clips -> SFT and cold start (...); M -> GRPO only ..."."""
    clips, questions = qa_summary.get("num_clips") or {}, qa_summary.get("questions") or {}
    if not clips:
        return ""
    parts = [f"{clips.get('train', 0)} clips -> SFT and cold start ({questions.get('train', 0)} questions)"]
    if clips.get("rft"):
        parts.append(f"{clips['rft']} -> GRPO only ({questions.get('rft', 0)} prompts)")
    parts.append(f"{clips.get('bench', 0)} -> the held-out benchmark ({questions.get('bench', 0)} questions)")
    return "Data split by clip: " + "; ".join(parts) + "."


def _rel(path: Path, out: Path) -> str:
    return os.path.relpath(path, out)


def _benchmark_lines(report: dict[str, Any], out: Path, accuracy_png: Path | None) -> list[str]:
    """The held-out benchmark: one row per evaluation, the differences with their noise, per category."""
    lines = ["## Held-out benchmark", "",
             "accuracy = per question (%); mean/cat = unweighted mean over categories (VSI-Bench style); "
             "numeric questions score by mean relative accuracy.", "",
             "| model | prompt | accuracy | mean/cat | n | no answer |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    if report["chance"] is not None:
        lines.append(markdown_row(["chance", "-", f"{report['chance']:.2f}", "-", "-", "-"]))
    for r in report["models"]:
        lines.append(markdown_row([r["label"], r["prompt"], f"{r['accuracy']:.2f}", f"{r['mean_over_categories']:.2f}",
                                   r["n"], r["no_answer"]]))
    for g in report.get("gaps", []):
        lines.append("")
        lines.append(f"{g['a']} - {g['b']}: {g['diff_points']:+.2f} points, standard error {g['se_points']:.2f} "
                     f"({'within noise: |difference| <= 2 SE' if g['within_noise'] else 'beyond 2 SE'}).")
    if report.get("category_gaps"):
        lines += ["", f"Differences per category (categories with at least {MIN_GAP_N} questions):", "",
                  "| models | category | n | difference (points) | standard error | reading |",
                  "| --- | --- | ---: | ---: | ---: | --- |"]
        for g in report["category_gaps"]:
            lines.append(markdown_row([f"{g['a']} - {g['b']}", g["category"], g["n"], f"{g['diff_points']:+.2f}",
                                       f"{g['se_points']:.2f}", "within noise" if g["within_noise"] else "beyond 2 SE"]))
    cats = sorted({c for r in report["models"] for c in r["categories"]})
    if cats:
        lines += ["", "Per category (accuracy %, MRA for numeric):", "",
                  markdown_row(["category", *(r["key"] for r in report["models"])]),
                  "| --- |" + " ---: |" * len(report["models"])]
        for c in cats:
            vals = [r["categories"].get(c) for r in report["models"]]
            lines.append(markdown_row([c, *("-" if v is None else f"{v:.1f}" for v in vals)]))
    if accuracy_png:
        lines += ["", f"![accuracy per category]({_rel(accuracy_png, out)})"]
    return lines


def _training_lines(report: dict[str, Any], out: Path) -> list[str]:
    """The loss curves of SFT and the cold start, GRPO's reward and its curve."""
    grpo = report.get("grpo") or {}
    lines = ["## Training", ""]
    if (out / "sft" / "loss.png").is_file():
        lines += ["SFT loss:", "", f"![SFT loss]({_rel(out / 'sft' / 'loss.png', out)})", ""]
    if (out / "cold_start" / "loss.png").is_file():
        lines += ["Cold-start loss:", "", f"![cold-start loss]({_rel(out / 'cold_start' / 'loss.png', out)})", ""]
    if grpo.get("reward_rise") is not None:
        lines += [_grpo_reward_line(grpo), ""]
    if (out / "grpo" / "reward_curve.png").is_file():
        lines += [f"![GRPO reward]({_rel(out / 'grpo' / 'reward_curve.png', out)})", ""]
    return lines


def _curation_lines(report: dict[str, Any], out: Path) -> list[str]:
    """The data split by clip, the scorecard against the ground truth and two clips' trajectories."""
    plots = sorted((out / "curate" / "plots").glob("*.png"))[:2] if (out / "curate" / "plots").is_dir() else []
    lines = ["## Curation", ""]
    if (data_line := _data_split_line(report.get("qa_summary") or {})):
        lines += [data_line, ""]
    score = report.get("curation_scorecard")
    if score:
        summary = score.get("summary", score) if isinstance(score, dict) else score
        text = "\n".join(summary) if isinstance(summary, list) and all(isinstance(x, str) for x in summary) \
            else json.dumps(summary, indent=1)[:3000]
        lines += ["Scorecard against the synthetic ground truth (`curate/scorecard.json`):", "", "```", text, "```", ""]
    for p in plots:
        lines += [f"![trajectories {p.stem}]({_rel(p, out)})", ""]
    return lines


def _wall_time_lines(report: dict[str, Any]) -> list[str]:
    """Seconds per stage (and beside which stage it ran), the run's total and the machine."""
    lines = ["## Wall time per stage", "", "| stage | seconds |", "| --- | ---: |"]
    for stage, secs in report["stage_wall_s"].items():
        other = report.get("stages_run_beside", {}).get(stage)
        lines.append(markdown_row([f"{stage}{f' (beside {other}, on the other core)' if other else ''}", f"{secs:.0f}"]))
    lines.append(markdown_row(["**total**", f"**{report['total_wall_s']:.0f}**"]))
    if (m := report.get("machine")):
        lines += ["", f"Machine: {m['cpu']}, {m['cores']} core(s), torch {m['torch']} ({m['cpu_capability']} CPU "
                      f"kernels){', GPU ' + m['gpu'] if m.get('gpu') else ''}. On the CPU the scores depend on the "
                      f"instruction set as well as the seed: another CPU gives other (equally valid) figures."]
    return lines


def _report_markdown(report: dict[str, Any], out: Path, accuracy_png: Path | None) -> str:
    lines = [f"# mllm4d-lite demo report ({report['profile']} profile)", ""]
    lines += _benchmark_lines(report, out, accuracy_png)
    lines += ["", *_training_lines(report, out)]
    lines += _curation_lines(report, out)
    lines += _wall_time_lines(report)
    return "\n".join(lines) + "\n"
