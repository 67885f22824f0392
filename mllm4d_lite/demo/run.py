"""``mllm4d demo``: every stage of the method end to end, then one report.

    curate (stereo -> 4D -> QA) -> SFT -> cold start (ST-CoT) -> GRPO (ST-reward) -> eval

Each stage writes under ``<out>/<stage>/`` and, when it finishes, a ``.done.json`` marker with its
wall time and a digest of the recipes and options it ran under: a second run skips the stages
finished under the same ones and redoes the others (``--fresh`` redoes everything). Evaluation
covers chance, a blind control (the SFT recipe trained and evaluated with blank frames), the base
model, SFT (direct prompt), cold start and GRPO (ST-CoT prompt) on the held-out benchmark.
The report (``<out>/report.md`` + ``report.json``, :mod:`mllm4d_lite.demo.report`) embeds the
trajectory plots of two clips, the loss and reward curves and the accuracy bars. On two CPU cores
some stages run beside others (:mod:`mllm4d_lite.demo.schedule`).

Profiles: ``tiny`` (CPU, the offline tiny model, recipes/tiny/) and ``gpu-24gb``
(recipes/qwen2.5-vl-3b/ by default, ``--recipes recipes/qwen3-vl-4b`` for the paper's family).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from mllm4d_lite.config import ConfigError, load_yaml, parse_config, save_resolved
from mllm4d_lite.demo.report import Evaluation, build_demo_report, read_json
from mllm4d_lite.demo.schedule import (SideJobs, call_stage, killed_on_error, side_by_side, start_stage,
                                       thread_share_env, wait_stage)
from mllm4d_lite.io import atomic_write_json

log = logging.getLogger(__name__)

PROFILES = {"tiny": "recipes/tiny", "gpu-24gb": "recipes/qwen2.5-vl-3b"}
# What each profile curates by default, and how it lists the options of a question. The tiny
# random model learns from video only on near objects sliding before a static camera
# (tiny_data/lateral) and only with one fixed option order (docs/results.md). A pretrained model
# gets every clip and VLM4D-style shuffled letters.
PROFILE_CLIPS = {"tiny": "tiny_data/lateral", "gpu-24gb": "tiny_data"}
STAGE_RECIPES = ("sft.yaml", "cold_start.yaml", "grpo.yaml")  # what recipes/<profile>/ must hold
PROFILE_OPTION_ORDER = {"tiny": "fixed", "gpu-24gb": "balanced"}
REPO = Path(__file__).resolve().parents[2]


@dataclass
class DemoConfig:
    """Options of ``mllm4d demo``."""

    profile: str = field(default="tiny", metadata={"help": "tiny (CPU) | gpu-24gb (one 24 GB GPU)"})
    recipes: str = field(default="", metadata={"help": "recipe folder (default: by profile, e.g. recipes/tiny)"})
    clips: str = field(default="", metadata={
        "help": "folder of stereo clips to curate (default: by profile, tiny_data/lateral for tiny, tiny_data "
                "for gpu-24gb)"})
    qa_option_order: str = field(default="", metadata={
        "help": "balanced (VLM4D-style shuffled letters) | fixed (one canonical order) (default: by profile, "
                "fixed for tiny, balanced for gpu-24gb)"})
    rft_fraction: float = field(default=0.25, metadata={
        "help": "share of the clips whose questions only GRPO sees (rft.jsonl): its prompts then come from "
                "clips that SFT and the cold start never saw, as in the paper (0 = the training clips')"})
    out: str = field(default="runs/demo", metadata={"help": "output folder (one sub-folder per stage)"})
    fresh: bool = field(default=False, metadata={"help": "redo every stage (deletes --out first)"})
    max_clips: int = field(default=0, metadata={"help": "use only the first N clips (0 = all)"})
    sft_steps: int = field(default=0, metadata={"help": "override the SFT recipe's max_steps (0 = recipe)"})
    cold_start_steps: int = field(default=0, metadata={"help": "override the cold-start recipe's max_steps (0 = recipe)"})
    grpo_steps: int = field(default=0, metadata={"help": "override the GRPO recipe's max_steps (0 = recipe)"})
    eval_limit: int = field(default=0, metadata={"help": "evaluate only the first N bench questions (0 = all)"})
    blind_control: bool = field(default=True, metadata={"help": "train and evaluate the blind (blank-frames) control"})
    workers: int = field(default=1, metadata={"help": "curation worker processes"})
    eval_batch_size: int = field(default=8, metadata={"help": "questions per generate() call in evaluation"})
    cot_max_new_tokens: int = field(default=256, metadata={
        "help": "reply budget for ST-CoT evaluation (long enough for the tiny profile's CoT targets)"})

    def validate(self) -> None:
        from mllm4d_lite.qa.config import OPTION_ORDERS, QAConfig

        if self.profile not in PROFILES:
            raise ConfigError(f"`profile` must be one of {sorted(PROFILES)}, got {self.profile!r}")
        if self.qa_option_order and self.qa_option_order not in OPTION_ORDERS:
            raise ConfigError(f"`qa_option_order` must be one of {list(OPTION_ORDERS)}, got {self.qa_option_order!r}")
        QAConfig(rft_fraction=self.rft_fraction).validate()  # the check curation applies to it
        for name in ("max_clips", "sft_steps", "cold_start_steps", "grpo_steps", "eval_limit"):
            if getattr(self, name) < 0:
                raise ConfigError(f"`{name}` must be >= 0, got {getattr(self, name)}")

    @property
    def recipe_dir(self) -> Path:
        path = Path(self.recipes or PROFILES[self.profile])
        return path if path.is_absolute() or path.exists() else REPO / path


# ----------------------------------------------------------------------------------------------
# Stages and their .done.json markers
# ----------------------------------------------------------------------------------------------

def _inputs_fingerprint(cfg: DemoConfig, recipes: Path) -> str:
    """A digest of what the stages' results depend on: the demo's options (not ``--fresh``,
    ``--out`` or ``--workers``) and the text of the profile's recipes. A stage finished under other
    inputs is redone, so a changed recipe or option never leaves a stale result in the report."""
    options = {k: v for k, v in asdict(cfg).items() if k not in ("fresh", "out", "workers")}
    texts = {name: (recipes / name).read_text() for name in STAGE_RECIPES}
    blob = json.dumps({"options": options, "recipes": texts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _stage_done(out: Path, name: str, inputs: str) -> dict[str, Any] | None:
    """The stage's ``.done.json`` marker if it finished under these ``inputs``, else None."""
    marker = read_json(out / name / ".done.json")
    return marker if marker is not None and marker.get("inputs") == inputs else None


def _run_stage(name: str, out: Path, fresh: bool, body: Callable[[Path], None], times: dict[str, float],
               beside: str | None = None, inputs: str = "") -> Path:
    """Run ``body(stage_dir)`` unless its ``.done.json`` marker says it finished under the same
    ``inputs`` (:func:`_inputs_fingerprint`); records the wall time (``beside``: the stage that ran
    at the same time, on the other core). A stage finished under other inputs starts afresh."""
    stage_dir = out / name
    marker = stage_dir / ".done.json"
    if not fresh and (done := _stage_done(out, name, inputs)) is not None:
        times[name] = float(done.get("wall_s", 0.0))
        log.info("== %s: done before (%.0f s), skipped (use --fresh to redo)", name, times[name])
        return stage_dir
    if marker.is_file():
        log.info("== %s: finished before under other recipes or options; redoing it", name)
        shutil.rmtree(stage_dir)
    log.info("=" * 72)
    log.info("== stage: %s  ->  %s", name, stage_dir)
    log.info("=" * 72)
    start = time.time()
    body(stage_dir)
    _finish_stage(name, out, round(time.time() - start, 1), times, beside, inputs)
    return stage_dir


def _finish_stage(name: str, out: Path, wall_s: float, times: dict[str, float], beside: str | None = None,
                  inputs: str = "") -> None:
    """Record a finished stage: its wall time in ``times`` and its ``.done.json`` marker."""
    times[name] = wall_s
    atomic_write_json(out / name / ".done.json", {"stage": name, "wall_s": wall_s, "inputs": inputs,
                                                  "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                  **({"beside": beside} if beside else {})})
    log.info("== %s finished in %.0f s%s", name, wall_s, f" (beside {beside})" if beside else "")


def _subset_clips(cfg: DemoConfig, out: Path) -> Path:
    """The clip folder to curate: ``cfg.clips`` itself, or links to its first ``max_clips`` clips."""
    clips = Path(cfg.clips or PROFILE_CLIPS[cfg.profile])
    if not clips.is_absolute() and not clips.exists():
        clips = REPO / clips
    if not clips.is_dir():
        raise FileNotFoundError(f"clips folder not found: {cfg.clips} (the kit ships tiny_data/; "
                                "`mllm4d synth --out DIR` makes more)")
    if not cfg.max_clips:
        return clips
    folders = sorted(p for p in clips.iterdir() if (p / "clip.json").is_file())[: cfg.max_clips]
    subset = out / "clips_subset"
    if subset.exists():
        shutil.rmtree(subset)
    subset.mkdir(parents=True)
    for folder in folders:
        (subset / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
    return subset


def _steps(flag: str, value: int) -> list[str]:
    return [flag, str(value)] if value else []


def _recipe_value(path: Path, key: str, default: Any) -> Any:
    return load_yaml(path).get(key, default)


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------

def run(cfg: DemoConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    if cfg.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out, "demo_config.yaml")
    recipes = cfg.recipe_dir
    for stage_file in STAGE_RECIPES:
        if not (recipes / stage_file).is_file():
            raise FileNotFoundError(f"{recipes / stage_file} missing; pick a folder of recipes/ with --recipes")
    inputs = _inputs_fingerprint(cfg, recipes)
    times: dict[str, float] = {}
    data = out / "curate"
    bench = data / "bench.json"
    model = _recipe_value(recipes / "sft.yaml", "model", "tiny")
    num_frames = str(_recipe_value(recipes / "sft.yaml", "num_frames", 8))
    max_pixels = _recipe_value(recipes / "sft.yaml", "max_pixels", None)
    eval_common = ["--bench", str(bench), "--frames", num_frames, "--batch-size", str(cfg.eval_batch_size)] \
        + (["--max-pixels", str(max_pixels)] if max_pixels else []) + _steps("--limit", cfg.eval_limit)

    clips = _subset_clips(cfg, out)
    option_order = cfg.qa_option_order or PROFILE_OPTION_ORDER[cfg.profile]
    stage = functools.partial(_run_stage, out=out, fresh=cfg.fresh, times=times, inputs=inputs)
    stage("curate", body=lambda d: call_stage("curate", [
        "--clips", str(clips), "--out", str(d), "--plot", "--score", "--workers", str(cfg.workers),
        "--qa-option-order", option_order, "--rft-fraction", str(cfg.rft_fraction)]))

    def argv_of(recipe: str, train_file: str, adapter_init: Path | None, extra: list[str], d: Path) -> list[str]:
        init = ["--adapter-init", str(adapter_init / "adapter")] if adapter_init else []
        return ["--config", str(recipes / recipe), "--train-file", str(data / train_file), "--output-dir", str(d),
                *init, *extra]

    parallel = side_by_side(recipes)
    threads_file = out / ".threads"  # the training stage's CPU threads while evaluations run beside it

    def train(recipe: str, train_file: str, adapter_init: Path | None, extra: list[str], follow_threads=False):
        command = "grpo" if recipe == "grpo.yaml" else "sft"
        env = thread_share_env(threads_file) if follow_threads else None
        return lambda d: call_stage(command, argv_of(recipe, train_file, adapter_init, extra, d), env=env)

    sft_steps = _steps("--max-steps", cfg.sft_steps)
    blind_argv = sft_steps + ["--blind"]
    blind_proc, blind_start = None, 0.0
    if cfg.blind_control and _stage_done(out, "sft_blind", inputs) is None \
            and _stage_done(out, "sft", inputs) is None and parallel:
        # The blind control is the same recipe on blank frames; it trains beside the SFT run (each
        # uses one CPU thread on the tiny profile). Its output goes to sft_blind.log.
        blind_dir = out / "sft_blind"
        if blind_dir.exists():
            shutil.rmtree(blind_dir)
        blind_start = time.time()
        blind_proc = start_stage("sft", argv_of("sft.yaml", "sft.jsonl", None, blind_argv, blind_dir),
                                 log_file=out / "sft_blind.log")
    with killed_on_error(blind_proc):
        sft = stage("sft", body=train("sft.yaml", "sft.jsonl", None, sft_steps))

    def finish_blind() -> None:
        # The cold start needs only SFT, so it starts at once; the blind control goes on beside it.
        log.info("== sft_blind: waiting for the blind control trained beside SFT (log: %s)", out / "sft_blind.log")
        wait_stage(blind_proc)
        _finish_stage("sft_blind", out, round(time.time() - blind_start, 1), times, beside="sft+cold_start",
                      inputs=inputs)

    if cfg.blind_control:
        sft_blind = out / "sft_blind" if blind_proc is not None else stage(
            "sft_blind", body=train("sft.yaml", "sft.jsonl", None, blind_argv))
    cold, grpo = out / "cold_start", out / "grpo"
    evals = [
        Evaluation("base", "base model (no fine-tuning)", None, "direct", False),
        Evaluation("sft", "SFT", sft, "direct", False),
        Evaluation("cold_start", "cold start (ST-CoT)", cold, "st-cot", False),
        Evaluation("grpo", "GRPO (ST-reward)", grpo, "st-cot", False),
    ]
    if cfg.blind_control:
        evals.insert(1, Evaluation("blind", "blind control (SFT on blank frames)", sft_blind, "direct", True))

    def evaluate(e: Evaluation, beside: str | None = None) -> None:
        argv = ["run", "--model", str(model), "--prompt", e.prompt, *eval_common]
        if e.prompt == "st-cot":
            argv += ["--max-new-tokens", str(cfg.cot_max_new_tokens)]
        if e.adapter is not None:
            argv += ["--adapter", str(e.adapter / "adapter")]
        if e.blind:
            argv += ["--blind"]
        if beside:
            argv += ["--num-threads", "1"]  # the training beside it has the other core
        stage(f"eval/{e.key}", body=lambda d: call_stage("eval", argv + ["--out", str(d)]), beside=beside)

    # With two cores, each evaluation runs on the second core as soon as its model exists: the
    # direct-prompt ones beside the cold start, the cold start's beside GRPO.
    by_key = {e.key: e for e in evals}
    beside_cold = [finish_blind] if blind_proc is not None else []
    beside_cold += [lambda e=e: evaluate(e, "cold_start" if parallel else None) for e in evals if e.prompt == "direct"]
    # The cold start and GRPO train on one core while those run, then on both (threads_file).
    with killed_on_error(blind_proc), SideJobs(parallel, beside_cold, threads_file):
        stage("cold_start", body=train("cold_start.yaml", "cot.jsonl", sft,
                                       _steps("--max-steps", cfg.cold_start_steps), parallel))
    with SideJobs(parallel, [lambda: evaluate(by_key["cold_start"], "grpo" if parallel else None)], threads_file):
        stage("grpo", body=train("grpo.yaml", "rft.jsonl", cold, _steps("--max-steps", cfg.grpo_steps), parallel))
    evaluate(by_key["grpo"])

    return build_demo_report(cfg, out, evals, times)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(DemoConfig, argv, prog="mllm4d demo",
                       description="Run every stage end to end (curate -> SFT -> cold start -> GRPO -> eval).")
    try:
        report = run(cfg)
    except (FileNotFoundError, RuntimeError, ConfigError) as err:
        log.error("%s", err)
        return 1
    best = {r["key"]: r["accuracy"] for r in report["models"]}
    sys.stdout.write(f"demo done in {report['total_wall_s']:.0f} s | chance {report['chance']} | "
                     + " | ".join(f"{k} {v:.1f}%" for k, v in best.items())
                     + f" | report: {Path(cfg.out) / 'report.md'}\n")
    return 0
