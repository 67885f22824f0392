"""Model batches for SFT: records -> chat template + decoded video -> ``input_ids`` and ``labels``.

- :func:`assistant_token_mask` finds the assistant's tokens from token ids alone: every span
  ``<|im_start|>assistant\\n`` ... ``<|im_end|>`` (the ``<|im_end|>`` included, the header
  excluded), exactly what the chat template's ``{% generation %}`` block marks.
- :class:`VideoSFTCollator` batches records for ``SFTTrainer`` (TRL's own vision collator
  handles images, not video): chat template, processor (video arrays + metadata), left
  padding, ``labels`` = ``input_ids`` on assistant tokens and -100 elsewhere.
- :func:`sample_cost` measures what one training sample costs in frames, pixels and tokens.

Batches follow the Qwen-VL processor: ``input_ids`` (B, L), ``pixel_values_videos`` (sum of
patches, C*2*p*p), ``video_grid_thw`` (B, 3), ``mm_token_type_ids`` (B, L), ``labels`` (B, L).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mllm4d_lite.curation.video import VideoError
from mllm4d_lite.train.records import DataError, check_record_text, model_special_tokens, record_messages
from mllm4d_lite.train.video_inputs import VideoCache, count_visual_tokens, video_kwargs

IGNORE_INDEX = -100
ASSISTANT_HEADER = "assistant\n"  # what follows <|im_start|> on an assistant turn (ChatML)


def assistant_token_mask(input_ids, tokenizer):
    """Boolean mask (same shape as ``input_ids`` (B, L) or (L,)) of the assistant's tokens.

    A span starts right after ``<|im_start|>`` + the tokens of ``"assistant\\n"`` and ends at the
    next ``<|im_end|>`` (included: the model must learn to stop), or at the end of the row for a
    truncated turn. Computed from token ids alone (padding side does not matter), because
    ``return_assistant_tokens_mask`` silently returns zeros on older transformers.
    """
    import torch

    ids = torch.as_tensor(input_ids)
    squeeze = ids.dim() == 1
    if squeeze:
        ids = ids[None]
    start_id = tokenizer.convert_tokens_to_ids("<|im_start|>")
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    header = tokenizer.encode(ASSISTANT_HEADER, add_special_tokens=False)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for b in range(ids.shape[0]):
        row = ids[b].tolist()
        n = len(row)
        for i, token in enumerate(row):
            if token != start_id or row[i + 1:i + 1 + len(header)] != header:
                continue
            start = i + 1 + len(header)
            end = start
            while end < n and row[end] != end_id:
                end += 1
            mask[b, start:min(end + 1, n)] = True
    return mask[0] if squeeze else mask


class VideoSFTCollator:
    """Batch examples for ``SFTTrainer`` (use with ``dataset_kwargs={"skip_prepare_dataset": True}``
    and ``remove_unused_columns=False``).

    Each example is a record (a dict with ``video_path``, ``prompt`` or ``question``/``choices``,
    ``response``, optional ``system``). Returns the processor's batch (``input_ids``,
    ``attention_mask``, ``mm_token_type_ids``, ``pixel_values_videos``, ``video_grid_thw``, ...)
    plus ``labels``: ``input_ids`` on assistant tokens, -100 elsewhere. ``num_tokens`` counts the
    non-padding tokens collated so far (for tokens/s). A record whose text holds one of the
    model's special tokens (``special_tokens``, read from the processor's tokenizer) is refused
    with :class:`DataError` (:func:`mllm4d_lite.train.records.check_record_text`), so data text
    never becomes chat structure or loss targets.
    """

    def __init__(self, processor, cache: VideoCache):
        self.processor = processor
        self.cache = cache
        self.num_tokens = 0
        self.special_tokens = model_special_tokens(processor.tokenizer)

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        texts, videos = [], []
        check_record_text(examples, self.special_tokens)
        for ex in examples:
            try:
                videos.append(self.cache.get(ex["video_path"]))
            except VideoError as err:  # became unreadable after check_videos(): name the record
                raise VideoError(f"record {ex.get('id')!r}: {err}") from None
            texts.append(self.processor.apply_chat_template(record_messages(ex), tokenize=False))
        batch = self.processor(text=texts, padding=True, return_tensors="pt", **video_kwargs(self.processor, videos))
        mask = assistant_token_mask(batch["input_ids"], self.processor.tokenizer)
        mask &= batch["attention_mask"].bool()
        labels = batch["input_ids"].clone()
        labels[~mask] = IGNORE_INDEX
        batch["labels"] = labels
        self.num_tokens += int(batch["attention_mask"].sum())
        return dict(batch)


def sample_cost(processor, collator: VideoSFTCollator, records: Sequence[dict[str, Any]],
                max_records: int = 32) -> dict[str, float]:
    """What a training sample costs, measured by collating up to ``max_records`` records one by one.

    Returns frames, pixels per frame (after the processor's resize), visual tokens per video,
    mean/max total tokens per sample and mean assistant (loss) tokens per sample. Every record
    (not only the measured ones) is first checked for the model's special tokens, so a bad record
    stops SFT before the first step.
    """
    check_record_text(records, collator.special_tokens)
    subset = list(records[:max_records])
    if not subset:
        raise DataError("no training records left (all skipped?)")
    frames, meta = collator.cache.get(subset[0]["video_path"])
    cost: dict[str, float] = dict(count_visual_tokens(processor, frames, meta))
    totals, answers = [], []
    saved = collator.num_tokens
    for record in subset:
        batch = collator([record])
        totals.append(int(batch["attention_mask"].sum()))
        answers.append(int((batch["labels"] != IGNORE_INDEX).sum()))
    collator.num_tokens = saved
    cost.update(total_tokens_mean=float(np.mean(totals)), total_tokens_max=int(max(totals)),
                answer_tokens_mean=float(np.mean(answers)), source_height=int(frames.shape[1]),
                source_width=int(frames.shape[2]))
    return cost
