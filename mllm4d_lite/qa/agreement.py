"""Agreement of questions built from estimated annotations with those built from ground truth.

The QA step's measure of curation quality (``mllm4d qa --score``, ``mllm4d curate --score``):
the same question, asked of both annotations of a clip, should get the same answer.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from mllm4d_lite.qa.builders import generate_questions
from mllm4d_lite.qa.config import QAConfig


def agreement(est_annotations: list[dict[str, Any]], gt_annotations: list[dict[str, Any]], cfg: QAConfig,
              rel_tol: float = 0.15) -> dict[str, Any]:
    """Compare questions generated (uncapped, deterministically) from estimated and ground-truth
    annotations of the same clips, matched by (clip, category, subject, question key).

    Returns shares of matched multiple-choice answers that agree and of matched numeric answers
    within ``rel_tol`` of the ground truth, counts per category, unmatched counts and a few
    disagreements."""
    def index(anns):
        out = {}
        for ann in anns:
            for q in generate_questions(ann, cfg, capped=False):
                out[q.match_key] = q
        return out

    est, gt = index(est_annotations), index(gt_annotations)
    shared = sorted(set(est) & set(gt))
    per_cat: dict[str, dict[str, int]] = defaultdict(lambda: {"matched": 0, "agree": 0})
    mc_n = mc_ok = num_n = num_ok = 0
    rel_errors: list[float] = []
    disagreements = []
    for key in shared:
        e, g = est[key], gt[key]
        if g.question_type == "numeric":
            rel_errors.append(abs(e.value - g.value) / max(abs(g.value), 1e-9))
            ok = rel_errors[-1] <= rel_tol
            num_n += 1
            num_ok += ok
        else:
            ok = e.canonical == g.canonical
            mc_n += 1
            mc_ok += ok
        per_cat[g.category]["matched"] += 1
        per_cat[g.category]["agree"] += int(ok)
        if not ok and len(disagreements) < 20:
            disagreements.append({"key": list(key), "estimated": e.answer, "ground_truth": g.answer})
    return {
        "mc_matched": mc_n, "mc_agree": mc_ok, "mc_agreement": mc_ok / mc_n if mc_n else float("nan"),
        "numeric_matched": num_n, "numeric_within": num_ok,
        "numeric_within_tol": num_ok / num_n if num_n else float("nan"), "rel_tol": rel_tol,
        "numeric_median_rel_error": float(np.median(rel_errors)) if rel_errors else float("nan"),
        "est_only": len(set(est) - set(gt)), "gt_only": len(set(gt) - set(est)),
        "per_category": dict(sorted(per_cat.items())), "disagreements": disagreements,
    }


def scorecard_line(result: dict[str, Any]) -> str:
    """One line for ``--score``."""
    return (f"qa agreement est vs gt: multiple-choice {100 * result['mc_agreement']:.1f}% "
            f"({result['mc_agree']}/{result['mc_matched']}), numeric within {100 * result['rel_tol']:.0f}% "
            f"{100 * result['numeric_within_tol']:.1f}% ({result['numeric_within']}/{result['numeric_matched']}; "
            f"median relative error {100 * result['numeric_median_rel_error']:.1f}%), "
            f"unmatched est {result['est_only']} / gt {result['gt_only']}")
