"""The one-shot GPU check: the 24 GB recipes on the real architectures, measured against the planner.

    bash scripts/gpu_check.sh                      # on a CUDA machine (installs the carried wheels first)
    python scripts/gpu_check.py --dry-run          # the same code path on a CPU, 2-layer models, tiny steps
    python scripts/gpu_check.py --prepare          # make the inputs (runs/gpu_check_inputs), needs the kit's .venv

For each 24 GB profile (``recipes/qwen2.5-vl-3b``, ``recipes/qwen3-vl-4b``) it builds the
random-weight real architecture (``shapes:`` models, full depth on a GPU), then runs a few steps
of each stage recipe (SFT, cold start, GRPO) unchanged apart from the overrides below, each in a
process of its own (``scripts/gpu_check_stage.py``) whose memory torch may use only up to
``--cap-gib`` (24) GiB. Unsloth is used where it imports (the recipes ask for it), transformers +
peft + bitsandbytes otherwise. Beside each stage's measured peak memory (allocated and reserved),
s/step and tokens/s it puts the planner's prediction for the same inputs, and rewrites
``gpu_check.json`` and ``gpu_check.md`` in ``--out`` (default ``$OUT``, else ``runs/gpu_check``)
after every stage, with the stages' logs in ``gpu_check.log``.

Time: every step has a time limit and is skipped, with the reason recorded, when less time is left
in ``--budget-s`` (counted from ``$GPU_CHECK_T0`` when the launcher set it) than it needs; a step
killed at its limit keeps the figures its process had written so far. Overrides: the shapes model
and depth, the check's inputs and output folders, ``max_steps`` (and a matching subset of records),
``logging_steps: 1``, no checkpoints; SFT / cold start with ``gradient_accumulation_steps: 1``
(same micro-batch, same memory); a dry run also ``device: cpu``, ``use_unsloth: false`` and
GRPO completions of 8 tokens.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for path in (str(REPO), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

import gpu_check_inputs as inputs_mod  # noqa: E402
import gpu_check_report as report_mod  # noqa: E402

log = logging.getLogger("gpu_check")

PROFILES = {"qwen2.5-vl-3b": "shapes:qwen2.5-vl-3b", "qwen3-vl-4b": "shapes:qwen3-vl-4b"}
STAGES = ("sft", "cold_start", "grpo")
STEPS = {"gpu": {"sft": 3, "cold_start": 2, "grpo": 2}, "dry-run": {"sft": 1, "cold_start": 1, "grpo": 1}}
# seconds: (the least a step needs to be worth starting, its own time limit)
LIMITS = {"gpu": {"build": (45, 120), "sft": (40, 80), "cold_start": (40, 70), "grpo": (90, 180)},
          "dry-run": {"build": (10, 900), "sft": (10, 900), "cold_start": (10, 900), "grpo": (10, 900)}}
RESERVE_S = 10  # kept back at the end for the report
# a dry run's extra overrides (CPU-sized: fewer frames, 2 completions of 8 tokens); quantisation,
# dtype, LoRA and everything else stay as the recipes have them
DRY_RUN = {"all": {"device": "cpu", "use_unsloth": "false", "num_frames": 4},
           "grpo": {"num_generations": 2, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
                    "max_completion_length": 8}}


def stage_overrides(mode: str, profile: str, stage: str, layers: int, work: Path, inputs: Path, steps: int,
                    adapter: str | None) -> list[str]:
    """The ``--key value`` overrides a stage of the check runs its recipe with (module docstring)."""
    from mllm4d_lite.config import load_yaml

    values: dict[str, object] = {"model": PROFILES[profile], "shape_layers": layers,
                                 "output_dir": work / profile / stage, "max_steps": steps, "logging_steps": 1,
                                 "save_steps": 100000}
    if mode == "dry-run":
        values.update(DRY_RUN["all"], **(DRY_RUN["grpo"] if stage == "grpo" else {}))
    recipe = {**load_yaml(REPO / "recipes" / profile / f"{stage}.yaml"), **values}
    if stage == "grpo":
        per_step = int(recipe.get("per_device_train_batch_size", 8)) * int(recipe.get("gradient_accumulation_steps", 1))
        prompts = max(1, steps * per_step // int(recipe.get("num_generations", 8)))
        values.update(train_file=inputs / "rft.jsonl", max_samples=prompts, sample_every=100000)
    else:
        data = "cot.jsonl" if stage == "cold_start" else "sft.jsonl"
        values.update(train_file=inputs / data, gradient_accumulation_steps=1,
                      max_train_samples=steps * int(recipe.get("per_device_train_batch_size", 1)))
    if stage != "sft":
        values["adapter_init"] = adapter or ""
    out: list[str] = []
    for key, value in values.items():
        out += ["--" + key.replace("_", "-"), str(value)]
    return out


def generation_batch(recipe: str, overrides: list[str]) -> int:
    """Completions GRPO generates at once for the recipe with ``overrides`` (TRL's generation batch)."""
    from mllm4d_lite.config import parse_config
    from mllm4d_lite.train.grpo_config import GRPOConfig

    cfg = parse_config(GRPOConfig, ["--config", recipe, *overrides], prog="gpu_check")
    if hasattr(cfg, "generation_batch"):
        return int(cfg.generation_batch())
    return cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps


def predict(profile: str, stage: str, overrides: list[str], cap_gib: float, source_hw: tuple[int, int]) -> dict:
    """The planner's prediction for the stage as the check runs it (its inputs' token counts),
    and for the recipe as ``mllm4d plan --config`` reads it."""
    from mllm4d_lite.config import parse_config
    from mllm4d_lite.train.plan import plan_recipe, stage_config_class

    recipe = str(Path("recipes") / profile / f"{stage}.yaml")
    kind = "grpo" if stage == "grpo" else "sft"
    cfg = parse_config(stage_config_class(kind), ["--config", recipe, *overrides], prog="gpu_check")
    tokens = inputs_mod.stage_tokens(kind, cfg)
    base = plan_recipe(recipe, overrides, gpu_gb=cap_gib, stage=kind, prompt_tokens=0, source_hw=source_hw)
    video = base.tokens["prompt"]  # visual + video text tokens, as the planner counts them
    prompt_text = max(0, tokens["prompt_with_video"] - video)
    pred = plan_recipe(recipe, overrides, gpu_gb=cap_gib, stage=kind, prompt_tokens=prompt_text,
                       answer_tokens=None if kind == "grpo" else tokens["answer"], source_hw=source_hw)
    plain = plan_recipe(recipe, [], gpu_gb=cap_gib, stage=kind)
    return {"peak_allocated_gb": round(pred.peak_allocated_gb, 3), "peak_gb": round(pred.peak_gb, 3),
            "peak_phase": pred.peak_phase, "phases_gb": {k: round(v, 3) for k, v in pred.phases.items()},
            "components_gb": pred.components, "tokens": pred.tokens, "loader": pred.setup.loader,
            "generation_batch": pred.setup.generation_batch,
            "counted_tokens": tokens, "planner_visual_tokens": base.tokens.get("visual_per_clip"),
            "recipe_prediction": {"peak_allocated_gb": round(plain.peak_allocated_gb, 3),
                                  "peak_gb": round(plain.peak_gb, 3), "fits": plain.fits,
                                  "command": f"mllm4d plan --config {recipe} --gpu-gb {cap_gib:g}"}}


class Check:
    """Runs the steps in order under one time budget and keeps the report up to date."""

    stage_command = [sys.executable, str(HERE / "gpu_check_stage.py")]  # + SPEC.json; tests put a stand-in here

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.mode = "dry-run" if args.dry_run else "gpu"
        self.layers = args.shape_layers if args.shape_layers is not None else (2 if args.dry_run else 0)
        self.out, self.work, self.inputs = Path(args.out), Path(args.work), Path(args.inputs)
        self.t0 = float(os.environ.get("GPU_CHECK_T0") or time.time())
        self.deadline = self.t0 + args.budget_s
        self.steps = dict(STEPS[self.mode])
        self.report: dict[str, Any] = {}
        self.log_path = self.out / "gpu_check.log"

    def left(self) -> float:
        return self.deadline - time.time()

    def save(self) -> None:
        self.report["elapsed_s"] = round(time.time() - self.t0, 1)
        report_mod.write_report(self.out, self.report)

    def launch(self, name: str, spec: dict[str, Any], limit: float,
               meanwhile: Callable[[], dict[str, Any]] | None = None) -> tuple[str, dict[str, Any], float]:
        """Run one step in a child process for at most ``limit`` seconds, and ``meanwhile`` (the
        planner's prediction) here while it runs; returns (status, the child's result or its last
        progress, plus ``predicted`` / ``prediction_error``, wall seconds)."""
        folder = self.work / "steps"
        folder.mkdir(parents=True, exist_ok=True)
        spec = {**spec, "progress": str(folder / f"{name}.progress.json"), "result": str(folder / f"{name}.result.json"),
                "device": "cpu" if self.args.dry_run else "cuda", "cap_gib": None if self.args.dry_run else self.args.cap_gib,
                "frames": str(self.inputs / "frames.npz")}
        for key in ("progress", "result"):
            Path(spec[key]).unlink(missing_ok=True)
        (folder / f"{name}.spec.json").write_text(json.dumps(spec, indent=1))
        logfile = folder / f"{name}.log"
        t0 = time.time()
        with logfile.open("w") as fh:
            proc = subprocess.Popen([*self.stage_command, str(folder / f"{name}.spec.json")],
                                    stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
            extra = self.beside(proc, meanwhile) if meanwhile else {}
            try:
                proc.wait(timeout=max(1.0, limit - (time.time() - t0)))
                status = None
            except subprocess.TimeoutExpired:
                status = "timeout"
                for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 30)):
                    try:
                        os.killpg(proc.pid, sig)
                        proc.wait(timeout=wait)
                        break
                    except (ProcessLookupError, subprocess.TimeoutExpired):
                        continue
        wall = time.time() - t0
        self.append_log(name, logfile)
        result = json.loads(Path(spec["result"]).read_text()) if Path(spec["result"]).is_file() else {}
        if not result and Path(spec["progress"]).is_file():
            progress = json.loads(Path(spec["progress"]).read_text())
            result = {"memory": progress.get("now", {}), "marks": progress.get("marks", {}),
                      "info": progress.get("info", {})}
        status = status or result.get("status") or "error"
        if status == "error" and not result.get("error"):
            result["error"] = f"the step's process ended with code {proc.returncode} and no result (see gpu_check.log)"
        result.update(extra)
        return status, result, wall

    @staticmethod
    def beside(proc, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """``{"predicted": work()}``, or ``{"prediction_error": ...}``: a planner problem must not
        stop the measurement."""
        try:
            return {"predicted": work()}
        except BaseException as err:  # SystemExit included: parse_config exits on a bad option
            if isinstance(err, KeyboardInterrupt):
                proc.kill()
                raise
            log.warning("prediction failed: %s: %s", type(err).__name__, err)
            return {"prediction_error": f"{type(err).__name__}: {err}"[:400]}

    def append_log(self, name: str, logfile: Path, keep_lines: int = 400) -> None:
        lines = logfile.read_text(errors="replace").splitlines()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        head = f"===== {name}: {len(lines)} lines" + (f", last {keep_lines}" if len(lines) > keep_lines else "")
        with self.log_path.open("a") as fh:
            fh.write("\n".join([head, *lines[-keep_lines:], ""]) + "\n")

    def skip(self, profile: str, stage: str, reason: str) -> None:
        log.warning("%s %s skipped: %s", profile, stage, reason)
        self.report["stages"].append({"profile": profile, "stage": stage, "status": "skipped", "reason": reason})
        self.save()

    def budget_for(self, kind: str) -> float | None:
        need, cap = LIMITS[self.mode][kind]
        left = self.left() - RESERVE_S
        return None if left < need else min(cap, left)

    def build(self, profile: str) -> bool:
        limit = self.budget_for("build")
        if limit is None:
            self.skip(profile, "build", f"not enough time left ({max(0, self.left()):.0f} s)")
            return False
        status, result, wall = self.launch(f"{profile}-build", {"kind": "build", "model": PROFILES[profile],
                                                                "shape_layers": self.layers}, limit)
        entry = {"profile": profile, "stage": "build", "status": status, "wall_s": round(wall, 1),
                 "detail": result.get("detail"), "error": result.get("error")}
        self.report["stages"].append({k: v for k, v in entry.items() if v is not None})
        self.save()
        return status == "ok"

    def run_stage(self, profile: str, stage: str) -> None:
        kind = "grpo" if stage == "grpo" else "sft"
        adapter = None
        if stage != "sft":
            before = ["sft"] if stage == "cold_start" else ["cold_start", "sft"]
            found = [self.work / profile / s / "adapter" for s in before
                     if (self.work / profile / s / "adapter" / "adapter_config.json").is_file()]
            if not found:
                return self.skip(profile, stage, f"no adapter from {' or '.join(before)} to start from")
            adapter = str(found[0])
        limit = self.budget_for(stage)
        if limit is None:
            return self.skip(profile, stage, f"not enough time left ({max(0, self.left()):.0f} s < "
                                             f"{LIMITS[self.mode][stage][0]} s)")
        steps = self.steps[stage]
        overrides = stage_overrides(self.mode, profile, stage, self.layers, self.work, self.inputs, steps, adapter)
        recipe = str(Path("recipes") / profile / f"{stage}.yaml")
        status, result, wall = self.launch(
            f"{profile}-{stage}", {"kind": kind, "model": PROFILES[profile], "shape_layers": self.layers,
                                   "recipe": recipe, "overrides": overrides}, limit,
            meanwhile=lambda: predict(profile, stage, overrides, self.args.cap_gib, self.source_hw))
        mem, marks = result.get("memory", {}), result.get("marks", {})
        loaded = marks.get("after_load", {})
        gen_batch = generation_batch(recipe, overrides) if kind == "grpo" else 0
        measured = {k: mem[k] for k in ("peak_allocated_gib", "peak_reserved_gib", "peak_rss_gib") if k in mem}
        measured.update(after_load_gib=loaded.get("allocated_gib", loaded.get("peak_rss_gib")),
                        load_s=loaded.get("load_s"), wall_s=round(wall, 1),
                        **report_mod.step_figures(kind, self.work / profile / stage, gen_batch))
        predicted = result.get("predicted")
        entry = {"profile": profile, "stage": stage, "status": status, "recipe": recipe, "steps": steps,
                 "command": f"mllm4d {kind} --config {recipe} " + " ".join(o if o else "''" for o in overrides),
                 "measured": measured, "predicted": predicted,
                 "comparison": report_mod.compare(measured.get("peak_allocated_gib"),
                                                   (predicted or {}).get("peak_allocated_gb"))}
        for key in ("error", "prediction_error"):
            if result.get(key):
                entry[key] = result[key]
        if status == "oom":
            entry["reason"] = f"out of memory under the {self.args.cap_gib:g} GiB cap: does not fit"
        elif status == "timeout":
            entry["reason"] = f"stopped at its {limit:.0f} s limit; figures up to then"
        self.report["stages"].append(entry)
        self.save()

    def run(self) -> dict[str, Any]:
        from gpu_check_stage import BLOCK_ENV, block_imports, use_frame_bundle

        hidden: list[str] = []
        if self.args.dry_run and self.args.hide_decoders:  # as on the GPU machine: frames from the bundle only
            os.environ[BLOCK_ENV] = "decord,av"
            hidden = block_imports()
        manifest = inputs_mod.check_inputs(self.inputs)
        self.source_hw = inputs_mod.source_size(self.inputs)
        use_frame_bundle(self.inputs / "frames.npz")  # the token counts read the same frames as the stages
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path.write_text("")
        profiles = self.args.profiles or list(PROFILES)
        self.report = {"mode": self.mode, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(self.t0)),
                       "budget_s": self.args.budget_s, "cap_gib": self.args.cap_gib, "shape_layers": self.layers,
                       "models": [PROFILES[p] for p in profiles], "steps": self.steps,
                       "inputs": f"{self.inputs} ({', '.join(manifest['clips'])}; {manifest['records']})",
                       "command": " ".join(["python scripts/gpu_check.py", *sys.argv[1:]]),
                       "machine": self.args.machine or ("this CPU (dry run)" if self.args.dry_run else "CUDA machine"),
                       "environment": report_mod.environment(REPO / "requirements.txt"), "hidden_modules": hidden,
                       "stages": []}
        self.save()
        for profile in profiles:
            if not self.build(profile):
                for stage in self.args.stages:
                    self.skip(profile, stage, "its model was not built")
                continue
            for stage in self.args.stages:
                self.run_stage(profile, stage)
        self.save()
        return self.report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, 2-layer models, 1 step per stage, no CUDA")
    p.add_argument("--prepare", action="store_true", help="make the inputs folder (curation + frames), then exit")
    p.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_check", help="report folder (default $OUT)")
    p.add_argument("--work", default="runs/gpu_check_work", help="stage outputs (adapters, metrics, logs)")
    p.add_argument("--inputs", default=inputs_mod.DEFAULT_INPUTS, help="prepared inputs (--prepare)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="total seconds (default 570 on a GPU, counted from $GPU_CHECK_T0; 3600 for a dry run)")
    p.add_argument("--cap-gib", type=float, default=24.0, help="GPU memory each step may use (GiB)")
    p.add_argument("--profiles", nargs="*", choices=list(PROFILES), default=None)
    p.add_argument("--stages", nargs="*", choices=list(STAGES), default=list(STAGES))
    p.add_argument("--shape-layers", type=int, default=None, help="decoder layers / vision blocks (default 0 on a "
                                                                   "GPU: full depth; 2 in a dry run)")
    p.add_argument("--machine", default=None, help="how the report names the machine")
    p.add_argument("--hide-decoders", action=argparse.BooleanOptionalAction, default=True,
                   help="dry run: make decord and av unimportable, as on the GPU machine (default on)")
    args = p.parse_args(argv)
    if args.budget_s is None:
        args.budget_s = 3600.0 if args.dry_run else 570.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(name, "1")
    os.chdir(REPO)
    if args.prepare:
        manifest = inputs_mod.prepare(args.inputs)
        print(f"gpu check inputs: {manifest['clips']} -> {args.inputs} ({manifest['records']})")
        return 0
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            sys.stderr.write("gpu_check.py: no CUDA GPU here; run `python scripts/gpu_check.py --dry-run` on a CPU\n")
            return 2
    try:
        report = Check(args).run()
    except inputs_mod.InputsError as err:
        sys.stderr.write(f"gpu_check.py: error: {err}\n")
        return 2
    print(report_mod.markdown(report))
    counts: dict[str, int] = {}
    for s in report["stages"]:
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    print(f"gpu check ({report['mode']}): " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
          + f" in {report['elapsed_s']:.0f} s -> {Path(args.out) / 'gpu_check.md'}")
    return 0 if counts.get("error", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
