"""Real-architecture Qwen-VL builds with random weights: the ``shapes:`` model names.

``shapes:qwen2.5-vl-3b``, ``shapes:qwen3-vl-4b`` and ``shapes:qwen3-vl-8b`` are the published
architectures of Qwen2.5-VL-3B-Instruct, Qwen3-VL-4B-Instruct and Qwen3-VL-8B-Instruct, built
offline from their ``config.json`` (kept in ``mllm4d_lite/train/shapes/``, sources in its
README) with random weights, the real tokenizer (:mod:`mllm4d_lite.train.real_tokenizer`) and
the real processor classes with the released image / video processor values (patch 14 px for
2.5-VL, 16 px for 3-VL; temporal patch 2, spatial merge 2). Memory, speed, LoRA targets, token
counts and chat templates do not depend on the weight values, so they can be checked on them.

``shape_layers`` N > 0 keeps the first N decoder layers and N vision blocks (0 = full depth),
with the layer-index lists kept valid (:func:`cut_layer_indexes`). :func:`shape_model_dir`
caches a built folder under ``runs/shape_models/<name>-L<N>/`` (built in a temporary folder and
renamed into place, so two processes may build it at once), which
:func:`mllm4d_lite.train.loading.load_model_and_processor` loads like any model folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mllm4d_lite.train.families import ModelSetupError

log = logging.getLogger(__name__)

SHAPE_PREFIX = "shapes:"
SHAPES_DIR = Path(__file__).resolve().parent / "shapes"
SHAPES_ROOT = "runs/shape_models"
# Bumped whenever build_shape_model's output changes, so cached folders are rebuilt.
SHAPES_BUILD = "v1"
SHAPE_MODELS: dict[str, dict[str, Any]] = {
    # published parameter counts (see shapes/README.md for the sources)
    "qwen2.5-vl-3b": {"family": "qwen2.5-vl", "hub": "Qwen/Qwen2.5-VL-3B-Instruct", "params": 3_754_622_976},
    "qwen3-vl-4b": {"family": "qwen3-vl", "hub": "Qwen/Qwen3-VL-4B-Instruct", "params": 4_437_815_808},
    "qwen3-vl-8b": {"family": "qwen3-vl", "hub": "Qwen/Qwen3-VL-8B-Instruct", "params": 8_767_123_696},
}
# generation_config ids as released (eos: <|im_end|> and <|endoftext|>); greedy by default, the
# stages set sampling themselves
GENERATION_IDS = {"bos_token_id": 151643, "pad_token_id": 151643, "eos_token_id": [151645, 151643]}


def is_shape_name(name: str | None) -> bool:
    return isinstance(name, str) and name.startswith(SHAPE_PREFIX)


def shape_key(name: str) -> str:
    """``shapes:qwen3-vl-4b`` (or ``qwen3-vl-4b``) -> ``qwen3-vl-4b``; unknown names are errors."""
    key = name[len(SHAPE_PREFIX):] if is_shape_name(name) else name
    if key not in SHAPE_MODELS:
        raise ModelSetupError(f"unknown shapes model {name!r}; use one of {[SHAPE_PREFIX + k for k in SHAPE_MODELS]}")
    return key


def shape_family(name: str) -> str:
    return SHAPE_MODELS[shape_key(name)]["family"]


def shape_json(name: str) -> dict[str, Any]:
    """The published ``config.json`` of the model, as a dict."""
    return json.loads((SHAPES_DIR / f"{shape_key(name)}.json").read_text())


def shape_processor_json(name: str) -> dict[str, Any]:
    """``{"preprocessor_config": ..., "video_preprocessor_config": ... or None}`` as published."""
    return json.loads((SHAPES_DIR / f"{shape_key(name)}.processor.json").read_text())


def _check_layers(shape_layers: int) -> int:
    if not isinstance(shape_layers, int) or isinstance(shape_layers, bool) or shape_layers < 0:
        raise ModelSetupError(f"`shape_layers: {shape_layers!r}` must be an integer >= 0 (0 = full depth)")
    return shape_layers


def cut_layer_indexes(indexes: list[int], depth: int, keep: int, last_always: bool) -> list[int]:
    """Vision-block indexes of a ``depth``-block tower cut to its first ``keep`` blocks.

    ``last_always`` (Qwen2.5-VL's ``fullatt_block_indexes``: full attention every 8th block, the
    last block included, window attention elsewhere): the indexes below ``keep - 1`` plus
    ``keep - 1``, so a cut tower still ends on a full-attention block and, from 2 blocks on,
    also has windowed ones. Otherwise (Qwen3-VL's ``deepstack_visual_indexes``, the blocks whose
    features are fed to the first decoder layers) each index keeps its relative depth:
    ``i * keep // depth``, duplicates dropped.
    """
    if keep >= depth:
        return list(indexes)
    if last_always:
        return sorted({i for i in indexes if i < keep - 1} | {keep - 1})
    return sorted({min(keep - 1, i * keep // depth) for i in indexes})


def shape_config_dict(name: str, shape_layers: int = 0) -> dict[str, Any]:
    """The published config dict, cut to ``shape_layers`` decoder layers and vision blocks."""
    data = shape_json(name)
    n = _check_layers(shape_layers)
    if n == 0:
        return data
    vision = data["vision_config"]
    text = data["text_config"] if "text_config" in data else data  # Qwen2.5-VL's config is flat
    depth = vision["depth"]
    text["num_hidden_layers"] = min(n, text["num_hidden_layers"])
    vision["depth"] = min(n, depth)
    if "fullatt_block_indexes" in vision:
        vision["fullatt_block_indexes"] = cut_layer_indexes(vision["fullatt_block_indexes"], depth, vision["depth"], True)
    if "deepstack_visual_indexes" in vision:
        cut = cut_layer_indexes(vision["deepstack_visual_indexes"], depth, vision["depth"], False)
        vision["deepstack_visual_indexes"] = cut[:text["num_hidden_layers"]]
    return data


def shape_config(name: str, shape_layers: int = 0):
    """The transformers config of ``name`` (full depth, or cut to ``shape_layers``)."""
    from transformers import AutoConfig

    data = shape_config_dict(name, shape_layers)
    model_type = data.pop("model_type")
    return AutoConfig.for_model(model_type, **data)


def build_shape_processor(name: str):
    """The real processor class of the family with the released image / video processor values,
    the real tokenizer and the released chat template."""
    from mllm4d_lite.train.real_tokenizer import load_real_tokenizer, real_chat_template

    family = shape_family(name)
    spec = shape_processor_json(name)
    pre = dict(spec["preprocessor_config"])
    common = {k: pre[k] for k in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")}
    tokenizer = load_real_tokenizer(family)
    if family == "qwen2.5-vl":
        from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

        # no video_preprocessor_config.json was released: the video processor takes the image values
        size = {"shortest_edge": pre["min_pixels"], "longest_edge": pre["max_pixels"]}
        image = Qwen2VLImageProcessor(size=size, **common)
        # cap_pixels_per_frame=False: the current transformers behaviour, as the tiny build (and silences
        # its deprecation warning); the kit sets its per-frame budget itself (loading.set_pixel_budget)
        video = Qwen2VLVideoProcessor(size=size, cap_pixels_per_frame=False, **common)
        return Qwen2_5_VLProcessor(image_processor=image, video_processor=video, tokenizer=tokenizer,
                                   chat_template=real_chat_template(family))
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    vid = spec["video_preprocessor_config"]
    image = Qwen2VLImageProcessor(size=dict(pre["size"]), **common)
    video = Qwen3VLVideoProcessor(size=dict(vid["size"]), cap_pixels_per_frame=False,
                                  **{k: vid[k] for k in common})
    return Qwen3VLProcessor(image_processor=image, video_processor=video, tokenizer=tokenizer,
                            chat_template=real_chat_template(family))


def count_parameters(name: str, shape_layers: int = 0) -> int:
    """Parameters of the build, counted on the ``meta`` device (no memory, exact)."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(shape_config(name, shape_layers))
    return sum(p.numel() for p in model.parameters())


def build_shape_model(name: str, shape_layers: int = 0, out_dir: str | Path | None = None, seed: int = 0,
                      dtype: str = "bfloat16", replace: bool = True) -> Path:
    """Build, save and return a random-weight model folder of ``name`` (cut to ``shape_layers``).

    Weights are drawn with transformers' own initialisation in ``dtype`` (bfloat16, as released;
    the loader casts to the run's dtype), deterministic from ``seed``; the caller's random state is
    left as it was. The folder holds the model, the processor (real tokenizer, released chat
    template) and ``SHAPE_MODEL.json`` (what was built, from what). ``replace``: an existing
    ``out_dir`` is replaced; when False a folder another process finished meanwhile is kept.
    A full-depth build needs ~2 bytes per parameter of memory and disk (the 8B: ~17.5 GB).
    """
    import torch
    from transformers import AutoModelForImageTextToText

    key = shape_key(name)
    n = _check_layers(shape_layers)
    out_dir = Path(out_dir) if out_dir is not None else shape_model_path(key, n)
    config = shape_config(name, n)
    torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[dtype]
    if n == 0:
        log.warning("building the FULL-depth %s with random weights (~%.1f GB in %s); pass shape_layers > 0 for "
                    "a CPU-sized build", key, SHAPE_MODELS[key]["params"] * torch_dtype.itemsize / 1e9, dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch_dtype)
    for attr, value in GENERATION_IDS.items():
        setattr(model.generation_config, attr, value)
    model.generation_config.do_sample = False
    processor = build_shape_processor(name)
    n_params = sum(p.numel() for p in model.parameters())
    info = {"model": SHAPE_PREFIX + key, "architecture_of": SHAPE_MODELS[key]["hub"], "shape_layers": n,
            "parameters": n_params, "seed": seed, "dtype": dtype, "build": SHAPES_BUILD,
            "config_source": f"mllm4d_lite/train/shapes/{key}.json",
            "note": "random weights with the real architecture, tokenizer and processor; not a pretrained model"}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "SHAPE_MODEL.json").write_text(json.dumps(info, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists() and replace:
        shutil.rmtree(out_dir)
    try:
        tmp.rename(out_dir)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if replace or not _is_current(out_dir):
            raise
        log.info("shapes model %s was built by another process meanwhile; using it", out_dir)
        return out_dir
    log.info("built %s%s (%s layers): %.3f B parameters -> %s", SHAPE_PREFIX, key, n or "all", n_params / 1e9, out_dir)
    return out_dir


def _is_current(path: Path) -> bool:
    try:
        info = json.loads((path / "SHAPE_MODEL.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("build") == SHAPES_BUILD and (path / "config.json").is_file()


def shape_model_path(name: str, shape_layers: int = 0, root: str | Path | None = None) -> Path:
    """Where the build of ``name`` at ``shape_layers`` is cached (nothing is built); ``root``
    defaults to :data:`SHAPES_ROOT` (``runs/shape_models``)."""
    return Path(root or SHAPES_ROOT) / f"{shape_key(name)}-L{_check_layers(shape_layers)}"


def shape_model_dir(name: str, shape_layers: int = 0, root: str | Path | None = None) -> Path:
    """The cached folder of ``name`` at ``shape_layers``, built on first use (or when the cached
    one is from another build version)."""
    path = shape_model_path(name, shape_layers, root)
    if _is_current(path):
        return path
    stale = path.exists()
    return build_shape_model(name, shape_layers, out_dir=path, replace=stale)
