"""Models: the offline tiny Qwen-VL, loading real Qwen-VL checkpoints, video inputs, generation.

Two model families share one code path; every difference between them lives in
:data:`FAMILIES` and :func:`video_kwargs` below:

- ``qwen2.5-vl`` (the tiny default): the chat template emits
  ``<|vision_start|><|video_pad|><|vision_end|>``, patch 14.
- ``qwen3-vl`` (the paper's family): the template emits a bare ``<|video_pad|>`` (the processor
  wraps every temporal patch in its own vision start/end and a timestamp), patch 16, and the
  processor needs per-clip fps metadata.

Frames are always decoded by the kit (decord), never by transformers (which would need
torchcodec), and passed to the processor as arrays with ``do_sample_frames=False``.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

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
# `return_assistant_tokens_mask` works; {VISION} is replaced per family.
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


# Bumped whenever build_tiny_model's output changes, so cached tiny models are rebuilt.
TINY_BUILD_VERSION = "v3"


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


# ----------------------------------------------------------------------------------------------
# The offline tiny model
# ----------------------------------------------------------------------------------------------

def _tokenizer_corpus() -> list[str]:
    """Text the tiny tokenizer's BPE merges are learnt from: the kit's own prompt vocabulary.

    Byte-level BPE encodes any text; the corpus only decides which words become single tokens.
    """
    from mllm4d_lite import prompts

    words = (
        "red blue green yellow purple orange white black gray pink cyan brown cube sphere ball "
        "cylinder cone box pyramid object objects camera the a an is are was were which what how "
        "many much far direction moving move moves moved toward towards away from left right up "
        "down forward backward backwards closer farther approaching receding not no none static "
        "still stationary turning turns turned rotating rotates clockwise counter-clockwise "
        "counterclockwise seen above viewed top video clip during between first last frame frames "
        "metres meters distance travel travelled traveled final end start faster slower speed same "
        "there in of to on at by with and or does did do it its this that relative position "
        "change changes translation rotation counting count question answer options option letter "
        "Camera Center Object Center null thinking answer the at first frame last frame so "
        "moves in x y z zero one two three four five six seven eight nine ten".split()
    )
    lines = [prompts.ST_COT_SYSTEM_PROMPT, prompts.ST_COT_INSTRUCTION, prompts.DIRECT_INSTRUCTION,
             prompts.NUMERIC_DIRECT_INSTRUCTION, DEFAULT_SYSTEM_PROMPT]
    lines += [" ".join(words[i:i + 12]) for i in range(0, len(words), 12)]
    # ST-CoT-shaped text, so states and reasoning take few tokens (shorter targets, faster GRPO)
    rng = np.random.default_rng(0)
    for _ in range(200):
        a, b = rng.uniform(-9.99, 9.99, size=(2, 3))
        lines.append(f"<thinking>At frame 0 (first frame of the segment): Camera Center: {prompts.format_center(a)}; "
                     f"Object Center: {prompts.format_center(b)}. At frame 15 (last frame of the segment): "
                     f"Camera Center: {prompts.format_center(b)}; Object Center: null. The object moved by "
                     f"dx = {a[0]:.2f} m (right +), dy = {a[1]:.2f} m (down +), dz = {a[2]:.2f} m (forward +), "
                     f"{abs(a[0]):.2f} m in total; the largest horizontal part is dx, so it moves to the right."
                     f"</thinking><answer>{'ABCD'[_ % 4]}</answer>")
    lines += ["A: left\nB: right\nC: toward the camera\nD: not moving"]
    return lines * 4


def build_tokenizer(vocab_size: int = 1024):
    """A byte-level BPE trained offline on the kit's vocabulary, wrapped as Qwen2's tokenizer class
    with Qwen's special tokens (``<|im_start|>`` … ``<|video_pad|>``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=8192,
    )
    fast.padding_side = "left"  # decoder-only generation pads on the left
    return fast


def tiny_config(family: str, vocab_size: int, token_ids: dict[str, int], hidden_size: int = 128,
                num_layers: int = 4, vision_hidden_size: int = 64, vision_depth: int = 2,
                initializer_range: float = 0.1, rope_theta: float | None = None):
    """A tiny config with the real Qwen-VL mechanics (patch, spatial merge 2x2, temporal patch 2).

    initializer_range 0.1 (not 0.02): at 0.02 a model this small has max logits ~2.6 and its
    loss floors near 3.5 (measured, see the kit's stack notes).

    rope_theta (default: 10 for qwen2.5-vl, 10000 for qwen3-vl): Qwen2.5-VL's M-RoPE gives the
    (t, h, w) sections contiguous blocks of frequencies, h and w the lowest ones. With the tiny
    head dim of 32 and theta 10000 a step of one token column turns w's fastest pair by only
    0.006 rad, so positions in a frame are nearly indistinguishable to the LLM (toy left/right
    set, final-norm gain 2: 0.56 held-out, the blind level 0.50); theta 10 gives 0.12-0.24 rad per
    column (0.88-0.97).
    Qwen3-VL interleaves the sections, so every axis already gets fast frequencies.
    """
    if rope_theta is None:
        rope_theta = 10.0 if family == "qwen2.5-vl" else 10000.0
    common_text = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=4096, initializer_range=initializer_range,
        bos_token_id=token_ids["<|endoftext|>"], eos_token_id=token_ids["<|im_end|>"],
        pad_token_id=token_ids["<|endoftext|>"],
    )
    head_dim = hidden_size // 4
    ids = dict(
        image_token_id=token_ids["<|image_pad|>"], video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"], vision_end_token_id=token_ids["<|vision_end|>"],
    )
    if family == "qwen2.5-vl":
        from transformers import Qwen2_5_VLConfig

        half = head_dim // 2  # mrope sections (t, h, w) sum to head_dim / 2
        text = dict(common_text, rope_parameters={"rope_type": "default", "rope_theta": rope_theta,
                                                  "mrope_section": [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]})
        vision = dict(depth=vision_depth, hidden_size=vision_hidden_size, intermediate_size=vision_hidden_size * 2,
                      num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                      window_size=112, out_hidden_size=hidden_size, fullatt_block_indexes=[vision_depth - 1],
                      initializer_range=initializer_range)
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **ids)
    if family == "qwen3-vl":
        from transformers import Qwen3VLConfig

        half = head_dim // 2
        text = dict(common_text, head_dim=head_dim,
                    rope_parameters={"rope_type": "default", "rope_theta": rope_theta,
                                     "mrope_section": [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8],
                                     "mrope_interleaved": True})
        vision = dict(depth=vision_depth, hidden_size=vision_hidden_size, intermediate_size=vision_hidden_size * 2,
                      num_heads=2, patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                      out_hidden_size=hidden_size, num_position_embeddings=256,
                      deepstack_visual_indexes=[0], initializer_range=initializer_range)
        return Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **ids)
    raise ModelSetupError(f"unknown family {family!r}; use one of {list(FAMILIES)}")


def build_processor(family: str, tokenizer, max_pixels: int = 112 * 112, min_pixels: int = 28 * 28):
    """The real Qwen-VL processor classes around the tiny tokenizer."""
    if family == "qwen2.5-vl":
        from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

        size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
        image = Qwen2VLImageProcessor(size=size, patch_size=14, temporal_patch_size=2, merge_size=2)
        video = Qwen2VLVideoProcessor(size=size, patch_size=14, temporal_patch_size=2, merge_size=2,
                                      do_sample_frames=False, cap_pixels_per_frame=False)
        return Qwen2_5_VLProcessor(image_processor=image, video_processor=video, tokenizer=tokenizer,
                                   chat_template=chat_template(family))
    if family == "qwen3-vl":
        from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

        size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
        image = Qwen2VLImageProcessor(size=size, patch_size=16, temporal_patch_size=2, merge_size=2)
        # Qwen3-VL's video size bounds the whole clip (t*h*w): 8 frames' worth by default; the
        # kit's per-frame budget (set_pixel_budget) rescales it per call in video_kwargs().
        video = Qwen3VLVideoProcessor(size={"shortest_edge": min_pixels, "longest_edge": max_pixels * 8},
                                      patch_size=16, temporal_patch_size=2, merge_size=2, do_sample_frames=False,
                                      cap_pixels_per_frame=False)
        return Qwen3VLProcessor(image_processor=image, video_processor=video, tokenizer=tokenizer,
                                chat_template=chat_template(family))
    raise ModelSetupError(f"unknown family {family!r}; use one of {list(FAMILIES)}")


def build_tiny_model(out_dir: str | Path, family: str = "qwen2.5-vl", seed: int = 0, hidden_size: int = 128,
                     num_layers: int = 4, max_pixels: int = 112 * 112, final_norm_gain: float = 2.0,
                     vision: str = "random", replace: bool = True) -> Path:
    """Build, save and return the folder of a randomly initialised tiny Qwen-VL + processor.

    ``replace``: an existing ``out_dir`` is replaced; when False, a folder that another process
    finished meanwhile is kept (the build is deterministic) and this build is dropped.

    Deterministic from ``seed``. Loadable with ``AutoModelForImageTextToText.from_pretrained`` and
    ``AutoProcessor.from_pretrained``; never touches the network. ``vision="motion"`` then gives
    the (frozen) vision tower a fixed motion front end (:func:`motion_vision_tower`); the LLM is
    the same random one.
    """
    import torch
    from transformers import AutoModelForImageTextToText

    out_dir = Path(out_dir)
    if vision not in TINY_VISION:
        raise ModelSetupError(f"unknown tiny vision tower {vision!r}; use one of {list(TINY_VISION)}")
    if vision == "motion" and family != "qwen2.5-vl":
        raise ModelSetupError(f"the motion vision tower is built for the tiny qwen2.5-vl only, not {family!r}")
    tokenizer = build_tokenizer()
    token_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = tiny_config(family, len(tokenizer), token_ids, hidden_size=hidden_size, num_layers=num_layers)
    # The caller's random state is left as it was: a training run that builds the cached model on
    # first use must draw the same LoRA initialisation as one that finds it built.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config)
    # The LM head is the frozen, tied embedding matrix (std 0.1, |e| ~ 1.1) and LoRA does not train
    # the final RMSNorm; with its gain at 1 the logits span only ~[-13, 13] around a random
    # background, so the model cannot express "one of the four letters" (the letters' total
    # probability plateaued at 0.45 and the SFT loss at 1.1 on every run; measured). Gain 2 doubles
    # that range; the same runs then reach a loss of 0.64-0.70.
    with torch.no_grad():
        model.model.language_model.norm.weight.fill_(final_norm_gain)
    if vision == "motion":
        motion_vision_tower(model)
    model.generation_config.eos_token_id = token_ids["<|im_end|>"]
    model.generation_config.pad_token_id = token_ids["<|endoftext|>"]
    model.generation_config.do_sample = False
    processor = build_processor(family, tokenizer, max_pixels=max_pixels)
    import shutil
    import tempfile

    # a private temporary folder: two processes may build the same cached model at once
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    (tmp / "TINY_MODEL.txt").write_text(
        f"Randomly initialised tiny {family} model built offline by mllm4d_lite.train.model.build_tiny_model "
        f"(seed {seed}, hidden {hidden_size}, layers {num_layers}, final norm gain {final_norm_gain}, "
        f"vision tower {vision}, build {TINY_BUILD_VERSION}). Not a pretrained model.\n"
    )
    if out_dir.exists() and replace:
        shutil.rmtree(out_dir)
    try:
        tmp.rename(out_dir)
    except OSError:
        if replace or not (out_dir / "config.json").is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(tmp)  # another process finished the same (deterministic) build first
        log.info("tiny model %s was built by another process meanwhile; using it", out_dir)
        return out_dir
    n_params = sum(p.numel() for p in model.parameters())
    log.info("built tiny %s model: %.2f M parameters -> %s", family, n_params / 1e6, out_dir)
    return out_dir


def motion_vision_tower(model) -> None:
    """Give a tiny Qwen2.5-VL's vision tower a fixed (not trained) motion front end, in place.

    The random tower hides what moves where: with it the tiny LLM does not learn which way a
    rendered object moves, while from the same clips' per-token object masks it does (see
    ``scripts/bench_learning.py``). A real Qwen-VL brings a pretrained tower; offline we build
    one that passes on change over time. The patch embedding becomes a low-frequency 2D DCT basis
    (per colour channel: the 3x3 lowest frequencies; on the grey level: 5 more) applied to the sum
    (x 0.1) and to the difference (x 3) of each temporal patch's two frames, and the vision blocks'
    residual branches are damped (x 0.1): wherever the two frames of a pair differ, the
    frame-difference coefficients dominate a token's features (the merger's LayerNorm rescales
    each token, so static content still passes on). Nothing is trained. Only the tiny build's
    vision hidden size of 64 fits the 64 filters.
    """
    import torch

    proj = model.model.visual.patch_embed.proj
    weight = proj.weight  # (hidden, 3, temporal 2, P, P)
    hidden, size = weight.shape[0], weight.shape[-1]
    x = np.arange(size)

    def cosine(u: int) -> np.ndarray:
        v = np.cos(np.pi * (x + 0.5) * u / size)
        return v / np.linalg.norm(v)

    pair_sum, pair_diff = np.array([1.0, 1.0]) / np.sqrt(2), np.array([1.0, -1.0]) / np.sqrt(2)
    filters, is_diff = [], []
    for channel in range(3):
        for temporal, diff in ((pair_sum, False), (pair_diff, True)):
            for u in range(3):
                for v in range(3):
                    f = np.zeros((3, 2, size, size))
                    f[channel] = temporal[:, None, None] * np.outer(cosine(u), cosine(v))[None]
                    filters.append(f)
                    is_diff.append(diff)
    for temporal, diff in ((pair_sum, False), (pair_diff, True)):
        for u, v in ((0, 3), (3, 0), (1, 3), (3, 1), (3, 3)):
            f = np.zeros((3, 2, size, size))
            f[:] = temporal[:, None, None] * np.outer(cosine(u), cosine(v))[None] / np.sqrt(3)
            filters.append(f)
            is_diff.append(diff)
    if hidden != len(filters) or weight.shape[1:3] != (3, 2):
        raise ModelSetupError(f"the motion tower needs a vision hidden size of {len(filters)} and temporal patches "
                              f"of 2 frames, got {tuple(weight.shape)}")
    scale = torch.tensor([3.0 if d else 0.1 for d in is_diff], dtype=weight.dtype)[:, None, None, None, None]
    with torch.no_grad():
        weight.copy_(torch.tensor(np.stack(filters), dtype=weight.dtype) * scale)
        for block in model.model.visual.blocks:
            block.attn.proj.weight.mul_(0.1)
            block.mlp.down_proj.weight.mul_(0.1)


TINY_VISION = ("random", "motion")


def tiny_model_dir(family: str = "qwen2.5-vl", root: str | Path = "runs/tiny_model", seed: int = 0,
                   vision: str = "random") -> Path:
    """The cached tiny model folder for ``family`` (and vision tower), built on first use."""
    suffix = "" if vision == "random" else f"-{vision}"
    path = Path(root) / f"{family}-seed{seed}-{TINY_BUILD_VERSION}{suffix}"
    if not (path / "config.json").is_file():
        build_tiny_model(path, family=family, seed=seed, vision=vision, replace=False)
    return path


def resolve_model_name(name: str) -> str:
    """``tiny`` / ``tiny-qwen2.5-vl`` / ``tiny-qwen3-vl`` -> the cached tiny folder, ``tiny-motion``
    -> the tiny Qwen2.5-VL with the motion vision tower (:func:`motion_vision_tower`); else as given."""
    if name in ("tiny", "tiny-qwen2.5-vl"):
        return str(tiny_model_dir("qwen2.5-vl"))
    if name == "tiny-motion":
        return str(tiny_model_dir("qwen2.5-vl", vision="motion"))
    if name == "tiny-qwen3-vl":
        return str(tiny_model_dir("qwen3-vl"))
    return name


def warn_if_adapter_base_differs(adapter: str | Path, model: str) -> str | None:
    """Log (and return) a warning when the LoRA adapter in ``adapter`` was trained on another base
    than ``model`` (a name or folder): shapes may still match, as between the tiny builds, and the
    run would go on with weights learnt for another model."""
    import json

    try:
        trained_on = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None
    if not trained_on or str(trained_on) == model \
            or Path(str(trained_on)).resolve() == Path(resolve_model_name(model)).resolve():
        return None
    message = (f"adapter {adapter} was trained on {trained_on} but the model is {model}; LoRA shapes may still "
               "match, but its weights were learnt for another base (pass the model it was trained on)")
    log.warning("%s", message)
    return message


# ----------------------------------------------------------------------------------------------
# Devices and loading
# ----------------------------------------------------------------------------------------------

def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def pick_device(device: str | None = None) -> str:
    """``cuda`` when present, else ``cpu``; an explicit ``cuda`` without a GPU is an error."""
    if device in (None, "", "auto"):
        return "cuda" if cuda_available() else "cpu"
    if device.startswith("cuda") and not cuda_available():
        raise ModelSetupError(f"`device: {device}` needs a CUDA GPU; use `device: cpu` (recipes/tiny/...) on CPU")
    return device


def pick_dtype(dtype: str | None, device: str):
    import torch

    if dtype in (None, "", "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ModelSetupError(f"`dtype: {dtype}` is not one of {sorted(table)}")
    return table[dtype]


def unsloth_importable() -> bool:
    try:
        import unsloth  # noqa: F401
    except Exception:  # unsloth raises various errors without a GPU
        return False
    return True


def check_gpu_only_settings(device: str, use_unsloth: bool = False, use_vllm: bool = False,
                            cpu_recipe: str = "recipes/tiny/") -> None:
    """Clear errors for settings that only work on a CUDA GPU."""
    if device.startswith("cuda"):
        return
    if use_unsloth:
        raise ModelSetupError(f"`use_unsloth: true` needs a CUDA GPU; use {cpu_recipe}... (use_unsloth: false) on CPU")
    if use_vllm:
        raise ModelSetupError(f"`use_vllm: true` needs a CUDA GPU with vLLM installed; use {cpu_recipe}... "
                              "(use_vllm: false) on CPU")


def quantization_config(quant: str | None, compute_dtype):
    """bitsandbytes config for ``quant`` in (None, "4bit", "8bit"); NF4 + double quant for 4-bit."""
    if quant in (None, "", "none"):
        return None
    from transformers import BitsAndBytesConfig

    if quant == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype,
                                  llm_int8_skip_modules=["visual", "model.visual", "lm_head"])
    if quant == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=["visual", "model.visual", "lm_head"])
    raise ModelSetupError(f"`quant: {quant}` is not one of none, 4bit, 8bit")


def load_processor(name_or_path: str, max_pixels: int | None = None, min_pixels: int | None = None):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(resolve_model_name(name_or_path))
    if getattr(processor.tokenizer, "padding_side", None) != "left":
        processor.tokenizer.padding_side = "left"
    set_pixel_budget(processor, max_pixels, min_pixels)
    return processor


def set_pixel_budget(processor, max_pixels: int | None = None, min_pixels: int | None = None) -> None:
    """Per-frame pixel budget of the video processor (``max_pixels`` = the paper's 50176 = 224x224)."""
    vp = processor.video_processor
    if max_pixels is None and min_pixels is None:
        return
    size = dict(vp.size) if vp.size is not None else {}
    if max_pixels is not None:
        # Qwen3-VL's video processor bounds pixels of the whole clip (t*h*w); we bound per frame
        # (as the paper's max_pixels) and scale it by the frame count in video_kwargs().
        size["longest_edge"] = int(max_pixels)
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
    vp.size = size
    vp.frame_max_pixels = int(max_pixels) if max_pixels is not None else None


def load_model_and_processor(model: str, adapter: str | None = None, device: str | None = None,
                             quant: str | None = None, dtype: str | None = None, use_unsloth: bool = False,
                             max_pixels: int | None = None, min_pixels: int | None = None,
                             gradient_checkpointing: bool = False, trainable_adapter: bool = False):
    """Load a Qwen-VL (tiny folder, local folder or hub name) and its processor.

    Args:
        model: ``tiny``, ``tiny-qwen3-vl``, a folder, or a hub name (GPU machines with a hub).
        adapter: a peft LoRA adapter folder to apply (SFT / cold-start / GRPO output).
        quant: None, ``4bit`` (QLoRA, NF4) or ``8bit``; 4-bit on CPU works but is slow (warns).
        use_unsloth: load through Unsloth's vision loader (CUDA only; falls back with a warning
            when Unsloth does not import).
        trainable_adapter: keep the adapter's LoRA weights trainable (continue training from it).
    Returns: (model, processor), model in eval mode unless ``trainable_adapter``.
    """
    from transformers import AutoModelForImageTextToText

    device = pick_device(device)
    check_gpu_only_settings(device, use_unsloth=use_unsloth)
    torch_dtype = pick_dtype(dtype, device)
    path = resolve_model_name(model)
    if quant not in (None, "", "none") and not device.startswith("cuda"):
        warnings.warn(f"`quant: {quant}` on CPU works through bitsandbytes but is slow; "
                      "use `quant: none` with recipes/tiny/ on CPU", stacklevel=2)
    processor = load_processor(path, max_pixels=max_pixels, min_pixels=min_pixels)
    if use_unsloth and unsloth_importable():
        from unsloth import FastVisionModel

        net, _ = FastVisionModel.from_pretrained(path, load_in_4bit=(quant == "4bit"), dtype=torch_dtype,
                                                 use_gradient_checkpointing="unsloth" if gradient_checkpointing else False)
    else:
        if use_unsloth:
            log.warning("use_unsloth: true but Unsloth does not import here; loading with transformers + peft")
        qconf = quantization_config(quant, torch_dtype)
        kwargs: dict[str, Any] = {"dtype": torch_dtype}
        if qconf is not None:
            kwargs["quantization_config"] = qconf
            kwargs["device_map"] = {"": device if device != "cuda" else 0}
        net = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        if qconf is None:
            net.to(device)
    if adapter:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ModelSetupError(f"{adapter}: no adapter_config.json; pass the folder an `mllm4d sft`/`grpo` run "
                                  "wrote its adapter to (e.g. runs/demo/sft/adapter)")
        warn_if_adapter_base_differs(adapter, model)
        net = PeftModel.from_pretrained(net, adapter, is_trainable=trainable_adapter)
    if not trainable_adapter:
        net.eval()
    return net, processor


# ----------------------------------------------------------------------------------------------
# Training helpers shared by the sft and grpo stages
# ----------------------------------------------------------------------------------------------

def save_adapter(model, adapter_dir: str | Path, **save_kwargs: Any) -> Path:
    """Save a peft adapter to ``adapter_dir`` through ``<adapter_dir>.tmp``, replacing any old one,
    so a crash never leaves a half-written adapter."""
    import shutil

    adapter_dir = Path(adapter_dir)
    tmp = adapter_dir.with_name(adapter_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp), **save_kwargs)
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    tmp.replace(adapter_dir)
    return adapter_dir


def quiet_progress(trainer) -> None:
    """Keep transformers' progress bar but drop its dict dump on every log (the stages log a line)."""
    from transformers.trainer_callback import ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            return

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(QuietProgress())


THREADS_FILE_ENV = "MLLM4D_THREADS_FILE"


def thread_share_callback(path: str | Path | None = None):
    """A ``TrainerCallback`` that, before each step, sets torch's CPU threads to the number written
    in ``path`` (default: the file ``$MLLM4D_THREADS_FILE`` names); None when neither is given.

    The demo trains on one core while evaluations run on the other, then writes the core count to
    the file once they are done, so the training takes the free core. Threads change the speed only:
    a tiny-model run gives the same weights with 1 or 2 threads (README, "The demo"). A missing,
    empty or non-numeric file leaves the threads as they are.
    """
    import torch
    from transformers import TrainerCallback

    path = path or os.environ.get(THREADS_FILE_ENV)
    if not path:
        return None
    path = Path(path)

    class FollowThreads(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            try:
                n = int(path.read_text().strip())
            except (OSError, ValueError):
                return
            if n > 0 and n != torch.get_num_threads():
                log.info("step %d: %d CPU thread(s) from here on (%s)", state.global_step, n, path)
                torch.set_num_threads(n)

    return FollowThreads()


def follow_thread_share(trainer) -> None:
    """Add :func:`thread_share_callback` to ``trainer`` when ``$MLLM4D_THREADS_FILE`` is set."""
    callback = thread_share_callback()
    if callback is not None:
        trainer.add_callback(callback)


# ----------------------------------------------------------------------------------------------
# Video inputs and generation
# ----------------------------------------------------------------------------------------------

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
