"""`mllm4d curate` end to end on generated clips: annotations, QA files, scorecard vs ground truth,
plots, bad clips reported and skipped with workers, clips without masks, --use-gt."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mllm4d_lite.curation import curate, synth
from mllm4d_lite.curation.annotation import validate_annotation
from mllm4d_lite.curation.clip import save_clip
from mllm4d_lite.curation.sources import save_calibration


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    for seed, motion in ((221, "forward"), (222, "static"), (223, "right_pan_left")):
        save_clip(synth.generate_clip(seed, num_frames=10, camera_motion=motion), root)
    return root


@pytest.fixture(scope="module")
def scored_run(clips_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc = curate.main(["--clips", str(clips_dir), "--out", str(out), "--score", "--plot", "--bench-fraction", "0.34"])
    return rc, out


def test_annotations_follow_the_schema(scored_run):
    rc, out = scored_run
    assert rc == 0
    files = sorted((out / "annotations").glob("*.json"))
    assert [f.stem for f in files] == ["synth_s00221", "synth_s00222", "synth_s00223"]
    for f in files:
        ann = json.loads(f.read_text())
        validate_annotation(ann, str(f))
        n = ann["num_frames"]
        assert n == 10 and len(ann["camera_to_world"]) == n and len(ann["camera_centers"]) == n
        assert np.allclose(ann["camera_to_world"][0], np.eye(4), atol=1e-6)
        assert ann["clip_dir"].endswith(f.stem) and ann["source"] == "synthetic"
        assert ann["quality"]["stereo_density"] > 0.8
        for obj in ann["objects"]:
            assert len(obj["centers"]) == n and len(obj["yaw_rad"]) == n
            first = next(i for i, y in enumerate(obj["yaw_rad"]) if y is not None) if any(
                y is not None for y in obj["yaw_rad"]) else None
            if first is not None:
                assert obj["yaw_rad"][first] == 0.0  # heading change since the first visible frame
    assert not list((out / "annotations").glob("*.tmp"))
    for name in ("sft.jsonl", "cot.jsonl", "rft.jsonl", "bench.json", "qa_summary.json", "config.yaml"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "plots").glob("*.png")) == [f.stem + ".png" for f in files]


def test_scorecard_meets_targets(scored_run):
    _, out = scored_run
    card = json.loads((out / "scorecard.json").read_text())
    assert card["clips"] == 3
    assert card["disparity"]["epe_px"] < 0.8 and card["disparity"]["bad_px"] < 0.12
    cam = card["camera"]
    assert cam["clips_within_target"] == 3
    assert cam["static_clips"] == 1 and cam["static_max_drift_m"] <= 0.02
    obj = card["objects"]
    assert obj["centre_err_median_pct_distance"] <= 10.0
    if obj["direction_objects"]:
        assert obj["direction_err_median_deg"] <= 20.0
    assert all(card["pass"].values()), card["pass"]
    assert "qa_agreement" in card and card["qa_agreement"]["mc_agreement"] > 0.7


def test_bad_clip_is_reported_and_skipped_with_workers(clips_dir, tmp_path, caplog):
    root = tmp_path / "clips"
    shutil.copytree(clips_dir / "synth_s00221", root / "synth_s00221")
    shutil.copytree(clips_dir / "synth_s00222", root / "synth_s00222")
    bad = root / "synth_s00222"
    video = bad / "right.mp4"
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 3])  # truncated video
    broken = root / "synth_broken"
    shutil.copytree(clips_dir / "synth_s00223", broken)
    (broken / "clip.json").write_text("{not json")  # malformed metadata
    out = tmp_path / "out"
    with caplog.at_level("ERROR"):
        rc = curate.main(["--clips", str(root), "--out", str(out), "--workers", "2", "--qa", "false"])
    assert rc == 0
    assert [p.name for p in (out / "annotations").iterdir()] == ["synth_s00221.json"]
    text = caplog.text
    assert "right.mp4" in text and "clip.json" in text


def test_a_one_frame_clip_is_skipped_naming_the_fix(clips_dir, tmp_path, caplog):
    """A clip of one frame has no motion to annotate: skipped with a reason, the others curated
    (before, it passed curation and stopped the QA step with a traceback)."""
    root = tmp_path / "clips"
    save_clip(synth.generate_clip(225, num_frames=1), root)
    shutil.copytree(clips_dir / "synth_s00221", root / "synth_s00221")
    out = tmp_path / "out"
    with caplog.at_level("ERROR"):
        rc = curate.main(["--clips", str(root), "--out", str(out), "--bench-fraction", "0"])
    assert rc == 0
    assert [p.name for p in (out / "annotations").iterdir()] == ["synth_s00221.json"]
    assert "synth_s00225: 1 frame(s); a 4D annotation needs at least 2" in caplog.text
    assert (out / "sft.jsonl").stat().st_size > 0


def test_clip_without_masks_has_no_objects_and_says_why(tmp_path):
    clip = synth.generate_clip(224, num_frames=6, camera_motion="right")
    folder = tmp_path / "pair"
    (folder / "left").mkdir(parents=True)
    (folder / "right").mkdir()
    import cv2

    for i in range(clip.num_frames):
        cv2.imwrite(str(folder / "left" / f"{i:04d}.png"), cv2.cvtColor(clip.left[i], cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(folder / "right" / f"{i:04d}.png"), cv2.cvtColor(clip.right[i], cv2.COLOR_RGB2BGR))
    save_calibration(folder / "calib.yaml", clip.K, clip.baseline_m, fps=8)
    out = tmp_path / "out"
    assert curate.main(["--clips", str(folder), "--out", str(out), "--qa", "false"]) == 0
    ann = json.loads((out / "annotations" / "pair.json").read_text())
    assert ann["objects"] == [] and "detector" in ann["quality"]["objects"]
    assert ann["source"] == "frame_folders"
    gt = np.asarray(clip.gt["camera_to_world"])[:, :3, 3]
    est = np.asarray(ann["camera_centers"])
    # without masks the moving objects are only rejected by RANSAC; still within the target
    path = np.linalg.norm(np.diff(gt, axis=0), axis=1).sum()
    assert np.median(np.linalg.norm(est - gt, axis=1)) <= max(0.05, 0.03 * path)


def test_use_gt_builds_annotations_from_ground_truth(clips_dir, tmp_path):
    out = tmp_path / "gt"
    assert curate.main(["--clips", str(clips_dir), "--out", str(out), "--use-gt", "--bench-fraction", "0.34"]) == 0
    ann = json.loads((out / "annotations" / "synth_s00221.json").read_text())
    gt = json.loads((clips_dir / "synth_s00221" / "gt.json").read_text())
    assert np.allclose(ann["camera_to_world"], gt["camera_to_world"])
    assert (out / "bench.json").is_file()


def test_errors_and_help(tmp_path, capsys):
    assert curate.main(["--clips", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert "clips folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert curate.main(["--clips", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no clips found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        curate.main(["--help"])
    assert exit_info.value.code == 0
    assert "--workers" in capsys.readouterr().out


def test_side_by_side_video_end_to_end(tmp_path):
    from mllm4d_lite.curation.video import write_video

    clip = synth.generate_clip(225, num_frames=8, camera_motion="forward")
    write_video(tmp_path / "drive.mp4", np.concatenate([clip.left, clip.right], axis=2), clip.fps, crf=16)
    save_calibration(tmp_path / "drive.calib.yaml", clip.K, clip.baseline_m, layout="full")
    out = tmp_path / "out"
    assert curate.main(["--clips", str(tmp_path), "--out", str(out), "--qa", "false"]) == 0
    ann = json.loads((out / "annotations" / "drive.json").read_text())
    assert ann["source"] == "side_by_side_full" and ann["num_frames"] == 8 and ann["fps"] == pytest.approx(clip.fps)
    gt = np.asarray(clip.gt["camera_to_world"])[:, :3, 3]
    est = np.asarray(ann["camera_centers"])
    path = np.linalg.norm(np.diff(gt, axis=0), axis=1).sum()
    assert np.median(np.linalg.norm(est - gt, axis=1)) <= max(0.05, 0.03 * path)


def test_scorecard_text_with_only_static_cameras_says_so():
    """All-static clips have no path length, so no "% of path": the line says why instead of nan%."""
    from mllm4d_lite.curation.scorecard import scorecard_text

    cam = {"ate_median_m": 0.0, "ate_median_pct_path": None, "ate_worst_median_m": 0.0, "clips_within_target": 2,
           "static_max_drift_m": 0.0, "static_clips": 2}
    text = scorecard_text({"clips": 2, "pass": {}, "camera": cam, "objects": {"absent": "no objects"}})
    assert "nan" not in text and "(no clip with a camera path: all static)" in text
    text = scorecard_text({"clips": 2, "pass": {}, "camera": {**cam, "ate_median_pct_path": 1.234},
                           "objects": {"absent": "no objects"}})
    assert "(1.2% of path)" in text
