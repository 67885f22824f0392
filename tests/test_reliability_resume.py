"""Resume keyed on content (issue 25): `mllm4d eval run` re-run after the bench changed under the same path."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from mllm4d_lite.eval.evaluate import bench_digest, main


def _bench(tmp_path, random_video, questions):
    (tmp_path / "v").mkdir(exist_ok=True)
    shutil.copy(random_video, tmp_path / "v" / "left.mp4")
    entries = [{"id": f"q{i}", "video": "v/left.mp4", "question": q, "question_type": "multiple-choice",
                "choices": {"A": "left", "B": "right"}, "answer": "left", "category": "object_direction"}
               for i, q in enumerate(questions)]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(entries, indent=1))
    return path


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bench_digest_follows_content_only():
    a = [{"id": "q1", "question": "x", "choices": {"A": "1", "B": "2"}}]
    assert bench_digest(a) == bench_digest([{"choices": {"B": "2", "A": "1"}, "question": "x", "id": "q1"}])
    assert bench_digest(a) != bench_digest([{**a[0], "question": "y"}])
    assert bench_digest(a).startswith("sha256:") and len(bench_digest(a)) == 7 + 64


@pytest.mark.hostile(
    stage="eval",
    case="`mllm4d eval run` re-run after the bench file changed under the same path",
    gets="the new questions asked (old predictions not reused), a warning says the bench "
         "changed; no stale rows or duplicates")
def test_eval_rerun_after_bench_changed_answers_the_new_questions(tiny_qwen25, random_video, tmp_path, caplog):
    out = tmp_path / "out"
    bench = _bench(tmp_path, random_video, ["Which way does the box move?", "Which way does the ball move?"])
    args = ["run", "--model", str(tiny_qwen25), "--bench", str(bench), "--frames", "2", "--max-new-tokens", "2",
            "--out", str(out)]
    assert main(args) == 0
    first = _lines(out / "predictions.jsonl")
    assert [p["question"] for p in first] == ["Which way does the box move?", "Which way does the ball move?"]
    key = json.loads((out / "run_key.json").read_text())
    assert key["bench_digest"] == bench_digest(json.loads(bench.read_text()))

    # unchanged: resumes, nothing asked again
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mllm4d_lite.eval.evaluate"):
        assert main(args) == 0
    assert "2 answered already, 0 to go" in caplog.text and "changed" not in caplog.text
    assert _lines(out / "predictions.jsonl") == first

    # the bench changes under the same path: old predictions are not reused, and the log says so
    _bench(tmp_path, random_video, ["Which way does the car move?", "Which way does the cup move?", "And the dog?"])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mllm4d_lite.eval.evaluate"):
        assert main(args) == 0
    assert "changed since the predictions" in caplog.text and "0 answered already, 3 to go" in caplog.text
    preds = json.loads((out / "predictions.json").read_text())
    assert [p["question"] for p in preds] == ["Which way does the car move?", "Which way does the cup move?",
                                              "And the dog?"]
    assert [p["id"] for p in _lines(out / "predictions.jsonl")] == ["q0", "q1", "q2"]  # no stale rows, no duplicates
    report = json.loads((out / "report.json").read_text())
    assert report["overall"]["n"] == 3


@pytest.mark.hostile(
    stage="eval",
    case="resuming an output folder written before bench digests existed",
    gets="resumes when the bench is unchanged (digest added), redoes the work when it changed")
def test_folder_from_before_digests_resumes_when_its_predictions_fit(tiny_qwen25, random_video, tmp_path, caplog):
    out = tmp_path / "out"
    bench = _bench(tmp_path, random_video, ["Which way does the box move?"])
    args = ["run", "--model", str(tiny_qwen25), "--bench", str(bench), "--frames", "2", "--max-new-tokens", "2",
            "--out", str(out)]
    assert main(args) == 0
    first = _lines(out / "predictions.jsonl")
    key = json.loads((out / "run_key.json").read_text())
    old_key = {k: v for k, v in key.items() if k != "bench_digest"}
    (out / "run_key.json").write_text(json.dumps(old_key))  # as written before digests
    with caplog.at_level(logging.INFO, logger="mllm4d_lite.eval.evaluate"):
        assert main(args) == 0
    assert "1 answered already, 0 to go" in caplog.text
    assert _lines(out / "predictions.jsonl") == first
    assert json.loads((out / "run_key.json").read_text()) == key  # the digest is added

    (out / "run_key.json").write_text(json.dumps(old_key))
    _bench(tmp_path, random_video, ["Which way does the ball move?"])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mllm4d_lite.eval.evaluate"):
        assert main(args) == 0
    assert "changed since the predictions" in caplog.text
    assert [p["question"] for p in _lines(out / "predictions.jsonl")] == ["Which way does the ball move?"]


@pytest.mark.hostile(
    stage="eval",
    case="resuming eval into a folder made with other settings (`--frames`)",
    gets="refused, exit 2: \"different run\"")
def test_other_model_settings_are_still_refused(tiny_qwen25, random_video, tmp_path, capsys):
    out = tmp_path / "out"
    bench = _bench(tmp_path, random_video, ["Which way does the box move?"])
    args = ["run", "--model", str(tiny_qwen25), "--bench", str(bench), "--frames", "2", "--max-new-tokens", "2",
            "--out", str(out)]
    assert main(args) == 0
    i = args.index("--frames") + 1
    assert main([*args[:i], "3", *args[i + 1:]]) == 2
    assert "different run" in capsys.readouterr().err


@pytest.mark.hostile(
    stage="eval",
    case="a torn `run_key.json` in the output folder",
    gets="one error line, exit 2")
def test_unreadable_run_key_is_one_error_line(tiny_qwen25, random_video, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run_key.json").write_text('{"model": "tin')  # torn by hand
    bench = _bench(tmp_path, random_video, ["Which way does the box move?"])
    assert main(["run", "--model", str(tiny_qwen25), "--bench", str(bench), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "run_key.json is unreadable" in err and "Traceback" not in err
