"""``mllm4d grpo``: reinforcement fine-tuning with the ST-CoT prompt and the ST-reward.

The method's last training stage (docs/method.md): start from the cold-start adapter, sample
``num_generations`` ST-CoT replies per video question, score them with the four ST-reward terms
(:mod:`mllm4d_lite.train.rewards`, weights from the recipe) and update the LoRA weights with TRL's
``GRPOTrainer`` (group-normalised advantages, KL to the cold-start policy with ``beta``), made to
see each prompt's video in every forward (:mod:`mllm4d_lite.train.grpo_trainer`).

    mllm4d grpo --config recipes/tiny/grpo.yaml

Options: :class:`~mllm4d_lite.train.grpo_config.GRPOConfig`; prompts:
:mod:`mllm4d_lite.train.grpo_data`; records of the run: :mod:`mllm4d_lite.train.grpo_metrics`.

Starting point (``adapter_init``): the cold-start adapter is loaded trainable and training goes
on in it; TRL keeps a frozen copy (adapter ``ref``) as the KL reference, so the KL is measured
against the cold-start policy, as in the paper. Without ``adapter_init`` a fresh LoRA on the
LLM's projections is trained and the reference is the base model.

Outputs in ``output_dir``: ``adapter/`` (peft, the ``default`` adapter only), ``config.yaml``,
``metrics.jsonl`` (one line per logging step: reward, each component, the accuracy of each
question category drawn, completion length, KL, s/step, memory), ``reward_curve.png``,
``samples.jsonl`` (completions every ``sample_every`` steps), ``checkpoints/`` (for ``--resume``),
``summary.json``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from mllm4d_lite.config import ConfigError, parse_config, save_resolved
from mllm4d_lite.io import atomic_write_json
from mllm4d_lite.train.grpo_config import GRPOConfig
from mllm4d_lite.train.grpo_data import load_pool
from mllm4d_lite.train.grpo_metrics import category_fifths, fifth_means, fifths_see_same_prompts, plot_reward_curve

log = logging.getLogger(__name__)


def check_setup(cfg: GRPOConfig, device: str) -> None:
    """Refuse settings that cannot work here (GPU-only ones on a CPU, vLLM generation)."""
    from mllm4d_lite.train.families import ModelSetupError
    from mllm4d_lite.train.loading import check_gpu_only_settings

    check_gpu_only_settings(device, use_unsloth=cfg.use_unsloth, use_vllm=cfg.use_vllm)
    if cfg.use_vllm:
        # TRL 1.16's vLLM path (VLLMGeneration.generate) takes token ids + images only: a video
        # prompt would be generated blind. Refuse rather than train on blind rollouts.
        raise ModelSetupError("`use_vllm: true`: TRL 1.16's vLLM generation passes images only, so the kit's video "
                              "prompts would be generated without their frames; set `use_vllm: false` "
                              "(transformers generation, which the kit feeds the video)")


def build_trainer(cfg: GRPOConfig, records: Sequence[dict[str, Any]] | None = None):
    """Model, processor, dataset and :class:`VideoGRPOTrainer` for ``cfg`` (nothing trained yet)."""
    import torch
    import trl
    from peft import LoraConfig
    from transformers import set_seed

    from mllm4d_lite.train.callbacks import follow_thread_share, quiet_progress
    from mllm4d_lite.train.grpo_data import build_dataset
    from mllm4d_lite.train.grpo_metrics import grpo_metrics_callback, sample_writer
    from mllm4d_lite.train.grpo_trainer import VideoGRPOTrainer, vision_token_ids
    from mllm4d_lite.train.loading import load_model_and_processor, pick_device, pick_dtype
    from mllm4d_lite.train.lora import keep_lora_fp32, lora_target_regex
    from mllm4d_lite.train.rewards import get_reward_funcs
    from mllm4d_lite.train.video_inputs import VideoCache, check_videos

    device = pick_device(cfg.device)
    check_setup(cfg, device)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    set_seed(cfg.seed)
    if records is None:
        records = load_pool(cfg)
    cache = VideoCache(cfg.num_frames, blank=cfg.blind)
    records, skipped = check_videos(records, cache)
    if not records:
        from mllm4d_lite.train.records import DataError  # one error line from main(), not a traceback

        raise DataError(f"{cfg.train_file}: no record has a readable video ({len(skipped)} skipped); check the "
                        "records' 'video' paths (relative to the file's folder) and that the videos decode")
    model, processor = load_model_and_processor(
        cfg.model, adapter=cfg.adapter_init, device=device, quant=cfg.quant, dtype=cfg.dtype,
        use_unsloth=cfg.use_unsloth, max_pixels=cfg.max_pixels, min_pixels=cfg.min_pixels,
        gradient_checkpointing=cfg.gradient_checkpointing, trainable_adapter=True, shape_layers=cfg.shape_layers)
    peft_config = None
    if not cfg.adapter_init:
        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=lora_target_regex(cfg.lora_target_modules), task_type="CAUSAL_LM")
    torch_dtype = pick_dtype(cfg.dtype, device)
    suppress = vision_token_ids(processor.tokenizer)
    out_dir = Path(cfg.output_dir)
    args = trl.GRPOConfig(
        output_dir=str(out_dir / "checkpoints"),
        num_generations=cfg.num_generations,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        # unset: TRL's default (gradient_accumulation_steps), exactly as before the setting existed
        **({"steps_per_generation": cfg.steps_per_generation} if cfg.steps_per_generation else {}),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        min_p=cfg.min_p or None,
        beta=cfg.beta,
        scale_rewards=cfg.scale_rewards,
        loss_type=cfg.loss_type,
        top_entropy_quantile=cfg.top_entropy_quantile,
        learning_rate=cfg.learning_rate,
        num_iterations=cfg.num_iterations,
        lr_scheduler_type=cfg.lr_scheduler_type,
        max_steps=cfg.max_steps,
        num_train_epochs=cfg.num_train_epochs,
        reward_weights=list(cfg.reward_weights),
        logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        remove_unused_columns=False,
        use_cpu=(device == "cpu"),
        bf16=(device.startswith("cuda") and torch_dtype == torch.bfloat16),
        fp16=(device.startswith("cuda") and torch_dtype == torch.float16),
        gradient_checkpointing=cfg.gradient_checkpointing,
        generation_kwargs={"suppress_tokens": suppress},  # a sampled vision token would break the next forward
        dataloader_num_workers=0,
        disable_tqdm=False,
        **({"optim": cfg.optim} if cfg.optim else {}),
    )
    reward_funcs = get_reward_funcs(cfg.reward_funcs, strict_release=cfg.strict_release_rewards)
    writer = sample_writer(out_dir, cfg.reward_funcs, cfg.num_generations, fresh=not cfg.resume)
    trainer = VideoGRPOTrainer(model=model, reward_funcs=reward_funcs, args=args,
                               train_dataset=build_dataset(records, cache, cfg.use_st_cot_prompt),
                               processing_class=processor, peft_config=peft_config,
                               sample_writer=writer, sample_every=cfg.sample_every)
    if cfg.lora_fp32:
        keep_lora_fp32(trainer.model)  # TRL casts a 4/8-bit model's LoRA to bf16
    trainer.add_callback(grpo_metrics_callback(out_dir, cfg.reward_funcs, cfg.max_steps, device))
    quiet_progress(trainer)
    follow_thread_share(trainer)
    return trainer


def run(cfg: GRPOConfig) -> dict[str, Any]:
    """Train, save ``adapter/``, metrics, curve and summary; return the summary."""
    from mllm4d_lite.train.callbacks import peak_memory_gb, read_metrics
    from mllm4d_lite.train.checkpoints import checkpoint_step, checkpoint_to_resume, save_adapter
    from mllm4d_lite.train.loading import pick_device

    out_dir = Path(cfg.output_dir)
    resume_from = checkpoint_to_resume(out_dir / "checkpoints") if cfg.resume else None
    out_dir.mkdir(parents=True, exist_ok=True)
    save_resolved(cfg, out_dir)
    trainer = build_trainer(cfg)
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    elapsed_s = time.perf_counter() - t0

    adapter_dir = save_adapter(trainer.model, out_dir / "adapter", selected_adapters=["default"])

    rows = read_metrics(out_dir / "metrics.jsonl")
    if rows:
        plot_reward_curve(rows, cfg.reward_funcs, out_dir / "reward_curve.png")
    first, last = fifth_means([r["reward"] for r in rows])
    num_prompts = len(trainer.train_dataset)
    prompts_per_step = cfg.prompts_per_step(trainer.accelerator.num_processes)
    fmt = [r.get("format") for r in rows if r.get("format") is not None]
    steps = trainer.state.global_step
    done_now = max(1, steps - (checkpoint_step(resume_from) if resume_from else 0))
    summary = {
        "steps": steps,
        "elapsed_s": round(elapsed_s, 2),
        "s_per_step": round(elapsed_s / done_now, 4),
        "reward_first_fifth": first,
        "reward_last_fifth": last,
        "reward_rise": last - first,
        "train_prompts": num_prompts,
        "fifths_see_same_prompts": fifths_see_same_prompts(steps, num_prompts, prompts_per_step),
        "format_last": fmt[-1] if fmt else None,
        "format_last_fifth": fifth_means(fmt)[1] if fmt else None,
        "accuracy_by_category_first_last_fifth": category_fifths(rows),
        "peak_memory_gb": round(peak_memory_gb(pick_device(cfg.device)), 3),
        "adapter": str(adapter_dir),
        "blind": cfg.blind,
        "use_st_cot_prompt": cfg.use_st_cot_prompt,
        "reward_funcs": list(cfg.reward_funcs),
    }
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(GRPOConfig, argv, prog="mllm4d grpo",
                       description="GRPO with the ST-CoT prompt and the ST-reward (TRL GRPOTrainer, LoRA).")
    from mllm4d_lite.train.families import ModelSetupError
    from mllm4d_lite.train.records import DataError

    try:
        summary = run(cfg)
    except (ConfigError, DataError, ModelSetupError) as err:
        sys.stderr.write(f"mllm4d grpo: error: {err}\n")
        return 2
    fmt = summary["format_last"]
    print(f"grpo: {summary['steps']} steps in {summary['elapsed_s']:.0f} s ({summary['s_per_step']:.2f} s/step) | "
          f"reward {summary['reward_first_fifth']:.3f} -> {summary['reward_last_fifth']:.3f} (first/last fifth"
          f"{', same prompts' if summary['fifths_see_same_prompts'] else ', different prompts'}) | "
          f"format {'n/a' if fmt is None else f'{fmt:.2f}'} (last step) | adapter -> {summary['adapter']}")
    return 0


__all__ = ["GRPOConfig", "build_trainer", "check_setup", "main", "run"]
