"""Every YAML under recipes/ loads and validates against its stage's config dataclass.

The stage comes from the file name: ``sft.yaml`` / ``cold_start.yaml`` -> ``mllm4d_lite.train.sft.SFTConfig``,
``grpo.yaml`` -> ``mllm4d_lite.train.grpo.GRPOConfig`` (skipped while that module does not exist);
``accelerate*.yaml`` -> accelerate's own launcher-config loader; any other ``<stage>.yaml`` -> the one
``*Config*`` dataclass defined in ``mllm4d_lite.<stage>``.
SFT recipes are also checked against the model: their LoRA targets must match modules of the real
architecture (built on the meta device, no weights, no download).
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest

from mllm4d_lite.config import build_config, load_recipe, load_yaml

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))
STAGE_CONFIGS = {
    "sft": ("mllm4d_lite.train.sft", "SFTConfig"),
    "cold_start": ("mllm4d_lite.train.sft", "SFTConfig"),
    "grpo": ("mllm4d_lite.train.grpo", "GRPOConfig"),
    "curate": ("mllm4d_lite.curation.curate", "CurateRun"),
}


def config_class(path: Path) -> type:
    """The kit config class that validates a stage recipe (``recipes/<profile>/<stage>.yaml``)."""
    assert path.stem in STAGE_CONFIGS, f"{path}: unknown stage recipe; register it in STAGE_CONFIGS"
    module_name, class_name = STAGE_CONFIGS[path.stem]
    return getattr(importlib.import_module(module_name), class_name)


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_recipes_exist():
    names = {_rel(p) for p in RECIPES}
    for profile in ("tiny", "qwen2.5-vl-3b", "qwen3-vl-4b"):
        assert {f"recipes/{profile}/sft.yaml", f"recipes/{profile}/cold_start.yaml"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=_rel)
def test_recipe_loads_and_validates(path):
    header = path.read_text().split("\n")
    assert header[0].startswith("#"), f"{path} must open with a comment (purpose, command, hardware, time)"
    comment = "\n".join(line for line in header if line.startswith("#"))
    if path.parent.name == "accelerate":  # a launcher config (recipes/accelerate/): accelerate validates it
        from accelerate.commands.config.config_args import load_config_from_file

        launcher = load_config_from_file(str(path))
        assert launcher.distributed_type is not None
        assert f"--config_file {_rel(path)}" in comment, f"{path}: the header must give the exact command"
        return
    cls = config_class(path)
    cfg = build_config(cls, load_yaml(path), str(path))  # unknown keys, wrong types, validate()
    assert f"--config {_rel(path)}" in comment, f"{path}: the header must give the exact command"
    assert dataclasses.is_dataclass(cfg)


SFT_RECIPES = [p for p in RECIPES if p.stem in ("sft", "cold_start")]


@pytest.mark.parametrize("path", SFT_RECIPES, ids=_rel)
def test_sft_recipe_fits_its_profile(path):
    from mllm4d_lite.train import sft as S

    cfg = build_config(S.SFTConfig, load_yaml(path), str(path))
    comment = "\n".join(line for line in path.read_text().split("\n") if line.startswith("#"))
    assert "Hardware:" in comment and "Expected time:" in comment
    assert f"mllm4d sft --config {_rel(path)}" in comment
    if path.parent.name == "tiny":
        assert cfg.device == "cpu" and cfg.quant == "none" and not cfg.use_unsloth and cfg.dtype == "float32"
        assert cfg.model.startswith("tiny")
    else:
        assert cfg.device == "cuda" and cfg.quant == "4bit" and cfg.dtype == "bfloat16"
        assert cfg.gradient_checkpointing and "Peak memory" in comment
        assert cfg.max_pixels == 50176 and cfg.min_pixels == 784 and cfg.learning_rate == 2e-5
        if path.stem == "sft":
            assert (cfg.lora_r, cfg.lora_alpha) == (128, 256)
    if path.stem == "cold_start":
        sft_cfg = build_config(S.SFTConfig, load_yaml(path.with_name("sft.yaml")))
        assert cfg.adapter_init == str(Path(sft_cfg.output_dir) / "adapter")
        assert cfg.train_file.endswith("cot.jsonl") and cfg.eval_mode == "st-cot"
        assert cfg.warmup_ratio >= sft_cfg.warmup_ratio and cfg.model == sft_cfg.model
    else:
        assert cfg.train_file.endswith("sft.jsonl") and cfg.adapter_init is None


@pytest.mark.parametrize("profile", sorted({p.parent for p in RECIPES if p.name == "grpo.yaml"}), ids=_rel)
def test_a_profiles_recipes_chain_sft_cold_start_grpo(profile):
    """Run one after another as their headers say, a profile's recipes hand each stage the one
    before's adapter, read one data folder (sft / cot / rft .jsonl) and write folders of their own,
    none of them the demo's (the demo passes its own paths)."""
    from mllm4d_lite.train import grpo as G
    from mllm4d_lite.train import sft as S

    sft = build_config(S.SFTConfig, load_yaml(profile / "sft.yaml"))
    cold = build_config(S.SFTConfig, load_yaml(profile / "cold_start.yaml"))
    rl = build_config(G.GRPOConfig, load_yaml(profile / "grpo.yaml"))
    assert rl.adapter_init == str(Path(cold.output_dir) / "adapter")
    assert cold.adapter_init == str(Path(sft.output_dir) / "adapter")
    folders = {Path(c.train_file).parent for c in (sft, cold, rl)}
    assert len(folders) == 1 and Path(rl.train_file).name == "rft.jsonl"
    outs = [Path(c.output_dir) for c in (sft, cold, rl)]
    assert len(set(outs)) == 3 and folders.isdisjoint(outs)
    assert not any(Path("runs/demo") in [o, *o.parents] for o in outs), "a recipe run would overwrite the demo"
    assert rl.model == sft.model == cold.model


@pytest.mark.parametrize("path", [p for p in SFT_RECIPES if p.stem == "sft"], ids=_rel)
def test_sft_recipe_lora_targets_match_the_architecture(path):
    """The recipe's LoRA targets resolve on the real architecture of its model family."""
    import torch
    from transformers import AutoModelForImageTextToText, Qwen2_5_VLConfig, Qwen3VLConfig

    from mllm4d_lite.train import families as M
    from mllm4d_lite.train import sft as S
    from mllm4d_lite.train.lora import resolve_lora_targets

    cfg = build_config(S.SFTConfig, load_yaml(path), str(path))
    family = {"tiny": "qwen2.5-vl", "tiny-motion": "qwen2.5-vl", "tiny-qwen2.5-vl": "qwen2.5-vl",
              "tiny-qwen3-vl": "qwen3-vl"}.get(
        cfg.model, M.REAL_MODELS.get(cfg.model))
    assert family, f"{path}: unknown model {cfg.model!r}"
    small = dict(num_hidden_layers=2, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024)
    vision = dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=256)
    if family == "qwen2.5-vl":
        config = Qwen2_5_VLConfig(text_config=small, vision_config=dict(vision, fullatt_block_indexes=[1]))
    else:
        config = Qwen3VLConfig(text_config=dict(small, head_dim=64), vision_config=dict(vision, deepstack_visual_indexes=[0]))
    with torch.device("meta"):
        net = AutoModelForImageTextToText.from_config(config)
    targets = resolve_lora_targets(net, cfg.lora_target_modules, cfg.train_merger)
    assert len([t for t in targets if ".language_model." in t]) == 2 * len(cfg.lora_target_modules)
    assert all(".visual.blocks." not in t for t in targets)


@pytest.mark.parametrize("path", [p for p in RECIPES if p.parent.name != "accelerate"], ids=_rel)
def test_recipe_text_reading_gives_the_same_config_as_yaml(path):
    """The stages read recipes' scalars as text, typed by the field (config.load_recipe); every
    shipped recipe must give exactly the config YAML's own typing gives."""
    cls = config_class(path)
    assert build_config(cls, load_recipe(path), str(path)) == build_config(cls, load_yaml(path), str(path))
