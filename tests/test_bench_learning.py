"""scripts/bench_learning.py helpers: the per-answer table that tells direction from moving vs still."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_learning.py"


@pytest.fixture(scope="module")
def bench_learning():
    spec = importlib.util.spec_from_file_location("bench_learning", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_by_answer_counts_accuracy_and_picks(bench_learning, tmp_path):
    choices = {"A": "left", "B": "right", "C": "not moving", "D": "no red cube there"}
    bench = [{"id": f"q{i}", "answer": a, "choices": choices} for i, a in enumerate(["left", "left", "right", "not moving"])]
    # a model that says "not moving" except once: right on the still clip only, plus one lucky "left"
    preds = [("C", 0.0), ("A", 1.0), ("C", 0.0), ("C", 1.0)]
    (tmp_path / "eval.json").write_text(json.dumps({"predictions": [
        {"id": f"q{i}", "extracted": letter, "score": score} for i, (letter, score) in enumerate(preds)]}))
    table = bench_learning.by_answer(tmp_path / "eval.json", bench)
    assert table["left"] == {"n": 2, "accuracy": 0.5, "picked": 1}
    assert table["right"] == {"n": 1, "accuracy": 0.0, "picked": 0}
    assert table["not moving"] == {"n": 1, "accuracy": 1.0, "picked": 3}
    assert list(table)[0] == "left"  # most frequent true answer first


def test_range_argument(bench_learning):
    assert bench_learning._range("2.5,3.5") == (2.5, 3.5)
    assert bench_learning._range(None) is None
    with pytest.raises(SystemExit, match="MIN,MAX"):
        bench_learning._range("2.5")


def test_preset_lateral_fills_defaults_only(bench_learning):
    parser = bench_learning.build_parser()
    args = bench_learning.apply_preset(parser.parse_args(["--preset", "lateral", "--num-clips", "64"]), parser)
    assert args.num_clips == 64  # given explicitly: kept
    assert (args.camera_motion, args.num_objects, args.option_order, args.max_steps) == ("static", 1, "fixed", 1500)
    assert args.directions == "left,right" and bench_learning._range(args.depth_range) == (2.5, 3.5)
    assert args.set == ["model=tiny-motion"]
    args = bench_learning.apply_preset(
        parser.parse_args(["--preset", "lateral", "--set", "model=tiny", "--set", "lora_r=8"]), parser)
    assert args.set == ["model=tiny", "lora_r=8"]  # an explicit model wins
    plain = bench_learning.apply_preset(parser.parse_args([]), parser)
    assert (plain.option_order, plain.camera_motion, plain.set) == ("balanced", None, [])
