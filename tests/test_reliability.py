"""Hostile input and faults (issue 25): ids that would leave the output folder, numbers that are
not finite or out of range, command-line strings that YAML would rewrite, writes that fail
half-way (a full disk) or race, and requests too big to run. Each test fails without its fix."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import threading

import pytest

from mllm4d_lite import io as kit_io
from mllm4d_lite.curation import curate, synth
from mllm4d_lite.curation.clip import ClipError, load_clip, save_clip


@pytest.fixture(scope="module")
def tiny_clips(tmp_path_factory):
    """Two small synthetic clips (6 frames, 64x48) with ground truth."""
    root = tmp_path_factory.mktemp("rel_clips")
    for seed in (301, 302):
        save_clip(synth.generate_clip(seed, num_frames=6, width=64, height=48), root)
    return root


def _files_under(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ----------------------------------------------------------------------------- 1. ids -> paths
@pytest.mark.hostile(
    stage="all",
    case="an id that is not one file name: `../../../x`, `a/b`, `/etc/passwd`, `..`, empty, NUL, "
         "newline, backslash, leading dot, over 200 characters",
    gets="refused (`UnsafeIdError`) naming the file, the field and the value; never sanitised "
         "silently")
@pytest.mark.parametrize("bad", ["../../../x", "a/b", "/etc/passwd", "..", ".", "", "x\x00y", "a\nb",
                                 "a\\b", ".hidden", "x" * 201])
def test_safe_id_refuses_what_is_not_one_file_name(bad):
    with pytest.raises(kit_io.UnsafeIdError) as err:
        kit_io.safe_id(bad, "clip_id", "some/clip.json")
    assert "some/clip.json" in str(err.value) and "clip_id" in str(err.value) and repr(bad) in str(err.value)


@pytest.mark.parametrize("good", ["synth_s00001", "2011_09_26_drive_0001_sync", "a.b-c", "x" * 200, "clip..1"])
def test_safe_id_keeps_plain_names_unchanged(good, tmp_path):
    assert kit_io.safe_id(good) == good
    assert kit_io.id_path(tmp_path, good, ".json") == tmp_path / f"{good}.json"


@pytest.mark.hostile(
    stage="all",
    case="an id that is not a string (`[\"a\"]`)",
    gets="refused: \"must be a string\"")
def test_safe_id_refuses_non_strings():
    with pytest.raises(kit_io.UnsafeIdError, match="must be a string"):
        kit_io.safe_id(["a"], "clip_id")


@pytest.mark.hostile(
    stage="curate",
    case="`clip_id` of `../../../x` in a `clip.json`",
    gets="that clip skipped with an error naming `clip_id` and the value; the other clip "
         "curated; nothing written outside `--out`")
def test_traversing_clip_id_is_skipped_and_nothing_leaves_out(tiny_clips, tmp_path, caplog):
    clips = tmp_path / "data" / "clips"
    shutil.copytree(tiny_clips, clips)
    meta_path = clips / "synth_s00302" / "clip.json"
    meta = json.loads(meta_path.read_text())
    meta["clip_id"] = "../../../x"
    meta_path.write_text(json.dumps(meta))
    out = tmp_path / "data" / "out" / "run"
    out.parent.mkdir()
    before = set(_files_under(tmp_path))
    with caplog.at_level(logging.ERROR):
        rc = curate.main(["--clips", str(clips), "--out", str(out), "--use-gt", "--qa", "false"])
    assert rc == 0
    new = set(_files_under(tmp_path)) - before
    outside = [p for p in new if not p.startswith(os.path.join("data", "out", "run"))]
    assert outside == [], outside
    assert sorted(p.name for p in (out / "annotations").iterdir()) == ["synth_s00301.json"]
    assert "clip_id" in caplog.text and "'../../../x'" in caplog.text and "path separator" in caplog.text


@pytest.mark.hostile(
    stage="synth",
    case="a clip id with `..\\` or `../` when loading or saving a clip",
    gets="`ClipError` naming `clip.json`; nothing written outside the folder")
def test_load_clip_and_save_clip_refuse_unsafe_ids(tiny_clips, tmp_path):
    clip_dir = tmp_path / "c"
    shutil.copytree(tiny_clips / "synth_s00301", clip_dir)
    meta = json.loads((clip_dir / "clip.json").read_text())
    meta["clip_id"] = "..\\..\\x"
    (clip_dir / "clip.json").write_text(json.dumps(meta))
    with pytest.raises(ClipError, match=r"clip\.json.*path separator"):
        load_clip(clip_dir)
    clip = synth.generate_clip(1, num_frames=2, width=32, height=32)
    clip.clip_id = "../escape"
    with pytest.raises(ClipError, match="path separator"):
        save_clip(clip, tmp_path / "out")
    assert not (tmp_path / "escape").exists()


@pytest.mark.hostile(
    stage="qa",
    case="an annotation file whose `clip_id` is `../x`",
    gets="`AnnotationError` naming the file (path separator)")
def test_annotation_with_unsafe_clip_id_is_refused():
    from mllm4d_lite.curation.annotation import AnnotationError, validate_annotation

    ann = {"clip_id": "../x", "num_frames": 2, "fps": 8.0, "camera_to_world": [[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0],
           [0, 0, 0, 1]]] * 2, "camera_centers": [[0, 0, 0]] * 2, "objects": []}
    with pytest.raises(AnnotationError, match="path separator"):
        validate_annotation(ann, "ann.json")
    validate_annotation({**ann, "clip_id": "ok_1"}, "ann.json")


@pytest.mark.hostile(
    stage="curate",
    case="an explicit source clip id `../x` or `.hidden`",
    gets="refused, not rewritten (a file name maps to an id as documented: `my clip` -> "
         "`my_clip`)")
def test_explicit_source_clip_id_is_refused_not_rewritten(tmp_path):
    from mllm4d_lite.curation.sources import _safe_id

    assert _safe_id("my clip") == "my_clip"  # a file name: the documented mapping
    with pytest.raises(ClipError, match="path separator"):
        _safe_id("ok", "../x")  # an explicit id: refused
    with pytest.raises(ClipError, match="starts with"):
        _safe_id(".hidden")


# ----------------------------------------------------------------------------- 2. numbers
def _clip_copy(tiny_clips, tmp_path, **edits):
    clip_dir = tmp_path / "clip"
    shutil.copytree(tiny_clips / "synth_s00301", clip_dir)
    meta = json.loads((clip_dir / "clip.json").read_text())
    for key, value in edits.items():
        if key == "fx":
            meta["K"][0][0] = value
        else:
            meta[key] = value
    (clip_dir / "clip.json").write_text(json.dumps(meta))  # inf/nan -> Infinity/NaN, as a hostile file has
    return clip_dir


@pytest.mark.hostile(
    stage="curate",
    case="`clip.json` numbers: `baseline_m` Infinity / NaN / `\"0.1m\"`, `K` with fx -50 or inf, "
         "`fps` 0 / inf / true, `num_frames` wrong / 6.5 / 0, `width` 1e9, `height` null",
    gets="`ClipError` in one line naming `clip.json`, the field, the rule and the value")
@pytest.mark.parametrize("edits, message", [
    ({"baseline_m": float("inf")}, "baseline_m must be > 0 and finite, got inf"),
    ({"baseline_m": float("nan")}, "baseline_m must be > 0 and finite, got nan"),
    ({"baseline_m": "0.1m"}, "baseline_m must be a number > 0, got '0.1m'"),
    ({"fx": -50.0}, 'bad "K"'),
    ({"fx": float("inf")}, 'bad "K"'),
    ({"fps": 0}, "fps must be > 0 and <= 1000, got 0"),
    ({"fps": float("inf")}, "fps must be > 0 and <= 1000 and finite"),
    ({"fps": True}, "fps must be a number"),
    ({"num_frames": 7}, "holds 6 frames, expected 7"),
    ({"num_frames": 6.5}, "num_frames must be an integer >= 1, got 6.5"),
    ({"num_frames": 0}, "num_frames must be >= 1, got 0"),
    ({"width": 1e9}, "width must be >= 1 and <= 16384, got 1000000000.0"),
    ({"height": None}, "height must be an integer"),
])
def test_clip_json_numbers_are_checked(tiny_clips, tmp_path, edits, message):
    clip_dir = _clip_copy(tiny_clips, tmp_path, **edits)
    with pytest.raises(ClipError) as err:
        load_clip(clip_dir)
    assert message in str(err.value) and "clip.json" in str(err.value) and "\n" not in str(err.value)


def test_valid_clip_json_numbers_load_unchanged(tiny_clips, tmp_path):
    clip = load_clip(_clip_copy(tiny_clips, tmp_path, num_frames=6.0, fps="8"))  # integral float, numeric string
    assert clip.num_frames == 6 and clip.fps == 8.0 and isinstance(clip.fps, float)


@pytest.mark.hostile(
    stage="curate",
    case="`baseline_m: Infinity` in a native `clip.json`",
    gets="that clip skipped with the error logged (never labelled \"camera not moving\"); the "
         "other clip curated")
def test_baseline_infinity_is_skipped_by_curate_not_labelled(tiny_clips, tmp_path, caplog):
    clips = tmp_path / "clips"
    shutil.copytree(tiny_clips, clips)
    meta_path = clips / "synth_s00302" / "clip.json"
    meta = json.loads(meta_path.read_text())
    meta["baseline_m"] = float("inf")
    meta_path.write_text(json.dumps(meta))
    assert "Infinity" in meta_path.read_text()
    with caplog.at_level(logging.ERROR):
        rc = curate.main(["--clips", str(clips), "--out", str(tmp_path / "out"), "--qa", "false"])
    assert rc == 0 and "baseline_m must be > 0 and finite, got inf" in caplog.text
    assert [p.name for p in (tmp_path / "out" / "annotations").iterdir()] == ["synth_s00301.json"]


@pytest.mark.hostile(
    stage="curate",
    case="calibration YAML with `baseline_m` .inf / .nan, `fx` -300, `fps` 0 or .inf",
    gets="`ClipError` naming the calibration file, the field and the value")
@pytest.mark.parametrize("line, message", [
    ("baseline_m: .inf", "`baseline_m` must be > 0 and finite, got inf"),
    ("baseline_m: .nan", "`baseline_m` must be > 0 and finite, got nan"),
    ("baseline_m: 0.1\nfx: -300", "`fx` must be > 0, got -300"),
    ("baseline_m: 0.1\nfps: 0", "`fps` must be > 0 and <= 1000, got 0"),
    ("baseline_m: 0.1\nfps: .inf", "`fps` must be > 0 and <= 1000 and finite"),
])
def test_calibration_numbers_go_through_the_same_check(tmp_path, line, message):
    from mllm4d_lite.curation.sources import read_calibration

    calib = tmp_path / "calib.yaml"
    calib.write_text("fx: 300\ncx: 31.5\ncy: 23.5\n" + line + "\n")
    with pytest.raises(ClipError) as err:
        read_calibration(calib)
    assert message in str(err.value) and str(calib) in str(err.value)


@pytest.mark.hostile(
    stage="synth",
    case="command-line numbers `--num-clips .inf` / `1e400` / `2.5`, `--frames nan`, `--fps nan` "
         "/ `-.inf`",
    gets="one error line naming the option and the rule, exit 2; nothing created")
@pytest.mark.parametrize("args, message", [
    (["--num-clips", ".inf"], "`num_clips` must be finite, got"),
    (["--num-clips", "1e400"], "`num_clips` must be finite"),
    (["--frames", "nan"], "`frames` must be finite, got"),
    (["--fps", "nan"], "`fps` must be finite, got"),
    (["--fps=-.inf"], "`fps` must be finite"),
    (["--num-clips", "2.5"], "`num_clips` must be an integer, got"),
])
def test_cli_numbers_not_finite_are_one_error_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        synth.main(["--out", str(tmp_path / "o"), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.hostile(
    stage="all",
    case="numbers that are booleans, null, lists, fractions as text, NaN, ±inf, `.inf`, or out "
         "of range",
    gets="`NumberError` naming the file, the field, the rule, the value and the fix")
def test_check_number_rules():
    from mllm4d_lite.checks import NumberError, check_number

    assert check_number("16", "n", kind=int, ge=1) == 16 and check_number(16.0, "n", kind=int) == 16
    assert check_number(" 0.5 ", "x", gt=0, le=1) == 0.5
    import numpy as np

    assert check_number(np.float32(2.0), "x") == 2.0 and check_number(np.int64(3), "n", kind=int) == 3
    for bad in (True, None, [1], "1/2", float("nan"), float("-inf"), ".inf", "NaN"):
        with pytest.raises(NumberError):
            check_number(bad, "x")
    with pytest.raises(NumberError, match=r"f\.json: x must be > 0 and < 1, got 1; do this"):
        check_number(1, "x", "f.json", gt=0, lt=1, fix="do this")
    with pytest.raises(NumberError):
        check_number("3", "x", strings=False)


# ----------------------------------------------------------------------------- 3. CLI strings
def _stage_configs():
    import importlib

    from mllm4d_lite.cli import STAGES

    found = {}
    for stage, (module_name, _) in STAGES.items():
        module = importlib.import_module(module_name)
        for name in ("CurateRun", "SynthConfig", "QARunConfig", "SFTConfig", "GRPOConfig", "EvalConfig",
                     "DemoConfig"):
            if hasattr(module, name) and stage != "plan":
                found[stage] = getattr(module, name)
    return found


@pytest.mark.hostile(
    stage="all",
    case="command-line text YAML would rewrite (`2024_01`, `no`, `on`, `1e3`, `0o17`, `.inf`, "
         "`True`, `[a, b]`) for any string option of any stage",
    gets="kept verbatim")
def test_every_string_field_of_every_stage_keeps_command_line_text_verbatim():
    import dataclasses
    import typing

    from mllm4d_lite.config import CliText, _coerce

    configs = _stage_configs()
    assert {"synth", "curate", "qa", "sft", "grpo", "eval", "demo"} <= set(configs)
    checked = 0
    for stage, cls in configs.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] not in (str, str | None, typing.Optional[str]):
                continue
            for text in ("2024_01", "no", "yes", "on", "1e3", "0o17", "1_000", ".inf", "null_x", "True", "[a, b]"):
                assert _coerce(f.name, CliText(text), hints[f.name]) == text, (stage, f.name, text)
            checked += 1
    assert checked >= 20


@pytest.mark.hostile(
    stage="curate",
    case="`--out 2024_01`, `--out no`, `--clips off`",
    gets="paths kept as typed; only numeric and boolean options are converted")
@pytest.mark.parametrize("argv, want", [
    (["--out", "2024_01"], {"out": "2024_01"}),
    (["--out", "no"], {"out": "no"}),
    (["--out", "1e3", "--clips", "off"], {"out": "1e3", "clips": "off"}),
    (["--workers", "2", "--plot", "--qa", "no", "--min-depth-m", "1.5"],
     {"workers": 2, "plot": True, "qa": False, "min_depth_m": 1.5}),
    (["--qa", "off", "--score=yes"], {"qa": False, "score": True}),
])
def test_curate_command_line_paths_stay_text_numbers_and_flags_are_typed(argv, want):
    cfg = curate.main.__globals__["parse_config"](curate.CurateRun, argv, prog="mllm4d curate")
    for key, value in want.items():
        got = getattr(cfg, key)
        assert got == value and type(got) is type(value), (key, got)


@pytest.mark.hostile(
    stage="all",
    case="recipe YAML values YAML would rewrite (`out: 2024_01`, `out: no`, `clips: off`, `out:` empty)",
    gets="string options kept as written in the file; numbers and booleans read by their type")
def test_recipe_yaml_strings_stay_text_numbers_and_flags_are_typed(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("out: 2024_01\nclips: off\nworkers: 2\nqa: no\nmin_depth_m: 1.5e0\nscore: yes\n")
    cfg = curate.main.__globals__["parse_config"](curate.CurateRun, ["--config", str(recipe)], prog="mllm4d curate")
    want = {"out": "2024_01", "clips": "off", "workers": 2, "qa": False, "min_depth_m": 1.5, "score": True}
    for key, value in want.items():
        got = getattr(cfg, key)
        assert got == value and type(got) is type(value), (key, got)
    recipe.write_text("out: no\n")
    assert curate.main.__globals__["parse_config"](curate.CurateRun, ["--config", str(recipe)],
                                                   prog="mllm4d curate").out == "no"
    recipe.write_text("workers: many\n")
    with pytest.raises(SystemExit):
        curate.main.__globals__["parse_config"](curate.CurateRun, ["--config", str(recipe)], prog="mllm4d curate")


@pytest.mark.hostile(
    stage="synth",
    case="`--out 2024_01`, `--out no`",
    gets="writes to `2024_01/` and `no/` (not `202401/` or `False/`)")
def test_synth_out_is_not_rewritten_on_disk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = synth.main(["--out", "2024_01", "--num-clips", "1", "--frames", "2", "--size", "32x32"])
    assert rc == 0 and (tmp_path / "2024_01" / "synth_s00000" / "clip.json").is_file()
    assert not (tmp_path / "202401").exists()
    rc = synth.main(["--out", "no", "--num-clips", "1", "--frames", "2", "--size", "32x32"])
    assert rc == 0 and (tmp_path / "no").is_dir() and not (tmp_path / "False").exists()


def test_optional_strings_and_lists_from_the_command_line():
    from dataclasses import dataclass, field

    from mllm4d_lite.config import parse_config, parse_overrides, build_config

    @dataclass
    class C:
        adapter: str | None = None
        names: list[str] = field(default_factory=list)
        sizes: list[int] = field(default_factory=list)
        extra: dict = field(default_factory=dict)

    cfg = parse_config(C, ["--adapter", "null", "--names", "[2024_01, no]", "--sizes", "1,2", "--extra", "{a: 1}"], "t")
    assert cfg == C(None, ["2024_01", "no"], [1, 2], {"a": 1})
    assert parse_config(C, ["--adapter", "2024_01"], "t").adapter == "2024_01"
    assert build_config(C, parse_overrides(["adapter=no", "names=a,b"])) == C("no", ["a", "b"])


# ----------------------------------------------------------------------------- 4. atomic writes
def _enospc(fd, data):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.hostile(
    stage="all",
    case="a full disk (ENOSPC) while writing a JSON file or a set of files",
    gets="the error raised; the old file kept intact; no temporary file left")
def test_full_disk_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    kit_io.atomic_write_json(target, {"old": 1})
    monkeypatch.setattr(kit_io, "_write_fd", _enospc)
    with pytest.raises(OSError) as err:
        kit_io.atomic_write_json(target, {"new": 2})
    assert err.value.errno == errno.ENOSPC
    with pytest.raises(OSError):
        kit_io.atomic_write_many({tmp_path / "b.txt": "b", tmp_path / "c.txt": "c"})
    assert json.loads(target.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


@pytest.mark.hostile(
    stage="all",
    case="a write that fails half-way (text that cannot be encoded)",
    gets="the error raised; no temporary file left")
def test_a_write_failing_half_way_leaves_no_temporary(tmp_path):
    with pytest.raises(UnicodeEncodeError):
        kit_io.atomic_write_text(tmp_path / "x.txt", "ok \ud800")  # not encodable
    assert list(tmp_path.iterdir()) == []


def test_written_files_have_the_usual_permissions(tmp_path):
    kit_io.atomic_write_text(tmp_path / "x.txt", "hi")
    plain = tmp_path / "plain.txt"
    plain.write_text("hi")
    assert (tmp_path / "x.txt").stat().st_mode == plain.stat().st_mode
    assert (tmp_path / "x.txt").read_text() == "hi"


@pytest.mark.hostile(
    stage="all",
    case="four threads writing one file 150 times each",
    gets="no error; the file holds one complete write; no temporary file left")
def test_concurrent_writers_of_one_file_never_collide(tmp_path):
    target = tmp_path / "same.json"
    errors = []

    def writer(tag):
        try:
            for i in range(150):
                kit_io.atomic_write_json(target, {"tag": tag, "i": i})
        except Exception as err:  # noqa: BLE001 - collected for the assertion
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads(target.read_text())["i"] == 149
    assert [p.name for p in tmp_path.iterdir()] == ["same.json"]


@pytest.mark.hostile(
    stage="curate",
    case="a full disk during curate",
    gets="one error line (\"No space left on device\", \"free disk space\"), exit 2; no hidden "
         "temporary files")
def test_curate_on_a_full_disk_is_one_error_line(tiny_clips, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(kit_io, "_write_fd", _enospc)
    out = tmp_path / "out"
    rc = curate.main(["--clips", str(tiny_clips), "--out", str(out), "--use-gt"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "No space left on device" in err and "free disk space" in err
    assert [p for p in out.rglob("*") if p.name.startswith(".")] == []


@pytest.mark.hostile(
    stage="synth",
    case="a full disk while synth writes videos",
    gets="one error line, exit 2, no traceback; nothing left in `--out`")
def test_synth_on_a_full_disk_is_one_error_line(tmp_path, monkeypatch, capsys):
    import mllm4d_lite.curation.video as video

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(video, "write_video", full)
    rc = synth.main(["--out", str(tmp_path / "o"), "--num-clips", "1", "--frames", "2", "--size", "32x32"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "synth clips:" not in ln]  # tqdm
    assert rc == 2 and len(err) == 1 and "No space left on device" in err[0] and "Traceback" not in err[0]
    assert list((tmp_path / "o").iterdir()) == []


@pytest.mark.hostile(
    stage="curate",
    case="two identical curate processes into one `--out` at the same time",
    gets="both succeed; outputs identical to a single run; no temporary file left")
def test_two_identical_curates_into_one_folder_at_once_both_succeed(tiny_clips, tmp_path):
    """Two processes write the same annotations, QA files and config into one folder at the same time."""
    import subprocess
    import sys

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mllm4d_lite", "curate", "--clips", str(tiny_clips), "--out", str(out),
           "--use-gt", "--bench-fraction", "0.5"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    solo = tmp_path / "solo"
    assert curate.main(["--clips", str(tiny_clips), "--out", str(solo), "--use-gt", "--bench-fraction", "0.5"]) == 0
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert names == sorted(str(p.relative_to(solo)) for p in solo.rglob("*"))  # no temporary files left
    for name in names:
        if name.endswith(".jsonl") or (name.endswith(".json") and name != "qa_summary.json"):
            assert (out / name).read_text() == (solo / name).read_text(), name
    summaries = [json.loads((d / "qa_summary.json").read_text()) for d in (out, solo)]
    assert [{k: v for k, v in s.items() if k != "elapsed_s"} for s in summaries] == [
        {k: v for k, v in summaries[1].items() if k != "elapsed_s"}] * 2


# ----------------------------------------------------------------------------- 5. limits, --out
@pytest.mark.hostile(
    stage="synth",
    case="`--frames 1000000`, `--size 40000x40000`, 9000 frames of 16000x16000",
    gets="refused within seconds, before any work, in one line naming the limit; nothing written")
@pytest.mark.parametrize("args, message", [
    (["--frames", "1000000"], "`frames` 1000000 is above the limit of 10000 frames per clip; use fewer --frames"),
    (["--size", "40000x40000"], "above the limit of 16384 pixels per side"),
    (["--frames", "9000", "--size", "16000x16000"], "of memory per clip (40 bytes per pixel and frame) but"),
])
def test_synth_requests_over_the_limits_are_refused_at_once(tmp_path, capsys, args, message):
    import time

    start = time.perf_counter()
    try:
        rc = synth.main(["--out", str(tmp_path / "o"), *args])
    except SystemExit as stop:
        rc = stop.code
    err = capsys.readouterr().err.strip()
    assert rc == 2 and message in err and len(err.splitlines()) == 1, err
    assert time.perf_counter() - start < 5
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


@pytest.mark.hostile(
    stage="synth",
    case="a request needing more memory than is free",
    gets="one error line with the estimate per clip, exit 2")
def test_synth_memory_estimate_against_available_ram(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(synth, "available_memory_bytes", lambda: 40 * 2**20)  # 40 MiB free
    rc = synth.main(["--out", str(tmp_path / "o"), "--frames", "16", "--size", "320x240"])  # needs ~47 MiB
    assert rc == 2 and "needs about 0.0458 GiB of memory per clip" in capsys.readouterr().err
    monkeypatch.setattr(synth, "available_memory_bytes", lambda: 60 * 2**20)
    synth.check_request(synth.SynthConfig(frames=16, size="320x240"))  # fits: no error
    with pytest.raises(ValueError, match="above the limit of 10000 frames"):
        synth.generate_clip(0, num_frames=10001)


@pytest.mark.hostile(
    stage="all",
    case="`--out` that is an existing file, or a read-only folder (synth, curate)",
    gets="one error line naming `--out` and the fix, exit 2; the file untouched; nothing written")
@pytest.mark.parametrize("stage", ["synth", "curate"])
def test_out_that_is_a_file_or_read_only_is_one_error_line(tiny_clips, tmp_path, capsys, make_read_only, stage):
    main = synth.main if stage == "synth" else curate.main
    extra = ["--num-clips", "1", "--frames", "2", "--size", "32x32"] if stage == "synth" else [
        "--clips", str(tiny_clips), "--use-gt"]
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    assert main(["--out", str(a_file), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"mllm4d {stage}: error: --out {a_file} is an existing file, not a folder; choose another --out"
    assert a_file.read_text() == "keep"
    ro = tmp_path / "ro"
    make_read_only(ro)
    try:
        assert main(["--out", str(ro), *extra]) == 2
    finally:
        ro.chmod(0o755)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--out {ro} is not writable (Permission denied)" in err
    assert list(ro.iterdir()) == []


@pytest.mark.hostile(
    stage="curate",
    case="two curates forced to rename onto the same targets in lockstep",
    gets="both succeed (unique temporary names); no temporary file left")
def test_two_curates_renaming_the_same_files_in_lockstep_both_succeed(tiny_clips, tmp_path, monkeypatch, capsys):
    """Forces the race: every rename onto a target waits until the other run renames onto the same
    target too, so two runs sharing one temporary name would lose a file (FileNotFoundError)."""
    barriers: dict[str, threading.Barrier] = {}
    lock = threading.Lock()
    real_replace = os.replace

    def lockstep_replace(src, dst, *args, **kwargs):
        with lock:
            barrier = barriers.setdefault(str(dst), threading.Barrier(2, timeout=5))
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass  # the other run already stopped; go on alone
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", lockstep_replace)
    out = tmp_path / "out"
    codes = []
    argv = ["--clips", str(tiny_clips), "--out", str(out), "--use-gt", "--bench-fraction", "0.5"]
    threads = [threading.Thread(target=lambda: codes.append(curate.main(list(argv)))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert codes == [0, 0], capsys.readouterr().err
    assert sorted(p.name for p in (out / "annotations").iterdir()) == ["synth_s00301.json", "synth_s00302.json"]
    assert [p for p in out.rglob(".*")] == []
