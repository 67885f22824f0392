"""The two Qwen-VL families the kit runs, and everything that differs between them.

Two model families share one code path; every difference between them lives in
:data:`FAMILIES` here and in :func:`mllm4d_lite.train.video_inputs.video_kwargs`:

- ``qwen2.5-vl`` (the tiny default): the chat template emits
  ``<|vision_start|><|video_pad|><|vision_end|>``, patch 14.
- ``qwen3-vl`` (the paper's family): the template emits a bare ``<|video_pad|>`` (the processor
  wraps every temporal patch in its own vision start/end and a timestamp), patch 16, and the
  processor needs per-clip fps metadata.

Frames are always decoded by the kit (decord), never by transformers (which would need
torchcodec), and passed to the processor as arrays with ``do_sample_frames=False``.
"""

from __future__ import annotations

from typing import Any

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# Qwen-style ChatML template. `{% generation %}` marks assistant text so that
# `return_assistant_tokens_mask` works; {VIDEO} is replaced per family.
_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>{% endgeneration %}\n"
    "{% else %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' or 'video' in part %}{VIDEO}"
    "{% elif part['type'] == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Everything that differs between the two families.
FAMILIES: dict[str, dict[str, Any]] = {
    "qwen2.5-vl": {
        "video_placeholder": "<|vision_start|><|video_pad|><|vision_end|>",
        "patch_size": 14,
        "model_type": "qwen2_5_vl",
        "needs_fps_metadata": False,
    },
    "qwen3-vl": {
        "video_placeholder": "<|video_pad|>",
        "patch_size": 16,
        "model_type": "qwen3_vl",
        "needs_fps_metadata": True,
    },
}

# Real checkpoints the recipes name (used only where a hub or a local copy is reachable).
REAL_MODELS = {
    "Qwen/Qwen2.5-VL-3B-Instruct": "qwen2.5-vl",
    "Qwen/Qwen2.5-VL-7B-Instruct": "qwen2.5-vl",
    "Qwen/Qwen3-VL-2B-Instruct": "qwen3-vl",
    "Qwen/Qwen3-VL-4B-Instruct": "qwen3-vl",
    "Qwen/Qwen3-VL-8B-Instruct": "qwen3-vl",
}


class ModelSetupError(ValueError):
    """A model setting cannot work here; the message names the setting and the fix."""


def chat_template(family: str) -> str:
    return _CHAT_TEMPLATE.replace("{VIDEO}", FAMILIES[family]["video_placeholder"])


def family_of(obj: Any) -> str:
    """The family (``qwen2.5-vl`` / ``qwen3-vl``) of a model, config or processor."""
    config = getattr(obj, "config", obj)
    model_type = getattr(config, "model_type", None)
    if model_type is None:  # a processor
        name = type(obj).__name__.lower()
        return "qwen3-vl" if "qwen3" in name else "qwen2.5-vl"
    for family, spec in FAMILIES.items():
        if model_type == spec["model_type"]:
            return family
    if model_type == "qwen2_vl":
        return "qwen2.5-vl"
    raise ModelSetupError(f"unsupported model type {model_type!r}; the kit supports {list(FAMILIES)}")
