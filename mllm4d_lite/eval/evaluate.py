"""``mllm4d eval``: answer a VLM4D-format benchmark with a model, or score prediction files.

Two sub-commands::

    mllm4d eval run --model tiny --bench runs/demo/qa/bench.json --prompt st-cot --out runs/demo/eval
    mllm4d eval run --model Qwen/Qwen3-VL-4B-Instruct --adapter runs/grpo/adapter \\
        --bench VLM4D/real_mc.json --video-root VLM4D/ --prompt st-cot --frames 32 --out runs/vlm4d
    mllm4d eval score --predictions runs/vlm4d/predictions.json other_model.json

A benchmark is a JSON list (or JSONL) of entries ``{"id", "video", "question",
"question_type": "multiple-choice" | "numeric", "choices": {"A": ...} | null, "answer"
(the text of the right option, or the number), "category"?}``: the kit's own ``bench.json``
or VLM4D's ``real_mc.json`` / ``synthetic_mc.json``. Video paths relative to the bench file
are read from beside it; VLM4D's absolute paths (the authors' machine, or URLs) are looked
up under ``--video-root`` by their trailing path parts (``videos_real/davis/x.mp4``, then
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
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mllm4d_lite.eval.answers import answer_letters, answer_part, entry_answer, is_numeric, score_response
from mllm4d_lite.config import ConfigError, parse_config, save_resolved
from mllm4d_lite.io import atomic_write_json
from mllm4d_lite.eval.report import build_report, report_markdown, summary_line, write_report

log = logging.getLogger(__name__)

PROMPT_MODES = ("direct", "st-cot")


class BenchError(ValueError):
    """A benchmark or prediction file is unusable; the message names the file, the entry and the fix."""


# ----------------------------------------------------------------------------------------------
# Reading and checking benchmark / prediction files
# ----------------------------------------------------------------------------------------------

def load_entries(path: str | Path) -> list[dict[str, Any]]:
    """A JSON list of objects, or JSONL (one object per line). Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if not stripped:
        raise BenchError(f"{path}: empty file; expected a JSON list of entries")
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise BenchError(f"{path}: not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    else:
        data = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise BenchError(f"{path}: line {lineno} is not valid JSON ({err.msg}); expected a JSON list "
                                 "or one JSON object per line") from None
    if not isinstance(data, list):
        raise BenchError(f"{path}: expected a JSON list of entries, got {type(data).__name__}")
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise BenchError(f"{path}: entry #{i} is a {type(entry).__name__}, not an object")
    return data


def _where(path: Path, index: int, entry: Mapping[str, Any]) -> str:
    return f"{path}: entry #{index} (id {entry.get('id', '?')!r})"


def check_entry(entry: Mapping[str, Any], index: int, path: Path, need_response: bool = False) -> None:
    """Raise :class:`BenchError` when ``entry`` cannot be scored, naming the entry and the problem."""
    where = _where(path, index, entry)
    if "id" not in entry:
        raise BenchError(f"{where}: missing field 'id'")
    if not str(entry.get("question", "")).strip() and not need_response:
        raise BenchError(f"{where}: missing or empty field 'question'")
    if "answer" not in entry and "ground_truth_answer" not in entry:
        raise BenchError(f"{where}: missing field 'answer' (the text of the right option)")
    if need_response and "response" not in entry:
        raise BenchError(f"{where}: missing field 'response'; a predictions file needs the model's reply "
                         "in 'response' for every entry")
    if need_response and entry["response"] is not None and not isinstance(entry["response"], str):
        raise BenchError(f"{where}: 'response' must be a string, got {type(entry['response']).__name__}")
    if is_numeric(entry):
        try:
            value = float(entry_answer(entry))
        except (TypeError, ValueError):
            raise BenchError(f"{where}: numeric question with non-numeric answer {entry_answer(entry)!r}") from None
        if not math.isfinite(value):
            raise BenchError(f"{where}: numeric answer {value} is not finite")
        return
    choices = entry.get("choices")
    if not isinstance(choices, dict) or len(choices) < 2:
        raise BenchError(f"{where}: 'choices' must map at least two letters to option texts, got {choices!r} "
                         "(numeric questions need question_type 'numeric')")
    if not answer_letters(entry_answer(entry), choices):
        raise BenchError(f"{where}: answer {entry_answer(entry)!r} matches none of the choices {choices!r}; "
                         "'answer' must be the text of the right option")


def check_entries(entries: Sequence[Mapping[str, Any]], path: Path, need_response: bool = False) -> None:
    """Check every entry and that ids are unique; all problems are reported at once (first 10)."""
    problems = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        try:
            check_entry(entry, i, path, need_response)
        except BenchError as err:
            problems.append(str(err))
            continue
        key = str(entry["id"])
        if key in seen:
            problems.append(f"{_where(path, i, entry)}: duplicate id (also entry #{seen[key]})")
        seen[key] = i
    if problems:
        more = f"\n... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise BenchError(f"{len(problems)} bad entr{'y' if len(problems) == 1 else 'ies'}:\n" +
                         "\n".join(problems[:10]) + more)


def file_labels(paths: Sequence[Path]) -> list[str]:
    """Short names for split files: the stem, or ``parent/stem`` where stems collide."""
    stems = [p.stem for p in paths]
    return [f"{p.parent.name}/{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]


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
    try:
        report, per_file = score_files(args.predictions)
    except BenchError as err:
        sys.stderr.write(f"mllm4d eval score: error: {err}\n")
        return 2
    if args.out:
        write_report(report, args.out, title="Scored predictions")
    sys.stdout.write(report_markdown(report, "Scored predictions"))
    print(summary_line(report, files=[{k: f[k] for k in ("label", "n", "correct", "accuracy")} for f in per_file]))
    return 0


# ----------------------------------------------------------------------------------------------
# eval run
# ----------------------------------------------------------------------------------------------

@dataclass
class EvalRunConfig:
    """Options of ``mllm4d eval run``."""

    model: str = field(default="tiny", metadata={"help": "tiny | tiny-motion | tiny-qwen3-vl | model folder | hub name"})
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


def resolve_video(video: Any, bench_dir: Path, video_root: Path | None) -> Path | None:
    """The local file for an entry's ``video``, or None when it is not found.

    Tried in order: the path as given (absolute, or relative to the bench file's folder);
    then under ``video_root``: the relative path, and for absolute paths / URLs their
    trailing parts, longest first.
    """
    if not video:
        return None
    raw = str(video)
    is_url = "://" in raw
    candidate = Path(raw)
    if not is_url:
        direct = candidate if candidate.is_absolute() else bench_dir / candidate
        if direct.is_file():
            return direct
    if video_root is not None:
        parts = [p for p in (raw.split("://", 1)[1].split("/")[1:] if is_url else candidate.parts) if p not in ("", "/")]
        for start in range(len(parts)):
            path = video_root.joinpath(*parts[start:])
            if path.is_file():
                return path
    return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            # a run killed mid-write leaves at most one broken last line: answer it again
            log.warning("%s: line %d is incomplete; that question will be answered again", path, lineno)
    return rows


def _run_key(cfg: EvalRunConfig) -> dict[str, Any]:
    keys = ("model", "adapter", "prompt", "frames", "max_pixels", "max_new_tokens", "quant")
    return {**{k: getattr(cfg, k) for k in keys}, "bench": str(Path(cfg.bench).resolve())}


def _check_resume(cfg: EvalRunConfig, out: Path) -> None:
    """A resumed run must use the same model/prompt/bench, or its predictions would be mixed."""
    key_path = out / "run_key.json"
    key = _run_key(cfg)
    if key_path.is_file():
        old = json.loads(key_path.read_text())
        if old != key:
            diff = {k: (old.get(k), key[k]) for k in key if old.get(k) != key[k]}
            raise BenchError(f"{out} holds predictions of a different run (changed: {diff}); "
                             "use another --out, or delete that folder to start over")
    else:
        atomic_write_json(key_path, key)


def _answer_all(cfg: EvalRunConfig, model, processor, todo: list[tuple[dict, Path]], pred_path: Path,
                blank: bool, label: str) -> list[dict[str, Any]]:
    """Answer ``todo`` in batches, appending each scored prediction to ``pred_path``."""
    from tqdm import tqdm

    from mllm4d_lite.train.model import generate_answers, load_video_for_model
    from mllm4d_lite.prompts import ST_COT_SYSTEM_PROMPT, build_prompt
    from mllm4d_lite.curation.video import VideoError

    max_new = cfg.max_new_tokens or (32 if cfg.prompt == "direct" else 1024)
    system = ST_COT_SYSTEM_PROMPT if cfg.prompt == "st-cot" else None
    skipped: list[dict[str, Any]] = []
    bar = tqdm(total=len(todo), desc=f"eval {label}", unit="q", disable=not todo)
    with pred_path.open("a", encoding="utf-8") as sink:
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start:start + cfg.batch_size]
            ready, videos, prompts = [], [], []
            for entry, video_path in batch:
                try:
                    videos.append(load_video_for_model(video_path, cfg.frames, blank=blank))
                except (VideoError, OSError, ValueError) as err:
                    log.warning("entry %r: cannot read video %s (%s); skipped", entry["id"], video_path, err)
                    skipped.append({"id": entry["id"], "reason": f"unreadable video {video_path}: {err}"})
                    continue
                ready.append(entry)
                prompts.append(build_prompt(entry["question"], None if is_numeric(entry) else entry["choices"],
                                            cfg.prompt))
            if ready:
                replies = generate_answers(model, processor, prompts, videos, system_prompt=system,
                                           max_new_tokens=max_new)
                for entry, reply in zip(ready, replies):
                    sink.write(json.dumps(scored(entry, reply, st_cot=cfg.prompt == "st-cot")) + "\n")
                sink.flush()
            bar.update(len(batch))
    bar.close()
    return skipped


def run(cfg: EvalRunConfig) -> dict[str, Any]:
    """Answer every question of ``cfg.bench`` (resumable), write predictions and the report."""
    if cfg.num_threads > 0:
        import torch

        torch.set_num_threads(cfg.num_threads)
    bench_path = Path(cfg.bench)
    entries = load_entries(bench_path)
    check_entries(entries, bench_path)
    if cfg.limit:
        entries = entries[:cfg.limit]
    label = bench_path.stem
    for e in entries:
        if not e.get("category"):
            e.setdefault("split", label)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_resume(cfg, out)
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
        done = {str(p["id"]): p for p in _read_jsonl(pred_path)}
        todo = [(e, p) for e, p in resolved if str(e["id"]) not in done]
        log.info("%s pass: %d answered already, %d to go", name, len(done), len(todo))
        if todo and model is None:
            from mllm4d_lite.train.model import load_model_and_processor

            model, processor = load_model_and_processor(cfg.model, adapter=cfg.adapter, device=cfg.device,
                                                        quant=cfg.quant, dtype=cfg.dtype,
                                                        use_unsloth=cfg.use_unsloth, max_pixels=cfg.max_pixels)
        unreadable = _answer_all(cfg, model, processor, todo, pred_path, blank, name) if todo else []
        if name == "model":
            skipped += unreadable
        done = {str(p["id"]): p for p in _read_jsonl(pred_path)}
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
    cfg = parse_config(EvalRunConfig, rest, prog="mllm4d eval run",
                       description="Answer a VLM4D-format benchmark and report accuracy per category.")
    from mllm4d_lite.train.model import ModelSetupError

    try:
        report = run(cfg)
    except (BenchError, ConfigError, ModelSetupError) as err:
        sys.stderr.write(f"mllm4d eval run: error: {err}\n")
        return 2
    sys.stdout.write(report_markdown(report, f"{cfg.model} on {cfg.bench} ({cfg.prompt})"))
    print(summary_line(report, out=cfg.out))
    return 0


__all__ = ["BenchError", "EvalRunConfig", "check_entries", "load_entries", "main", "resolve_video", "run",
           "score_files"]
