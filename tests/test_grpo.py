"""GRPO stage: config and recipes, prompt ablation, the video reaching the policy, a tiny run.

The "video reaches the policy" test guards the kit's video path: TRL's GRPOTrainer
builds its log-probability inputs from ``image``/``images`` only, so a video in the prompt
messages reaches generation but not the loss. The kit's trainer feeds it; these tests fail if
the policy's log-probs (or its LoRA gradients) stop depending on the frames.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

from mllm4d_lite import prompts  # noqa: E402
from mllm4d_lite.config import ConfigError, build_config, parse_config  # noqa: E402
from mllm4d_lite.train import grpo  # noqa: E402
from mllm4d_lite.train.callbacks import read_metrics  # noqa: E402
from mllm4d_lite.train.families import ModelSetupError  # noqa: E402
from mllm4d_lite.train.grpo_config import GRPOConfig  # noqa: E402
from mllm4d_lite.train.grpo_data import load_pool, load_rft_records, prompt_messages  # noqa: E402
from mllm4d_lite.train.grpo_metrics import category_fifths, fifth_means, fifths_see_same_prompts  # noqa: E402
from mllm4d_lite.train.grpo_trainer import video_rows_for  # noqa: E402
from mllm4d_lite.train.records import DataError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "recipes").glob("*/grpo.yaml"))
CHOICES = {"A": "left", "B": "right", "C": "toward the camera", "D": "not moving"}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """The tiny model is fastest on one thread, and the CI machine is shared (conftest)."""


@pytest.fixture(scope="module")
def grpo_data(tmp_path_factory, random_video) -> Path:
    """rft.jsonl + cot.jsonl: 4 questions on two different clips (absolute video paths)."""
    from mllm4d_lite.curation.video import write_video

    root = tmp_path_factory.mktemp("grpo_data")
    rng = np.random.default_rng(1)
    frames = np.stack([np.roll((rng.random((120, 160, 3)) * 255).astype(np.uint8), 4 * i, axis=1) for i in range(16)])
    second = root / "second.mp4"
    write_video(second, frames, fps=8.0)
    rft, cot = [], []
    for i in range(4):
        video = str(random_video if i % 2 == 0 else second)
        answer_letter = "A" if i % 2 == 0 else "B"
        rec = {"id": f"q{i}", "clip_id": f"c{i % 2}", "video": video, "category": "camera_direction",
               "question": "Which way does the camera move?", "question_type": "multiple-choice",
               "choices": CHOICES, "answer": CHOICES[answer_letter], "answer_letter": answer_letter,
               "solution": {"camera_center": [[0.0, 0.0, 0.0], [-0.5 if i % 2 == 0 else 0.5, 0.0, 0.0]],
                            "object_center": [], "frames": [0, 15]},
               "system": prompts.ST_COT_SYSTEM_PROMPT,
               "prompt": prompts.st_cot_prompt("Which way does the camera move?", CHOICES)}
        rft.append(rec)
        x = rec["solution"]["camera_center"][1][0]
        cot.append({**rec, "response": f"<thinking>Camera Center: [0.00, 0.00, 0.00] Object Center: null. "
                                       f"Camera Center: [{x:.2f}, 0.00, 0.00] Object Center: null.</thinking>"
                                       f"<answer>{answer_letter}</answer>"})
    (root / "rft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rft))
    (root / "cot.jsonl").write_text("".join(json.dumps(r) + "\n" for r in cot))
    return root


@pytest.fixture(scope="module")
def cold_start_adapter(grpo_data, tiny_qwen25, tmp_path_factory) -> Path:
    """A short ST-CoT cold start (the real `mllm4d sft` code path) so completions vary in reward."""
    from mllm4d_lite.train.sft import SFTConfig, run

    out = tmp_path_factory.mktemp("cold_start")
    cfg = SFTConfig(model=str(tiny_qwen25), train_file=str(grpo_data / "cot.jsonl"), output_dir=str(out),
                    max_steps=40, learning_rate=3e-3, lr_scheduler_type="constant", warmup_ratio=0.0,
                    logging_steps=20, save_steps=1000, num_threads=1, lora_r=8, lora_alpha=16, lora_dropout=0.0)
    summary = run(cfg)
    return Path(summary["adapter"])


def _cfg(grpo_data, model, out, **kw) -> GRPOConfig:
    base = dict(model=str(model), train_file=str(grpo_data / "rft.jsonl"), output_dir=str(out), num_generations=4,
                per_device_train_batch_size=4, max_completion_length=48, max_steps=2, save_steps=2,
                sample_every=1, num_threads=1, seed=0)
    base.update(kw)
    return build_config(GRPOConfig, base)


# ------------------------------------------------------------------------------------ config

@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.parent.name)
def test_recipes_load_with_paper_values(recipe):
    cfg = parse_config(GRPOConfig, ["--config", str(recipe)], prog="test")
    assert cfg.reward_funcs == ["format", "accuracy", "camera", "object"]
    assert cfg.reward_weights == [0.2, 0.6, 0.1, 0.1]
    assert cfg.temperature == 1.0  # the paper's value on every profile
    if recipe.parent.name == "tiny":
        # the tiny model's deviations, each explained in its header: min_p sampling, a stronger KL
        # term, and a prompt pool that makes each fifth of the run one pass over the same prompts
        assert (cfg.min_p, cfg.beta, cfg.loss_type) == (0.2, pytest.approx(0.2), "grpo")
        assert re.search(r"beta \(KL\)\s+0\.001\s+-> 0\.2\b", recipe.read_text())  # the header explains it
        assert fifths_see_same_prompts(cfg.max_steps, cfg.max_samples, cfg.prompts_per_step())
    else:
        assert cfg.beta == pytest.approx(0.001) and cfg.min_p == 0.0  # the paper's; kept above TRL's 0
    assert cfg.learning_rate == pytest.approx(1e-4)  # the paper's value on every profile
    assert cfg.use_st_cot_prompt and not cfg.blind
    assert cfg.num_generations == 8
    assert cfg.adapter_init, "GRPO starts from the cold-start adapter"
    header = recipe.read_text().split("\n\n")[0]
    assert "mllm4d grpo --config" in header and "beta" in recipe.read_text()


def test_recipes_exist_for_each_profile():
    assert {p.parent.name for p in RECIPES} >= {"tiny", "qwen2.5-vl-3b", "qwen3-vl-4b"}


@pytest.mark.parametrize("bad, message", [
    ({"reward_weights": [0.5, 0.5]}, "one weight per reward"),
    ({"reward_funcs": ["format", "style"]}, "choose one or more"),
    ({"per_device_train_batch_size": 6}, "multiple of `num_generations"),
    ({"num_generations": 1}, ">= 2 completions"),
    ({"beta": -0.1}, "`beta` must be >= 0"),
    ({"scale_rewards": "std"}, "use group, batch or none"),
    ({"loss_type": "ppo"}, "use dapo, grpo, bnpo or dr_grpo"),
    ({"top_entropy_quantile": 1.5}, "must be in \\[0, 1\\]"),
    ({"num_iterations": 0}, "`num_iterations: 0` must be >= 1"),
    ({"top_p": 0.0}, "must be in \\(0, 1\\]"),
    ({"top_k": -1}, "`top_k: -1` >= 0"),
    ({"min_p": 1.0}, "`min_p: 1.0` must be in \\[0, 1\\)"),
    ({"max_completion_length": 0}, "`max_completion_length: 0` must be >= 1"),
])
def test_bad_config_values_are_refused(bad, message):
    with pytest.raises(ConfigError, match=message):
        build_config(GRPOConfig, bad)


def test_a_bad_value_on_the_command_line_is_one_error_line(tmp_path, capsys):
    """The stage's own checks (validate) reach the user as parse errors do: exit 2, one line, no
    traceback, nothing written."""
    out = tmp_path / "grpo"
    with pytest.raises(SystemExit) as stop:
        grpo.main(["--output-dir", str(out), "--num-generations", "3"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err == ("mllm4d grpo: error: `per_device_train_batch_size: 8` must be a multiple of "
                   "`num_generations: 3`\n")
    assert not out.exists()


def test_vllm_on_cpu_is_a_clear_error():
    with pytest.raises(ModelSetupError, match="use_vllm: true"):
        grpo.check_setup(GRPOConfig(use_vllm=True), "cpu")


def test_cli_help_lists_the_ablation_switches(capsys):
    with pytest.raises(SystemExit) as exit_info:
        grpo.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--reward-funcs", "--reward-weights", "--use-st-cot-prompt", "--adapter-init", "--resume"):
        assert option in text


def test_prompt_ablation_switches_system_and_instruction():
    rec = {"question": "Which way does the camera move?", "choices": CHOICES}
    cot = prompt_messages(rec, use_st_cot_prompt=True)
    direct = prompt_messages(rec, use_st_cot_prompt=False)
    assert cot[0]["role"] == "system" and cot[0]["content"][0]["text"] == prompts.ST_COT_SYSTEM_PROMPT
    assert cot[-1]["content"][0]["type"] == "video"
    assert cot[-1]["content"][1]["text"] == prompts.st_cot_prompt(rec["question"], CHOICES)
    assert [m["role"] for m in direct] == ["user"]
    assert direct[-1]["content"][1]["text"] == prompts.direct_prompt(rec["question"], CHOICES)


def test_category_fifths_average_the_steps_that_drew_each_category():
    rows = [{"accuracy_by_category": {"counting": 0.0, "false_positive": 1.0}},
            {"accuracy_by_category": {"counting": 0.5}}] + [{}] * 6 + \
           [{"accuracy_by_category": {"counting": 1.0}}, {"accuracy_by_category": {"counting": 0.5}}]
    assert category_fifths(rows) == {"counting": (0.25, 0.75), "false_positive": (1.0, None)}
    assert category_fifths([{"reward": 0.5}]) == {}


def test_fifth_means():
    first, last = fifth_means([0.0] * 5 + [0.5] * 10 + [1.0] * 5)
    assert (first, last) == (0.0, 1.0)
    assert fifth_means([0.2, 0.4]) == (0.2, 0.4)


def test_prompt_pool_takes_each_category_then_each_answer(tmp_path):
    # as in curated rft.jsonl: every absent-object question has its own answer text, and half the
    # direction questions offer "no ... there" as a distractor; a pool balanced by answer alone is
    # mostly absent-object questions, and GRPO on direction questions alone unlearns them
    rows = ([{"category": "false_positive", "answer": f"no object {i} there"} for i in range(30)]
            + [{"category": "object_direction", "answer": a} for a in ["left", "right", "not moving"] * 6]
            + [{"category": "counting", "answer": a} for a in ["0", "1"] * 6])
    path = tmp_path / "rft.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "video": "v.mp4", "question": "?", **r}) + "\n"
                            for i, r in enumerate(rows)))
    pool = load_rft_records(path, max_samples=12, seed=0, balance_categories=True)
    assert Counter(r["category"] for r in pool) == {"counting": 4, "false_positive": 4, "object_direction": 4}
    assert sorted(Counter(r["answer"] for r in pool if r["category"] == "object_direction").values()) == [1, 1, 2]
    by_answer = load_rft_records(path, max_samples=12, seed=0, balance_categories=False)
    assert Counter(r["category"] for r in by_answer)["false_positive"] >= 8
    assert GRPOConfig().balance_categories and GRPOConfig().balance_answers


def test_centre_rewards_need_the_true_centres(tmp_path):
    """sft.jsonl-like prompts (no `solution`) with the camera / object rewards on are an error naming
    the file and the fix: scored against no centres, those rewards would pay for writing none."""
    rows = [{"id": f"q{i}", "video": "v.mp4", "question": "?", "answer": "left", "category": "object_direction"}
            for i in range(4)]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = GRPOConfig(train_file=str(path), max_samples=0)
    with pytest.raises(DataError, match=r"sft.jsonl: 4 of 4 prompts .* camera and object reward.*rft.jsonl"):
        load_pool(cfg)
    assert len(load_pool(dataclasses.replace(cfg, reward_funcs=["format", "accuracy"],
                                                  reward_weights=[0.25, 0.75]))) == 4
    path.write_text("".join(json.dumps({**r, "solution": {"camera_center": [], "object_center": []}}) + "\n"
                            for r in rows))
    assert [r["id"] for r in load_pool(cfg)] == ["q0", "q1", "q2", "q3"]


@pytest.mark.parametrize("steps, prompts, per_step, same", [
    (60, 24, 2, True),     # 12 steps per fifth x 2 prompts = one pass over 24 prompts
    (60, 12, 2, True),     # two passes per fifth
    (60, 218, 2, False),   # 24 of 218 prompts per fifth: each fifth draws different ones
    (60, 16, 2, False),    # 24 draws per fifth is 1.5 passes over 16
    (62, 24, 2, False),    # fifths of unequal length
    (240, 24, 0.5, True),  # num_iterations 4: a new pair of prompts every 4 steps
    (0, 24, 2, False),
])
def test_fifths_see_same_prompts(steps, prompts, per_step, same):
    assert fifths_see_same_prompts(steps, prompts, per_step) is same


# ------------------------------------------------------------------------ video reaches policy

@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_video_reaches_the_policy_logprobs_and_gradients(grpo_data, family, request, tmp_path):
    """Same completions, frames blanked: the policy's log-probs, TRL's reference log-probs and
    the LoRA gradients of the GRPO loss must all change. TRL's own scoring path is blind."""
    from trl import GRPOTrainer

    model = request.getfixturevalue("tiny_qwen25" if family == "qwen2.5-vl" else "tiny_qwen3")
    cfg = _cfg(grpo_data, model, tmp_path, beta=0.001)
    trainer = grpo.build_trainer(cfg)
    trainer.model.train()
    example = trainer.train_dataset[0]
    inputs = [example] * cfg.num_generations
    out = trainer._generate_and_score_completions(inputs)  # generation + TRL's reference log-probs
    rows = out["video_inputs"]
    assert len(rows) == cfg.num_generations and rows[0]["pixel_values_videos"].abs().sum() > 0

    blank_prompt = copy.deepcopy(example["prompt"])
    video_part = next(p for p in blank_prompt[-1]["content"] if p["type"] == "video")
    video_part["video"] = np.zeros_like(video_part["video"])
    blank_rows = video_rows_for(trainer, [blank_prompt] * cfg.num_generations)
    assert torch.equal(blank_rows[0]["video_grid_thw"], rows[0]["video_grid_thw"])  # same token count

    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    keep = out["completion_ids"].size(1)
    cmask = out["completion_mask"].bool()
    with torch.no_grad():
        with trainer.video_scope(rows):
            seen, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep)
        with trainer.video_scope(blank_rows):
            blind, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep)
        stock, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(trainer, trainer.model, ids, mask, keep)
    diff = (seen - blind).abs()[cmask]
    assert diff.max() > 1e-3, f"blanking the frames left the policy's log-probs unchanged (max diff {diff.max():.2e})"
    # TRL's reference pass (inside its own _generate_and_score_completions) saw the video too:
    # at step 0 the reference adapter equals the policy, so its log-probs match the seeing ones.
    ref = out["ref_per_token_logps"]
    assert torch.allclose(ref[cmask], seen[cmask], atol=1e-4)
    assert (ref - blind).abs()[cmask].max() > 1e-3
    # the stock TRL method, given the batch TRL itself would pass (no video fields), scores a blind model
    assert (stock - seen).abs()[cmask].max() > 1e-3

    # gradients of the GRPO loss through the trainer's own loss path
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(); the loss normalises by it

    def lora_grads(video_rows):
        trainer.model.zero_grad(set_to_none=True)
        batch = dict(out, video_inputs=video_rows, advantages=torch.tensor([1.0, -1.0, 1.0, -1.0]))
        trainer.compute_loss(trainer.model, batch).backward()
        return torch.cat([p.grad.flatten() for n, p in trainer.model.named_parameters()
                          if p.requires_grad and p.grad is not None])

    g_seen, g_blind = lora_grads(rows), lora_grads(blank_rows)
    logging.getLogger(__name__).info(
        "%s: |logp seen - blank| max %.3g mean %.3g; |ref - seen| max %.3g; |stock TRL - seen| max %.3g; "
        "|grad seen - blank| / |grad seen| = %.3g", family, diff.max(), diff.mean(), (ref - seen).abs()[cmask].max(),
        (stock - seen).abs()[cmask].max(), (g_seen - g_blind).norm() / g_seen.norm())
    assert g_seen.abs().sum() > 0
    assert (g_seen - g_blind).abs().max() > 1e-6 * g_seen.abs().max() + 1e-9


def test_a_step_along_the_grpo_loss_gradient_follows_the_advantages(grpo_data, tiny_qwen25, cold_start_adapter,
                                                                  tmp_path):
    """One small step down the kit's GRPO loss (video rows, TRL's loss code) must raise the
    log-probability of the completions given a positive advantage and lower the others (a sign
    error, or advantages paired with the wrong completions, breaks this)."""
    cfg = _cfg(grpo_data, tiny_qwen25, tmp_path, adapter_init=str(cold_start_adapter), temperature=1.5, beta=0.0)
    trainer = grpo.build_trainer(cfg)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    torch.manual_seed(0)
    out = trainer._generate_and_score_completions([trainer.train_dataset[0]] * 2 + [trainer.train_dataset[1]] * 2)
    rows = out["video_inputs"]
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    keep, cmask = out["completion_ids"].size(1), out["completion_mask"]
    assert len({tuple(r[m.bool()].tolist()) for r, m in zip(out["completion_ids"], cmask)}) == 4, "need 4 distinct completions"

    def sequence_logps():
        with torch.no_grad(), trainer.video_scope(rows):
            logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep)
        return (logps * cmask).sum(-1)

    advantages = torch.tensor([1.0, -1.0, -1.0, 1.0])  # one up and one down in each group
    before = sequence_logps()
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    trainer.model.zero_grad(set_to_none=True)
    trainer.compute_loss(trainer.model, dict(out, advantages=advantages)).backward()
    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in params if p.grad is not None))
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p -= 0.01 * p.grad / norm
    change = sequence_logps() - before
    logging.getLogger(__name__).info("advantages %s -> log-prob change %s", advantages.tolist(), change.tolist())
    assert torch.equal(torch.sign(change), advantages), f"log-prob changes {change.tolist()} vs advantages {advantages.tolist()}"


def test_batch_with_video_tokens_but_no_features_raises(grpo_data, tiny_qwen25, tmp_path):
    cfg = _cfg(grpo_data, tiny_qwen25, tmp_path)
    trainer = grpo.build_trainer(cfg)
    prompt_ids, _, _ = trainer._tokenize_prompts([trainer.train_dataset[0]["prompt"]])
    trainer._active_video_rows = None
    ids = torch.tensor(prompt_ids)
    with pytest.raises(RuntimeError, match="blind"):
        trainer._get_per_token_logps_and_entropies(trainer.model, ids, torch.ones_like(ids), 4)


# --------------------------------------------------------------------------------- tiny run

def _adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_resume_without_a_checkpoint_is_one_error_line(tmp_path, capsys):
    out = tmp_path / "grpo"
    assert grpo.main(["--output-dir", str(out), "--resume", "true"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mllm4d grpo: error: `resume: true` but") and "holds no checkpoint" in err
    assert not out.exists(), "a refused run leaves no folder behind"


def test_tiny_grpo_run_updates_lora_logs_every_component_and_resumes(grpo_data, tiny_qwen25, cold_start_adapter,
                                                                     tmp_path):
    out = tmp_path / "grpo"
    # temperature 1.5: the cold-started tiny model is sharp enough that 4 samples at 1.0 can all be
    # identical, and a group without reward variance has no advantage and no gradient
    cfg = _cfg(grpo_data, tiny_qwen25, out, adapter_init=str(cold_start_adapter), max_steps=2, save_steps=2,
               per_device_train_batch_size=8, temperature=1.5)
    summary = grpo.run(cfg)
    assert summary["steps"] == 2
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    # resume to step 4 from the checkpoint
    summary = grpo.run(dataclasses.replace(cfg, max_steps=4, resume=True))
    assert summary["steps"] == 4

    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for row in rows:
        for key in ("reward", "format", "accuracy", "camera", "object", "completion_length", "kl",
                    "s_per_step", "memory_gb"):
            assert row[key] is not None and np.isfinite(row[key]), (key, row)
        weighted = 0.2 * row["format"] + 0.6 * row["accuracy"] + 0.1 * row["camera"] + 0.1 * row["object"]
        assert row["reward"] == pytest.approx(weighted, abs=1e-4)
        # every prompt here is a camera-direction question: its accuracy is the step's accuracy
        assert row["accuracy_by_category"] == {"camera_direction": pytest.approx(row["accuracy"], abs=1e-6)}
    assert max(r["reward_std"] for r in rows) > 0, "no reward variance: the run could not learn"

    before, after = _adapter_weights(cold_start_adapter), _adapter_weights(out / "adapter")
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.allclose(before[k], after[k])]
    assert changed, "GRPO left every LoRA weight unchanged"
    assert not (out / "adapter" / "ref").exists(), "only the trained adapter is saved, not TRL's reference copy"
    assert (out / "reward_curve.png").stat().st_size > 1000
    samples = [json.loads(ln) for ln in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and set(samples[0]["rewards"]) == {"format", "accuracy", "camera", "object"}
    assert len(samples[0]["completions"]) == cfg.num_generations
    assert (out / "config.yaml").is_file() and json.loads((out / "summary.json").read_text())["steps"] == 4

