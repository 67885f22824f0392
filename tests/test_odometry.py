"""Stereo visual odometry against ground truth on generated clips (seeds not used in tiny_data)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mllm4d_lite.curation import bundle_adjust, odometry, stereo, synth
from mllm4d_lite.curation.scorecard import trajectory_ate

MOTIONS = {"static": 201, "forward": 202, "right": 203, "pan_left": 204, "forward_pan_left": 205}


@pytest.fixture(scope="module")
def runs():
    out = {}
    for motion, seed in MOTIONS.items():
        clip = synth.generate_clip(seed, num_frames=12, camera_motion=motion)
        max_disp = stereo.max_disparity_for(clip.focal_px, clip.baseline_m, 1.0, clip.width)
        disp = np.stack([stereo.compute_disparity(clip.left[i], clip.right[i], max_disp) for i in range(clip.num_frames)])
        res = odometry.estimate_trajectory(clip.left, disp, clip.K, clip.baseline_m, clip.masks > 0, right=clip.right)
        out[motion] = (clip, disp, res)
    return out


def test_static_camera_drift_below_2cm(runs):
    clip, _, res = runs["static"]
    gt = np.asarray(clip.gt["camera_to_world"])
    drift = np.linalg.norm(res.camera_to_world[:, :3, 3] - gt[:, :3, 3], axis=1)
    assert drift.max() <= 0.02, drift
    assert res.failed_frames == []


@pytest.mark.parametrize("motion", ["forward", "right", "pan_left", "forward_pan_left"])
def test_moving_camera_ate_within_target(runs, motion):
    clip, _, res = runs[motion]
    gt = np.asarray(clip.gt["camera_to_world"])
    ate = trajectory_ate(res.camera_to_world, gt)
    assert ate["ate_median_m"] <= max(0.05, 0.03 * ate["path_length_m"]), ate
    # heading: the estimated rotation follows the ground truth within 1 degree at the end
    r_err = gt[-1, :3, :3].T @ res.camera_to_world[-1, :3, :3]
    angle = np.degrees(np.arccos(np.clip((np.trace(r_err) - 1) / 2, -1, 1)))
    assert angle < 1.0, angle
    assert res.quality["vo_min_inliers"] >= 20


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
