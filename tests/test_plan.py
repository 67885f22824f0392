"""The memory planner (`mllm4d plan`): exact counts against the real builds, byte rules against what
bitsandbytes / autograd really hold, invariants of the prediction, the command line."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from mllm4d_lite.train import plan_memory as M
from mllm4d_lite.train.plan import plan_recipe, resolve_lora, setup_from_config, stage_of
from mllm4d_lite.train.plan_model import (lora_spec_for_recipe, lora_spec_from_targets, meta_model, model_shape,
                                          video_grid)
from mllm4d_lite.train.shapes import SHAPE_MODELS

REPO = Path(__file__).resolve().parent.parent
SHAPES = [f"shapes:{k}" for k in SHAPE_MODELS]


@pytest.mark.parametrize("name", SHAPES + ["tiny", "tiny-qwen3-vl"])
def test_parameter_groups_add_up_to_the_meta_models_exact_count(name):
    import torch
    from transformers import AutoModelForImageTextToText

    shape = model_shape(name)
    with torch.device("meta"):  # a fresh build, independent of the planner's cache
        fresh = AutoModelForImageTextToText.from_config(meta_model(name).config)
    assert shape.total == sum(p.numel() for p in fresh.parameters())
    assert sum(shape.groups.values()) == shape.total
    if name.startswith("shapes:"):
        assert shape.total == SHAPE_MODELS[name[len("shapes:"):]]["params"]  # the published size
        assert model_shape(SHAPE_MODELS[name[len("shapes:"):]]["hub"]).total == shape.total
        assert shape.groups["linear"] == sum(shape.linear_sizes)
        assert len(shape.linear_sizes) == 7 * shape.layers  # every decoder projection, nothing else
        assert shape.tied == (name != "shapes:qwen3-vl-8b")


def test_lora_counts_equal_peft_on_the_real_module_names(tiny_qwen25):
    """The planner's LoRA size equals the trainable parameters of the kit's own LoRA (SFT:
    attach_lora with the merger; GRPO: the regex TRL gets), counted by peft on a real build."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from mllm4d_lite.train.args import LLM_TARGETS
    from mllm4d_lite.train.lora import attach_lora, lora_target_regex
    from mllm4d_lite.train.sft import SFTConfig

    cfg = SFTConfig(model=str(tiny_qwen25), lora_r=16, train_merger=True)
    model = attach_lora(AutoModelForImageTextToText.from_pretrained(tiny_qwen25), cfg)
    trained = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    spec = lora_spec_for_recipe("tiny", 16, 0.05, LLM_TARGETS, True, "test")
    assert spec.params == trained and any("merger" in m for m in spec.modules)

    grpo = get_peft_model(AutoModelForImageTextToText.from_pretrained(tiny_qwen25),
                          LoraConfig(r=8, target_modules=lora_target_regex(["q_proj", "down_proj"])))
    trained = sum(p.numel() for n, p in grpo.named_parameters() if "lora_" in n)
    assert lora_spec_from_targets("tiny", 8, 0.0, lora_target_regex(["q_proj", "down_proj"]), "t").params == trained


def test_lora_of_the_3b_recipe():
    spec = lora_spec_for_recipe("Qwen/Qwen2.5-VL-3B-Instruct", 128, 0.05,
                                ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                True, "test")
    # 36 layers x r (in + out) of the 7 projections + the merger's two Linear layers
    h, i, kv = 2048, 11008, 256
    per_layer = 128 * ((h + h) + (h + kv) * 2 + (h + h) + 2 * (h + i) + (i + h))
    merger = 128 * ((5120 + 5120) + (5120 + 2048))
    assert spec.params == 36 * per_layer + merger and len(spec.modules) == 36 * 7 + 2


@pytest.mark.parametrize("family,source_hw,max_pixels", [
    ("qwen2.5-vl", (240, 320), 50176), ("qwen2.5-vl", (375, 1242), 50176), ("qwen2.5-vl", (120, 160), 12544),
    ("qwen3-vl", (240, 320), 50176), ("qwen3-vl", (375, 1242), 50176), ("qwen3-vl", (120, 160), 12544)])
def test_visual_tokens_follow_the_real_processor(family, source_hw, max_pixels, tiny_qwen25, tiny_qwen3):
    """Planner's token count == the processor's video_grid_thw for the same frames and budget."""
    from mllm4d_lite.train.loading import load_processor
    from mllm4d_lite.train.video_inputs import count_visual_tokens

    folder = tiny_qwen25 if family == "qwen2.5-vl" else tiny_qwen3
    processor = load_processor(str(folder), max_pixels=max_pixels, min_pixels=784)
    frames = np.zeros((16, *source_hw, 3), np.uint8)
    meta = {"fps": 8.0, "frames_indices": list(range(16)), "total_num_frames": 16, "duration": 2.0}
    measured = count_visual_tokens(processor, frames, meta)
    name = "tiny" if family == "qwen2.5-vl" else "tiny-qwen3-vl"
    grid = video_grid(model_shape(name), 16, max_pixels, 784, source_hw)
    assert grid["tokens"] == measured["visual_tokens"]
    assert grid["height"] * grid["width"] == measured["pixels_per_frame"]


def test_4bit_weight_bytes_of_a_tiny_model_quantised_on_cpu(tiny_qwen25):
    """bitsandbytes NF4 on the CPU: parameters + quantisation state within 10 % of the prediction."""
    pytest.importorskip("bitsandbytes")
    from mllm4d_lite.train.loading import load_model_and_processor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net, _ = load_model_and_processor(str(tiny_qwen25), quant="4bit", device="cpu")
    measured = 0
    for p in net.parameters():
        measured += p.numel() * p.element_size()
        if type(p).__name__ == "Params4bit":
            qs = p.quant_state
            for t in (qs.absmax, qs.code, qs.offset, qs.state2.absmax, qs.state2.code):
                measured += t.numel() * t.element_size()
    predicted = sum(M.weight_bytes(model_shape("tiny"), "4bit", act_bytes=4, kbit_prep=False).values())
    assert abs(predicted - measured) <= 0.10 * measured, (predicted, measured)
    linear = sum(p.numel() for p in net.parameters() if type(p).__name__ == "Params4bit") * 2
    assert linear == sum(model_shape("tiny").linear_sizes)  # two 4-bit values per stored byte


def _saved_bytes_per_token(name: str, kbit: bool, tokens: int = 64) -> float:
    """What autograd keeps for one real-width decoder layer with the recipes' LoRA (r 128, dropout
    0.05, bf16 autocast), per token: the storages the saved-tensor hooks see, parameters excluded."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from mllm4d_lite.train.args import LLM_TARGETS
    from mllm4d_lite.train.lora import lora_target_regex

    config = meta_model(name).config.__class__.from_dict(meta_model(name).config.to_dict())
    text = config.get_text_config()
    text.num_hidden_layers, text.vocab_size = 1, 256
    config.vision_config.depth = 1
    if getattr(config.vision_config, "deepstack_visual_indexes", None):
        config.vision_config.deepstack_visual_indexes = [0]
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config).to(torch.bfloat16)
    if kbit:  # peft's k-bit preparation leaves the norms in fp32 (and the residual stream with them)
        for p in model.model.language_model.parameters():
            if p.dim() == 1:
                p.data = p.data.float()
    model = get_peft_model(model, LoraConfig(r=128, lora_dropout=0.05, target_modules=lora_target_regex(LLM_TARGETS)))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.to(torch.bfloat16)
    model.train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    lm = model.base_model.model.model.language_model
    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    lm.layers[0].register_forward_pre_hook(lambda *a: hooks.__enter__())
    lm.layers[0].register_forward_hook(lambda *a: hooks.__exit__(None, None, None))
    x = torch.randn(1, tokens, text.hidden_size, dtype=torch.float32 if kbit else torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lm(inputs_embeds=x, use_cache=False)
    return sum(seen.values()) / tokens


@pytest.mark.parametrize("recipe,kbit", [("recipes/qwen2.5-vl-3b/sft.yaml", True),
                                         ("recipes/qwen3-vl-4b/grpo.yaml", False)])
def test_saved_activations_per_layer_match_autograd(recipe, kbit):
    """The per-token, per-layer activation rule against what autograd really keeps at real widths
    (CPU). Two CPU differences are accounted for: CPU dropout keeps its mask in the compute dtype
    (CUDA: 1-byte bool), and RoPE's cos/sin (shared by all layers, counted once per model)."""
    p = plan_recipe(str(REPO / recipe))
    s = p.setup
    assert s.kbit_prep == kbit
    lora_inputs = sum(M._layer_lora(s).values())
    predicted = M.layer_saved_per_token(s) + lora_inputs * (s.act_bytes - 1) + 2 * s.shape.head_dim * 4
    measured = _saved_bytes_per_token(s.model, kbit)
    assert abs(predicted - measured) <= 0.03 * measured, (predicted, measured)


def test_the_installed_trl_still_does_what_the_planner_assumes():
    """Pins of the rules: TRL's fused LM head tiles, its bf16 cast of quantised LoRA, its ref adapter."""
    from trl import GRPOTrainer, SFTTrainer
    from trl.kernels import chunked_logprob
    from trl.trainer import utils

    assert (chunked_logprob.TOKEN_CHUNK_SIZE, utils._CHUNKED_LOGPROB_CHUNK_SIZE) == M.LM_HEAD_TILE
    for trainer in (SFTTrainer, GRPOTrainer):
        src = inspect.getsource(trainer.__init__)
        assert "param.data = param.data.to(torch.bfloat16)" in src and "add_fused_lm_head(" in src
    assert 'model.add_adapter("ref", default_config)' in inspect.getsource(GRPOTrainer.__init__)


def _peak(recipe: str, *overrides: str) -> float:
    return plan_recipe(str(REPO / recipe), list(overrides)).peak_allocated_gb


@pytest.mark.parametrize("recipe", ["recipes/qwen2.5-vl-3b/sft.yaml", "recipes/qwen3-vl-4b/grpo.yaml"])
def test_peak_rises_with_frames_pixels_and_falls_with_checkpointing(recipe):
    base = _peak(recipe)
    assert _peak(recipe, "--num-frames", "32") > base
    assert _peak(recipe, "--max-pixels", "200704") > base
    assert _peak(recipe, "--num-frames", "8") < base
    assert _peak(recipe, "--gradient-checkpointing", "false") > base
    assert _peak(recipe, "--per-device-train-batch-size", "16") > base


def test_peak_rises_with_generations():
    recipe = "recipes/qwen2.5-vl-3b/grpo.yaml"
    small = _peak(recipe, "--num-generations", "4", "--per-device-train-batch-size", "4")
    assert small < _peak(recipe) < _peak(recipe, "--num-generations", "16", "--per-device-train-batch-size", "16")


def test_grpo_components_follow_the_stack():
    p = plan_recipe(str(REPO / "recipes/qwen2.5-vl-3b/grpo.yaml"))
    s, persistent = p.setup, p.components["persistent"]
    assert s.ref_adapter and not s.kbit_prep and s.generation_batch == 16
    # the frozen reference copy is fp32, as the trained adapter (lora_fp32 undoes TRL's bf16 cast)
    assert persistent["reference adapter (frozen fp32 copy)"] == pytest.approx(persistent["LoRA weights"], rel=1e-3)
    bf16 = plan_recipe(str(REPO / "recipes/qwen2.5-vl-3b/grpo.yaml"), ["--lora-fp32", "false"]).components["persistent"]
    assert bf16["reference adapter (frozen fp32 copy)"] == pytest.approx(2 * bf16["LoRA weights"], rel=1e-3)
    kv = p.components["generation: decoding"]["KV cache (prompts + completions)"]
    assert kv == pytest.approx(16 * p.tokens["sequence"] * 2 * 36 * 2 * 128 * 2 / M.GB, rel=1e-3)
    no_kl = plan_recipe(str(REPO / "recipes/qwen2.5-vl-3b/grpo.yaml"), ["--beta", "0"])
    assert "reference adapter (frozen fp32 copy)" not in no_kl.components["persistent"]


def test_kbit_preparation_makes_the_vision_tower_fp32():
    sft = plan_recipe(str(REPO / "recipes/qwen2.5-vl-3b/sft.yaml"))
    grpo = plan_recipe(str(REPO / "recipes/qwen2.5-vl-3b/grpo.yaml"))
    vision = "vision tower + mergers"
    assert sft.components["persistent"][vision] == pytest.approx(2 * grpo.components["persistent"][vision], rel=1e-3)
    vision_params = model_shape(sft.setup.model).groups["vision"]
    assert sft.components["persistent"][vision] == pytest.approx(vision_params * 4 / M.GB, rel=1e-3)


def test_adapter_chain_and_adapter_config(tmp_path):
    from mllm4d_lite.train.sft import SFTConfig

    cold = plan_recipe(str(REPO / "recipes/qwen3-vl-4b/cold_start.yaml"))
    assert cold.setup.label == "cold start" and "sft.yaml" in cold.setup.lora.source and cold.setup.lora.r == 128
    grpo = plan_recipe(str(REPO / "recipes/qwen3-vl-4b/grpo.yaml"))
    assert grpo.setup.lora.params == cold.setup.lora.params
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_dropout": 0.0,
                                                             "target_modules": ["q_proj", "v_proj"]}))
    cfg = SFTConfig(model="tiny", adapter_init=str(adapter))
    spec = resolve_lora(cfg, "sft", None)
    assert spec.r == 4 and len(spec.modules) == 2 * model_shape("tiny").layers
    assert setup_from_config(cfg, "sft").lora.params == spec.params


def test_shape_layers_cut_the_planned_model_like_the_build():
    from mllm4d_lite.train.shapes import count_parameters

    p = plan_recipe(str(REPO / "recipes/qwen2.5-vl-3b/sft.yaml"), ["--model", "shapes:qwen2.5-vl-3b",
                                                                   "--shape-layers", "2"])
    assert p.setup.shape.total == count_parameters("shapes:qwen2.5-vl-3b", 2) and p.setup.shape.layers == 2
    assert len(p.setup.lora.modules) == 2 * 7 + 2
    full = plan_recipe(str(REPO / "recipes/qwen2.5-vl-3b/sft.yaml"), ["--model", "shapes:qwen2.5-vl-3b"])
    assert full.peak_allocated_gb == pytest.approx(plan_recipe(str(REPO / "recipes/qwen2.5-vl-3b/sft.yaml"))
                                                   .peak_allocated_gb)


def test_stage_is_read_from_the_recipe():
    assert stage_of(str(REPO / "recipes/tiny/grpo.yaml"), None) == "grpo"
    assert stage_of(str(REPO / "recipes/tiny/cold_start.yaml"), None) == "sft"
    assert stage_of(str(REPO / "recipes/tiny/sft.yaml"), "grpo") == "grpo"


def _run(*args):
    return subprocess.run([sys.executable, "-m", "mllm4d_lite", "plan", *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def test_cli_prints_the_table_and_one_final_line(tmp_path, capsys):
    from mllm4d_lite.train.plan import main

    out = tmp_path / "plan.json"
    res = _run("--config", "recipes/qwen2.5-vl-3b/grpo.yaml", "--gpu-gb", "24", "--json", str(out))
    assert res.returncode == 0, res.stderr
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("plan: peak ") and "GB predicted on a 24 GB card: fits" in last
    assert "(GRPO, Qwen/Qwen2.5-VL-3B-Instruct, 4bit, 16 frames x 50176 px)" in last
    assert "PREDICTION" in res.stdout
    data = json.loads(out.read_text())
    assert data["prediction"] is True and data["fits"] is True and data["peak_phase"] in data["phases_gb"]
    assert main(["--config", str(REPO / "recipes/qwen2.5-vl-3b/grpo.yaml"), "--gpu-gb", "4"]) == 0
    assert "does NOT fit" in capsys.readouterr().out.strip().splitlines()[-1]


def test_cli_bad_recipe_is_one_error_line(tmp_path):
    missing = _run("--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "config file not found" in missing.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: Qwen/Qwen2.5-VL-3B-Instruct\nnum_framez: 16\n")
    res = _run("--config", str(bad))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "num_framez" in res.stderr
    unknown = tmp_path / "unknown_model.yaml"
    unknown.write_text("model: Qwen/Qwen9-VL-1T\n")
    res = _run("--config", str(unknown))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "does not know" in res.stderr


PLAN_ROWS = {  # README row label -> (recipe folder, extra overrides)
    "Qwen2.5-VL-3B": ("qwen2.5-vl-3b", []),
    "Qwen3-VL-4B": ("qwen3-vl-4b", []),
    "Qwen3-VL-8B (the paper's)": ("qwen3-vl-4b", ["--model", "Qwen/Qwen3-VL-8B-Instruct"]),
}


def test_readme_plan_table_is_what_the_planner_predicts():
    """The README's memory table is the planner's output, to 0.1 GB (rebuild it when this fails)."""
    from mllm4d_lite.train.plan import plan_recipe

    text = (REPO / "README.md").read_text()
    table = text.split("<!-- plan-table:", 1)[1].split("\n\n", 1)[0]
    rows = {cells[0]: cells[1:] for line in table.splitlines()[3:]
            if (cells := [c.strip() for c in line.strip("|").split("|")])}
    assert set(rows) == set(PLAN_ROWS)
    for label, (folder, extra) in PLAN_ROWS.items():
        for cell, stage in zip(rows[label], ("sft", "cold_start", "grpo")):
            predicted = plan_recipe(str(REPO / "recipes" / folder / f"{stage}.yaml"), extra).peak_gb
            assert float(cell.split()[0]) == pytest.approx(predicted, abs=0.051), (label, stage)
    micro4 = plan_recipe(str(REPO / "recipes/qwen3-vl-4b/grpo.yaml"),
                         PLAN_ROWS["Qwen3-VL-8B (the paper's)"][1]
                         + ["--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "4"])
    assert f"{micro4.peak_gb:.1f} with `--per-device-train-batch-size 4" in rows["Qwen3-VL-8B (the paper's)"][2]
