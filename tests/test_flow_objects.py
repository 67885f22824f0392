"""The mask-free object backend (``--object-backend flow``) against ground truth on synthetic clips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mllm4d_lite.curation import curate, flow_objects, odometry, stereo, synth
from mllm4d_lite.curation.annotation import validate_annotation


def _estimate(clip):
    """Disparity and odometry as curation runs them, without masks."""
    max_disp = stereo.max_disparity_for(clip.focal_px, clip.baseline_m, 1.0, clip.width)
    disp = np.stack([stereo.compute_disparity(clip.left[i], clip.right[i], max_disp) for i in range(clip.num_frames)])
    vo = odometry.estimate_trajectory(clip.left, disp, clip.K, clip.baseline_m, None, right=clip.right)
    return disp, vo.camera_to_world


@pytest.fixture(scope="module")
def moving_run():
    # seed 8801 (not in tiny_data, the benchmark or other tests): a sideways camera, one object
    # sliding left or right beside a static one
    clip = synth.generate_clip(8801, num_frames=12, camera_motion="right", num_objects=2, num_moving=1,
                               object_motions=("translate",), directions=("left", "right"))
    disp, poses = _estimate(clip)
    objects, log, masks = flow_objects.flow_objects(clip.left, disp, clip.K, clip.baseline_m, poses)
    return clip, objects, log, masks


def test_finds_the_moving_object_and_only_it(moving_run):
    clip, objects, _, _ = moving_run
    movers = [g["id"] for g in clip.gt["objects"] if g["motion"] != "static"]
    assert len(movers) == 1
    match = flow_objects.match_to_gt(objects, clip.gt)
    assert sorted(match.values()) == movers  # found, and the static object is not claimed
    assert len(objects) == 1  # nothing spurious


def test_centre_and_direction_within_targets(moving_run):
    clip, objects, _, _ = moving_run
    gt = {g["id"]: g for g in clip.gt["objects"]}
    cam = np.asarray(clip.gt["camera_to_world"])[:, :3, 3]
    (eid, gid), = flow_objects.match_to_gt(objects, clip.gt).items()
    est = next(o for o in objects if o["id"] == eid)
    gc = np.asarray(gt[gid]["centers_world"])
    frames = [t for t, c in enumerate(est["centers"]) if c is not None and gt[gid]["visible"][t]]
    assert len(frames) >= 0.5 * clip.num_frames
    rel = [np.linalg.norm(np.asarray(est["centers"][t]) - gc[t]) / np.linalg.norm(gc[t] - cam[t]) for t in frames]
    assert np.median(rel) <= 0.10, np.median(rel)
    f0, f1 = frames[0], frames[-1]
    d_est, d_gt = np.subtract(est["centers"][f1], est["centers"][f0]), gc[f1] - gc[f0]
    err = math.degrees(math.atan2(d_est[2], d_est[0]) - math.atan2(d_gt[2], d_gt[0]))
    assert abs((err + 180) % 360 - 180) <= 20.0


def test_reason_log_and_derived_masks(moving_run):
    clip, objects, log, masks = moving_run
    assert log and all(isinstance(e["reason"], str) and e["reason"] and "kept" in e for e in log)
    kept = [e for e in log if e["kept"]]
    assert sorted(e["id"] for e in kept) == sorted(o["id"] for o in objects)
    assert any(not e["kept"] for e in log)  # noise regions are logged as dropped, with why
    # the derived mask of the found object overlaps the true mask of the moving object
    (eid, gid), = flow_objects.match_to_gt(objects, clip.gt).items()
    inter = ((masks == eid) & (clip.masks == gid)).sum()
    assert inter >= 0.5 * (masks == eid).sum()


def test_static_scene_gives_no_objects():
    clip = synth.generate_clip(8802, num_frames=10, camera_motion="forward", num_objects=3, num_moving=0)
    assert all(g["motion"] == "static" for g in clip.gt["objects"])
    disp, poses = _estimate(clip)
    objects, log, masks = flow_objects.flow_objects(clip.left, disp, clip.K, clip.baseline_m, poses)
    assert objects == [] and not masks.any()
    assert all(not e["kept"] for e in log)


def test_masks_are_ignored_by_the_flow_backend():
    clip = synth.generate_clip(8803, num_frames=8, camera_motion="static", num_objects=2, num_moving=1,
                               object_motions=("translate",), directions=("left", "right"))
    ann, _, _ = curate.estimate_annotation(clip, object_backend="flow")
    validate_annotation(ann)
    assert ann["objects_log"] and ann["quality"]["objects"].startswith("flow")
    rng = np.random.default_rng(0)
    clip.masks = rng.integers(0, 5, clip.masks.shape).astype(np.uint16)  # garbage masks
    clip.labels = {1: "bogus"}
    ann2, _, _ = curate.estimate_annotation(clip, object_backend="flow")
    assert ann2["objects"] == ann["objects"] and ann2["camera_to_world"] == ann["camera_to_world"]
    clip.masks, clip.labels = None, {}
    ann3, _, _ = curate.estimate_annotation(clip, object_backend="flow")
    assert ann3["objects"] == ann["objects"]


def test_bad_backend_is_a_one_line_error(tmp_path, capsys):
    assert curate.main(["--clips", str(tmp_path), "--out", str(tmp_path / "o"), "--object-backend", "boxes"]) == 2
    err = capsys.readouterr().err
    assert "object_backend" in err and "flow" in err and "Traceback" not in err


def test_config_validation():
    with pytest.raises(ValueError, match="flow_grow_score"):
        flow_objects.FlowObjectConfig(flow_seed_score=2.0, flow_grow_score=3.0).validate()


# ---------------------------------------------------------------- motion in depth (region-level test)

def _box_scene(H=240, W=320):
    """Exact disparity of a level camera 1.1 m above flat ground (0.3 m baseline, f 228.5 px, horizon
    at row 120), a backdrop at 20 m and a 0.5 m box standing 5.7 m ahead (disparity 12 px)."""
    K = np.array([[228.5, 0, 160], [0, 228.5, 120], [0, 0, 1]])
    v = np.mgrid[0:H, 0:W][0].astype(np.float32)
    disp = np.where(v > 125, 0.3 / 1.1 * (v - 120), 228.5 * 0.3 / 20).astype(np.float32)
    box = np.zeros((H, W), bool)
    box[123:153, 130:160] = True  # bottom row 152: where the ground has disparity 12 px
    disp[box] = 12.0
    return disp, K, box


def test_ground_plane_and_depth_proposals():
    disp, K, box = _box_scene()
    ground, slope = flow_objects.ground_plane(disp)
    assert slope == pytest.approx(0.3 / 1.1, rel=1e-3)
    assert ground[200:, :].all() and not ground[box][:-10].any()  # the box's upper part stands up from it
    regions = flow_objects.depth_proposals(disp, K, 0.3, flow_objects.FlowObjectConfig())
    assert len(regions) == 1 and (regions[0] & box).sum() >= 0.6 * box.sum()  # the box, not the backdrop


@pytest.mark.parametrize("fwd,bwd,moving", [(0.10, 0.10, True), (-0.10, -0.10, True), (0.02, 0.02, False),
                                            (0.10, -0.10, False), (0.10, None, True)])
def test_depth_moving_regions(fwd, bwd, moving):
    disp, K, box = _box_scene()
    rng = np.random.default_rng(0)
    rates = []
    for r in (fwd, bwd):
        if r is not None:  # a region's per-pixel noise far above the rate: only the median sees it
            rates.append([(np.where(box, r, 0.0) + rng.normal(0, 0.3, disp.shape)).astype(np.float32)])
    out = flow_objects.depth_moving_regions(rates, disp, K, 0.3, flow_objects.FlowObjectConfig())
    assert out[box].mean() > 0.5 if moving else not out.any()


def test_finds_an_object_moving_away_that_the_pair_test_misses():
    # seed 8811 (not in tiny_data, the benchmark or other tests): forward camera, one object 6 m
    # ahead moving straight away by 0.84 m over 12 frames (a disparity change of ~0.13 px per frame)
    clip = synth.generate_clip(8811, num_frames=12, camera_motion="forward", num_objects=2, num_moving=1,
                               object_motions=("translate",), directions=("away", "toward"), depth_range_m=(5.5, 7.0))
    disp, poses = _estimate(clip)
    mover = [g["id"] for g in clip.gt["objects"] if g["motion"] != "static"]
    objects, log, _ = flow_objects.flow_objects(clip.left, disp, clip.K, clip.baseline_m, poses)
    assert sorted(flow_objects.match_to_gt(objects, clip.gt).values()) == mover and len(objects) == 1
    off = flow_objects.FlowObjectConfig(flow_depth_gap=0, flow_region_score=0)  # the pixel test alone
    assert flow_objects.flow_objects(clip.left, disp, clip.K, clip.baseline_m, poses, off)[0] == []


def test_ground_patch_ratio():
    disp, _, box = _box_scene()
    patch = np.zeros_like(box)
    patch[170:190, 60:120] = True  # a patch of the ground (a shadow, say)
    slopes = [flow_objects.ground_plane(disp)[1]]
    assert flow_objects.ground_patch_ratio({0: patch}, disp[None], slopes) == pytest.approx(1.0, abs=0.01)
    assert flow_objects.ground_patch_ratio({0: box}, disp[None], slopes) < 0.2


def test_depth_test_falls_back_to_the_shorter_gap():
    # a panning camera takes the region out of view over the long gap (NaN there): the shorter gap decides
    disp, K, box = _box_scene()
    gone = np.full(disp.shape, np.nan, np.float32)
    short = np.where(box, 0.1, 0.0).astype(np.float32)
    cfg = flow_objects.FlowObjectConfig()
    assert flow_objects.depth_moving_regions([[gone, short]], disp, K, 0.3, cfg)[box].mean() > 0.5
    assert not flow_objects.depth_moving_regions([[gone]], disp, K, 0.3, cfg).any()


# ---------------------------------------------------------------- duplicate tracks of one object

def _parts_tracks(offsets_px, n=6, H=240, W=320):
    """Kept-track stand-ins for ``_merge_parts``: for each (du, dv) offset a 16 x 16 px box at disparity
    12 px (5.71 m with f 228.5 px, baseline 0.3 m), all moving 3 px right per frame; identity poses."""
    K = np.array([[228.5, 0, 160], [0, 228.5, 120], [0, 0, 1]])
    disp = np.full((n, H, W), 12.0, np.float32)
    kept = []
    for k, (du, dv) in enumerate(offsets_px):
        filled = {}
        for t in range(n):
            m = np.zeros((H, W), bool)
            m[100 + dv:116 + dv, 100 + du + 3 * t:116 + du + 3 * t] = True
            filled[t] = m
        kept.append(({"candidate": k, "frames_seen": n - k, "kept": True}, {"filled": filled}))
    return kept, disp, K, np.tile(np.eye(4), (n, 1, 1))


def test_duplicate_tracks_of_one_object_are_merged():
    # the top and bottom of one object: 25 px (0.62 m) apart vertically with a 9 px gap (not touching,
    # farther than flow_merge_m in 3D), moving together: one object, the merge logged with its reason
    kept, disp, K, poses = _parts_tracks([(0, 0), (0, 25)])
    cfg = flow_objects.FlowObjectConfig()
    out = flow_objects._merge_parts(kept, disp, K, 0.3, poses, cfg)
    assert len(out) == 1 and out[0][0]["candidate"] == 0
    dropped = kept[1][0]
    assert dropped["kept"] is False and dropped["merged_into"] == 0
    assert "moving together" in dropped["reason"] and "candidate 0" in dropped["reason"]
    assert out[0][1]["filled"][3].sum() == 2 * 16 * 16  # both parts' pixels now belong to the object
    # the first version's tests alone (touching, or 3D centres within flow_merge_m) keep them apart
    kept, disp, K, poses = _parts_tracks([(0, 0), (0, 25)])
    off = flow_objects.FlowObjectConfig(flow_dup_m=0)
    assert len(flow_objects._merge_parts(kept, disp, K, 0.3, poses, off)) == 2
    # two objects side by side (40 px = 1.0 m apart top-down) moving in parallel stay two
    kept, disp, K, poses = _parts_tracks([(0, 0), (40, 0)])
    assert len(flow_objects._merge_parts(kept, disp, K, 0.3, poses, cfg)) == 2


def test_moving_together_needs_a_steady_offset():
    a = {t: np.array([0.1 * t, 0.0, 5.0]) for t in range(8)}
    b = {t: np.array([0.1 * t + 0.1, 0.6, 5.05]) for t in range(8)}  # below it, offset fixed
    assert flow_objects.moving_together(a, b, 0.4, 0.15)[0]
    c = {t: np.array([0.1 * t + 0.1 + 0.3 * (-1) ** t, 0.6, 5.0]) for t in range(8)}  # same place on average, jumping about
    assert not flow_objects.moving_together(a, c, 0.4, 0.15)[0]
    assert not flow_objects.moving_together(a, {t: b[t] for t in (0, 1)}, 0.4, 0.15)[0]  # too few common frames


@pytest.mark.parametrize("box_score,moving", [(3.6, True), (2.0, False)])
def test_score_moving_regions(box_score, moving):
    # a steady 3-4 sigma on every pixel of an object, none above the seed level (4): the region's
    # median decides; static noise (the length of a 3D unit normal, median ~1.5) does not
    disp, K, box = _box_scene()
    rng = np.random.default_rng(1)
    score = np.linalg.norm(rng.normal(0, 1, disp.shape + (3,)), axis=-1).astype(np.float32)
    score[box] = np.clip(box_score + rng.normal(0, 0.2, box.sum()), 0, 3.95)
    cfg = flow_objects.FlowObjectConfig()
    assert not (flow_objects.moving_regions(np.nan_to_num(score), disp, K, 0.3, cfg) > 0)[box].any()
    props = flow_objects.depth_proposals(disp, K, 0.3, cfg)
    out = flow_objects.score_moving_regions(score, disp, K, 0.3, cfg, props)
    assert out[box].mean() > 0.5 if moving else not out.any()
    score[box] = np.nan  # unknown (occluded) over the region: no verdict
    assert not flow_objects.score_moving_regions(score, disp, K, 0.3, cfg, props).any()
