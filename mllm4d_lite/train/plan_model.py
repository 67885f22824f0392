"""What the memory planner knows of a model: its config, exact parameter counts, LoRA sizes, tokens.

Everything here is exact or follows the real code: the config is the model's own ``config.json``
(:func:`mllm4d_lite.train.shapes.shape_config`, or the tiny build's :func:`~mllm4d_lite.train.tiny_model.tiny_config`),
the parameters are counted on the model built on the ``meta`` device (no memory, no weights),
which Linear layers bitsandbytes quantises is decided by transformers' own rule with the kit's
skip list, LoRA targets are resolved on the real module names, and visual tokens come from the
processors' own ``smart_resize``. The byte arithmetic built on top: :mod:`mllm4d_lite.train.plan_memory`.

Model names: a hub name the recipes use (``Qwen/Qwen2.5-VL-3B-Instruct``...), ``shapes:<name>``
(``shapes:qwen2.5-vl-3b``, ``shapes:qwen3-vl-4b``, ``shapes:qwen3-vl-8b``; ``layers`` N > 0 cuts
them to N decoder layers and vision blocks as ``shape_layers`` does), the tiny builds (``tiny``,
``tiny-motion``, ``tiny-qwen2.5-vl``, ``tiny-qwen3-vl``) or a folder with a ``config.json``.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mllm4d_lite.train.families import ModelSetupError

TINY_NAMES = {"tiny": "qwen2.5-vl", "tiny-motion": "qwen2.5-vl", "tiny-qwen2.5-vl": "qwen2.5-vl",
              "tiny-qwen3-vl": "qwen3-vl"}


@dataclass
class ModelShape:
    """A model's dimensions and exact parameter counts (elements, not bytes).

    ``groups``: ``linear`` (weights of the Linear layers bitsandbytes replaces with the kit's skip
    list, quantised in a 4/8-bit run: every LLM decoder projection), ``llm_other`` (norms, biases), ``embeddings``
    (``embed_tokens``, shared with ``lm_head`` when ``tied``), ``lm_head`` (0 when tied), ``vision``
    (the whole vision tower with its mergers, never quantised by the kit). ``linear_sizes``:
    the element count of each such weight (for the per-tensor quantisation state).
    """

    name: str
    family: str  # qwen2.5-vl | qwen3-vl
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qk_norm: bool
    vis_depth: int
    vis_hidden: int
    vis_intermediate: int
    vis_gated_mlp: bool
    patch: int
    merge: int
    temporal_patch: int
    in_channels: int
    deepstack: int
    groups: dict[str, int] = field(default_factory=dict)
    linear_sizes: list[int] = field(default_factory=list)
    total: int = 0

    @property
    def largest_linear(self) -> int:
        return max(self.linear_sizes, default=0)


def _config_from_json(path: Path):
    from transformers import AutoConfig

    data = json.loads(path.read_text())
    model_type = data.pop("model_type", None)
    if model_type is None:
        raise ModelSetupError(f"{path}: no model_type in the config")
    return AutoConfig.for_model(model_type, **data)


@functools.lru_cache(maxsize=None)
def _tiny_config(family: str):
    from mllm4d_lite.train.families import SPECIAL_TOKENS
    from mllm4d_lite.train.tiny_model import build_tokenizer, tiny_config

    tok = build_tokenizer()
    return tiny_config(family, len(tok), {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS})


def shape_name_of(name: str) -> str | None:
    """``shapes:<key>`` for a ``shapes:`` name or the hub name of a kept architecture, else None."""
    from mllm4d_lite.train.shapes import SHAPE_MODELS, SHAPE_PREFIX

    if name.startswith(SHAPE_PREFIX):
        return name
    return next((SHAPE_PREFIX + k for k, v in SHAPE_MODELS.items() if v["hub"] == name), None)


def model_config(name: str, layers: int = 0):
    """The transformers config of a model name (see the module docstring); raises
    :class:`ModelSetupError` naming the known names otherwise. ``layers`` applies to ``shapes:`` names."""
    from mllm4d_lite.train.shapes import SHAPE_MODELS, SHAPE_PREFIX, shape_config

    if name in TINY_NAMES:
        return _tiny_config(TINY_NAMES[name])
    shape = shape_name_of(name)
    if shape is not None:
        return shape_config(shape, layers if name.startswith(SHAPE_PREFIX) else 0)
    folder = Path(name)
    if (folder / "config.json").is_file():
        return _config_from_json(folder / "config.json")
    known = sorted(v["hub"] for v in SHAPE_MODELS.values()) + [SHAPE_PREFIX + k for k in SHAPE_MODELS]
    raise ModelSetupError(f"the planner does not know the model {name!r}: use one of {known}, "
                          f"{sorted(TINY_NAMES)} or a folder with a config.json")


@functools.lru_cache(maxsize=8)
def meta_model(name: str, layers: int = 0):
    """The model built on the ``meta`` device from its config (exact shapes, no memory)."""
    import torch
    from transformers import AutoModelForImageTextToText

    config = model_config(name, layers)
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config)


def quantised_linear_names(model) -> set[str]:
    """Names of the Linear modules bitsandbytes replaces in a 4-bit (or 8-bit) load with the kit's
    skip list (:func:`mllm4d_lite.train.loading.quantization_config`), by transformers' own rule."""
    import torch
    from transformers.quantizers.quantizers_utils import should_convert_module

    from mllm4d_lite.train.loading import quantization_config

    skip = list(quantization_config("4bit", torch.bfloat16).llm_int8_skip_modules or [])
    skip += list(getattr(model, "_keep_in_fp32_modules", None) or [])
    return {n for n, m in model.named_modules()
            if type(m) is torch.nn.Linear and should_convert_module(n, skip)}


def _in_vision(name: str) -> bool:
    return name.startswith("visual.") or ".visual." in name


@functools.lru_cache(maxsize=16)
def model_shape(name: str, layers: int = 0) -> ModelShape:
    """Dimensions and exact parameter counts of ``name`` (``layers``: see :func:`model_config`)."""
    model = meta_model(name, layers)
    cfg = model.config
    text = cfg.get_text_config()
    vis = cfg.vision_config
    qnames = quantised_linear_names(model)
    groups = {"linear": 0, "llm_other": 0, "embeddings": 0, "lm_head": 0, "vision": 0}
    sizes = []
    for pname, p in model.named_parameters():  # tied weights appear once
        module, _, leaf = pname.rpartition(".")
        n = p.numel()
        if module in qnames and leaf == "weight":
            groups["linear"] += n
            sizes.append(n)
        elif _in_vision(pname):
            groups["vision"] += n
        elif pname.endswith("embed_tokens.weight"):
            groups["embeddings"] += n
        elif pname.startswith("lm_head."):
            groups["lm_head"] += n
        else:
            groups["llm_other"] += n
    names = {n for n, _ in model.named_modules()}
    blocks = [n for n in names if re.fullmatch(r"(model\.)?visual\.blocks\.0\.mlp\.gate_proj", n)]
    heads = text.num_attention_heads
    return ModelShape(
        name=name, family="qwen3-vl" if cfg.model_type.startswith("qwen3") else "qwen2.5-vl",
        hidden=text.hidden_size, intermediate=text.intermediate_size, layers=text.num_hidden_layers, heads=heads,
        kv_heads=text.num_key_value_heads, head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        vocab=text.vocab_size, tied=bool(getattr(cfg, "tie_word_embeddings", False)),
        qk_norm=any(n.endswith("self_attn.q_norm") for n in names),
        vis_depth=vis.depth, vis_hidden=vis.hidden_size, vis_intermediate=vis.intermediate_size,
        vis_gated_mlp=bool(blocks), patch=vis.patch_size, merge=vis.spatial_merge_size,
        temporal_patch=vis.temporal_patch_size, in_channels=getattr(vis, "in_channels", 3) or 3,
        deepstack=len(getattr(vis, "deepstack_visual_indexes", None) or []),
        groups=groups, linear_sizes=sizes, total=sum(p.numel() for p in model.parameters()))


def nf4_bytes(numel: int, double_quant: bool = True, blocksize: int = 64) -> int:
    """Bytes bitsandbytes keeps for one NF4 weight of ``numel`` elements: packed 4-bit data, the
    per-block absmax (uint8 + an fp32 absmax per 256 blocks, an fp32 offset and a 256-entry fp32
    code with double quantisation; fp32 per block without) and the 16-entry fp32 NF4 code."""
    blocks = math.ceil(numel / blocksize)
    state = blocks + math.ceil(blocks / 256) * 4 + 256 * 4 + 4 if double_quant else blocks * 4
    return math.ceil(numel / 2) + state + 16 * 4


def int8_bytes(numel: int, out_features: int) -> int:
    """Bytes of one LLM.int8 weight: int8 data + an fp32 scale per output row."""
    return numel + 4 * out_features


# -- LoRA -------------------------------------------------------------------------------------------
@dataclass
class LoraSpec:
    """Where a LoRA adapter goes and how big it is. ``source`` says where the settings came from."""

    r: int
    dropout: float
    modules: list[str]  # full module names of the meta model
    params: int  # exact number of LoRA parameters (A and B of every targeted module)
    source: str
    widths: dict[str, tuple[int, int]] = field(default_factory=dict)  # module -> (in, out) features


def lora_spec_from_targets(name: str, r: int, dropout: float, targets: str | Sequence[str],
                           source: str, layers: int = 0) -> LoraSpec:
    """LoRA on ``targets`` as peft matches them (a regex string: ``re.fullmatch``; a list of
    names: exact name or ``.name`` suffix) on the model ``name``: its exact parameter count,
    r x (in + out) per Linear (r x (C_in x k^3 + C_out) for a Conv3d)."""
    import torch
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    model = meta_model(name, layers)
    config = LoraConfig(r=r, target_modules=targets if isinstance(targets, str) else list(targets))
    widths: dict[str, tuple[int, int]] = {}
    for mname, module in model.named_modules():
        if not mname or not isinstance(module, (torch.nn.Linear, torch.nn.Conv3d)):
            continue
        if not check_target_module_exists(config, mname):
            continue
        if isinstance(module, torch.nn.Linear):
            widths[mname] = (module.in_features, module.out_features)
        else:
            widths[mname] = (module.weight[0].numel(), module.out_channels)
    if not widths:
        raise ModelSetupError(f"LoRA targets {targets!r} match no Linear module of {name}")
    return LoraSpec(r=r, dropout=dropout, modules=list(widths), params=sum(r * (i + o) for i, o in widths.values()),
                    source=source, widths=widths)


def lora_spec_for_recipe(name: str, r: int, dropout: float, patterns: Sequence[str], train_merger: bool,
                         source: str, layers: int = 0) -> LoraSpec:
    """A fresh SFT adapter: the targets :func:`mllm4d_lite.train.lora.resolve_lora_targets` picks."""
    from mllm4d_lite.train.lora import resolve_lora_targets

    names = resolve_lora_targets(meta_model(name, layers), list(patterns), train_merger)
    return lora_spec_from_targets(name, r, dropout, "^(" + "|".join(re.escape(n) for n in names) + ")$", source,
                                  layers)


def lora_spec_from_adapter(name: str, adapter: str | Path, layers: int = 0) -> LoraSpec:
    """The LoRA an ``adapter_config.json`` describes, counted on ``name``."""
    data: dict[str, Any] = json.loads((Path(adapter) / "adapter_config.json").read_text())
    return lora_spec_from_targets(name, int(data["r"]), float(data.get("lora_dropout") or 0.0),
                                  data["target_modules"], f"{adapter}/adapter_config.json", layers)


# -- visual tokens ---------------------------------------------------------------------------------
def default_pixel_budget(shape: ModelShape, frames: int) -> tuple[int, int]:
    """(max, min) pixels per frame when a recipe sets none: the tiny build's 112x112 / 28x28, else
    the model's released processor values (:func:`mllm4d_lite.train.shapes.shape_processor_json`;
    Qwen3-VL's budget bounds the whole clip, so its maximum is shared out over the frames; its
    minimum stays the clip's, as the kit passes it), else transformers' defaults."""
    if shape.name in TINY_NAMES:
        return 112 * 112, 28 * 28
    factor = shape.patch * shape.merge
    size = {"longest_edge": factor * factor * 768, "shortest_edge": factor * factor * 4}
    key = shape_name_of(shape.name)
    if key is not None:
        from mllm4d_lite.train.shapes import shape_processor_json

        data = shape_processor_json(key)
        conf = data.get("video_preprocessor_config") or data.get("preprocessor_config") or {}
        if "size" in conf:
            size = dict(conf["size"])
        elif "max_pixels" in conf:
            size = {"longest_edge": conf["max_pixels"], "shortest_edge": conf.get("min_pixels", 28 * 28)}
    if shape.family == "qwen3-vl":
        return int(size["longest_edge"]) // frames, int(size["shortest_edge"])
    return int(size["longest_edge"]), int(size["shortest_edge"])


def video_grid(shape: ModelShape, frames: int, max_pixels: int | None, min_pixels: int | None,
               source_hw: tuple[int, int] | None = None) -> dict[str, int]:
    """The processor's patch grid for one clip of ``frames`` frames of ``source_hw`` (H, W) pixels.

    Follows the real processors: frames padded to an even count (the kit repeats the last),
    each frame resized by the family's ``smart_resize`` to multiples of patch x merge within
    [min_pixels, max_pixels] per frame (Qwen3-VL's clip budget is the per-frame budget x frames,
    as :func:`mllm4d_lite.train.video_inputs.video_kwargs` passes it). Default source: a square
    frame of ``max_pixels`` (the most tokens the budget allows).

    Returns ``grid_t, grid_h, grid_w`` (patches), ``patches`` (per clip), ``tokens`` (visual
    tokens per clip = patches / merge^2), ``height, width`` (resized pixels).
    """
    frames = frames + frames % 2
    default_max, default_min = default_pixel_budget(shape, frames)
    max_pixels = int(max_pixels or default_max)
    min_pixels = int(min_pixels or default_min)
    if source_hw is None:
        side = math.isqrt(max_pixels)
        source_hw = (side, side)
    h, w = source_hw
    factor = shape.patch * shape.merge
    if shape.family == "qwen3-vl":
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

        rh, rw = smart_resize(frames, h, w, temporal_factor=shape.temporal_patch, factor=factor,
                              min_pixels=min_pixels, max_pixels=max_pixels * frames)
    else:
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import smart_resize

        rh, rw = smart_resize(h, w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    gt, gh, gw = frames // shape.temporal_patch, rh // shape.patch, rw // shape.patch
    patches = gt * gh * gw
    return {"grid_t": gt, "grid_h": gh, "grid_w": gw, "patches": patches,
            "tokens": patches // (shape.merge * shape.merge), "height": rh, "width": rw}


def video_text_tokens(shape: ModelShape, grid_t: int) -> int:
    """Tokens the chat template and processor add around one clip's visual tokens: Qwen2.5-VL
    ``<|vision_start|>`` ``<|vision_end|>``; Qwen3-VL a ``<t.t seconds>`` timestamp (6 tokens with
    the Qwen vocabulary, digits split) plus vision start and end per temporal patch."""
    return 2 if shape.family == "qwen2.5-vl" else 8 * grid_t
