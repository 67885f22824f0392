"""kill -9 mid-run (issue 25): curate, SFT, GRPO and eval are started as a subprocess, killed with
SIGKILL once they have written part of their output, then the same command is run again (with
``--resume`` for SFT / GRPO, which is how those stages continue). The re-run must complete with
outputs identical to an uninterrupted run of the same command, no duplicated metrics rows, and no
temporary file left.

The uninterrupted run and the re-run are called in-process (the modules are loaded already); only
the killed run pays a fresh interpreter's start-up. Everything runs on one CPU thread, where the
tiny model trains and generates deterministically: the resumed adapters are compared bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mllm4d_lite import prompts

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CHOICES = {"A": "left", "B": "right"}


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """The tiny model is fastest on one thread, and the CI machine is shared (conftest)."""


def kill_when(argv: list[str], ready, what: str, timeout_s: float = 300.0) -> None:
    """Start ``python -m mllm4d_lite <argv>``, SIGKILL it as soon as ``ready()`` is true (polled
    every 10 ms), and make sure it was killed mid-run rather than having finished."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mllm4d_lite", *argv], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (
        f"the run ended with {proc.returncode} before it was killed after {what}; make it longer\n{err[-3000:]}")


def _no_temporaries(root: Path) -> None:
    left = [str(p.relative_to(root)) for p in root.rglob("*") if ".tmp" in p.name]
    assert left == [], left


def _argv(args: dict) -> list[str]:
    return [a for k, v in args.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert differ == [], f"{len(differ)} of {len(wa)} tensors differ, e.g. {differ[:2]}: " + ", ".join(
        f"max |diff| {float((wa[k] - wb[k]).abs().max()):.3g}" for k in differ[:2])


# ------------------------------------------------------------------------------------------ curate
@pytest.mark.hostile(
    stage="curate",
    case="kill -9 after the first annotation, then the same command",
    gets="completes; annotations and QA files byte-identical to an uninterrupted run; no `.tmp` left")
def test_curate_killed_mid_run_then_rerun_gives_identical_annotations(tmp_path):
    from mllm4d_lite.curation import curate, synth
    from mllm4d_lite.curation.clip import save_clip

    clips = tmp_path / "clips"
    for seed in range(501, 505):
        save_clip(synth.generate_clip(seed, num_frames=16, width=160, height=120), clips)
    args = ["--clips", str(clips), "--use-gt", "--workers", "1", "--bench-fraction", "0.5"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert curate.main([*args, "--out", str(ref)]) == 0

    def first_annotation():
        return any(not p.name.startswith(".") for p in (out / "annotations").glob("*.json"))

    kill_when(["curate", *args, "--out", str(out)], first_annotation, "the first annotation")
    assert len(list((ref / "annotations").glob("*.json"))) > len(list((out / "annotations").glob("[!.]*.json")))
    assert curate.main([*args, "--out", str(out)]) == 0

    names = sorted(str(p.relative_to(ref)) for p in ref.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    for name in names:
        if name.startswith("annotations/") or name.endswith(".jsonl") or name == "bench.json":
            assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    _no_temporaries(out)


# -------------------------------------------------------------------------------------------- eval
@pytest.mark.hostile(
    stage="eval",
    case="kill -9 after the first answer, then the same command",
    gets="completes; predictions.json byte-identical to an uninterrupted run; each question once")
def test_eval_killed_mid_run_then_rerun_gives_identical_predictions(tiny_qwen25, random_video, tmp_path):
    from mllm4d_lite.eval.evaluate import main

    (tmp_path / "v").mkdir()
    shutil.copy(random_video, tmp_path / "v" / "left.mp4")
    entries = [{"id": f"q{i}", "video": "v/left.mp4", "question": f"Which way does object {i} move?",
                "question_type": "multiple-choice", "choices": CHOICES, "answer": "left",
                "category": "object_direction"} for i in range(8)]
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(entries))
    args = ["run", "--model", str(tiny_qwen25), "--bench", str(bench), "--frames", "4", "--prompt", "st-cot",
            "--max-new-tokens", "16", "--num-threads", "1"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main([*args, "--out", str(ref)]) == 0

    def first_answer():
        path = out / "predictions.jsonl"
        return path.is_file() and path.read_text().count("\n") >= 1

    kill_when(["eval", *args, "--out", str(out)], first_answer, "the first answer")
    assert main([*args, "--out", str(out)]) == 0

    assert (out / "predictions.json").read_bytes() == (ref / "predictions.json").read_bytes()
    rows = _jsonl(out / "predictions.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(e["id"] for e in entries)  # each question once
    report, ref_report = (json.loads((d / "report.json").read_text()) for d in (out, ref))
    assert report["overall"] == ref_report["overall"]
    _no_temporaries(out)


# --------------------------------------------------------------------------------------------- sft
@pytest.mark.hostile(
    stage="sft",
    case="kill -9 after checkpoint-2, then the same command with `--resume`",
    gets="completes; each step logged once with the same losses; adapter bit-identical to an uninterrupted run")
def test_sft_killed_after_a_checkpoint_then_resumed_gives_the_same_adapter(tiny_qwen25, tmp_path):
    from mllm4d_lite.train import sft
    from mllm4d_lite.train.checkpoints import checkpoint_problem
    from mllm4d_lite.train.toy_data import write_toy_direction_set

    data = write_toy_direction_set(tmp_path / "toy", num_clips=4, seed=11, num_frames=4)
    base = {"model": str(tiny_qwen25), "train_file": str(data), "max_steps": 8, "save_steps": 2,
            "logging_steps": 1, "learning_rate": 5e-3, "warmup_ratio": 0.0, "lr_scheduler_type": "cosine",
            "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "num_frames": 4, "num_threads": 1,
            "per_device_train_batch_size": 2, "save_total_limit": 2}
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert sft.main(_argv({**base, "output_dir": ref})) == 0

    def first_checkpoint():
        return (out / "checkpoint-2").is_dir() and checkpoint_problem(out / "checkpoint-2") is None

    kill_when(["sft", *_argv({**base, "output_dir": out})], first_checkpoint, "checkpoint-2")
    assert not (out / "adapter").exists()
    assert sft.main(_argv({**base, "output_dir": out, "resume": True})) == 0

    rows, ref_rows = _jsonl(out / "metrics.jsonl"), _jsonl(ref / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 9))  # every step once
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]
    _same_weights(out / "adapter", ref / "adapter")
    _no_temporaries(out)


# -------------------------------------------------------------------------------------------- grpo
@pytest.mark.hostile(
    stage="grpo",
    case="kill -9 after checkpoint-1, then the same command with `--resume`",
    gets="completes; each step once with the same rewards and completions; adapter bit-identical")
def test_grpo_killed_after_a_checkpoint_then_resumed_gives_the_same_adapter(tiny_qwen25, random_video, tmp_path):
    from mllm4d_lite.train import grpo
    from mllm4d_lite.train.checkpoints import checkpoint_problem

    question = "Which way does the camera move?"
    rows = [{"id": f"q{i}", "video": str(random_video), "category": "camera_direction", "question": question,
             "question_type": "multiple-choice", "choices": CHOICES, "answer": CHOICES["AB"[i % 2]],
             "solution": {"camera_center": [[0.0, 0.0, 0.0], [0.5 if i % 2 else -0.5, 0.0, 0.0]],
                          "object_center": [], "frames": [0, 15]},
             "system": prompts.ST_COT_SYSTEM_PROMPT, "prompt": prompts.st_cot_prompt(question, CHOICES)}
            for i in range(4)]
    train = tmp_path / "rft.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {"model": str(tiny_qwen25), "train_file": str(train), "num_generations": 4,
            "per_device_train_batch_size": 4, "max_completion_length": 16, "max_steps": 4, "save_steps": 1,
            "sample_every": 1, "num_frames": 4, "num_threads": 1, "lora_r": 4, "lora_alpha": 8,
            "temperature": 1.5, "learning_rate": 1e-2, "seed": 0}
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert grpo.main(_argv({**base, "output_dir": ref})) == 0

    def first_checkpoint():
        ckpt = out / "checkpoints" / "checkpoint-1"
        return ckpt.is_dir() and checkpoint_problem(ckpt) is None

    kill_when(["grpo", *_argv({**base, "output_dir": out})], first_checkpoint, "checkpoint-1")
    assert not (out / "adapter").exists()
    assert grpo.main(_argv({**base, "output_dir": out, "resume": True})) == 0

    got, want = _jsonl(out / "metrics.jsonl"), _jsonl(ref / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(1, 5))  # every step once
    assert [r["reward"] for r in got] == [r["reward"] for r in want]
    assert [s["completions"] for s in _jsonl(out / "samples.jsonl")] == [
        s["completions"] for s in _jsonl(ref / "samples.jsonl")]
    _same_weights(out / "adapter", ref / "adapter")
    _no_temporaries(out)
