"""``mllm4d plan``: predict a training stage's peak GPU memory from its recipe, before launch.

    mllm4d plan --config recipes/qwen2.5-vl-3b/sft.yaml [--gpu-gb 24] [--json plan.json] [--key value ...]

Reads the recipe as its stage would (``mllm4d sft`` for SFT and cold start, ``mllm4d grpo``;
``--key value`` overrides any of that stage's settings, e.g. ``--num-frames 32``), prints a table
of predicted GB per component and phase, and ends with one line: the peak, the card size and
whether it fits. Nothing is loaded but the model's config: the model is built on the ``meta``
device. The rules behind each figure: :mod:`mllm4d_lite.train.plan_memory` and docs/memory.md.

The LoRA of a stage that continues an adapter (``adapter_init``) is read from the adapter's
``adapter_config.json`` when it exists, else from the recipe beside this one whose ``output_dir``
writes it (cold start <- SFT, GRPO <- cold start <- SFT).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from mllm4d_lite.config import ConfigError, build_config, load_yaml, parse_config
from mllm4d_lite.train.families import ModelSetupError
from mllm4d_lite.train.plan_memory import ALLOCATOR_RESERVE, CUDA_CONTEXT_GB, TEXT_TOKENS, Prediction, Setup, predict

log = logging.getLogger(__name__)

GRPO_KEYS = {"num_generations", "max_completion_length", "reward_funcs", "beta", "use_st_cot_prompt"}


def stage_of(recipe: str | None, stage: str | None) -> str:
    """``sft`` or ``grpo``: ``--stage``, else a recipe named ``grpo.yaml`` or holding GRPO's keys."""
    if stage:
        return stage
    if recipe:
        if Path(recipe).stem == "grpo":
            return "grpo"
        try:
            return "grpo" if GRPO_KEYS & set(load_yaml(recipe)) else "sft"
        except ConfigError:
            return "sft"  # the stage's own parsing reports the error
    return "sft"


def stage_config_class(stage: str):
    if stage == "grpo":
        from mllm4d_lite.train.grpo_config import GRPOConfig

        return GRPOConfig
    from mllm4d_lite.train.sft import SFTConfig

    return SFTConfig


def resolve_loader(cfg: Any, requested: str) -> str:
    """``unsloth`` where the recipe asks for it and (``auto``) Unsloth runs here, or when asked;
    else ``peft`` (transformers + peft + bitsandbytes, the kit's fallback)."""
    if not getattr(cfg, "use_unsloth", False) or requested == "peft":
        return "peft"
    if requested == "unsloth":
        return "unsloth"
    from mllm4d_lite.train.loading import cuda_available, unsloth_importable

    return "unsloth" if cuda_available() and unsloth_importable() else "peft"


def _recipe_writing(adapter: str, recipe: str | None) -> Path | None:
    """The recipe beside ``recipe`` whose ``output_dir``/adapter is ``adapter``."""
    if not recipe:
        return None
    target = Path(adapter).resolve()
    for other in sorted(Path(recipe).resolve().parent.glob("*.yaml")):
        try:
            out = load_yaml(other).get("output_dir")
        except ConfigError:
            continue
        if out and (Path(out) / "adapter").resolve() == target:
            try:
                return other.relative_to(Path.cwd())
            except ValueError:
                return other
    return None


def resolve_lora(cfg: Any, stage: str, recipe: str | None, loader: str = "auto", depth: int = 0,
                 model: str | None = None, layers: int = 0):
    """The :class:`~mllm4d_lite.train.plan_model.LoraSpec` the stage trains (see the module docstring),
    counted on ``model`` with ``layers`` (default ``cfg.model`` / ``cfg.shape_layers``; a chain of
    recipes is counted on the planned model);
    ``loader`` as ``--loader`` (each recipe of a chain resolves it for itself)."""
    from mllm4d_lite.train.args import LLM_TARGETS
    from mllm4d_lite.train.lora import lora_target_regex
    from mllm4d_lite.train.plan_model import (lora_spec_for_recipe, lora_spec_from_adapter,
                                              lora_spec_from_targets)

    layers = getattr(cfg, "shape_layers", 0) if model is None else layers
    model = model or cfg.model
    where = recipe or "the command line"
    if cfg.adapter_init and depth < 4:
        if (Path(cfg.adapter_init) / "adapter_config.json").is_file():
            return lora_spec_from_adapter(model, cfg.adapter_init, layers)
        parent = _recipe_writing(cfg.adapter_init, recipe)
        if parent is not None:
            from mllm4d_lite.train.sft import SFTConfig

            values = {k: v for k, v in load_yaml(parent).items() if k != "_meta"}
            parent_cfg = build_config(SFTConfig, values, str(parent))
            return resolve_lora(parent_cfg, "sft", str(parent), loader, depth + 1, model, layers)
        where = (f"{where}'s own lora_* settings (adapter_init {cfg.adapter_init} not found, "
                 "no recipe beside it writes it)")
    if stage == "grpo":
        return lora_spec_from_targets(model, cfg.lora_r, cfg.lora_dropout,
                                      lora_target_regex(cfg.lora_target_modules), where, layers)
    if resolve_loader(cfg, loader) == "unsloth":  # FastVisionModel.get_peft_model: LLM attention + MLP only
        return lora_spec_from_targets(model, cfg.lora_r, cfg.lora_dropout, lora_target_regex(LLM_TARGETS),
                                      f"{where} (Unsloth: LLM layers)", layers)
    return lora_spec_for_recipe(model, cfg.lora_r, cfg.lora_dropout, cfg.lora_target_modules, cfg.train_merger, where,
                                layers)


def setup_from_config(cfg: Any, stage: str, recipe: str | None = None, loader: str = "auto",
                      prompt_tokens: int | None = None, answer_tokens: int | None = None,
                      source_hw: tuple[int, int] | None = None) -> Setup:
    """A :class:`~mllm4d_lite.train.plan_memory.Setup` from a parsed ``SFTConfig`` / ``GRPOConfig``."""
    from mllm4d_lite.train.plan_model import model_shape

    shape = model_shape(cfg.model, getattr(cfg, "shape_layers", 0))
    used = resolve_loader(cfg, loader)
    notes = []
    if getattr(cfg, "use_unsloth", False) and used == "peft":
        notes.append("use_unsloth: true, predicted for the transformers + peft path (Unsloth does not run here; "
                     "--loader unsloth for Unsloth's, approximate)")
    lora = resolve_lora(cfg, stage, recipe, loader)
    act = 4 if cfg.dtype in ("float32", "fp32") else 2
    if stage == "grpo":
        mode = "st-cot" if cfg.use_st_cot_prompt else "direct"
        answer = cfg.max_completion_length
        per_gen = getattr(cfg, "steps_per_generation", None) or cfg.gradient_accumulation_steps
        gen_batch = getattr(cfg, "generation_batch_size", None) or cfg.per_device_train_batch_size * per_gen
        label = "GRPO"
        notes.append(f"every completion assumed to run to max_completion_length ({answer} tokens)")
    else:
        mode = "st-cot" if "cot" in Path(cfg.train_file).name or cfg.eval_mode == "st-cot" else "direct"
        answer = TEXT_TOKENS[mode][1]
        gen_batch = 0
        label = "cold start" if cfg.adapter_init and mode == "st-cot" else "SFT"
    prompt = TEXT_TOKENS[mode][0] if prompt_tokens is None else prompt_tokens
    answer = answer if answer_tokens is None else answer_tokens
    notes.append(f"text tokens assumed: {prompt} prompt ({mode} system + question + options + template), "
                 f"{answer} {'completion' if stage == 'grpo' else 'answer'}")
    return Setup(stage=stage, label=label, model=cfg.model, shape=shape, quant=cfg.quant, act_bytes=act, loader=used,
                 lora=lora, frames=cfg.num_frames, max_pixels=cfg.max_pixels, min_pixels=cfg.min_pixels,
                 source_hw=source_hw, batch=cfg.per_device_train_batch_size, prompt_text_tokens=prompt,
                 answer_tokens=answer, gradient_checkpointing=cfg.gradient_checkpointing,
                 num_generations=getattr(cfg, "num_generations", 0), generation_batch=gen_batch,
                 ref_adapter=stage == "grpo" and cfg.beta > 0 and bool(cfg.adapter_init),
                 lora_fp32=getattr(cfg, "lora_fp32", True), notes=notes)


def plan_recipe(recipe: str, overrides: Sequence[str] = (), gpu_gb: float = 24.0, stage: str | None = None,
                loader: str = "auto", **kwargs) -> Prediction:
    """Predict a recipe's memory (``overrides``: ``--key value`` arguments of its stage)."""
    stage = stage_of(recipe, stage)
    cfg = parse_config(stage_config_class(stage), ["--config", recipe, *overrides], prog="mllm4d plan")
    return predict(setup_from_config(cfg, stage, recipe, loader, **kwargs), gpu_gb)


def summary_line(p: Prediction) -> str:
    s = p.setup
    verdict = (f"fits, {p.gpu_gb - p.peak_gb:.1f} GB to spare" if p.fits
               else f"does NOT fit, {p.peak_gb - p.gpu_gb:.1f} GB over")
    px = s.max_pixels if s.max_pixels else "default"
    return (f"plan: peak {p.peak_gb:.1f} GB predicted on a {p.gpu_gb:g} GB card: {verdict} "
            f"({s.label}, {s.model}, {s.quant}, {s.frames} frames x {px} px)")


def report(p: Prediction) -> str:
    """The table of predicted GB per component and phase (every figure a prediction)."""
    s, t = p.setup, p.tokens
    lines = [f"mllm4d plan: {s.label} of {s.model} ({s.quant}, loader {s.loader}, compute "
             f"{'fp32' if s.act_bytes == 4 else 'bf16'}, gradient checkpointing "
             f"{'on' if s.gradient_checkpointing else 'off'})",
             f"params (exact, meta device, {s.shape.layers} decoder layers): {s.shape.total:,} total; " + ", ".join(
                 f"{k} {v:,}" for k, v in s.shape.groups.items() if v),
             f"LoRA r={s.lora.r} on {len(s.lora.modules)} modules: {s.lora.params:,} params (from {s.lora.source})",
             f"tokens: {t['visual_per_clip']} visual per clip ({s.frames} frames at {t['frame_width']}x"
             f"{t['frame_height']} px), prompt {t['prompt']}, sequence {t['sequence']}, micro-batch {s.batch} x "
             f"{t['sequence']} = {t['micro_batch_tokens']}"
             + (f"; generation batch {s.generation_batch} x {t['sequence']}" if s.stage == "grpo" else ""), "",
             "every figure below is a PREDICTION; rows marked ~ are transient: a phase counts only its largest ~ row",
             f"{'component':<58} {'GB (pred.)':>10}"]
    for phase, comps in p.components.items():
        total = p.phases.get(phase)
        head = f"[{phase}]" + (f"  peak {total:.2f} GB allocated, predicted" if total is not None else "")
        lines.append(head + ("   <- the peak" if phase == p.peak_phase else ""))
        lines += [f"  {name:<56} {gb:8.2f}" for name, gb in comps.items()]
    extra = f"+ allocator reserve {ALLOCATOR_RESERVE:.0%} + CUDA context {CUDA_CONTEXT_GB} GB"
    lines += ["", f"{'predicted peak allocated (torch.cuda.max_memory_allocated)':<58} {p.peak_allocated_gb:8.2f}",
              f"{extra:<58} {p.peak_gb - p.peak_allocated_gb:8.2f}",
              f"{'predicted peak on the card (nvidia-smi)':<58} {p.peak_gb:8.2f}"]
    lines += [f"note: {n}" for n in s.notes]
    return "\n".join(lines)


def _source_hw(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    try:
        w, h = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--source-size {text!r}: expected WIDTHxHEIGHT, e.g. 1242x375") from None
    return h, w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mllm4d plan", description="Predict a stage's peak GPU memory per component from its recipe.",
        epilog="Any option of the recipe's stage (mllm4d sft / grpo --help) overrides the recipe, e.g. "
               "--num-frames 32 --max-pixels 100352 --num-generations 4.")
    parser.add_argument("--config", required=True, help="recipe YAML (recipes/<profile>/<stage>.yaml)")
    parser.add_argument("--gpu-gb", type=float, default=24.0, help="the card's memory in GB (2^30 bytes)")
    parser.add_argument("--json", default=None, help="also write the prediction to this JSON file")
    parser.add_argument("--stage", choices=("sft", "grpo"), default=None,
                        help="the recipe's stage (default: grpo for grpo.yaml or GRPO keys, else sft)")
    parser.add_argument("--loader", choices=("auto", "peft", "unsloth"), default="auto",
                        help="auto: Unsloth where the recipe asks for it and it runs here, else transformers + peft")
    parser.add_argument("--source-size", default=None,
                        help="source video WIDTHxHEIGHT (default: a square frame of max_pixels, the most tokens "
                             "the budget allows)")
    parser.add_argument("--prompt-tokens", type=int, default=None, help="prompt text tokens (default: assumption)")
    parser.add_argument("--answer-tokens", type=int, default=None,
                        help="answer tokens (SFT; default: assumption) or completion tokens (GRPO; default: "
                             "max_completion_length)")
    args, rest = parser.parse_known_args(argv)
    try:
        pred = plan_recipe(args.config, rest, gpu_gb=args.gpu_gb, stage=args.stage, loader=args.loader,
                           prompt_tokens=args.prompt_tokens, answer_tokens=args.answer_tokens,
                           source_hw=_source_hw(args.source_size))
    except (ConfigError, ModelSetupError) as err:
        sys.stderr.write(f"mllm4d plan: error: {err}\n")
        return 2
    print(report(pred))
    if args.json:
        from mllm4d_lite.io import atomic_write_json

        atomic_write_json(Path(args.json), pred.to_json())
    print(summary_line(pred))
    return 0


__all__ = ["main", "plan_recipe", "report", "resolve_lora", "resolve_loader", "setup_from_config", "stage_of",
           "summary_line"]
