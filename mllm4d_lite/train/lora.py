"""Where LoRA goes: the Linear modules a recipe's ``lora_target_modules`` name, checked against the model.

SFT wraps the model itself (:func:`attach_lora`: a new adapter, or the one ``adapter_init`` names
to continue training it); GRPO hands TRL a peft config whose targets are
:func:`lora_target_regex`. The vision tower stays frozen unless a target names its layers by a
full-name regex; ``train_merger`` adds the vision-language merger.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from mllm4d_lite.config import ConfigError
from mllm4d_lite.train.loading import warn_if_adapter_base_differs

if TYPE_CHECKING:
    from mllm4d_lite.train.sft import SFTConfig

log = logging.getLogger(__name__)


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


def attach_lora(model, cfg: SFTConfig):
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
        warn_if_adapter_base_differs(cfg.adapter_init, cfg.model, cfg.shape_layers)
        return PeftModel.from_pretrained(model, cfg.adapter_init, is_trainable=True)
    targets = resolve_lora_targets(model, cfg.lora_target_modules, cfg.train_merger)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def keep_lora_fp32(model) -> int:
    """Cast the trainable LoRA weights of ``model`` that are bf16/fp16 back to fp32, in place;
    returns how many tensors were cast.

    TRL 1.16's ``SFTTrainer`` and ``GRPOTrainer`` cast every trainable parameter of a 4/8-bit
    model to bf16 (peft itself keeps adapters of a bf16 base in fp32). In bf16 an AdamW update
    smaller than half the spacing of bf16 values around a weight is rounded away: at lr 2e-5
    ~43 % of ``lora_A`` entries stay unchanged after a step (docs/results.md §10). Call it after
    the trainer is built and before ``train()`` creates the optimizer; fp32 LoRA weights work
    with a bf16 or 4-bit base (peft casts the LoRA input to the adapter's dtype, or autocast does).
    """
    import torch

    cast = 0
    for name, param in model.named_parameters():
        if param.requires_grad and "lora_" in name and param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.float()
            cast += 1
    if cast:
        log.info("LoRA weights kept in fp32 (%d tensors cast back from bf16/fp16; lora_fp32: true)", cast)
    return cast


def attach_lora_unsloth(model, cfg: SFTConfig):
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


def lora_target_regex(names: Sequence[str]) -> str:
    """A peft ``target_modules`` regex: the named projections of the LLM, never the vision tower."""
    return r"^(?!.*visual).*\.(" + "|".join(re.escape(n) for n in names) + r")$"
