"""mllm4d sft: a few steps of SFT and cold start on the tiny model train LoRA weights only; the saved
adapter reloads with identical logits; outputs, resume, LoRA target checks, bad settings."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from mllm4d_lite import prompts
from mllm4d_lite.config import ConfigError, build_config
from mllm4d_lite.train import sft as S
from mllm4d_lite.train.collator import VideoSFTCollator
from mllm4d_lite.train.families import ModelSetupError
from mllm4d_lite.train.loading import load_model_and_processor
from mllm4d_lite.train.lora import resolve_lora_targets
from mllm4d_lite.train.toy_data import write_toy_direction_set
from mllm4d_lite.train.video_inputs import VideoCache

FAST = dict(max_steps=4, learning_rate=5e-3, logging_steps=2, save_steps=2, warmup_ratio=0.0, lora_r=4,
            lora_alpha=8, lora_dropout=0.0, num_frames=4, num_threads=1, eval_max_new_tokens=40)


@pytest.fixture(scope="module")
def toy_files(tmp_path_factory):
    """sft.jsonl (letters) and cot.jsonl (ST-CoT answers) over 6 toy clips."""
    root = tmp_path_factory.mktemp("toy_sft")
    sft = write_toy_direction_set(root, num_clips=6, seed=7)
    rows = [json.loads(line) for line in sft.read_text().splitlines()]
    cot = []
    for r in rows:
        x0, x1 = (1.0, -1.0) if r["response"] == "A" else (-1.0, 1.0)
        think = (f"At the first frame: Camera Center: [0.00, 0.00, 0.00]; Object Center: [{x0:.2f}, 0.00, 4.00]. "
                 f"At the last frame: Camera Center: [0.00, 0.00, 0.00]; Object Center: [{x1:.2f}, 0.00, 4.00].")
        cot.append(dict(r, system=prompts.ST_COT_SYSTEM_PROMPT,
                        prompt=prompts.st_cot_prompt(r["question"], r["choices"]),
                        response=f"<thinking>{think}</thinking><answer>{r['response']}</answer>"))
    cot_path = root / "cot.jsonl"
    cot_path.write_text("".join(json.dumps(r) + "\n" for r in cot))
    return sft, cot_path


def _cfg(tiny_path, train_file, out, **kw):
    return build_config(S.SFTConfig, {**FAST, "model": str(tiny_path), "train_file": str(train_file),
                                         "output_dir": str(out), **kw})


def _check_only_lora_trained(model, base_path, init_lora: dict[str, torch.Tensor] | None):
    from transformers import AutoModelForImageTextToText

    base = dict(AutoModelForImageTextToText.from_pretrained(base_path).named_parameters())
    changed_lora, compared = 0, 0
    for name, param in model.named_parameters():
        if "lora_" in name:
            assert param.requires_grad, name
            ref = init_lora.get(name) if init_lora else None
            if ref is None and "lora_B" in name:
                ref = torch.zeros_like(param)  # a fresh LoRA B starts at zero
            if ref is not None and not torch.equal(param.detach().cpu(), ref):
                changed_lora += 1
            continue
        assert not param.requires_grad, f"{name} is trainable"
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        if key in base:  # tied lm_head is absent from the file
            assert torch.equal(param.detach().cpu(), base[key]), f"{name} changed"
            compared += 1
    assert compared >= len(base) - 1  # every stored base weight was checked
    assert changed_lora > 0


def test_sft_then_cold_start_train_lora_only_and_reload(tiny_qwen25, toy_files, tmp_path, random_video):
    sft_file, cot_file = toy_files
    summary, trainer = S.run(_cfg(tiny_qwen25, sft_file, tmp_path / "sft"), return_trainer=True)
    model = trainer.model
    _check_only_lora_trained(model, tiny_qwen25, None)
    lora_names = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert any(".visual.merger." in n for n in lora_names)  # train_merger
    assert not any(".visual.blocks." in n for n in lora_names)  # the vision tower stays frozen
    assert any(".language_model." in n and "q_proj" in n for n in lora_names)
    assert summary["steps"] == 4 and summary["skipped_records"] == []

    # outputs
    out = tmp_path / "sft"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(r["s_per_step"] > 0 and r["tokens_per_s"] > 0 and r["peak_mem_gb"] > 0 and r["loss"] > 0 for r in rows)
    assert (out / "loss.png").stat().st_size > 1000 and (out / "config.yaml").is_file()
    assert (out / "checkpoint-4").is_dir()
    cost = summary["sample_cost"]
    assert cost["frames"] == 4 and cost["visual_tokens"] > 0 and cost["total_tokens_mean"] > cost["visual_tokens"]

    # the saved adapter reloads (peft, as `mllm4d eval` does) and gives identical logits
    reloaded, processor = load_model_and_processor(str(tiny_qwen25), adapter=str(out / "adapter"))
    frames, meta = VideoCache(4).get(str(random_video))
    collator = VideoSFTCollator(processor, VideoCache(4))
    batch = collator([{"video_path": str(random_video), "prompt": "Which way?", "response": "A"}])
    batch.pop("labels")
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)

    # cold start: continues the SFT adapter on ST-CoT answers, again LoRA only
    init = {k: v for k, v in model.named_parameters() if "lora_" in k}
    init = {k: v.detach().clone() for k, v in init.items()}
    _, cold = S.run(_cfg(tiny_qwen25, cot_file, tmp_path / "cold", adapter_init=str(out / "adapter"), max_steps=3),
                      return_trainer=True)
    cold_names = {n for n, _ in cold.model.named_parameters() if "lora_" in n}
    assert cold_names == set(init)  # the same adapter, not a new one
    _check_only_lora_trained(cold.model, tiny_qwen25, init)


def test_resume_without_a_checkpoint_is_one_error_line(tmp_path, capsys):
    out = tmp_path / "sft"
    assert S.main(["--output-dir", str(out), "--resume", "true"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mllm4d sft: error: `resume: true` but") and "holds no checkpoint" in err
    assert err.count("\n") == 1
    assert not out.exists(), "a refused run leaves no folder behind"


def test_resume_continues_from_last_checkpoint(tiny_qwen25, toy_files, tmp_path):
    sft_file, _ = toy_files
    S.run(_cfg(tiny_qwen25, sft_file, tmp_path, max_steps=2, save_steps=2))
    summary, trainer = S.run(_cfg(tiny_qwen25, sft_file, tmp_path, max_steps=4, resume=True), return_trainer=True)
    assert trainer.state.global_step == 4
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]  # 2 from the first run, 4 from the resumed one


def test_qwen3_family_trains(tiny_qwen3, toy_files, tmp_path):
    sft_file, _ = toy_files
    summary, trainer = S.run(_cfg(tiny_qwen3, sft_file, tmp_path, max_steps=2, gradient_checkpointing=True),
                               return_trainer=True)
    _check_only_lora_trained(trainer.model, tiny_qwen3, None)
    assert any("deepstack_merger_list" in n for n, _ in trainer.model.named_parameters() if "lora_A" in n)


def test_lora_targets_are_checked_against_the_model(tiny_qwen25):
    net, _ = load_model_and_processor(str(tiny_qwen25))
    names = resolve_lora_targets(net, ["q_proj", "down_proj"], train_merger=False)
    assert names and all(".language_model." in n for n in names)  # plain names never reach the vision tower
    with pytest.raises(ConfigError, match=r"'qkv' matches no Linear.*regex"):
        resolve_lora_targets(net, ["qkv"], train_merger=False)  # vision-only name: an error, not a no-op
    vis = resolve_lora_targets(net, [r"model\.visual\.blocks\.\d+\.attn\.qkv"], train_merger=False)
    assert vis == ["model.visual.blocks.0.attn.qkv", "model.visual.blocks.1.attn.qkv"]
    assert resolve_lora_targets(net, [r"model\.visual\.patch_embed\.proj"], False) == ["model.visual.patch_embed.proj"]
    assert {"model.visual.merger.mlp.0", "model.visual.merger.mlp.2"} <= set(
        resolve_lora_targets(net, ["q_proj"], train_merger=True))
    with pytest.raises(ConfigError, match="lm_head"):
        resolve_lora_targets(net, [r".*lm_head"], train_merger=False)
    with pytest.raises(ConfigError, match="lm_head"):
        build_config(S.SFTConfig, {"lora_target_modules": ["q_proj", "lm_head"]})


def test_bad_settings_give_clear_errors(tiny_qwen25, toy_files, tmp_path, capsys):
    sft_file, _ = toy_files
    if torch.cuda.is_available():
        pytest.skip("CUDA present: GPU-only settings are allowed here")
    code = S.main(["--model", str(tiny_qwen25), "--train-file", str(sft_file), "--output-dir", str(tmp_path),
                   "--use-unsloth", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "use_unsloth: true" in err and "recipes/tiny/sft.yaml" in err
    with pytest.raises(ModelSetupError, match="device: cuda"):
        S.run(_cfg(tiny_qwen25, sft_file, tmp_path, device="cuda"))
    with pytest.raises(SystemExit):
        S.main(["--quant", "3bit"])
    code = S.main(["--model", str(tiny_qwen25), "--train-file", str(tmp_path / "none.jsonl"),
                   "--output-dir", str(tmp_path)])
    assert code == 2 and "none.jsonl" in capsys.readouterr().err


def test_missing_videos_are_skipped_not_fatal(tiny_qwen25, toy_files, tmp_path):
    sft_file, _ = toy_files
    rows = [json.loads(line) for line in sft_file.read_text().splitlines()]
    rows.append(dict(rows[0], id="lost-clip", video="videos/lost.mp4"))
    path = sft_file.parent / "with_missing.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = S.run(_cfg(tiny_qwen25, path, tmp_path, max_steps=1, logging_steps=1))
    assert summary["skipped_records"] == ["lost-clip"] and summary["train_records"] == len(rows) - 1


def test_4bit_on_cpu_warns_and_trains(tiny_qwen25, toy_files, tmp_path):
    pytest.importorskip("bitsandbytes")
    sft_file, _ = toy_files
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary, trainer = S.run(_cfg(tiny_qwen25, sft_file, tmp_path, max_steps=1, logging_steps=1, quant="4bit"),
                                   return_trainer=True)
    assert any("slow" in str(w.message) and "4bit" in str(w.message) for w in caught)
    assert any("4bit" in type(m).__name__ for m in trainer.model.modules())
    assert summary["steps"] == 1


@pytest.mark.slow  # 600 SFT steps and a 128-clip evaluation, twice (video and blind): minutes on 2 cores
def test_tiny_recipe_learns_direction_from_the_video_not_the_text(tiny_qwen25, tmp_path):
    """The tiny SFT recipe on the toy left/right set (a square slides across; options shuffled, so the
    text alone leaves left vs right at 50 %): trained with the video it must answer held-out clips
    far above the blind control trained and scored on blanked frames. Fails if the video stops
    reaching the model, if positions inside a frame become indistinguishable to the LLM (the tiny
    model's rope_theta) or if the head cannot express a confident letter (its final norm gain).

    600 steps and 128 held-out clips leave a margin above the bar on any CPU (the numbers differ
    with the CPU's kernels)."""
    from mllm4d_lite.config import load_yaml

    train = write_toy_direction_set(tmp_path / "train", 96, seed=0, shuffle_choices=True)
    held = write_toy_direction_set(tmp_path / "held", 128, seed=1, shuffle_choices=True)
    recipe = load_yaml(Path(__file__).resolve().parent.parent / "recipes" / "tiny" / "sft.yaml")
    acc = {}
    for name, blind in (("sighted", False), ("blind", True)):
        values = dict(recipe, model=str(tiny_qwen25), train_file=str(train), eval_file=str(held),
                      output_dir=str(tmp_path / name), blind=blind, max_steps=600, logging_steps=100,
                      save_steps=1000)
        acc[name] = S.run(build_config(S.SFTConfig, values))["eval"]["accuracy"]
    assert acc["sighted"] >= 0.8, acc
    assert acc["blind"] <= 0.65, acc
    assert acc["sighted"] - acc["blind"] >= 0.25, acc
