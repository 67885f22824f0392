"""Stereo visual odometry against ground truth on generated clips (seeds not used in tiny_data)."""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from mllm4d_lite.curation import bundle_adjust, odometry, stereo, synth
from mllm4d_lite.curation.clip import load_clip
from mllm4d_lite.curation.scorecard import trajectory_ate

MOTIONS = {"static": 201, "forward": 202, "right": 203, "pan_left": 204, "forward_pan_left": 205}
# three seeds per moving camera: the target is asserted on the median clip, and no clip may miss
# it by more than half (one seed alone is a coin toss near the target)
MOVING_SEEDS = {"forward": (202, 206, 210), "right": (203, 207, 211), "pan_left": (204, 208, 212),
                "forward_pan_left": (205, 209, 213)}
# the demo's setting (tiny_data/lateral): 160x120, 40 deg, camera 0.5 m high, one near object
# sliding 1.2-1.8 m sideways; its motion looks like a small camera motion to most of the background
LATERAL = dict(camera_motion="static", num_objects=1, num_moving=1, depth_range_m=(2.5, 3.5),
               travel_range_m=(1.2, 1.8), object_motions=("translate",), directions=("left", "right"),
               hfov_deg=40.0, camera_height_m=0.5)


def _disparity(clip) -> np.ndarray:
    max_disp = stereo.max_disparity_for(clip.focal_px, clip.baseline_m, 1.0, clip.width)
    return np.stack([stereo.compute_disparity(clip.left[i], clip.right[i], max_disp) for i in range(clip.num_frames)])


@functools.lru_cache(maxsize=None)
def _run(seed: int, motion: str, num_frames: int = 12):
    clip = synth.generate_clip(seed, num_frames=num_frames, camera_motion=motion)
    disp = _disparity(clip)
    res = odometry.estimate_trajectory(clip.left, disp, clip.K, clip.baseline_m, clip.masks > 0, right=clip.right)
    return clip, disp, res


@pytest.fixture(scope="module")
def runs():
    return {motion: _run(seed, motion) for motion, seed in MOTIONS.items() if motion in ("static", "forward_pan_left")}


def _drift_m(res, clip) -> np.ndarray:
    gt = np.asarray(clip.gt["camera_to_world"])
    return np.linalg.norm(res.camera_to_world[:, :3, 3] - gt[:, :3, 3], axis=1)


def _yaw_rad(c2w: np.ndarray) -> float:
    """Camera turn about its y axis from the first to the last frame."""
    rel = c2w[0, :3, :3].T @ c2w[-1, :3, :3]
    return math.atan2(rel[0, 2], rel[2, 2])


def test_static_camera_drift_below_2cm(runs):
    clip, _, res = runs["static"]
    drift = _drift_m(res, clip)
    assert drift.max() <= 0.02, drift
    assert res.failed_frames == []


@pytest.mark.parametrize("seed", [221, 222])
def test_static_camera_with_moving_object_and_no_masks(seed):
    """Issue 24: moving objects must not pull the camera. Without masks (the mask-free object
    backend's case) the near object of the demo's setting dragged the old estimate 0.75-1.25 m
    (RANSAC inlier counts tie; measured on seeds 221-224); the target is <= 2 cm."""
    clip = synth.generate_clip(seed, 12, 160, 120, **LATERAL)
    assert any(o["motion"].startswith("translate") for o in clip.gt["objects"])
    disp = _disparity(clip)
    res = odometry.estimate_trajectory(clip.left, disp, clip.K, clip.baseline_m, None, right=clip.right)
    assert _drift_m(res, clip).max() <= 0.02
    assert res.quality["vo_static_frames"] == clip.num_frames - 1


def test_static_camera_with_two_movers_in_view():
    clip = synth.generate_clip(231, 12, camera_motion="static", num_objects=3, num_moving=2)
    assert sum(o["motion"] != "static" for o in clip.gt["objects"]) == 2
    disp = _disparity(clip)
    for exclude in (clip.masks > 0, None):
        res = odometry.estimate_trajectory(clip.left, disp, clip.K, clip.baseline_m, exclude, right=clip.right)
        assert _drift_m(res, clip).max() <= 0.02


# the demo clips that the raw-median static test let drift (2.2, 2.9, 2.2, 5.5 cm): at 160x120 after
# H.264 their background tracks thin out and random-walk by 0.2-0.5 px (docs/results.md, issue 24)
DRIFTING_DEMO_CLIPS = ("lateral_s01019", "lateral_s01034", "lateral_s01058", "lateral_s01074")
TINY_DATA = Path(__file__).resolve().parent.parent / "tiny_data"


@pytest.mark.parametrize("clip_id", DRIFTING_DEMO_CLIPS)
def test_static_demo_clip_with_thin_noisy_tracks_drifts_below_2cm(clip_id):
    """Issue 24's static target on the demo's own clips (as ``mllm4d curate`` runs them: decoded
    H.264, masks excluded): the affine-flow static test over all frame pairs keeps them <= 2 cm."""
    clip = load_clip(TINY_DATA / "lateral" / clip_id)
    res = odometry.estimate_trajectory(clip.left, _disparity(clip), clip.K, clip.baseline_m, clip.masks > 0,
                                       right=clip.right)
    assert _drift_m(res, clip).max() <= 0.02
    assert res.quality["vo_static_frames"] >= clip.num_frames - 3


def _synthetic_tracks(flow_px_per_frame, noise_px: float, n: int = 16, m: int = 40, seed: int = 0):
    """A :class:`odometry._Tracks` of ``m`` points over ``n`` frames (160x120): each point moves by
    ``flow_px_per_frame(uv)`` per frame plus a random walk of ``noise_px`` per frame and axis (KLT
    drift), and a fifth of the tracks is replaced every 3 frames (tracks thinning out)."""
    rng = np.random.default_rng(seed)
    tracks = odometry._Tracks()
    uv = np.c_[rng.uniform(5, 155, m), rng.uniform(5, 115, m)]
    ids = tracks.new_ids(m)
    for i in range(n):
        if i:
            uv = uv + flow_px_per_frame(uv) + rng.normal(0, noise_px, uv.shape)
            if i % 3 == 0:
                k = m // 5
                uv[:k] = np.c_[rng.uniform(5, 155, k), rng.uniform(5, 115, k)]
                ids = np.concatenate([tracks.new_ids(k), ids[k:]])
        tracks.add(i, ids, uv, (np.full(m, np.nan), np.full(m, 0.2)), np.eye(4), np.eye(3), 0.3)
    return tracks


def test_static_test_ignores_track_drift_and_catches_slow_divergence():
    """At rest, tracks that random-walk 0.08 px per frame (median ~0.3 px off after 15 frames, which
    broke the old raw-median test) still give one pose for the whole clip; a camera creeping
    forward (divergence 0.15 px per frame at the image edge, ~0.1 px median: about 1 cm per frame at
    3 m in the demo's 160x120 view) is never frozen, nor is a sideways creep of 0.12 px per frame (a
    run must stay within 0.2 px over 4 frames)."""
    cfg = odometry.OdometryConfig()
    args = (16, cfg.static_motion_px, cfg.min_inliers, cfg.static_min_frames)
    still = _synthetic_tracks(lambda uv: 0.0 * uv, 0.08)
    frame, lid, uv, _, _ = still.arrays()
    first = {k: p for k, p in zip(lid[frame == 0], uv[frame == 0])}
    raw = np.median([np.linalg.norm(p - first[k]) for k, p in zip(lid[frame == 8], uv[frame == 8]) if k in first])
    assert raw > cfg.static_motion_px  # the raw displacement alone would break the run
    assert odometry._static_frames(still, *args)[1:].all()
    centre = np.array([80.0, 60.0])
    for creep in (lambda uv: 0.15 * (uv - centre) / 80.0, lambda uv: np.tile([0.12, 0.0], (len(uv), 1))):
        assert not odometry._static_frames(_synthetic_tracks(creep, 0.08, seed=1), *args).any()


def test_slow_camera_is_not_frozen_by_the_static_test():
    """A camera at a quarter of the generator's speed (~1.5 cm per frame, ~0.15 px of image motion
    per frame on forward motion) must still be tracked: no frame may be tied to its predecessor."""
    clip = synth.generate_clip(243, 36, camera_motion="backward")
    clip = dataclasses.replace(clip, left=clip.left[:12], right=clip.right[:12], masks=clip.masks[:12],
                               gt={**clip.gt, "camera_to_world": clip.gt["camera_to_world"][:12]}, gt_depth_m=None)
    disp = _disparity(clip)
    res = odometry.estimate_trajectory(clip.left, disp, clip.K, clip.baseline_m, clip.masks > 0, right=clip.right)
    ate = trajectory_ate(res.camera_to_world, np.asarray(clip.gt["camera_to_world"]))
    assert ate["path_length_m"] > 0.2
    assert res.quality["vo_static_frames"] == 0
    assert ate["ate_median_m"] <= max(0.02, 0.05 * ate["path_length_m"]), ate


@pytest.mark.parametrize("motion", list(MOVING_SEEDS))
def test_moving_camera_ate_within_target(motion):
    ratios, yaw_ratios = [], []
    for seed in MOVING_SEEDS[motion]:
        clip, _, res = _run(seed, motion)
        gt = np.asarray(clip.gt["camera_to_world"])
        ate = trajectory_ate(res.camera_to_world, gt)
        ratios.append(ate["ate_median_m"] / max(0.05, 0.03 * ate["path_length_m"]))
        # heading: the estimated rotation follows the ground truth within 1 degree at the end
        r_err = gt[-1, :3, :3].T @ res.camera_to_world[-1, :3, :3]
        angle = np.degrees(np.arccos(np.clip((np.trace(r_err) - 1) / 2, -1, 1)))
        assert angle < 1.0, (seed, angle)
        assert res.quality["vo_min_inliers"] >= 20
        assert res.quality["vo_static_frames"] == 0
        if "pan" in motion:
            yaw_ratios.append(_yaw_rad(res.camera_to_world) / _yaw_rad(gt))
    assert np.median(ratios) <= 1.0 and max(ratios) <= 1.5, ratios
    # issue 24 reported yaw at ~0.6x: the camera's yaw change is estimated at 0.9-1.1x of the truth
    assert all(0.9 <= r <= 1.1 for r in yaw_ratios), yaw_ratios


def test_pose_selection_rejects_a_mover_that_fools_ransac():
    """A static camera sees far background, a little near ground and a larger near object that
    moved 8 cm sideways since the map was built. Moving the camera 8 cm instead explains the object
    exactly and keeps the far points within 1 px, so RANSAC's inlier count prefers it; the
    truncated-quadratic score of :func:`odometry._estimate_pose` keeps the camera at rest."""
    rng = np.random.default_rng(5)
    K = np.array([[228.5, 0, 160], [0, 228.5, 120], [0, 0, 1.0]])
    far = np.c_[rng.uniform(-8, 8, 100), rng.uniform(-3, 0.5, 100), rng.uniform(15, 25, 100)]
    near = np.c_[rng.uniform(-1.5, 1.5, 40), np.full(40, 1.0), rng.uniform(2, 4, 40)]
    obj = np.c_[rng.uniform(0.3, 0.9, 60), rng.uniform(-0.2, 0.6, 60), rng.uniform(2.9, 3.1, 60)]
    world = np.vstack([far, near, obj])
    now = world.copy()
    now[-60:, 0] += 0.08                                           # the object moved, the camera did not
    uv = now[:, :2] / now[:, 2:] * K[0, 0] + K[:2, 2] + rng.normal(0, 0.15, (len(now), 2))
    _, rvec, tvec, _ = cv2.solvePnPRansac(world, uv, K, None, reprojectionError=2.0, flags=cv2.SOLVEPNP_SQPNP)
    assert np.linalg.norm(tvec) > 0.04                              # plain RANSAC follows the object
    pose, inl, _ = odometry._estimate_pose(world, uv, K, np.eye(4), np.eye(4), odometry.OdometryConfig())
    assert np.linalg.norm(pose[:3, 3]) < 0.005
    assert not inl[-60:].any() and inl[:140].mean() > 0.95


def test_first_pose_is_identity_and_poses_are_rigid(runs):
    _, _, res = runs["forward_pan_left"]
    assert np.allclose(res.camera_to_world[0], np.eye(4))
    rots = res.camera_to_world[:, :3, :3]
    assert np.allclose(rots @ np.transpose(rots, (0, 2, 1)), np.eye(3), atol=1e-6)


def test_bundle_adjustment_recovers_perturbed_poses():
    rng = np.random.default_rng(0)
    K = np.array([[228.5, 0, 160], [0, 228.5, 120], [0, 0, 1.0]])
    fb = K[0, 0] * 0.3
    n, n_pts = 10, 250
    pts = np.c_[rng.uniform(-4, 4, n_pts), rng.uniform(-1, 1.2, n_pts), rng.uniform(3, 20, n_pts)]
    rvec = np.c_[np.zeros(n), np.linspace(0, 0.4, n), np.zeros(n)]
    rot = bundle_adjust.rodrigues(rvec)
    centres = np.c_[np.linspace(0, 0.8, n), np.zeros(n), np.linspace(0, 0.5, n)]
    t = -np.einsum("nij,nj->ni", rot, centres)
    f = np.repeat(np.arange(n), n_pts)
    p = np.tile(np.arange(n_pts), n)
    pc = np.einsum("nij,nj->ni", rot[f], pts[p]) + t[f]
    uv = np.c_[K[0, 0] * pc[:, 0] / pc[:, 2] + K[0, 2], K[1, 1] * pc[:, 1] / pc[:, 2] + K[1, 2]]
    keep = (pc[:, 2] > 1) & (uv[:, 0] > 0) & (uv[:, 0] < 320) & (uv[:, 1] > 0) & (uv[:, 1] < 240)
    f, p, uv, pc = f[keep], p[keep], uv[keep] + rng.normal(0, 0.2, (keep.sum(), 2)), pc[keep]
    disp = fb / pc[:, 2] + rng.normal(0, 0.3, len(f))
    moved = (np.arange(n) > 0)[:, None]
    rot0 = bundle_adjust.rodrigues(rvec + rng.normal(0, 0.01, (n, 3)) * moved)
    t0 = t + rng.normal(0, 0.05, (n, 3)) * moved
    pts0 = pts + rng.normal(0, 0.2, pts.shape)
    before = np.abs(-np.einsum("nji,nj->ni", rot0, t0) - centres).max()
    rot1, t1, _, costs = bundle_adjust.ba_solve(rot0, t0, pts0, f, p, uv, disp, K, fb, np.full(len(f), 0.5), 10)
    after = np.abs(-np.einsum("nji,nj->ni", rot1, t1) - centres).max()
    assert before > 0.05 and after < 0.01, (before, after)
    assert costs[-1] < costs[0]


def test_rodrigues_matches_opencv():
    rng = np.random.default_rng(3)
    rv = rng.normal(0, 1, (5, 3))
    ours = bundle_adjust.rodrigues(rv)
    for r, m in zip(rv, ours):
        assert np.allclose(cv2.Rodrigues(r)[0], m, atol=1e-12)


def test_klt_refines_subpixel_disparity():
    rng = np.random.default_rng(2)
    base = cv2.GaussianBlur(rng.uniform(0, 255, (120, 200)).astype(np.float32), (5, 5), 1.2)
    shift = 6.3  # true disparity, px
    xs, ys = np.meshgrid(np.arange(200, dtype=np.float32), np.arange(120, dtype=np.float32))
    right = base.astype(np.uint8)
    left = cv2.remap(base, xs - shift, ys, cv2.INTER_LINEAR).astype(np.uint8)  # left(x) = right(x - d)
    uv = cv2.goodFeaturesToTrack(left, 50, 0.01, 5).reshape(-1, 2)
    uv = uv[(uv[:, 0] > 20) & (uv[:, 0] < 180) & (uv[:, 1] > 10) & (uv[:, 1] < 110)]
    rough = np.full(len(uv), 6.0)  # an SGBM-like whole-pixel guess
    refined, ok = odometry.refine_disparity_klt(left, right, uv, rough)
    assert ok.mean() > 0.8
    assert np.median(np.abs(refined[ok] - shift)) < 0.05
