"""``mllm4d eval``: answer a VLM4D-format benchmark with a model, or score prediction files.

Two sub-commands::

    mllm4d eval run --model tiny --bench runs/demo/qa/bench.json --prompt st-cot --out runs/demo/eval
    mllm4d eval run --model Qwen/Qwen3-VL-4B-Instruct --adapter runs/grpo/adapter \\
        --bench VLM4D/real_mc.json --video-root VLM4D/ --prompt st-cot --frames 32 --out runs/vlm4d
    mllm4d eval score --predictions runs/vlm4d/predictions.json other_model.json

A benchmark is a VLM4D-format file (:mod:`mllm4d_lite.eval.bench_files`): the kit's own
``bench.json`` or VLM4D's ``real_mc.json`` / ``synthetic_mc.json``. Video paths relative to the
bench file are read from beside it; VLM4D's absolute paths (the authors' machine, or URLs) are
looked up under ``--video-root`` by their trailing path parts (``videos_real/davis/x.mp4``, then
``davis/x.mp4``, then ``x.mp4``).

``run`` writes into ``--out``: ``predictions.jsonl`` (appended as answers come, so a stopped
run resumes and skips answered ids), then ``predictions.json`` (the input entries plus
``response``, ``extracted`` and ``score``, in benchmark order), ``report.json`` / ``.md`` /
``.png`` (see :mod:`mllm4d_lite.eval.report`) and ``config.yaml``. Entries without a ``category``
get ``split`` (the bench file's name), which the report groups by. With ``--blind`` the same model
also answers every question with blank frames (``predictions_blind.jsonl``), reported as a
baseline beside chance.

``score`` re-extracts answers from the ``response`` of existing prediction files, from any
model (VLM4D's judged files, whose right answer is ``ground_truth_answer``, are read as they
are), prints the report and ends with one JSON line: ``n``, ``correct``, ``accuracy`` (%),
``mean_over_categories`` (%), ``no_answer`` and per-file figures.

Categories come from an entry's ``category`` field, else from its split file's name.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from mllm4d_lite.config import ConfigError, parse_config, save_resolved
from mllm4d_lite.eval.answers import answer_part, is_numeric, score_response
from mllm4d_lite.eval.bench_files import (BenchError, check_entries, check_entry_text, file_labels, load_entries,
                                          resolve_video)
from mllm4d_lite.eval.resume import bench_digest, check_resume, read_predictions
from mllm4d_lite.eval.report import build_report, report_markdown, summary_line, write_report
from mllm4d_lite.io import atomic_write_json, prepare_output_dir, run_stage

log = logging.getLogger(__name__)

PROMPT_MODES = ("direct", "st-cot")


def scored(entry: Mapping[str, Any], response: str | None, st_cot: bool = False) -> dict[str, Any]:
    """The entry plus ``response``, ``extracted`` and ``score`` (and the fields the report reads).

    ``st_cot``: the reply answers the kit's ST-CoT prompt, so only its answer part counts
    (:func:`mllm4d_lite.eval.answers.answer_part`: the ``<answer>`` block, or what follows
    ``</thinking>``), as in the GRPO accuracy reward; the words of its reasoning are not an answer.
    """
    score, extracted = score_response(entry, answer_part(response) if st_cot else response)
    out = dict(entry)
    out.update(response=response, extracted=extracted, score=score)
    return out


def report_rows(predictions: Iterable[Mapping[str, Any]], default_category: str) -> list[dict[str, Any]]:
    """What :func:`mllm4d_lite.eval.report.build_report` reads, from scored predictions."""
    rows = []
    for p in predictions:
        choices = p.get("choices")
        rows.append({"id": p.get("id"), "category": str(p.get("category") or p.get("split") or default_category),
                     "score": float(p["score"]), "extracted": p.get("extracted"),
                     "n_choices": len(choices) if isinstance(choices, dict) and not is_numeric(p) else None})
    return rows


# ----------------------------------------------------------------------------------------------
# eval score
# ----------------------------------------------------------------------------------------------

def score_files(paths: Sequence[str | Path]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score prediction files together. Returns (report, per-file figures)."""
    paths = [Path(p) for p in paths]
    rows: list[dict[str, Any]] = []
    per_file = []
    for path, label in zip(paths, file_labels(paths)):
        entries = load_entries(path)
        check_entries(entries, path, need_response=True)
        preds = [scored(e, e["response"]) for e in entries]
        file_rows = report_rows(preds, label)
        total = sum(r["score"] for r in file_rows)
        per_file.append({"file": str(path), "label": label, "n": len(file_rows),
                         "correct": int(total) if float(total).is_integer() else round(total, 3),
                         "accuracy": round(100 * total / len(file_rows), 2) if file_rows else 0.0,
                         "no_answer": sum(r["extracted"] is None for r in file_rows)})
        rows += file_rows
    if not rows:
        raise BenchError("no entries in " + ", ".join(map(str, paths)))
    report = build_report(rows, meta={"files": [str(p) for p in paths]})
    report["files"] = per_file
    return report, per_file


def _score_main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="mllm4d eval score",
                                 description="Score prediction files (entries with 'response') with the kit's "
                                             "answer extraction; prints the report, then one JSON line.")
    ap.add_argument("--predictions", nargs="+", required=True, metavar="FILE", help="prediction files (JSON list or JSONL)")
    ap.add_argument("--out", default=None, help="also write report.json/.md/.png here")
    args = ap.parse_args(list(argv))

    def score(args):
        if args.out:
            prepare_output_dir(args.out)  # a file, read-only: one error line before scoring
        report, per_file = score_files(args.predictions)
        if args.out:
            write_report(report, args.out, title="Scored predictions")
        return report, per_file

    result = run_stage("mllm4d eval score", score, args, (BenchError,), args.out)
    if result is None:
        return 2
    report, per_file = result
    sys.stdout.write(report_markdown(report, "Scored predictions"))
    print(summary_line(report, files=[{k: f[k] for k in ("label", "n", "correct", "accuracy")} for f in per_file]))
    return 0


# ----------------------------------------------------------------------------------------------
# eval run
# ----------------------------------------------------------------------------------------------

@dataclass
class EvalConfig:
    """Options of ``mllm4d eval run``."""

    model: str = field(default="tiny", metadata={"help": "tiny | tiny-motion | tiny-qwen3-vl | shapes:<name> | model "
                                                         "folder | hub name"})
    shape_layers: int = field(default=0, metadata={
        "help": "shapes:* models only: decoder layers and vision blocks to build (0 = full depth)"})
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter folder (sft / grpo output)"})
    bench: str = field(default="", metadata={"help": "VLM4D-format benchmark file (JSON list or JSONL)"})
    video_root: str | None = field(default=None, metadata={
        "help": "folder holding the videos when the bench's paths are not valid here (VLM4D downloads)"})
    prompt: str = field(default="direct", metadata={"help": "direct | st-cot (the kit's shared prompts)"})
    frames: int = field(default=8, metadata={"help": "frames sampled per video (the paper: 32)"})
    max_pixels: int | None = field(default=None, metadata={
        "help": "per-frame pixel budget (the paper: 50176 = 224x224); default: the processor's"})
    out: str = field(default="runs/eval", metadata={"help": "output folder"})
    blind: bool = field(default=False, metadata={"help": "also answer with blank frames (text-only baseline)"})
    batch_size: int = field(default=1, metadata={"help": "questions per generate() call"})
    max_new_tokens: int = field(default=0, metadata={"help": "reply budget; 0 = 32 for direct, 1024 for st-cot"})
    limit: int = field(default=0, metadata={"help": "answer only the first N questions (0 = all)"})
    device: str | None = field(default=None, metadata={"help": "cuda | cpu (default: cuda when present)"})
    quant: str | None = field(default=None, metadata={"help": "none | 4bit | 8bit"})
    dtype: str | None = field(default=None, metadata={"help": "float32 | bfloat16 | float16 (default by device)"})
    use_unsloth: bool = field(default=False, metadata={"help": "load through Unsloth (CUDA only)"})
    num_threads: int = field(default=0, metadata={
        "help": "torch CPU threads (0 = torch's default; 1 when another job shares a 2-core machine)"})

    def validate(self) -> None:
        if not self.bench:
            raise ConfigError("`bench` is required: --bench path/to/bench.json (the kit's or VLM4D's real_mc.json)")
        if self.prompt not in PROMPT_MODES:
            raise ConfigError(f"`prompt` must be one of {PROMPT_MODES}, got {self.prompt!r}")
        if self.frames < 1:
            raise ConfigError(f"`frames` must be >= 1, got {self.frames}")
        if self.batch_size < 1:
            raise ConfigError(f"`batch_size` must be >= 1, got {self.batch_size}")
        if self.max_pixels is not None and self.max_pixels < 28 * 28:
            raise ConfigError(f"`max_pixels` must be >= 784 (28x28), got {self.max_pixels}")


def _run_key(cfg: EvalConfig) -> dict[str, Any]:
    keys = ("model", "adapter", "prompt", "frames", "max_pixels", "max_new_tokens", "quant")
    key = {**{k: getattr(cfg, k) for k in keys}, "bench": str(Path(cfg.bench).resolve())}
    if str(cfg.model).startswith("shapes:"):  # only then: older run keys stay valid
        key["shape_layers"] = cfg.shape_layers
    return key


def entry_prompt(entry: Mapping[str, Any], mode: str) -> str:
    """The user text for a benchmark entry: question, options (none for a numeric question), and the
    ``mode``'s instruction (``direct`` | ``st-cot``), from :mod:`mllm4d_lite.prompts`."""
    from mllm4d_lite.prompts import build_prompt

    return build_prompt(entry["question"], None if is_numeric(entry) else entry.get("choices"), mode)


def answer_entries(model, processor, todo: Sequence[tuple[Mapping[str, Any], Any]], load_video: Callable[[Any], Any],
                   mode: str, max_new_tokens: int, batch_size: int,
                   label: str) -> Iterator[tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Answer benchmark entries in batches and score the replies: the loop of ``mllm4d eval run``.

    ``todo`` holds ``(entry, video source)`` pairs; ``load_video(source)`` gives the decoded
    ``(frames, metadata)``. Each batch of ``batch_size`` entries gets the kit's ``mode`` prompt
    (:func:`entry_prompt`, with the ST-CoT system prompt in st-cot mode), greedy replies of at most
    ``max_new_tokens`` tokens, and :func:`scored`. Yields, per batch, the scored predictions and the
    entries skipped because their video could not be read (``{"id", "reason"}``). An entry whose
    text holds one of the model's special tokens is refused first (:class:`DataError`, naming its
    ``records_file`` and id; ``mllm4d eval run`` has already refused such a bench with a
    :class:`BenchError`), so SFT's quick eval of ``eval_file`` records is covered too.
    """
    from tqdm import tqdm

    from mllm4d_lite.eval.bench_files import ENTRY_TEXT_FIELDS
    from mllm4d_lite.train.records import DataError, check_record_text, model_special_tokens

    check_record_text([entry for entry, _ in todo], model_special_tokens(processor), error=DataError,
                      fields=ENTRY_TEXT_FIELDS)

    from mllm4d_lite.curation.video import VideoError
    from mllm4d_lite.prompts import ST_COT_SYSTEM_PROMPT
    from mllm4d_lite.train.video_inputs import generate_answers

    system = ST_COT_SYSTEM_PROMPT if mode == "st-cot" else None
    bar = tqdm(total=len(todo), desc=f"eval {label}", unit="q", disable=not todo)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        ready, videos, prompts, skipped = [], [], [], []
        for entry, source in batch:
            try:
                videos.append(load_video(source))
            except (VideoError, OSError, ValueError) as err:
                log.warning("entry %r: cannot read video %s (%s); skipped", entry["id"], source, err)
                skipped.append({"id": entry["id"], "reason": f"unreadable video {source}: {err}"})
                continue
            ready.append(entry)
            prompts.append(entry_prompt(entry, mode))
        predictions = []
        if ready:
            replies = generate_answers(model, processor, prompts, videos, system_prompt=system,
                                       max_new_tokens=max_new_tokens)
            predictions = [scored(entry, reply, st_cot=mode == "st-cot") for entry, reply in zip(ready, replies)]
        bar.update(len(batch))
        yield predictions, skipped
    bar.close()


def _answer_all(cfg: EvalConfig, model, processor, todo: list[tuple[dict, Path]], pred_path: Path,
                blank: bool, label: str) -> list[dict[str, Any]]:
    """Answer ``todo`` in batches, appending each scored prediction to ``pred_path``."""
    from mllm4d_lite.train.video_inputs import load_video_for_model

    max_new = cfg.max_new_tokens or (32 if cfg.prompt == "direct" else 1024)
    skipped: list[dict[str, Any]] = []
    with pred_path.open("a", encoding="utf-8") as sink:
        for predictions, unreadable in answer_entries(
                model, processor, todo, lambda path: load_video_for_model(path, cfg.frames, blank=blank),
                cfg.prompt, max_new, cfg.batch_size, label):
            skipped += unreadable
            for prediction in predictions:
                sink.write(json.dumps(prediction) + "\n")
            sink.flush()
    return skipped


def run(cfg: EvalConfig) -> dict[str, Any]:
    """Answer every question of ``cfg.bench`` (resumable), write predictions and the report."""
    if cfg.num_threads > 0:
        import torch

        torch.set_num_threads(cfg.num_threads)
    bench_path = Path(cfg.bench)
    entries = load_entries(bench_path)
    check_entries(entries, bench_path)
    digest = bench_digest(entries)
    label = bench_path.stem
    for e in entries:
        if not e.get("category"):
            e.setdefault("split", label)
    out = prepare_output_dir(cfg.out)  # a file, read-only: one error line before any work
    check_resume(_run_key(cfg), cfg.bench, out, entries, digest)
    if cfg.limit:
        entries = entries[:cfg.limit]
    save_resolved(cfg, out)

    video_root = Path(cfg.video_root) if cfg.video_root else None
    if video_root is not None and not video_root.is_dir():
        raise BenchError(f"--video-root {video_root} is not a folder")
    resolved: list[tuple[dict, Path]] = []
    skipped: list[dict[str, Any]] = []
    for e in entries:
        path = resolve_video(e.get("video"), bench_path.parent, video_root)
        if path is None:
            log.warning("entry %r: video %r not found (bench folder %s, video root %s); skipped",
                        e["id"], e.get("video"), bench_path.parent, video_root)
            skipped.append({"id": e["id"], "reason": f"missing video {e.get('video')!r}"})
        else:
            resolved.append((e, path))
    if not resolved:
        raise BenchError(f"{bench_path}: none of the {len(entries)} videos was found; pass --video-root with the "
                         "folder holding them")

    passes = [("predictions.jsonl", False, "model")] + ([("predictions_blind.jsonl", True, "blind")] if cfg.blind else [])
    model = processor = None
    results: dict[str, list[dict[str, Any]]] = {}
    t0 = time.time()
    for filename, blank, name in passes:
        pred_path = out / filename
        done = {str(p["id"]): p for p in read_predictions(pred_path)}
        todo = [(e, p) for e, p in resolved if str(e["id"]) not in done]
        log.info("%s pass: %d answered already, %d to go", name, len(done), len(todo))
        if todo and model is None:
            from mllm4d_lite.train.loading import load_model_and_processor

            model, processor = load_model_and_processor(cfg.model, adapter=cfg.adapter, device=cfg.device,
                                                        quant=cfg.quant, dtype=cfg.dtype,
                                                        use_unsloth=cfg.use_unsloth, max_pixels=cfg.max_pixels,
                                                        shape_layers=cfg.shape_layers)
            from mllm4d_lite.train.records import model_special_tokens

            check_entry_text(entries, model_special_tokens(processor), bench_path)
        unreadable = _answer_all(cfg, model, processor, todo, pred_path, blank, name) if todo else []
        if name == "model":
            skipped += unreadable
        done = {str(p["id"]): p for p in read_predictions(pred_path)}
        # benchmark order; only this benchmark's ids (a --limit run may have answered fewer)
        results[name] = [done[str(e["id"])] for e, _ in resolved if str(e["id"]) in done]

    preds = results["model"]
    atomic_write_json(out / "predictions.json", preds, indent=1)
    if "blind" in results:
        atomic_write_json(out / "predictions_blind.json", results["blind"], indent=1)
    rows = report_rows(preds, label)
    blind_rows = report_rows(results["blind"], label) if "blind" in results else None
    meta = {"model": cfg.model, "adapter": cfg.adapter, "bench": str(bench_path), "prompt": cfg.prompt,
            "frames": cfg.frames, "max_pixels": cfg.max_pixels, "questions_in_bench": len(entries),
            "seconds": round(time.time() - t0, 1)}
    report = build_report(rows, blind=blind_rows, skipped=skipped, meta=meta)
    write_report(report, out, title=f"{Path(cfg.model).name} on {bench_path.name} ({cfg.prompt})")
    return report


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = ("usage: mllm4d eval {run,score} ...\n\n"
             "  run    answer a VLM4D-format benchmark with a model; predictions + report\n"
             "  score  score existing prediction files with the kit's answer extraction\n\n"
             "Run `mllm4d eval run --help` / `mllm4d eval score --help` for options.\n")
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(usage)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "score":
        return _score_main(rest)
    if command != "run":
        sys.stderr.write(usage + f"mllm4d eval: error: unknown command {command!r}; use run or score\n")
        return 2
    cfg = parse_config(EvalConfig, rest, prog="mllm4d eval run",
                       description="Answer a VLM4D-format benchmark and report accuracy per category.")
    from mllm4d_lite.train.families import ModelSetupError

    report = run_stage("mllm4d eval run", run, cfg, (BenchError, ConfigError, ModelSetupError), cfg.out)
    if report is None:
        return 2
    sys.stdout.write(report_markdown(report, f"{cfg.model} on {cfg.bench} ({cfg.prompt})"))
    print(summary_line(report, out=cfg.out))
    return 0


__all__ = ["EvalConfig", "answer_entries", "entry_prompt", "main", "report_rows", "run", "score_files", "scored"]
