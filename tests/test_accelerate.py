"""Multi-process training: the accelerate / DeepSpeed launch configs, and 2-process DDP runs on the CPU.

Fast: every config in recipes/accelerate/ parses as accelerate reads it (``ClusterConfig``) with the
expected distributed type; each DeepSpeed config goes the way ``accelerate launch`` takes it
(launch env -> ``DeepSpeedPlugin`` -> transformers' ``HfTrainerDeepSpeedConfig`` -> DeepSpeed's own
``DeepSpeedConfig`` schema), without a GPU; rank bookkeeping and the QLoRA + sharding rules.

Slow: ``accelerate launch --config_file recipes/accelerate/cpu_ddp.yaml -m mllm4d_lite sft|grpo`` (two
processes, gloo) against a single-process run with the same global batch. SFT: per-step losses and
the saved LoRA weights agree within the tolerances below (measured: docs/results.md). GRPO: each
process samples its own completions (TRL seeds process r with seed + r), so the rewards after the
first group differ; what must agree is compared (first step's KL and loss, the prompts of each
step, the completions rank 0 generates at step 1, the number of completions per step).

Opt-in (``MLLM4D_TEST_DEEPSPEED_CPU=1``, ~1 min, plus ~3 min the first time DeepSpeed compiles its
CPU communication op): ZeRO-3 on two CPU processes with every LoRA weight sharded, checking the saved
adapter against the single-process one.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from accelerate.commands.config.config_args import ClusterConfig  # noqa: E402

from mllm4d_lite.train import distributed as D  # noqa: E402
from mllm4d_lite.train import loading as L  # noqa: E402
from mllm4d_lite.train.families import ModelSetupError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "recipes" / "accelerate"
CPU_DDP = CONFIGS / "cpu_ddp.yaml"
EXPECTED = {  # config -> (distributed type, ZeRO stage or None)
    "single_gpu.yaml": ("NO", None),
    "multi_gpu_ddp.yaml": ("MULTI_GPU", None),
    "cpu_ddp.yaml": ("MULTI_GPU", None),  # torchrun-started processes; MULTI_CPU + gloo inside (use_cpu)
    "deepspeed_zero2.yaml": ("DEEPSPEED", 2),
    "deepspeed_zero3.yaml": ("DEEPSPEED", 3),
    "deepspeed_zero3_offload.yaml": ("DEEPSPEED", 3),
}
# measured on a 2-core AMD EPYC (docs/results.md): SFT losses agree to ~1e-6, LoRA weights to 2.2e-5
LOSS_TOL = 1e-4
WEIGHT_TOL = 2e-4


# ------------------------------------------------------------------------------------ configs

def test_the_expected_configs_exist_and_the_old_folder_is_gone():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)
    assert not (REPO / "recipes" / "multi-gpu").exists()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_config_parses_with_the_expected_distributed_type(name):
    path = CONFIGS / name
    cfg = ClusterConfig.from_yaml_file(str(path))
    kind, stage = EXPECTED[name]
    assert str(cfg.distributed_type).split(".")[-1] == kind
    assert cfg.compute_environment.value == "LOCAL_MACHINE"
    assert cfg.num_machines == 1 and cfg.machine_rank == 0
    if stage is None:
        assert not cfg.deepspeed_config
    else:
        assert cfg.deepspeed_config["zero_stage"] == stage
    if name == "cpu_ddp.yaml":
        assert cfg.use_cpu and cfg.num_processes == 2 and str(cfg.mixed_precision).endswith("no")
    else:  # the GPU configs: bf16 like the 24 GB recipes, never the CPU
        assert not cfg.use_cpu and str(cfg.mixed_precision).endswith("bf16")
        assert cfg.num_processes == 1 if kind == "NO" else cfg.num_processes >= 2
    if "offload" in name:
        assert cfg.deepspeed_config["offload_optimizer_device"] == "cpu"
        assert cfg.deepspeed_config["offload_param_device"] == "cpu"
    # house recipe style: a header with purpose, the exact command and the hardware, no results
    header = "".join(ln for ln in path.read_text().splitlines(keepends=True) if ln.startswith("#"))
    assert "accelerate launch --config_file recipes/accelerate/" + name in header
    assert "Hardware" in header and "Purpose" in header


def _launch_env(path: Path) -> dict[str, str]:
    """The ACCELERATE_* environment ``accelerate launch --config_file path`` gives a DeepSpeed run."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "mllm4d_lite", "sft"])
    args, defaults, _ = _validate_launch_command(args)
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
    _, env = prepare_deepspeed_cmd_env(args)
    return {k: v for k, v in env.items() if k.startswith("ACCELERATE_")}


@pytest.mark.parametrize("name", sorted(n for n, (kind, _) in EXPECTED.items() if kind == "DEEPSPEED"))
def test_deepspeed_configs_become_a_valid_deepspeed_config(name, tmp_path):
    """launch env -> accelerate's DeepSpeedPlugin -> transformers fills the 'auto' values from the
    recipe's trainer arguments -> DeepSpeed's own config schema accepts it."""
    deepspeed = pytest.importorskip("deepspeed")
    from accelerate.utils import DeepSpeedPlugin, patch_environment
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    from mllm4d_lite.config import build_config
    from mllm4d_lite.train import sft as S

    env = _launch_env(CONFIGS / name)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    with patch_environment(**env):
        plugin = DeepSpeedPlugin()
        sharding = L.parameter_sharding()
    stage = EXPECTED[name][1]
    assert plugin.zero_stage == stage
    assert sharding == ("DeepSpeed ZeRO-3" if stage == 3 else None)
    # the 24 GB SFT recipe's batch (2 x 8 accumulation), as the stage builds its trainer arguments
    recipe = yaml.safe_load((REPO / "recipes" / "qwen3-vl-4b" / "sft.yaml").read_text())
    cfg = build_config(S.SFTConfig, {"output_dir": str(tmp_path), "max_steps": 10,
                                     **{k: recipe[k] for k in ("per_device_train_batch_size",
                                                               "gradient_accumulation_steps", "learning_rate")}})
    args = S.trainer_args(cfg, "cpu", torch.float32)
    hf = HfTrainerDeepSpeedConfig(plugin.deepspeed_config)
    hf.trainer_config_process(args)
    model = types.SimpleNamespace(config=types.SimpleNamespace(hidden_size=2560))  # Qwen3-VL-4B's LLM width
    hf.trainer_config_finalize(args, model, num_training_steps=10)
    assert "auto" not in json.dumps(hf.config), hf.config
    ds = DeepSpeedConfig(hf.config)
    assert ds.zero_optimization_stage == stage
    assert ds.train_micro_batch_size_per_gpu == recipe["per_device_train_batch_size"]
    assert ds.gradient_accumulation_steps == recipe["gradient_accumulation_steps"]
    assert ds.gradient_clipping == 1.0
    offload = "offload" in name
    assert (ds.zero_config.offload_optimizer is not None and str(ds.zero_config.offload_optimizer.device)
            .endswith("cpu")) == offload
    if stage == 3:  # the adapter is gathered whole for saving (and the Trainer's checkpoints too)
        assert ds.zero_config.gather_16bit_weights_on_model_save
    assert deepspeed.__version__ == "0.19.8"


# ------------------------------------------------------------------------------------ ranks and sharding rules

def test_rank_comes_from_the_launcher_environment(monkeypatch):
    for name in D.RANK_ENV + D.WORLD_SIZE_ENV:
        monkeypatch.delenv(name, raising=False)
    assert (D.process_rank(), D.world_size(), D.is_main_process()) == (0, 1, True)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert (D.process_rank(), D.world_size(), D.is_main_process()) == (1, 2, False)
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")  # mpirun
    assert D.is_main_process()
    # one process: nothing to share, no process group is set up
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert D.share_from_main("checkpoint-4", "cpu") == "checkpoint-4"


def test_other_ranks_log_warnings_only_and_show_no_bars(monkeypatch):
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", logging.INFO)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setenv("RANK", "0")
    D.quiet_other_ranks()
    assert root.level == logging.INFO and "TQDM_DISABLE" not in os.environ
    monkeypatch.setenv("RANK", "1")
    D.quiet_other_ranks()
    assert root.level == logging.WARNING and os.environ["TQDM_DISABLE"] == "1"


def test_records_digest_sees_order_and_content():
    a = [{"id": "x", "video": "a.mp4"}, {"id": "y", "video": "b.mp4"}]
    assert D.records_digest(a) == D.records_digest([dict(r) for r in a])
    assert D.records_digest(a) != D.records_digest(a[::-1])
    assert D.records_digest(a) != D.records_digest([a[0], {**a[1], "video": "c.mp4"}])


def _data_check_worker(rank: int, store: str, records: list, results) -> None:
    import torch.distributed as dist

    from mllm4d_lite.train.records import DataError

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        D.same_data_callback(records[rank], "rft.jsonl").on_train_begin(None, None, None)
        results.put((rank, "same"))
    except DataError as err:
        results.put((rank, str(err)))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("differ", [False, True])
def test_processes_with_different_records_stop_on_every_rank(differ, tmp_path):
    """Two real gloo processes: equal records pass, a record missing on one rank stops both."""
    import multiprocessing

    from transformers import TrainerCallback  # noqa: F401  imported before the fork: the children start at once

    import mllm4d_lite.train.records  # noqa: F401

    ctx = multiprocessing.get_context("fork")
    a = [{"id": "q0", "video": "a.mp4"}, {"id": "q1", "video": "b.mp4"}]
    records = [a, a[:1] if differ else list(a)]
    results = ctx.Queue()
    procs = [ctx.Process(target=_data_check_worker, args=(r, str(tmp_path / "store"), records, results))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    got = dict(results.get(timeout=5) for _ in procs)
    if differ:
        assert all("hold different training records ([2, 1] records per rank)" in got[r] for r in (0, 1)), got
    else:
        assert got == {0: "same", 1: "same"}


def test_sharding_and_4bit_storage_rules(monkeypatch):
    for name in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_DEEPSPEED_CONFIG_FILE",
                 "ACCELERATE_USE_FSDP", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert L.parameter_sharding() is None and L.local_device("cuda") == "cuda"
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert L.local_device("cuda") == "cuda:3" and L.local_device("cpu") == "cpu"
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    assert L.parameter_sharding() is None  # ZeRO-2 keeps whole parameters on every GPU
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    assert L.parameter_sharding() == "DeepSpeed ZeRO-3"
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert L.parameter_sharding() == "FSDP"

    assert L.quant_storage_dtype("4bit", torch.bfloat16, None) is None  # one GPU / DDP: bitsandbytes' uint8
    assert L.quant_storage_dtype("none", torch.bfloat16, "FSDP") is None
    assert L.quant_storage_dtype("4bit", torch.bfloat16, "DeepSpeed ZeRO-3") == torch.bfloat16
    assert L.quant_storage_dtype("4bit", torch.float16, "FSDP") == torch.float32  # peft: fp16 -> fp32 storage
    with pytest.raises(ModelSetupError, match="8bit.*cannot be sharded"):
        L.quant_storage_dtype("8bit", torch.bfloat16, "DeepSpeed ZeRO-3")
    assert L.quantization_config("4bit", torch.bfloat16, torch.bfloat16).bnb_4bit_quant_storage == torch.bfloat16
    assert L.quantization_config("4bit", torch.bfloat16).bnb_4bit_quant_storage == torch.uint8


ZERO3 = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}


@pytest.mark.parametrize("env, extra, message, fix", [
    (ZERO3, ["--quant", "8bit"], "`quant: 8bit` under DeepSpeed ZeRO-3: bitsandbytes 8-bit weights cannot be sharded",
     "recipes/accelerate/"),
    ({"ACCELERATE_USE_FSDP": "true"}, [], "FSDP is not supported by the kit's stages", "recipes/accelerate/"),
    (ZERO3, ["--eval-file", "bench.json"], "`eval_file: bench.json` under DeepSpeed ZeRO-3", "mllm4d eval run"),
], ids=["8bit-zero3", "fsdp", "eval-zero3"])
def test_combinations_that_cannot_work_are_one_error_line(env, extra, message, fix, monkeypatch, tmp_path, capsys,
                                                          tiny_qwen25):
    from mllm4d_lite.train import sft as S
    from mllm4d_lite.train.toy_data import write_toy_direction_set

    data = write_toy_direction_set(tmp_path / "toy", num_clips=2, seed=3)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code = S.main(["--model", str(tiny_qwen25), "--train-file", str(data), "--output-dir", str(tmp_path / "o"),
                   "--max-steps", "1", "--num-frames", "4", *extra])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("mllm4d sft: error: " + message) and fix in last


# ------------------------------------------------------------------------------------ 2-process runs (slow)

def _launch(config: Path, stage: str, argv: list[str], log_path: Path, timeout_s: int = 400) -> str:
    """``accelerate launch --config_file config -m mllm4d_lite stage argv``; returns stdout."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "PYTHONPATH": str(REPO), "MLLM4D_LOG_LEVEL": "INFO"}
    env.pop("MLLM4D_THREADS_FILE", None)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
           "-m", "mllm4d_lite", stage, *argv]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    log_path.write_text(proc.stdout + "\n----- stderr -----\n" + proc.stderr)
    assert proc.returncode == 0, f"{stage} launch failed ({proc.returncode}); see {log_path}:\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _rows(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def _lora(adapter: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


def _single(stage_module, config_class, argv: list[str]) -> dict:
    """The same stage in this process (one process, rank 0), from the same command line."""
    from mllm4d_lite.config import parse_config

    return stage_module.run(parse_config(config_class, argv, prog="test"))


SFT_STEPS = 6


def _sft_argv(model: Path, data: Path, out: Path, per_device: int) -> list[str]:
    return ["--config", str(REPO / "recipes" / "tiny" / "sft.yaml"), "--model", str(model), "--train-file", str(data),
            "--train-categories", "[]", "--output-dir", str(out), "--max-steps", str(SFT_STEPS),
            "--logging-steps", "1", "--save-steps", "100", "--per-device-train-batch-size", str(per_device)]


@pytest.fixture(scope="module")
def toy_sft(tmp_path_factory) -> Path:
    from mllm4d_lite.train.toy_data import write_toy_direction_set

    return write_toy_direction_set(tmp_path_factory.mktemp("toy_ddp"), num_clips=8, seed=7)


@pytest.fixture(scope="module")
def ddp_sft(tiny_qwen25, toy_sft, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("ddp") / "sft"
    log = _launch(CPU_DDP, "sft", _sft_argv(tiny_qwen25, toy_sft, out, per_device=2), out.parent / "sft.log")
    return out, log


@pytest.mark.slow
def test_ddp_sft_matches_a_single_process_run(ddp_sft, tiny_qwen25, toy_sft, tmp_path):
    out2, log = ddp_sft
    from mllm4d_lite.train import sft as S

    out1 = tmp_path / "single"
    _single(S, S.SFTConfig, _sft_argv(tiny_qwen25, toy_sft, out1, per_device=4))  # the same global batch: 4 = 2 x 2

    rows1, rows2 = _rows(out1 / "metrics.jsonl"), _rows(out2 / "metrics.jsonl")
    assert [r["step"] for r in rows2] == list(range(1, SFT_STEPS + 1)), "rank 0 alone writes one row per step"
    assert [r["step"] for r in rows1] == [r["step"] for r in rows2]
    diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(rows1, rows2)]
    assert max(diffs) <= LOSS_TOL, (diffs, [r["loss"] for r in rows1], [r["loss"] for r in rows2])
    assert rows2[-1]["loss"] < 0.5 * rows2[0]["loss"], "the 2-process run learned"
    w1, w2 = _lora(out1 / "adapter"), _lora(out2 / "adapter")
    assert w1.keys() == w2.keys()
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) <= WEIGHT_TOL
    assert any(float(w2[k].abs().max()) > 0 for k in w2 if "lora_B" in k), "LoRA B left at its zero init"
    # outputs: written once, by rank 0; both ranks trained on the same records; one summary line
    for name in ("config.yaml", "summary.json", "loss.png", "run_key.json"):
        assert (out2 / name).is_file(), name
    assert not [p.name for p in out2.rglob("*") if ".tmp" in p.name or p.name.startswith(".write-test-")]
    assert "2 processes hold the same 8 training records" in log
    assert log.count("sft: 6 steps on 8 records") == 1
    assert json.loads((out2 / "summary.json").read_text())["steps"] == SFT_STEPS


GRPO_STEPS = 3


def _grpo_argv(model: Path, adapter: Path, data: Path, out: Path, per_device: int) -> list[str]:
    # direct prompt + accuracy reward: the SFT adapter answers letters, so sampled groups differ in reward
    return ["--config", str(REPO / "recipes" / "tiny" / "grpo.yaml"), "--model", str(model),
            "--adapter-init", str(adapter), "--train-file", str(data), "--train-categories", "[]",
            "--max-samples", "0", "--use-st-cot-prompt", "false", "--reward-funcs", "[accuracy]",
            "--reward-weights", "[1.0]", "--num-generations", "4", "--max-completion-length", "8",
            "--temperature", "1.5", "--max-steps", str(GRPO_STEPS), "--save-steps", "100", "--sample-every", "1",
            "--output-dir", str(out), "--per-device-train-batch-size", str(per_device)]


@pytest.mark.slow
def test_ddp_grpo_runs_and_agrees_where_sampling_allows(ddp_sft, tiny_qwen25, toy_sft, tmp_path):
    from mllm4d_lite.train import grpo

    adapter = ddp_sft[0] / "adapter"
    out2 = tmp_path / "ddp_grpo"
    log = _launch(CPU_DDP, "grpo", _grpo_argv(tiny_qwen25, adapter, toy_sft, out2, per_device=4),
                  tmp_path / "grpo.log")
    out1 = tmp_path / "single_grpo"
    _single(grpo, grpo.GRPOConfig, _grpo_argv(tiny_qwen25, adapter, toy_sft, out1, per_device=8))  # 2 prompts x 4 per step

    rows1, rows2 = _rows(out1 / "metrics.jsonl"), _rows(out2 / "metrics.jsonl")
    assert [r["step"] for r in rows2] == [r["step"] for r in rows1] == list(range(1, GRPO_STEPS + 1))
    for rows in (rows1, rows2):
        # step 1: the policy is the reference on every process (KL 0) and the advantages average out
        assert rows[0]["kl"] == 0.0 and abs(rows[0]["loss"]) < 1e-6
        # the reward is averaged over all 8 completions of the global batch (gathered over processes)
        assert all(abs(r["reward"] * 8 - round(r["reward"] * 8)) < 1e-6 for r in rows)
    assert any(r["kl"] > 0 for r in rows2[1:]), "the 2-process policy moved away from the reference"
    # rank 0 draws the first prompt of each global batch, as the single process does, and at step 1
    # (the same policy, the same seed) samples the same completions for it
    s1, s2 = _rows(out1 / "samples.jsonl"), _rows(out2 / "samples.jsonl")
    assert [s["step"] for s in s2] == list(range(GRPO_STEPS)), "rank 0 alone writes samples.jsonl"
    assert [s["id"] for s in s1] == [s["id"] for s in s2]
    assert s1[0]["completions"] == s2[0]["completions"]
    before, after = _lora(adapter), _lora(out2 / "adapter")
    assert any(not torch.allclose(before[k], after[k]) for k in before), "GRPO left every LoRA weight unchanged"
    assert "2 processes hold the same 8 training records" in log and log.count("grpo: 3 steps") == 1


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MLLM4D_TEST_DEEPSPEED_CPU") != "1",
                    reason="opt-in: MLLM4D_TEST_DEEPSPEED_CPU=1 (DeepSpeed compiles a CPU op on first use, ~3 min)")
def test_zero3_on_two_cpu_processes_saves_the_whole_adapter(ddp_sft, tiny_qwen25, toy_sft, tmp_path):
    """ZeRO-3 with every parameter sharded (persistence threshold 0): without gathering, rank 0 would
    save empty LoRA tensors; the saved adapter must equal the DDP run's."""
    pytest.importorskip("deepspeed")
    ds_json = tmp_path / "zero3.json"
    ds_json.write_text(json.dumps({
        "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto", "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto", "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                              "stage3_gather_16bit_weights_on_model_save": True}}))
    config = tmp_path / "zero3_cpu.yaml"
    config.write_text(yaml.safe_dump({
        "compute_environment": "LOCAL_MACHINE", "distributed_type": "DEEPSPEED",
        "deepspeed_config": {"deepspeed_config_file": str(ds_json), "zero3_init_flag": False},
        "num_processes": 2, "num_machines": 1, "machine_rank": 0, "main_process_port": 0, "use_cpu": True,
        "rdzv_backend": "static", "same_network": True, "main_training_function": "main"}))
    out = tmp_path / "z3"
    _launch(config, "sft", _sft_argv(tiny_qwen25, toy_sft, out, per_device=2), tmp_path / "z3.log", timeout_s=600)
    rows3, rows2 = _rows(out / "metrics.jsonl"), _rows(ddp_sft[0] / "metrics.jsonl")
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(rows2, rows3)) <= LOSS_TOL
    w2, w3 = _lora(ddp_sft[0] / "adapter"), _lora(out / "adapter")
    assert all(w3[k].shape == w2[k].shape for k in w2), "ZeRO-3 shards saved instead of whole LoRA weights"
    assert max(float((w2[k] - w3[k]).abs().max()) for k in w2) <= WEIGHT_TOL
