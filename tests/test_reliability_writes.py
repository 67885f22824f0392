"""Unique temporary names for videos, and GRPO's no-readable-video error line (issue 25)."""

from __future__ import annotations

import json
import os
import stat
import threading

import numpy as np
import pytest

from mllm4d_lite.curation.video import read_video, write_video


def _frames(seed=0, t=4):
    rng = np.random.default_rng(seed)
    return (rng.random((t, 32, 48, 3)) * 255).astype(np.uint8)


@pytest.mark.hostile(
    stage="all",
    case="video writes racing on one fixed temporary name",
    gets="unique temporary names; an unrelated `left.tmp.mp4` left alone; usual permissions")
def test_write_video_never_uses_a_fixed_temporary_name(tmp_path):
    path = tmp_path / "left.mp4"
    (tmp_path / "left.tmp.mp4").mkdir()  # the old fixed temporary name, taken by something else
    write_video(path, _frames(), fps=8.0)
    assert read_video(path)[0].shape == (4, 32, 48, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["left.mp4", "left.tmp.mp4"]  # nothing hidden left
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as a plain open() would give


def test_video_bytes_do_not_depend_on_the_temporary_name(tmp_path):
    write_video(tmp_path / "a.mp4", _frames(1), fps=8.0)
    write_video(tmp_path / "b.mp4", _frames(1), fps=8.0)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


@pytest.mark.hostile(
    stage="all",
    case="two threads writing one video at once",
    gets="both succeed; one complete video; no temporary file left")
def test_concurrent_writers_of_one_video_both_succeed(tmp_path):
    path = tmp_path / "v" / "left.mp4"
    errors = []

    def work(seed):
        try:
            write_video(path, _frames(seed, t=8), fps=8.0)
        except Exception as err:  # noqa: BLE001 - collected for the assertion
            errors.append(err)

    threads = [threading.Thread(target=work, args=(s,)) for s in (2, 2, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert read_video(path)[0].shape[0] == 8
    assert [p.name for p in path.parent.iterdir()] == ["left.mp4"]


@pytest.mark.hostile(
    stage="all",
    case="a video encode that fails",
    gets="the error raised; no temporary file left")
def test_failed_encode_leaves_no_temporary_file(tmp_path, monkeypatch):
    import av

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", fail)
    with pytest.raises(OSError, match="No space left"):
        write_video(tmp_path / "x.mp4", _frames(), fps=8.0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.hostile(
    stage="grpo",
    case="GRPO records whose videos cannot be read",
    gets="one error line: \"no record has a readable video (2 skipped)\", exit 2")
def test_grpo_without_a_readable_video_is_one_error_line(tiny_qwen25, tmp_path, capsys):
    from mllm4d_lite.train import grpo

    rows = [{"id": f"r{i}", "video": f"videos/missing{i}.mp4", "question": "Which way?",
             "choices": {"A": "left", "B": "right"}, "answer": "left", "category": "camera_direction",
             "solution": {"camera_center": [], "object_center": []}} for i in range(2)]
    train = tmp_path / "rft.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc = grpo.main(["--model", str(tiny_qwen25), "--train-file", str(train), "--output-dir", str(tmp_path / "out"),
                    "--max-steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"{train}: no record has a readable video (2 skipped)" in err
