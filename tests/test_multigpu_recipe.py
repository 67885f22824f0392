"""The multi-GPU launch config is a valid accelerate config asking for DeepSpeed ZeRO-2 in bf16."""

from pathlib import Path

from accelerate.commands.config.config_args import ClusterConfig

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "multi-gpu" / "accelerate_zero2.yaml"


def test_accelerate_zero2_config_loads():
    cfg = ClusterConfig.from_yaml_file(str(RECIPE))
    assert str(cfg.distributed_type).endswith("DEEPSPEED")
    assert cfg.deepspeed_config["zero_stage"] == 2
    assert str(cfg.mixed_precision).endswith("bf16")
    assert cfg.num_processes > 1
