"""Stereo bundle adjustment for :mod:`.odometry`: all camera poses but the first and the landmarks.

Levenberg-Marquardt with Huber weights on the left-image reprojection error plus the disparity
error ``fx * baseline / z - d`` weighted by the disparity's noise, which keeps the scale metric.
The points are eliminated by the Schur complement; the reduced camera system is dense and small
(6 (N-1) unknowns for N frames). Conventions as in :mod:`.odometry`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from mllm4d_lite.curation.odometry import OdometryConfig, _Tracks


def rodrigues(rvecs: np.ndarray) -> np.ndarray:
    """(M, 3) rotation vectors -> (M, 3, 3) rotation matrices (vectorised Rodrigues)."""
    theta = np.linalg.norm(rvecs, axis=1)[:, None, None]
    safe = np.where(theta > 1e-12, theta, 1.0)
    k = rvecs[:, :, None] / safe
    kx = np.zeros((len(rvecs), 3, 3))
    kx[:, 0, 1], kx[:, 0, 2] = -k[:, 2, 0], k[:, 1, 0]
    kx[:, 1, 0], kx[:, 1, 2] = k[:, 2, 0], -k[:, 0, 0]
    kx[:, 2, 0], kx[:, 2, 1] = -k[:, 1, 0], k[:, 0, 0]
    eye = np.eye(3)[None]
    return eye + np.sin(theta) * kx + (1 - np.cos(theta)) * (kx @ kx)



def _huber_weights(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 1.0, delta / np.maximum(a, 1e-12))


def _huber_cost(r: np.ndarray, delta: float) -> float:
    a = np.abs(r)
    return float(np.sum(np.where(a <= delta, 0.5 * a**2, delta * (a - 0.5 * delta))))


def _ba_terms(rot: np.ndarray, t: np.ndarray, pts: np.ndarray, f: np.ndarray, p: np.ndarray, uv: np.ndarray,
              disp: np.ndarray, has_d: np.ndarray, K: np.ndarray, fb: float, sigma_d: np.ndarray,
              jac: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Residuals (m, 3): u, v reprojection (px) and disparity error / sigma_d; Jacobians w.r.t. a
    left rotation increment + translation of the pose (m, 3, 6) and w.r.t. the point (m, 3, 3)."""
    rx = np.einsum("nij,nj->ni", rot[f], pts[p])
    pc = rx + t[f]
    z = np.maximum(pc[:, 2], 1e-3)
    res = np.stack([K[0, 0] * pc[:, 0] / z + K[0, 2] - uv[:, 0],
                    K[1, 1] * pc[:, 1] / z + K[1, 2] - uv[:, 1],
                    np.where(has_d, (fb / z - disp) / sigma_d, 0.0)], axis=1)
    if not jac:
        return res, None, None
    m = len(pc)
    dres = np.zeros((m, 3, 3))  # d residual / d p_cam
    dres[:, 0, 0] = K[0, 0] / z
    dres[:, 0, 2] = -K[0, 0] * pc[:, 0] / z**2
    dres[:, 1, 1] = K[1, 1] / z
    dres[:, 1, 2] = -K[1, 1] * pc[:, 1] / z**2
    dres[:, 2, 2] = np.where(has_d, -fb / z**2 / sigma_d, 0.0)
    skew = np.zeros((m, 3, 3))  # d p_cam / d dr = -[R X]_x for p_cam = R(dr) R X + t
    skew[:, 0, 1], skew[:, 0, 2] = rx[:, 2], -rx[:, 1]
    skew[:, 1, 0], skew[:, 1, 2] = -rx[:, 2], rx[:, 0]
    skew[:, 2, 0], skew[:, 2, 1] = rx[:, 1], -rx[:, 0]
    j_pose = np.concatenate([dres @ skew, dres], axis=2)
    j_pt = dres @ rot[f]
    return res, j_pose, j_pt


def _group_sum(index: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Sum rows of ``values`` (m, ...) into ``size`` groups by ``index`` (m,) (bincount, no BLAS)."""
    flat = values.reshape(len(values), -1)
    k = flat.shape[1]
    idx = (index[:, None] * k + np.arange(k)[None, :]).ravel()
    return np.bincount(idx, weights=flat.ravel(), minlength=size * k).reshape((size,) + values.shape[1:])


def ba_solve(rot: np.ndarray, t: np.ndarray, pts: np.ndarray, f: np.ndarray, p: np.ndarray, uv: np.ndarray,
              disp: np.ndarray, K: np.ndarray, fb: float, sigma_d: np.ndarray, iters: int,
              delta: float = 1.5) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """Levenberg-Marquardt with Huber weights and the Schur complement on the points; the reduced
    camera system (6 (N-1) unknowns) is dense and built with einsum rather than a BLAS product
    (multi-threaded BLAS stalled badly on a shared 2-core machine). Pose 0 is fixed."""
    n, n_pts = len(rot), len(pts)
    has_d = np.isfinite(disp)
    disp = np.nan_to_num(disp)
    args = (f, p, uv, disp, has_d, K, fb, sigma_d)
    res, jc, jp = _ba_terms(rot, t, pts, *args)
    cost = _huber_cost(res, delta)
    costs, lam = [cost], 1e-3
    nc = 6 * (n - 1)
    mov = f > 0
    eye3 = np.eye(3)
    for _ in range(iters):
        w = _huber_weights(res, delta)[:, :, None]                 # (m, 3, 1)
        jc_w, jp_w = jc * w, jp * w
        h_cc = _group_sum(f, np.einsum("mri,mrj->mij", jc_w, jc), n)
        h_pp = _group_sum(p, np.einsum("mri,mrj->mij", jp_w, jp), n_pts)
        g_c = _group_sum(f, np.einsum("mri,mr->mi", jc_w, res), n)
        g_p = _group_sum(p, np.einsum("mri,mr->mi", jp_w, res), n_pts)
        h_cp = np.einsum("mri,mrj->mij", jc_w, jp)                 # (m, 6, 3), one obs per (frame, point)
        h_cp_dense = np.zeros((n - 1, 6, n_pts, 3))
        h_cp_dense[f[mov] - 1, :, p[mov], :] = h_cp[mov]
        h_cp_dense = h_cp_dense.reshape(nc, n_pts, 3)
        cost_new = cost
        while True:
            h_pp_inv = np.linalg.inv(h_pp + lam * (np.einsum("nii->ni", h_pp)[:, :, None] * eye3) + 1e-9 * eye3)
            w_obs = np.einsum("mij,mjk->mik", h_cp, h_pp_inv[p])   # (m, 6, 3)
            w_dense = np.einsum("cpi,pij->cpj", h_cp_dense, h_pp_inv)
            schur = -np.einsum("cpi,dpi->cd", w_dense, h_cp_dense)   # einsum: no threaded BLAS
            for k in range(1, n):
                blk = h_cc[k] + lam * np.diag(np.diag(h_cc[k])) + 1e-9 * np.eye(6)
                schur[6 * (k - 1): 6 * k, 6 * (k - 1): 6 * k] += blk
            reduced = _group_sum(f, np.einsum("mij,mj->mi", w_obs, g_p[p]), n)
            rhs = -(g_c[1:] - reduced[1:]).ravel()
            try:
                d_c = np.linalg.solve(schur, rhs)
            except np.linalg.LinAlgError:
                lam *= 10
                if lam > 1e6:
                    break
                continue
            d_c = np.vstack([np.zeros((1, 6)), d_c.reshape(n - 1, 6)])
            back = _group_sum(p, np.einsum("mij,mi->mj", h_cp, d_c[f]), n_pts)
            d_p = -np.einsum("pij,pj->pi", h_pp_inv, g_p + back)
            rot_new = rodrigues(d_c[:, :3]) @ rot
            t_new = t + d_c[:, 3:]
            pts_new = pts + d_p
            res_new, _, _ = _ba_terms(rot_new, t_new, pts_new, *args, jac=False)
            cost_new = _huber_cost(res_new, delta)
            if cost_new < cost:
                rot, t, pts, lam = rot_new, t_new, pts_new, max(lam / 3, 1e-7)
                res, jc, jp = _ba_terms(rot, t, pts, *args)
                break
            lam *= 5
            if lam > 1e6:
                break
        improved = cost - cost_new
        costs.append(min(cost, cost_new))
        cost = costs[-1]
        if lam > 1e6 or improved < 1e-6 * max(cost, 1e-12):
            break
    return rot, t, pts, costs


def _measured_sigma(resid_px: np.ndarray, sigma: np.ndarray, has_d: np.ndarray,
                    scale: float) -> tuple[np.ndarray, dict[float, float]]:
    """Disparity noise (m,) px for the BA weights: per noise class (the configured sigma: KLT-refined
    or SGBM) the larger of the setting and ``scale`` x the robust spread (1.4826 MAD) of the
    disparity residuals at the initial poses. Why: the settings describe clean frames, while on
    compressed, noisy or low-resolution clips the disparities of one frame err together (measured
    in docs/results.md) and an over-weighted disparity term then drags static cameras forward."""
    out = sigma.copy()
    measured: dict[float, float] = {}
    if scale <= 0:
        return out, measured
    for value in np.unique(sigma):
        sel = (sigma == value) & has_d
        if sel.sum() >= 20:
            spread = 1.4826 * float(np.median(np.abs(resid_px[sel])))
            measured[float(value)] = spread
            out[sigma == value] = max(float(value), scale * spread)
    return out, measured


def bundle_adjust(poses: np.ndarray, tracks: _Tracks, K: np.ndarray, baseline_m: float,
                  cfg: OdometryConfig, static: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """Refine camera_to_world (N, 4, 4) (frame 0 fixed) and landmarks; returns new poses and stats.

    ``static`` (N,) bool: frames that the static test of :mod:`.odometry` tied to their predecessor;
    such a frame shares its predecessor's pose in the adjustment (a run of static frames is one
    pose; a run at the start stays at frame 0's), so per-frame disparity errors cannot move a camera
    that was found at rest.
    """
    frame, lid, uv, disp, sigma = tracks.arrays()
    good = ~tracks.bad[lid] & (tracks.world_cnt[lid] > 0)
    seen = np.bincount(lid[good], minlength=len(tracks.bad))
    keep = good & (seen[lid] >= cfg.ba_min_track_len)
    if cfg.ba_max_landmarks > 0:
        # an even stride over landmark ids keeps their spread over the image and over depth
        # (taking the longest tracks instead picks mostly far background and BA then drifts)
        cand = np.flatnonzero(seen >= cfg.ba_min_track_len)
        chosen = cand[np.linspace(0, len(cand) - 1, min(len(cand), cfg.ba_max_landmarks)).astype(int)] if len(cand) else cand
        keep &= np.isin(lid, chosen)
    frame, lid, uv, disp, sigma = frame[keep], lid[keep], uv[keep], disp[keep], sigma[keep]
    n = len(poses)
    static = np.zeros(n, bool) if static is None else np.asarray(static, bool).copy()
    static[0] = False
    slot_of = np.cumsum(~static) - 1          # frame -> pose slot (slot 0 = frame 0, fixed)
    first = np.flatnonzero(~static)           # the frame that opens each slot
    if len(frame) < 20 or len(first) < 2:
        return poses, {"ba_observations": float(len(frame)), "ba_pose_slots": float(len(first))}
    frame = slot_of[frame]
    uniq, pt_idx = np.unique(lid, return_inverse=True)
    pts0 = tracks.world_sum[uniq] / tracks.world_cnt[uniq, None]
    rot0 = np.transpose(poses[first, :3, :3], (0, 2, 1)).copy()   # world-to-camera rotations
    t0 = -np.einsum("nij,nj->ni", rot0, poses[first, :3, 3])
    fb = K[0, 0] * baseline_m
    has_d = np.isfinite(disp)
    res0, _, _ = _ba_terms(rot0, t0, pts0, frame, pt_idx, uv, np.nan_to_num(disp), has_d, K, fb, sigma, jac=False)
    sigma, measured = _measured_sigma(res0[:, 2] * sigma, sigma, has_d, cfg.ba_sigma_scale)
    if measured:
        res0, _, _ = _ba_terms(rot0, t0, pts0, frame, pt_idx, uv, np.nan_to_num(disp), has_d, K, fb, sigma, jac=False)
    rot, t, pts, costs = ba_solve(rot0, t0, pts0, frame, pt_idx, uv, disp, K, fb, sigma, cfg.ba_max_iterations)
    res1, _, _ = _ba_terms(rot, t, pts, frame, pt_idx, uv, np.nan_to_num(disp), has_d, K, fb, sigma, jac=False)
    new_poses = np.repeat(np.eye(4)[None], n, axis=0)
    new_poses[:, :3, :3] = np.transpose(rot, (0, 2, 1))[slot_of]
    new_poses[:, :3, 3] = -np.einsum("nji,nj->ni", rot, t)[slot_of]

    def rms_px(res: np.ndarray) -> float:
        return float(np.sqrt(np.mean(res[:, :2] ** 2)))

    stats = {"ba_observations": float(len(frame)), "ba_landmarks": float(len(uniq)), "ba_pose_slots": float(len(first)),
             "ba_rms_px_before": rms_px(res0), "ba_rms_px_after": rms_px(res1), "ba_iterations": float(len(costs) - 1)}
    for name, value in (("klt", cfg.ba_klt_sigma_px), ("sgbm", cfg.ba_disparity_sigma_px)):
        if float(value) in measured:
            stats[f"ba_disparity_spread_px_{name}"] = measured[float(value)]
    return new_poses, stats
