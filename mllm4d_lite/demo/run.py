"""``mllm4d demo``: every stage of the method end to end, then one report.

    curate (stereo -> 4D -> QA) -> SFT -> cold start (ST-CoT) -> GRPO (ST-reward) -> eval

Each stage writes under ``<out>/<stage>/`` and, when it finishes, a ``.done.json`` marker with its
wall time and a digest of the recipes and options it ran under: a second run skips the stages
finished under the same ones and redoes the others (``--fresh`` redoes everything). Evaluation
covers chance, a blind control (the SFT recipe trained and evaluated with blank frames), the base
model, SFT (direct prompt), cold start and GRPO (ST-CoT prompt) on the held-out benchmark.
The report (``<out>/report.md`` + ``report.json``) embeds the trajectory plots of two clips,
the loss and reward curves and the accuracy bars.

Profiles: ``tiny`` (CPU, the offline tiny model, recipes/tiny/) and ``gpu-24gb``
(recipes/qwen2.5-vl-3b/ by default, ``--recipes recipes/qwen3-vl-4b`` for the paper's family).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from mllm4d_lite.config import ConfigError, load_yaml, parse_config, save_resolved

from mllm4d_lite.io import atomic_write_json, atomic_write_text, save_figure
from mllm4d_lite.train.model import THREADS_FILE_ENV

log = logging.getLogger(__name__)

PROFILES = {"tiny": "recipes/tiny", "gpu-24gb": "recipes/qwen2.5-vl-3b"}
# What each profile curates by default, and how it lists the options of a question. The tiny
# random model learns from video only on near objects sliding before a static camera
# (tiny_data/lateral) and only with one fixed option order; see README "What these numbers do and
# do not show". A pretrained model gets every clip and VLM4D-style shuffled letters.
PROFILE_CLIPS = {"tiny": "tiny_data/lateral", "gpu-24gb": "tiny_data"}
STAGE_RECIPES = ("sft.yaml", "cold_start.yaml", "grpo.yaml")  # what recipes/<profile>/ must hold
PROFILE_OPTION_ORDER = {"tiny": "fixed", "gpu-24gb": "balanced"}
REPO = Path(__file__).resolve().parents[2]
MIN_GAP_N = 10  # per-category differences are reported for categories with at least this many questions
GAP_PAIRS = (("sft", "blind"), ("grpo", "cold_start"))  # the differences the report gives with their noise


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
        "help": "reply budget for ST-CoT evaluation (the tiny model's CoT targets: median ~170, 90% < 215 tokens)"})

    def validate(self) -> None:
        from mllm4d_lite.qa.dataset import OPTION_ORDERS, QAConfig

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
# Stage runner
# ----------------------------------------------------------------------------------------------

def _call_stage(module: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    """Run ``mllm4d <stage> argv`` in a child process (each stage gets a clean interpreter and
    gives its memory back); a non-zero exit is an error naming the command. ``env``: variables
    added to the child's environment."""
    _wait_stage(_start_stage(module, argv, env=env))


def _start_stage(module: str, argv: list[str], log_file: Path | None = None, env: dict[str, str] | None = None):
    """Start ``mllm4d <stage> argv`` without waiting; its output goes to ``log_file`` when given."""
    import subprocess

    stage = {"mllm4d_lite.eval.evaluate": "eval"}.get(module, module.rsplit(".", 1)[-1])
    cmd = [sys.executable, "-m", "mllm4d_lite", stage, *argv]
    log.info("$ mllm4d %s %s%s", stage, " ".join(argv), f"  (in the background, log: {log_file})" if log_file else "")
    child_env = {**os.environ, **env} if env else None
    if log_file is None:
        proc = subprocess.Popen(cmd, env=child_env)
    else:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "w") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=child_env)
    proc.description = f"mllm4d {stage} {' '.join(argv)}"  # type: ignore[attr-defined]
    return proc


def _wait_stage(proc) -> None:
    rc = proc.wait()
    if rc:
        raise RuntimeError(f"stage command failed (exit {rc}): {proc.description}")


@contextlib.contextmanager
def _killed_on_error(proc) -> Iterator[None]:
    """Kill the background stage ``proc`` (if still running) when the body fails."""
    try:
        yield
    except BaseException:
        if proc is not None and proc.poll() is None:
            proc.kill()
        raise


class _Beside:
    """``with _Beside(parallel, jobs): body`` runs ``jobs`` (one after another) in a thread while
    ``body`` runs, when ``parallel``; else after ``body``. An error of a job is raised on exit.

    ``threads_file`` (when ``parallel``): holds 1 while the jobs run and the machine's core count
    once they are done; the body's training stage follows it (``model.follow_thread_share``), so it
    takes the second core as soon as the jobs leave it."""

    def __init__(self, parallel: bool, jobs: list[Callable[[], None]], threads_file: Path | None = None):
        self.parallel, self.jobs, self.error, self.thread = parallel, jobs, None, None
        self.threads_file = threads_file

    def _work(self) -> None:
        try:
            for job in self.jobs:
                job()
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            self.error = err
        finally:
            if self.parallel and self.threads_file is not None:
                atomic_write_text(self.threads_file, f"{_cores()}\n")

    def __enter__(self) -> "_Beside":
        if self.parallel:
            import threading

            if self.threads_file is not None:
                atomic_write_text(self.threads_file, "1\n")
            self.thread = threading.Thread(target=self._work, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.thread is not None:
            self.thread.join()
        elif exc is None:
            self._work()
        if exc is None and self.error is not None:
            raise self.error


def _inputs_fingerprint(cfg: "DemoConfig", recipes: Path) -> str:
    """A digest of what the stages' results depend on: the demo's options (not ``--fresh``,
    ``--out`` or ``--workers``) and the text of the profile's recipes. A stage finished under other
    inputs is redone, so a changed recipe or option never leaves a stale result in the report."""
    options = {k: v for k, v in asdict(cfg).items() if k not in ("fresh", "out", "workers")}
    texts = {name: (recipes / name).read_text() for name in STAGE_RECIPES}
    blob = json.dumps({"options": options, "recipes": texts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _stage_done(out: Path, name: str, inputs: str) -> dict[str, Any] | None:
    """The stage's ``.done.json`` marker if it finished under these ``inputs``, else None."""
    marker = _read_json(out / name / ".done.json")
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
    stage("curate", body=lambda d: _call_stage("mllm4d_lite.curation.curate", [
        "--clips", str(clips), "--out", str(d), "--plot", "--score", "--workers", str(cfg.workers),
        "--qa-option-order", option_order, "--rft-fraction", str(cfg.rft_fraction)]))

    def argv_of(recipe: str, train_file: str, adapter_init: Path | None, extra: list[str], d: Path) -> list[str]:
        init = ["--adapter-init", str(adapter_init / "adapter")] if adapter_init else []
        return ["--config", str(recipes / recipe), "--train-file", str(data / train_file), "--output-dir", str(d),
                *init, *extra]

    threads_file = out / ".threads"  # the training stage's CPU threads while evaluations run beside it

    def train(recipe: str, train_file: str, adapter_init: Path | None, extra: list[str], follow_threads=False):
        module = "mllm4d_lite.train.grpo" if recipe == "grpo.yaml" else "mllm4d_lite.train.sft"
        env = {THREADS_FILE_ENV: str(threads_file)} if follow_threads else None
        return lambda d: _call_stage(module, argv_of(recipe, train_file, adapter_init, extra, d), env=env)

    sft_steps = _steps("--max-steps", cfg.sft_steps)
    blind_argv = sft_steps + ["--blind"]
    blind_proc, blind_start = None, 0.0
    if cfg.blind_control and _stage_done(out, "sft_blind", inputs) is None \
            and _stage_done(out, "sft", inputs) is None and _side_by_side(recipes):
        # The blind control is the same recipe on blank frames; it trains beside the SFT run (each
        # uses one CPU thread on the tiny profile). Its output goes to sft_blind.log.
        blind_dir = out / "sft_blind"
        if blind_dir.exists():
            shutil.rmtree(blind_dir)
        blind_start = time.time()
        blind_proc = _start_stage("mllm4d_lite.train.sft", argv_of("sft.yaml", "sft.jsonl", None, blind_argv, blind_dir),
                                  log_file=out / "sft_blind.log")
    with _killed_on_error(blind_proc):
        sft = stage("sft", body=train("sft.yaml", "sft.jsonl", None, sft_steps))

    def finish_blind() -> None:
        # The cold start needs only SFT, so it starts at once; the blind control goes on beside it.
        log.info("== sft_blind: waiting for the blind control trained beside SFT (log: %s)", out / "sft_blind.log")
        _wait_stage(blind_proc)
        _finish_stage("sft_blind", out, round(time.time() - blind_start, 1), times, beside="sft+cold_start",
                      inputs=inputs)

    if cfg.blind_control:
        sft_blind = out / "sft_blind" if blind_proc is not None else stage(
            "sft_blind", body=train("sft.yaml", "sft.jsonl", None, blind_argv))
    cold, grpo = out / "cold_start", out / "grpo"
    evals: list[tuple[str, str, Path | None, str, bool]] = [
        ("base", "base model (no fine-tuning)", None, "direct", False),
        ("sft", "SFT", sft, "direct", False),
        ("cold_start", "cold start (ST-CoT)", cold, "st-cot", False),
        ("grpo", "GRPO (ST-reward)", grpo, "st-cot", False),
    ]
    if cfg.blind_control:
        evals.insert(1, ("blind", "blind control (SFT on blank frames)", sft_blind, "direct", True))

    def evaluate(key: str, adapter: Path | None, prompt: str, blind: bool, beside: str | None = None) -> None:
        argv = ["run", "--model", str(model), "--prompt", prompt, *eval_common]
        if prompt == "st-cot":
            argv += ["--max-new-tokens", str(cfg.cot_max_new_tokens)]
        if adapter is not None:
            argv += ["--adapter", str(adapter / "adapter")]
        if blind:
            argv += ["--blind"]
        if beside:
            argv += ["--num-threads", "1"]  # the training beside it has the other core
        stage(f"eval/{key}", body=lambda d: _call_stage("mllm4d_lite.eval.evaluate", argv + ["--out", str(d)]),
              beside=beside)

    # With two cores, each evaluation runs on the second core as soon as its model exists: the
    # direct-prompt ones beside the cold start, the cold start's beside GRPO.
    side_by_side = _side_by_side(recipes)
    direct = [e for e in evals if e[3] == "direct"]
    beside_cold = [finish_blind] if blind_proc is not None else []
    beside_cold += [lambda e=e: evaluate(e[0], e[2], e[3], e[4], "cold_start" if side_by_side else None) for e in direct]
    # The cold start and GRPO train on one core while those run, then on both (threads_file).
    with _killed_on_error(blind_proc), _Beside(side_by_side, beside_cold, threads_file):
        stage("cold_start", body=train("cold_start.yaml", "cot.jsonl", sft,
                                       _steps("--max-steps", cfg.cold_start_steps), side_by_side))
    with _Beside(side_by_side, [lambda: evaluate("cold_start", cold, "st-cot", False, "grpo" if side_by_side else None)],
                 threads_file):
        stage("grpo", body=train("grpo.yaml", "rft.jsonl", cold, _steps("--max-steps", cfg.grpo_steps),
                                 side_by_side))
    evaluate("grpo", grpo, "st-cot", False)

    report = build_demo_report(cfg, out, evals, times)
    return report


def _cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _side_by_side(recipes: Path) -> bool:
    """Whether two jobs may run at once: the recipes train on the CPU (one thread each while a job
    runs beside them) and the machine has two cores or more. On a GPU profile two jobs would share
    one GPU's memory."""
    return _cores() >= 2 and str(_recipe_value(recipes / "sft.yaml", "device", "")) == "cpu"


def _recipe_value(path: Path, key: str, default: Any) -> Any:
    return load_yaml(path).get(key, default)


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------

def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


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


def build_demo_report(cfg: DemoConfig, out: Path, evals: list, times: dict[str, float]) -> dict[str, Any]:
    """Collect every stage's figures into ``report.json`` and ``report.md`` (with plots)."""
    beside = {name: marker["beside"] for name in times
              if (marker := _read_json(out / name / ".done.json") or {}).get("beside")}
    rows: list[dict[str, Any]] = []
    chance = None
    for key, label, _, prompt, blind in evals:
        rep = _read_json(out / "eval" / key / "report.json")
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
    grpo_summary = _read_json(out / "grpo" / "summary.json") or {}
    sft_summary = _read_json(out / "sft" / "summary.json") or {}
    curate_score = _read_json(out / "curate" / "scorecard.json")
    qa_summary = _read_json(out / "curate" / "qa_summary.json")
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


def machine_info() -> dict[str, Any]:
    """Where the report was built: CPU model, cores, torch version and the vector instruction set
    its CPU kernels use, GPU name. The tiny profile's figures depend on the CPU: kernels for other
    instruction sets round differently, and minutes of training carry the difference into the
    scores (README, "Expected figures")."""
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
    info = {"cpu": cpu, "cores": _cores(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _accuracy_plot(rows: list[dict[str, Any]], chance: float | None, path: Path) -> Path | None:
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
    """Which clips fed which stage: "Data split by clip: 48 clips -> SFT and cold start (...); 24 -> GRPO only ..."."""
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


def _report_markdown(report: dict[str, Any], out: Path, accuracy_png: Path | None) -> str:
    lines = [f"# mllm4d-lite demo report ({report['profile']} profile)", ""]
    lines += ["## Held-out benchmark", "",
              "accuracy = per question (%); mean/cat = unweighted mean over categories (VSI-Bench style); "
              "numeric questions score by mean relative accuracy.", "",
              "| model | prompt | accuracy | mean/cat | n | no answer |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    if report["chance"] is not None:
        lines.append(f"| chance | - | {report['chance']:.2f} | - | - | - |")
    for r in report["models"]:
        lines.append(f"| {r['label']} | {r['prompt']} | {r['accuracy']:.2f} | {r['mean_over_categories']:.2f} | "
                     f"{r['n']} | {r['no_answer']} |")
    for g in report.get("gaps", []):
        lines.append("")
        lines.append(f"{g['a']} - {g['b']}: {g['diff_points']:+.2f} points, standard error {g['se_points']:.2f} "
                     f"({'within noise: |difference| <= 2 SE' if g['within_noise'] else 'beyond 2 SE'}).")
    if report.get("category_gaps"):
        lines += ["", f"Differences per category (categories with at least {MIN_GAP_N} questions):", "",
                  "| models | category | n | difference (points) | standard error | reading |",
                  "| --- | --- | ---: | ---: | ---: | --- |"]
        for g in report["category_gaps"]:
            lines.append(f"| {g['a']} - {g['b']} | {g['category']} | {g['n']} | {g['diff_points']:+.2f} | "
                         f"{g['se_points']:.2f} | {'within noise' if g['within_noise'] else 'beyond 2 SE'} |")
    cats = sorted({c for r in report["models"] for c in r["categories"]})
    if cats:
        lines += ["", "Per category (accuracy %, MRA for numeric):", "",
                  "| category | " + " | ".join(r["key"] for r in report["models"]) + " |",
                  "| --- |" + " ---: |" * len(report["models"])]
        for c in cats:
            vals = [r["categories"].get(c) for r in report["models"]]
            lines.append(f"| {c} | " + " | ".join("-" if v is None else f"{v:.1f}" for v in vals) + " |")
    if accuracy_png:
        lines += ["", f"![accuracy per category]({_rel(accuracy_png, out)})"]
    grpo = report.get("grpo") or {}
    lines += ["", "## Training", ""]
    if (out / "sft" / "loss.png").is_file():
        lines += ["SFT loss:", "", f"![SFT loss]({_rel(out / 'sft' / 'loss.png', out)})", ""]
    if (out / "cold_start" / "loss.png").is_file():
        lines += ["Cold-start loss:", "", f"![cold-start loss]({_rel(out / 'cold_start' / 'loss.png', out)})", ""]
    if grpo.get("reward_rise") is not None:
        lines += [_grpo_reward_line(grpo), ""]
    if (out / "grpo" / "reward_curve.png").is_file():
        lines += [f"![GRPO reward]({_rel(out / 'grpo' / 'reward_curve.png', out)})", ""]
    plots = sorted((out / "curate" / "plots").glob("*.png"))[:2] if (out / "curate" / "plots").is_dir() else []
    lines += ["## Curation", ""]
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
    lines += ["## Wall time per stage", "", "| stage | seconds |", "| --- | ---: |"]
    for stage, secs in report["stage_wall_s"].items():
        other = report.get("stages_run_beside", {}).get(stage)
        lines.append(f"| {stage}{f' (beside {other}, on the other core)' if other else ''} | {secs:.0f} |")
    lines.append(f"| **total** | **{report['total_wall_s']:.0f}** |")
    if (m := report.get("machine")):
        lines += ["", f"Machine: {m['cpu']}, {m['cores']} core(s), torch {m['torch']} ({m['cpu_capability']} CPU "
                      f"kernels){', GPU ' + m['gpu'] if m.get('gpu') else ''}. On the CPU the scores depend on the "
                      f"instruction set as well as the seed: another CPU gives other (equally valid) figures."]
    return "\n".join(lines) + "\n"


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
