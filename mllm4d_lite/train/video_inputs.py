"""Video inputs of the model: decoded frames, the chat around them, processor arguments, generation.

- :func:`load_video_for_model` decodes ``num_frames`` evenly spaced frames of a clip's LEFT view
  (first and last included); :class:`VideoCache` keeps each clip's frames in memory and
  :func:`check_videos` drops the records whose video cannot be read, so a bad file never crashes
  a long run. ``blank=True`` gives the "blind" control (zeroed pixels, same shapes and token counts).
- :func:`build_messages` is the chat the model sees (optional system turn, a user turn with the
  video part first, an optional assistant answer); :func:`video_kwargs` the processor arguments for
  decoded videos (the family-specific part, see :mod:`mllm4d_lite.train.families`).
- :func:`generate_answers` answers a batch of prompts; :func:`count_visual_tokens` tells what one
  video costs.

Shapes: frames (T, H, W, 3) uint8 RGB, with metadata ``fps``, ``frames_indices``,
``total_num_frames``, ``duration``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mllm4d_lite.curation.video import VideoError
from mllm4d_lite.train.families import family_of

log = logging.getLogger(__name__)


def load_video_for_model(path: str | Path, num_frames: int, blank: bool = False) -> tuple[np.ndarray, dict]:
    """Decode ``num_frames`` evenly spaced frames (first and last included) of ``path``.

    Returns frames (T, H, W, 3) uint8 and the metadata the processors need
    (``fps``, ``frames_indices``, ``total_num_frames``, ``duration``). ``blank=True`` zeroes the
    pixels (the "blind" control) but keeps shapes and token counts identical.
    An odd T is padded by repeating the last frame (the temporal patch is 2 frames).
    """
    from mllm4d_lite.curation.video import read_video, sample_indices

    all_frames, fps, _ = read_video(path, None)
    total = int(all_frames.shape[0])
    indices = sample_indices(total, num_frames)
    frames = all_frames[indices]
    if len(indices) % 2 == 1:
        frames = np.concatenate([frames, frames[-1:]], axis=0)
        indices = indices + [indices[-1]]
    if blank:
        frames = np.zeros_like(frames)
    fps = float(fps) if fps else 1.0
    metadata = {"fps": fps, "frames_indices": indices, "total_num_frames": total, "duration": total / fps}
    return frames, metadata


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


def video_kwargs(processor, videos: Sequence[tuple[np.ndarray, dict]]) -> dict[str, Any]:
    """Processor keyword arguments for already-decoded videos (family-specific bits live here)."""
    if not videos:
        return {}
    arrays = [v[0] for v in videos]
    kwargs: dict[str, Any] = {"videos": arrays, "do_sample_frames": False}
    from transformers.video_utils import VideoMetadata

    kwargs["video_metadata"] = [VideoMetadata(total_num_frames=m["total_num_frames"], fps=m["fps"],
                                              frames_indices=m["frames_indices"], duration=m["duration"])
                                for _, m in videos]
    family = family_of(processor)
    vp = processor.video_processor
    per_frame = getattr(vp, "frame_max_pixels", None)
    if family == "qwen3-vl" and per_frame:
        # Qwen3-VL bounds t*h*w; give it the per-frame budget times the frame count
        size = dict(vp.size)
        size["longest_edge"] = int(per_frame * max(a.shape[0] for a in arrays))
        kwargs["size"] = size
    return kwargs


def build_messages(prompt: str, has_video: bool = True, system: str | None = None,
                   answer: str | None = None) -> list[dict[str, Any]]:
    """A chat: optional system turn, a user turn (video part first, then the text), and an
    optional assistant answer (for training)."""
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    content: list[dict[str, Any]] = []
    if has_video:
        content.append({"type": "video"})
    content.append({"type": "text", "text": prompt})
    messages.append({"role": "user", "content": content})
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def generate_answers(model, processor, prompts: Sequence[str], videos: Sequence[tuple[np.ndarray, dict] | None],
                     system_prompt: str | None = None, max_new_tokens: int = 64, do_sample: bool = False,
                     temperature: float = 1.0) -> list[str]:
    """Generate one reply per prompt (a batch; left-padded). ``videos[i]`` is None for text-only."""
    import torch

    if len(prompts) != len(videos):
        raise ValueError(f"{len(prompts)} prompts but {len(videos)} videos")
    texts = [processor.apply_chat_template(build_messages(p, v is not None, system_prompt), tokenize=False,
                                           add_generation_prompt=True) for p, v in zip(prompts, videos)]
    vids = [v for v in videos if v is not None]
    inputs = processor(text=texts, padding=True, return_tensors="pt", **video_kwargs(processor, vids))
    device = next(model.parameters()).device
    inputs = inputs.to(device)
    tok = processor.tokenizer
    gen_kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": do_sample,
                                  "pad_token_id": tok.pad_token_id, "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>")}
    if do_sample:
        gen_kwargs["temperature"] = temperature
    with torch.no_grad():
        out = model.generate(**inputs, **gen_kwargs)
    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    return [t.strip() for t in tok.batch_decode(new_tokens, skip_special_tokens=True)]


def count_visual_tokens(processor, frames: np.ndarray, metadata: dict) -> dict[str, int]:
    """What one video costs: frames, pixels per frame after resizing, and visual tokens."""
    out = processor.video_processor(videos=[frames], return_tensors="pt", **{
        k: v for k, v in video_kwargs(processor, [(frames, metadata)]).items() if k != "videos"})
    t, h, w = (int(x) for x in out["video_grid_thw"][0])
    merge = processor.video_processor.merge_size
    patch = processor.video_processor.patch_size
    return {"frames": int(frames.shape[0]), "pixels_per_frame": h * w * patch * patch,
            "visual_tokens": t * h * w // (merge * merge)}
