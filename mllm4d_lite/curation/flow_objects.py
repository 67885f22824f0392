"""Mask-free moving objects: found and tracked from the stereo geometry itself (``--object-backend flow``).

The clip's instance masks, if any, are never read. Per frame pair (t, t + gap) and (t, t - gap):

1. **Flow.** Dense optical flow of the left views both ways (OpenCV DIS); a pixel whose forward
   and backward flow disagree by more than ``flow_fb_max_px`` is occluded / unreliable and skipped.
2. **Ego-motion.** The camera's relative pose from the odometry, refined on the pair itself by
   RANSAC PnP on a grid of dense flow correspondences lifted with the disparity at t (moving
   objects are a minority of the grid and fall out as outliers).
3. **Residual.** Every pixel with a disparity is lifted to 3D at t, moved by the camera motion and
   projected into t + gap: the predicted position (u, v) and disparity d. What the flow and the
   disparity at t + gap measure, minus the prediction, is the residual scene flow in image form
   (du, dv, dd). A static point gives noise only. Each component is divided by its expected noise:
   the flow noise ``flow_sigma_px`` / the disparity noise ``disparity_sigma_px`` plus what the
   disparity noise at t does to the prediction (propagated through the projection, so it grows
   with depth^2 / disparity in metric terms and with the camera's translation over the baseline).
   The normalised length, median-filtered, is the pixel's motion score.
4. **Regions.** Hysteresis on the score (seeds above ``seed_score``, grown through pixels above
   ``grow_score``), cut along disparity edges (depth continuity), connected components; a component
   smaller than ``min_area_m2`` (pixel area x depth^2 / f^2) is noise. Frame t's moving mask is the
   union over its forward and backward pair.
4b. **Motion in depth, per region.** An object 6 m away moving straight away at 0.05 m per frame
   changes its disparity by ~0.1 px per frame: far below one pixel's noise, far above the noise of
   the median over its hundreds of pixels. Candidate objects are the depth-continuous regions off
   the ground plane (a plane is affine in disparity space) that stand up from it
   (:func:`depth_proposals`); a candidate moves in depth when the median of its pixels' residual
   disparity change against frames t ± ``flow_depth_gap`` (camera motion compensated as in 3., per
   frame of time) exceeds ``flow_depth_rate_px`` and ``flow_depth_rate_rel`` x its disparity, with
   the same sign both ways (:func:`depth_moving_regions`). These regions join frame t's moving mask.
4c. **Steady motion, per region.** A small or far object moving sideways can sit a steady 3-4 sigma
   off the static prediction on every pixel with no pixel above the seed level; a candidate object
   whose median motion score reaches ``flow_region_score`` moves (:func:`score_moving_regions`; only
   candidates that the pixel test did not touch on that frame are added).
5. **Tracks.** Components are lifted to world coordinates (odometry poses); components of one frame
   closer than ``merge_m`` are one object; components are linked frame to frame by the nearest
   world centroid (constant-velocity prediction, gate ``link_max_m`` per frame of gap, at most
   ``max_gap`` missing frames). A track seen on fewer than ``min_track_fraction`` of the frames is
   dropped. A kept track's mask is carried along the frame-to-frame flow into the frames where it
   was not seen moving (depth-gated), and kept tracks that are parts of one object are merged:
   touching at the same depth, or 3D centroids within ``merge_m``, on most frames; or moving together
   (top-down centres within ``flow_dup_m`` whose offset stays within ``flow_dup_steady_m``,
   :func:`moving_together`; two objects standing on the ground cannot share a footprint). A kept track lying on
   the ground (its regions' disparity grows down the image at more than half the ground's rate,
   :func:`ground_patch_ratio`: a moving shadow, flow errors on the slanted ground) is dropped.
6. **Centres.** Each kept track's per-frame masks go through :func:`tracks.object_centers` and
   :func:`tracks.object_yaws` (the mask-based path's centre, size and yaw logic), so the output has
   the structure of the mask path and the annotation and QA code need no change.

Every candidate track is logged with the reason it was kept or dropped (the annotation's
``objects_log``, docs/data-format.md). Labels are colour names from the mean colour of the track's
pixels ("red object"; "moving object" when grey), numbered when two share a colour.

Conventions: camera x right, y down, z forward; world = left camera at frame 0; metres, pixels.
"""

from __future__ import annotations

import colorsys
import logging
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from mllm4d_lite.curation import tracks
from mllm4d_lite.curation.linking import greedy_assign
from mllm4d_lite.curation.odometry import backproject

log = logging.getLogger(__name__)


@dataclass
class FlowObjectConfig:
    """Settings of the mask-free object backend (``--object-backend flow``); see the module docstring."""

    flow_gap: int = field(default=3, metadata={"help": "flow backend: frames between the two views of a motion pair"})
    flow_sigma_px: float = field(default=0.35, metadata={"help": "flow backend: optical flow noise (px, 1 sigma)"})
    flow_disparity_sigma_px: float = field(default=0.35, metadata={"help": "flow backend: disparity noise (px, 1 sigma)"})
    flow_sigma_rel: float = field(default=0.04, metadata={"help": "flow backend: optical flow noise per px of flow"})
    flow_disparity_sigma_rel: float = field(default=0.03, metadata={"help": "flow backend: disparity noise per px of disparity"})
    flow_fb_max_px: float = field(default=1.0, metadata={"help": "flow backend: forward-backward flow disagreement that marks a pixel occluded (px)"})
    flow_seed_score: float = field(default=4.0, metadata={"help": "flow backend: normalised residual that seeds a moving region"})
    flow_grow_score: float = field(default=2.0, metadata={"help": "flow backend: normalised residual a moving region grows through"})
    flow_min_area_m2: float = field(default=0.03, metadata={"help": "flow backend: smallest moving region (m^2 seen face-on)"})
    flow_merge_m: float = field(default=0.5, metadata={"help": "flow backend: regions (and tracks) whose 3D centroids are closer than this are one object (m)"})
    flow_link_max_m: float = field(default=0.45, metadata={"help": "flow backend: largest centroid jump per frame when linking (m)"})
    flow_max_gap: int = field(default=4, metadata={"help": "flow backend: missing frames a track may bridge"})
    flow_long_gap: int = field(default=0, metadata={"help": "flow backend: second, longer pair gap for slow motion (e.g. in depth); 0 = off"})
    flow_min_track_fraction: float = field(default=0.3, metadata={"help": "flow backend: share of the frames a track must be seen on"})
    flow_depth_gap: int = field(default=6, metadata={"help": "flow backend: frames between the views of the region-level depth-motion test; 0 = off"})
    flow_depth_rate_px: float = field(default=0.05, metadata={"help": "flow backend: depth-motion test, smallest median disparity change of a region (px per frame)"})
    flow_depth_rate_rel: float = field(default=0.005, metadata={"help": "flow backend: depth-motion test, smallest median disparity change per frame relative to the disparity"})
    flow_depth_max_m: float = field(default=14.0, metadata={"help": "flow backend: depth-motion test, farthest region tested (m; farther depth motion is below the disparity noise)"})
    flow_region_score: float = field(default=3.0, metadata={"help": "flow backend: an object region (standing up from the ground) whose median motion score reaches this is moving; 0 = off"})
    flow_dup_m: float = field(default=0.5, metadata={"help": "flow backend: kept tracks whose top-down centres stay within this (median, m) and move together are one object; 0 = off"})
    flow_dup_steady_m: float = field(default=0.3, metadata={"help": "flow backend: largest median wobble of the offset between two tracks that move together (m)"})

    def validate(self) -> None:
        if self.flow_gap < 1:
            raise ValueError(f"flow_gap must be >= 1, got {self.flow_gap}")
        for name in ("flow_sigma_px", "flow_disparity_sigma_px", "flow_fb_max_px", "flow_seed_score",
                     "flow_grow_score", "flow_min_area_m2", "flow_merge_m", "flow_link_max_m"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.flow_grow_score > self.flow_seed_score:
            raise ValueError(f"flow_grow_score ({self.flow_grow_score}) must be <= flow_seed_score "
                             f"({self.flow_seed_score})")
        if not 0 < self.flow_min_track_fraction <= 1:
            raise ValueError(f"flow_min_track_fraction must be in (0, 1], got {self.flow_min_track_fraction}")
        if self.flow_max_gap < 0:
            raise ValueError(f"flow_max_gap must be >= 0, got {self.flow_max_gap}")
        if self.flow_depth_gap < 0:
            raise ValueError(f"flow_depth_gap must be >= 0 (0 = off), got {self.flow_depth_gap}")
        if self.flow_region_score < 0:
            raise ValueError(f"flow_region_score must be >= 0 (0 = off), got {self.flow_region_score}")
        if self.flow_dup_m < 0 or not self.flow_dup_steady_m > 0:
            raise ValueError(f"flow_dup_m must be >= 0 (0 = off) and flow_dup_steady_m > 0, got "
                             f"{self.flow_dup_m} and {self.flow_dup_steady_m}")
        for name in ("flow_depth_rate_px", "flow_depth_rate_rel", "flow_depth_max_m"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


# ----------------------------------------------------------------------------- per pair
def _dis() -> cv2.DISOpticalFlow:
    return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)


def _sample(img: np.ndarray, map_u: np.ndarray, map_v: np.ndarray) -> np.ndarray:
    """Bilinear sample of a float image at (map_u, map_v); NaN outside or next to a NaN."""
    valid = np.isfinite(img).astype(np.float32)
    filled = np.where(valid > 0, img, 0).astype(np.float32)
    val = cv2.remap(filled, map_u, map_v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    w = cv2.remap(valid, map_u, map_v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return np.where(w > 0.999, val, np.nan)


def _refine_relative_pose(uv: np.ndarray, disp: np.ndarray, uv_next: np.ndarray, K: np.ndarray,
                          baseline_m: float, rel_guess: np.ndarray) -> np.ndarray:
    """Camera-t -> camera-(t+gap) transform (4x4) by RANSAC PnP on flow correspondences; the guess
    when too few points agree. uv (M, 2) at t with disparity (M,), uv_next (M, 2) at t + gap."""
    if len(uv) < 30:
        return rel_guess
    pts = backproject(uv.astype(np.float64), disp.astype(np.float64), K, baseline_m)
    rvec = cv2.Rodrigues(rel_guess[:3, :3])[0]
    tvec = rel_guess[:3, 3].reshape(3, 1).copy()
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(pts, uv_next.astype(np.float64), K, None, rvec, tvec,
                                                 useExtrinsicGuess=True, iterationsCount=200,
                                                 reprojectionError=1.0, confidence=0.999,
                                                 flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok or inliers is None or len(inliers) < max(20, 0.3 * len(uv)):
        return rel_guess
    idx = inliers.ravel()
    rvec, tvec = cv2.solvePnPRefineLM(pts[idx], uv_next[idx].astype(np.float64), K, None, rvec, tvec)
    out = np.eye(4)
    out[:3, :3] = cv2.Rodrigues(rvec)[0]
    out[:3, 3] = tvec.ravel()
    return out


def motion_score(flow_ab: np.ndarray, flow_ba: np.ndarray, disp_a: np.ndarray, disp_b: np.ndarray,
                 K: np.ndarray, baseline_m: float, rel_ab: np.ndarray, cfg: FlowObjectConfig
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Normalised residual scene flow of frame a's pixels against the camera motion a -> b.

    flow_ab / flow_ba: (H, W, 2) px; disp_a / disp_b: (H, W) px (NaN unknown); rel_ab: 4x4
    camera-a -> camera-b. Returns the score (H, W) float32 (0 where unknown; median-filtered 5x5)
    and the mask of pixels where it is known (disparity at a and b, consistent flow)."""
    H, W = disp_a.shape
    v, u = np.mgrid[0:H, 0:W].astype(np.float32)
    mu, mv = u + flow_ab[..., 0], v + flow_ab[..., 1]
    fb = np.hypot(flow_ab[..., 0] + _sample(flow_ba[..., 0], mu, mv), flow_ab[..., 1] + _sample(flow_ba[..., 1], mu, mv))
    d_meas = _sample(disp_b, mu, mv)
    with np.errstate(invalid="ignore"):
        known = np.isfinite(disp_a) & (disp_a > 0) & np.isfinite(d_meas) & (fb <= cfg.flow_fb_max_px)
    fx, fy, cx, cy = (np.float32(K[0, 0]), np.float32(K[1, 1]), np.float32(K[0, 2]), np.float32(K[1, 2]))
    fb_m = np.float32(K[0, 0] * baseline_m)
    R, t = rel_ab[:3, :3].astype(np.float32), rel_ab[:3, 3].astype(np.float32)
    xn, yn = (u - cx) / fx, (v - cy) / fy
    rx, ry, rz = (R[i, 0] * xn + R[i, 1] * yn + R[i, 2] for i in range(3))  # rotated viewing rays

    def predict(disp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where a static point at this disparity in a lands in b: (u, v, disparity)."""
        z = fb_m / disp
        zb = rz * z + t[2]
        zb = np.where(zb > 1e-3, zb, np.nan)
        return fx * (rx * z + t[0]) / zb + cx, fy * (ry * z + t[1]) / zb + cy, fb_m / zb

    d_a = np.where(known, disp_a, 1.0).astype(np.float32)
    # disparity noise grows with the disparity (slanted ground near the camera)
    sig_d = np.float32(cfg.flow_disparity_sigma_px) + np.float32(cfg.flow_disparity_sigma_rel) * d_a
    pu, pv, pd = predict(d_a)
    lo_u, lo_v, lo_d = predict(np.maximum(d_a - sig_d, 0.2))
    hi_u, hi_v, hi_d = predict(d_a + sig_d)
    # noise of the prediction from the disparity noise at a: half the +-1 sigma spread; the flow's
    # own error grows with the flow a static point would have (not the object's own motion)
    sig_f = cfg.flow_sigma_px + cfg.flow_sigma_rel * np.hypot(pu - u, pv - v)
    sig_dm = cfg.flow_disparity_sigma_px + cfg.flow_disparity_sigma_rel * pd
    r2 = ((mu - pu) ** 2 / (sig_f ** 2 + 0.25 * (hi_u - lo_u) ** 2)
          + (mv - pv) ** 2 / (sig_f ** 2 + 0.25 * (hi_v - lo_v) ** 2)
          + (d_meas - pd) ** 2 / (sig_dm ** 2 + 0.25 * (hi_d - lo_d) ** 2))
    known &= np.isfinite(r2)
    score = np.where(known, np.sqrt(np.where(known, r2, 0)), 0).astype(np.float32)
    known &= cv2.medianBlur(known.astype(np.uint8), 5) > 0
    return cv2.medianBlur(score, 5), known


def moving_regions(score: np.ndarray, disp: np.ndarray, K: np.ndarray, baseline_m: float,
                   cfg: FlowObjectConfig) -> np.ndarray:
    """Labelled moving regions (H, W) int32 (0 = static / unknown) from a motion score."""
    grow = (score >= cfg.flow_grow_score) & np.isfinite(disp)
    # depth continuity: cut along disparity edges (a jump of > 8 % of the disparity between neighbours)
    d = np.where(np.isfinite(disp), disp, 0).astype(np.float32)
    gx = np.abs(cv2.Sobel(d, cv2.CV_32F, 1, 0, ksize=3)) / 4
    gy = np.abs(cv2.Sobel(d, cv2.CV_32F, 0, 1, ksize=3)) / 4
    grow &= np.maximum(gx, gy) <= 0.08 * np.maximum(d, 1.0)
    # opening: thin streaks (disparity errors on repeated texture) are not objects
    grow = cv2.morphologyEx(grow.astype(np.uint8), cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    n, lab, stats, _ = cv2.connectedComponentsWithStats(grow, connectivity=8)
    out = np.zeros_like(lab)
    seeds = score >= cfg.flow_seed_score
    f2 = K[0, 0] * K[1, 1]
    k = 0
    for i in range(1, n):
        comp = lab == i
        if (seeds & comp).sum() < 0.2 * stats[i, cv2.CC_STAT_AREA]:
            continue  # a region that moves is strongly off the static prediction over much of its area
        z = K[0, 0] * baseline_m / np.median(disp[comp])
        if stats[i, cv2.CC_STAT_AREA] * z * z / f2 < cfg.flow_min_area_m2:
            continue
        k += 1
        out[comp] = k
    return out


def disparity_rate(flow_ab: np.ndarray, flow_ba: np.ndarray, disp_a: np.ndarray, disp_b: np.ndarray,
                   K: np.ndarray, baseline_m: float, rel_ab: np.ndarray, frames: int, cfg: FlowObjectConfig
                   ) -> np.ndarray:
    """Signed residual disparity change of frame a's pixels against the camera motion a -> b, per
    frame of time (px / frame; NaN unknown): (measured disparity at b - the disparity a static point
    would have there) / ``frames``, where ``frames`` = b - a (negative backwards in time, so that an
    approaching object is positive both ways). Shapes as :func:`motion_score`."""
    H, W = disp_a.shape
    v, u = np.mgrid[0:H, 0:W].astype(np.float32)
    mu, mv = u + flow_ab[..., 0], v + flow_ab[..., 1]
    fb = np.hypot(flow_ab[..., 0] + _sample(flow_ba[..., 0], mu, mv), flow_ab[..., 1] + _sample(flow_ba[..., 1], mu, mv))
    d_meas = _sample(disp_b, mu, mv)
    fb_m = np.float32(K[0, 0] * baseline_m)
    R, t = rel_ab[:3, :3].astype(np.float32), rel_ab[:3, 3].astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = fb_m / disp_a
        zb = (R[2, 0] * (u - K[0, 2]) / K[0, 0] + R[2, 1] * (v - K[1, 2]) / K[1, 1] + R[2, 2]) * z + t[2]
        rate = (d_meas - fb_m / np.where(zb > 1e-3, zb, np.nan)) / np.float32(frames)
        # forward-backward check relative to the flow: a long gap under a panning camera has flows of
        # tens of pixels, whose few-percent error moves the sample inside a region, not off it
        fb_max = np.maximum(cfg.flow_fb_max_px, 0.05 * np.hypot(flow_ab[..., 0], flow_ab[..., 1]))
        return np.where(fb <= fb_max, rate, np.nan).astype(np.float32)


def ground_plane(disp: np.ndarray, tol_px: float = 0.6, tol_max_px: float = 2.0,
                 tol_rel: float = 0.06) -> tuple[np.ndarray, float]:
    """Pixels on the ground and the ground's disparity gradient down the image (px per row; 0 when
    no ground is found). A plane in 3D is an affine function d = a u + b v + c of the disparity.
    It is fitted to the lower 40 % of the image (where the ground is, when the camera looks ahead):
    first a line d = b v + c through a low percentile of each row (robust to objects that fill part
    of a row), then the plane through the pixels near that line, refitted twice without the pixels off
    it. It is accepted when it rises downwards (b > 0) and holds at least 30 % of that part. A pixel
    is on the ground within 2.5 robust sigma of the fit, clipped to [``tol_px``, ``tol_max_px``], or
    ``tol_rel`` of its disparity, the larger (block matching on a slanted ground is noisy, ~1 px
    median misfit on the synthetic clips; the cap keeps the upper part of a far object standing on
    the ground). Returns ((H, W) bool, b)."""
    H, W = disp.shape
    none = np.zeros((H, W), bool), 0.0
    v, u = np.mgrid[0:H, 0:W]
    # an object in front of the ground is nearer than the ground it hides on that row: the ground is
    # the low side of a row's disparities (the 25th percentile holds while objects fill < 3/4 of it)
    rows = [(r, float(np.percentile(disp[r][np.isfinite(disp[r])], 25))) for r in range(int(0.6 * H), H)
            if np.isfinite(disp[r]).sum() >= 0.2 * W]
    if len(rows) < 10:
        return none
    r_v, r_d = np.array(rows).T
    keep_r = np.ones(len(r_v), bool)
    for _ in range(3):
        line = np.polyfit(r_v[keep_r], r_d[keep_r], 1)
        keep_r = np.abs(np.polyval(line, r_v) - r_d) <= max(1.0, 3 * 1.4826 * float(np.median(np.abs(np.polyval(line, r_v) - r_d))))
    sel = np.isfinite(disp) & (v >= 0.6 * H)
    A = np.stack([u[sel], v[sel], np.ones(sel.sum())], 1).astype(np.float64)
    y = disp[sel].astype(np.float64)
    res = np.abs(np.polyval(line, v[sel]) - y)
    tol = np.maximum(tol_max_px, tol_rel * y)
    for _ in range(3):  # the plane through the pixels near the current fit (objects standing on it are off)
        keep = res <= tol
        if keep.sum() < 100:
            return none
        coef, *_ = np.linalg.lstsq(A[keep], y[keep], rcond=None)
        res = np.abs(A @ coef - y)
        sigma = 1.4826 * float(np.median(res[keep]))
        tol = np.maximum(min(max(2.5 * sigma, tol_px), tol_max_px), tol_rel * y)
    if coef[1] <= 0 or (res <= tol).mean() < 0.3:
        return none
    plane = coef[0] * u + coef[1] * v + coef[2]
    tol_img = np.maximum(min(max(2.5 * sigma, tol_px), tol_max_px), tol_rel * np.abs(plane))
    with np.errstate(invalid="ignore"):
        return np.isfinite(disp) & (np.abs(disp - plane) <= tol_img), float(coef[1])


def depth_proposals(disp: np.ndarray, K: np.ndarray, baseline_m: float, cfg: FlowObjectConfig) -> list[np.ndarray]:
    """Candidate object regions of one frame from the disparity alone: depth-continuous components
    (cut at disparity edges, as :func:`moving_regions`) off the ground plane, nearer than
    ``flow_depth_max_m``, that stand up from the ground (their disparity grows down the image by less
    than half the ground's rate: a patch of ground the plane fit missed is flat, an object is not).
    Returns a list of (H, W) bool masks."""
    H, W = disp.shape
    d = np.where(np.isfinite(disp), disp, 0).astype(np.float32)
    gx = np.abs(cv2.Sobel(d, cv2.CV_32F, 1, 0, ksize=3)) / 4
    gy = np.abs(cv2.Sobel(d, cv2.CV_32F, 0, 1, ksize=3)) / 4
    near = K[0, 0] * baseline_m / cfg.flow_depth_max_m
    ground, ground_slope = ground_plane(disp)
    with np.errstate(invalid="ignore"):
        cand = np.isfinite(disp) & (disp >= near) & ~ground
    cand &= np.maximum(gx, gy) <= 0.08 * np.maximum(d, 1.0)
    cand = cv2.morphologyEx(cand.astype(np.uint8), cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
    n, lab = cv2.connectedComponents(cand, connectivity=4)
    out = []
    for i in range(1, n):
        comp = lab == i
        v, u = np.nonzero(comp)
        if ground_slope > 0 and v.max() - v.min() >= 3:
            A = np.stack([u, v, np.ones_like(u)], 1).astype(np.float64)
            slope_v = np.linalg.lstsq(A, disp[v, u].astype(np.float64), rcond=None)[0][1]
            if slope_v > 0.5 * ground_slope:
                continue
        out.append(comp)
    return out


def depth_moving_regions(rates: list[list[np.ndarray]], disp: np.ndarray, K: np.ndarray, baseline_m: float,
                         cfg: FlowObjectConfig, proposals: list[np.ndarray] | None = None) -> np.ndarray:
    """Regions moving in depth (H, W) bool, by a region-level test: a disparity change of a few
    hundredths of a pixel per frame is far below one pixel's noise but not below the noise of the
    median over a region's hundreds of pixels over ``flow_depth_gap`` frames. A proposal
    (:func:`depth_proposals`) is moving when, in each time direction measured (``rates``: per-pixel
    :func:`disparity_rate` towards a later and an earlier frame), the median rate over its pixels
    exceeds ``flow_depth_rate_px`` and ``flow_depth_rate_rel`` x its disparity, with the same sign.
    ``rates``: per time direction, the rate maps of a long and then a shorter gap; the first where
    the region is measured (at least 30 px and half of it: a panning camera takes objects out of
    view over a long gap) is used. ``proposals``: :func:`depth_proposals` of ``disp`` when already made."""
    out = np.zeros(disp.shape, bool)
    if not rates:
        return out
    f2 = K[0, 0] * K[1, 1]
    for comp in depth_proposals(disp, K, baseline_m, cfg) if proposals is None else proposals:
        area = int(comp.sum())
        d_med = float(np.median(disp[comp]))
        z = K[0, 0] * baseline_m / d_med
        if area * z * z / f2 < cfg.flow_min_area_m2 or area > 0.25 * disp.size:
            continue  # too small to be an object, or the scene itself (backdrop, a wall)
        meds = []
        for per_gap in rates:
            for rate in per_gap:
                r = rate[comp]
                r = r[np.isfinite(r)]
                if r.size >= max(30, 0.5 * area):
                    meds.append(float(np.median(r)))
                    break
            else:
                break  # much of the region is occluded or leaves the view at every gap: no verdict
        else:
            limit = max(cfg.flow_depth_rate_px, cfg.flow_depth_rate_rel * d_med)
            if all(abs(m) >= limit for m in meds) and len({np.sign(m) for m in meds}) == 1:
                out |= comp
    return out


def score_moving_regions(score: np.ndarray, disp: np.ndarray, K: np.ndarray, baseline_m: float,
                         cfg: FlowObjectConfig, proposals: list[np.ndarray],
                         found: np.ndarray | None = None) -> np.ndarray:
    """Regions moving by a region-level test of the motion score (H, W) bool: a small or far object
    whose every pixel sits a steady 3-4 sigma off the static prediction has no pixel above
    ``flow_seed_score`` (so :func:`moving_regions` drops it), but the median over its pixels is far
    above a static region's (about 1.5 for pure noise: the median length of a 3D unit normal). A
    proposal (:func:`depth_proposals`, objects standing up from the ground) with the score known
    (finite) on at least half of it is moving when that median is at least ``flow_region_score``.
    ``score``: (H, W) NaN where unknown. ``found``: (H, W) bool regions already seen moving by the pixel
    test; a proposal touching them is left to that test (its regions, and so the tracks' centroids,
    stay as they were: the region test only adds objects the pixel test missed on that frame)."""
    out = np.zeros(disp.shape, bool)
    if cfg.flow_region_score <= 0:
        return out
    f2 = K[0, 0] * K[1, 1]
    for comp in proposals:
        area = int(comp.sum())
        z = K[0, 0] * baseline_m / float(np.median(disp[comp]))
        if area * z * z / f2 < cfg.flow_min_area_m2 or area > 0.25 * disp.size:
            continue
        if found is not None and (comp & found).any():
            continue
        sc = score[comp]
        sc = sc[np.isfinite(sc)]
        if sc.size >= max(30, 0.5 * area) and float(np.median(sc)) >= cfg.flow_region_score:
            out |= comp
    return out


# ----------------------------------------------------------------------------- linking
def _color_name(rgb: np.ndarray) -> str:
    """A plain colour word for a mean RGB (0-255)."""
    h, s, v = colorsys.rgb_to_hsv(*(np.clip(rgb, 0, 255) / 255.0))
    if s < 0.25 or v < 0.15:
        return ""
    hue = h * 360
    for limit, name in ((15, "red"), (40, "orange"), (70, "yellow"), (165, "green"), (200, "cyan"),
                        (255, "blue"), (320, "purple"), (361, "red")):
        if hue < limit:
            return name
    return ""


def _link(detections: list[list[dict]], cfg: FlowObjectConfig) -> list[dict]:
    """Greedy nearest-centroid linking of per-frame detections into tracks."""
    tracks_: list[dict] = []
    for t, dets in enumerate(detections):
        cands = []
        for ti, tr in enumerate(tracks_):
            gap = t - tr["frames"][-1]
            if gap > cfg.flow_max_gap + 1:
                continue
            pred = tr["centers"][-1]
            if len(tr["frames"]) >= 2:
                vel = (tr["centers"][-1] - tr["centers"][-2]) / (tr["frames"][-1] - tr["frames"][-2])
                pred = pred + vel * gap
            for di, det in enumerate(dets):
                dist = float(np.linalg.norm(det["center"] - pred))
                if dist <= cfg.flow_link_max_m * gap:
                    cands.append((dist, ti, di))
        used_d = set()
        for ti, di in greedy_assign(cands):
            used_d.add(di)
            tr = tracks_[ti]
            tr["frames"].append(t)
            tr["centers"].append(dets[di]["center"])
            tr["masks"][t] = dets[di]["mask"]
        for di, det in enumerate(dets):
            if di not in used_d:
                tracks_.append({"frames": [t], "centers": [det["center"]], "masks": {t: det["mask"]}})
    return tracks_


def _warp_mask(mask_s: np.ndarray, flow_ts: np.ndarray, disp_s: np.ndarray, disp_t: np.ndarray) -> np.ndarray:
    """An object's mask at frame s carried to frame t by the flow t -> s, kept where the disparity at t
    stays within 15 % (at least 1 px) of the object's median disparity at s."""
    H, W = mask_s.shape
    v, u = np.mgrid[0:H, 0:W].astype(np.float32)
    warped = cv2.remap(mask_s.astype(np.uint8), u + flow_ts[..., 0], v + flow_ts[..., 1], cv2.INTER_NEAREST,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0
    d_obj = np.nanmedian(np.where(mask_s, disp_s, np.nan))
    with np.errstate(invalid="ignore"):
        warped &= np.abs(disp_t - d_obj) <= max(1.0, 0.15 * d_obj)
    return cv2.morphologyEx(warped.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0


def _propagate(track_masks: dict[int, np.ndarray], n: int, flow, disparity: np.ndarray,
               min_pixels: int = 20) -> dict[int, np.ndarray]:
    """Fill the frames where a kept object was not seen moving (it paused, or moved too little in
    one pair) by carrying its nearest mask along the frame-to-frame flow, forwards then backwards."""
    out = dict(track_masks)
    for order, step in ((range(n), -1), (range(n - 1, -1, -1), 1)):
        for t in order:
            s = t + step
            if t in out or s not in out or not 0 <= s < n or not out[s].any():
                continue
            warped = _warp_mask(out[s], flow(t, s), disparity[s], disparity[t])
            if warped.sum() >= min_pixels:
                out[t] = warped
    return out


def _mask_centroid(mask: np.ndarray, disp: np.ndarray, K: np.ndarray, baseline_m: float) -> np.ndarray | None:
    """Median camera-frame 3D point of a mask's pixels with a disparity (None when too few)."""
    v, u = np.nonzero(mask & np.isfinite(disp) & (disp > 0))
    if len(v) < 5:
        return None
    return np.median(backproject(np.stack([u, v], 1).astype(np.float64), disp[v, u].astype(np.float64), K, baseline_m), 0)


def _world_centroids(filled: dict[int, np.ndarray], disparity: np.ndarray, K: np.ndarray, baseline_m: float,
                     camera_to_world: np.ndarray) -> dict[int, np.ndarray]:
    """World 3D centroid (median point) of a track's mask on each frame where one can be placed."""
    out = {}
    for t, mask in filled.items():
        c = _mask_centroid(mask, disparity[t], K, baseline_m)
        if c is not None:
            out[t] = camera_to_world[t, :3, :3] @ c + camera_to_world[t, :3, 3]
    return out


def moving_together(ca: dict[int, np.ndarray], cb: dict[int, np.ndarray], near_m: float,
                    steady_m: float) -> tuple[bool, str]:
    """Whether two tracks' world centroids (frame -> (3,) m) are one object's parts: on at least 3
    common frames, the median top-down (x, z) distance between them is at most ``near_m`` and their
    top-down offset stays put (its median deviation from the median offset is at most ``steady_m``):
    they move as one body. Top-down, because two objects standing on the ground cannot share a
    footprint while the parts of one (its top and bottom) do; world y is the vertical when the camera
    is level at frame 0. Returns (verdict, a short reason with the measured figures)."""
    common = sorted(set(ca) & set(cb))
    if len(common) < 3:
        return False, f"{len(common)} common frames"
    sep = np.array([(ca[t] - cb[t])[[0, 2]] for t in common])
    dist = float(np.median(np.linalg.norm(sep, axis=1)))
    wobble = float(np.median(np.linalg.norm(sep - np.median(sep, 0), axis=1)))
    why = (f"top-down centres {dist:.2f} m apart (median) over {len(common)} common frames, offset steady "
           f"to {wobble:.2f} m")
    return dist <= near_m and wobble <= steady_m, why


def _merge_parts(kept: list[tuple[dict, dict]], disparity: np.ndarray, K: np.ndarray,
                 baseline_m: float, camera_to_world: np.ndarray, cfg: FlowObjectConfig) -> list[tuple[dict, dict]]:
    """Merge kept tracks that are parts of one object (the top and bottom of a tall cylinder whose
    middle moved too little to be flagged, an object and its moving contact shadow, two halves of a
    region cut at a disparity edge). Two tests, either suffices:

    * touching: on at least half of the frames where both are seen, their masks touch (within 3 px) at
      median depths less than max(0.3 m, 10 %) apart, or their 3D centroids lie within ``flow_merge_m``;
    * moving together (:func:`moving_together`): top-down centres within ``flow_dup_m`` (median) whose
      offset stays within ``flow_dup_steady_m`` over their common frames.

    The smaller track (fewer frames seen moving) is merged into the larger; its log entry says why."""
    fb = K[0, 0] * baseline_m
    kernel = np.ones((7, 7), np.uint8)
    out: list[tuple[dict, dict]] = []
    for entry, tr in sorted(kept, key=lambda et: -et[0]["frames_seen"]):
        tr["world"] = _world_centroids(tr["filled"], disparity, K, baseline_m, camera_to_world)
        for o_entry, o_tr in out:
            common = sorted(set(tr["filled"]) & set(o_tr["filled"]))
            same = 0
            for t in common:
                a, b = o_tr["filled"][t], tr["filled"][t]
                ca, cb = _mask_centroid(a, disparity[t], K, baseline_m), _mask_centroid(b, disparity[t], K, baseline_m)
                if (cv2.dilate(a.astype(np.uint8), kernel) > 0)[b].any():
                    za, zb = fb / np.nanmedian(disparity[t][a]), fb / np.nanmedian(disparity[t][b])
                    same += abs(za - zb) < max(0.3, 0.1 * min(za, zb))
                elif ca is not None and cb is not None:
                    same += np.linalg.norm(ca - cb) < cfg.flow_merge_m
            if common and same >= 0.5 * len(common):
                reason = f"touching, same depth on {same}/{len(common)} frames"
            elif cfg.flow_dup_m > 0:
                together, why = moving_together(o_tr["world"], tr["world"], cfg.flow_dup_m, cfg.flow_dup_steady_m)
                if not together:
                    continue
                reason = f"moving together: {why}"
            else:
                continue
            for t, m in tr["filled"].items():
                o_tr["filled"][t] = o_tr["filled"][t] | m if t in o_tr["filled"] else m
            o_tr["world"] = _world_centroids(o_tr["filled"], disparity, K, baseline_m, camera_to_world)
            entry.update(kept=False, merged_into=o_entry["candidate"],
                         reason=f"part of the same object as candidate {o_entry['candidate']} ({reason}): merged")
            break
        else:
            out.append((entry, tr))
    return sorted(out, key=lambda et: et[0]["candidate"])


def _slope_down(mask: np.ndarray, disp: np.ndarray) -> float | None:
    """Disparity growth down the image over a region (px per row; a least-squares plane
    d = a u + b v + c, returns b), None when the region spans fewer than 4 rows."""
    v, u = np.nonzero(mask & np.isfinite(disp))
    if len(v) < 20 or v.max() - v.min() < 3:
        return None
    A = np.stack([u, v, np.ones_like(u)], 1).astype(np.float64)
    return float(np.linalg.lstsq(A, disp[v, u].astype(np.float64), rcond=None)[0][1])


def ground_patch_ratio(filled: dict[int, np.ndarray], disparity: np.ndarray, ground_slopes: list[float]) -> float | None:
    """Median over a track's frames of its regions' disparity growth down the image over the
    ground's (:func:`ground_plane`): about 1 for a patch of the ground (a moving shadow, a flow error
    on the ground), near 0 for an object standing up from it. None when never measurable."""
    ratios = []
    for t, mask in filled.items():
        slope = _slope_down(mask, disparity[t]) if ground_slopes[t] > 0 else None
        if slope is not None:
            ratios.append(slope / ground_slopes[t])
    return float(np.median(ratios)) if ratios else None


# ----------------------------------------------------------------------------- the backend
def flow_objects(left: np.ndarray, disparity: np.ndarray, K: np.ndarray, baseline_m: float,
                 camera_to_world: np.ndarray, cfg: FlowObjectConfig | None = None,
                 track_cfg: tracks.TrackConfig | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]], np.ndarray]:
    """Find and track moving objects without masks.

    Args:
        left: (N, H, W, 3) uint8 RGB left frames; disparity: (N, H, W) float32 px (NaN unknown);
        K: 3x3; baseline_m: metres; camera_to_world: (N, 4, 4) left-camera poses (odometry).
    Returns:
        objects: the annotation's objects (``id``, ``label``, ``centers`` N x [x, y, z] world or None,
        ``yaw_rad``), as the mask path builds them; objects_log: one entry per candidate track
        (``candidate``, ``kept``, ``reason``, ``frames_seen``, ``id`` when kept); masks: (N, H, W)
        uint16 derived instance masks of the kept objects (0 = background).
    """
    cfg = cfg or FlowObjectConfig()
    track_cfg = track_cfg or tracks.TrackConfig()
    n, H, W = disparity.shape
    grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in left]
    gap = max(1, min(cfg.flow_gap, n - 1))
    dis = _dis()
    flows: dict[tuple[int, int], np.ndarray] = {}

    def flow(a: int, b: int) -> np.ndarray:
        if (a, b) not in flows:
            flows[(a, b)] = dis.calc(grays[a], grays[b], None)
        return flows[(a, b)]

    step = 8  # grid of PnP correspondences (px)
    gv, gu = np.mgrid[step // 2:H:step, step // 2:W:step]
    gaps = sorted({g for g in (gap, cfg.flow_long_gap) if 0 < g < n})

    def pair_pose(a: int, b: int) -> np.ndarray:
        """Camera-a -> camera-b from the odometry, refined by PnP on the flow a -> b."""
        f_ab = flow(a, b)
        rel = np.linalg.inv(camera_to_world[b]) @ camera_to_world[a]
        d = disparity[a][gv, gu]
        uv_next = np.stack([gu + f_ab[gv, gu, 0], gv + f_ab[gv, gu, 1]], -1)
        ok = np.isfinite(d) & (d > 0)
        return _refine_relative_pose(np.stack([gu[ok], gv[ok]], -1), d[ok], uv_next[ok], K, baseline_m, rel)

    moving = np.zeros((n, H, W), bool)
    for a in range(n):
        best_known = np.full((H, W), np.nan, np.float32)  # best score over the gaps, NaN where never known
        for g in gaps:
            scores = []
            for b in (a + g, a - g):
                if not 0 <= b < n:
                    continue
                score, known = motion_score(flow(a, b), flow(b, a), disparity[a], disparity[b], K, baseline_m,
                                            pair_pose(a, b), cfg)
                scores.append(np.where(known, score, np.nan))
            # moving in both directions of time: a disparity or flow error of one pair rarely repeats in
            # the other; the long gap sees slow (e.g. depth) motion the short one misses
            best_known = np.fmax(best_known, np.fmin.reduce(scores))
        moving[a] = moving_regions(np.nan_to_num(best_known, nan=0.0), disparity[a], K, baseline_m, cfg) > 0
        dg = min(cfg.flow_depth_gap, n - 1)
        proposals = depth_proposals(disparity[a], K, baseline_m, cfg) if (dg > 0 or cfg.flow_region_score > 0) else []
        moving[a] |= score_moving_regions(best_known, disparity[a], K, baseline_m, cfg, proposals, moving[a])
        # motion in depth far from the camera: per pixel it drowns in the disparity noise, so it is
        # tested per region, over a longer gap (depth_moving_regions)
        if dg > 0:
            rates = []
            for sign in (1, -1):
                bs = [a + sign * g for g in dict.fromkeys((dg, max(1, dg // 2))) if 0 <= a + sign * g < n]
                if bs:
                    rates.append([disparity_rate(flow(a, b), flow(b, a), disparity[a], disparity[b], K, baseline_m,
                                                 pair_pose(a, b), b - a, cfg) for b in bs])
            moving[a] |= depth_moving_regions(rates, disparity[a], K, baseline_m, cfg, proposals)

    # per-frame detections: components of the moving mask, merged when close in 3D
    detections: list[list[dict]] = []
    for t in range(n):
        n_cc, lab = cv2.connectedComponents(moving[t].astype(np.uint8), connectivity=8)
        dets = []
        for i in range(1, n_cc):
            mask = lab == i
            v, u = np.nonzero(mask)
            pts = backproject(np.stack([u, v], 1).astype(np.float64), disparity[t][v, u].astype(np.float64), K, baseline_m)
            c = np.median(pts, axis=0)
            world = camera_to_world[t, :3, :3] @ c + camera_to_world[t, :3, 3]
            dets.append({"center": world, "mask": mask, "size": len(v)})
        merged: list[dict] = []
        for det in sorted(dets, key=lambda d: -d["size"]):
            for m in merged:
                if np.linalg.norm(m["center"] - det["center"]) < cfg.flow_merge_m:
                    w = m["size"] / (m["size"] + det["size"])
                    m["center"] = w * m["center"] + (1 - w) * det["center"]
                    m["mask"] = m["mask"] | det["mask"]
                    m["size"] += det["size"]
                    break
            else:
                merged.append(dict(det))
        detections.append(merged)

    candidates = _link(detections, cfg)
    min_frames = max(2, int(np.ceil(cfg.flow_min_track_fraction * n)))
    log_entries: list[dict[str, Any]] = []
    kept = []
    blips = 0
    for k, tr in enumerate(sorted(candidates, key=lambda tr: (tr["frames"][0], -len(tr["frames"])))):
        entry: dict[str, Any] = {"candidate": k, "frames_seen": len(tr["frames"]),
                                 "first_frame": tr["frames"][0], "last_frame": tr["frames"][-1]}
        if len(tr["frames"]) == 1:
            blips += 1  # one summary entry below: a clip can have dozens
            continue
        if len(tr["frames"]) < min_frames:
            entry.update(kept=False, reason=f"seen moving on {len(tr['frames'])}/{n} frames (< {min_frames}): noise "
                                            "or a brief mismatch")
        else:
            kept.append((entry, tr))
            entry.update(kept=True)
        log_entries.append(entry)
    for entry, tr in kept:
        tr["filled"] = _propagate(tr["masks"], n, flow, disparity)
        entry["frames_propagated"] = len(tr["filled"]) - len(tr["masks"])
    kept = _merge_parts(kept, disparity, K, baseline_m, camera_to_world, cfg)
    # a region lying on the ground is not an object: a moving shadow, or flow / disparity errors on
    # the slanted ground (measured on the tuning clips: ratio 0.59-0.69 for such, <= 0.35 for objects)
    ground_slopes = [ground_plane(disparity[t])[1] for t in range(n)]
    standing = []
    for entry, tr in kept:
        ratio = ground_patch_ratio(tr["filled"], disparity, ground_slopes)
        if ratio is not None and ratio > 0.5:
            entry.update(kept=False, reason=f"seen moving on {entry['frames_seen']}/{n} frames, but it lies on the "
                                            f"ground (its disparity grows down the image at {ratio:.2f} x the "
                                            "ground's rate): a moving shadow or a flow error")
        else:
            standing.append((entry, tr))
    kept = standing
    if blips:
        log_entries.append({"candidates": blips, "frames_seen": 1, "kept": False,
                            "reason": f"{blips} region(s) seen moving on one frame only: noise"})
    masks = np.zeros((n, H, W), np.uint16)
    for oid, (entry, tr) in enumerate(kept, start=1):
        for t, m in tr["filled"].items():
            masks[t][m & (masks[t] == 0)] = oid
    objects = []
    labels: list[str] = []
    for oid, (entry, tr) in enumerate(kept, start=1):
        centers, stats = tracks.object_centers(masks, oid, disparity, K, baseline_m, camera_to_world, track_cfg)
        n_centres = sum(c is not None for c in centers)
        if n_centres < 2:
            entry.update(kept=False, reason=f"moving on {entry['frames_seen']} frames, but a centre could be placed "
                                            f"on only {n_centres} (too little depth on the region)")
            masks[masks == oid] = 0
            continue
        yaws = tracks.object_yaws(grays, masks, oid, disparity, K, baseline_m, camera_to_world, track_cfg)
        pix = left[masks == oid]
        colour = _color_name(pix.reshape(-1, 3).mean(axis=0)) if len(pix) else ""
        labels.append(f"{colour} object" if colour else "moving object")
        known = [np.asarray(c) for c in centers if c is not None]
        moved = float(np.linalg.norm(known[-1] - known[0]))
        entry.update(id=oid, reason=f"seen moving on {entry['frames_seen']}/{n} frames (>= {min_frames}); centre on "
                                    f"{n_centres} frames; moved {moved:.2f} m")
        objects.append({"id": oid, "centers": centers,
                        "yaw_rad": [None if (y is None or c is None) else round(float(y), 5)
                                    for c, y in zip(centers, yaws)]})
    # unique labels: number the ones that share a colour
    for i, obj in enumerate(objects):
        same = [j for j, other in enumerate(labels) if other == labels[i]]
        obj["label"] = labels[i] if len(same) == 1 else f"{labels[i]} {same.index(i) + 1}"
    for entry in log_entries:
        if entry.get("id") is not None:
            entry["label"] = next(o["label"] for o in objects if o["id"] == entry["id"])
    log.info("flow objects: %d moving object(s) kept of %d candidate track(s)", len(objects), len(candidates))
    return objects, log_entries, masks


# ----------------------------------------------------------------------------- scoring against ground truth
def match_to_gt(objects: list[dict[str, Any]], gt: dict[str, Any], max_rel_err: float = 0.25,
                min_frames: int = 3) -> dict[Any, int]:
    """Match estimated objects to ground-truth objects by centre (ids of a mask-free backend are its own).

    ``objects``: annotation objects (``id``, ``centers`` world or None); ``gt``: gt.json content.
    An estimate matches a gt object when, over at least ``min_frames`` frames where both are known
    (gt ``visible``), the median centre error is at most ``max_rel_err`` of the gt distance to the
    camera; pairs are taken greedily by that error. Returns {estimated id: gt id}.

    >>> gt = {"camera_to_world": [np.eye(4).tolist()] * 3,
    ...       "objects": [{"id": 7, "centers_world": [[0, 0, 5]] * 3, "visible": [True] * 3}]}
    >>> match_to_gt([{"id": 1, "centers": [[0.1, 0, 5]] * 3}], gt)
    {1: 7}
    """
    cam = np.asarray(gt["camera_to_world"], float)[:, :3, 3]
    pairs = []
    for e in objects:
        for g in gt.get("objects", []):
            gc = np.asarray(g["centers_world"], float)
            vis = g.get("visible", [True] * len(gc))
            rel = [np.linalg.norm(np.asarray(c) - gc[t]) / max(np.linalg.norm(gc[t] - cam[t]), 1e-6)
                   for t, c in enumerate(e["centers"]) if c is not None and vis[t]]
            if len(rel) >= min_frames and np.median(rel) <= max_rel_err:
                pairs.append((float(np.median(rel)), e["id"], g["id"]))
    out: dict[Any, int] = {}
    for _, eid, gid in sorted(pairs):
        if eid not in out and gid not in out.values():
            out[eid] = gid
    return out
