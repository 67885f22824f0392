"""The offline tiny Qwen-VL: tokenizer, config, processor and weights, built on first use.

A randomly initialised Qwen2.5-VL or Qwen3-VL of about a million parameters with the real
model classes and mechanics (patching, spatial merge, M-RoPE), so every stage of the kit runs
on a CPU without downloads. ``tiny-motion`` gives its frozen vision tower a fixed motion front
end (:func:`motion_vision_tower`). Models are cached under ``runs/tiny_model`` by
:func:`tiny_model_dir`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mllm4d_lite.train.families import DEFAULT_SYSTEM_PROMPT, FAMILIES, SPECIAL_TOKENS, ModelSetupError, chat_template

log = logging.getLogger(__name__)

# Bumped whenever build_tiny_model's output changes, so cached tiny models are rebuilt.
TINY_BUILD_VERSION = "v3"

TINY_VISION = ("random", "motion")


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

    initializer_range 0.1 (not 0.02): at 0.02 a model this small has logits too flat for its loss
    to fall far (docs/stack.md).

    rope_theta (default: 10 for qwen2.5-vl, 10000 for qwen3-vl): Qwen2.5-VL's M-RoPE gives the
    (t, h, w) sections contiguous blocks of frequencies, h and w the lowest ones. With the tiny
    head dim of 32 and theta 10000 a step of one token column turns w's fastest pair by only
    0.006 rad, so positions in a frame are nearly indistinguishable to the LLM and it cannot learn
    where in a frame something is; theta 10 turns it by 0.12-0.24 rad per column (docs/stack.md).
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
    # The LM head is the frozen, tied embedding matrix and LoRA does not train the final RMSNorm;
    # with its gain at 1 the logits span too narrow a range around a random background for the
    # model to express "one of the four letters" confidently. Gain 2 doubles that range
    # (docs/stack.md).
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
        f"Randomly initialised tiny {family} model built offline by mllm4d_lite.train.tiny_model.build_tiny_model "
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



def tiny_model_dir(family: str = "qwen2.5-vl", root: str | Path = "runs/tiny_model", seed: int = 0,
                   vision: str = "random") -> Path:
    """The cached tiny model folder for ``family`` (and vision tower), built on first use."""
    suffix = "" if vision == "random" else f"-{vision}"
    path = Path(root) / f"{family}-seed{seed}-{TINY_BUILD_VERSION}{suffix}"
    if not (path / "config.json").is_file():
        build_tiny_model(path, family=family, seed=seed, vision=vision, replace=False)
    return path

