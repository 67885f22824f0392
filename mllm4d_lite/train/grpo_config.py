"""The options of ``mllm4d grpo``: the shared model / video / LoRA / run groups plus GRPO's own.

Defaults are the paper's sampling and KL values with CPU-sized batches; each profile's values are
in ``recipes/<profile>/grpo.yaml``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mllm4d_lite.config import merge_config_classes
from mllm4d_lite.train.args import LoraArgs, ModelArgs, RunArgs, VideoArgs, check_shared, normalise_unset, with_defaults
from mllm4d_lite.train.rewards import REWARD_NAMES


@dataclass
class GRPOArgs:
    """The settings only ``mllm4d grpo`` has."""

    max_samples: int | None = field(default=None, metadata={"help": "use a seeded subset of this many records"})
    balance_answers: bool = field(default=True, metadata={
        "help": "max_samples takes each right answer in turn, so a small prompt pool cannot reward a bias "
                "towards one answer (false: a plain random subset)"})
    balance_categories: bool = field(default=True, metadata={
        "help": "max_samples takes each question category in turn first (then each right answer within "
                "it, with balance_answers), so categories whose answers are all distinct (absent objects, "
                "distances) do not crowd out the others"})
    reward_funcs: list[str] = field(default_factory=lambda: ["format", "accuracy", "camera", "object"],
                                    metadata={"help": "ST-reward terms to use (ablation: leave some out)"})
    reward_weights: list[float] = field(default_factory=lambda: [0.2, 0.6, 0.1, 0.1],
                                        metadata={"help": "weights, same order as reward_funcs (release 0.2/0.6/0.1/0.1)"})
    strict_release_rewards: bool = field(default=False, metadata={
        "help": "use the released reward formulas exactly (docs/method.md, deviations D1-D7 off)"})
    use_st_cot_prompt: bool = field(default=True, metadata={
        "help": "ST-CoT system prompt + think/answer instruction; false = direct prompt (ablation)"})
    num_generations: int = field(default=4, metadata={"help": "completions per prompt (paper 12)"})
    steps_per_generation: int | None = field(default=None, metadata={
        "help": "micro-batches each generation batch is split into (TRL's steps_per_generation): "
                "per_device_train_batch_size x this x processes completions are generated at once and must be "
                "whole prompt groups of num_generations; a smaller micro-batch with more of these trades time for "
                "memory (unset = gradient_accumulation_steps, TRL's default: one generation batch per optimizer "
                "step)"})
    max_completion_length: int = field(default=96, metadata={"help": "max new tokens per completion (paper 4096)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (paper 1.0)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling of the completions (1.0 = off, the paper)"})
    top_k: int = field(default=0, metadata={"help": "sample among the k likeliest tokens only (0 = off, the paper)"})
    min_p: float = field(default=0.0, metadata={
        "help": "drop tokens below min_p x the likeliest token's probability when sampling (0 = off, the paper)"})
    beta: float = field(default=0.001, metadata={"help": "KL coefficient (paper 0.001; TRL's default 0)"})
    scale_rewards: str = field(default="group", metadata={
        "help": "advantage scaling: group (divide by the group's reward std, GRPO as published) | batch | "
                "none (Dr. GRPO: keep the reward scale, so tiny differences stay tiny)"})
    loss_type: str = field(default="dapo", metadata={
        "help": "how token losses are averaged (TRL): dapo (over all tokens of the batch, TRL's default) | "
                "grpo (per completion, then over completions, GRPO as published) | bnpo | dr_grpo"})
    top_entropy_quantile: float = field(default=1.0, metadata={
        "help": "train only on this top fraction of completion tokens by entropy (1.0 = all, the paper)"})
    num_iterations: int = field(default=1, metadata={
        "help": "optimizer steps per generated batch (PPO-style reuse, clipped by epsilon; 1 = the paper)"})
    optim: str | None = field(default=None, metadata={
        "help": "transformers optimizer name, e.g. sgd (none = transformers' AdamW default, as the paper)"})
    use_vllm: bool = field(default=False, metadata={
        "help": "generate the rollouts with vLLM, which gets each prompt's frames (mllm4d_lite/train/vllm_video.py); "
                "needs a CUDA GPU with vLLM installed (docs/stack.md, vLLM); false = transformers generation"})
    vllm_mode: str = field(default="colocate", metadata={
        "help": "use_vllm: colocate (a vLLM engine inside each training process, one GPU) | server (a "
                "`trl vllm-serve` server on other GPUs, at vllm_server_url)"})
    vllm_server_url: str = field(default="http://localhost:8000", metadata={
        "help": "vllm_mode server: base URL of the `trl vllm-serve` server"})
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata={
        "help": "vllm_mode colocate: share of the GPU's memory vLLM may take (weights + KV cache); training gets the rest"})
    sample_every: int = field(default=10, metadata={"help": "write one prompt's completions every N steps"})


@dataclass
class GRPOConfig(merge_config_classes(
        "GRPOFields", ModelArgs,
        with_defaults(RunArgs, train_file="runs/tiny/data/rft.jsonl", output_dir="runs/grpo", learning_rate=1e-4,
                      lr_scheduler_type="constant", max_steps=40, per_device_train_batch_size=8, logging_steps=1,
                      save_steps=20),
        VideoArgs, with_defaults(LoraArgs, lora_r=16, lora_alpha=32), GRPOArgs)):
    """Options of ``mllm4d grpo``."""

    def __post_init__(self) -> None:
        normalise_unset(self)

    def validate(self) -> None:
        check_shared(self)
        unknown = [n for n in self.reward_funcs if n not in REWARD_NAMES]
        if unknown or not self.reward_funcs:
            raise ValueError(f"`reward_funcs: {self.reward_funcs}`: choose one or more of {list(REWARD_NAMES)}")
        if len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(f"`reward_weights` has {len(self.reward_weights)} values for {len(self.reward_funcs)} "
                             f"reward_funcs {self.reward_funcs}; give one weight per reward, in the same order")
        if self.num_generations < 2:
            raise ValueError(f"`num_generations: {self.num_generations}`: GRPO needs >= 2 completions per prompt")
        if self.steps_per_generation is not None and self.steps_per_generation < 1:
            raise ValueError(f"`steps_per_generation: {self.steps_per_generation}` must be >= 1 (or unset: "
                             "gradient_accumulation_steps)")
        if self.generation_batch() % self.num_generations:
            raise ValueError(self._generation_batch_error())
        if self.beta < 0 or self.temperature <= 0 or self.learning_rate <= 0:
            raise ValueError("`beta` must be >= 0, `temperature` and `learning_rate` > 0")
        if not (0 < self.top_p <= 1) or self.top_k < 0:
            raise ValueError(f"`top_p: {self.top_p}` must be in (0, 1] and `top_k: {self.top_k}` >= 0")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"`min_p: {self.min_p}` must be in [0, 1)")
        if not 0 <= self.top_entropy_quantile <= 1:
            raise ValueError(f"`top_entropy_quantile: {self.top_entropy_quantile}` must be in [0, 1]")
        if self.num_iterations < 1:
            raise ValueError(f"`num_iterations: {self.num_iterations}` must be >= 1")
        if self.loss_type not in ("dapo", "grpo", "bnpo", "dr_grpo"):
            raise ValueError(f"`loss_type: {self.loss_type}`: use dapo, grpo, bnpo or dr_grpo")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ValueError(f"`scale_rewards: {self.scale_rewards}`: use group, batch or none")
        if self.max_completion_length < 1:
            raise ValueError(f"`max_completion_length: {self.max_completion_length}` must be >= 1 (the reply budget "
                             "in tokens; the tiny recipe uses 256)")
        if self.vllm_mode not in ("colocate", "server"):
            raise ValueError(f"`vllm_mode: {self.vllm_mode}`: use colocate or server")
        if not 0 < self.vllm_gpu_memory_utilization < 1:
            raise ValueError(f"`vllm_gpu_memory_utilization: {self.vllm_gpu_memory_utilization}` must be in (0, 1)")
        if self.max_steps == 0 or self.sample_every < 1 or self.logging_steps < 1:
            raise ValueError("`max_steps` must be -1 or > 0; `sample_every` and `logging_steps` >= 1")

    def generation_batch(self, num_processes: int | None = None) -> int:
        """Completions generated at once, as TRL 1.16 sizes its generation batch:
        ``per_device_train_batch_size x num_processes x steps_per_generation`` (unset:
        ``gradient_accumulation_steps``). TRL requires it, not the micro-batch, to hold whole prompt
        groups. ``num_processes`` defaults to ``WORLD_SIZE`` (set by ``accelerate launch``), else 1."""
        if num_processes is None:
            num_processes = int(os.environ.get("WORLD_SIZE", "1") or 1)
        steps = self.steps_per_generation or self.gradient_accumulation_steps
        return self.per_device_train_batch_size * num_processes * steps

    def _generation_batch_error(self) -> str:
        pdb, ng = self.per_device_train_batch_size, self.num_generations
        if self.generation_batch() == pdb:  # one micro-batch per generation batch
            return f"`per_device_train_batch_size: {pdb}` must be a multiple of `num_generations: {ng}`"
        name = "steps_per_generation" if self.steps_per_generation else "gradient_accumulation_steps"
        steps = self.steps_per_generation or self.gradient_accumulation_steps
        procs = self.generation_batch() // (pdb * steps)
        return (f"the generation batch, `per_device_train_batch_size: {pdb}` x `{name}: {steps}`"
                + (f" x {procs} processes" if procs > 1 else "")
                + f" = {self.generation_batch()} completions, must be a multiple of `num_generations: {ng}` "
                "(whole prompt groups); change one of them")

    def prompts_per_step(self, num_processes: int = 1) -> float:
        """New prompts drawn per optimizer step (each batch is reused ``num_iterations`` times)."""
        return (self.per_device_train_batch_size * self.gradient_accumulation_steps * num_processes
                / self.num_generations / self.num_iterations)


def trl_vllm_args(cfg: GRPOConfig) -> dict:
    """The ``trl.GRPOConfig`` keywords of the vLLM settings (none without ``use_vllm``)."""
    if not cfg.use_vllm:
        return {}
    return {"use_vllm": True, "vllm_mode": cfg.vllm_mode, "vllm_server_base_url": cfg.vllm_server_url,
            "vllm_gpu_memory_utilization": cfg.vllm_gpu_memory_utilization,
            "vllm_tensor_parallel_size": 1}  # the kit's requests go to one engine per process
