"""The ``mllm4d qa`` stage: 4D annotations (estimated, or ground truth of synthetic clips) -> QA data.

``mllm4d qa --annotations runs/curate/annotations --out runs/qa`` (estimated),
``mllm4d qa --use-gt --clips tiny_data --out runs/qa_gt`` (ground truth); ``--score`` with both
``--annotations`` and ``--clips`` also prints the est-vs-gt agreement line. ``mllm4d curate``
runs the same QA step on the annotations it has just written. See docs/questions.md.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mllm4d_lite.config import ConfigError, merge_config_classes, parse_config, save_resolved, split_config
from mllm4d_lite.curation.annotation import AnnotationError, gt_annotations_from_clips, load_annotations
from mllm4d_lite.io import atomic_write_json, prepare_output_dir, run_stage
from mllm4d_lite.qa.agreement import agreement, scorecard_line
from mllm4d_lite.qa.config import QAConfig
from mllm4d_lite.qa.dataset import build_datasets


@dataclass
class QARunOptions:
    """Inputs and outputs of the stand-alone ``mllm4d qa`` command (``curate`` passes its own)."""

    annotations: str = field(default="", metadata={"help": "folder of estimated <clip_id>.json annotations (from mllm4d curate)"})
    clips: str = field(default="", metadata={"help": "folder of clip folders with gt.json (needed by use_gt and score)"})
    out: str = field(default="runs/qa", metadata={"help": "output folder for sft/cot/rft.jsonl, bench.json, qa_summary.json"})
    use_gt: bool = field(default=False, metadata={"help": "build the data from ground-truth annotations of --clips instead"})
    score: bool = field(default=False, metadata={"help": "print the est-vs-gt agreement scorecard (needs --annotations and --clips)"})


# the command's whole config: QARunOptions + QAConfig (what `--config` YAML and flags set)
QARunConfig = merge_config_classes("QARunConfig", QARunOptions, QAConfig)


def run(cfg: Any) -> dict[str, Any]:
    """The whole stage from a :data:`QARunConfig`: write the data files and ``qa_config.yaml`` into
    ``cfg.out`` (plus ``qa_agreement.json`` with ``score``). Returns ``{"summary": qa_summary,
    "num_clips": annotations used, "agreement": result or None}``; bad options raise
    :class:`ConfigError`, bad annotations :class:`AnnotationError`."""
    opts = split_config(cfg, QARunOptions)
    qa_cfg = split_config(cfg, QAConfig)
    if opts.use_gt and not opts.clips:
        raise ConfigError("--use-gt needs --clips DIR (clip folders with gt.json)")
    if opts.score and not (opts.clips and opts.annotations):
        raise ConfigError("--score needs --annotations DIR (estimated) and --clips DIR (ground truth)")
    if not (opts.use_gt or opts.annotations):
        raise ConfigError("give --annotations DIR, or --use-gt with --clips DIR")
    est = load_annotations(opts.annotations) if opts.annotations else None
    gt = gt_annotations_from_clips(opts.clips) if (opts.use_gt or opts.score) else None
    anns = gt if opts.use_gt else est
    prepare_output_dir(opts.out)  # a file, read-only: one error line before anything is written
    summary = build_datasets(anns, Path(opts.out), qa_cfg)
    save_resolved(cfg, opts.out, name="qa_config.yaml")
    result = None
    if opts.score:
        gt_by_id = {a["clip_id"]: a for a in gt}
        shared = [a for a in est if a["clip_id"] in gt_by_id]
        result = agreement(shared, [gt_by_id[a["clip_id"]] for a in shared], qa_cfg)
        atomic_write_json(Path(opts.out) / "qa_agreement.json", result)
    return {"summary": summary, "num_clips": len(anns), "agreement": result}


def main(argv: list[str] | None = None) -> int:
    """``mllm4d qa --annotations DIR --out DIR [--clips DIR --use-gt] [--score]`` plus any
    :class:`QAConfig` key as ``--key value`` (and ``--config recipe.yaml``)."""
    cfg = parse_config(QARunConfig, argv, prog="mllm4d qa",
                       description="4D annotations -> sft/cot/rft.jsonl, bench.json (VLM4D format), qa_summary.json")
    result = run_stage("mllm4d qa", run, cfg, (ConfigError, AnnotationError), cfg.out)
    if result is None:
        return 2
    summary = result["summary"]
    line = (f"mllm4d qa: {summary['unique_questions']['train']} train (+{summary['train_rephrased_repeats']} rephrased) "
            f"+ {summary['unique_questions']['bench']} bench questions from {result['num_clips']} clips "
            f"({'ground truth' if cfg.use_gt else 'estimated'}), {summary['elapsed_s']:.2f} s -> {cfg.out}")
    if result["agreement"] is not None:
        line += "\n" + scorecard_line(result["agreement"])
    print(line)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
