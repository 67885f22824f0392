"""``VideoGRPOTrainer``: TRL's ``GRPOTrainer`` with each prompt's video in every forward.

How the video reaches the policy
--------------------------------
TRL 1.16's ``GRPOTrainer`` handles ``image``/``images`` columns only. A video part placed inside
the prompt messages does reach *generation* (the processor's chat template sees it), but TRL
builds the inputs of its log-probability forwards (policy loss, reference model, old policy)
from images alone: a stock trainer computes the GRPO loss on a blind model. :class:`VideoGRPOTrainer`
closes that gap with three small overrides:

- ``_tokenize_prompts``: renders each prompt, runs the processor on its decoded frames
  (:func:`mllm4d_lite.train.video_inputs.video_kwargs`), and keeps each row's video features
  (``pixel_values_videos``, ``video_grid_thw``, ``second_per_grid_ts`` for Qwen2.5-VL);
- ``_generate_and_score_completions`` / ``_compute_loss``: make those rows available while TRL
  computes reference / old / policy log-probabilities, and store them (a per-row list, so TRL's
  shuffle and split keep them aligned) in the generation batch;
- ``_generate_single_turn`` (``use_vllm`` only): generation by vLLM from requests that carry the
  same rendered prompt and frames (:mod:`mllm4d_lite.train.vllm_video`), on the engine TRL built
  (``vllm_mode: colocate``) or the ``trl vllm-serve`` server (``server``); TRL keeps the engine's
  weights in step with the policy. Without ``use_vllm``, transformers generation (the default);
- ``_get_per_token_logps_and_entropies``: feeds the rows' video features and ``mm_token_type_ids``
  to the model. A batch that holds video tokens without video features raises instead of
  silently running blind, so a future TRL change cannot quietly make the kit blind
  (``tests/test_grpo.py`` checks that blanking the frames changes the policy's log-probs and
  the LoRA gradients).

:func:`video_rows_for` builds the same per-row video features outside training (tests),
:func:`vision_token_ids` are the tokens sampling must never emit.
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

import torch
from trl import GRPOTrainer

from mllm4d_lite.train.video_inputs import video_kwargs


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


class VideoGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose generation AND log-probability forwards see each prompt's video.

    Extra constructor argument ``sample_writer(step, inputs, completions, logs)`` (optional) is
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
        self._vllm_requests = None  # the batch's vLLM requests (use_vllm), set by _tokenize_prompts
        self._vllm_messages = None

    # -- generation inputs ---------------------------------------------------------------
    def _tokenize_prompts(self, prompts: list):
        """Prompt ids (unpadded, one list per row) + the video fields ``generate`` needs.

        Each distinct prompt (a group of ``num_generations`` rows) is processed once.
        """
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
        if self.use_vllm:  # the same text and frames, as vLLM requests (one per distinct prompt)
            from mllm4d_lite.train.vllm_video import build_requests

            self._vllm_requests = build_requests(processor, texts, videos, row_to_unique)
            self._vllm_messages = [prompts[i] for i in idx]
        fields = _cat_video_rows(rows)
        fields["mm_token_type_ids"] = [[2 if t == self._video_token_id else 0 for t in ids] for ids in prompt_ids]
        return prompt_ids, None, fields

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        """Completion ids (and sampled-token log-probs with vLLM) per row; vLLM gets the video."""
        if not self.use_vllm:
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, num_generations,
                                                 has_tool_images=has_tool_images)
        from mllm4d_lite.train.vllm_video import generate_colocate, generate_server, grpo_sampling_kwargs

        requests, self._vllm_requests = self._vllm_requests, None
        if requests is None or sum(r.n for r in requests) != len(prompt_ids):
            raise RuntimeError("vLLM generation without the kit's video requests for this batch: TRL no longer "
                               "calls _tokenize_prompts as the kit expects; the rollouts would be blind")
        if self.state.global_step != self._last_loaded_step:  # as TRL does: the policy's weights into vLLM
            self.vllm_generation.sync_weights()
            self._last_loaded_step = self.state.global_step
        sampling = grpo_sampling_kwargs(self.args, self.processing_class.tokenizer)
        if self.vllm_mode == "colocate":
            return generate_colocate(self.vllm_generation.llm, requests, sampling)
        client = self.vllm_generation.vllm_client
        return generate_server(client.base_url, requests, self._vllm_messages, sampling, client.model)

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


def _cat_video_rows(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
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


def vision_token_ids(tokenizer) -> list[int]:
    """The ids of the vision placeholder tokens, which sampling must never emit: a sampled one
    would break the next forward (it asks for video features the reply does not have)."""
    return [tokenizer.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                          "<|vision_end|>")]
