"""Object centres and relative yaw against ground truth on generated clips."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from mllm4d_lite.curation import odometry, stereo, synth, tracks


@pytest.fixture(scope="module")
def clip_run():
    # seed 211: a static camera (exact poses not needed) and several objects, some moving
    clip = synth.generate_clip(211, num_frames=12, camera_motion="forward", num_objects=4, num_moving=3)
    max_disp = stereo.max_disparity_for(clip.focal_px, clip.baseline_m, 1.0, clip.width)
    disp = np.stack([stereo.compute_disparity(clip.left[i], clip.right[i], max_disp) for i in range(clip.num_frames)])
    vo = odometry.estimate_trajectory(clip.left, disp, clip.K, clip.baseline_m, clip.masks > 0, right=clip.right)
    return clip, disp, vo.camera_to_world


def _errors(clip, centers, gt_obj, poses_gt):
    out = []
    for i, c in enumerate(centers):
        if c is None or not gt_obj["visible"][i]:
            continue
        g = np.asarray(gt_obj["centers_world"][i])
        out.append(np.linalg.norm(np.asarray(c) - g) / np.linalg.norm(g - poses_gt[i, :3, 3]))
    return out


def test_centres_within_10_percent_of_distance(clip_run):
    clip, disp, poses = clip_run
    gt_poses = np.asarray(clip.gt["camera_to_world"])
    rel = []
    for obj in clip.gt["objects"]:
        centers, stats = tracks.object_centers(clip.masks, obj["id"], disp, clip.K, clip.baseline_m, poses)
        assert len(centers) == clip.num_frames
        # unseen frames must be null
        for i, c in enumerate(centers):
            if not (clip.masks[i] == obj["id"]).any():
                assert c is None
        rel += _errors(clip, centers, obj, gt_poses)
    assert len(rel) >= 10
    assert np.median(rel) <= 0.10, np.median(rel)
    assert np.median(rel) <= 0.05  # well above what these clips give; guards against regressions


def test_near_surface_push_moves_centre_away_from_camera():
    # points on the front half of a sphere of radius 0.4 m centred 5 m ahead
    rng = np.random.default_rng(0)
    d = rng.normal(size=(4000, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    front = d[d[:, 2] < 0] * 0.4 + [0.0, 0.0, 5.0]
    plain = tracks.surface_to_center(front, touches_border=False, factor=0.0)
    pushed = tracks.surface_to_center(front, touches_border=False, factor=0.7)
    assert plain[2] < 4.85  # the surface centroid sits in front of the centre
    assert abs(pushed[2] - 5.0) < abs(plain[2] - 5.0)
    assert np.allclose(tracks.surface_to_center(front, True, 0.7), plain)


def test_kabsch_yaw_sign_and_value():
    rng = np.random.default_rng(1)
    p = rng.normal(size=(30, 2))
    for deg in (-40.0, 10.0, 75.0):
        a = math.radians(deg)
        q = np.c_[math.cos(a) * p[:, 0] - math.sin(a) * p[:, 1], math.sin(a) * p[:, 0] + math.cos(a) * p[:, 1]] + [3, -1]
        assert math.degrees(tracks.kabsch_yaw(p, q)) == pytest.approx(deg, abs=1e-9)


def test_turning_object_yaw_follows_ground_truth():
    clip = synth.generate_clip(212, num_frames=12, camera_motion="static", num_objects=1, num_moving=1)
    obj = clip.gt["objects"][0]
    assert obj["motion"].startswith(("turn", "arc")), obj["motion"]  # this seed turns
    gt_disp = clip.focal_px * clip.baseline_m / clip.gt_depth_m
    poses = np.asarray(clip.gt["camera_to_world"])
    grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in clip.left]
    yaws = tracks.object_yaws(grays, clip.masks, obj["id"], gt_disp, clip.K, clip.baseline_m, poses)
    known = [i for i, y in enumerate(yaws) if y is not None]
    assert len(known) >= clip.num_frames // 2
    f0, f1 = known[0], known[-1]
    gt_change = math.degrees(np.unwrap(obj["yaw_rad"])[f1] - np.unwrap(obj["yaw_rad"])[f0])
    est_change = math.degrees(yaws[f1] - yaws[f0])
    assert yaws[f0] == 0.0
    assert abs(gt_change) > 20
    assert np.sign(est_change) == np.sign(gt_change)
    assert abs(est_change - gt_change) < 20, (est_change, gt_change)


def test_no_mask_pixels_gives_nulls():
    masks = np.zeros((3, 20, 30), np.uint16)
    disp = np.full((3, 20, 30), 10.0, np.float32)
    centers, stats = tracks.object_centers(masks, 5, disp, np.array([[100, 0, 15], [0, 100, 10], [0, 0, 1.0]]), 0.1,
                                           np.repeat(np.eye(4)[None], 3, 0))
    assert centers == [None, None, None] and stats["frames_with_center"] == 0


def _tiny_clip_run(name):
    from pathlib import Path

    from mllm4d_lite.curation.sources import load_native

    clip_dir = Path(__file__).resolve().parents[1] / "tiny_data" / name
    if not clip_dir.is_dir():
        pytest.skip(f"{clip_dir} not found (tiny_data ships with the repository)")
    clip = load_native(clip_dir, load_depth=False)
    max_disp = stereo.max_disparity_for(clip.focal_px, clip.baseline_m, 1.0, clip.width)
    disp = np.stack([stereo.compute_disparity(clip.left[i], clip.right[i], max_disp) for i in range(clip.num_frames)])
    return clip, disp, np.asarray(clip.gt["camera_to_world"])


def _centre_errors_m(clip, centers, obj_id, frames):
    gt = {o["id"]: o for o in clip.gt["objects"]}[obj_id]
    return {i: float(np.linalg.norm(np.asarray(centers[i]) - gt["centers_world"][i])) for i in frames
            if centers[i] is not None}


def test_object_leaving_the_view_keeps_its_centre():
    # tiny_data/synth_s00024: a static-centred green sphere (r 0.42 m, ~2.7 m away) slides out of
    # the right border from frame 7. Without the cut-side handling its centre would jump towards
    # the camera there (the near-surface push dropped and the visible centroid shifted).
    clip, disp, poses = _tiny_clip_run("synth_s00024")
    oid = next(o["id"] for o in clip.gt["objects"] if o["label"] == "green sphere")
    centers, stats = tracks.object_centers(clip.masks, oid, disp, clip.K, clip.baseline_m, poses)
    at_border = [i for i in range(clip.num_frames) if (clip.masks[i] == oid)[:, -1].any()]
    assert len(at_border) >= 6
    err = _centre_errors_m(clip, centers, oid, at_border)
    assert len(err) >= 4, err  # most border frames keep a centre ...
    assert max(err.values()) <= 0.12, err  # ... close to the truth (or are null)
    inside = _centre_errors_m(clip, centers, oid, [i for i in range(clip.num_frames) if i not in at_border])
    assert max(inside.values()) <= 0.12, inside


def test_occluded_object_centre_stays_near_truth_or_null():
    # tiny_data/synth_s00026: the green cube passes in front of the purple cylinder's lower part
    # from frame 6 on, which lifts the cylinder's visible centroid.
    clip, disp, poses = _tiny_clip_run("synth_s00026")
    oid = next(o["id"] for o in clip.gt["objects"] if o["label"] == "purple cylinder")
    centers, _ = tracks.object_centers(clip.masks, oid, disp, clip.K, clip.baseline_m, poses)
    err = _centre_errors_m(clip, centers, oid, range(6, clip.num_frames))
    assert len(err) >= 3, err
    assert np.median(list(err.values())) <= 0.15, err
    assert np.mean([e <= 0.2 for e in err.values()]) >= 0.8, err


# --- object yaw change against ground truth (issue 24: "yaw under-estimated ~0.6x") -------------
# Clips: a static camera and ONE object turning in place 3-5 m ahead, ground-truth disparity (so
# only the yaw estimate itself is tested); seeds 7300-7305 are used by no other test nor tiny_data.
# scripts/bench_object_yaw.py measures the same ratio on 20 clips with SGBM and estimated poses.


def _turning_clip(seed: int):
    clip = synth.generate_clip(seed, 10, camera_motion="static", num_objects=1, num_moving=1,
                               object_motions=("turn",), depth_range_m=(3.0, 5.0))
    obj = clip.gt["objects"][0]
    assert obj["motion"].startswith("turn"), obj["motion"]
    return clip, obj, clip.focal_px * clip.baseline_m / clip.gt_depth_m, np.asarray(clip.gt["camera_to_world"])


def _yaw_ratio(seed: int) -> tuple[float, float]:
    """(estimated / true yaw change over the estimated span, true change in degrees)."""
    clip, obj, gt_disp, poses = _turning_clip(seed)
    grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in clip.left]
    yaws = tracks.object_yaws(grays, clip.masks, obj["id"], gt_disp, clip.K, clip.baseline_m, poses)
    known = [i for i, y in enumerate(yaws) if y is not None]
    assert len(known) >= 8, yaws
    true = np.unwrap(obj["yaw_rad"])[known[-1]] - np.unwrap(obj["yaw_rad"])[known[0]]
    return (yaws[known[-1]] - yaws[known[0]]) / true, math.degrees(true)


def test_kabsch_on_exact_surface_correspondences_recovers_the_turn():
    # Visible surface points of a rendered turning cone (seed 7300), moved by the true rigid turn:
    # the lifting, world transform and 2D Kabsch give the true yaw change exactly, so any shortfall
    # of object_yaws comes from the point tracks, not from the geometry or the sign convention.
    clip, obj, gt_disp, poses = _turning_clip(7300)
    yaw, centres = np.unwrap(obj["yaw_rad"]), np.asarray(obj["centers_world"])
    v, u = np.nonzero(clip.masks[0] == obj["id"])
    p = tracks._to_world(odometry.backproject(np.c_[u, v].astype(float), gt_disp[0][v, u], clip.K, clip.baseline_m),
                         poses[0])
    for i in (3, 9):
        q = p - centres[0]
        q[:, [0, 2]] = tracks._rotate_xz(q[:, [0, 2]], yaw[i] - yaw[0])
        q += centres[i]
        est = tracks.kabsch_yaw(p[:, [0, 2]], q[:, [0, 2]])
        assert est == pytest.approx(yaw[i] - yaw[0], abs=1e-9)


@pytest.mark.parametrize("seed", [7302, 7304])
def test_turning_cube_yaw_ratio_near_one(seed):
    # a cube's silhouette and shading turn with it: the KLT tracks follow the surface
    ratio, true_deg = _yaw_ratio(seed)
    assert abs(true_deg) > 60
    assert 0.9 <= ratio <= 1.1, ratio


def test_round_object_yaw_sign_right():
    # cone, two spheres (seeds 7303, 7305, 7301): each one's sign is right and its ratio near one
    # (0.95-1.03 here, docs/results.md; before the texture fit for solids of revolution: 0.53-0.84)
    ratios = [_yaw_ratio(s)[0] for s in (7303, 7305, 7301)]
    assert min(ratios) > 0.85, ratios
    assert max(ratios) < 1.15, ratios


def test_round_object_yaw_ratio_near_one():
    # issue 24: the median over the three round objects hits the target 0.9-1.1
    ratios = [_yaw_ratio(s)[0] for s in (7303, 7305, 7301)]
    assert 0.9 <= float(np.median(ratios)) <= 1.1, ratios


def test_round_and_box_objects_are_told_apart():
    # a turning cube changes its silhouette's width / height, a cone or sphere does not; the cube
    # keeps the point-track (Kabsch) path that the round objects leave
    for seed, is_round in ((7302, False), (7304, False), (7303, True), (7301, True)):
        clip, obj, gt_disp, _ = _turning_clip(seed)
        cv = tracks._aspect_cv(clip.masks, obj["id"], gt_disp, min_pixels=20)
        assert cv is not None
        assert (cv < tracks.TrackConfig().yaw_round_max_aspect_cv) == is_round, (seed, obj["label"], cv)


def test_revolution_points_lie_on_the_rendered_surface():
    # the silhouette-only surface model (unit axis distance, scaled by the true axis distance) puts
    # the pixels of a rendered cone within 2 cm of their true depth
    clip, obj, gt_disp, poses = _turning_clip(7303)
    mask = clip.masks[0] == obj["id"]
    bearing, half = tracks._revolution_rows(mask, clip.K)
    v, u = np.nonzero(cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)))
    pts, ok = tracks._revolution_points(u, v, bearing, half, clip.K)
    centre_cam = np.asarray(obj["centers_world"][0]) - poses[0][:3, 3]  # static camera at the origin frame
    axis_dist = math.hypot(centre_cam[0], centre_cam[2])
    err = np.abs(pts[ok, 2] * axis_dist - clip.gt_depth_m[0][v[ok], u[ok]])
    assert ok.mean() > 0.9
    assert np.median(err) < 0.02, np.median(err)


def test_round_yaw_off_uses_point_tracks():
    # yaw_round_max_aspect_cv = 0 switches the texture fit off: the KLT/Kabsch chain's shortfall
    # on a round object comes back (docs/results.md), so the two paths really differ
    clip, obj, gt_disp, poses = _turning_clip(7301)
    grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in clip.left]
    off = tracks.object_yaws(grays, clip.masks, obj["id"], gt_disp, clip.K, clip.baseline_m, poses,
                             tracks.TrackConfig(yaw_round_max_aspect_cv=0.0))
    on = tracks.object_yaws(grays, clip.masks, obj["id"], gt_disp, clip.K, clip.baseline_m, poses)
    true = np.unwrap(obj["yaw_rad"])[-1] - np.unwrap(obj["yaw_rad"])[0]
    assert on[0] == 0.0 and on[-1] is not None and off[-1] is not None
    assert abs(on[-1] - true) < abs(off[-1] - true)
