"""``mllm4d sft``: supervised fine-tuning (direct answers) and the ST-CoT cold start, with (Q)LoRA.

The first two training stages of MLLM-4D: SFT on ``sft.jsonl``, then the same command on
``cot.jsonl`` starting from the SFT adapter (``adapter_init``). Built on TRL's ``SFTTrainer``
with our video collator (:mod:`mllm4d_lite.train.data`): left-view videos sampled to ``num_frames``
frames under a per-frame pixel budget, chat template, loss on the assistant's tokens only,
vision tower frozen, LLM (and, with ``train_merger``, the vision-language merger) trained
through LoRA.

    mllm4d sft --config recipes/tiny/sft.yaml
    mllm4d sft --config recipes/tiny/cold_start.yaml

Outputs in ``output_dir``: ``adapter/`` (peft; ``mllm4d eval --adapter``), ``config.yaml``
(resolved), ``metrics.jsonl`` (loss, lr, s/step, tokens/s, peak memory per logging interval),
``loss.png``, ``checkpoint-*/`` (``--resume`` continues from the last one), and
``eval.json`` when ``eval_file`` is set.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mllm4d_lite.config import ConfigError, parse_config, save_resolved

from mllm4d_lite.io import atomic_write_json, save_figure

log = logging.getLogger(__name__)

LLM_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class SFTConfigKit:
    """Options of ``mllm4d sft`` (SFT and cold start)."""

    model: str = field(default="tiny", metadata={"help": "tiny | tiny-motion | tiny-qwen3-vl | model folder | hub name"})
    adapter_init: str | None = field(default=None, metadata={
        "help": "start from this LoRA adapter folder and keep training it (cold start: the SFT adapter)"})
    train_file: str = field(default="runs/tiny/data/sft.jsonl", metadata={"help": "sft.jsonl or cot.jsonl"})
    eval_file: str | None = field(default=None, metadata={"help": "bench.json to score after training (optional)"})
    eval_mode: str = field(default="direct", metadata={"help": "prompt for eval_file: direct | st-cot"})
    eval_max_samples: int = field(default=0, metadata={"help": "score at most this many bench entries (0 = all)"})
    eval_max_new_tokens: int = field(default=96, metadata={"help": "generation budget per bench answer"})
    output_dir: str = field(default="runs/sft", metadata={"help": "adapter, metrics, checkpoints go here"})
    num_frames: int = field(default=8, metadata={"help": "frames sampled per video (first and last included)"})
    max_pixels: int = field(default=112 * 112, metadata={"help": "per-frame pixel budget (paper: 50176 = 224x224)"})
    min_pixels: int = field(default=784, metadata={"help": "per-frame pixel floor (paper: 784 = 28x28)"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (paper: 128)"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (paper: 256)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target_modules: list[str] = field(default_factory=lambda: list(LLM_TARGETS), metadata={
        "help": "LLM Linear names (matched as name suffixes inside the language model) or full-name regexes "
                "(e.g. 'model\\.visual\\.blocks\\.\\d+\\.attn\\.qkv'); each must match a module"})
    train_merger: bool = field(default=True, metadata={"help": "also put LoRA on the vision-language merger"})
    quant: str = field(default="none", metadata={"help": "none | 4bit (NF4 QLoRA) | 8bit"})
    use_unsloth: bool = field(default=False, metadata={"help": "Unsloth's vision loader (CUDA only)"})
    dtype: str = field(default="auto", metadata={"help": "auto | float32 | bfloat16 | float16"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations (saves memory)"})
    learning_rate: float = field(default=2e-5, metadata={"help": "peak learning rate (paper: 2e-5)"})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers scheduler name"})
    warmup_ratio: float = field(default=0.01, metadata={"help": "warm-up fraction (paper: 0.01 SFT, 0.03 cold start)"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "epochs (ignored when max_steps > 0)"})
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps (-1 = from epochs)"})
    per_device_train_batch_size: int = field(default=1, metadata={"help": "samples per forward"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "forwards per optimizer step"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    logging_steps: int = field(default=10, metadata={"help": "log a metrics line every N steps"})
    save_steps: int = field(default=200, metadata={"help": "checkpoint every N steps (for --resume)"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept"})
    seed: int = field(default=0, metadata={"help": "random seed (LoRA init, data order)"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in output_dir"})
    blind: bool = field(default=False, metadata={"help": "blank all video frames (the blind control)"})
    max_train_samples: int = field(default=0, metadata={"help": "use a seeded subset of this many records (0 = all)"})
    train_categories: list[str] = field(default_factory=list, metadata={
        "help": "train only on records of these question categories (empty = all)"})
    cache_videos: bool = field(default=True, metadata={"help": "keep decoded frames in memory (one decode per clip)"})
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = torch's default)"})

    def validate(self) -> None:
        if self.quant not in ("none", "4bit", "8bit"):
            raise ConfigError(f"`quant: {self.quant}` is not one of none, 4bit, 8bit")
        if self.eval_mode not in ("direct", "st-cot"):
            raise ConfigError(f"`eval_mode: {self.eval_mode}` is not one of direct, st-cot")
        if self.num_frames < 2:
            raise ConfigError(f"`num_frames: {self.num_frames}` must be >= 2 (the temporal patch is 2 frames)")
        if self.min_pixels > self.max_pixels:
            raise ConfigError(f"`min_pixels: {self.min_pixels}` exceeds `max_pixels: {self.max_pixels}`")
        for name in ("lora_r", "lora_alpha", "per_device_train_batch_size", "gradient_accumulation_steps",
                     "logging_steps", "save_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"`{name}: {getattr(self, name)}` must be >= 1")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"`lora_dropout: {self.lora_dropout}` must be in [0, 1)")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"`warmup_ratio: {self.warmup_ratio}` must be in [0, 1)")
        if self.learning_rate <= 0:
            raise ConfigError(f"`learning_rate: {self.learning_rate}` must be > 0")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ConfigError("set `max_steps` > 0 or `num_train_epochs` > 0")
        if not self.lora_target_modules and not self.train_merger:
            raise ConfigError("`lora_target_modules` is empty and `train_merger: false`: nothing would train")
        if any(t == "lm_head" for t in self.lora_target_modules):
            raise ConfigError("`lora_target_modules` contains lm_head: TRL's SFTTrainer cannot train LoRA on the "
                              "LM head (it reads lm_head.weight directly); remove it")


# ----------------------------------------------------------------------------------------------
# LoRA targets
# ----------------------------------------------------------------------------------------------

def _is_linear(module) -> bool:
    """Layers peft can wrap in LoRA: Linear (bitsandbytes' Linear4bit/8bitLt subclass it) and the
    vision patch embedding's Conv3d."""
    import torch

    return isinstance(module, (torch.nn.Linear, torch.nn.Conv3d))


def _in_vision_tower(name: str) -> bool:
    return name.startswith("visual.") or ".visual." in name


def _is_merger(name: str) -> bool:
    return _in_vision_tower(name) and "merger" in name


def resolve_lora_targets(model, patterns: Sequence[str], train_merger: bool) -> list[str]:
    """Full names of the Linear modules that get LoRA.

    A plain name (``q_proj``) matches Linear modules *of the language model* whose name ends
    with it; a pattern with regex characters is matched against the full module name
    (``re.fullmatch``), anywhere in the model (so vision-tower LoRA must be asked for by
    name). ``train_merger`` adds every Linear of the vision-language merger(s). A pattern that
    matches nothing is an error (the usual silent no-op of vision-tower LoRA), as is ``lm_head``.
    """
    linears = [name for name, module in model.named_modules() if name and _is_linear(module)]
    chosen: list[str] = []
    for pattern in patterns:
        if re.fullmatch(r"[A-Za-z0-9_]+", pattern):  # the Conv3d patch embedding is in the vision tower
            hits = [n for n in linears if (n == pattern or n.endswith("." + pattern)) and not _in_vision_tower(n)]
        else:
            try:
                regex = re.compile(pattern)
            except re.error as err:
                raise ConfigError(f"`lora_target_modules`: {pattern!r} is not a valid regex ({err})") from None
            hits = [n for n in linears if regex.fullmatch(n)]
        if not hits:
            lm = [n for n in linears if not _in_vision_tower(n)][:4]
            vis = [n for n in linears if _in_vision_tower(n)][:4]
            raise ConfigError(
                f"`lora_target_modules`: {pattern!r} matches no Linear module of {type(model).__name__}. "
                f"Plain names match language-model layers by suffix (e.g. {lm}); vision-tower layers need a "
                f"full-name regex (e.g. {vis[0] if vis else 'model.visual...'!r} -> "
                f"'model\\.visual\\.blocks\\.\\d+\\.attn\\.qkv')")
        chosen += hits
    if train_merger:
        merger = [n for n in linears if _is_merger(n)]
        if not merger:
            raise ConfigError(f"`train_merger: true` but {type(model).__name__} has no Linear module under a "
                              "visual '*merger*'; set `train_merger: false`")
        chosen += merger
    if any(n.split(".")[-1] == "lm_head" for n in chosen):
        raise ConfigError("`lora_target_modules` reaches lm_head, which TRL's SFTTrainer cannot train; narrow it")
    return sorted(set(chosen))


def attach_lora(model, cfg: SFTConfigKit):
    """Wrap ``model`` in a trainable peft LoRA (new, or ``cfg.adapter_init`` to continue)."""
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    if cfg.quant != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.adapter_init:
        if not (Path(cfg.adapter_init) / "adapter_config.json").is_file():
            raise ConfigError(f"`adapter_init: {cfg.adapter_init}` has no adapter_config.json; point it at the "
                              "adapter/ folder an `mllm4d sft` run wrote (e.g. runs/tiny/sft/adapter)")
        log.info("continuing from adapter %s (its LoRA r/alpha/targets apply; lora_* settings ignored)",
                 cfg.adapter_init)
        from mllm4d_lite.train.model import warn_if_adapter_base_differs

        warn_if_adapter_base_differs(cfg.adapter_init, cfg.model)
        return PeftModel.from_pretrained(model, cfg.adapter_init, is_trainable=True)
    targets = resolve_lora_targets(model, cfg.lora_target_modules, cfg.train_merger)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def attach_lora_unsloth(model, cfg: SFTConfigKit):
    """Unsloth's LoRA (CUDA): LLM attention + MLP, vision layers frozen."""
    from unsloth import FastVisionModel

    if cfg.adapter_init:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, cfg.adapter_init, is_trainable=True)
    else:
        if cfg.train_merger:
            log.warning("use_unsloth: Unsloth's LoRA covers language layers only; train_merger is ignored")
        model = FastVisionModel.get_peft_model(
            model, finetune_vision_layers=False, finetune_language_layers=True, finetune_attention_modules=True,
            finetune_mlp_modules=True, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
            bias="none", random_state=cfg.seed)
    FastVisionModel.for_training(model)
    return model


# ----------------------------------------------------------------------------------------------
# Logging: one line per interval, metrics.jsonl, loss curve
# ----------------------------------------------------------------------------------------------

def peak_memory_gb(device: str) -> float:
    """Peak CUDA memory allocated (GPU) or peak resident set size of this process (CPU), GB."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: kilobytes


def make_metrics_callback(metrics_path: Path, collator, device: str):
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        """Writes one metrics.jsonl row and one log line per logging interval."""

        def __init__(self):
            self.t0 = time.perf_counter()
            self.step0 = 0
            self.tokens0 = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0, self.step0, self.tokens0 = time.perf_counter(), state.global_step, collator.num_tokens

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            now, steps = time.perf_counter(), max(state.global_step - self.step0, 1)
            dt = now - self.t0
            row = {"step": state.global_step, "max_steps": state.max_steps, "epoch": round(state.epoch or 0.0, 4),
                   "loss": float(logs["loss"]), "lr": float(logs.get("learning_rate", 0.0)),
                   "s_per_step": dt / steps, "tokens_per_s": (collator.num_tokens - self.tokens0) / max(dt, 1e-9),
                   "peak_mem_gb": peak_memory_gb(device)}
            for key in ("grad_norm", "mean_token_accuracy"):
                if key in logs:
                    row[key] = float(logs[key])
            with metrics_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            log.info("step %d/%d | loss %.4f | lr %.2e | %.3f s/step | tok/s %.0f | mem %.2f GB", row["step"],
                     row["max_steps"], row["loss"], row["lr"], row["s_per_step"], row["tokens_per_s"],
                     row["peak_mem_gb"])
            self.t0, self.step0, self.tokens0 = now, state.global_step, collator.num_tokens

    return MetricsCallback()


def plot_loss(metrics_path: Path, out_png: Path, title: str) -> None:
    """Loss (and lr) against step from metrics.jsonl."""
    from mllm4d_lite.io import pyplot

    plt = pyplot()

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], "o-", ms=3, label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax2 = ax.twinx()
    ax2.plot([r["step"] for r in rows], [r["lr"] for r in rows], color="gray", lw=0.8, label="lr")
    ax2.set_ylabel("learning rate")
    fig.tight_layout()
    save_figure(fig, out_png, dpi=100)


# ----------------------------------------------------------------------------------------------
# Quick evaluation (the end-of-training check and the learning benchmark)
# ----------------------------------------------------------------------------------------------

_CENTER = r"(\[[^\]]*\]|null)"
_ST_COT_PARTS = (r"<thinking>.*?</thinking>", r"<answer>.*?</answer>", r"Camera Center:\s*" + _CENTER,
                 r"Object Center:\s*" + _CENTER)


def follows_st_cot_format(text: str) -> bool:
    """Both tags and both centres: ``<thinking>…</thinking>``, ``<answer>…</answer>``,
    ``Camera Center: [...]`` and ``Object Center: [...]`` (``null`` allowed for a centre).

    >>> follows_st_cot_format("<thinking>Camera Center: [0, 0, 0] Object Center: null</thinking><answer>A</answer>")
    True
    """
    return all(re.search(p, text, flags=re.S) for p in _ST_COT_PARTS)


def quick_eval(model, processor, entries: Sequence[dict[str, Any]], cache, mode: str = "direct",
               batch_size: int = 8, max_new_tokens: int = 96) -> dict[str, Any]:
    """Generate greedily on VLM4D-format entries and score them with the kit's answer extraction.

    Returns ``{"n", "accuracy", "by_category": {cat: {"n", "accuracy"}}, "format_rate", "predictions"}``;
    ``format_rate`` is the share of replies that follow the ST-CoT format (meaningful in st-cot mode).
    """
    from tqdm import tqdm

    from mllm4d_lite import prompts
    from mllm4d_lite.eval.evaluate import scored
    from mllm4d_lite.train.model import generate_answers

    system = prompts.ST_COT_SYSTEM_PROMPT if mode == "st-cot" else None
    model.eval()
    preds = []
    for i in tqdm(range(0, len(entries), batch_size), desc=f"eval ({mode})", unit="batch"):
        chunk = entries[i:i + batch_size]
        texts = [prompts.build_prompt(e["question"], e.get("choices"), mode) for e in chunk]
        replies = generate_answers(model, processor, texts, [cache.get(e["video_path"]) for e in chunk],
                                   system_prompt=system, max_new_tokens=max_new_tokens)
        for entry, reply in zip(chunk, replies):
            result = scored(entry, reply, st_cot=mode == "st-cot")  # as `mllm4d eval run` scores it
            preds.append({"id": entry["id"], "category": entry.get("category", "?"), "response": reply,
                          "extracted": result["extracted"], "score": result["score"],
                          "format_ok": follows_st_cot_format(reply)})
    by_cat: dict[str, dict[str, float]] = {}
    for p in preds:
        c = by_cat.setdefault(p["category"], {"n": 0, "accuracy": 0.0})
        c["n"] += 1
        c["accuracy"] += p["score"]
    for c in by_cat.values():
        c["accuracy"] /= c["n"]
    n = len(preds)
    return {"n": n, "accuracy": sum(p["score"] for p in preds) / max(n, 1), "by_category": by_cat,
            "format_rate": sum(p["format_ok"] for p in preds) / max(n, 1), "predictions": preds}


# ----------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------

def _training_args(cfg: SFTConfigKit, device: str, torch_dtype):
    import torch
    from trl import SFTConfig

    return SFTConfig(
        output_dir=cfg.output_dir, per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps, learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=float(cfg.warmup_ratio),  # a float < 1 is a ratio
        num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, logging_steps=cfg.logging_steps, save_strategy="steps",
        save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit, seed=cfg.seed, data_seed=cfg.seed,
        report_to="none", use_cpu=not device.startswith("cuda"), bf16=torch_dtype == torch.bfloat16,
        fp16=torch_dtype == torch.float16, activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False, max_length=None,
        dataloader_num_workers=0, save_only_model=False,
    )


def train(cfg: SFTConfigKit, return_trainer: bool = False):
    """Run one SFT / cold-start stage; returns a summary dict (also written to ``summary.json``),
    or ``(summary, trainer)`` with ``return_trainer`` (tests inspect ``trainer.model``)."""
    import torch
    from transformers import set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from mllm4d_lite.train import data as D
    from mllm4d_lite.train.model import (check_gpu_only_settings, follow_thread_share, load_model_and_processor,
                                   pick_device, pick_dtype, quiet_progress, save_adapter)

    device = pick_device(cfg.device)
    check_gpu_only_settings(device, use_unsloth=cfg.use_unsloth, cpu_recipe="recipes/tiny/sft.yaml (or cold_start.yaml)")
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    set_seed(cfg.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out)

    records = D.load_records(cfg.train_file, cfg.max_train_samples or None, seed=cfg.seed,
                             categories=cfg.train_categories)
    cache = D.VideoCache(cfg.num_frames, blank=cfg.blind, keep=cfg.cache_videos)
    records, skipped = D.check_videos(records, cache)
    if not records:
        raise D.DataError(f"{cfg.train_file}: no record has a readable video ({len(skipped)} skipped)")
    log.info("%d training records from %s (%d skipped), categories %s%s", len(records), cfg.train_file,
             len(skipped), D.records_by_category(records), " [BLIND: frames blanked]" if cfg.blind else "")

    model, processor = load_model_and_processor(
        cfg.model, device=device, quant=cfg.quant, dtype=cfg.dtype, use_unsloth=cfg.use_unsloth,
        max_pixels=cfg.max_pixels, min_pixels=cfg.min_pixels, gradient_checkpointing=cfg.gradient_checkpointing,
        trainable_adapter=True)
    from mllm4d_lite.train.model import unsloth_importable

    if cfg.use_unsloth and unsloth_importable():
        model = attach_lora_unsloth(model, cfg)
    else:
        model = attach_lora(model, cfg)
    if cfg.gradient_checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in model.parameters())
    bad = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    if bad:
        raise RuntimeError(f"non-LoRA parameters would train: {bad[:5]}")
    log.info("trainable LoRA parameters: %d of %d (%.2f%%)", n_train, n_all, 100.0 * n_train / n_all)

    collator = D.VideoSFTCollator(processor, cache)
    cost = D.sample_cost(processor, collator, records)
    per_step = cost["total_tokens_mean"] * cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    log.info("sample cost: %d frames of %dx%d -> %d px/frame (max_pixels %d) -> %d visual tokens; "
             "%.0f tokens/sample (max %d), %.1f answer tokens; ~%.0f tokens per optimizer step",
             cost["frames"], cost["source_width"], cost["source_height"], cost["pixels_per_frame"], cfg.max_pixels,
             cost["visual_tokens"], cost["total_tokens_mean"], cost["total_tokens_max"], cost["answer_tokens_mean"],
             per_step)

    from datasets import Dataset
    from trl import SFTTrainer

    dataset = Dataset.from_dict({"index": list(range(len(records)))})

    def collate(rows):
        return collator([records[r["index"]] for r in rows])

    metrics_path = out / "metrics.jsonl"
    resume_from = None
    if cfg.resume:
        resume_from = get_last_checkpoint(str(out)) if out.is_dir() else None
        if resume_from is None:
            log.warning("--resume: no checkpoint-* in %s; starting from scratch", out)
    if resume_from is None and metrics_path.exists():
        metrics_path.unlink()
    if resume_from is not None:
        done = int(Path(resume_from).name.split("-")[-1])
        rows = [line for line in metrics_path.read_text().splitlines() if line.strip()] if metrics_path.exists() else []
        metrics_path.write_text("".join(r + "\n" for r in rows if json.loads(r)["step"] <= done))
        log.info("resuming from %s", resume_from)

    torch_dtype = pick_dtype(cfg.dtype, device)
    trainer = SFTTrainer(model=model, args=_training_args(cfg, device, torch_dtype), data_collator=collate,
                         train_dataset=dataset, processing_class=processor,
                         callbacks=[make_metrics_callback(metrics_path, collator, device)])
    quiet_progress(trainer)
    follow_thread_share(trainer)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    train_s = time.perf_counter() - t0

    adapter_dir = save_adapter(trainer.model, out / "adapter")
    if metrics_path.exists():
        plot_loss(metrics_path, out / "loss.png", f"{Path(cfg.train_file).name} ({cfg.model})")

    summary: dict[str, Any] = {
        "adapter": str(adapter_dir), "train_records": len(records), "skipped_records": skipped,
        "steps": int(trainer.state.global_step), "final_loss": float(result.training_loss),
        "train_s": round(train_s, 1), "peak_mem_gb": round(peak_memory_gb(device), 3),
        "sample_cost": cost, "blind": cfg.blind, "device": device}
    if cfg.eval_file:
        entries = D.load_records(cfg.eval_file, cfg.eval_max_samples or None, seed=cfg.seed)
        entries, eval_skipped = D.check_videos(entries, cache)
        result_eval = quick_eval(trainer.model, processor, entries, cache, mode=cfg.eval_mode,
                                 max_new_tokens=cfg.eval_max_new_tokens)
        atomic_write_json(out / "eval.json", {**result_eval, "skipped": eval_skipped})
        summary["eval"] = {k: v for k, v in result_eval.items() if k != "predictions"}
    atomic_write_json(out / "summary.json", summary)
    return (summary, trainer) if return_trainer else summary


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(SFTConfigKit, argv, prog="mllm4d sft",
                       description="SFT / ST-CoT cold start of a Qwen-VL with (Q)LoRA on video QA records.")
    from mllm4d_lite.train.data import DataError
    from mllm4d_lite.train.model import ModelSetupError

    try:
        summary = train(cfg)
    except (ConfigError, DataError, ModelSetupError) as err:
        sys.stderr.write(f"mllm4d sft: error: {err}\n")
        return 2
    line = (f"sft: {summary['steps']} steps on {summary['train_records']} records "
            f"({len(summary['skipped_records'])} skipped) in {summary['train_s']:.0f} s, "
            f"final loss {summary['final_loss']:.4f}, adapter -> {summary['adapter']}")
    if "eval" in summary:
        e = summary["eval"]
        line += f"; eval acc {e['accuracy']:.3f} on {e['n']}, ST-CoT format {e['format_rate']:.2f}"
    print(line)
    return 0


__all__ = ["SFTConfigKit", "attach_lora", "follows_st_cot_format", "main", "quick_eval", "resolve_lora_targets",
           "train"]
