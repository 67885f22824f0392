"""Evaluation reports: per-category accuracy table as JSON, Markdown and a PNG bar chart.

Input is a list of *scored predictions*: dicts with at least

- ``category``  (str) the group a question is reported under;
- ``score``     (float) 1.0 / 0.0 for multiple choice, the MRA in [0, 1] for numeric questions
  (see :func:`mllm4d_lite.eval.answers.score_response`);
- ``extracted`` (str | None) the extracted letter / number; None counts as "no answer";
- ``n_choices`` (int | None) number of options (chance = 1 / n_choices); None for numeric.

Two overall figures are reported, and named so they cannot be mixed up:

- ``accuracy``: per question, ``100 * sum(score) / n`` over all questions;
- ``mean_over_categories``: the unweighted mean of the category accuracies (what VSI-Bench
  reports; with unequal category sizes the two differ).

Numeric categories contribute their mean MRA (in percent) as their "accuracy"; such a
category is marked ``metric: "MRA"``. The blind baseline (same model, blank frames) is an
optional second list of scored predictions, reported per category beside the real run.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mllm4d_lite.io import atomic_write_json, atomic_write_text, save_figure

ACCURACY_NOTE = "accuracy: per question, 100 * (sum of scores) / (number of questions)"
MEAN_NOTE = ("mean_over_categories: unweighted mean of the per-category accuracies "
             "(VSI-Bench style); differs from the per-question accuracy when categories differ in size")
SCORE_NOTE = "score per question: 1/0 for multiple choice (exact option), mean relative accuracy (MRA) for numeric"


def _pct(x: float) -> float:
    return round(100.0 * x, 2)


def category_table(predictions: Sequence[Mapping[str, Any]]) -> "OrderedDict[str, dict[str, Any]]":
    """Per-category counts: ``{category: {n, correct, accuracy (%), no_answer, chance (%), metric}}``.

    ``correct`` is the sum of scores (an integer count for multiple choice). ``chance`` is the
    mean of 1 / n_choices over the category's multiple-choice questions (None for numeric).
    Categories keep the order of first appearance.
    """
    groups: "OrderedDict[str, list[Mapping[str, Any]]]" = OrderedDict()
    for p in predictions:
        groups.setdefault(str(p["category"]), []).append(p)
    table: "OrderedDict[str, dict[str, Any]]" = OrderedDict()
    for cat, items in groups.items():
        n = len(items)
        total = float(sum(float(p["score"]) for p in items))
        chances = [1.0 / p["n_choices"] for p in items if p.get("n_choices")]
        numeric = sum(1 for p in items if not p.get("n_choices"))
        table[cat] = {
            "n": n,
            "correct": int(total) if total.is_integer() else round(total, 3),
            "accuracy": _pct(total / n),
            "no_answer": sum(1 for p in items if p.get("extracted") is None),
            "chance": _pct(sum(chances) / len(chances)) if chances else None,
            "metric": "MRA" if numeric == n else ("accuracy" if numeric == 0 else "accuracy+MRA"),
        }
    return table


def overall(predictions: Sequence[Mapping[str, Any]], table: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Overall figures: ``n``, ``correct``, ``accuracy`` (per question, %), ``mean_over_categories``
    (unweighted, %), ``no_answer``, ``chance`` (per question, %; multiple choice only)."""
    table = category_table(predictions) if table is None else table
    n = len(predictions)
    total = float(sum(float(p["score"]) for p in predictions))
    chances = [1.0 / p["n_choices"] for p in predictions if p.get("n_choices")]
    cats = [row["accuracy"] for row in table.values()]
    return {
        "n": n,
        "correct": int(total) if total.is_integer() else round(total, 3),
        "accuracy": _pct(total / n) if n else 0.0,
        "mean_over_categories": round(sum(cats) / len(cats), 2) if cats else 0.0,
        "no_answer": sum(1 for p in predictions if p.get("extracted") is None),
        "chance": _pct(sum(chances) / len(chances)) if chances else None,
        "categories": len(table),
    }


def build_report(predictions: Sequence[Mapping[str, Any]], *, blind: Sequence[Mapping[str, Any]] | None = None,
                 skipped: Sequence[Mapping[str, Any]] = (), meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The full report dict (what ``report.json`` holds)."""
    table = category_table(predictions)
    report: dict[str, Any] = {
        "overall": overall(predictions, table),
        "categories": [{"category": c, **row} for c, row in table.items()],
        "notes": [ACCURACY_NOTE, MEAN_NOTE, SCORE_NOTE,
                  "chance: mean of 1/(number of options) over the multiple-choice questions",
                  "no_answer: replies where no option could be extracted (scored wrong)"],
        "skipped": list(skipped),
    }
    if skipped:
        report["notes"].append(f"{len(skipped)} questions were skipped (see 'skipped') and are NOT in n")
    if blind is not None:
        btable = category_table(blind)
        report["blind"] = {"overall": overall(blind, btable),
                           "categories": [{"category": c, **row} for c, row in btable.items()]}
        report["notes"].append("blind: the same model and questions with blank (all-zero) frames")
        for row in report["categories"]:
            b = btable.get(row["category"])
            row["blind_accuracy"] = b["accuracy"] if b else None
    if meta:
        report["meta"] = dict(meta)
    return report


def _fmt(x: Any) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.2f}"
    return str(x)


def markdown_row(cells: Iterable[Any]) -> str:
    """One row of a Markdown table: ``| a | b |``."""
    return "| " + " | ".join(str(c) for c in cells) + " |"


def report_markdown(report: Mapping[str, Any], title: str = "Evaluation report") -> str:
    """The report as a Markdown table (one row per category, then the overall rows)."""
    has_blind = "blind" in report
    head = ["category", "n", "correct", "accuracy %", "no answer", "chance %"] + (["blind %"] if has_blind else [])
    lines = [f"# {title}", "", markdown_row(head), "|" + "---|" * len(head)]
    for row in report["categories"]:
        name = row["category"] + (" (MRA)" if row["metric"] == "MRA" else "")
        cells = [name, row["n"], row["correct"], row["accuracy"], row["no_answer"], row["chance"]]
        if has_blind:
            cells.append(row.get("blind_accuracy"))
        lines.append(markdown_row(_fmt(c) for c in cells))
    o = report["overall"]
    cells = ["**overall, per question**", o["n"], o["correct"], o["accuracy"], o["no_answer"], o["chance"]]
    if has_blind:
        cells.append(report["blind"]["overall"]["accuracy"])
    lines.append(markdown_row(_fmt(c) for c in cells))
    cells = ["**overall, mean over categories**", "", "", o["mean_over_categories"], "", ""]
    if has_blind:
        cells.append(report["blind"]["overall"]["mean_over_categories"])
    lines.append(markdown_row(_fmt(c) for c in cells))
    lines += ["", *[f"- {note}" for note in report["notes"]]]
    if report.get("skipped"):
        lines += ["", f"Skipped ({len(report['skipped'])}):"]
        lines += [f"- `{s.get('id')}`: {s.get('reason')}" for s in report["skipped"][:50]]
        if len(report["skipped"]) > 50:
            lines.append(f"- … and {len(report['skipped']) - 50} more (report.json lists all)")
    return "\n".join(lines) + "\n"


def plot_report(report: Mapping[str, Any], path: str | Path, title: str = "Accuracy per category") -> Path:
    """A PNG bar chart: accuracy per category (and blind, when present), chance as a tick."""
    from mllm4d_lite.io import pyplot

    plt = pyplot()

    rows = list(report["categories"])
    names = [r["category"] for r in rows] + ["overall\n(per question)", "overall\n(mean of cat.)"]
    acc = [r["accuracy"] for r in rows] + [report["overall"]["accuracy"], report["overall"]["mean_over_categories"]]
    chance = [r["chance"] for r in rows] + [report["overall"]["chance"], None]
    blind = None
    if "blind" in report:
        blind = [r.get("blind_accuracy") for r in rows] + [report["blind"]["overall"]["accuracy"],
                                                           report["blind"]["overall"]["mean_over_categories"]]
    width = 0.38 if blind else 0.7
    off = -width / 2 if blind else 0.0
    xs = list(range(len(names)))
    horizontal = len(names) > 14  # many categories (e.g. one per prediction file): one row each
    if horizontal:
        fig, ax = plt.subplots(figsize=(9.0, min(0.3 * len(names) + 1.5, 60.0)))
        bar, line, text = ax.barh, ax.vlines, lambda x, a: ax.text(a + 1, x + off, f"{a:.1f}", va="center", fontsize=6)
    else:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 4.2))
        bar, line, text = ax.bar, ax.hlines, lambda x, a: ax.text(x + off, a + 1, f"{a:.1f}", ha="center",
                                                                   va="bottom", fontsize=7)
    bar([x + off for x in xs], acc, width, label="model", color="#3b7dd8")
    if blind:
        bar([x + width / 2 for x in xs], [b if b is not None else 0 for b in blind], width,
            label="blind (blank frames)", color="#b0b0b0")
    for x, c in zip(xs, chance):
        if c is not None:
            line(c, x - 0.4, x + 0.4, colors="#d62728", linestyles="--", linewidth=1.2)
    ax.plot([], [], "--", color="#d62728", label="chance")
    for x, a in zip(xs, acc):
        text(x, a)
    label = "accuracy % (MRA % for numeric)"
    if horizontal:
        ax.set_yticks(xs)
        ax.set_yticklabels([n.replace("\n", " ") for n in names], fontsize=6)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ax.set_xlim(0, 105)
    else:
        ax.set_xticks(xs)
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(label)
        ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right" if horizontal else "upper right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path, dpi=120)


def write_report(report: Mapping[str, Any], out_dir: str | Path, stem: str = "report",
                 title: str = "Evaluation report") -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md", "png": out_dir / f"{stem}.png"}
    atomic_write_json(paths["json"], report, indent=1)
    atomic_write_text(paths["md"], report_markdown(report, title))
    plot_report(report, paths["png"], title)
    return paths


def summary_line(report: Mapping[str, Any], **extra: Any) -> str:
    """One JSON object (no newlines): ``n``, ``correct``, ``accuracy`` (per question, %),
    ``mean_over_categories`` (%), ``no_answer``, ``chance`` and ``skipped``, plus ``extra``."""
    o = report["overall"]
    data = {k: o[k] for k in ("n", "correct", "accuracy", "mean_over_categories", "no_answer", "chance")}
    data["skipped"] = len(report.get("skipped", []))
    if "blind" in report:
        data["blind_accuracy"] = report["blind"]["overall"]["accuracy"]
    data.update(extra)
    return json.dumps(data, default=str)
