"""Real-architecture builds with random weights (``shapes:`` models).

Fast: the published parameter counts at full depth (meta device), configs cut to N layers, the
24 GB recipes' LoRA targets on the real module names, visual token counts of the real processors
at the recipes' pixel budget. Slow: 2-layer builds of each model through
``load_model_and_processor`` (a forward with video, generation stopping on ``<|im_end|>``) and two
processes building one model at once.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mllm4d_lite.config import build_config, load_yaml
from mllm4d_lite.train.families import ModelSetupError
from mllm4d_lite.train.shapes import (SHAPE_MODELS, build_shape_processor, count_parameters, cut_layer_indexes,
                                      shape_config, shape_model_dir)

REPO = Path(__file__).resolve().parent.parent
NAMES = ["shapes:" + k for k in SHAPE_MODELS]
# the 24 GB recipe whose LoRA settings apply to each model (the 8B has none of its own: the 4B's)
RECIPE = {"shapes:qwen2.5-vl-3b": "recipes/qwen2.5-vl-3b/sft.yaml", "shapes:qwen3-vl-4b": "recipes/qwen3-vl-4b/sft.yaml",
          "shapes:qwen3-vl-8b": "recipes/qwen3-vl-4b/sft.yaml"}


def recipe(name: str):
    from mllm4d_lite.train.sft import SFTConfig

    return build_config(SFTConfig, load_yaml(REPO / RECIPE[name]), source=RECIPE[name])


def meta_model(name: str, shape_layers: int = 0):
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(shape_config(name, shape_layers))


@pytest.mark.parametrize("name", NAMES)
def test_full_depth_parameter_count_is_the_published_size(name):
    # Qwen2.5-VL-3B-Instruct 3,754,622,976; Qwen3-VL-4B-Instruct 4,437,815,808; Qwen3-VL-8B-Instruct
    # 8,767,123,696 (the hub's safetensors total; sources in mllm4d_lite/train/shapes/README.md)
    assert count_parameters(name) == SHAPE_MODELS[name[len("shapes:"):]]["params"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("layers", [1, 2, 5])
def test_cut_configs_stay_valid(name, layers):
    full, cut = shape_config(name), shape_config(name, layers)
    assert cut.text_config.num_hidden_layers == layers and cut.vision_config.depth == layers
    # widths, vocabulary, token ids and vision patching are the real ones
    for attr in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size"):
        assert getattr(cut.text_config, attr) == getattr(full.text_config, attr)
    for attr in ("hidden_size", "patch_size", "temporal_patch_size", "spatial_merge_size", "out_hidden_size"):
        assert getattr(cut.vision_config, attr) == getattr(full.vision_config, attr)
    assert (cut.video_token_id, cut.vision_start_token_id) == (151656, 151652)
    vision = cut.vision_config
    if hasattr(vision, "fullatt_block_indexes"):
        assert vision.fullatt_block_indexes[-1] == layers - 1 and all(0 <= i < layers for i in vision.fullatt_block_indexes)
    else:
        taps = vision.deepstack_visual_indexes
        assert taps and taps == sorted(set(taps)) and all(0 <= i < layers for i in taps)
    model = meta_model(name, layers)  # builds: the cut indexes are consistent
    assert len(model.model.language_model.layers) == layers and len(model.model.visual.blocks) == layers


def test_cut_layer_indexes():
    assert cut_layer_indexes([7, 15, 23, 31], 32, 32, True) == [7, 15, 23, 31]
    assert cut_layer_indexes([7, 15, 23, 31], 32, 2, True) == [1]  # block 0 windowed, block 1 full
    assert cut_layer_indexes([7, 15, 23, 31], 32, 12, True) == [7, 11]
    assert cut_layer_indexes([5, 11, 17], 24, 2, False) == [0, 1]
    assert cut_layer_indexes([8, 16, 24], 27, 9, False) == [2, 5, 8]


def test_bad_names_and_layers_are_clear_errors():
    with pytest.raises(ModelSetupError, match="shapes:qwen2.5-vl-3b"):
        shape_config("shapes:qwen9-vl-1b")
    with pytest.raises(ModelSetupError, match="shape_layers"):
        shape_config("shapes:qwen3-vl-4b", -1)


@pytest.mark.parametrize("name", NAMES)
def test_recipe_lora_targets_resolve_on_the_real_module_names(name):
    from mllm4d_lite.train.lora import lora_target_regex, resolve_lora_targets

    cfg = recipe(name)
    model = meta_model(name, 2)
    targets = resolve_lora_targets(model, cfg.lora_target_modules, cfg.train_merger)
    llm = [t for t in targets if ".visual." not in t]
    assert len(llm) == 2 * len(cfg.lora_target_modules)  # every projection of both decoder layers
    assert all(t.startswith("model.language_model.layers.") for t in llm)
    merger = [t for t in targets if ".visual." in t]
    assert cfg.train_merger and merger and all("merger" in t for t in merger)
    # GRPO's peft regex (fresh adapters) reaches the same LLM projections and nothing in the vision tower
    regex = re.compile(lora_target_regex(cfg.lora_target_modules))
    assert sorted(n for n, _ in model.named_modules() if regex.fullmatch(n)) == sorted(llm)


@pytest.mark.parametrize("name", NAMES)
def test_visual_tokens_of_a_recipe_video(name):
    """8 frames at the recipe's pixel budget: the processor's video tokens = prod(video_grid_thw) / 4."""
    from mllm4d_lite.train.loading import set_pixel_budget
    from mllm4d_lite.train.video_inputs import build_messages, video_kwargs

    cfg = recipe(name)
    processor = build_shape_processor(name)
    set_pixel_budget(processor, cfg.max_pixels, cfg.min_pixels)
    frames = np.random.default_rng(0).integers(0, 255, (8, 240, 320, 3), dtype=np.uint8)
    meta = {"total_num_frames": 8, "fps": 2.0, "frames_indices": list(range(8)), "duration": 4.0}
    text = processor.apply_chat_template(build_messages("Which way?", True), tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text], return_tensors="pt", **video_kwargs(processor, [(frames, meta)]))
    t, h, w = (int(x) for x in batch["video_grid_thw"][0])
    patch = processor.video_processor.patch_size
    assert patch == (14 if "2.5" in name else 16) and processor.video_processor.merge_size == 2
    assert t == 4  # 8 frames / temporal patch 2
    assert cfg.min_pixels <= h * w * patch * patch <= cfg.max_pixels
    n_video = int((batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")).sum())
    assert n_video == t * h * w // 4


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_two_layer_build_loads_runs_and_stops_on_im_end(name):
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    from mllm4d_lite.train.loading import load_model_and_processor
    from mllm4d_lite.train.video_inputs import build_messages, video_kwargs

    cfg = recipe(name)
    model, processor = load_model_and_processor(name, shape_layers=2, device="cpu", dtype="bfloat16",
                                                max_pixels=cfg.max_pixels, min_pixels=cfg.min_pixels)
    assert type(processor.tokenizer).__name__ == "Qwen2Tokenizer" and len(model.model.language_model.layers) == 2
    frames = np.random.default_rng(0).integers(0, 255, (8, 240, 320, 3), dtype=np.uint8)
    meta = {"total_num_frames": 8, "fps": 2.0, "frames_indices": list(range(8)), "duration": 4.0}
    text = processor.apply_chat_template(build_messages("Which way?", True), tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], return_tensors="pt", **video_kwargs(processor, [(frames, meta)]))
    n_video = int((inputs["input_ids"] == model.config.video_token_id).sum())
    assert n_video == int(inputs["video_grid_thw"].prod()) // 4
    with torch.no_grad():
        logits = model(**inputs).logits
        blank = dict(inputs, pixel_values_videos=torch.zeros_like(inputs["pixel_values_videos"]))
        assert not torch.equal(model(**blank).logits, logits)  # the video reaches the LLM
    assert logits.shape[-1] == 151936

    prompt_len = inputs["input_ids"].shape[1]
    im_end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")

    class EndAtThirdToken(LogitsProcessor):
        def __call__(self, input_ids, scores):
            if input_ids.shape[1] - prompt_len == 2:
                scores = torch.full_like(scores, float("-inf"))
                scores[:, im_end] = 0.0
            return scores

    with torch.no_grad():  # no eos passed: the saved generation_config must stop on <|im_end|>
        out = model.generate(**inputs, max_new_tokens=12, logits_processor=LogitsProcessorList([EndAtThirdToken()]))
    new = out[0, prompt_len:].tolist()
    assert len(new) == 3 and new[-1] == im_end == 151645


@pytest.mark.slow
def test_two_processes_building_the_same_shapes_model_both_succeed(tmp_path):
    code = ("import sys; from mllm4d_lite.train.shapes import shape_model_dir; "
            "print(shape_model_dir('shapes:qwen2.5-vl-3b', 1, root=sys.argv[1]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=900) for p in procs]
    for proc, (_, stderr) in zip(procs, results):
        assert proc.returncode == 0, stderr[-2000:]
    folders = {stdout.strip().splitlines()[-1] for stdout, _ in results}
    assert len(folders) == 1
    built = Path(folders.pop())
    assert (built / "config.json").is_file() and (built / "SHAPE_MODEL.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [built.name]  # no temporary folder left behind
    assert shape_model_dir("shapes:qwen2.5-vl-3b", 1, root=tmp_path) == built  # cached: no rebuild
