"""Torn checkpoints (issue 25): --resume passes over an incomplete newest checkpoint, saying so."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from mllm4d_lite.config import ConfigError
from mllm4d_lite.train.checkpoints import checkpoint_problem, checkpoint_to_resume


def _checkpoint(folder, step):
    """A checkpoint laid out as the HF Trainer saves a LoRA run (save_only_model=False)."""
    from safetensors.torch import save_file

    ckpt = folder / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    save_file({"lora_A.weight": torch.ones(4, 8), "lora_B.weight": torch.zeros(8, 4)}, ckpt / "adapter_model.safetensors")
    (ckpt / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA"}))
    torch.save({"state": {0: {"exp_avg": torch.ones(64)}}, "param_groups": []}, ckpt / "optimizer.pt")
    torch.save({"last_epoch": step}, ckpt / "scheduler.pt")
    torch.save({"python": 1}, ckpt / "rng_state.pth")
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}, indent=2))
    return ckpt


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.mark.hostile(
    stage="sft",
    case="the newest checkpoint torn: adapter, optimizer, scheduler, trainer state, RNG state or "
         "adapter config truncated, deleted or empty",
    gets="`--resume` goes on from the newest complete checkpoint and warns which file was "
         "incomplete")
@pytest.mark.parametrize("torn", [
    ("adapter_model.safetensors", "truncate"), ("optimizer.pt", "truncate"), ("scheduler.pt", "truncate"),
    ("trainer_state.json", "truncate"), ("rng_state.pth", "truncate"), ("adapter_config.json", "truncate"),
    ("optimizer.pt", "delete"), ("trainer_state.json", "delete"), ("adapter_model.safetensors", "delete"),
    ("optimizer.pt", "empty"),
])
def test_torn_latest_checkpoint_falls_back_to_the_newest_complete(tmp_path, caplog, torn):
    name, how = torn
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 4)
    latest = _checkpoint(tmp_path, 6)
    assert checkpoint_problem(latest) is None
    {"truncate": _truncate, "delete": lambda p: p.unlink(), "empty": lambda p: p.write_bytes(b"")}[how](latest / name)
    assert name in checkpoint_problem(latest)
    with caplog.at_level(logging.WARNING, logger="mllm4d_lite.train.checkpoints"):
        assert checkpoint_to_resume(tmp_path) == str(tmp_path / "checkpoint-4")
    assert "checkpoint-6 is incomplete" in caplog.text and name in caplog.text
    assert "resuming from the newest complete checkpoint" in caplog.text


def test_complete_checkpoints_resume_from_the_newest_by_step(tmp_path, caplog):
    for step in (2, 10, 4):  # by step number, not by name order
        _checkpoint(tmp_path, step)
    (tmp_path / "checkpoint-20.tmp").mkdir()  # not a checkpoint name
    with caplog.at_level(logging.INFO, logger="mllm4d_lite.train.checkpoints"):
        assert checkpoint_to_resume(tmp_path) == str(tmp_path / "checkpoint-10")
    assert "incomplete" not in caplog.text


@pytest.mark.hostile(
    stage="sft",
    case="`--resume` with no checkpoint, or only torn ones",
    gets="`ConfigError` in one line naming the folder and the torn file")
def test_all_checkpoints_torn_or_none_is_one_error_line(tmp_path):
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        checkpoint_to_resume(tmp_path)
    _truncate(_checkpoint(tmp_path, 2) / "optimizer.pt")
    with pytest.raises(ConfigError, match=r"every checkpoint in .* is incomplete \(checkpoint-2: optimizer\.pt"):
        checkpoint_to_resume(tmp_path)


@pytest.mark.hostile(
    stage="sft",
    case="SFT `--resume` after checkpoint-4's optimizer was cut in half (tiny model, end to end)",
    gets="resumes from checkpoint-2 with a warning; finishes at step 6; each step logged once")
def test_sft_resume_skips_a_truncated_checkpoint(tiny_qwen25, tmp_path, caplog):
    """End to end on the tiny model: checkpoint-4's optimizer is cut in half; --resume goes on from 2."""
    from mllm4d_lite.config import build_config
    from mllm4d_lite.train import sft as S
    from mllm4d_lite.train.toy_data import write_toy_direction_set

    data = write_toy_direction_set(tmp_path / "toy", num_clips=4, seed=7)
    fast = dict(learning_rate=5e-3, logging_steps=2, save_steps=2, warmup_ratio=0.0, lora_r=4, lora_alpha=8,
                lora_dropout=0.0, num_frames=2, num_threads=1, model=str(tiny_qwen25), train_file=str(data),
                output_dir=str(tmp_path / "run"))
    S.run(build_config(S.SFTConfig, {**fast, "max_steps": 4}))
    assert checkpoint_problem(tmp_path / "run" / "checkpoint-4") is None  # the real layout passes
    _truncate(tmp_path / "run" / "checkpoint-4" / "optimizer.pt")
    with caplog.at_level(logging.WARNING, logger="mllm4d_lite.train.checkpoints"):
        summary, trainer = S.run(build_config(S.SFTConfig, {**fast, "max_steps": 6, "resume": True}),
                                 return_trainer=True)
    assert "checkpoint-4 is incomplete" in caplog.text
    assert trainer.state.global_step == 6
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]  # step 4 redone from 2, logged once
