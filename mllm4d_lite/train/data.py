"""Training data: QA records -> chat examples with decoded video -> model batches.

Shared by the SFT / cold-start stage (:mod:`mllm4d_lite.train.sft`) and GRPO. Public API (stable):

- :func:`load_records` reads ``sft.jsonl`` / ``cot.jsonl`` / ``rft.jsonl`` (one JSON object a
  line, see the kit's design notes) and resolves each record's ``video`` (relative to the
  jsonl's folder) into an absolute ``video_path``.
- :class:`VideoCache` decodes each clip once (``num_frames`` evenly spaced frames of the LEFT
  view, first and last included) and keeps the frames in memory; ``blank=True`` gives the
  "blind" control (zeroed pixels, same shapes and token counts).
- :func:`check_videos` decodes every distinct clip once up front and drops the records whose
  video is missing or unreadable, logging each record id and the reason, so that a bad file
  never crashes a long run.
- :func:`record_prompt` / :func:`record_messages` turn a record into the chat the model sees
  (optional system turn, user turn = video + prompt, assistant turn = ``response``).
- :func:`assistant_token_mask` finds the assistant's tokens from token ids alone: every span
  ``<|im_start|>assistant\\n`` ... ``<|im_end|>`` (the ``<|im_end|>`` included, the header
  excluded), exactly what the chat template's ``{% generation %}`` block marks.
- :class:`VideoSFTCollator` batches examples for ``SFTTrainer`` (TRL's own vision collator
  handles images, not video): chat template, processor (video arrays + metadata), left
  padding, ``labels`` = ``input_ids`` on assistant tokens and -100 elsewhere.

Shapes: frames (T, H, W, 3) uint8 RGB; batches follow the Qwen-VL processor
(``input_ids`` (B, L), ``pixel_values_videos`` (sum of patches, C*2*p*p), ``video_grid_thw``
(B, 3), ``mm_token_type_ids`` (B, L), ``labels`` (B, L)).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from mllm4d_lite import prompts
from mllm4d_lite.train.model import build_messages, load_video_for_model, video_kwargs
from mllm4d_lite.curation.video import VideoError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
ASSISTANT_HEADER = "assistant\n"  # what follows <|im_start|> on an assistant turn (ChatML)


class DataError(ValueError):
    """A data file is unusable; the message names the file and the fix."""


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------

def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All JSON objects of a ``.jsonl`` file (blank lines skipped). Errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (make it with `mllm4d curate ... --out DIR`)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: not valid JSON ({err}); re-generate the file") from None
    return rows


def load_records(path: str | Path, max_samples: int | None = None, seed: int = 0,
                 categories: Sequence[str] | None = None,
                 balance_key: str | Sequence[str] | None = None) -> list[dict[str, Any]]:
    """QA records of a jsonl (or a VLM4D-format ``.json`` list) with ``video_path`` resolved.

    ``video`` is relative to the file's folder (absolute paths are kept). ``categories`` keeps
    only records of those categories (none left is an error naming the categories present);
    ``max_samples`` then keeps a seeded random subset (order preserved), with as even a share of
    each value of ``balance_key`` (e.g. ``"answer"``) as the records allow when it is given; several
    keys (e.g. ``["category", "answer"]``) balance nested, see :func:`balanced_subset`.
    Records lacking ``id`` get ``<file>:<line>``.
    """
    path = Path(path)
    if path.suffix == ".json":
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        try:
            rows = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: not valid JSON ({err}); re-generate the file, or fix it by hand") from None
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a JSON list of entries (VLM4D format)")
    else:
        rows = read_jsonl(path)
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}: record {i + 1} is a {type(row).__name__}, not a JSON object; "
                            "each record must be an object with 'video', 'question', ... (re-generate the file)")
        row = dict(row)
        row.setdefault("id", f"{path.name}:{i + 1}")
        if "video" not in row:
            raise DataError(f"{path}: record {row['id']!r} has no 'video' field")
        video = Path(str(row["video"]))
        row["video_path"] = str(video if video.is_absolute() else (path.parent / video).resolve())
        out.append(row)
    if categories:
        wanted = set(categories)
        kept = [r for r in out if r.get("category") in wanted]
        if not kept:
            present = sorted({str(r.get("category")) for r in out})
            raise DataError(f"{path}: no record of the categories {sorted(wanted)}; the file has {present}; "
                            "fix `train_categories` (empty = all)")
        out = kept
    if max_samples is not None and 0 < max_samples < len(out):
        rng = np.random.default_rng(seed)
        if balance_key:
            names = [balance_key] if isinstance(balance_key, str) else list(balance_key)
            labels = [tuple(str(r.get(k)) for k in names) for r in out]
            keep = sorted(balanced_subset(labels, max_samples, rng))
        else:
            keep = sorted(rng.choice(len(out), size=max_samples, replace=False).tolist())
        out = [out[i] for i in keep]
    return out


def balanced_subset(labels: Sequence[Any], size: int, rng: np.random.Generator) -> list[int]:
    """Indices of a seeded subset of ``size`` items taking the labels in turn (each label's items in
    random order), so every label gets ``size // n_labels`` items or one more, unless it has fewer.

    A label may be a tuple, e.g. ``(category, answer)``: then the first values are taken in turn,
    and within each, the next values in turn (nested), so a category with many distinct answers
    does not crowd out a category with few."""
    keys = [tuple(label) if isinstance(label, tuple) else (label,) for label in labels]
    if len({len(k) for k in keys}) > 1:
        raise ValueError("balanced_subset: every label needs the same number of keys")
    return _round_robin(list(range(len(keys))), keys, 0, rng)[:size]


def _round_robin(indices: list[int], keys: list[tuple], depth: int, rng: np.random.Generator) -> list[int]:
    """``indices`` ordered so that every prefix takes the values of ``keys[i][depth]`` in turn."""
    if not indices:
        return []
    if depth == len(keys[indices[0]]):  # reversed: the order the seeded pools have always been drawn in
        return [int(i) for i in reversed(rng.permutation(indices))]
    groups: dict[Any, list[int]] = {}
    for i in indices:
        groups.setdefault(keys[i][depth], []).append(i)
    queues = [_round_robin(idx, keys, depth + 1, rng) for _, idx in sorted(groups.items())]
    order = list(rng.permutation(len(queues)))
    out: list[int] = []
    while len(out) < len(indices):
        for q in order:
            if queues[q]:
                out.append(queues[q].pop(0))
    return out


def record_prompt(record: dict[str, Any], mode: str = "direct") -> str:
    """The user text of a record: its ``prompt`` when present, else built from question + choices."""
    if record.get("prompt"):
        return str(record["prompt"])
    return prompts.build_prompt(record["question"], record.get("choices"), mode)


def record_messages(record: dict[str, Any], with_answer: bool = True) -> list[dict[str, Any]]:
    """The chat of one record: ``system`` (if any), user (video + prompt), assistant (``response``)."""
    answer = str(record["response"]) if with_answer else None
    return build_messages(record_prompt(record), has_video=True, system=record.get("system"), answer=answer)


# ----------------------------------------------------------------------------------------------
# Videos
# ----------------------------------------------------------------------------------------------

class VideoCache:
    """Decode each clip once and keep its frames: ``get(path) -> (frames (T,H,W,3) uint8, metadata)``.

    Several questions share one clip, so training is not dominated by decoding. ``keep=False``
    decodes on every call (for data too large to hold; ~2 MB per 8-frame 320x240 clip).
    ``blank=True`` zeroes the pixels (the blind control): same shapes, same token counts.
    """

    def __init__(self, num_frames: int, blank: bool = False, keep: bool = True):
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.num_frames = int(num_frames)
        self.blank = bool(blank)
        self.keep = bool(keep)
        self._frames: dict[str, tuple[np.ndarray, dict]] = {}

    def get(self, path: str | Path) -> tuple[np.ndarray, dict]:
        key = str(path)
        hit = self._frames.get(key)
        if hit is not None:
            return hit
        video = load_video_for_model(key, self.num_frames, blank=self.blank)
        if self.keep:
            self._frames[key] = video
        return video

    def __len__(self) -> int:
        return len(self._frames)


def check_videos(records: Sequence[dict[str, Any]], cache: VideoCache) -> tuple[list[dict[str, Any]], list[str]]:
    """Decode every distinct ``video_path`` once; drop records whose video is missing or unreadable.

    Returns ``(kept records, skipped record ids)``. Each skipped record is logged with its id and
    the reason, and the count is logged at the end: a bad file never crashes a long run.
    """
    from tqdm import tqdm

    bad: dict[str, str] = {}
    paths = sorted({r["video_path"] for r in records})
    for path in tqdm(paths, desc="decoding videos", unit="clip", disable=len(paths) < 50):
        try:
            frames, _ = cache.get(path)
            if frames.ndim != 4 or frames.shape[0] < 2:
                raise VideoError(f"{path}: decoded to shape {frames.shape}, expected (T>=2, H, W, 3)")
        except (VideoError, OSError, ValueError, RuntimeError) as err:
            bad[path] = str(err)
    kept, skipped = [], []
    for record in records:
        reason = bad.get(record["video_path"])
        if reason is None:
            kept.append(record)
        else:
            skipped.append(str(record["id"]))
            log.warning("skipping record %s: %s", record["id"], reason)
    if skipped:
        log.warning("skipped %d of %d records (%d unreadable videos)", len(skipped), len(records), len(bad))
    return kept, skipped


# ----------------------------------------------------------------------------------------------
# Loss mask and collator
# ----------------------------------------------------------------------------------------------

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
    non-padding tokens collated so far (for tokens/s).
    """

    def __init__(self, processor, cache: VideoCache):
        self.processor = processor
        self.cache = cache
        self.num_tokens = 0

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        texts, videos = [], []
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
    mean/max total tokens per sample and mean assistant (loss) tokens per sample.
    """
    from mllm4d_lite.train.model import count_visual_tokens

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


def records_by_category(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Count of records per ``category`` (for logs)."""
    counts: dict[str, int] = {}
    for r in records:
        counts[str(r.get("category", "?"))] = counts.get(str(r.get("category", "?")), 0) + 1
    return dict(sorted(counts.items()))


def write_toy_direction_set(out_dir: str | Path, num_clips: int = 16, seed: int = 0, num_frames: int = 8,
                            width: int = 64, height: int = 48, shuffle_choices: bool = False,
                            travel: float | None = None, square: float = 1 / 3,
                            backgrounds: Sequence[np.ndarray] | None = None) -> Path:
    """A toy left/right set for tests and smoke runs: ``out_dir/{videos/*.mp4, sft.jsonl}``.

    Each clip shows a bright square sliding left or right over a textured background; each
    record asks which way it moves (choices A: left, B: right, C: up, D: not moving, or in a
    seeded random order with ``shuffle_choices``) and answers with the letter. Learnable only
    from the video. Returns the jsonl path.

    Knobs for the learning benchmark (defaults: the original set): ``travel``, the distance the
    square slides as a fraction of the width (default: edge to edge), from a random start;
    ``square``, its side as a fraction of the height; ``backgrounds``, (H, W, 3) uint8 images
    (e.g. first frames of synthetic clips) to slide over instead of uniform noise.
    """
    from mllm4d_lite.curation.video import write_video

    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    choices = {"A": "left", "B": "right", "C": "up", "D": "not moving"}
    lines = []
    for i in range(num_clips):
        direction = ("left", "right")[i % 2]
        if backgrounds:
            background = np.asarray(backgrounds[int(rng.integers(len(backgrounds)))], dtype=np.uint8)
            if background.shape[:2] != (height, width):
                import cv2

                background = cv2.resize(background, (width, height), interpolation=cv2.INTER_AREA)
        else:
            background = (rng.random((height, width, 3)) * 80 + 60).astype(np.uint8)
        frames = np.repeat(background[None], num_frames, axis=0)
        size = max(2, int(round(height * square)))
        y = int(rng.integers(0, height - size))
        if travel is None:  # edge to edge
            start, span = 2, width - size - 4
        else:
            span = int(round(travel * width))
            if not 0 < span <= width - size:
                raise ValueError(f"travel {travel} of a {width}-px width leaves no room for a {size}-px square")
            start = int(rng.integers(0, width - size - span + 1))
        for t in range(num_frames):
            frac = t / (num_frames - 1)
            x = int(start + (frac if direction == "right" else 1.0 - frac) * span)
            frames[t, y:y + size, x:x + size] = (250, 40, 40)
        name = f"videos/toy_{seed}_{i:03d}.mp4"
        write_video(out / name, frames, fps=8.0)
        question = "Which way does the red cube move?"
        if shuffle_choices:
            texts = list(choices.values())
            rng.shuffle(texts)
            choices = dict(zip(prompts.LETTERS, texts))
        letter = next(k for k, v in choices.items() if v == direction)
        lines.append(json.dumps({
            "id": f"toy-{seed}-{i:03d}", "clip_id": f"toy_{seed}_{i:03d}", "video": name,
            "category": "object_direction", "question": question, "question_type": "multiple-choice",
            "choices": choices, "answer": direction, "solution": {},
            "prompt": prompts.direct_prompt(question, choices),
            "response": letter}))
    path = out / "sft.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
