"""Settings the SFT and GRPO stages share, as groups their configs are composed of.

:class:`ModelArgs` (model, adapter, device, dtype, quantisation), :class:`VideoArgs` (frames and
pixel budget), :class:`LoraArgs` (a fresh adapter's rank, alpha, dropout, targets) and
:class:`RunArgs` (data, output, optimizer schedule, steps, batch, logging, seed) are merged with
each stage's own fields by :func:`mllm4d_lite.config.merge_config_classes`, so recipes and command
lines stay flat (``lora_r: 32``, ``--lora-r 32``). A stage keeps its own defaults through
:func:`with_defaults`.

Unset is spelt one way: ``device: auto``, ``dtype: auto``, ``quant: none`` (a ``null`` from an
older ``config.yaml`` is read as the same, see :func:`normalise_unset`).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from mllm4d_lite.config import ConfigError

QUANT_CHOICES = ("none", "4bit", "8bit")
LLM_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
UNSET = {"device": "auto", "dtype": "auto", "quant": "none"}


@dataclass
class ModelArgs:
    """The model a stage trains, and how it is loaded."""

    model: str = field(default="tiny", metadata={
        "help": "tiny | tiny-motion | tiny-qwen3-vl | shapes:qwen2.5-vl-3b | shapes:qwen3-vl-4b | "
                "shapes:qwen3-vl-8b | model folder | hub name"})
    shape_layers: int = field(default=0, metadata={
        "help": "shapes:* models only: decoder layers and vision blocks to build (0 = full depth)"})
    adapter_init: str | None = field(default=None, metadata={
        "help": "LoRA adapter folder to start from and keep training (cold start: the SFT adapter; GRPO: the "
                "cold-start adapter, a frozen copy of which is the KL reference); unset = a fresh LoRA "
                "(GRPO: KL reference = the base model)"})
    quant: str | None = field(default="none", metadata={"help": "none | 4bit (NF4 QLoRA) | 8bit"})
    lora_fp32: bool = field(default=True, metadata={
        "help": "keep the trained LoRA weights, and so their gradients and AdamW moments, in fp32 (TRL casts them "
                "to bf16 for 4/8-bit models, which rounds away AdamW updates at the paper's SFT learning rate; "
                "docs/stack.md); false = TRL's bf16, 8 bytes less per LoRA parameter"})
    use_unsloth: bool = field(default=False, metadata={"help": "Unsloth's vision loader (CUDA only)"})
    dtype: str | None = field(default="auto", metadata={"help": "auto | float32 | bfloat16 | float16"})
    device: str | None = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations (saves memory)"})
    num_threads: int = field(default=0, metadata={
        "help": "torch CPU threads (0 = torch's default; 1 is fastest for the tiny model on a busy CPU)"})


@dataclass
class VideoArgs:
    """What the model sees of each clip."""

    num_frames: int = field(default=8, metadata={
        "help": "frames sampled per video, first and last included (paper: up to 32)"})
    max_pixels: int | None = field(default=None, metadata={
        "help": "per-frame pixel budget (paper: 50176 = 224x224; unset = the processor's)"})
    min_pixels: int | None = field(default=None, metadata={
        "help": "per-frame pixel floor (paper: 784 = 28x28; unset = the processor's)"})
    blind: bool = field(default=False, metadata={"help": "blank all video frames (the blind control)"})


@dataclass
class LoraArgs:
    """A fresh LoRA adapter (an ``adapter_init`` brings its own)."""

    lora_r: int = field(default=8, metadata={"help": "LoRA rank (paper: 128)"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (paper: 256)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(LLM_TARGETS),
        metadata={"help": "LLM Linear names (matched as name suffixes inside the language model); SFT also takes "
                          "full-name regexes (e.g. 'model\\.visual\\.blocks\\.\\d+\\.attn\\.qkv'); each must match "
                          "a module"})


@dataclass
class RunArgs:
    """Data in, outputs out, and the optimizer's schedule."""

    train_file: str = field(default="runs/tiny/data/sft.jsonl", metadata={
        "help": "training records: sft.jsonl or cot.jsonl (SFT, cold start), rft.jsonl (GRPO)"})
    train_categories: list[str] = field(default_factory=list, metadata={
        "help": "train only on records of these question categories (empty = all)"})
    output_dir: str = field(default="runs/sft", metadata={"help": "adapter, metrics, checkpoints go here"})
    learning_rate: float = field(default=2e-5, metadata={"help": "peak learning rate (paper: SFT 2e-5, GRPO 1e-4)"})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "transformers scheduler name"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "epochs (when max_steps is -1)"})
    max_steps: int = field(default=-1, metadata={"help": "optimizer steps (-1 = from epochs)"})
    per_device_train_batch_size: int = field(default=1, metadata={
        "help": "samples per forward (GRPO: completions per micro-batch; the generation batch, this x "
                "steps_per_generation, must be a multiple of num_generations)"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "forwards per optimizer step"})
    logging_steps: int = field(default=10, metadata={"help": "log a metrics line every N steps"})
    save_steps: int = field(default=200, metadata={"help": "checkpoint every N steps (for --resume)"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept"})
    seed: int = field(default=0, metadata={"help": "random seed (LoRA init, data order, sampling)"})
    resume: bool = field(default=False, metadata={"help": "continue from the last checkpoint in output_dir"})


def with_defaults(cls: type, **defaults: Any) -> type:
    """``cls`` with other defaults for some of its fields (same names, types and help): each
    stage composes the shared groups with its own defaults."""
    unknown = sorted(set(defaults) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {unknown}")
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        if f.name in defaults:
            value = defaults[f.name]
            spec = (field(default_factory=lambda v=value: list(v), metadata=f.metadata) if isinstance(value, list)
                    else field(default=value, metadata=f.metadata))
        elif f.default_factory is not dataclasses.MISSING:
            spec = field(default_factory=f.default_factory, metadata=f.metadata)
        else:
            spec = field(default=f.default, metadata=f.metadata)
        fields.append((f.name, hints[f.name], spec))
    return dataclasses.make_dataclass(cls.__name__, fields)


def normalise_unset(cfg: Any) -> None:
    """Spell an unset ``device`` / ``dtype`` / ``quant`` the one way (``auto`` / ``auto`` / ``none``):
    ``None`` (an older run's ``config.yaml``) and ``""`` mean the same."""
    for name, unset in UNSET.items():
        if getattr(cfg, name) in (None, ""):
            setattr(cfg, name, unset)


def check_shared(cfg: Any) -> None:
    """The checks every stage config composed of :class:`ModelArgs` and :class:`VideoArgs` makes."""
    if cfg.quant not in QUANT_CHOICES:
        raise ConfigError(f"`quant: {cfg.quant}` is not one of none, 4bit, 8bit")
    if cfg.shape_layers < 0:
        raise ConfigError(f"`shape_layers: {cfg.shape_layers}` must be >= 0 (0 = full depth)")
    if cfg.num_frames < 2:
        raise ConfigError(f"`num_frames: {cfg.num_frames}` must be >= 2 (the temporal patch is 2 frames)")
    if cfg.min_pixels is not None and cfg.max_pixels is not None and cfg.min_pixels > cfg.max_pixels:
        raise ConfigError(f"`min_pixels: {cfg.min_pixels}` exceeds `max_pixels: {cfg.max_pixels}`")
