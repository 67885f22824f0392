"""`mllm4d --help` and every stage's `--help` exit 0; bad stages and config keys are clear errors."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from mllm4d_lite import cli
from mllm4d_lite.config import ConfigError, build_config, parse_config, parse_overrides, save_resolved


def run(*args):
    return subprocess.run([sys.executable, "-m", "mllm4d_lite", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help():
    res = run("--help")
    assert res.returncode == 0
    for stage in cli.STAGES:
        assert stage in res.stdout


@pytest.mark.parametrize("stage", list(cli.STAGES))
def test_stage_help(stage):
    res = run(stage, "--help")
    assert res.returncode == 0, res.stderr
    assert "usage" in res.stdout.lower()


def test_unknown_stage():
    res = run("train-everything")
    assert res.returncode == 2 and "unknown stage" in res.stderr


@dataclass
class _Cfg:
    steps: int = field(default=10, metadata={"help": "steps"})
    lr: float = field(default=1e-4, metadata={"help": "lr"})
    use_thing: bool = field(default=False, metadata={"help": "flag"})
    names: list[str] = field(default_factory=lambda: ["a"], metadata={"help": "names"})


def test_config_precedence(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("steps: 20\nlr: 0.001\n")
    cfg = parse_config(_Cfg, ["--config", str(recipe), "--steps", "30", "--use-thing"], prog="t")
    assert cfg == _Cfg(steps=30, lr=0.001, use_thing=True, names=["a"])


def test_a_runs_resolved_config_is_a_valid_recipe(tmp_path):
    """config.yaml as written next to every run (with its _meta provenance) loads back unchanged."""
    cfg = _Cfg(steps=7, lr=0.002, use_thing=True, names=["x", "y"])
    path = save_resolved(cfg, tmp_path / "run")
    assert "_meta" in path.read_text()
    assert parse_config(_Cfg, ["--config", str(path)], prog="t") == cfg
    assert parse_config(_Cfg, ["--config", str(path), "--steps", "9"], prog="t").steps == 9


def test_config_rejects_unknown_and_bad_types(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        build_config(_Cfg, {"stepz": 3})
    with pytest.raises(ConfigError, match="`steps` must be an integer"):
        build_config(_Cfg, {"steps": "many"})
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stepz: 20\n")
    with pytest.raises(SystemExit):
        parse_config(_Cfg, ["--config", str(recipe)], prog="t")


@pytest.mark.parametrize("text, message", [
    ("steps: [20\n", r"r.yaml: not valid YAML at line 2, column 1 \(expected ',' or '\]'"),
    ("- steps\n- lr\n", "r.yaml: expected a mapping of key: value, got list"),
    (None, "config file not found: .*r.yaml"),
])
def test_a_bad_recipe_file_is_one_error_line_naming_it(tmp_path, capsys, text, message):
    """Invalid YAML, a recipe that is no mapping, or a missing one: exit 2 with one line naming
    the file (as for unknown keys), not a traceback."""
    recipe = tmp_path / "r.yaml"
    if text is not None:
        recipe.write_text(text)
    with pytest.raises(SystemExit) as stop:
        parse_config(_Cfg, ["--config", str(recipe)], prog="t")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("t: error: ") and err.count("\n") == 1 and re.search(message, err)


def test_bench_overrides_parse_like_the_command_line():
    @dataclass
    class _Bench:
        learning_rate: float = 1e-4
        lora_target_modules: list[str] = field(default_factory=list)
        blind: bool = False
        model: str = ""

    got = parse_overrides(["learning-rate=0.0005", "lora_target_modules=[q_proj, 'model\\.visual\\.x']",
                           "blind=true", "model=tiny"])
    assert got == {"learning_rate": "0.0005", "lora_target_modules": "[q_proj, 'model\\.visual\\.x']",
                   "blind": "true", "model": "tiny"}  # kept as typed; the field's type converts them
    assert build_config(_Bench, got) == _Bench(0.0005, ["q_proj", "model\\.visual\\.x"], True, "tiny")
    for bad in ("no_equals_sign", "=1"):
        with pytest.raises(ConfigError, match="KEY=VALUE"):
            parse_overrides([bad])
