"""Loaders for KITTI raw, side-by-side video and frame folders: fixtures built from synthetic
frames must come back with exactly the K, baseline and frames that were written."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from mllm4d_lite.curation import sources
from mllm4d_lite.curation.clip import ClipError
from mllm4d_lite.curation.video import VideoError, read_video, write_video

# Real KITTI 2011_09_26 values (P_rect_02 / P_rect_03).
P2 = [721.5377, 0, 609.5593, 44.85728, 0, 721.5377, 172.854, 0.2163791, 0, 0, 1, 0.002745884]
P3 = [721.5377, 0, 609.5593, -339.5242, 0, 721.5377, 172.854, 2.199936, 0, 0, 1, 0.002729905]


def _frames(n=4, h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    # smooth blocks so that video coding loses little
    small = rng.integers(0, 256, (n, h // 8, w // 8, 3), dtype=np.uint8)
    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_NEAREST) for f in small])


def _write_pngs(folder, frames):
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:010d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))


def _kitti_calib(path, p2=P2, p3=P3):
    lines = ["calib_time: 09-Jan-2012 13:57:47", "corner_dist: 9.950000e-02"]
    for cam, p in ((0, P2), (1, P3), (2, p2), (3, p3)):
        lines.append(f"S_rect_{cam:02d}: 1.242000e+03 3.750000e+02")
        lines.append(f"P_rect_{cam:02d}: " + " ".join(f"{v:.6e}" for v in p))
    path.write_text("\n".join(lines) + "\n")


def test_kitti_raw_layout(tmp_path):
    left, right = _frames(seed=1), _frames(seed=2)
    drive = tmp_path / "2011_09_26" / "2011_09_26_drive_0001_sync"
    _write_pngs(drive / "image_02" / "data", left)
    _write_pngs(drive / "image_03" / "data", right)
    (drive / "image_02" / "timestamps.txt").write_text(
        "\n".join(f"2011-09-26 13:02:25.{i * 103_000_000 + 5:09d}" for i in range(4)) + "\n"
    )
    _kitti_calib(drive.parent / "calib_cam_to_cam.txt")  # lives in the date folder
    clip = sources.load_kitti_raw(drive)
    assert np.array_equal(clip.left, left) and np.array_equal(clip.right, right)
    assert np.allclose(clip.K, [[721.5377, 0, 609.5593], [0, 721.5377, 172.854], [0, 0, 1]])
    assert clip.baseline_m == pytest.approx((44.85728 + 339.5242) / 721.5377, rel=1e-6)
    assert clip.baseline_m == pytest.approx(0.5327, abs=1e-4)
    assert clip.fps == pytest.approx(1 / 0.103, rel=1e-3)
    assert [s.kind for s in sources.find_sources(tmp_path)] == ["kitti_raw"]


def test_frame_folders(tmp_path):
    left, right = _frames(seed=3), _frames(seed=4)
    _write_pngs(tmp_path / "pair" / "left", left)
    _write_pngs(tmp_path / "pair" / "right", right)
    (tmp_path / "pair" / "calib.yaml").write_text("fx: 300.5\nfy: 301.0\ncx: 31.5\ncy: 23.5\nbaseline_m: 0.12\nfps: 15\n")
    src = sources.find_sources(tmp_path)
    assert [(s.kind, s.clip_id) for s in src] == [("frame_folders", "pair")]
    clip = src[0].load()
    assert np.array_equal(clip.left, left) and np.array_equal(clip.right, right)
    assert np.array_equal(clip.K, [[300.5, 0, 31.5], [0, 301.0, 23.5], [0, 0, 1]])
    assert clip.baseline_m == 0.12 and clip.fps == 15.0


@pytest.mark.parametrize("layout", ["full", "half"])
def test_side_by_side_video(tmp_path, layout):
    left, right = _frames(n=6, seed=5), _frames(n=6, seed=6)
    video = tmp_path / "walk.mp4"
    write_video(video, np.concatenate([left, right], axis=2), fps=12.0, crf=0)
    sources.save_calibration(tmp_path / "walk.calib.yaml",
                             np.array([[400.0, 0, 63.5], [0, 400.0, 23.5], [0, 0, 1]]), 0.065, layout=layout)
    src = sources.find_sources(tmp_path)
    assert [(s.kind, s.clip_id) for s in src] == [("side_by_side", "walk")]
    clip = src[0].load()
    decoded, fps, _ = read_video(video)
    assert np.array_equal(clip.left, decoded[:, :, :64]) and np.array_equal(clip.right, decoded[:, :, 64:])
    assert np.abs(clip.left.astype(int) - left).mean() < 6  # H.264 yuv420 (limited range) round trip
    assert clip.fps == 12.0 and clip.baseline_m == 0.065
    if layout == "full":
        assert np.array_equal(clip.K, [[400.0, 0, 63.5], [0, 400.0, 23.5], [0, 0, 1]])
    else:  # squeezed eyes: x row halved in the pixel-centre convention
        assert np.allclose(clip.K, [[200.0, 0, 31.5], [0, 400.0, 23.5], [0, 0, 1]])


def test_bad_inputs_name_the_file(tmp_path):
    pair = tmp_path / "pair"
    _write_pngs(pair / "left", _frames(n=4))
    _write_pngs(pair / "right", _frames(n=3))
    calib = pair / "calib.yaml"
    calib.write_text("fx: 300\ncx: 31.5\ncy: 23.5\nbaseline_m: 0.1\n")
    with pytest.raises(ClipError, match=r"left holds 4 frames but .*right holds 3"):
        sources.load_frame_folders(pair / "left", pair / "right", calib)
    # sizes differ
    other = tmp_path / "other"
    _write_pngs(other / "left", _frames(n=2, w=64))
    _write_pngs(other / "right", _frames(n=2, w=56))
    with pytest.raises(ClipError, match=r"0000000000.png is 64x48 but .*56x48"):
        sources.load_frame_folders(other / "left", other / "right", calib)
    # calibration problems
    for text, pattern in [("fx: 300\ncx: 31.5\ncy: 23.5\n", "lacks `baseline_m`"),
                          ("fx: 300\ncx: 31.5\ncy: 23.5\nbaseline_m: 0\n", "`baseline_m` must be > 0"),
                          ("fx: 300\ncx: 31.5\ncy: 23.5\nbaseline_m: -0.2\n", "`baseline_m` must be > 0"),
                          ("fx: [300\n", r"not valid YAML/JSON at line 2, column 1 \(expected"),
                          ("- 1\n- 2\n", "must be a mapping"),
                          ("fx: abc\ncx: 1\ncy: 1\nbaseline_m: 0.1\n", "`fx` must be a number")]:
        calib.write_text(text)
        with pytest.raises(ClipError, match=pattern) as err:
            sources.read_calibration(calib)
        assert str(calib) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ClipError, match="calibration file not found"):
        sources.read_calibration(tmp_path / "missing.yaml")
    # KITTI: malformed / missing P_rect, swapped cameras
    kfile = tmp_path / "calib_cam_to_cam.txt"
    kfile.write_text("P_rect_02: 1 2 3\n")
    with pytest.raises(ClipError, match="P_rect_02"):
        sources.read_kitti_cam_to_cam(kfile)
    _kitti_calib(kfile, p2=P3, p3=P2)
    with pytest.raises(ClipError, match=r"baseline .* \(<= 0\)"):
        sources.read_kitti_cam_to_cam(kfile)
    with pytest.raises(ClipError, match="KITTI calibration not found"):
        sources.load_kitti_raw(tmp_path / "x" / "no_drive")
    # frame folder without calibration is reported at discovery
    (pair / "calib.yaml").unlink()
    with pytest.raises(ClipError, match="no calib.yaml"):
        sources.find_sources(tmp_path)


def test_truncated_video_names_the_file(tmp_path):
    frames = np.concatenate([_frames(n=6), _frames(n=6, seed=9)], axis=2)
    video = tmp_path / "cut.mp4"
    write_video(video, frames, fps=8.0)
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])
    (tmp_path / "cut.calib.json").write_text(json.dumps({"fx": 100, "cx": 31.5, "cy": 23.5, "baseline_m": 0.1}))
    with pytest.raises(VideoError, match="cut.mp4"):
        sources.find_sources(tmp_path)[0].load()
