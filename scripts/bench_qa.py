"""Benchmark QA generation on the tiny data: questions per category, letter balance, time.

    .venv/bin/python scripts/bench_qa.py                                   # ground truth of tiny_data
    .venv/bin/python scripts/bench_qa.py --annotations runs/curate/annotations   # + est-vs-gt score

Builds sft/cot/rft/bench from the ground-truth annotations of every clip under ``--clips`` (what
``mllm4d qa --use-gt`` does) into a temporary folder and prints: unique questions (target >= 500),
the number of categories present, the answer-letter shares per split (target 25% +- 5%), that no
clip is in two splits, and the wall / CPU time (target < 60 s). With ``--annotations`` it also
prints the agreement of answers built from estimated annotations with those from ground truth
(targets: >= 95% multiple choice, numeric within 15%).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from mllm4d_lite.curation.annotation import gt_annotations_from_clips, load_annotations
from mllm4d_lite.qa.agreement import agreement, scorecard_line
from mllm4d_lite.qa.config import QAConfig
from mllm4d_lite.qa.dataset import build_datasets
from mllm4d_lite.qa.vocabulary import CATEGORIES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", default="tiny_data", help="folder of clip folders with gt.json")
    parser.add_argument("--annotations", default="", help="folder of estimated annotations (optional)")
    args = parser.parse_args()

    wall, cpu = time.perf_counter(), time.process_time()
    gt = gt_annotations_from_clips(args.clips)
    with tempfile.TemporaryDirectory() as tmp:
        summary = build_datasets(gt, Path(tmp), QAConfig())
        sft = [json.loads(line) for line in (Path(tmp) / "sft.jsonl").read_text().splitlines()]
        bench = json.loads((Path(tmp) / "bench.json").read_text())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    unique = summary["unique_questions"]
    present = set(summary["per_category"]["train"]) | set(summary["per_category"]["bench"])
    overlap = {r["clip_id"] for r in sft} & {r["clip_id"] for r in bench}
    print(f"clips: {summary['num_clips']}; unique questions: {unique['train'] + unique['bench']} "
          f"(train {unique['train']} + {summary['train_rephrased_repeats']} rephrased repeats, bench {unique['bench']}); "
          f"categories: {len(present)}/{len(CATEGORIES)}; clips in two splits: {len(overlap)}")
    for split in ("train", "bench"):
        counts = summary["per_category"][split]
        print(f"  {split:5s} per category: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        shares = summary["answer_letters"][split]
        print(f"  {split:5s} answer letters: " + ", ".join(f"{k} {100 * v['share']:.1f}%" for k, v in shares.items()))
    print(f"time: {wall:.2f} s wall, {cpu:.2f} s CPU (reading gt.json of {len(gt)} clips + building all files)")
    if args.annotations:
        est = load_annotations(args.annotations)
        by_id = {a["clip_id"]: a for a in gt}
        shared = [a for a in est if a["clip_id"] in by_id]
        result = agreement(shared, [by_id[a["clip_id"]] for a in shared], QAConfig())
        print(scorecard_line(result))
        for cat, c in result["per_category"].items():
            print(f"  {cat}: {c['agree']}/{c['matched']}")


if __name__ == "__main__":
    main()
