"""Stereo visual odometry on the left view: camera_to_world per frame, metric.

Conventions: camera x right, y down, z forward (OpenCV); world = the left camera's frame at
frame 0; poses are 4x4 camera-to-world matrices; metres and pixels.

Pipeline (OpenCV + numpy, no learned parts):

1. Shi-Tomasi corners, spread over a grid of image cells, on static background pixels with a
   smooth, known disparity (object masks dilated and excluded; corners on depth edges have an
   ambiguous depth), tracked frame to frame with pyramidal Lucas-Kanade and a forward-backward
   check; the track set is replenished when it thins out. Each feature's disparity is refined by
   a left-to-right Lucas-Kanade match started at the SGBM value (:func:`refine_disparity_klt`),
   which removes SGBM's sub-pixel bias on far points.
2. Every track is a landmark; its world position is the running mean of its stereo
   back-projections over the frames seen so far. Each new frame's pose is chosen among PnP +
   RANSAC (SQPnP), the previous pose and the constant-velocity prediction by a truncated
   quadratic (MSAC) score at ~3 x the measured reprojection noise, each image cell weighing the
   same (:func:`_estimate_pose`), then refined by Levenberg-Marquardt on its inliers; landmarks
   outside the tight threshold (unmasked movers, their shadows) leave the map. Why: RANSAC's
   inlier count at 2 px ties when a near object's motion looks like a small camera motion plus a
   turn (far points fit both), and the object then dragged a static camera by up to 1.5 m.
3. Static test (:func:`_static_frames`, after the pass): an affine flow field is fitted to the
   background tracks' displacements between every two frames up to 8 apart, and each frame's field
   from frame 0 follows by weighted least squares over all those pairs; a run of >=
   ``static_min_frames`` frames whose fields stay within ``static_motion_px`` (median over the
   tracks) of the run's first frame is one pose, so noise cannot move a camera at rest; a slowly
   moving camera makes short runs and is not frozen. Why the fit over all pairs: on small,
   compressed frames the tracks thin out and random-walk by 0.2-0.5 px over a clip, which broke
   the runs of a raw median test (demo clips drifted up to 5.5 cm).
4. A stereo bundle adjustment (:mod:`.bundle_adjust`: Levenberg-Marquardt, Huber weights, Schur
   complement on the points) refines the poses (a static run shares one; the first is fixed)
   and up to ``ba_max_landmarks`` landmarks, on the left-image reprojection error plus the
   disparity error ``fx * baseline / z - d`` weighted by the disparity's noise (KLT-refined or SGBM,
   at least ``ba_sigma_scale`` x its measured spread), which keeps the scale metric.

Why: chaining PnP frame to frame drifts; tracking against the landmark map and the bundle
adjustment keep the trajectory metric over a clip. Known limits (figures in docs/results.md):
forward / backward motion comes out slightly under-scaled; narrow views panning in place drift
sideways; without object masks a near mover can still win the pose vote on some clips.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.linalg import solveh_banded

from mllm4d_lite.curation.bundle_adjust import bundle_adjust

log = logging.getLogger(__name__)


@dataclass
class OdometryConfig:
    """Settings of :func:`estimate_trajectory` (embedded in the curate config)."""

    max_features: int = field(default=300, metadata={"help": "corners tracked at once"})
    feature_grid: int = field(default=4, metadata={"help": "detect corners in grid x grid cells (spread over the image)"})
    min_feature_distance_px: int = field(default=8, metadata={"help": "minimum spacing of corners (px)"})
    mask_dilate_px: int = field(default=4, metadata={"help": "grow object masks by this much before excluding (px)"})
    min_disparity_px: float = field(default=3.0, metadata={"help": "ignore disparities below this: far points carry little translation signal and their depth errors are large (px)"})
    max_local_disparity_range_px: float = field(default=1.0, metadata={"help": "feature depth needs a 3x3 disparity range below this plus 5 percent (px)"})
    ransac_reproj_px: float = field(default=2.0, metadata={"help": "PnP RANSAC inlier threshold (px)"})
    pnp_inlier_sigmas: float = field(default=3.0, metadata={"help": "PnP refinement keeps points within this many noise sigmas (px noise measured per frame)"})
    pnp_min_reproj_px: float = field(default=1.0, metadata={"help": "lower bound of the refined PnP inlier threshold (px)"})
    pnp_cell_weights: bool = field(default=True, metadata={"help": "PnP hypothesis score: every image cell weighs the same (a near mover crowds into few cells)"})
    static_motion_px: float = field(default=0.2, metadata={"help": "static test: camera at rest while the affine flow of its background tracks moved them less than this (median, px) since the run's first frame; 0 = off"})
    static_min_frames: int = field(default=4, metadata={"help": "static test: a camera at rest must stay so for at least this many frames"})
    min_inliers: int = field(default=12, metadata={"help": "fewer PnP inliers = frame pose unreliable"})
    bundle_adjust: bool = field(default=True, metadata={"help": "refine poses and landmarks by stereo BA"})
    ba_disparity_sigma_px: float = field(default=0.5, metadata={"help": "BA weight: noise of SGBM disparities (px)"})
    ba_klt_sigma_px: float = field(default=0.2, metadata={"help": "BA weight: noise of KLT-refined feature disparities (px)"})
    ba_sigma_scale: float = field(default=2.0, metadata={"help": "BA disparity noise = max(the settings above, this x the measured spread of the disparity residuals); 0 = settings only"})
    ba_max_iterations: int = field(default=3, metadata={"help": "BA Levenberg-Marquardt iteration cap"})
    ba_max_landmarks: int = field(default=300, metadata={"help": "BA uses at most this many landmarks, an even spread (0 = all)"})
    ba_min_track_len: int = field(default=3, metadata={"help": "BA uses landmarks seen in at least this many frames"})


@dataclass
class OdometryResult:
    """camera_to_world (N, 4, 4); per-frame PnP inlier counts; a quality summary."""

    camera_to_world: np.ndarray
    inliers: list[int]
    failed_frames: list[int]
    quality: dict[str, float]


# ----------------------------------------------------------------------------- small geometry
def backproject(uv: np.ndarray, disparity_px: np.ndarray, K: np.ndarray, baseline_m: float) -> np.ndarray:
    """Pixels (M, 2) with disparities (M,) -> camera-frame points (M, 3), metres."""
    z = K[0, 0] * baseline_m / disparity_px
    x = (uv[:, 0] - K[0, 2]) * z / K[0, 0]
    y = (uv[:, 1] - K[1, 2]) * z / K[1, 1]
    return np.stack([x, y, z], axis=1)


def _rt_to_pose(rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    r_wc = cv2.Rodrigues(np.asarray(rvec, float).reshape(3, 1))[0]
    pose = np.eye(4)
    pose[:3, :3] = r_wc.T
    pose[:3, 3] = -r_wc.T @ np.asarray(tvec, float).ravel()
    return pose


def _sample(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest-pixel values of ``img`` at (M, 2) float positions (NaN outside)."""
    h, w = img.shape[:2]
    u = np.rint(uv[:, 0]).astype(int)
    v = np.rint(uv[:, 1]).astype(int)
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    out = np.full(len(uv), np.nan, np.float64)
    out[inside] = img[v[inside], u[inside]]
    return out


def _reliable_disparity(disp: np.ndarray, cfg: OdometryConfig) -> np.ndarray:
    """Disparity kept only where the 3x3 neighbourhood is complete and smooth: corners often sit on
    depth edges, where a feature's depth is ambiguous (foreground or background)."""
    d = np.where(disp >= cfg.min_disparity_px, disp, np.nan).astype(np.float32)
    kernel = np.ones((3, 3), np.uint8)
    finite = np.isfinite(d)
    hi = cv2.dilate(np.where(finite, d, -1.0).astype(np.float32), kernel)
    lo = cv2.erode(np.where(finite, d, 1e6).astype(np.float32), kernel)
    full = cv2.erode(finite.astype(np.uint8), kernel) > 0
    smooth = full & (hi - lo <= cfg.max_local_disparity_range_px + 0.05 * np.nan_to_num(d))
    return np.where(smooth, d, np.nan)


_LK_STEREO = dict(winSize=(11, 11), maxLevel=0, flags=cv2.OPTFLOW_USE_INITIAL_FLOW,
                  criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.001))


def refine_disparity_klt(gray_left: np.ndarray, gray_right: np.ndarray, uv: np.ndarray,
                         disp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel disparities of feature points by Lucas-Kanade from the left to the right image,
    started at the SGBM match. SGBM's parabola sub-pixel step is biased towards whole pixels,
    which matters on far points (a few pixels of disparity); KLT on corners removes that bias.
    Points whose KLT match leaves the scanline
    (> 0.5 px) or moves > 1 px from SGBM keep the SGBM value. uv (M, 2), disp (M,) px (NaN kept).
    Returns the disparities and a mask (M,) of the refined ones."""
    ok = np.isfinite(disp)
    refined = np.zeros(len(disp), bool)
    if not ok.any():
        return disp, refined
    p0 = uv[ok].astype(np.float32).reshape(-1, 1, 2)
    init = p0.copy()
    init[:, 0, 0] -= disp[ok].astype(np.float32)
    p1, st, _ = cv2.calcOpticalFlowPyrLK(gray_left, gray_right, p0, init, **_LK_STEREO)
    d_klt = p0[:, 0, 0] - p1[:, 0, 0]
    good = (st.ravel() == 1) & (np.abs(p1[:, 0, 1] - p0[:, 0, 1]) < 0.5) & (np.abs(d_klt - disp[ok]) < 1.0)
    out = disp.copy()
    sub = out[ok]
    sub[good] = d_klt[good]
    out[ok] = sub
    refined[np.flatnonzero(ok)[good]] = True
    return out, refined


# ----------------------------------------------------------------------------- robust pose
def _pose_to_rt(pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """camera_to_world (4, 4) -> OpenCV rvec (3, 1), tvec (3, 1) (world to camera)."""
    r_cw = pose[:3, :3].T
    return cv2.Rodrigues(r_cw)[0], (-r_cw @ pose[:3, 3]).reshape(3, 1)


def _reproj_px(world: np.ndarray, uv: np.ndarray, K: np.ndarray, rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    """Reprojection error (M,) in px of world points (M, 3) against pixels (M, 2); inf behind the camera."""
    pc = world @ cv2.Rodrigues(np.asarray(rvec, float))[0].T + np.asarray(tvec, float).ravel()
    z = np.where(pc[:, 2] > 1e-3, pc[:, 2], np.nan)
    err = np.hypot(K[0, 0] * pc[:, 0] / z + K[0, 2] - uv[:, 0], K[1, 1] * pc[:, 1] / z + K[1, 2] - uv[:, 1])
    return np.where(np.isfinite(err), err, np.inf)


def _msac(err: np.ndarray, threshold_px: float, weight: np.ndarray) -> float:
    """Truncated quadratic cost (MSAC): inliers count by their squared error, outliers by the cap."""
    return float(np.minimum(err, threshold_px) ** 2 @ weight)


def _estimate_pose(world: np.ndarray, uv: np.ndarray, K: np.ndarray, prev_pose: np.ndarray,
                   cv_pose: np.ndarray, cfg: OdometryConfig) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """One frame's camera_to_world from landmarks (M, 3) seen at pixels (M, 2), robust to moving points.

    Hypotheses: PnP + RANSAC (SQPnP), the previous pose (camera at rest) and the constant-velocity
    prediction, scored by the truncated quadratic (MSAC) cost: RANSAC's inlier count alone ties when
    a near object's motion looks like a small camera motion within the threshold, and then the
    object pulls the camera. The best is refined by Levenberg-Marquardt on its inliers, the threshold
    shrinking to ``pnp_inlier_sigmas`` x the inliers' noise. Returns the pose (None = unreliable),
    the inlier mask (M,) of the fit and the reprojection errors (M,) px at the pose.
    """
    thr = cfg.ransac_reproj_px
    cands = [_pose_to_rt(prev_pose), _pose_to_rt(cv_pose)]
    # SQPnP inside RANSAC needs no initial guess (the iterative solver started from the
    # previous pose occasionally diverged to nonsense rotations in OpenCV 5).
    found, rvec, tvec, inl = cv2.solvePnPRansac(np.ascontiguousarray(world), np.ascontiguousarray(uv), K, None,
                                                iterationsCount=100, reprojectionError=thr, confidence=0.999,
                                                flags=cv2.SOLVEPNP_SQPNP)
    if found and inl is not None and len(inl) >= 6:
        cands.append((rvec, tvec))
    errs = [_reproj_px(world, uv, K, r, t) for r, t in cands]
    # score at ~pnp_inlier_sigmas x the noise of the best-fitting hypothesis: at the loose RANSAC
    # threshold a wrong pose that leaves every point within 2 px ties with the right one
    sigma = min(float(np.median(e[e < thr])) / 1.18 if (e < thr).sum() >= 6 else thr for e in errs)
    thr = min(cfg.ransac_reproj_px, max(cfg.pnp_min_reproj_px, cfg.pnp_inlier_sigmas * sigma))
    # each image cell (feature_grid x feature_grid) weighs the same: a near object crowds its
    # points into a few cells, the background spreads over the image
    cell = (np.clip((uv[:, 0] / (2 * K[0, 2]) * cfg.feature_grid).astype(int), 0, cfg.feature_grid - 1) * cfg.feature_grid
            + np.clip((uv[:, 1] / (2 * K[1, 2]) * cfg.feature_grid).astype(int), 0, cfg.feature_grid - 1))
    weight = 1.0 / np.bincount(cell)[cell] if cfg.pnp_cell_weights else np.ones(len(uv))
    costs = [_msac(e, thr, weight) for e in errs]
    rvec, tvec = (np.array(a, float) for a in cands[int(np.argmin(costs))])
    err = errs[int(np.argmin(costs))]
    for _ in range(3):
        inl = err < thr
        if inl.sum() < max(6, cfg.min_inliers):
            return None, inl, err
        rvec, tvec = cv2.solvePnPRefineLM(world[inl], uv[inl], K, None, rvec, tvec)
        err = _reproj_px(world, uv, K, rvec, tvec)
        # 2D error norm: median = 1.18 sigma for Gaussian noise of sigma px per axis
        sigma = float(np.median(err[err < thr])) / 1.18 if (err < thr).any() else thr
        thr = min(cfg.ransac_reproj_px, max(cfg.pnp_min_reproj_px, cfg.pnp_inlier_sigmas * sigma))
    inl = err < thr
    if inl.sum() < cfg.min_inliers:
        return None, inl, err
    return _rt_to_pose(rvec, tvec), inl, err


# ----------------------------------------------------------------------------- tracking
class _Tracks:
    """Observation store: per observation the frame, landmark id, pixel and disparity."""

    def __init__(self) -> None:
        self.frame: list[np.ndarray] = []
        self.lid: list[np.ndarray] = []
        self.uv: list[np.ndarray] = []
        self.disp: list[np.ndarray] = []
        self.sigma: list[np.ndarray] = []
        self.world_sum = np.zeros((0, 3))
        self.world_cnt = np.zeros(0)
        self.bad = np.zeros(0, bool)

    def new_ids(self, n: int) -> np.ndarray:
        start = len(self.world_cnt)
        self.world_sum = np.vstack([self.world_sum, np.zeros((n, 3))])
        self.world_cnt = np.concatenate([self.world_cnt, np.zeros(n)])
        self.bad = np.concatenate([self.bad, np.zeros(n, bool)])
        return np.arange(start, start + n)

    def add(self, frame: int, lid: np.ndarray, uv: np.ndarray, disp_sigma: tuple[np.ndarray, np.ndarray],
            pose: np.ndarray, K: np.ndarray, baseline_m: float) -> None:
        disp, sigma = disp_sigma
        self.frame.append(np.full(len(lid), frame))
        self.lid.append(lid)
        self.uv.append(uv.astype(np.float64))
        self.disp.append(disp)
        self.sigma.append(sigma)
        ok = np.isfinite(disp)
        if ok.any():
            pts_c = backproject(uv[ok].astype(np.float64), disp[ok], K, baseline_m)
            pts_w = pts_c @ pose[:3, :3].T + pose[:3, 3]
            np.add.at(self.world_sum, lid[ok], pts_w)
            np.add.at(self.world_cnt, lid[ok], 1)

    def world(self, lid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cnt = self.world_cnt[lid]
        ok = (cnt > 0) & ~self.bad[lid]
        pts = np.zeros((len(lid), 3))
        pts[ok] = self.world_sum[lid[ok]] / cnt[ok, None]
        return pts, ok

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Observations: frame (m,), landmark id (m,), pixel (m, 2), disparity (m,), its sigma (m,)."""
        if not self.frame:
            return np.zeros(0, int), np.zeros(0, int), np.zeros((0, 2)), np.zeros(0), np.zeros(0)
        return (np.concatenate(self.frame), np.concatenate(self.lid), np.concatenate(self.uv),
                np.concatenate(self.disp), np.concatenate(self.sigma))


def _affine_flow(uv: np.ndarray, flow: np.ndarray, centre: np.ndarray, scale: float) -> np.ndarray:
    """Affine flow field (3, 2) fitted robustly to the displacements ``flow`` (M >= 6, 2) of points at
    ``uv`` (M, 2), in the basis ``[(uv - centre) / scale, 1]``: the part of the image motion that a
    camera motion would cause (translation, rotation, divergence); independent tracking noise
    averages down by about sqrt(6 / M). Robust passes (3 x MAD, at least 0.5 px) drop points off
    the fit."""
    design = np.c_[(uv - centre) / scale, np.ones(len(uv))]
    coef = np.zeros((3, 2))
    # robust start: the points that stayed put (<= 0.5 px) when they are >= 30 % of all, else the
    # median translation; so an unmasked near mover that the pose vote followed (its tracks then
    # outnumber the background's) cannot pull a still background into its motion
    keep = np.linalg.norm(flow, axis=1) <= 0.5
    if keep.mean() < 0.3:
        resid = np.linalg.norm(flow - np.median(flow, axis=0), axis=1)
        keep = resid <= max(3.0 * 1.4826 * float(np.median(resid)), 0.5)
        coef[2] = np.median(flow, axis=0)
    for _ in range(3):
        if keep.sum() < 6:
            break
        coef = np.linalg.lstsq(design[keep], flow[keep], rcond=None)[0]
        resid = np.linalg.norm(flow - design @ coef, axis=1)
        keep = resid <= max(3.0 * 1.4826 * float(np.median(resid[keep])), 0.5)
    return coef


def _static_frames(tracks: _Tracks, n: int, motion_px: float, min_points: int, min_frames: int) -> np.ndarray:
    """(N,) bool: frames at which the camera is at rest, i.e. tied to their predecessor.

    Image motion of the background tracks (landmarks never rejected as PnP outliers) as affine
    flow fields (:func:`_affine_flow`): one per pair of frames up to 8 apart that share >=
    ``min_points`` tracks, weighted by the tracks shared; every frame's field from frame 0 is their
    weighted least-squares solution (a frame whose tracks err once is outvoted by the pairs around
    it, and tracks that thin out are bridged by later ones). A run of frames is static when the
    fields of its frames move the tracks by less than ``motion_px`` (median) from where the run's
    first frame has them, and the run spans at least ``min_frames`` frames. Comparing with the run's
    first frame rather than the previous one catches slow motion as it adds up, and the minimum
    length keeps a slowly moving camera (whose runs stay short) from being frozen. Frames not
    linked by pairs of shared tracks never share a run.
    """
    static = np.zeros(n, bool)
    if motion_px <= 0:
        return static
    frame, lid, uv, _, _ = tracks.arrays()
    good = ~tracks.bad[lid]
    frame, lid, uv = frame[good], lid[good], uv[good]
    order = np.argsort(frame, kind="stable")
    cuts = np.searchsorted(frame[order], np.arange(1, n))
    by_frame = list(zip(np.split(lid[order], cuts), np.split(uv[order], cuts)))

    if len(uv) == 0:
        return static
    # one basis for every pair, so that fields add: centre and half-size of the tracked area
    centre = uv.mean(axis=0)
    scale = max(float(np.abs(uv - centre).max()), 1.0)
    # pairwise affine fields between frames up to `window` apart that share >= min_points tracks
    # (weight = shared tracks), then every frame's field from frame 0 by weighted least squares
    # over all pairs: a frame whose tracks err once is outvoted by the pairs around it
    window = 8
    component = np.arange(n)  # frames linked through pairs share a label (union-find)

    def root(i: int) -> int:
        while component[i] != i:
            i = component[i]
        return i

    # the normal equations of the pairs are banded (half-width `window`): kept in the upper banded
    # form of scipy.linalg.solveh_banded, so that long clips (thousands of frames) stay linear in time
    band = np.zeros((window + 1, n))
    rhs = np.zeros((n, 6))
    for a in range(n):
        for b in range(a + 1, min(n, a + window + 1)):
            (a_lid, a_uv), (b_lid, b_uv) = by_frame[a], by_frame[b]
            _, ia, ib = np.intersect1d(a_lid, b_lid, return_indices=True)
            if len(ia) < max(6, min_points):
                continue
            coef = _affine_flow(a_uv[ia], b_uv[ib] - a_uv[ia], centre, scale).ravel()
            w = float(len(ia))
            band[window, a] += w
            band[window, b] += w
            band[window - (b - a), b] -= w
            rhs[b] += w * coef
            rhs[a] -= w * coef
            component[root(b)] = root(a)
    fields = np.zeros((n, 6))
    if n > 1:
        sub = band[:, 1:].copy()  # frame 0 fixed at the zero field
        sub[window] += 1e-9 * max(1.0, float(sub[window].max()))  # frames without pairs stay at zero
        fields[1:] = solveh_banded(sub, rhs[1:])
    # compared where the tracks are (at most 2000 of their pixels, an even spread): their median
    # displacement under the difference of two frames' fields
    pick = np.linspace(0, len(uv) - 1, min(len(uv), 2000)).astype(int)
    basis = np.c_[(uv[pick] - centre) / scale, np.ones(len(pick))]

    def moved(a: int, b: int) -> float:
        return float(np.median(np.linalg.norm(basis @ (fields[b] - fields[a]).reshape(3, 2), axis=1)))

    start = 0
    while start < n - 1:
        end = start + 1
        while end < n and root(end) == root(start) and moved(start, end) < motion_px:
            end += 1
        if end - start >= max(2, min_frames):  # frames start .. end - 1 are one pose
            static[start + 1:end] = True
        start = end if end > start + 1 else start + 1
    return static


def _detect(gray: np.ndarray, allowed: np.ndarray, existing: np.ndarray, n: int, min_dist: int,
            grid: int = 1) -> np.ndarray:
    """Up to ``n`` Shi-Tomasi corners on ``allowed`` pixels, away from ``existing`` points; with
    ``grid`` > 1 the image is split into grid x grid cells that each get an equal share, so corners
    do not all sit on the most textured region (often the far background)."""
    if n <= 0:
        return np.zeros((0, 2), np.float32)
    mask = allowed.astype(np.uint8) * 255
    for u, v in np.rint(existing).astype(int):
        cv2.circle(mask, (int(u), int(v)), min_dist, 0, -1)
    h, w = gray.shape
    found = []
    cells = [(r, c) for r in range(grid) for c in range(grid)]
    per_cell = max(1, int(np.ceil(n / len(cells))))
    for r, c in cells:
        y0, y1, x0, x1 = r * h // grid, (r + 1) * h // grid, c * w // grid, (c + 1) * w // grid
        sub = mask[y0:y1, x0:x1]
        if not sub.any():
            continue
        pts = cv2.goodFeaturesToTrack(gray[y0:y1, x0:x1], maxCorners=per_cell, qualityLevel=0.01,
                                      minDistance=min_dist, mask=np.ascontiguousarray(sub), blockSize=5)
        if pts is not None:
            found.append(pts.reshape(-1, 2) + np.array([x0, y0], np.float32))
    if not found:
        return np.zeros((0, 2), np.float32)
    return np.vstack(found).astype(np.float32)[:n]


_LK = dict(winSize=(15, 15), maxLevel=2, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))


def _track(prev: np.ndarray, cur: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """KLT with a forward-backward check (< 1 px): new positions (M, 2) and a keep mask (M,)."""
    if len(pts) == 0:
        return pts, np.zeros(0, bool)
    p1, st, _ = cv2.calcOpticalFlowPyrLK(prev, cur, pts.reshape(-1, 1, 2), None, **_LK)
    p0, st_b, _ = cv2.calcOpticalFlowPyrLK(cur, prev, p1, None, **_LK)
    fb = np.linalg.norm(p0.reshape(-1, 2) - pts, axis=1)
    h, w = prev.shape
    p1 = p1.reshape(-1, 2)
    inside = (p1[:, 0] >= 0) & (p1[:, 0] <= w - 1) & (p1[:, 1] >= 0) & (p1[:, 1] <= h - 1)
    return p1, (st.ravel() == 1) & (st_b.ravel() == 1) & (fb < 1.0) & inside


# ----------------------------------------------------------------------------- main entry
def estimate_trajectory(
    left: np.ndarray,
    disparity_px: np.ndarray,
    K: np.ndarray,
    baseline_m: float,
    exclude_mask: np.ndarray | None = None,
    cfg: OdometryConfig | None = None,
    right: np.ndarray | None = None,
) -> OdometryResult:
    """Stereo visual odometry.

    Args:
        left: (N, H, W, 3) uint8 RGB left frames.
        disparity_px: (N, H, W) float32 left-view disparity (px, NaN unknown), e.g. from
            :func:`mllm4d_lite.curation.stereo.compute_disparity`.
        K: (3, 3) left intrinsics (px); baseline_m: stereo baseline (m, > 0).
        exclude_mask: optional (N, H, W) bool, True on pixels of possibly moving objects.
        right: optional (N, H, W, 3) uint8 right frames: feature disparities are then refined
            by stereo KLT (:func:`refine_disparity_klt`).
    Returns:
        :class:`OdometryResult` with camera_to_world (N, 4, 4), world = left camera at frame 0.
    """
    cfg = cfg or OdometryConfig()
    n = left.shape[0]
    K = np.asarray(K, np.float64)
    grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in left]
    grays_r = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in right] if right is not None else None

    def feature_disp(i: int, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Disparities of features and their BA noise (px): KLT-refined ones are far more precise."""
        d = _sample(disp[i], uv)
        if grays_r is None:
            return d, np.full(len(d), cfg.ba_disparity_sigma_px)
        d, refined = refine_disparity_klt(grays[i], grays_r[i], uv, d)
        return d, np.where(refined, cfg.ba_klt_sigma_px, cfg.ba_disparity_sigma_px)

    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * cfg.mask_dilate_px + 1,) * 2)
    disp = np.stack([_reliable_disparity(d, cfg) for d in disparity_px])

    def excluded(i: int) -> np.ndarray:
        if exclude_mask is None or not exclude_mask[i].any():
            return np.zeros(disp.shape[1:], bool)
        return cv2.dilate(exclude_mask[i].astype(np.uint8), kernel) > 0

    poses = np.repeat(np.eye(4)[None], n, axis=0)
    tracks = _Tracks()
    inliers = [0] * n
    failed: list[int] = []
    pts = _detect(grays[0], np.isfinite(disp[0]) & ~excluded(0), np.zeros((0, 2)), cfg.max_features, cfg.min_feature_distance_px, cfg.feature_grid)
    ids = tracks.new_ids(len(pts))
    tracks.add(0, ids, pts, feature_disp(0, pts), poses[0], K, baseline_m)
    inliers[0] = len(pts)
    for i in range(1, n):
        new_pts, keep = _track(grays[i - 1], grays[i], pts)
        excl_i = excluded(i)
        keep &= ~(_sample(excl_i.astype(np.float32), new_pts) > 0)  # NaN outside -> kept only if inside
        pts, ids = new_pts[keep], ids[keep]
        world, has_world = tracks.world(ids)
        pose_ok = False
        if has_world.sum() >= 6:
            cv_pose = poses[i - 1] @ (np.linalg.inv(poses[i - 2]) @ poses[i - 1]) if i >= 2 else poses[i - 1]
            pose, inl, err = _estimate_pose(world[has_world], pts[has_world].astype(np.float64), K, poses[i - 1], cv_pose,
                                            cfg)
            if pose is not None:
                poses[i] = pose
                inliers[i] = int(inl.sum())
                pose_ok = True
                # landmarks outside the fit's tight threshold leave the map (movers, their shadows)
                bad_ids = ids[has_world][~inl]
                tracks.bad[bad_ids] = True
                drop = np.isin(ids, bad_ids)
                pts, ids = pts[~drop], ids[~drop]
        if not pose_ok:
            # Constant-velocity guess; the frame is reported as unreliable.
            failed.append(i)
            step = np.linalg.inv(poses[i - 2]) @ poses[i - 1] if i >= 2 else np.eye(4)
            poses[i] = poses[i - 1] @ step
            log.debug("frame %d: PnP failed (%d landmarks)", i, int(has_world.sum()))
        tracks.add(i, ids, pts, feature_disp(i, pts), poses[i], K, baseline_m)
        if len(pts) < 0.7 * cfg.max_features:
            extra = _detect(grays[i], np.isfinite(disp[i]) & ~excl_i, pts, cfg.max_features - len(pts), cfg.min_feature_distance_px,
                            cfg.feature_grid)
            if len(extra):
                new_ids = tracks.new_ids(len(extra))
                tracks.add(i, new_ids, extra, feature_disp(i, extra), poses[i], K, baseline_m)
                pts = np.vstack([pts, extra])
                ids = np.concatenate([ids, new_ids])
    # Static test after the pass, so that frozen poses never seed landmarks (which would hide a
    # slowly moving camera): a frame whose background barely moved is tied to its predecessor.
    static = _static_frames(tracks, n, cfg.static_motion_px, cfg.min_inliers, cfg.static_min_frames)
    for i in np.flatnonzero(static):
        poses[i] = poses[i - 1]
    quality: dict[str, float] = {
        "vo_median_inliers": float(np.median(inliers[1:])) if n > 1 else float(inliers[0]),
        "vo_min_inliers": float(min(inliers[1:])) if n > 1 else float(inliers[0]),
        "vo_failed_frames": float(len(failed)),
        "vo_static_frames": float(static.sum()),
    }
    if cfg.bundle_adjust and n > 1:
        poses, stats = bundle_adjust(poses, tracks, K, baseline_m, cfg, static)
        quality.update({k: float(v) for k, v in stats.items()})
    return OdometryResult(camera_to_world=poses, inliers=inliers, failed_frames=failed, quality=quality)
