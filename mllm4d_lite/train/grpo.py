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
``run_key.json`` (what the checkpoints were trained on, see
:func:`mllm4d_lite.train.checkpoints.resume_point`), ``summary.json``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

from mllm4d_lite.config import ConfigError, parse_config, save_resolved
from mllm4d_lite.io import atomic_write_json, prepare_output_dir, run_stage
from mllm4d_lite.train.grpo_config import GRPOConfig, trl_vllm_args
from mllm4d_lite.train.grpo_data import load_pool
from mllm4d_lite.train.grpo_metrics import category_fifths, fifth_means, fifths_see_same_prompts, plot_reward_curve

log = logging.getLogger(__name__)


def check_setup(cfg: GRPOConfig, device: str) -> None:
    """Refuse settings that cannot work here (GPU-only ones on a CPU: Unsloth, vLLM generation, which
    needs vLLM installed and a CUDA GPU; the kit then sends vLLM the frames, see
    :mod:`mllm4d_lite.train.vllm_video`)."""
    from mllm4d_lite.train.loading import check_gpu_only_settings

    check_gpu_only_settings(device, use_unsloth=cfg.use_unsloth, use_vllm=cfg.use_vllm)


def build_trainer(cfg: GRPOConfig, records: Sequence[dict[str, Any]] | None = None, fresh: bool | None = None):
    """Model, processor, dataset and :class:`VideoGRPOTrainer` for ``cfg`` (nothing trained yet).

    A record whose prompt text holds one of the model's chat special tokens is refused
    (:class:`~mllm4d_lite.train.records.DataError` naming the file and the record). ``fresh``: start
    ``samples.jsonl`` anew (default: unless ``cfg.resume``)."""
    import torch
    import trl
    from peft import LoraConfig
    from transformers import set_seed

    from mllm4d_lite.train.callbacks import follow_thread_share, quiet_progress
    from mllm4d_lite.train.grpo_data import build_dataset
    from mllm4d_lite.train.grpo_metrics import grpo_metrics_callback, sample_writer
    from mllm4d_lite.train.distributed import is_main_process, same_data_callback
    from mllm4d_lite.train.grpo_trainer import VideoGRPOTrainer, vision_token_ids
    from mllm4d_lite.train.loading import load_model_and_processor, pick_device, pick_dtype
    from mllm4d_lite.train.lora import keep_lora_fp32, lora_target_regex
    from mllm4d_lite.train.records import check_record_text, model_special_tokens
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
    # text that reaches the chat template must not act as chat structure (an injected assistant turn)
    check_record_text(records, model_special_tokens(processor))
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
        **trl_vllm_args(cfg),  # use_vllm: vLLM generation that gets the frames (grpo_trainer.py)
        disable_tqdm=False,
        **({"optim": cfg.optim} if cfg.optim else {}),
    )
    reward_funcs = get_reward_funcs(cfg.reward_funcs, strict_release=cfg.strict_release_rewards)
    main_rank = is_main_process()  # under accelerate launch, rank 0 alone writes (mllm4d_lite/train/distributed.py)
    writer = sample_writer(out_dir, cfg.reward_funcs, cfg.num_generations,
                           fresh=not cfg.resume if fresh is None else fresh) if main_rank else None
    trainer = VideoGRPOTrainer(model=model, reward_funcs=reward_funcs, args=args,
                               train_dataset=build_dataset(records, cache, cfg.use_st_cot_prompt),
                               processing_class=processor, peft_config=peft_config,
                               sample_writer=writer, sample_every=cfg.sample_every)
    if cfg.lora_fp32:
        keep_lora_fp32(trainer.model)  # TRL casts a 4/8-bit model's LoRA to bf16
    if main_rank:  # TRL's logs are gathered over the processes: rank 0's rows cover the whole batch
        trainer.add_callback(grpo_metrics_callback(out_dir, cfg.reward_funcs, cfg.max_steps, device))
    trainer.add_callback(same_data_callback(records, cfg.train_file))
    quiet_progress(trainer)
    follow_thread_share(trainer)
    return trainer


def run(cfg: GRPOConfig) -> dict[str, Any]:
    """Train, save ``adapter/``, metrics, curve and summary; return the summary."""
    from mllm4d_lite.train.callbacks import peak_memory_gb, read_metrics, trim_metrics
    from mllm4d_lite.train.checkpoints import checkpoint_step, checkpoint_to_resume, resume_point, save_adapter
    from mllm4d_lite.train.distributed import is_main_process, share_from_main, whole_lora_weights
    from mllm4d_lite.train.loading import pick_device

    out_dir = Path(cfg.output_dir)
    main_rank = is_main_process()  # under accelerate launch, rank 0 alone writes (mllm4d_lite/train/distributed.py)
    resume_from = checkpoint_to_resume(out_dir / "checkpoints") if cfg.resume and main_rank else None
    if main_rank:
        prepare_output_dir(out_dir, "--output-dir")  # a file, read-only: one error line before any work
    records = load_pool(cfg)
    if main_rank:
        # changed records, cold-start adapter or settings: not resumed (run_key.json)
        resume_from = resume_point(cfg, out_dir, out_dir / "checkpoints", resume_from)
        if resume_from is not None:  # a sample logged at global step s was drawn for step s + 1
            trim_metrics(out_dir / "samples.jsonl", checkpoint_step(resume_from) - 1)
        save_resolved(cfg, out_dir)
    resume_from = share_from_main(resume_from, pick_device(cfg.device))  # every rank resumes where rank 0 does
    trainer = build_trainer(cfg, records, fresh=resume_from is None)
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from)
    elapsed_s = time.perf_counter() - t0

    adapter_dir = out_dir / "adapter"
    with whole_lora_weights(trainer.model):  # ZeRO-3: gathered on every rank, saved by rank 0
        if main_rank:
            save_adapter(trainer.model, adapter_dir, selected_adapters=["default"])

    rows = read_metrics(out_dir / "metrics.jsonl")
    if rows and main_rank:
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
    if main_rank:
        atomic_write_json(out_dir / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(GRPOConfig, argv, prog="mllm4d grpo",
                       description="GRPO with the ST-CoT prompt and the ST-reward (TRL GRPOTrainer, LoRA).")
    from mllm4d_lite.train.families import ModelSetupError
    from mllm4d_lite.train.records import DataError

    summary = run_stage("mllm4d grpo", run, cfg, (ConfigError, DataError, ModelSetupError), cfg.output_dir,
                        "--output-dir")
    if summary is None:
        return 2
    fmt = summary["format_last"]
    from mllm4d_lite.train.distributed import is_main_process

    if not is_main_process():
        return 0
    print(f"grpo: {summary['steps']} steps in {summary['elapsed_s']:.0f} s ({summary['s_per_step']:.2f} s/step) | "
          f"reward {summary['reward_first_fifth']:.3f} -> {summary['reward_last_fifth']:.3f} (first/last fifth"
          f"{', same prompts' if summary['fifths_see_same_prompts'] else ', different prompts'}) | "
          f"format {'n/a' if fmt is None else f'{fmt:.2f}'} (last step) | adapter -> {summary['adapter']}")
    return 0


__all__ = ["GRPOConfig", "build_trainer", "check_setup", "main", "run"]
