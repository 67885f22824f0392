"""`mllm4d curate` re-run into the same --out reuses finished clips (receipts in curate_state/) and
redoes exactly those whose clip bytes, settings or annotation file changed."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest

from mllm4d_lite.config import parse_config
from mllm4d_lite.curation import curate, receipts
from mllm4d_lite.curation.sources import find_sources

REPO = Path(__file__).resolve().parent.parent


def _state(out: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted((out / "annotations").glob("*.json"))}


def _run(clips: Path, out: Path, capsys, *extra: str) -> str:
    assert curate.main(["--clips", str(clips), "--out", str(out), "--qa", "false", *extra]) == 0
    return capsys.readouterr().out


@pytest.fixture
def clips(tmp_path) -> Path:
    root = tmp_path / "clips"
    for name in ("synth_s00004", "synth_s00005"):
        shutil.copytree(REPO / "tiny_data" / name, root / name)
    return root


def test_rerun_reuses_finished_clips_and_redoes_changed_ones(clips, tmp_path, capsys):
    out = tmp_path / "out"
    assert "reused" not in _run(clips, out, capsys)
    first = _state(out)
    assert len(first) == 2 and len(list((out / "curate_state").glob("*.json"))) == 2

    assert "(2 reused from an earlier run)" in _run(clips, out, capsys)
    assert _state(out) == first  # nothing written again

    # an edited input file (same content, other bytes) redoes that clip only
    gt = clips / "synth_s00005" / "gt.json"
    gt.write_text(json.dumps(json.loads(gt.read_text()), indent=2))
    assert "(1 reused from an earlier run)" in _run(clips, out, capsys)
    now = _state(out)
    assert now["synth_s00004.json"] == first["synth_s00004.json"]
    assert now["synth_s00005.json"][0] != first["synth_s00005.json"][0]
    assert now["synth_s00005.json"][1] == first["synth_s00005.json"][1]  # deterministic: same bytes

    # an annotation edited by hand does not pass for finished
    ann = out / "annotations" / "synth_s00004.json"
    ann.write_text(ann.read_text().replace('"synthetic"', '"edited"'))
    assert "(1 reused from an earlier run)" in _run(clips, out, capsys)
    assert ann.read_bytes() == first["synth_s00004.json"][1]


def test_the_key_covers_annotation_settings_not_run_options(clips):
    """Another annotation setting (or code) gives another key; where and how the run goes does not."""
    source = find_sources(clips)[0]
    base = asdict(parse_config(curate.CurateRun, [], prog="mllm4d curate"))
    key = receipts.clip_key(source, base, curate.STAGE_KEYS)
    for run_only in ({"workers": 4}, {"engine": "ray", "ray_address": "auto"}, {"out": "elsewhere"},
                     {"qa": False}, {"resume": False}, {"bench_fraction": 0.5}):
        assert receipts.clip_key(source, {**base, **run_only}, curate.STAGE_KEYS) == key, run_only
    for setting in ({"min_depth_m": 1.5}, {"score": True}, {"block_size": 5}, {"bundle_adjust": False}):
        assert receipts.clip_key(source, {**base, **setting}, curate.STAGE_KEYS) != key, setting
    other = find_sources(clips)[1]
    assert receipts.clip_key(other, base, curate.STAGE_KEYS) != key


def test_receipts_of_clips_no_longer_curated_are_removed_and_resume_false_redoes(clips, tmp_path, capsys):
    out = tmp_path / "out"
    _run(clips, out, capsys)
    shutil.rmtree(clips / "synth_s00005")
    assert "reused" not in _run(clips, out, capsys, "--resume", "false")  # redoes every clip
    assert [p.name for p in (out / "annotations").glob("*.json")] == ["synth_s00004.json"]
    assert len(list((out / "curate_state").glob("*.json"))) == 1


@pytest.mark.parametrize("argv, message", [
    (["--engine", "spark"], "engine must be local or ray, got 'spark'"),
    (["--ray-address", "auto"], "--ray-address auto needs --engine ray"),
])
def test_bad_engine_options_give_one_line(argv, message, tmp_path, capsys):
    rc = curate.main(["--clips", str(REPO / "tiny_data" / "synth_s00004"), "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
