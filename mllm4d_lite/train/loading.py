"""Loading a Qwen-VL for training or evaluation: model names, devices, dtype, quantisation, adapters.

:func:`load_model_and_processor` takes a model as the recipes name it (``tiny``, ``tiny-motion``,
``tiny-qwen3-vl``, a folder or a hub name), puts it on the device in the dtype and quantisation
asked for, sets the processor's per-frame pixel budget and applies a LoRA adapter. Settings that
only work on a CUDA GPU fail early with an error naming the CPU recipe to use instead.
Unset device / dtype / quant: ``auto`` / ``auto`` / ``none`` as the stage configs hold them (``None``
and ``""`` mean the same).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from mllm4d_lite.train.families import ModelSetupError
from mllm4d_lite.train.tiny_model import tiny_model_dir

log = logging.getLogger(__name__)


def resolve_model_name(name: str, shape_layers: int = 0) -> str:
    """``tiny`` / ``tiny-qwen2.5-vl`` / ``tiny-qwen3-vl`` -> the cached tiny folder, ``tiny-motion``
    -> the tiny Qwen2.5-VL with the motion vision tower
    (:func:`mllm4d_lite.train.tiny_model.motion_vision_tower`); ``shapes:<name>`` -> the cached
    random-weight real architecture with ``shape_layers`` layers (0 = full depth;
    :mod:`mllm4d_lite.train.shapes`); else as given."""
    if name.startswith("shapes:"):
        from mllm4d_lite.train.shapes import shape_model_dir

        return str(shape_model_dir(name, shape_layers))
    if name in ("tiny", "tiny-qwen2.5-vl"):
        return str(tiny_model_dir("qwen2.5-vl"))
    if name == "tiny-motion":
        return str(tiny_model_dir("qwen2.5-vl", vision="motion"))
    if name == "tiny-qwen3-vl":
        return str(tiny_model_dir("qwen3-vl"))
    return name


def warn_if_adapter_base_differs(adapter: str | Path, model: str, shape_layers: int = 0) -> str | None:
    """Log (and return) a warning when the LoRA adapter in ``adapter`` was trained on another base
    than ``model`` (a name or folder): shapes may still match, as between the tiny builds, and the
    run would go on with weights learnt for another model."""
    try:
        trained_on = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None
    if not trained_on or str(trained_on) == model \
            or Path(str(trained_on)).resolve() == Path(resolve_model_name(model, shape_layers)).resolve():
        return None
    message = (f"adapter {adapter} was trained on {trained_on} but the model is {model}; LoRA shapes may still "
               "match, but its weights were learnt for another base (pass the model it was trained on)")
    log.warning("%s", message)
    return message


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
    """Clear errors for settings that only work on a CUDA GPU (and, for vLLM, with vLLM installed)."""
    if device.startswith("cuda"):
        import importlib.util

        if use_vllm and importlib.util.find_spec("vllm") is None:
            raise ModelSetupError("`use_vllm: true` needs vLLM installed and a CUDA GPU: vLLM is not installed in this "
                                  "environment (it pins its own torch; see docs/stack.md, vLLM), or set use_vllm: false")
        return
    if use_unsloth:
        raise ModelSetupError(f"`use_unsloth: true` needs a CUDA GPU; use {cpu_recipe}... (use_unsloth: false) on CPU")
    if use_vllm:
        raise ModelSetupError(f"`use_vllm: true` needs vLLM installed and a CUDA GPU; use {cpu_recipe}... "
                              "(use_vllm: false, transformers generation) on CPU")


def parameter_sharding() -> str | None:
    """How ``accelerate launch`` shards this run's parameters: ``"DeepSpeed ZeRO-3"`` or ``"FSDP"``
    (from the environment it gives each process), else None (one process, DDP, ZeRO-1/2)."""
    env = os.environ
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")
        config_file = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "")
        if not stage and config_file:  # a deepspeed_config_file instead of accelerate's fields
            try:
                stage = str(json.loads(Path(config_file).read_text()).get("zero_optimization", {}).get("stage", ""))
            except (OSError, ValueError, AttributeError):
                stage = ""
        return "DeepSpeed ZeRO-3" if stage == "3" else None
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "FSDP"
    return None


def local_device(device: str) -> str:
    """``cuda`` -> ``cuda:<LOCAL_RANK>`` in a multi-process launch (each process loads onto its own
    GPU, not all onto GPU 0); any other device as it is."""
    local_rank = os.environ.get("LOCAL_RANK", "")
    if device == "cuda" and local_rank.isdigit():
        return f"cuda:{int(local_rank)}"
    return device


def quant_storage_dtype(quant: str | None, torch_dtype, sharding: str | None = None):
    """The dtype 4-bit weights are packed in: None (bitsandbytes' uint8) unless the parameters are
    sharded (``sharding``: ZeRO-3 or FSDP), which needs them packed in the model's float dtype, as
    peft documents for QLoRA with DeepSpeed ZeRO-3 and FSDP (fp16 training: float32). 8-bit weights
    cannot be sharded: :class:`ModelSetupError`."""
    import torch

    if quant in (None, "", "none") or sharding is None:
        return None
    if quant == "8bit":
        raise ModelSetupError(f"`quant: 8bit` under {sharding}: bitsandbytes 8-bit weights cannot be sharded; use "
                              "`quant: 4bit` (QLoRA), `quant: none`, or recipes/accelerate/deepspeed_zero2.yaml / "
                              "multi_gpu_ddp.yaml (docs/scaling.md)")
    return torch.float32 if torch_dtype == torch.float16 else torch_dtype


def quantization_config(quant: str | None, compute_dtype, storage_dtype=None):
    """bitsandbytes config for ``quant`` in (None, "4bit", "8bit"); NF4 + double quant for 4-bit,
    packed in ``storage_dtype`` when given (:func:`quant_storage_dtype`)."""
    if quant in (None, "", "none"):
        return None
    from transformers import BitsAndBytesConfig

    if quant == "4bit":
        extra = {"bnb_4bit_quant_storage": storage_dtype} if storage_dtype is not None else {}
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype,
                                  llm_int8_skip_modules=["visual", "model.visual", "lm_head"], **extra)
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
                             gradient_checkpointing: bool = False, trainable_adapter: bool = False,
                             shape_layers: int = 0):
    """Load a Qwen-VL (tiny folder, local folder or hub name) and its processor.

    Args:
        model: ``tiny``, ``tiny-qwen3-vl``, a folder, or a hub name (GPU machines with a hub).
        adapter: a peft LoRA adapter folder to apply (SFT / cold-start / GRPO output).
        quant: None, ``4bit`` (QLoRA, NF4) or ``8bit``; 4-bit on CPU works but is slow (warns).
        use_unsloth: load through Unsloth's vision loader (CUDA only; falls back with a warning
            when Unsloth does not import).
        trainable_adapter: keep the adapter's LoRA weights trainable (continue training from it).
        shape_layers: decoder layers and vision blocks of a ``shapes:`` model (0 = full depth).
    Returns: (model, processor), model in eval mode unless ``trainable_adapter``.
    """
    from transformers import AutoModelForImageTextToText

    device = pick_device(device)
    check_gpu_only_settings(device, use_unsloth=use_unsloth)
    torch_dtype = pick_dtype(dtype, device)
    sharding = parameter_sharding()
    if sharding == "FSDP":  # the kit saves its adapter from rank 0's weights: whole under DDP/ZeRO, shards under FSDP
        raise ModelSetupError("FSDP is not supported by the kit's stages (rank 0 would save its shard of the LoRA "
                              "weights); use recipes/accelerate/deepspeed_zero3.yaml to shard the model "
                              "(docs/scaling.md)")
    storage_dtype = quant_storage_dtype(quant, torch_dtype, sharding)
    device = local_device(device)
    path = resolve_model_name(model, shape_layers)
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
        qconf = quantization_config(quant, torch_dtype, storage_dtype)
        # sharded QLoRA: the float weights (vision tower, norms) in the storage dtype too (peft's recipe)
        kwargs: dict[str, Any] = {"dtype": storage_dtype or torch_dtype}
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
        warn_if_adapter_base_differs(adapter, model, shape_layers)
        net = PeftModel.from_pretrained(net, adapter, is_trainable=trainable_adapter)
    if not trainable_adapter:
        net.eval()
    return net, processor


