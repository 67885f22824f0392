"""vLLM generation that sees the video: GRPO prompts -> vLLM requests with the clip's frames.

TRL 1.16 hands vLLM token ids and images only, so a video prompt would be generated blind. The
kit builds the requests itself, in vLLM's documented multimodal input format, from the same
rendered prompt and the same decoded frames the transformers path gets
(:meth:`mllm4d_lite.train.grpo_trainer.VideoGRPOTrainer._tokenize_prompts`):

- ``prompt``: the chat-template text with exactly one ``<|vision_start|><|video_pad|><|vision_end|>``
  per video (vLLM expands it to the video's tokens; the kit's Qwen3-VL template emits a bare
  ``<|video_pad|>``, which is wrapped here because vLLM's Qwen3-VL processor looks for the
  three-token sequence);
- ``multi_modal_data``: ``{"video": (frames, metadata)}``, frames (T, H, W, 3) uint8 RGB as the kit
  decoded them, metadata ``fps``, ``frames_indices``, ``total_num_frames``, ``duration`` and
  ``do_sample_frames: False`` (the kit already sampled the frames). Qwen3-VL's processor needs the
  metadata for its timestamps; under transformers 5 Qwen2.5-VL's ``second_per_grid_ts`` also comes
  from it (``temporal_patch_size / sampled fps``; without it the processor assumes 24 fps);
- ``mm_processor_kwargs``: what the kit passes the transformers processor
  (:func:`~mllm4d_lite.train.video_inputs.video_kwargs`: ``do_sample_frames: False``, the
  resize budget ``size``);
- sampling: ``n`` completions per distinct prompt, ``temperature``, ``top_p``, ``top_k``, ``min_p``,
  ``max_tokens``, ``stop_token_ids`` (``<|im_end|>``), ``logprobs=0`` (the sampled token's
  log-prob, for TRL's importance-sampling correction) and a ``logit_bias`` of -100 on the
  vision tokens, vLLM's form of the transformers path's ``suppress_tokens``.

Two modes (``vllm_mode``): ``colocate`` calls ``LLM.generate`` of the engine TRL created (and keeps
in step with the policy's weights); ``server`` posts one chat-completion request per prompt to the
``trl vllm-serve`` server (TRL's ``VLLMClient`` sends images only), with the frames as a
``data:video/jpeg`` URL (JPEG, quality 95: the server's frames differ from the kit's by JPEG
rounding) and the same processor kwargs; TRL still pushes the weights to that server.

vLLM is imported only inside :func:`generate_colocate`; nothing here needs it to build requests.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"
VIDEO_PAD = "<|video_pad|>"
VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
#: vLLM clamps logit biases to [-100, 100]; -100 makes a token unreachable in practice
SUPPRESS_BIAS = -100.0
#: JPEG quality of the frames sent to a server
JPEG_QUALITY = 95


@dataclass
class VideoRequest:
    """One distinct prompt: its vLLM inputs and the batch rows its ``n`` completions fill (in order)."""

    prompt: str
    frames: np.ndarray  # (T, H, W, 3) uint8 RGB, as the kit decoded them
    metadata: dict[str, Any]  # fps, frames_indices, total_num_frames, duration
    family: str
    mm_processor_kwargs: dict[str, Any]
    rows: list[int] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.rows)

    def multi_modal_data(self) -> dict[str, Any]:
        """``{"video": (frames (T, H, W, 3) uint8, metadata)}``, vLLM's video-with-metadata form."""
        meta = {"fps": float(self.metadata["fps"]), "frames_indices": [int(i) for i in self.metadata["frames_indices"]],
                "total_num_frames": int(self.metadata["total_num_frames"]),
                "duration": float(self.metadata["duration"]), "do_sample_frames": False}
        return {"video": (self.frames, meta)}

    def colocate_input(self) -> dict[str, Any]:
        """The prompt dict ``LLM.generate`` takes (vLLM's ``TextPrompt``)."""
        return {"prompt": self.prompt, "multi_modal_data": self.multi_modal_data(),
                "mm_processor_kwargs": dict(self.mm_processor_kwargs)}


def placeholder_prompt(text: str, num_videos: int = 1) -> str:
    """``text`` with each video's placeholder as the three-token sequence vLLM expands.

    Raises ValueError when the text holds another number of video placeholders than ``num_videos``
    (an expanded prompt, i.e. token text after the processor, is refused: vLLM would expand again)."""
    count = text.count(VIDEO_PAD)
    if count != num_videos:
        raise ValueError(f"the prompt holds {count} {VIDEO_PAD} tokens for {num_videos} video(s); give vLLM the chat "
                         "template's text (one placeholder per video), not the processor's expanded text")
    if text.count(VIDEO_PLACEHOLDER) == num_videos:
        return text
    return text.replace(VIDEO_PAD, VIDEO_PLACEHOLDER)


def sampled_fps(metadata: dict[str, Any]) -> float:
    """Frame rate of the sampled frames (transformers' ``VideoMetadata.sampled_fps``): what sets
    Qwen2.5-VL's ``second_per_grid_ts`` = temporal patch / fps."""
    fps = float(metadata["fps"])
    total = metadata.get("total_num_frames")
    indices = metadata.get("frames_indices")
    if not total or indices is None:
        return fps
    return len(indices) / float(total) * fps


def processor_kwargs(processor, frames: np.ndarray, metadata: dict[str, Any]) -> dict[str, Any]:
    """``mm_processor_kwargs`` matching the transformers processor's settings for this video."""
    from mllm4d_lite.train.video_inputs import video_kwargs

    kwargs = {k: v for k, v in video_kwargs(processor, [(frames, metadata)]).items()
              if k not in ("videos", "video_metadata")}
    size = getattr(processor.video_processor, "size", None)
    if "size" not in kwargs and size:  # the loader's max/min_pixels, which vLLM's processor would not know
        kwargs["size"] = {k: int(v) for k, v in dict(size).items() if v is not None}
    return kwargs


def sampling_kwargs(*, temperature: float, top_p: float, top_k: int, min_p: float, max_tokens: int,
                    stop_token_ids: Sequence[int], suppress_token_ids: Sequence[int] = (),
                    repetition_penalty: float = 1.0, n: int = 1, logprobs: int | None = 0) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` (and of a server request) for GRPO sampling.

    ``top_k`` 0 and ``min_p`` 0 mean off in the kit, as in vLLM."""
    return {"n": int(n), "temperature": float(temperature), "top_p": float(top_p), "top_k": int(top_k),
            "min_p": float(min_p or 0.0), "max_tokens": int(max_tokens), "repetition_penalty": float(repetition_penalty),
            "stop_token_ids": [int(t) for t in stop_token_ids], "logprobs": logprobs,
            "logit_bias": {int(t): SUPPRESS_BIAS for t in suppress_token_ids}}


def grpo_sampling_kwargs(args, tokenizer) -> dict[str, Any]:
    """:func:`sampling_kwargs` from a ``trl.GRPOConfig`` (what the trainer runs with) and the tokenizer."""
    from mllm4d_lite.train.grpo_trainer import vision_token_ids

    stop = [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stop:
        stop.append(int(tokenizer.eos_token_id))
    return sampling_kwargs(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k or 0,
                           min_p=args.min_p or 0.0, max_tokens=args.max_completion_length, stop_token_ids=stop,
                           suppress_token_ids=vision_token_ids(tokenizer),
                           repetition_penalty=getattr(args, "repetition_penalty", 1.0) or 1.0)


def build_requests(processor, texts: Sequence[str], videos: Sequence[tuple[np.ndarray, dict]],
                   row_to_unique: Sequence[int] | None = None) -> list[VideoRequest]:
    """One :class:`VideoRequest` per distinct prompt of a GRPO batch.

    ``texts[i]``: row i's rendered chat (``apply_chat_template(..., tokenize=False,
    add_generation_prompt=True)``); ``videos[i]``: its (frames (T, H, W, 3) uint8, metadata);
    ``row_to_unique[i]``: which distinct prompt row i is (default: rows with the same text and
    the same frames object share one)."""
    from mllm4d_lite.train.families import family_of

    if len(texts) != len(videos):
        raise ValueError(f"{len(texts)} prompts but {len(videos)} videos")
    if row_to_unique is None:
        first: dict[tuple[str, int], int] = {}
        row_to_unique = [first.setdefault((t, id(v[0])), len(first)) for t, v in zip(texts, videos)]
    family = family_of(processor)
    requests: dict[int, VideoRequest] = {}
    for row, (text, (frames, meta), u) in enumerate(zip(texts, videos, row_to_unique)):
        if u not in requests:
            frames = np.asarray(frames)
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
                raise ValueError(f"video frames must be (T, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
            requests[u] = VideoRequest(placeholder_prompt(text), frames, dict(meta), family,
                                       processor_kwargs(processor, frames, meta))
        requests[u].rows.append(row)
    return [requests[u] for u in sorted(requests)]


def _scatter(requests: Sequence[VideoRequest], per_request: Sequence[Sequence[tuple[list[int], list[float] | None]]]
             ) -> tuple[list[list[int]], list[list[float]] | None]:
    rows = sum(r.n for r in requests)
    ids: list[list[int] | None] = [None] * rows
    logps: list[list[float] | None] = [None] * rows
    for req, outs in zip(requests, per_request):
        if len(outs) != req.n:
            raise RuntimeError(f"vLLM returned {len(outs)} completions for a prompt that asked for {req.n}")
        for row, (token_ids, token_logps) in zip(req.rows, outs):
            ids[row], logps[row] = list(token_ids), token_logps
    have_logps = all(lp is not None for lp in logps)
    return ids, (logps if have_logps else None)


def generate_colocate(llm, requests: Sequence[VideoRequest], sampling: dict[str, Any]
                      ) -> tuple[list[list[int]], list[list[float]] | None]:
    """``LLM.generate`` on the requests; completion ids and sampled-token log-probs per batch row."""
    from vllm import SamplingParams

    params = [SamplingParams(**{**sampling, "n": req.n}) for req in requests]
    outputs = llm.generate([req.colocate_input() for req in requests], sampling_params=params, use_tqdm=False)
    per_request = []
    for out in outputs:
        seqs = []
        for completion in out.outputs:
            lps = None
            if completion.logprobs is not None:
                lps = [float(step[tok].logprob) for step, tok in zip(completion.logprobs, completion.token_ids)]
            seqs.append((list(completion.token_ids), lps))
        per_request.append(seqs)
    return _scatter(requests, per_request)


# ----------------------------------------------------------------------------- server mode
def frames_data_url(frames: np.ndarray, quality: int = JPEG_QUALITY) -> str:
    """``data:video/jpeg;base64,<frame 0>,<frame 1>,...``: vLLM's form for a video given as frames."""
    import cv2

    parts = []
    for frame in frames:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError("a frame could not be JPEG-encoded")
        parts.append(base64.b64encode(buf.tobytes()).decode())
    return "data:video/jpeg;base64," + ",".join(parts)


def server_payload(req: VideoRequest, messages: list[dict[str, Any]], sampling: dict[str, Any],
                   model: str) -> dict[str, Any]:
    """An OpenAI chat-completion request for vLLM's server: the chat with the video as frames,
    the processor kwargs, ``n`` and the sampling settings; token ids and log-probs come back."""
    content_msgs = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "video":
                    parts.append({"type": "video_url", "video_url": {"url": frames_data_url(req.frames)}})
                else:
                    parts.append({"type": "text", "text": part.get("text", "")})
            content_msgs.append({"role": message["role"], "content": parts})
        else:
            content_msgs.append({"role": message["role"], "content": content})
    body = {k: v for k, v in sampling.items() if k not in ("logprobs", "logit_bias")}
    body.update({"model": model, "messages": content_msgs, "n": req.n, "logprobs": True, "top_logprobs": 0,
                 "logit_bias": {str(k): v for k, v in sampling.get("logit_bias", {}).items()},
                 "return_token_ids": True, "skip_special_tokens": False, "add_generation_prompt": True,
                 "mm_processor_kwargs": dict(req.mm_processor_kwargs)})
    return body


def generate_server(base_url: str, requests: Sequence[VideoRequest], messages: Sequence[list[dict[str, Any]]],
                    sampling: dict[str, Any], model: str, timeout_s: float = 600.0
                    ) -> tuple[list[list[int]], list[list[float]] | None]:
    """Post one request per distinct prompt to ``{base_url}/v1/chat/completions``."""
    import urllib.request

    per_request = []
    for req, msgs in zip(requests, messages):
        data = json.dumps(server_payload(req, msgs, sampling, model)).encode()
        http = urllib.request.Request(f"{base_url.rstrip('/')}/v1/chat/completions", data=data,
                                      headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(http, timeout=timeout_s) as resp:  # noqa: S310 - the user's own server
            reply = json.loads(resp.read())
        seqs = []
        for choice in reply["choices"]:
            content = (choice.get("logprobs") or {}).get("content")
            lps = [float(t["logprob"]) for t in content] if content else None
            seqs.append((list(choice["token_ids"]), lps))
        per_request.append(seqs)
    return _scatter(requests, per_request)
