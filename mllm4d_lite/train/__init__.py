"""Phases 2-3: SFT, ST-CoT cold start and GRPO of a Qwen-VL with (Q)LoRA; the ST-reward.

Stages: :mod:`~mllm4d_lite.train.sft` (``mllm4d sft``) and :mod:`~mllm4d_lite.train.grpo`
(``mllm4d grpo``, with ``grpo_config``, ``grpo_data``, ``grpo_trainer``, ``grpo_metrics``), their
shared settings (``args``) and the ST-reward (``rewards``, ``reward_inputs``).
Models: ``families`` (what differs between Qwen2.5-VL and Qwen3-VL), ``tiny_model`` (the offline
tiny model), ``loading`` (devices, dtype, quantisation, adapters), ``lora`` (where LoRA goes).
Inputs: ``records`` (training records), ``video_inputs`` (frames, chat, generation), ``collator``
(SFT batches), ``toy_data`` (a toy left/right set). Runs: ``callbacks`` (progress, CPU threads,
metrics.jsonl), ``checkpoints`` (adapter saving, resuming).
"""
