"""GRPO stage (``mllm4d grpo``): reinforcement fine-tuning with the ST-CoT prompt and the ST-reward.

The method's last training stage (see the kit's method notes): start from the cold-start adapter,
sample ``num_generations`` ST-CoT replies per video question, score them with the four ST-reward
terms (:mod:`mllm4d_lite.train.rewards`, weights from the recipe) and update the LoRA weights with
TRL's ``GRPOTrainer`` (group-normalised advantages, KL to the cold-start policy with ``beta``).

How the video reaches the policy
--------------------------------
TRL 1.16's ``GRPOTrainer`` handles ``image``/``images`` columns only. A video part placed inside
the prompt messages does reach *generation* (the processor's chat template sees it), but TRL
builds the inputs of its log-probability forwards (policy loss, reference model, old policy)
from images alone: a stock trainer computes the GRPO loss on a blind model. :class:`VideoGRPOTrainer`
closes that gap with three small overrides:

- ``_tokenize_prompts``: renders each prompt, runs the processor on its decoded frames
  (:func:`mllm4d_lite.train.model.video_kwargs`), and keeps each row's video features
  (``pixel_values_videos``, ``video_grid_thw``, ``second_per_grid_ts`` for Qwen2.5-VL);
- ``_generate_and_score_completions`` / ``_compute_loss``: make those rows available while TRL
  computes reference / old / policy log-probabilities, and store them (a per-row list, so TRL's
  shuffle and split keep them aligned) in the generation batch;
- ``_get_per_token_logps_and_entropies``: feeds the rows' video features and ``mm_token_type_ids``
  to the model. A batch that holds video tokens without video features raises instead of
  silently running blind, so a future TRL change cannot quietly make the kit blind
  (``tests/test_grpo.py`` checks that blanking the frames changes the policy's log-probs and
  the LoRA gradients).

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

import contextlib
import json
import logging
import math
import re
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mllm4d_lite import prompts
from mllm4d_lite.config import ConfigError, parse_config, save_resolved
from mllm4d_lite.io import atomic_write_json, save_figure

log = logging.getLogger(__name__)

# the four ST-reward terms and their release weights (method notes; the recipe holds the values)
_REWARD_METRIC = {"format": "format_reward", "accuracy": "accuracy_reward", "camera": "camera_reward",
                  "object": "object_reward"}


@dataclass
class GRPOConfigKit:
    """Options of ``mllm4d grpo`` (defaults: the paper's sampling and KL values, CPU-sized batches;
    each profile's values are in ``recipes/<profile>/grpo.yaml``)."""

    model: str = field(default="tiny", metadata={"help": "tiny | tiny-motion | tiny-qwen3-vl | model folder | hub name"})
    adapter_init: str | None = field(default=None, metadata={
        "help": "cold-start adapter folder to continue training (KL reference = a frozen copy of it); "
                "none = fresh LoRA, reference = base model"})
    train_file: str = field(default="runs/tiny/data/rft.jsonl", metadata={"help": "rft.jsonl (GRPO prompts + solutions)"})
    output_dir: str = field(default="runs/grpo", metadata={"help": "output folder"})
    max_samples: int | None = field(default=None, metadata={"help": "use a seeded subset of this many records"})
    balance_answers: bool = field(default=True, metadata={
        "help": "max_samples takes each right answer in turn, so a small prompt pool cannot reward a bias "
                "towards one answer (false: a plain random subset)"})
    balance_categories: bool = field(default=True, metadata={
        "help": "max_samples takes each question category in turn first (then each right answer within "
                "it, with balance_answers), so categories whose answers are all distinct (absent objects, "
                "distances) do not crowd out the others"})
    train_categories: list[str] = field(default_factory=list, metadata={
        "help": "train only on prompts of these question categories (empty = all)"})
    num_frames: int = field(default=8, metadata={"help": "frames per video (paper: up to 32)"})
    max_pixels: int | None = field(default=None, metadata={"help": "per-frame pixel budget (paper SFT: 50176)"})
    min_pixels: int | None = field(default=None, metadata={"help": "per-frame minimum pixels"})
    reward_funcs: list[str] = field(default_factory=lambda: ["format", "accuracy", "camera", "object"],
                                    metadata={"help": "ST-reward terms to use (ablation: leave some out)"})
    reward_weights: list[float] = field(default_factory=lambda: [0.2, 0.6, 0.1, 0.1],
                                        metadata={"help": "weights, same order as reward_funcs (release 0.2/0.6/0.1/0.1)"})
    strict_release_rewards: bool = field(default=False, metadata={
        "help": "use the released reward formulas exactly (see rewards.py D1-D7)"})
    use_st_cot_prompt: bool = field(default=True, metadata={
        "help": "ST-CoT system prompt + think/answer instruction; false = direct prompt (ablation)"})
    num_generations: int = field(default=4, metadata={"help": "completions per prompt (paper 12)"})
    per_device_train_batch_size: int = field(default=8, metadata={
        "help": "completions per optimizer step (a multiple of num_generations)"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "gradient accumulation steps"})
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
    learning_rate: float = field(default=1e-4, metadata={"help": "learning rate (paper 1e-4)"})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "transformers scheduler name"})
    max_steps: int = field(default=40, metadata={"help": "optimizer steps (-1: use num_train_epochs)"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "epochs when max_steps is -1 (paper 1)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank of a fresh adapter"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha of a fresh adapter"})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout of a fresh adapter"})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "LLM projections a fresh LoRA targets (vision tower excluded)"})
    quant: str | None = field(default=None, metadata={"help": "none | 4bit (QLoRA) | 8bit"})
    use_unsloth: bool = field(default=False, metadata={"help": "load through Unsloth (CUDA only)"})
    use_vllm: bool = field(default=False, metadata={"help": "vLLM generation (CUDA only; see module notes)"})
    vllm_mode: str = field(default="colocate", metadata={"help": "colocate (one GPU) | server (several)"})
    dtype: str | None = field(default=None, metadata={"help": "auto | float32 | bfloat16 | float16"})
    device: str | None = field(default=None, metadata={"help": "auto | cpu | cuda"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "gradient checkpointing (GPU profiles)"})
    logging_steps: int = field(default=1, metadata={"help": "log every N steps"})
    save_steps: int = field(default=20, metadata={"help": "checkpoint every N steps (for --resume)"})
    save_total_limit: int = field(default=2, metadata={"help": "checkpoints kept"})
    sample_every: int = field(default=10, metadata={"help": "write one prompt's completions every N steps"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    resume: bool = field(default=False, metadata={"help": "resume from the last checkpoint in output_dir"})
    blind: bool = field(default=False, metadata={"help": "zero every frame (the blind control)"})
    num_threads: int = field(default=0, metadata={
        "help": "torch CPU threads (0 = torch's default; 1 is fastest for the tiny model on a busy CPU)"})

    def prompts_per_step(self, num_processes: int = 1) -> float:
        """New prompts drawn per optimizer step (each batch is reused ``num_iterations`` times)."""
        return (self.per_device_train_batch_size * self.gradient_accumulation_steps * num_processes
                / self.num_generations / self.num_iterations)

    def validate(self) -> None:
        from mllm4d_lite.train.rewards import REWARD_NAMES

        unknown = [n for n in self.reward_funcs if n not in REWARD_NAMES]
        if unknown or not self.reward_funcs:
            raise ValueError(f"`reward_funcs: {self.reward_funcs}`: choose one or more of {list(REWARD_NAMES)}")
        if len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(f"`reward_weights` has {len(self.reward_weights)} values for {len(self.reward_funcs)} "
                             f"reward_funcs {self.reward_funcs}; give one weight per reward, in the same order")
        if self.num_generations < 2:
            raise ValueError(f"`num_generations: {self.num_generations}`: GRPO needs >= 2 completions per prompt")
        if self.per_device_train_batch_size % self.num_generations:
            raise ValueError(f"`per_device_train_batch_size: {self.per_device_train_batch_size}` must be a multiple "
                             f"of `num_generations: {self.num_generations}`")
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
        if self.vllm_mode not in ("colocate", "server"):
            raise ValueError(f"`vllm_mode: {self.vllm_mode}`: use colocate or server")
        if self.num_frames < 2:
            raise ValueError(f"`num_frames: {self.num_frames}`: use >= 2 (the temporal patch is 2 frames)")
        if self.max_completion_length < 1:
            raise ValueError(f"`max_completion_length: {self.max_completion_length}` must be >= 1 (the reply budget "
                             "in tokens; the tiny recipe uses 256)")
        if self.max_steps == 0 or self.sample_every < 1 or self.logging_steps < 1:
            raise ValueError("`max_steps` must be -1 or > 0; `sample_every` and `logging_steps` >= 1")


# ----------------------------------------------------------------------------------------------
# Data: records -> conversational prompts with decoded video (lazily, through with_transform)
# ----------------------------------------------------------------------------------------------

def prompt_messages(record: dict[str, Any], use_st_cot_prompt: bool = True) -> list[dict[str, Any]]:
    """The GRPO prompt of one record, without the frames: system (ST-CoT) + user (video part, text).

    ST-CoT on: the record's ``system``/``prompt`` when present (``rft.jsonl`` has both), else the
    kit's ST-CoT system prompt and instruction. Off (ablation): the direct-answer prompt, no system.
    """
    from mllm4d_lite.train.model import build_messages

    if use_st_cot_prompt:
        text = record.get("prompt") or prompts.st_cot_prompt(record["question"], record.get("choices"))
        system = record.get("system") or prompts.ST_COT_SYSTEM_PROMPT
    else:
        text = prompts.direct_prompt(record["question"], record.get("choices"))
        system = None
    return build_messages(text, has_video=True, system=system)


def build_dataset(records: Sequence[dict[str, Any]], cache, use_st_cot_prompt: bool = True):
    """A ``datasets.Dataset`` whose rows decode lazily into TRL's conversational format.

    Each row: ``prompt`` (messages; the user's video part carries ``video`` = frames (T, H, W, 3)
    uint8 and ``metadata`` = fps / frame indices, from ``cache``), plus the reward columns
    ``answer``, ``choices``, ``question_type``, ``solution`` and ``id``, ``category``.
    The records travel as JSON strings so Arrow never unifies (and pads) the nested schema.
    """
    from datasets import Dataset

    ds = Dataset.from_dict({"record": [json.dumps(r) for r in records]})

    def transform(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in ("prompt", "id", "category", "answer", "choices",
                                                "question_type", "solution")}
        for raw in batch["record"]:
            rec = json.loads(raw)
            frames, meta = cache.get(rec["video_path"])
            messages = prompt_messages(rec, use_st_cot_prompt)
            for part in messages[-1]["content"]:
                if part["type"] == "video":
                    part["video"], part["metadata"] = frames, meta
            out["prompt"].append(messages)
            out["id"].append(str(rec["id"]))
            out["category"].append(rec.get("category"))
            for key, value in reward_columns(rec).items():
                out[key].append(value)
        return out

    return ds.with_transform(transform)


def reward_columns(record: dict[str, Any]) -> dict[str, Any]:
    """The columns the ST-reward reads for one record: ``answer``, ``choices``, ``question_type``
    and ``solution`` (no centres when the record has none)."""
    return {"answer": record.get("answer"), "choices": record.get("choices"),
            "question_type": record.get("question_type", "multiple-choice"),
            "solution": record.get("solution") or {"camera_center": [], "object_center": []}}


def load_pool(cfg: "GRPOConfigKit") -> list[dict[str, Any]]:
    """The prompts a run trains on: ``cfg.train_file`` filtered and subset as ``cfg`` says."""
    return load_rft_records(cfg.train_file, cfg.max_samples, cfg.seed, cfg.train_categories, cfg.balance_answers,
                            cfg.balance_categories,
                            centre_rewards=[n for n in cfg.reward_funcs if n in ("camera", "object")])


def load_rft_records(path: str | Path, max_samples: int | None = None, seed: int = 0,
                     categories: Sequence[str] | None = None, balance_answers: bool = True,
                     balance_categories: bool = True, centre_rewards: Sequence[str] = ()) -> list[dict[str, Any]]:
    """``rft.jsonl`` records (``video_path`` resolved) checked for the fields GRPO's rewards need;
    a ``max_samples`` subset takes each category in turn when ``balance_categories``, and within
    that each right answer in turn when ``balance_answers``.

    With ``centre_rewards`` (the camera / object rewards that are on), every record must carry a
    ``solution`` (the true centres, as ``rft.jsonl`` does): scored against none, those rewards
    would pay for writing no centres. ``sft.jsonl`` / ``cot.jsonl`` or VLM4D-format files have none."""
    from mllm4d_lite.train.data import DataError, load_records

    records = load_records(path, max_samples=max_samples, seed=seed, categories=categories,
                           balance_key=[k for k, on in (("category", balance_categories),
                                                        ("answer", balance_answers)) if on] or None)
    if not records:
        raise DataError(f"{path}: no records; make rft.jsonl with `mllm4d curate`")
    for rec in records:
        missing = [k for k in ("question", "answer") if k not in rec]
        if missing:
            raise DataError(f"{path}: record {rec['id']!r} lacks {missing}; GRPO needs rft.jsonl records "
                            "(question, answer, solution) from `mllm4d curate`")
    lacking = [r["id"] for r in records if not isinstance(r.get("solution"), dict)]
    if centre_rewards and lacking:
        raise DataError(f"{path}: {len(lacking)} of {len(records)} prompts (e.g. {lacking[0]!r}) have no "
                        f"`solution` with the true camera / object centres, which the {' and '.join(centre_rewards)} "
                        "reward scores against; train on rft.jsonl from `mllm4d curate` / `mllm4d qa`, or leave "
                        "those rewards out (reward_funcs: [format, accuracy], reward_weights to match)")
    return records


# ----------------------------------------------------------------------------------------------
# The trainer: TRL's GRPOTrainer with video in every forward
# ----------------------------------------------------------------------------------------------

def _video_part(prompt: list[dict[str, Any]]) -> tuple[Any, dict] | None:
    found = None
    for message in prompt:
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "video":
                    if found is not None:
                        raise ValueError("a GRPO prompt holds more than one video; the kit feeds one clip per prompt")
                    found = (part["video"], part["metadata"])
    return found


def _make_trainer_class():
    import torch
    from trl import GRPOTrainer

    class VideoGRPOTrainer(GRPOTrainer):
        """``GRPOTrainer`` whose generation AND log-probability forwards see each prompt's video.

        Extra constructor argument ``sample_writer(step, inputs, completions)`` (optional) is
        called every ``sample_every`` steps with the generated batch.
        """

        def __init__(self, *args, sample_writer=None, sample_every: int = 10, **kwargs):
            super().__init__(*args, **kwargs)
            self._active_video_rows: list[dict[str, torch.Tensor]] | None = None
            self._last_video_rows: list[dict[str, torch.Tensor]] | None = None
            self._sample_writer = sample_writer
            self._sample_every = sample_every
            tok = self.processing_class.tokenizer
            self._video_token_id = tok.convert_tokens_to_ids("<|video_pad|>")

        # -- generation inputs ---------------------------------------------------------------
        def _tokenize_prompts(self, prompts: list):
            """Prompt ids (unpadded, one list per row) + the video fields ``generate`` needs.

            Each distinct prompt (a group of ``num_generations`` rows) is processed once.
            """
            from mllm4d_lite.train.model import video_kwargs

            processor = self.processing_class
            texts = [processor.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
            videos = [_video_part(p) for p in prompts]
            if any(v is None for v in videos):
                raise ValueError("every GRPO prompt must hold one video part; got a prompt without video")
            # rows of one group share text and frames object: process each distinct prompt once
            first_row: dict[tuple[str, int], int] = {}
            row_to_unique = [first_row.setdefault((t, id(v[0])), len(first_row)) for t, v in zip(texts, videos)]
            idx = [row_to_unique.index(u) for u in range(len(first_row))]
            enc = processor(text=[texts[i] for i in idx], padding=True, return_tensors="pt",
                            **video_kwargs(processor, [videos[i] for i in idx]))
            per_video = enc["video_grid_thw"].prod(-1).tolist()
            pv = torch.split(enc["pixel_values_videos"], per_video, dim=0)
            unique_rows = []
            unique_ids = []
            for j in range(len(idx)):
                row = {"pixel_values_videos": pv[j], "video_grid_thw": enc["video_grid_thw"][j:j + 1]}
                if "second_per_grid_ts" in enc:
                    row["second_per_grid_ts"] = enc["second_per_grid_ts"][j:j + 1]
                unique_rows.append(row)
                mask = enc["attention_mask"][j].bool()
                unique_ids.append(enc["input_ids"][j][mask].tolist())
            device = self.accelerator.device
            unique_rows = [{k: v.to(device) for k, v in r.items()} for r in unique_rows]
            rows = [unique_rows[u] for u in row_to_unique]  # rows of a group share their tensors
            prompt_ids = [unique_ids[u] for u in row_to_unique]
            self._active_video_rows = rows
            self._last_video_rows = rows
            fields = _cat_video_rows(rows)
            fields["mm_token_type_ids"] = [[2 if t == self._video_token_id else 0 for t in ids] for ids in prompt_ids]
            return prompt_ids, None, fields

        def _generate_and_score_completions(self, inputs):
            self._last_video_rows = None
            try:
                output = super()._generate_and_score_completions(inputs)
            finally:
                self._active_video_rows = None
            rows = self._last_video_rows
            if rows is None or len(rows) != output["prompt_ids"].size(0):
                raise RuntimeError("GRPO batch built without the kit's video rows: TRL no longer calls "
                                   "_tokenize_prompts as the kit expects; the policy would train blind")
            output["video_inputs"] = rows  # a per-row list: TRL's shuffle/split keep rows aligned
            if self._sample_writer is not None and self.model.training and \
                    self.state.global_step % self._sample_every == 0:
                completions = self.processing_class.batch_decode(output["completion_ids"], skip_special_tokens=True)
                self._sample_writer(self.state.global_step, inputs, completions, self._logs)
            return output

        def _compute_loss(self, model, inputs):
            self._active_video_rows = inputs.get("video_inputs")
            try:
                return super()._compute_loss(model, inputs)
            finally:
                self._active_video_rows = None

        # -- log-probabilities with the video ------------------------------------------------
        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                               batch_size=None, compute_entropy=False, compute_aux_loss=False,
                                               **kwargs):
            """Per-token log-probs of the completion tokens, (B, logits_to_keep), given the video.

            Same contract as TRL's method; the rows' video features come from
            ``self._active_video_rows`` (set around every TRL call that scores a batch).
            """
            rows = self._active_video_rows
            has_video_tokens = bool((input_ids == self._video_token_id).any())
            if rows is None:
                if has_video_tokens and kwargs.get("pixel_values_videos") is None:
                    raise RuntimeError("log-probs requested for a batch with video tokens but no video features: "
                                       "the policy would be scored blind (TRL internals changed?)")
                return super()._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                    compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **kwargs)
            if len(rows) != input_ids.size(0):
                raise RuntimeError(f"{len(rows)} video rows for a batch of {input_ids.size(0)}; rows out of step")
            batch_size = batch_size or input_ids.size(0)
            prompt_len = input_ids.size(1) - logits_to_keep
            all_logps, all_entropies, all_aux = [], [], []
            for start in range(0, input_ids.size(0), batch_size):
                end = min(start + batch_size, input_ids.size(0))
                ids = input_ids[start:end]
                mask = attention_mask[start:end]
                mm = torch.zeros_like(ids)
                mm[:, :prompt_len] = (ids[:, :prompt_len] == self._video_token_id).long() * 2
                model_inputs = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": mm,
                                **_cat_video_rows(rows[start:end])}
                if compute_aux_loss:
                    model_inputs["output_router_logits"] = True
                labels = ids.masked_fill(mask == 0, -100)
                labels[:, :-logits_to_keep] = -100
                with self.accelerator.autocast():
                    outputs = model(**model_inputs, labels=labels, fused_lm_head=True)
                all_logps.append(outputs.log_probs[:, -logits_to_keep:])
                if compute_entropy:
                    all_entropies.append(outputs.entropy[:, -logits_to_keep:])
                if compute_aux_loss:
                    all_aux.append(outputs.aux_loss)
            logps = torch.cat(all_logps, dim=0)
            entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
            aux = torch.stack(all_aux).mean() if compute_aux_loss else None
            return logps, entropies, aux

        @contextlib.contextmanager
        def video_scope(self, rows):
            """Score batches with ``rows`` as their video features (tests, evaluation helpers)."""
            previous = self._active_video_rows
            self._active_video_rows = rows
            try:
                yield
            finally:
                self._active_video_rows = previous

    return VideoGRPOTrainer


def _cat_video_rows(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    import torch

    out = {"pixel_values_videos": torch.cat([r["pixel_values_videos"] for r in rows], dim=0),
           "video_grid_thw": torch.cat([r["video_grid_thw"] for r in rows], dim=0)}
    if rows and "second_per_grid_ts" in rows[0]:
        out["second_per_grid_ts"] = torch.cat([r["second_per_grid_ts"] for r in rows], dim=0)
    return out


def video_rows_for(trainer, prompts: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The per-row video features the trainer builds for ``prompts`` (the same code path as training)."""
    trainer._tokenize_prompts(list(prompts))
    rows = trainer._last_video_rows
    trainer._active_video_rows = None
    return rows


# ----------------------------------------------------------------------------------------------
# Logging: metrics.jsonl, one line per logging step, the reward curve, samples
# ----------------------------------------------------------------------------------------------

def _peak_memory_gb() -> float:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB on Linux -> GB (peak RSS)


def metrics_row(step: int, logs: dict[str, float], reward_names: Sequence[str], s_per_step: float) -> dict[str, Any]:
    """One ``metrics.jsonl`` row from TRL's log dict (reward, components, length, KL, s/step, GB)."""
    row: dict[str, Any] = {"step": step, "reward": logs.get("reward"), "reward_std": logs.get("reward_std")}
    for name in reward_names:
        row[name] = logs.get(f"rewards/{_REWARD_METRIC[name]}/mean")
    by_category = {k.split("/", 1)[1]: v for k, v in sorted(logs.items()) if k.startswith("accuracy/")}
    if by_category:
        row["accuracy_by_category"] = by_category
    row["completion_length"] = logs.get("completions/mean_length")
    row["kl"] = logs.get("kl")
    row["loss"] = logs.get("loss")
    row["entropy"] = logs.get("entropy")
    row["s_per_step"] = round(s_per_step, 4)  # wall clock, generation included
    row["memory_gb"] = round(_peak_memory_gb(), 3)  # peak CUDA allocation, or the process's peak RSS on CPU
    return row


def _make_callback(out_dir: Path, reward_names: Sequence[str], max_steps: int):
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        """Writes ``metrics.jsonl`` and logs one fixed-order line per logging step."""

        def __init__(self):
            self.path = out_dir / "metrics.jsonl"
            self._t_last = None
            self._step_last = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self._t_last, self._step_last = time.perf_counter(), state.global_step
            kept = []
            if self.path.is_file() and state.global_step > 0:  # resuming: keep the rows up to the checkpoint
                kept = [ln for ln in self.path.read_text().splitlines()
                        if ln.strip() and json.loads(ln)["step"] <= state.global_step]
            self.path.write_text("".join(ln + "\n" for ln in kept))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "reward" not in logs:
                return
            now = time.perf_counter()
            steps = max(1, state.global_step - self._step_last)
            s_per_step = (now - self._t_last) / steps
            self._t_last, self._step_last = now, state.global_step
            row = metrics_row(state.global_step, logs, reward_names, s_per_step)
            with self.path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            comps = ", ".join(f"{n} {row[n]:.2f}" for n in reward_names if row.get(n) is not None)
            kl = row["kl"] if row["kl"] is not None else float("nan")
            log.info("step %d/%d | reward %.3f (%s) | len %.1f | kl %.4f | %.2f s/step | %.2f GB",
                     state.global_step, max_steps, row["reward"], comps, row["completion_length"] or 0.0,
                     kl, s_per_step, row["memory_gb"])

    return MetricsCallback()


def _make_sample_writer(out_dir: Path, reward_names: Sequence[str], num_generations: int, fresh: bool):
    path = out_dir / "samples.jsonl"
    if fresh and path.exists():
        path.unlink()

    def write(step: int, inputs, completions: list[str], trainer_logs) -> None:
        n = min(num_generations, len(completions))
        rewards = {}
        for name in reward_names:
            values = list(trainer_logs["rewards"].get(_REWARD_METRIC[name], []))[-len(completions):]
            rewards[name] = values[:n] if len(values) >= n else None
        row = {"step": step, "id": inputs[0].get("id"), "answer": inputs[0].get("answer"),
               "completions": completions[:n], "rewards": rewards}
        with path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")

    return write


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []


def fifth_means(values: Sequence[float]) -> tuple[float, float]:
    """Mean of the first and of the last fifth (at least one value each) of a series."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return float("nan"), float("nan")
    k = max(1, len(vals) // 5)
    return sum(vals[:k]) / k, sum(vals[-k:]) / k


def category_fifths(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[float | None, float | None]]:
    """Mean training accuracy per question category over the first and over the last fifth of the
    ``metrics.jsonl`` rows (a step logs only the categories it drew; ``None`` where a fifth drew none)."""
    k = max(1, len(rows) // 5)
    cats = sorted({c for r in rows for c in (r.get("accuracy_by_category") or {})})

    def mean(part: Sequence[dict[str, Any]], cat: str) -> float | None:
        vals = [r["accuracy_by_category"][cat] for r in part if cat in (r.get("accuracy_by_category") or {})]
        return sum(vals) / len(vals) if vals else None

    return {c: (mean(rows[:k], c), mean(rows[-k:], c)) for c in cats}


def fifths_see_same_prompts(steps: int, num_prompts: int, prompts_per_step: float) -> bool:
    """True when every fifth of a run is a whole number of passes over the same prompt pool.

    Only then does "last fifth minus first fifth" of the training reward compare like with like:
    over less than one pass each fifth draws different prompts, and the per-step reward follows
    which prompts were drawn as much as what the policy learnt.
    """
    if steps < 5 or steps % 5 or num_prompts < 1 or prompts_per_step <= 0:
        return False
    per_fifth = steps // 5 * prompts_per_step
    return per_fifth == int(per_fifth) and int(per_fifth) % num_prompts == 0


def plot_reward_curve(rows: Sequence[dict[str, Any]], reward_names: Sequence[str], path: str | Path) -> None:
    """Total reward and each (unweighted) component per step -> PNG."""
    from mllm4d_lite.io import pyplot

    plt = pyplot()

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["reward"] for r in rows], color="black", lw=2, label="total (weighted)")
    for name in reward_names:
        ax.plot(steps, [r.get(name) for r in rows], lw=1, alpha=0.8, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("GRPO reward")
    fig.tight_layout()
    path = Path(path)
    save_figure(fig, path, dpi=100)


# ----------------------------------------------------------------------------------------------
# Building and running
# ----------------------------------------------------------------------------------------------

def lora_target_regex(names: Sequence[str]) -> str:
    """A peft ``target_modules`` regex: the named projections of the LLM, never the vision tower."""
    return r"^(?!.*visual).*\.(" + "|".join(re.escape(n) for n in names) + r")$"


def vision_token_ids(tokenizer) -> list[int]:
    """The ids of the vision placeholder tokens, which sampling must never emit: a sampled one
    would break the next forward (it asks for video features the reply does not have)."""
    return [tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                          "<|vision_end|>")]


def _check_setup(cfg: GRPOConfigKit, device: str) -> None:
    from mllm4d_lite.train.model import ModelSetupError, check_gpu_only_settings

    check_gpu_only_settings(device, use_unsloth=cfg.use_unsloth, use_vllm=cfg.use_vllm)
    if cfg.use_vllm:
        # TRL 1.16's vLLM path (VLLMGeneration.generate) takes token ids + images only: a video
        # prompt would be generated blind. Refuse rather than train on blind rollouts.
        raise ModelSetupError("`use_vllm: true`: TRL 1.16's vLLM generation passes images only, so the kit's video "
                              "prompts would be generated without their frames; set `use_vllm: false` "
                              "(transformers generation, which the kit feeds the video)")


def build_trainer(cfg: GRPOConfigKit, records: Sequence[dict[str, Any]] | None = None):
    """Model, processor, dataset and :class:`VideoGRPOTrainer` for ``cfg`` (nothing trained yet)."""
    import torch
    from peft import LoraConfig
    from transformers import set_seed
    from trl import GRPOConfig

    from mllm4d_lite.train.data import VideoCache, check_videos
    from mllm4d_lite.train.model import (follow_thread_share, load_model_and_processor, pick_device, pick_dtype,
                                   quiet_progress)
    from mllm4d_lite.train.rewards import get_reward_funcs

    device = pick_device(cfg.device)
    _check_setup(cfg, device)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    set_seed(cfg.seed)
    if records is None:
        records = load_pool(cfg)
    cache = VideoCache(cfg.num_frames, blank=cfg.blind)
    records, skipped = check_videos(records, cache)
    if not records:
        raise ValueError(f"{cfg.train_file}: no record has a readable video ({len(skipped)} skipped)")
    model, processor = load_model_and_processor(
        cfg.model, adapter=cfg.adapter_init, device=device, quant=cfg.quant, dtype=cfg.dtype,
        use_unsloth=cfg.use_unsloth, max_pixels=cfg.max_pixels, min_pixels=cfg.min_pixels,
        gradient_checkpointing=cfg.gradient_checkpointing, trainable_adapter=True)
    peft_config = None
    if not cfg.adapter_init:
        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=lora_target_regex(cfg.lora_target_modules), task_type="CAUSAL_LM")
    torch_dtype = pick_dtype(cfg.dtype, device)
    suppress = vision_token_ids(processor.tokenizer)
    out_dir = Path(cfg.output_dir)
    args = GRPOConfig(
        output_dir=str(out_dir / "checkpoints"),
        num_generations=cfg.num_generations,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
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
    trainer_cls = _make_trainer_class()
    writer = _make_sample_writer(out_dir, cfg.reward_funcs, cfg.num_generations, fresh=not cfg.resume)
    trainer = trainer_cls(model=model, reward_funcs=reward_funcs, args=args,
                          train_dataset=build_dataset(records, cache, cfg.use_st_cot_prompt),
                          processing_class=processor, peft_config=peft_config,
                          sample_writer=writer, sample_every=cfg.sample_every)
    trainer.add_callback(_make_callback(out_dir, cfg.reward_funcs, cfg.max_steps))
    quiet_progress(trainer)
    follow_thread_share(trainer)
    return trainer


def run(cfg: GRPOConfigKit) -> dict[str, Any]:
    """Train, save ``adapter/``, metrics, curve and summary; return the summary."""
    from transformers.trainer_utils import get_last_checkpoint

    from mllm4d_lite.train.model import save_adapter

    out_dir = Path(cfg.output_dir)
    resume_from = None
    if cfg.resume:
        ckpt_dir = out_dir / "checkpoints"
        resume_from = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None
        if resume_from is None:
            raise ConfigError(f"`resume: true` but {ckpt_dir} holds no checkpoint-*: nothing to resume; run "
                              "without --resume (or point --output-dir at the interrupted run)")
        log.info("resuming from %s", resume_from)
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
    done_now = max(1, steps - (int(Path(resume_from).name.split("-")[-1]) if resume_from else 0))
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
        "peak_memory_gb": round(_peak_memory_gb(), 3),
        "adapter": str(adapter_dir),
        "blind": cfg.blind,
        "use_st_cot_prompt": cfg.use_st_cot_prompt,
        "reward_funcs": list(cfg.reward_funcs),
    }
    atomic_write_json(out_dir / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(GRPOConfigKit, argv, prog="mllm4d grpo",
                       description="GRPO with the ST-CoT prompt and the ST-reward (TRL GRPOTrainer, LoRA).")
    from mllm4d_lite.train.data import DataError
    from mllm4d_lite.train.model import ModelSetupError

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


__all__ = ["GRPOConfigKit", "build_dataset", "build_trainer", "category_fifths", "fifth_means",
           "fifths_see_same_prompts", "load_pool", "load_rft_records", "main", "metrics_row",
           "plot_reward_curve", "prompt_messages", "reward_columns", "run", "video_rows_for", "vision_token_ids"]

