"""`mllm4d eval`: scoring prediction files, the report, bad input, and an end-to-end run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mllm4d_lite.eval.answers import score_response
from mllm4d_lite.eval.bench_files import BenchError, check_entries, load_entries, resolve_video
from mllm4d_lite.eval.evaluate import main, scored
from mllm4d_lite.eval.report import build_report, category_table, report_markdown, write_report

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
RELEASE = SHARED / "mllm4d_release_outputs"
VLM4D = SHARED / "vlm4d"

LRUD = {"A": "left", "B": "right", "C": "up", "D": "down"}
FB = {"A": "forward", "B": "backward"}


def _mc(id_, category, answer, choices=LRUD, video="clips/c1/left.mp4"):
    return {"id": id_, "clip_id": "c1", "video": video, "category": category,
            "question": f"Question {id_}?", "question_type": "multiple-choice",
            "choices": dict(choices), "answer": answer, "solution": {}}


def _last_json_line(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# report arithmetic
# ---------------------------------------------------------------------------------------------

def test_report_separates_per_question_and_mean_over_categories(tmp_path):
    rows = ([{"category": "big", "score": s, "extracted": "A", "n_choices": 4} for s in (1, 1, 1, 0)]
            + [{"category": "small", "score": 0.0, "extracted": None, "n_choices": 2}]
            + [{"category": "dist", "score": 0.8, "extracted": "2.2", "n_choices": None}])
    report = build_report(rows)
    o = report["overall"]
    # per question: (3 + 0 + 0.8) / 6 ; mean over categories: (75 + 0 + 80) / 3
    assert o["accuracy"] == pytest.approx(100 * 3.8 / 6, abs=0.01)
    assert o["mean_over_categories"] == pytest.approx((75 + 0 + 80) / 3, abs=0.01)
    assert o["n"] == 6 and o["no_answer"] == 1
    assert o["chance"] == pytest.approx(100 * (4 * 0.25 + 0.5) / 5, abs=0.01)  # MC questions only
    table = category_table(rows)
    assert table["big"] == {"n": 4, "correct": 3, "accuracy": 75.0, "no_answer": 0, "chance": 25.0, "metric": "accuracy"}
    assert table["dist"]["metric"] == "MRA" and table["dist"]["chance"] is None
    md = report_markdown(report)
    assert "overall, per question" in md and "overall, mean over categories" in md and "dist (MRA)" in md
    paths = write_report(report, tmp_path)
    assert json.loads(paths["json"].read_text())["overall"] == o
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp*"))


# ---------------------------------------------------------------------------------------------
# eval score
# ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(not RELEASE.is_dir(), reason=f"{RELEASE} not present (shared release prediction files)")
def test_score_release_files_reproduces_readme(capsys):
    files = sorted(str(p) for p in RELEASE.glob("*.json"))
    assert main(["score", "--predictions", *files]) == 0
    summary = _last_json_line(capsys.readouterr().out)
    by_label = {f["label"]: (f["n"], f["correct"], f["accuracy"]) for f in summary["files"]}
    assert by_label == {
        "real_mc_MLLM-4D-SFT-1.0": (1371, 804, 58.64),
        "real_mc_MLLM-4D-RFT-1.0": (1371, 825, 60.18),
        "synthetic_mc_MLLM-4D-SFT-1.0": (445, 238, 53.48),
        "synthetic_mc_MLLM-4D-RFT-1.0": (445, 242, 54.38),
    }
    assert (summary["n"], summary["correct"]) == (3632, 804 + 825 + 238 + 242)
    assert summary["accuracy"] == round(100 * 2109 / 3632, 2)
    assert summary["no_answer"] == 15 + 70 + 0 + 1  # the README's empty responses


@pytest.mark.skipif(not VLM4D.is_dir(), reason=f"{VLM4D} not present (VLM4D judged outputs)")
def test_score_reads_vlm4d_judged_files_as_they_are(capsys):
    path = VLM4D / "real_mc_direct-output" / "gpt-4o_32frame.json"
    assert main(["score", "--predictions", str(path)]) == 0
    summary = _last_json_line(capsys.readouterr().out)
    judged = sum(bool(e["correct"]) for e in json.loads(path.read_text()))
    assert summary["n"] == 1371
    assert abs(summary["correct"] - judged) <= 0.01 * 1371  # within 1 point of the LLM judge


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------

def test_malformed_json_names_file_and_line(tmp_path):
    bad = tmp_path / "bench.json"
    bad.write_text('[\n {"id": "q1", "question": "x",\n')
    with pytest.raises(BenchError, match=r"bench\.json: not valid JSON at line \d+"):
        load_entries(bad)
    jsonl = tmp_path / "preds.jsonl"
    jsonl.write_text('{"id": 1}\n{"id": 2,\n')
    with pytest.raises(BenchError, match="line 2"):
        load_entries(jsonl)


@pytest.mark.parametrize("entry,message", [
    ({"id": "q1", "question": "Which way?", "choices": LRUD}, "q1.*missing field 'answer'"),
    ({"id": "q2", "question": "Which way?", "choices": LRUD, "answer": "sideways"}, "q2.*matches none of the choices"),
    ({"id": "q3", "question": "Which way?", "choices": None, "answer": "left"}, "q3.*'choices'"),
    ({"question": "Which way?", "choices": LRUD, "answer": "left"}, "missing field 'id'"),
    ({"id": "q5", "question": "How far?", "question_type": "numeric", "answer": "far"}, "q5.*non-numeric"),
])
def test_bad_entries_are_named(tmp_path, entry, message):
    with pytest.raises(BenchError, match=message):
        check_entries([entry], tmp_path / "bench.json")


def test_duplicate_ids_and_missing_response(tmp_path):
    entries = [_mc("q1", "a", "left"), _mc("q1", "a", "up")]
    with pytest.raises(BenchError, match="duplicate id"):
        check_entries(entries, tmp_path / "bench.json")
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps([{**_mc("q1", "a", "left"), "response": "A"}, _mc("q2", "a", "up")]))
    with pytest.raises(BenchError, match="q2.*missing field 'response'"):
        check_entries(load_entries(preds), preds, need_response=True)


def test_cli_reports_bad_input_instead_of_an_accuracy(tmp_path, capsys):
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps([{**_mc("q9", "a", "sideways"), "response": "A"}]))
    assert main(["score", "--predictions", str(preds)]) == 2
    captured = capsys.readouterr()
    assert "q9" in captured.err and "matches none" in captured.err
    assert "accuracy" not in captured.out
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps([_mc("q1", "a", "left", video="nowhere/left.mp4")]))
    assert main(["run", "--bench", str(bench), "--out", str(tmp_path / "out")]) == 2
    assert "none of the 1 videos was found" in capsys.readouterr().err


def test_resolve_video_under_video_root(tmp_path):
    root = tmp_path / "VLM4D"
    (root / "videos_real" / "davis").mkdir(parents=True)
    clip = root / "videos_real" / "davis" / "aerobatics.mp4"
    clip.write_bytes(b"\x00")
    bench_dir = tmp_path / "bench"
    url = "https://huggingface.co/datasets/shijiezhou/VLM4D/resolve/main/videos_real/davis/aerobatics.mp4"
    author_path = "/mnt/data/users/someone/VLM4D/videos_real/davis/aerobatics.mp4"
    assert resolve_video(url, bench_dir, root) == clip
    assert resolve_video(author_path, bench_dir, root) == clip
    assert resolve_video("videos_real/davis/aerobatics.mp4", bench_dir, root) == clip
    assert resolve_video(author_path, bench_dir, None) is None
    assert resolve_video("videos_real/davis/missing.mp4", bench_dir, root) is None


# ---------------------------------------------------------------------------------------------
# end to end on the tiny model
# ---------------------------------------------------------------------------------------------

@pytest.fixture()
def tiny_bench(tmp_path, random_video) -> Path:
    clip_dir = tmp_path / "bench" / "clips" / "c1"
    clip_dir.mkdir(parents=True)
    shutil.copy(random_video, clip_dir / "left.mp4")
    entries = [
        _mc("q1", "object_direction", "left"),
        _mc("q2", "object_direction", "up"),
        _mc("q3", "camera_direction", "forward", choices=FB),
        {"id": "q4", "clip_id": "c1", "video": "clips/c1/left.mp4", "category": "object_distance",
         "question": "How far does the box move, in metres?", "question_type": "numeric", "choices": None,
         "answer": "1.5", "solution": {}},
        _mc("q5", "camera_direction", "backward", choices=FB, video="clips/c9/left.mp4"),  # no such video
    ]
    path = tmp_path / "bench" / "bench.json"
    path.write_text(json.dumps(entries, indent=1))
    return path


def test_eval_run_end_to_end_resumes_and_recounts(tiny_qwen25, tiny_bench, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    entries = {e["id"]: e for e in json.loads(tiny_bench.read_text())}
    # two questions answered by an earlier (interrupted) run: they must be kept, not re-asked
    earlier = [scored(entries["q1"], "<thinking>…</thinking><answer>A</answer>"),
               scored(entries["q4"], "<answer>1.68</answer>")]  # 12 % off: MRA 0.8
    (out / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in earlier))
    args = ["run", "--model", str(tiny_qwen25), "--bench", str(tiny_bench), "--prompt", "st-cot",
            "--frames", "4", "--max-new-tokens", "8", "--out", str(out), "--blind"]
    assert main(args) == 0
    summary = _last_json_line(capsys.readouterr().out)

    preds = json.loads((out / "predictions.json").read_text())
    assert [p["id"] for p in preds] == ["q1", "q2", "q3", "q4"]  # bench order, missing video left out
    assert preds[0]["response"] == earlier[0]["response"] and preds[3]["response"] == earlier[1]["response"]
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4  # only q2, q3 generated
    for p in preds:
        assert isinstance(p["response"], str) and {"question", "choices", "answer", "category"} <= set(p)
        assert (p["score"], p["extracted"]) == score_response(p, p["response"])
    blind = json.loads((out / "predictions_blind.json").read_text())
    assert [p["id"] for p in blind] == ["q1", "q2", "q3", "q4"]

    # the report equals a recount of the predictions
    report = json.loads((out / "report.json").read_text())
    recount: dict[str, list[float]] = {}
    for p in preds:
        recount.setdefault(p["category"], []).append(score_response(p, p["response"])[0])
    assert {r["category"]: (r["n"], r["accuracy"]) for r in report["categories"]} == {
        c: (len(s), round(100 * sum(s) / len(s), 2)) for c, s in recount.items()}
    assert report["categories"][2] == {**report["categories"][2], "category": "object_distance",
                                       "metric": "MRA", "accuracy": 80.0}
    total = sum(sum(s) for s in recount.values())
    assert report["overall"]["accuracy"] == round(100 * total / 4, 2) == summary["accuracy"]
    means = [100 * sum(s) / len(s) for s in recount.values()]
    assert report["overall"]["mean_over_categories"] == pytest.approx(sum(means) / len(means), abs=0.01)
    assert [s["id"] for s in report["skipped"]] == ["q5"] and summary["skipped"] == 1
    assert summary["n"] == 4 and "blind_accuracy" in summary
    for name in ("report.md", "report.png", "config.yaml"):
        assert (out / name).is_file()

    # a second run answers nothing new and gives the same report
    assert main(args) == 0
    assert _last_json_line(capsys.readouterr().out) == summary
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4
    # `eval score` on the predictions agrees with the run
    assert main(["score", "--predictions", str(out / "predictions.json")]) == 0
    scored_summary = _last_json_line(capsys.readouterr().out)
    assert (scored_summary["n"], scored_summary["accuracy"]) == (summary["n"], summary["accuracy"])
    # resuming with another prompt into the same folder would mix runs: refused
    assert main([*args[:6], "direct", *args[7:]]) == 2
    assert "different run" in capsys.readouterr().err


def test_eval_run_on_vlm4d_format_with_video_root(tiny_qwen25, random_video, tmp_path, capsys):
    """VLM4D's own files: URL / author-machine video paths, no category (grouped by split file)."""
    root = tmp_path / "downloads"
    (root / "videos_real" / "davis").mkdir(parents=True)
    shutil.copy(random_video, root / "videos_real" / "davis" / "aerobatics.mp4")
    url = "https://huggingface.co/datasets/shijiezhou/VLM4D/resolve/main/videos_real/davis/aerobatics.mp4"
    bench = tmp_path / "real_mc.json"
    bench.write_text(json.dumps([
        {"id": "validation_1", "video": url, "question_type": "multiple-choice",
         "question": "What direction is the bus moving towards?",
         "choices": {"A": "not moving", "B": "there are no buses in the video", "C": "right", "D": "left"},
         "answer": "there are no buses in the video"},
        {"id": "validation_2", "video": "/home/author/VLM4D/videos_real/davis/aerobatics.mp4",
         "question_type": "multiple-choice", "question": "How many times does it spin?",
         "choices": {"A": 0, "B": 5, "C": 6, "D": 2}, "answer": 5},
    ]))
    out = tmp_path / "out"
    assert main(["run", "--model", str(tiny_qwen25), "--bench", str(bench), "--video-root", str(root),
                 "--prompt", "direct", "--frames", "4", "--max-new-tokens", "4", "--out", str(out)]) == 0
    summary = _last_json_line(capsys.readouterr().out)
    assert summary["n"] == 2 and summary["skipped"] == 0
    report = json.loads((out / "report.json").read_text())
    assert [r["category"] for r in report["categories"]] == ["real_mc"]
    preds = json.loads((out / "predictions.json").read_text())
    assert [p["split"] for p in preds] == ["real_mc", "real_mc"]


def test_help_for_every_command(capsys):
    assert main(["--help"]) == 0
    assert "score" in capsys.readouterr().out
    for command in ("run", "score"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "--" in capsys.readouterr().out
