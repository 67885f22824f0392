"""Native clip folders: round trip through save_clip/load_clip and the promised errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mllm4d_lite.curation.clip import Clip, ClipError, load_clip, save_clip
from mllm4d_lite.curation.synth import generate_clip
from mllm4d_lite.curation.video import write_video


@pytest.fixture(scope="module")
def clip():
    return generate_clip(5, 4, 96, 64, num_objects=3)


@pytest.fixture()
def saved(clip, tmp_path):
    return save_clip(clip, tmp_path)


def test_round_trip(clip, saved):
    assert saved.name == clip.clip_id and saved.parent.is_dir()
    meta = json.loads((saved / "clip.json").read_text())
    for key in ("clip_id", "source", "fps", "width", "height", "num_frames", "K", "baseline_m", "license"):
        assert key in meta
    assert meta["source"] == "synthetic" and meta["seed"] == 5 and meta["generator"]["num_frames"] == 4
    back = load_clip(saved)
    assert back.path == saved and back.clip_id == clip.clip_id
    np.testing.assert_allclose(back.K, clip.K)
    assert back.baseline_m == clip.baseline_m and back.fps == clip.fps
    assert back.left.shape == clip.left.shape
    # H.264 (crf 18, yuv420p) is lossy but close
    assert np.abs(back.left.astype(int) - clip.left).mean() < 4
    assert np.abs(back.right.astype(int) - clip.right).mean() < 4
    assert np.array_equal(back.masks, clip.masks) and back.labels == clip.labels
    assert back.gt == json.loads(json.dumps(clip.gt))
    assert back.gt_depth_m.dtype == np.float32
    assert np.abs(back.gt_depth_m - clip.gt_depth_m).max() <= 0.00051  # stored as uint16 mm
    assert back.meta["seed"] == 5
    assert load_clip(saved, load_depth=False).gt_depth_m is None


def test_save_replaces_existing_clip_atomically(clip, tmp_path):
    first = save_clip(clip, tmp_path)
    (first / "stale.txt").write_text("old")
    second = save_clip(clip, tmp_path)
    assert second == first and not (second / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [clip.clip_id]  # no temp folders left


def test_minimal_clip_without_optional_files(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (3, 32, 48, 3), dtype=np.uint8)
    K = np.array([[40.0, 0, 24], [0, 40.0, 16], [0, 0, 1]])
    c = Clip("plain", frames, frames.copy(), K, 0.1, 5.0)
    path = save_clip(c, tmp_path)
    assert sorted(p.name for p in path.iterdir()) == ["clip.json", "left.mp4", "right.mp4"]
    back = load_clip(path)
    assert back.masks is None and back.gt is None and back.gt_depth_m is None and back.num_frames == 3


def test_float_depth_beyond_uint16_range_is_kept(tmp_path):
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    depth = np.full((2, 32, 32), 80.0, np.float32)  # 80 m does not fit uint16 millimetres
    c = Clip("far", frames, frames, np.array([[30.0, 0, 16], [0, 30.0, 16], [0, 0, 1]]), 0.5, 5.0,
             gt_depth_m=depth)
    back = load_clip(save_clip(c, tmp_path))
    np.testing.assert_array_equal(back.gt_depth_m, depth)


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_missing_clip_json(saved):
    (saved / "clip.json").unlink()
    with pytest.raises(ClipError, match="clip.json: missing"):
        load_clip(saved)


def test_not_a_folder(tmp_path):
    with pytest.raises(ClipError, match="not a clip folder"):
        load_clip(tmp_path / "nowhere")


def test_malformed_clip_json(saved):
    (saved / "clip.json").write_text("{not json")
    with pytest.raises(ClipError, match="clip.json: malformed JSON"):
        load_clip(saved)


def test_missing_keys(saved):
    data = json.loads((saved / "clip.json").read_text())
    del data["K"]
    (saved / "clip.json").write_text(json.dumps(data))
    with pytest.raises(ClipError, match=r"missing key\(s\) \['K'\]"):
        load_clip(saved)


@pytest.mark.parametrize("K", [
    [[0, 0, 10], [0, 50, 10], [0, 0, 1]],          # zero focal length
    [[50, 0, 10], [0, 50, 10]],                     # not 3x3
    [[50, 0, 10], [0, 50, 10], [0, 1, 1]],          # bad last row
    "fifty",
])
def test_bad_K(saved, K):
    _edit_json(saved / "clip.json", K=K)
    with pytest.raises(ClipError, match='clip.json: bad "K"'):
        load_clip(saved)


@pytest.mark.parametrize("baseline", [0, -0.3])
def test_non_positive_baseline(saved, baseline):
    _edit_json(saved / "clip.json", baseline_m=baseline)
    with pytest.raises(ClipError, match="baseline_m must be > 0"):
        load_clip(saved)


def test_frame_count_mismatch(clip, saved):
    write_video(saved / "right.mp4", clip.right[:2], clip.fps)
    with pytest.raises(ClipError, match="right.mp4: holds 2 frames, expected 4"):
        load_clip(saved)


def test_size_mismatch(clip, saved):
    small = np.ascontiguousarray(clip.left[:, :32, :48])
    write_video(saved / "left.mp4", small, clip.fps)
    with pytest.raises(ClipError, match="left.mp4: frames are 48x32"):
        load_clip(saved)


def test_truncated_video(saved):
    data = (saved / "left.mp4").read_bytes()
    (saved / "left.mp4").write_bytes(data[: len(data) // 3])
    with pytest.raises(ClipError, match="left.mp4"):
        load_clip(saved)


def test_missing_video(saved):
    (saved / "right.mp4").unlink()
    with pytest.raises(ClipError, match="right.mp4: video file not found"):
        load_clip(saved)


def test_bad_masks_shape(saved):
    np.savez_compressed(saved / "masks.npz", masks=np.zeros((4, 8, 8), np.uint16))
    with pytest.raises(ClipError, match="masks.npz: masks shape"):
        load_clip(saved)


def test_unwritable_output(clip, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ClipError, match="cannot write into"):
        save_clip(clip, blocker / "out")


def test_bad_clip_id_and_depth_shape(clip, tmp_path):
    import dataclasses

    with pytest.raises(ClipError, match="contains a path separator, so it cannot be a file name"):
        save_clip(dataclasses.replace(clip, clip_id="../escape"), tmp_path)
    with pytest.raises(ClipError, match="gt_depth_m shape"):
        save_clip(dataclasses.replace(clip, gt_depth_m=clip.gt_depth_m[:2]), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_copy_of_saved_clip_loads(saved, tmp_path):
    """A clip folder is self-contained: moving it elsewhere keeps it loadable."""
    moved = tmp_path / "elsewhere" / "x"
    shutil.copytree(saved, moved)
    assert load_clip(moved).clip_id == saved.name
