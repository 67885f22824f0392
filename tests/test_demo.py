"""The end-to-end demo on a cut-down configuration: every stage's outputs exist, the report's
numbers equal the evaluation JSON, and a second run skips every finished stage."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from mllm4d_lite.demo import report as demo_report
from mllm4d_lite.demo import run as demo
from mllm4d_lite.demo import schedule

REPO = Path(__file__).resolve().parent.parent

QUICK = ["--max-clips", "6", "--sft-steps", "4", "--cold-start-steps", "2", "--grpo-steps", "1",
         "--eval-limit", "4", "--cot-max-new-tokens", "24", "--eval-batch-size", "4"]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    if not (REPO / "tiny_data").is_dir():
        pytest.skip("tiny_data/ missing")
    out = tmp_path_factory.mktemp("demo") / "run"
    start = time.time()
    assert demo.main(["--out", str(out), *QUICK]) == 0
    return out, time.time() - start


@pytest.mark.slow  # the demo_run fixture: a cut-down demo, a few minutes on 2 cores
def test_every_stage_wrote_its_outputs(demo_run):
    out, _ = demo_run
    for stage in ("curate", "sft", "sft_blind", "cold_start", "grpo",
                  "eval/base", "eval/blind", "eval/sft", "eval/cold_start", "eval/grpo"):
        assert (out / stage / ".done.json").is_file(), stage
    for name in ("sft.jsonl", "cot.jsonl", "rft.jsonl", "bench.json", "scorecard.json"):
        assert (out / "curate" / name).is_file(), name
    assert len(list((out / "curate" / "annotations").glob("*.json"))) == 6
    # GRPO's prompts come from clips that SFT, the cold start and the benchmark do not use
    clips = {name: {json.loads(line)["clip_id"] for line in (out / "curate" / name).read_text().splitlines()}
             for name in ("sft.jsonl", "cot.jsonl", "rft.jsonl")}
    bench = {r["clip_id"] for r in json.loads((out / "curate" / "bench.json").read_text())}
    assert clips["sft.jsonl"] == clips["cot.jsonl"] and clips["rft.jsonl"] and bench
    assert not clips["rft.jsonl"] & (clips["sft.jsonl"] | bench) and not clips["sft.jsonl"] & bench
    qa_summary = json.loads((out / "curate" / "qa_summary.json").read_text())
    assert qa_summary["num_clips"] == {"train": len(clips["sft.jsonl"]), "rft": len(clips["rft.jsonl"]), "bench": len(bench)}
    report = json.loads((out / "report.json").read_text())
    assert report["qa_summary"]["num_clips"] == qa_summary["num_clips"]
    assert (f"{len(clips['rft.jsonl'])} -> GRPO only ({qa_summary['questions']['rft']} prompts)"
            in (out / "report.md").read_text())
    for stage in ("sft", "sft_blind", "cold_start", "grpo"):
        assert (out / stage / "adapter" / "adapter_config.json").is_file(), stage
    assert (out / "grpo" / "reward_curve.png").is_file()
    assert (out / "report.md").is_file() and (out / "accuracy.png").is_file()
    if schedule.side_by_side(demo.REPO / "recipes/tiny"):  # the trainings got the free core back
        assert (out / ".threads").read_text() == f"{schedule.cores()}\n"
    machine = json.loads((out / "report.json").read_text())["machine"]  # what the figures depend on
    import torch

    assert machine["cores"] == schedule.cores() and machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert f"Machine: {machine['cpu']}, {machine['cores']} core(s)" in (out / "report.md").read_text()


@pytest.mark.slow  # the demo_run fixture: a cut-down demo, a few minutes on 2 cores
def test_report_numbers_equal_eval_json(demo_run):
    out, _ = demo_run
    report = json.loads((out / "report.json").read_text())
    keys = [m["key"] for m in report["models"]]
    assert keys == ["base", "blind", "sft", "cold_start", "grpo"]
    md = (out / "report.md").read_text()
    for model in report["models"]:
        ev = json.loads((out / "eval" / model["key"] / "report.json").read_text())
        section = ev["blind"] if model["key"] == "blind" else ev
        assert model["accuracy"] == section["overall"]["accuracy"]
        assert model["mean_over_categories"] == section["overall"]["mean_over_categories"]
        assert model["n"] == section["overall"]["n"] == 4
        # recount from the predictions themselves
        preds = json.loads((out / "eval" / model["key"] /
                            ("predictions_blind.json" if model["key"] == "blind" else "predictions.json")).read_text())
        assert model["accuracy"] == pytest.approx(100.0 * sum(p["score"] for p in preds) / len(preds), abs=0.01)
        assert f"| {model['accuracy']:.2f} |" in md
    assert set(report["stage_wall_s"]) >= {"curate", "sft", "sft_blind", "cold_start", "grpo", "eval/grpo"}
    # on a machine with two cores the blind control trains beside SFT; the total counts that once
    beside = report["stages_run_beside"]
    assert beside == ({"sft_blind": "sft+cold_start", "eval/base": "cold_start", "eval/blind": "cold_start",
                       "eval/sft": "cold_start", "eval/cold_start": "grpo"} if (os.cpu_count() or 1) >= 2 else {})
    assert report["total_wall_s"] == demo_report._total_wall(report["stage_wall_s"], beside)
    assert (out / "sft_blind" / "adapter" / "adapter_config.json").is_file()
    # SFT vs blind and GRPO vs cold start, with the standard error of the difference
    acc = {m["key"]: m["accuracy"] for m in report["models"]}
    gaps = {(g["a"], g["b"]): g for g in report["gaps"]}
    assert set(gaps) == {("sft", "blind"), ("grpo", "cold_start")}
    for (a, b), g in gaps.items():
        assert g["diff_points"] == pytest.approx(acc[a] - acc[b], abs=0.01)
        assert g["within_noise"] == (abs(g["diff_points"]) <= 2 * g["se_points"])
        assert f"{a} - {b}: {g['diff_points']:+.2f} points" in md
    # the GRPO reward line carries the run's own figures
    grpo_summary = json.loads((out / "grpo" / "summary.json").read_text())
    assert report["grpo"] == grpo_summary
    assert f"{grpo_summary['reward_first_fifth']:.3f} -> {grpo_summary['reward_last_fifth']:.3f}" in md


@pytest.mark.parametrize("summary, says", [
    ({"reward_first_fifth": 0.4, "reward_last_fifth": 0.5, "reward_rise": 0.1, "train_prompts": 24,
      "fifths_see_same_prompts": True}, "0.400 -> 0.500 (rise +0.100; every fifth saw the same 24 prompts)"),
    ({"reward_first_fifth": 0.4, "reward_last_fifth": 0.3, "reward_rise": -0.1, "train_prompts": 218,
      "fifths_see_same_prompts": False}, "(rise -0.100; the fifths drew different prompts from 218"),
    ({"reward_first_fifth": 0.4, "reward_last_fifth": 0.5, "reward_rise": 0.1, "train_prompts": 24,
      "fifths_see_same_prompts": True,
      "accuracy_by_category_first_last_fifth": {"counting": [0.5, 0.75], "false_positive": [1.0, None]}},
     "prompts). Training accuracy by category, first -> last fifth: counting 50 -> 75 %."),
])
def test_grpo_reward_line_says_whether_the_fifths_compare_the_same_prompts(summary, says):
    assert says in demo_report._grpo_reward_line(summary)


def test_gap_standard_error_is_the_binomial_one():
    from mllm4d_lite.demo.report import _gap

    g = _gap({"key": "sft", "accuracy": 60.0, "n": 100}, {"key": "blind", "accuracy": 40.0, "n": 100})
    assert g["diff_points"] == 20.0
    assert g["se_points"] == pytest.approx(100 * (2 * 0.24 / 100) ** 0.5, abs=0.01)  # 6.93
    assert not g["within_noise"]
    # no difference at all (both 100 %) is within noise, not "beyond 2 SE"
    assert _gap({"key": "a", "accuracy": 100.0, "n": 20}, {"key": "b", "accuracy": 100.0, "n": 20})["within_noise"]
    assert _gap({"key": "a", "accuracy": 26.1, "n": 113}, {"key": "b", "accuracy": 23.5, "n": 113})["within_noise"]


@pytest.mark.slow  # the demo_run fixture: a cut-down demo, a few minutes on 2 cores
def test_second_run_skips_finished_stages(demo_run):
    out, _ = demo_run
    before = (out / "report.json").read_text()
    mtimes = {p: p.stat().st_mtime for p in (out / "sft" / "adapter").iterdir()}
    start = time.time()
    assert demo.main(["--out", str(out), *QUICK]) == 0
    assert time.time() - start < 60
    assert {p: p.stat().st_mtime for p in (out / "sft" / "adapter").iterdir()} == mtimes
    after = json.loads((out / "report.json").read_text())
    assert after["models"] == json.loads(before)["models"]
    # every stage's marker names the inputs it finished under, the same for all
    inputs = {json.loads(m.read_text())["inputs"] for m in out.glob("**/.done.json")}
    assert len(inputs) == 1 and len(next(iter(inputs))) == 16


def test_a_stage_finished_under_other_inputs_is_redone(tmp_path):
    from mllm4d_lite.demo.run import _run_stage

    calls = []

    def body(d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        (d / f"result{len(calls)}.txt").write_text("x")
        calls.append(d)

    times: dict[str, float] = {}
    _run_stage("grpo", tmp_path, False, body, times, inputs="recipe-a")
    _run_stage("grpo", tmp_path, False, body, times, inputs="recipe-a")
    assert len(calls) == 1  # same recipes and options: skipped
    _run_stage("grpo", tmp_path, False, body, times, inputs="recipe-b")
    assert len(calls) == 2  # the recipe changed: redone, from an empty folder
    assert sorted(p.name for p in (tmp_path / "grpo").iterdir()) == [".done.json", "result1.txt"]
    assert json.loads((tmp_path / "grpo" / ".done.json").read_text())["inputs"] == "recipe-b"
    _run_stage("grpo", tmp_path, True, body, times, inputs="recipe-b")
    assert len(calls) == 3  # --fresh


def test_inputs_fingerprint_follows_recipes_and_options(tmp_path):
    import shutil

    from mllm4d_lite.demo.run import DemoConfig, _inputs_fingerprint

    recipes = tmp_path / "tiny"
    shutil.copytree(REPO / "recipes" / "tiny", recipes)
    cfg = DemoConfig(recipes=str(recipes))
    base = _inputs_fingerprint(cfg, recipes)
    assert _inputs_fingerprint(DemoConfig(recipes=str(recipes), fresh=True, workers=2, out="elsewhere"), recipes) == base
    assert _inputs_fingerprint(DemoConfig(recipes=str(recipes), grpo_steps=7), recipes) != base
    (recipes / "grpo.yaml").write_text((recipes / "grpo.yaml").read_text().replace("beta: 0.2", "beta: 0.1"))
    assert _inputs_fingerprint(cfg, recipes) != base


def test_bad_profile_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        demo.main(["--profile", "tpu-pod"])
    assert "profile" in capsys.readouterr().err


def test_total_wall_counts_a_stage_run_beside_another_once():
    from mllm4d_lite.demo.report import _total_wall

    times = {"curate": 10.0, "sft": 100.0, "sft_blind": 120.0, "grpo": 50.0}
    assert _total_wall(times, {"sft_blind": "sft"}) == 10 + 100 + 20 + 50
    assert _total_wall({**times, "sft_blind": 90.0}, {"sft_blind": "sft"}) == 160
    assert _total_wall(times, {}) == 280
    # evaluations of 5 + 7 s beside a grpo stage of 10 s add nothing; of 8 + 7 s add 5 s
    evals = {"grpo": 10.0, "eval/a": 5.0, "eval/b": 7.0}
    assert _total_wall(evals, {"eval/a": "grpo", "eval/b": "grpo"}) == 12
    assert _total_wall({**evals, "eval/a": 8.0}, {"eval/a": "grpo", "eval/b": "grpo"}) == 15
    # a blind control of 120 s beside SFT (100 s) that goes on beside the cold start (50 s): its last
    # 20 s and the evaluations after it (20 + 5 s) share the cold start's 50 s, adding nothing ...
    chain = {"curate": 10.0, "sft": 100.0, "sft_blind": 120.0, "cold_start": 50.0, "eval/a": 20.0, "eval/b": 5.0}
    on = {"sft_blind": "sft+cold_start", "eval/a": "cold_start", "eval/b": "cold_start"}
    assert _total_wall(chain, on) == 160
    # ... and beyond it what they ran over: 20 + 25 + 15 s in 50 s adds 10 s
    assert _total_wall({**chain, "eval/b": 20.0}, on) == 170
    # a chain stops at a stage it does not name: the 20 s spill of sft is not absorbed by grpo
    assert _total_wall({"sft": 100.0, "sft_blind": 120.0, "grpo": 50.0}, {"sft_blind": "sft"}) == 170


def test_side_jobs_give_the_training_the_free_core_once_they_are_done(tmp_path):
    from mllm4d_lite.demo.schedule import SideJobs, cores

    threads = tmp_path / ".threads"
    seen = []
    with SideJobs(True, [lambda: seen.append(threads.read_text()), lambda: seen.append(threads.read_text())], threads):
        pass
    assert seen == ["1\n", "1\n"] and threads.read_text() == f"{cores()}\n"
    # a failing job still hands the core back, and its error is raised
    with pytest.raises(RuntimeError, match="job failed"):
        with SideJobs(True, [lambda: (_ for _ in ()).throw(RuntimeError("job failed"))], threads):
            pass
    assert threads.read_text() == f"{cores()}\n"
    # not side by side: the jobs run after the body, on their own, and no file is written
    solo = tmp_path / "solo"
    with SideJobs(False, [lambda: seen.append("after")], solo):
        seen.append("body")
    assert seen[-2:] == ["body", "after"] and not solo.exists()


def test_training_follows_the_thread_file(tmp_path, monkeypatch):
    import torch
    from transformers import TrainerControl, TrainerState

    from mllm4d_lite.train.callbacks import THREADS_FILE_ENV, thread_share_callback

    monkeypatch.delenv(THREADS_FILE_ENV, raising=False)
    assert thread_share_callback() is None
    threads = tmp_path / ".threads"
    monkeypatch.setenv(THREADS_FILE_ENV, str(threads))
    callback = thread_share_callback()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        step = lambda: callback.on_step_begin(None, TrainerState(), TrainerControl())  # noqa: E731
        step()  # no file yet: unchanged
        assert torch.get_num_threads() == 1
        threads.write_text("2\n")
        step()
        assert torch.get_num_threads() == 2
        for bad in ("", "two", "0"):  # unreadable or zero: unchanged
            threads.write_text(bad)
            step()
            assert torch.get_num_threads() == 2
        threads.write_text("1\n")
        step()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_category_gaps_only_where_enough_questions():
    from mllm4d_lite.demo.report import _category_gaps

    rows = {"sft": {"categories": {"dir": 60.0, "count": 80.0}, "category_n": {"dir": 50, "count": 4}},
            "blind": {"categories": {"dir": 40.0, "count": 50.0}, "category_n": {"dir": 50, "count": 4}}}
    gaps = _category_gaps(rows)
    assert [(g["a"], g["b"], g["category"], g["n"]) for g in gaps] == [("sft", "blind", "dir", 50)]
    assert gaps[0]["diff_points"] == 20.0
    assert gaps[0]["se_points"] == pytest.approx(100 * (0.24 / 50 + 0.24 / 50) ** 0.5, abs=0.01)  # 9.80
    assert gaps[0]["within_noise"] is False  # 20 > 2 x 9.8


def test_bad_demo_options_are_refused_before_any_stage(tmp_path, capsys):
    for argv, message in ((["--rft-fraction", "1.5"], "rft_fraction"), (["--sft-steps", "-1"], "sft_steps")):
        with pytest.raises(SystemExit) as exit_info:
            demo.main(["--out", str(tmp_path / "run"), *argv])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
