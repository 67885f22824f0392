"""scripts/gpu_check*.py: the one-shot GPU check, tested on the CPU.

Fast: the overrides each stage runs its recipe with (parsed by the stage's own config), the inputs
(curated clips, the frames bundle that stands in for the video decoder), the slimmed bitsandbytes
wheel, the time budget (skips with reasons, a stuck step killed at its limit with its figures
kept), the report's figures and table, the launcher's messages. Slow: the whole dry run (both 24 GB
profiles, every stage, 2-layer real-width models on the CPU) through the same code path as on a GPU.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
sys.path.insert(0, str(SCRIPTS))

gpu_check = importlib.import_module("gpu_check")
inputs_mod = importlib.import_module("gpu_check_inputs")
report_mod = importlib.import_module("gpu_check_report")
stage_mod = importlib.import_module("gpu_check_stage")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """The check's inputs, prepared as `bash scripts/gpu_check.sh --prepare` does (curation, ~10 s)."""
    out = tmp_path_factory.mktemp("gpu_check") / "inputs"
    inputs_mod.prepare(out)
    return out


def _parse(stage: str, overrides: list[str], profile: str):
    from mllm4d_lite.config import parse_config
    from mllm4d_lite.train.grpo_config import GRPOConfig
    from mllm4d_lite.train.sft import SFTConfig

    cls = GRPOConfig if stage == "grpo" else SFTConfig
    return parse_config(cls, ["--config", str(REPO / "recipes" / profile / f"{stage}.yaml"), *overrides], prog="t")


@pytest.mark.parametrize("profile", sorted(gpu_check.PROFILES))
def test_overrides_keep_the_recipe_and_parse(profile, tmp_path):
    """GPU mode changes only model, depth, data/output folders, steps, logging and (SFT) gradient
    accumulation; memory settings stay the recipe's. The dry run adds its documented CPU values."""
    from mllm4d_lite.config import load_yaml

    work, data = tmp_path / "work", tmp_path / "inputs"
    for stage in gpu_check.STAGES:
        recipe = load_yaml(REPO / "recipes" / profile / f"{stage}.yaml")
        adapter = None if stage == "sft" else str(work / "prev" / "adapter")
        steps = gpu_check.STEPS["gpu"][stage]
        cfg = _parse(stage, gpu_check.stage_overrides("gpu", profile, stage, 0, work, data, steps, adapter), profile)
        assert cfg.model == gpu_check.PROFILES[profile] and cfg.shape_layers == 0
        assert cfg.output_dir == str(work / profile / stage) and cfg.max_steps == steps and cfg.logging_steps == 1
        for key in ("quant", "dtype", "device", "num_frames", "max_pixels", "min_pixels", "gradient_checkpointing",
                    "per_device_train_batch_size", "use_unsloth", "learning_rate"):
            assert getattr(cfg, key) == recipe[key], key
        if stage == "grpo":
            for key in ("num_generations", "max_completion_length", "gradient_accumulation_steps", "beta"):
                assert getattr(cfg, key) == recipe[key], key
            # the prompts drawn are exactly the ones the steps use: steps x generation batch / generations
            assert cfg.max_samples * cfg.num_generations == steps * cfg.per_device_train_batch_size \
                * cfg.gradient_accumulation_steps
            assert cfg.train_file == str(data / "rft.jsonl") and cfg.adapter_init == adapter
        else:
            assert cfg.gradient_accumulation_steps == 1 and cfg.lora_r == recipe.get("lora_r", cfg.lora_r)
            assert cfg.max_train_samples == steps * cfg.per_device_train_batch_size
            assert cfg.train_file == str(data / ("cot.jsonl" if stage == "cold_start" else "sft.jsonl"))
        dry = _parse(stage, gpu_check.stage_overrides("dry-run", profile, stage, 2, work, data, 1, adapter), profile)
        assert (dry.device, dry.use_unsloth, dry.shape_layers, dry.num_frames) == ("cpu", False, 2, 4)
        assert dry.quant == recipe["quant"] and dry.dtype == recipe["dtype"]
        if stage == "grpo":
            assert (dry.num_generations, dry.max_completion_length, dry.max_samples) == (2, 8, 1)


def test_inputs_are_curated_records_with_their_clips(inputs):
    manifest = inputs_mod.check_inputs(inputs)
    assert manifest["clips"] == [Path(c).name for c in inputs_mod.DEFAULT_CLIPS]
    for name in inputs_mod.FILES:
        rows = [json.loads(line) for line in (inputs / name).read_text().splitlines()]
        assert len(rows) == manifest["records"][name] > 0
        assert all((inputs / r["video"]).is_file() and r["video"].startswith("clips/") for r in rows)
    assert inputs_mod.source_size(inputs) == (240, 320)
    with pytest.raises(inputs_mod.InputsError, match="gpu_check.sh --prepare"):
        inputs_mod.check_inputs(inputs / "nowhere")


def test_frame_bundle_gives_the_decoders_frames(inputs, monkeypatch):
    """Served from frames.npz, read_video returns what decord decodes, sampling and metadata included."""
    import mllm4d_lite.curation.video as video
    from mllm4d_lite.train.video_inputs import load_video_for_model

    clip = inputs / "clips" / "synth_s00001" / "left.mp4"
    direct = [load_video_for_model(clip, n) for n in (16, 5)]
    monkeypatch.setattr(video, "_read_decord", video._read_decord)  # restored after the test
    assert stage_mod.use_frame_bundle(inputs / "frames.npz") == 3
    assert video._read_decord.__name__ == "read_from_bundle"
    for n, (frames, meta) in zip((16, 5), direct):
        got, got_meta = load_video_for_model(clip, n)
        assert got.dtype == np.uint8 and np.array_equal(got, frames) and got_meta == meta
    sha = json.loads((inputs / "frames.json").read_text())["sha256"]["synth_s00001"]["frames"]
    assert hashlib.sha256(direct[0][0].tobytes()).hexdigest() == sha


def test_block_imports_hides_the_decoders():
    code = ("import gpu_check_stage as g, importlib.util; print(g.block_imports('decord,av'));\n"
            "try:\n import decord\nexcept ModuleNotFoundError as e: print('hidden', e.name)\n"
            "print(importlib.util.find_spec('av'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=SCRIPTS, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:3] == ["['decord', 'av']", "hidden decord", "None"]


def _fake_wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("bitsandbytes-0.50.2.dist-info/RECORD", "stale\n")
    return path


def test_slim_bitsandbytes_keeps_one_cuda_and_a_true_record(tmp_path):
    files = {f"bitsandbytes/libbitsandbytes_{k}.so": k.encode() * 1000 for k in ("cpu", "cuda118", "cuda130",
                                                                                  "cuda132", "rocm64")}
    files["bitsandbytes/__init__.py"] = b"x = 1\n"
    wheel = _fake_wheel(tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl", files)
    inputs_mod.slim_wheel(wheel, inputs_mod.bitsandbytes_drop(["130"]))
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        record = zf.read("bitsandbytes-0.50.2.dist-info/RECORD").decode().splitlines()
        kept = {n: zf.read(n) for n in names if not n.endswith("RECORD")}
    assert {n.rsplit("/", 1)[1] for n in kept} == {"libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so",
                                                   "__init__.py"}
    rows = {r.split(",")[0]: r.split(",")[1:] for r in record}
    assert rows.pop("bitsandbytes-0.50.2.dist-info/RECORD") == ["", ""] and set(rows) == set(kept)
    for name, (digest, size) in rows.items():
        want = base64.urlsafe_b64encode(hashlib.sha256(kept[name]).digest()).rstrip(b"=").decode()
        assert digest == f"sha256={want}" and int(size) == len(kept[name])


def test_compare_and_step_figures(tmp_path):
    assert report_mod.compare(10.0, 9.0) == {"ratio": 1.111, "prediction_error": -0.1, "within_15pct": True}
    assert report_mod.compare(10.0, 12.0)["within_15pct"] is False
    assert report_mod.compare(None, 9.0) == {"ratio": None, "within_15pct": None}
    rows = [{"step": 1, "s_per_step": 9.0, "tokens_per_s": 50.0, "loss": 2.0},
            {"step": 2, "s_per_step": 1.0, "tokens_per_s": 400.0, "loss": 1.5},
            {"step": 3, "s_per_step": 3.0, "tokens_per_s": 200.0, "loss": 1.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sft = report_mod.step_figures("sft", tmp_path)
    assert (sft["s_per_step_first"], sft["s_per_step"], sft["tokens_per_s"]) == (9.0, 2.0, 300.0)  # warm-up apart
    grpo_rows = [{"step": 1, "s_per_step": 40.0, "completion_length": 768.0},
                 {"step": 2, "s_per_step": 20.0, "completion_length": 500.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in grpo_rows))
    grpo = report_mod.step_figures("grpo", tmp_path, generation_batch=16)
    assert grpo["tokens_per_s"] == 16 * 500 / 20 and grpo["completion_length"] == 634.0
    assert report_mod.step_figures("sft", tmp_path / "none") == {"steps_logged": 0}


def _args(tmp_path, inputs, *extra):
    return gpu_check.parse_args(["--dry-run", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
                                 "--inputs", str(inputs), *extra])


def test_too_little_time_skips_every_step_with_its_reason(tmp_path, inputs, monkeypatch):
    import mllm4d_lite.curation.video as video

    monkeypatch.setattr(video, "_read_decord", video._read_decord)  # run() serves the bundle: restored after
    monkeypatch.delenv("GPU_CHECK_T0", raising=False)
    monkeypatch.setitem(gpu_check.LIMITS, "dry-run", {k: (60, 900) for k in ("build", *gpu_check.STAGES)})
    report = gpu_check.Check(_args(tmp_path, inputs, "--budget-s", "30", "--no-hide-decoders")).run()
    assert [(s["profile"], s["stage"], s["status"]) for s in report["stages"]] == [
        (p, s, "skipped") for p in gpu_check.PROFILES for s in ("build", *gpu_check.STAGES)]
    assert report["stages"][0]["reason"].startswith("not enough time left")
    assert report["stages"][1]["reason"] == "its model was not built"
    saved = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert saved["stages"] == report["stages"] and saved["mode"] == "dry-run"
    table = (tmp_path / "out" / "gpu_check.md").read_text()
    assert table.count("| skipped |") == 8 and "Dry run on a CPU" in table


def test_a_stuck_step_is_killed_at_its_limit_and_keeps_its_figures(tmp_path, inputs, monkeypatch):
    """A stand-in step writes its progress, then hangs: killed at the limit (process group and
    all), it is reported as a timeout with the memory it had reached."""
    stuck = tmp_path / "stuck.py"
    stuck.write_text(
        "import json, subprocess, sys, time\n"
        "spec = json.load(open(sys.argv[1]))\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        "json.dump({'now': {'peak_allocated_gib': 7.5}, 'marks': {'after_load': {'allocated_gib': 3.0}},\n"
        "           'info': {'child': child.pid}}, open(spec['progress'], 'w'))\n"
        "time.sleep(300)\n")
    check = gpu_check.Check(_args(tmp_path, inputs))
    check.stage_command = [sys.executable, str(stuck)]
    check.report = {"stages": []}
    t0 = time.time()
    status, result, wall = check.launch("stuck", {"kind": "sft"}, limit=4)
    assert status == "timeout" and wall < 30 and time.time() - t0 < 30
    assert result["memory"] == {"peak_allocated_gib": 7.5} and result["marks"]["after_load"]["allocated_gib"] == 3.0
    time.sleep(0.5)  # the step's own child went with it (gone, or a zombie waiting for its reaper)
    status_file = Path(f"/proc/{result['info']['child']}/status")
    assert not status_file.exists() or "\nState:\tZ" in status_file.read_text()
    assert "===== stuck" in check.log_path.read_text()


def test_gpu_mode_refuses_a_machine_without_cuda(capsys, monkeypatch):
    import torch

    monkeypatch.chdir(REPO)  # main() works from the checkout's root
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine: the GPU mode would run")
    assert gpu_check.main(["--out", "/nonexistent/never-written"]) == 2
    assert "--dry-run" in capsys.readouterr().err


def test_launcher_says_what_is_missing(tmp_path):
    env = {**os.environ, "GPU_CHECK_WHEELS": str(tmp_path / "no-wheels"), "OUT": str(tmp_path / "out")}
    done = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 2 and "--prepare" in done.stderr
    usage = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh"), "--help"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0 and "--fetch-wheels" in usage.stdout and "--dry-run" in usage.stdout


def test_recipe_memory_headers_are_the_planners(monkeypatch, capsys):
    """The six 24 GB recipes carry the planner's current prediction, labelled as one, with its
    command; rewriting a header touches comments only."""
    import yaml

    headers = importlib.import_module("recipe_memory_headers")
    monkeypatch.chdir(REPO)
    assert headers.main(["--check"]) == 0, capsys.readouterr().err
    for recipe in headers.RECIPES:
        text = (REPO / recipe).read_text()
        comment = "\n".join(line for line in text.splitlines() if line.startswith("#"))
        assert "PREDICTED" in comment and f"mllm4d plan --config {recipe}" in comment
        assert "predicted peak:" in comment and "Expected time:" in comment and "Hardware:" in comment
        other = headers.with_block(text, "# Peak memory: another block\n")
        assert "# Peak memory: another block\n# Paper" in other and "PREDICTED" not in other
        assert yaml.safe_load(other) == yaml.safe_load(text)


@pytest.mark.slow
def test_dry_run_runs_every_stage(tmp_path, inputs):
    """The GPU check's whole code path on the CPU for one profile (the 3B; `--profiles` takes both):
    2-layer real-width models, one step per stage, decoders hidden (frames from the bundle), planner
    beside each measurement (about half of the ~8 min both profiles take on 2 busy cores)."""
    profile = "qwen2.5-vl-3b"
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPTS / "gpu_check.py"), "--dry-run", "--out", str(out), "--work",
                           str(tmp_path / "work"), "--inputs", str(inputs), "--profiles", profile], cwd=REPO, capture_output=True,
                          text=True, timeout=3000)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "dry-run" and report["shape_layers"] == 2 and report["hidden_modules"] == ["decord", "av"]
    rows = {(s["profile"], s["stage"]): s for s in report["stages"]}
    assert set(rows) == {(profile, s) for s in ("build", *gpu_check.STAGES)}
    assert all(s["status"] == "ok" for s in rows.values()), [(k, s.get("error")) for k, s in rows.items()]
    for (profile, stage), s in rows.items():
        if stage == "build":
            assert s["detail"]["parameters"] > 1e8
            continue
        m, p = s["measured"], s["predicted"]
        assert m["steps_logged"] == 1 and m["s_per_step"] > 0 and m["peak_rss_gib"] > m["after_load_gib"] > 0.1
        assert "peak_allocated_gib" not in m  # no CUDA figures from a CPU
        assert p["peak_allocated_gb"] > 0 and p["recipe_prediction"]["peak_allocated_gb"] > p["peak_allocated_gb"]
        # the planner's visual token count is the real processor's (video_grid_thw) for these clips
        assert p["planner_visual_tokens"] == p["counted_tokens"]["visual_tokens"] > 0
        assert p["tokens"]["prompt"] == p["counted_tokens"]["prompt_with_video"]
        if stage == "grpo":
            assert p["generation_batch"] == 2 and 0 < m["completion_length"] <= 8
        else:
            assert all(np.isfinite(m["loss"])) and p["tokens"]["answer_or_completion"] == p["counted_tokens"]["answer"]
    table = (out / "gpu_check.md").read_text()
    assert table.count("| ok |") == 4 and "peak RSS GiB (CPU, dry run)" in table
