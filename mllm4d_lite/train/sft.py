"""``mllm4d sft``: supervised fine-tuning (direct answers) and the ST-CoT cold start, with (Q)LoRA.

The first two training stages of MLLM-4D: SFT on ``sft.jsonl``, then the same command on
``cot.jsonl`` starting from the SFT adapter (``adapter_init``). Built on TRL's ``SFTTrainer``
with the kit's video collator (:mod:`mllm4d_lite.train.collator`): left-view videos sampled to
``num_frames`` frames under a per-frame pixel budget, chat template, loss on the assistant's tokens
only, vision tower frozen, LLM (and, with ``train_merger``, the vision-language merger) trained
through LoRA (:mod:`mllm4d_lite.train.lora`).

    mllm4d sft --config recipes/tiny/sft.yaml
    mllm4d sft --config recipes/tiny/cold_start.yaml

Outputs in ``output_dir``: ``adapter/`` (peft; ``mllm4d eval --adapter``), ``config.yaml``
(resolved), ``metrics.jsonl`` (loss, lr, s/step, tokens/s, peak memory per logging interval),
``loss.png``, ``checkpoint-*/`` (``--resume`` continues from the newest complete one),
``run_key.json`` (what the checkpoints were trained on: a resume with other records or settings
is not mixed in, see :func:`mllm4d_lite.train.checkpoints.resume_point`), and ``eval.json`` when
``eval_file`` is set.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mllm4d_lite.config import ConfigError, merge_config_classes, parse_config, save_resolved
from mllm4d_lite.io import atomic_write_json, prepare_output_dir, run_stage, save_figure
from mllm4d_lite.train.args import LoraArgs, ModelArgs, RunArgs, VideoArgs, check_shared, normalise_unset, with_defaults

log = logging.getLogger(__name__)


@dataclass
class SFTArgs:
    """The settings only ``mllm4d sft`` has."""

    train_merger: bool = field(default=True, metadata={"help": "also put LoRA on the vision-language merger"})
    warmup_ratio: float = field(default=0.01, metadata={"help": "warm-up fraction (paper: 0.01 SFT, 0.03 cold start)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    max_train_samples: int = field(default=0, metadata={"help": "use a seeded subset of this many records (0 = all)"})
    cache_videos: bool = field(default=True, metadata={"help": "keep decoded frames in memory (one decode per clip)"})
    eval_file: str | None = field(default=None, metadata={"help": "bench.json to score after training (optional)"})
    eval_mode: str = field(default="direct", metadata={"help": "prompt for eval_file: direct | st-cot"})
    eval_max_samples: int = field(default=0, metadata={"help": "score at most this many bench entries (0 = all)"})
    eval_max_new_tokens: int = field(default=96, metadata={"help": "generation budget per bench answer"})


@dataclass
class SFTConfig(merge_config_classes("SFTFields", ModelArgs, RunArgs,
                                     with_defaults(VideoArgs, max_pixels=112 * 112, min_pixels=784),
                                     with_defaults(LoraArgs, lora_dropout=0.05), SFTArgs)):
    """Options of ``mllm4d sft`` (SFT and cold start)."""

    def __post_init__(self) -> None:
        normalise_unset(self)

    def validate(self) -> None:
        check_shared(self)
        if self.eval_mode not in ("direct", "st-cot"):
            raise ConfigError(f"`eval_mode: {self.eval_mode}` is not one of direct, st-cot")
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


def plot_loss(metrics_path: Path, out_png: Path, title: str) -> None:
    """Loss (and lr) against step from metrics.jsonl."""
    from mllm4d_lite.io import pyplot
    from mllm4d_lite.train.callbacks import read_metrics

    plt = pyplot()
    rows = read_metrics(metrics_path)
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


def quick_eval(model, processor, entries: Sequence[dict[str, Any]], cache, mode: str = "direct",
               batch_size: int = 8, max_new_tokens: int = 96) -> dict[str, Any]:
    """Answer VLM4D-format entries greedily and score them as ``mllm4d eval run`` does (its batch
    loop, :func:`mllm4d_lite.eval.evaluate.answer_entries`), frames from ``cache``.

    Returns ``{"n", "accuracy", "by_category": {cat: {"n", "accuracy"}}, "format_rate", "predictions"}``;
    ``format_rate`` is the share of replies that follow the ST-CoT format (meaningful in st-cot mode).
    """
    from mllm4d_lite.eval.answers import follows_st_cot_format
    from mllm4d_lite.eval.evaluate import answer_entries

    model.eval()
    preds = []
    todo = [(e, e["video_path"]) for e in entries]
    for batch, _ in answer_entries(model, processor, todo, cache.get, mode, max_new_tokens, batch_size, f"({mode})"):
        preds += [{"id": p["id"], "category": p.get("category", "?"), "response": p["response"],
                   "extracted": p["extracted"], "score": p["score"], "format_ok": follows_st_cot_format(p["response"])}
                  for p in batch]
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


def trainer_args(cfg: SFTConfig, device: str, torch_dtype):
    """``trl.SFTConfig`` for the stage's ``SFTConfig``."""
    import torch
    import trl

    return trl.SFTConfig(
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


def run(cfg: SFTConfig, return_trainer: bool = False):
    """Run one SFT / cold-start stage; returns a summary dict (also written to ``summary.json``),
    or ``(summary, trainer)`` with ``return_trainer`` (tests inspect ``trainer.model``)."""
    import torch
    from transformers import set_seed

    from mllm4d_lite.train.callbacks import (follow_thread_share, peak_memory_gb, quiet_progress, sft_metrics_callback,
                                             trim_metrics)
    from mllm4d_lite.train.checkpoints import checkpoint_step, checkpoint_to_resume, resume_point, save_adapter
    from mllm4d_lite.train.collator import VideoSFTCollator, sample_cost
    from mllm4d_lite.train.distributed import (is_main_process, same_data_callback, share_from_main,
                                               whole_lora_weights)
    from mllm4d_lite.train.loading import (check_gpu_only_settings, load_model_and_processor, parameter_sharding,
                                           pick_device, pick_dtype, unsloth_importable)
    from mllm4d_lite.train.lora import attach_lora, attach_lora_unsloth, keep_lora_fp32
    from mllm4d_lite.train.records import DataError, load_records, records_by_category
    from mllm4d_lite.train.video_inputs import VideoCache, check_videos

    device = pick_device(cfg.device)
    check_gpu_only_settings(device, use_unsloth=cfg.use_unsloth, cpu_recipe="recipes/tiny/sft.yaml (or cold_start.yaml)")
    if cfg.eval_file and parameter_sharding() == "DeepSpeed ZeRO-3":  # rank 0 would score its shards
        raise ConfigError(f"`eval_file: {cfg.eval_file}` under DeepSpeed ZeRO-3: the model is sharded over the "
                          "processes; leave eval_file unset and score the adapter afterwards with "
                          "`mllm4d eval run --adapter <output_dir>/adapter`")
    out = Path(cfg.output_dir)
    main_rank = is_main_process()  # under accelerate launch, rank 0 alone writes (mllm4d_lite/train/distributed.py)
    resume_from = checkpoint_to_resume(out) if cfg.resume and main_rank else None
    if main_rank:
        prepare_output_dir(out, "--output-dir")  # a file, read-only: one error line before any work
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    set_seed(cfg.seed)

    records = load_records(cfg.train_file, cfg.max_train_samples or None, seed=cfg.seed,
                           categories=cfg.train_categories)
    cache = VideoCache(cfg.num_frames, blank=cfg.blind, keep=cfg.cache_videos)
    records, skipped = check_videos(records, cache)
    if not records:
        raise DataError(f"{cfg.train_file}: no record has a readable video ({len(skipped)} skipped)")
    if main_rank:
        resume_from = resume_point(cfg, out, out, resume_from)  # changed records or settings: not resumed
        save_resolved(cfg, out)
    resume_from = share_from_main(resume_from, device)  # every rank resumes where rank 0 does
    log.info("%d training records from %s (%d skipped), categories %s%s", len(records), cfg.train_file,
             len(skipped), records_by_category(records), " [BLIND: frames blanked]" if cfg.blind else "")

    model, processor = load_model_and_processor(
        cfg.model, device=device, quant=cfg.quant, dtype=cfg.dtype, use_unsloth=cfg.use_unsloth,
        max_pixels=cfg.max_pixels, min_pixels=cfg.min_pixels, gradient_checkpointing=cfg.gradient_checkpointing,
        trainable_adapter=True, shape_layers=cfg.shape_layers)
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

    collator = VideoSFTCollator(processor, cache)
    cost = sample_cost(processor, collator, records)
    per_step = cost["total_tokens_mean"] * cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps
    log.info("sample cost: %d frames of %dx%d -> %d px/frame (max_pixels %s) -> %d visual tokens; "
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
    if resume_from is None and main_rank:
        metrics_path.unlink(missing_ok=True)
    elif main_rank:
        trim_metrics(metrics_path, checkpoint_step(resume_from))

    torch_dtype = pick_dtype(cfg.dtype, device)
    trainer = SFTTrainer(model=model, args=trainer_args(cfg, device, torch_dtype), data_collator=collate,
                         train_dataset=dataset, processing_class=processor,
                         callbacks=[sft_metrics_callback(metrics_path, collator, device),
                                    same_data_callback(records, cfg.train_file)])
    if cfg.lora_fp32:
        keep_lora_fp32(trainer.model)  # TRL casts a 4/8-bit model's LoRA to bf16
    quiet_progress(trainer)
    follow_thread_share(trainer)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    train_s = time.perf_counter() - t0

    with whole_lora_weights(trainer.model):  # ZeRO-3: gathered on every rank, saved by rank 0
        adapter_dir = save_adapter(trainer.model, out / "adapter") if main_rank else out / "adapter"
    if metrics_path.exists() and main_rank:
        plot_loss(metrics_path, out / "loss.png", f"{Path(cfg.train_file).name} ({cfg.model})")

    summary: dict[str, Any] = {
        "adapter": str(adapter_dir), "train_records": len(records), "skipped_records": skipped,
        "steps": int(trainer.state.global_step), "final_loss": float(result.training_loss),
        "train_s": round(train_s, 1), "peak_mem_gb": round(peak_memory_gb(device), 3),
        "sample_cost": cost, "blind": cfg.blind, "device": device}
    if cfg.eval_file and main_rank:
        entries = load_records(cfg.eval_file, cfg.eval_max_samples or None, seed=cfg.seed)
        entries, eval_skipped = check_videos(entries, cache)
        result_eval = quick_eval(trainer.model, processor, entries, cache, mode=cfg.eval_mode,
                                 max_new_tokens=cfg.eval_max_new_tokens)
        atomic_write_json(out / "eval.json", {**result_eval, "skipped": eval_skipped})
        summary["eval"] = {k: v for k, v in result_eval.items() if k != "predictions"}
    if main_rank:
        atomic_write_json(out / "summary.json", summary)
    return (summary, trainer) if return_trainer else summary


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(SFTConfig, argv, prog="mllm4d sft",
                       description="SFT / ST-CoT cold start of a Qwen-VL with (Q)LoRA on video QA records.")
    from mllm4d_lite.train.families import ModelSetupError
    from mllm4d_lite.train.records import DataError

    summary = run_stage("mllm4d sft", run, cfg, (ConfigError, DataError, ModelSetupError), cfg.output_dir,
                        "--output-dir")
    if summary is None:
        return 2
    line = (f"sft: {summary['steps']} steps on {summary['train_records']} records "
            f"({len(summary['skipped_records'])} skipped) in {summary['train_s']:.0f} s, "
            f"final loss {summary['final_loss']:.4f}, adapter -> {summary['adapter']}")
    if "eval" in summary:
        e = summary["eval"]
        line += f"; eval acc {e['accuracy']:.3f} on {e['n']}, ST-CoT format {e['format_rate']:.2f}"
    from mllm4d_lite.train.distributed import is_main_process

    if is_main_process():
        print(line)
    return 0


__all__ = ["SFTArgs", "SFTConfig", "main", "plot_loss", "quick_eval", "run", "trainer_args"]
