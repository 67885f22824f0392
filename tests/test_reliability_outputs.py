"""Outputs never mixed (issue 25): re-curating another clip set into an existing --out."""

from __future__ import annotations

import json
import logging
import os

import pytest

from mllm4d_lite.curation import curate, synth
from mllm4d_lite.curation.clip import save_clip
from mllm4d_lite.qa import stage


@pytest.fixture(scope="module")
def two_sets(tmp_path_factory):
    """``all/`` holds clips a and b; ``one/`` links to a only."""
    root = tmp_path_factory.mktemp("sets")
    ids = []
    for seed in (311, 312):
        clip = synth.generate_clip(seed, num_frames=6, width=64, height=48)
        save_clip(clip, root / "all")
        ids.append(clip.clip_id)
    (root / "one").mkdir()
    os.symlink(root / "all" / ids[0], root / "one" / ids[0])
    return root, ids


def _snapshot(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "config.yaml"}


@pytest.mark.hostile(
    stage="curate",
    case="re-curating fewer clips into an `--out` that holds another clip set's outputs",
    gets="the other clips' annotations, plots and QA files removed (logged); foreign files kept; "
         "`mllm4d qa` sees only this run's clips")
def test_recurating_fewer_clips_removes_the_others_and_qa_does_not_mix_them(two_sets, tmp_path, caplog):
    root, ids = two_sets
    out = tmp_path / "out"
    args = ["--out", str(out), "--use-gt", "--bench-fraction", "0.5"]
    assert curate.main(["--clips", str(root / "all"), *args, "--plot"]) == 0
    assert sorted(p.stem for p in (out / "annotations").glob("*.json")) == sorted(ids)
    assert sorted(p.stem for p in (out / "plots").glob("*.png")) == sorted(ids)
    (out / "annotations" / "notes.txt").write_text("mine")  # not a kit output: left alone

    with caplog.at_level(logging.WARNING, logger="mllm4d_lite.curation.curate"):
        assert curate.main(["--clips", str(root / "one"), *args, "--qa", "false"]) == 0
    assert [p.stem for p in (out / "annotations").glob("*.json")] == [ids[0]]
    assert not list((out / "plots").glob("*.png"))  # this run made no plots
    for name in curate.QA_FILES:  # this run built no QA data: the old files would describe clip b too
        assert not (out / name).exists()
    assert (out / "annotations" / "notes.txt").read_text() == "mine"
    assert "removed so nothing is mixed" in caplog.text and f"annotations/{ids[1]}.json" in caplog.text

    qa_out = tmp_path / "qa"
    assert stage.main(["--annotations", str(out / "annotations"), "--out", str(qa_out),
                       "--bench-fraction", "0"]) == 0
    clips = {json.loads(line)["clip_id"] for line in (qa_out / "sft.jsonl").read_text().splitlines()}
    assert clips == {ids[0]}


def test_recurating_the_same_clips_keeps_every_output_identical(two_sets, tmp_path, caplog):
    root, ids = two_sets
    out = tmp_path / "out"
    args = ["--clips", str(root / "all"), "--out", str(out), "--use-gt", "--plot", "--bench-fraction", "0.5"]
    assert curate.main(args) == 0
    first = _snapshot(out)
    with caplog.at_level(logging.WARNING, logger="mllm4d_lite.curation.curate"):
        assert curate.main(args) == 0
    assert "removed" not in caplog.text
    second = _snapshot(out)
    assert set(second) == set(first)
    assert {k for k in first if first[k] != second[k]} <= {"qa_summary.json"}  # only its elapsed_s may differ


@pytest.mark.hostile(
    stage="curate",
    case="stale-output clean-up in a folder with hidden and foreign files",
    gets="only the kit's own outputs of clips not produced are removed")
def test_remove_stale_outputs_keeps_hidden_and_foreign_files(tmp_path):
    (tmp_path / "annotations").mkdir()
    for name in ("a.json", "b.json", ".b.json.x1.tmp", "b.txt"):
        (tmp_path / "annotations" / name).write_text("{}")
    (tmp_path / "scorecard.json").write_text("{}")
    (tmp_path / "bench.json").write_text("[]")
    removed = curate.remove_stale_outputs(tmp_path, {"a"}, {"bench.json"})
    assert sorted(p.name for p in removed) == ["b.json", "scorecard.json"]
    assert sorted(p.name for p in (tmp_path / "annotations").iterdir()) == [".b.json.x1.tmp", "a.json", "b.txt"]
    assert (tmp_path / "bench.json").exists()
