"""Object 3D tracks: per object and frame, a metric centre in world coordinates and a relative yaw.

Conventions: camera x right, y down, z forward; world = left camera at frame 0; metres.
Inputs are per-frame instance masks on the left view (``masks`` (N, H, W) uint16, 0 = background),
the left-view disparity (px, NaN unknown), K, baseline and the camera poses from
:mod:`mllm4d_lite.curation.odometry`. Masks come from the clip (synthetic clips ship them); a detector /
tracker backend for unlabelled real clips is a later step: without masks there are no objects.

Centre (:func:`object_centers`): the object's mask is eroded by ``erode_px`` (disparities at
silhouettes bleed into the background), its pixels with a known disparity are back-projected,
points farther than ``3 * 1.4826 * MAD`` from the median depth are dropped, and the mean of the
rest is the visible-surface centroid. We only see the near surface, so the centroid is pushed
away from the camera along the viewing ray by ``near_surface_factor`` times the object's
horizontal half-width. The factor 0.7 sits
between a sphere (2/3: the pixel-uniform mean depth of a hemisphere lies 2r/3 in front of the
centre), a vertical cylinder (pi/4) and a box (0.5 seen edge-on, 1.0 face-on).

Partly hidden objects: a side of the mask (left / right / top / bottom) is "cut" when it lies on
the image border or touches a NEARER object's mask (an occluder). The half-width and half-height
(extent of the points perpendicular to the ray) are measured once per clip, as the median over the
frames with no cut side (90th percentile over all frames when there are none), and used in every
frame: for the push, and to place the centre that half-extent from the uncut side along a cut
axis (the visible centroid of an object half out of view lies a quarter-width off). Frames whose
visible extent along a cut axis is below ``min_visible_extent`` of the full one, or whose mask
area x depth^2 (constant for a fully visible object) is below ``min_visible_area`` of the clip's
typical value, give ``None``: too little is seen, and a sliver's depth often comes from the
occluder. Points farther than ``max_depth_spread`` half-widths from the median depth are dropped
as well (background or occluder depths leaking into a small mask can outnumber what the MAD
filter tolerates); docs/results.md has their effect on the estimated-vs-ground-truth QA agreement.
Frames with fewer than ``min_pixels`` valid points, or less than ``min_valid_fraction`` of the
mask with depth, give ``None``.

Yaw (:func:`object_yaws`): Shi-Tomasi corners inside the mask are tracked with KLT from an
anchor frame; both ends are lifted to 3D and moved to world coordinates, and the rotation about
the world vertical axis is the 2D Kabsch (Procrustes) angle between the centred (x, z) point
sets, with one round of residual trimming. ``yaw_rad[t]`` is the heading CHANGE since the first
visible frame (the absolute heading is not observable from a partial surface), in the gt
convention: counter-clockwise seen from above in a plot with x right and z up is positive. None
where the object is not visible or too few points agree; after a gap in visibility the chain
cannot be linked, so later frames stay None. Solids of revolution (sphere, cylinder, cone: the
silhouette's width / height varies by less than ``yaw_round_max_aspect_cv`` over the clip) keep
their silhouette and shading while turning, which makes KLT tracks lag their texture; their turn
is fitted directly on the texture instead (:func:`_round_object_yaws`, the comment block above it,
and docs/results.md "Object yaw change"), over their first run of frames whose silhouette is not
cut left or right.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from mllm4d_lite.curation.odometry import backproject

log = logging.getLogger(__name__)


@dataclass
class TrackConfig:
    """Settings of the object centre and yaw estimates (embedded in the curate config)."""

    erode_px: int = field(default=1, metadata={"help": "erode object masks before lifting (px)"})
    min_pixels: int = field(default=20, metadata={"help": "fewer valid depth pixels = centre unknown"})
    min_valid_fraction: float = field(default=0.3, metadata={"help": "share of the mask that needs depth"})
    near_surface_factor: float = field(default=0.7, metadata={"help": "push the surface centroid back by this x half-width (0 = off)"})
    max_depth_spread: float = field(default=2.5, metadata={"help": "drop object points deeper or nearer than this x the half-width from the median depth (0 = off)"})
    min_visible_area: float = field(default=0.3, metadata={"help": "a frame whose mask area x depth^2 is below this share of the clip's typical value (most of the object hidden) has no centre"})
    min_visible_extent: float = field(default=0.3, metadata={"help": "an object cut by the border or a nearer object with less than this share of its width / height in view has no centre"})
    yaw_smooth_px: int = field(default=1, metadata={"help": "average object disparities over this window before lifting points for yaw (px)"})
    yaw_min_points: int = field(default=6, metadata={"help": "tracked points needed for a yaw estimate"})
    yaw_max_residual_m: float = field(default=0.05, metadata={"help": "Kabsch inlier threshold (m)"})
    yaw_round_max_aspect_cv: float = field(default=0.045, metadata={"help": "an object whose silhouette width/height varies less than this over the clip (coefficient of variation) is taken as a solid of revolution and its yaw read from its texture (0 = always the point tracks)"})


def _to_world(points_cam: np.ndarray, cam_to_world: np.ndarray) -> np.ndarray:
    return points_cam @ cam_to_world[:3, :3].T + cam_to_world[:3, 3]


def _object_points(mask: np.ndarray, disparity_px: np.ndarray, K: np.ndarray, baseline_m: float,
                   cfg: TrackConfig) -> tuple[np.ndarray | None, dict[str, float]]:
    """Camera-frame points (M, 3) of one object's visible surface, or None when unreliable."""
    area = int(mask.sum())
    if area == 0:
        return None, {"area_px": 0.0}
    x0, y0, x1, y1 = _crop_box(mask, margin=2)
    mask, disparity_px = mask[y0:y1, x0:x1], disparity_px[y0:y1, x0:x1]
    if cfg.erode_px > 0:
        k = 2 * cfg.erode_px + 1
        eroded = cv2.erode(mask.astype(np.uint8), np.ones((k, k), np.uint8)) > 0
        if eroded.sum() >= cfg.min_pixels:
            mask = eroded
    v, u = np.nonzero(mask & np.isfinite(disparity_px) & (disparity_px > 0))
    disp_vals = disparity_px[v, u].astype(np.float64)
    u, v = u + x0, v + y0
    info = {"area_px": float(area), "valid_fraction": float(len(v) / max(int(mask.sum()), 1))}
    if len(v) < cfg.min_pixels or info["valid_fraction"] < cfg.min_valid_fraction:
        return None, info
    pts = backproject(np.stack([u, v], 1).astype(np.float64), disp_vals, K, baseline_m)
    z = pts[:, 2]
    med = np.median(z)
    mad = 1.4826 * np.median(np.abs(z - med)) + 1e-3
    pts = pts[np.abs(z - med) <= 3 * mad]
    if len(pts) < cfg.min_pixels:
        return None, info
    return pts, info


def surface_to_center(points_cam: np.ndarray, touches_border: bool, factor: float,
                      half_width_m: float | None = None) -> np.ndarray:
    """Visible-surface centroid, pushed back along the viewing ray by ``factor`` x the horizontal
    half-width (see the module docstring). points_cam: (M, 3) camera frame. ``half_width_m``: the
    object's half-width when known from other frames (then the push is applied even when the mask
    touches the border); otherwise it is measured from the points and the push is skipped for a
    mask touching the border."""
    centroid = points_cam.mean(axis=0)
    if factor <= 0 or (touches_border and half_width_m is None):
        return centroid
    ray = centroid / np.linalg.norm(centroid)
    side = _side_axis(ray)
    if side is None:
        return centroid
    if half_width_m is None:
        lateral = points_cam @ side
        half_width_m = 0.5 * (np.percentile(lateral, 98) - np.percentile(lateral, 2))
    return centroid + factor * half_width_m * ray


def _side_axis(ray: np.ndarray) -> np.ndarray | None:
    """Unit horizontal direction perpendicular to ``ray`` (camera y is vertical-ish: y down)."""
    side = np.cross(ray, [0.0, 1.0, 0.0])
    norm = np.linalg.norm(side)
    return None if norm < 1e-6 else side / norm


# image sides: index into the (left, right, top, bottom) truncation flags
_LEFT, _RIGHT, _TOP, _BOTTOM = range(4)


def _truncated_sides(ids: np.ndarray, object_id: int, disparity_px: np.ndarray, object_disp_px: float,
                     box: tuple[int, int, int, int]) -> list[bool]:
    """Which extremes (left, right, top, bottom) of an object's visible mask are set by something
    other than the object's own outline: the image border, or a NEARER object's mask touching it
    there (an occluder). ``ids``: (H, W) instance ids; ``box``: the mask's tight bounding box
    (x0, y0, x1, y1), x1/y1 exclusive; ``object_disp_px``: the object's median disparity."""
    H, W = ids.shape
    x0, y0, x1, y1 = box
    out = [x0 == 0, x1 == W, y0 == 0, y1 == H]
    m = 4  # context around the box: disparities right at an occlusion edge are often unknown
    cx0, cy0, cx1, cy1 = max(0, x0 - m), max(0, y0 - m), min(W, x1 + m), min(H, y1 + m)
    crop = ids[cy0:cy1, cx0:cx1]
    mask = (crop == object_id).astype(np.uint8)
    ring = (cv2.dilate(mask, np.ones((3, 3), np.uint8)) > 0) & (mask == 0) & (crop != 0)
    if not ring.any():
        return out
    v, u = np.nonzero(ring)
    other = crop[v, u]
    disp_crop = disparity_px[cy0:cy1, cx0:cx1]
    # an occluder is nearer: larger disparity (its median over the context crop)
    near = np.zeros(len(v), bool)
    for oid in set(other.tolist()):
        dm = disp_crop[(crop == oid) & np.isfinite(disp_crop)]
        if len(dm) and np.median(dm) > object_disp_px * 1.03:
            near |= other == oid
    if not near.any():
        return out
    u, v = u[near] + cx0, v[near] + cy0
    out[_LEFT] |= bool((u <= x0).any())
    out[_RIGHT] |= bool((u >= x1 - 1).any())
    out[_TOP] |= bool((v <= y0).any())
    out[_BOTTOM] |= bool((v >= y1 - 1).any())
    return out


def _axis_centre(lo: float, hi: float, mean: float, half: float | None, cut_lo: bool, cut_hi: bool) -> float:
    """Centre along one axis from the visible extent [lo, hi] and the object's known half-extent:
    with one end cut off (border / occluder) the centre is ``half`` from the other end."""
    if half is None or cut_lo == cut_hi:
        return mean
    return hi - half if cut_lo else lo + half


def _frame_geometry(frame: dict, pts: np.ndarray) -> dict:
    """``frame`` with its points and their extents (2nd / 98th percentile, mean) along the lateral
    and vertical axes."""
    side, up = frame["side"], frame["up"]
    lat, ver = (pts @ side if side is not None else pts[:, 0]), pts @ up
    (lat_lo, lat_hi), (ver_lo, ver_hi) = np.percentile(np.stack([lat, ver]), [2, 98], axis=1).T
    return {**frame, "pts": pts, "lat": (float(lat_lo), float(lat_hi), float(lat.mean())),
            "ver": (float(ver_lo), float(ver_hi), float(ver.mean()))}


def object_centers(masks: np.ndarray, object_id: int, disparity_px: np.ndarray, K: np.ndarray, baseline_m: float,
                   camera_to_world: np.ndarray, cfg: TrackConfig | None = None) -> tuple[list[list[float] | None], dict[str, float]]:
    """World centre per frame for one object.

    The object's half-width and half-height are measured once per clip (median over frames where
    no side of its mask is cut by the image border or a nearer object). In frames where a side is
    cut, the centre along that axis is placed that half-extent from the uncut side, and frames
    whose visible extent along a cut axis is below ``min_visible_extent`` of the full one give
    None (too little of the object is seen to place it).

    Args:
        masks: (N, H, W) instance ids; disparity_px: (N, H, W) px (NaN unknown);
        camera_to_world: (N, 4, 4) left-camera poses.
    Returns:
        N entries of [x, y, z] (metres, world) or None; stats (frames with a centre, mean valid fraction).
    """
    cfg = cfg or TrackConfig()
    n = masks.shape[0]
    frames: list[dict | None] = []
    for i in range(n):
        mask = masks[i] == object_id
        pts, info = _object_points(mask, disparity_px[i], K, baseline_m, cfg)
        if pts is None:
            frames.append(None)
            continue
        x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
        ray = pts.mean(axis=0) / np.linalg.norm(pts.mean(axis=0))
        side = _side_axis(ray)
        up = np.cross(side, ray) if side is not None else np.array([0.0, 1.0, 0.0])  # image-down-ish
        obj_disp = float(np.median(disparity_px[i][mask & np.isfinite(disparity_px[i])]))
        cut = _truncated_sides(masks[i], object_id, disparity_px[i], obj_disp, (x, y, x + w, y + h))
        # area x depth^2 is constant for a fully visible object at any distance (pinhole camera)
        info["area_depth2"] = info["area_px"] * float(np.median(pts[:, 2])) ** 2
        frames.append(_frame_geometry({"info": info, "cut": cut, "side": side, "up": up}, pts))
    clean = [f for f in frames if f is not None and not any(f["cut"])]
    half_w = half_h = None
    seen = [f["info"]["area_depth2"] for f in frames if f is not None]
    full_area = float(np.median([f["info"]["area_depth2"] for f in clean])) if clean else (
        float(np.percentile(seen, 90)) if seen else 0.0)
    if clean:
        half_w = float(np.median([0.5 * (f["lat"][1] - f["lat"][0]) for f in clean]))
        half_h = float(np.median([0.5 * (f["ver"][1] - f["ver"][0]) for f in clean]))
    elif seen:  # always cut somewhere: cutting only shrinks the extents, so take a high percentile
        half_w = float(np.percentile([0.5 * (f["lat"][1] - f["lat"][0]) for f in frames if f is not None], 90))
        half_h = float(np.percentile([0.5 * (f["ver"][1] - f["ver"][0]) for f in frames if f is not None], 90))
    out: list[list[float] | None] = []
    fractions = []
    for i, f in enumerate(frames):
        if f is None:
            out.append(None)
            continue
        cut = f["cut"]
        if f["info"]["area_depth2"] < cfg.min_visible_area * full_area:
            out.append(None)  # most of the object hidden (or its depth taken from an occluder)
            continue
        if half_w is not None and cfg.max_depth_spread > 0:
            # the visible surface cannot be much deeper than the object is wide: drop background
            # (or occluder) depths that leaked into the mask and survived the MAD filter
            z = f["pts"][:, 2]
            keep = np.abs(z - np.median(z)) <= max(cfg.max_depth_spread * half_w, 0.05)
            if not keep.all() and keep.sum() >= cfg.min_pixels:
                f = _frame_geometry(f, f["pts"][keep])
        c = surface_to_center(f["pts"], any(cut), cfg.near_surface_factor, half_w)
        if half_w is not None and f["side"] is not None:
            axes = [(f["lat"], half_w, cut[_LEFT], cut[_RIGHT], f["side"], np.array([1.0, 0.0, 0.0])),
                    (f["ver"], half_h, cut[_TOP], cut[_BOTTOM], f["up"], np.array([0.0, 1.0, 0.0]))]
            unreliable = False
            for (lo, hi, mean), half, a, b, axis, image_dir in axes:
                if a == b:
                    continue
                if hi - lo < cfg.min_visible_extent * 2 * half:
                    unreliable = True
                    break
                # (a, b) = cut at image (left, right) or (top, bottom); swap when the axis runs the other way
                lo_cut, hi_cut = (a, b) if axis @ image_dir >= 0 else (b, a)
                target = _axis_centre(lo, hi, mean, half, lo_cut, hi_cut)
                c = c + (target - mean) * axis
            if unreliable:
                out.append(None)
                continue
        fractions.append(f["info"]["valid_fraction"])
        c = _to_world(c[None], camera_to_world[i])[0]
        out.append([float(x) for x in c])
    stats = {"frames_with_center": float(sum(c is not None for c in out)),
             "mean_valid_fraction": float(np.mean(fractions)) if fractions else 0.0,
             "half_width_m": float("nan") if half_w is None else half_w,
             "clean_frames": float(len(clean))}
    return out, stats


def kabsch_yaw(p_xz: np.ndarray, q_xz: np.ndarray) -> float:
    """Angle (rad) of the 2D rotation best mapping centred points ``p`` onto ``q`` ((M, 2) as
    (x, z)); counter-clockwise in a plot with x right and z up is positive.

    >>> p = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    >>> q = np.array([[0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # p turned by +90 deg
    >>> round(math.degrees(kabsch_yaw(p, q)), 6)
    90.0
    """
    p = p_xz - p_xz.mean(axis=0)
    q = q_xz - q_xz.mean(axis=0)
    cross = np.sum(p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0])
    dot = np.sum(p[:, 0] * q[:, 0] + p[:, 1] * q[:, 1])
    return math.atan2(cross, dot)


def _rotate_xz(p: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([c * p[:, 0] - s * p[:, 1], s * p[:, 0] + c * p[:, 1]], 1)


def _fit_yaw(p_w: np.ndarray, q_w: np.ndarray, cfg: TrackConfig) -> float | None:
    """Yaw between two (M, 3) world point sets with one trimming round; None when unreliable."""
    if len(p_w) < cfg.yaw_min_points:
        return None
    p, q = p_w[:, [0, 2]], q_w[:, [0, 2]]
    keep = np.ones(len(p), bool)
    for _ in range(2):
        if keep.sum() < cfg.yaw_min_points:
            return None
        ang = kabsch_yaw(p[keep], q[keep])
        pred = _rotate_xz(p - p[keep].mean(0), ang) + q[keep].mean(0)
        keep = np.linalg.norm(pred - q, axis=1) <= cfg.yaw_max_residual_m + 0.03 * np.linalg.norm(p_w - q_w, axis=1).mean()
    if keep.sum() < cfg.yaw_min_points:
        return None
    spread = np.linalg.norm(p[keep] - p[keep].mean(0), axis=1).mean()
    if spread < 0.03:  # points too close together to fix a rotation
        return None
    return kabsch_yaw(p[keep], q[keep])


def _crop_box(mask: np.ndarray, margin: int) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1) of ``mask`` grown by ``margin`` px, clipped to the image."""
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
    H, W = mask.shape
    return max(0, x - margin), max(0, y - margin), min(W, x + w + margin), min(H, y + h + margin)


def _smooth_inside(disp: np.ndarray, mask: np.ndarray, size_px: int) -> np.ndarray:
    """Box-average the disparity over ``size_px`` windows using only pixels of ``mask`` with a known
    disparity (normalised convolution), so per-point depth noise shrinks without mixing in the
    background. NaN outside the mask."""
    if size_px <= 1 or not mask.any():
        return np.where(mask, disp, np.nan)
    ok = (mask & np.isfinite(disp)).astype(np.float32)
    num = cv2.boxFilter(np.where(ok > 0, disp, 0).astype(np.float32), -1, (size_px, size_px), normalize=False)
    den = cv2.boxFilter(ok, -1, (size_px, size_px), normalize=False)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((ok > 0) & (den > 0), num / den, np.nan)


# --- yaw of a solid of revolution (sphere, cylinder, cone, ...) -----------------------------------
# Turning about its vertical axis, such an object keeps its silhouette and its shading in place and
# only its texture moves, so KLT windows lag the surface (docs/results.md, "Object yaw change").
# Instead the turn between two frames is fitted directly: every inner pixel of the object is placed
# on the surface given by the silhouette (per image row, a circle about the vertical axis whose
# tangent rays are the row's silhouette edges), turned about the axis by a candidate angle, moved
# with the axis (the silhouette's bearing and the object's median disparity give it per frame) and
# projected into the next frame; the angle whose warp matches best wins. The images compared are
# temporal differences (frame k minus frame k-1 shifted by the silhouette's motion), in which the
# still shading and highlight cancel while the texture's change moves with the surface.

_ROUND_SIGMA_PX = 2.0       # high-pass scale: removes the smooth shading, keeps the texture
_ROUND_STEP_MAX_RAD = 0.35  # largest turn searched between two frames (20 deg)
_ROUND_INNER = 0.85         # use pixels within this share of the half-width from the axis
_ROUND_MEDIAN_PAIRS = 5     # running median over the per-pair turns (rejects single outliers)
_ROUND_AGREE = (0.5, 1.6)   # texture-change turn accepted within these multiples of the frames' turn
_ROUND_AGREE_RAD = math.radians(1.5)  # ... give or take this
_ROUND_MAX_PIXELS = 4000     # pixels used per frame pair at most


def _side_cut(ids: np.ndarray, object_id: int, disparity_px: np.ndarray) -> bool:
    """True when the object's mask is missing or its left / right extreme is set by the image border
    or a nearer object (its silhouette width is then not its own)."""
    mask = ids == object_id
    d = disparity_px[mask]
    d = d[np.isfinite(d) & (d > 0)]
    if not len(d):
        return True
    x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
    cut = _truncated_sides(ids, object_id, disparity_px, float(np.median(d)), (x, y, x + w, y + h))
    return cut[_LEFT] or cut[_RIGHT]


def _aspect_cv(masks: np.ndarray, object_id: int, disparity_px: np.ndarray, min_pixels: int) -> float | None:
    """Coefficient of variation of the silhouette's width / height over the frames where no side is
    cut; None with fewer than 3 such frames. A turning box changes its width, a solid of revolution
    does not."""
    H, W = masks.shape[1:]
    ratios = []
    for i in range(len(masks)):
        mask = masks[i] == object_id
        if mask.sum() < min_pixels:
            continue
        x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
        d = disparity_px[i][mask]
        d = d[np.isfinite(d) & (d > 0)]
        if not len(d) or any(_truncated_sides(masks[i], object_id, disparity_px[i], float(np.median(d)),
                                              (x, y, x + w, y + h))):
            continue
        ratios.append(w / h)
    if len(ratios) < 3:
        return None
    return float(np.std(ratios) / np.mean(ratios))


def _highpass_log(gray: np.ndarray, mask: np.ndarray, sigma_px: float) -> np.ndarray:
    """log intensity minus its local mean over ``mask`` (normalised convolution); 0 outside."""
    f = np.log1p(gray.astype(np.float32))
    m = mask.astype(np.float32)
    num = cv2.GaussianBlur(f * m, (0, 0), sigma_px)
    den = cv2.GaussianBlur(m, (0, 0), sigma_px)
    return np.where(mask, f - num / np.maximum(den, 1e-3), 0).astype(np.float32)


def _centroid(mask: np.ndarray) -> np.ndarray:
    v, u = np.nonzero(mask)
    return np.array([u.mean(), v.mean()])


def _texture_change(hp: list[np.ndarray | None], masks: list[np.ndarray]) -> list[np.ndarray | None]:
    """Per frame k: high-passed log frame ``hp[k]`` minus ``hp[k-1]`` shifted by the silhouette
    centroid's motion (None for the first frame and where the object is missing in either)."""
    out: list[np.ndarray | None] = [None] * len(hp)
    for k in range(1, len(hp)):
        if hp[k] is None or hp[k - 1] is None:
            continue
        shift = _centroid(masks[k]) - _centroid(masks[k - 1])
        M = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
        prev = cv2.warpAffine(hp[k - 1], M, hp[k].shape[::-1], flags=cv2.INTER_LINEAR)
        out[k] = np.where(masks[k], hp[k] - prev, 0).astype(np.float32)
    return out


def _revolution_rows(mask: np.ndarray, K: np.ndarray) -> tuple[float, dict[int, float]] | None:
    """Axis bearing (rad, camera x over z) and per-row angular half-width of a solid of revolution
    from its silhouette: a row's edge rays are tangent to the circle cut at that height, so the axis
    lies on their bisector. The larger side is taken, so an occluded side does not shrink it."""
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) < 3:
        return None
    sub = mask[rows]
    left = np.argmax(sub, axis=1) - 0.5
    right = mask.shape[1] - 1 - np.argmax(sub[:, ::-1], axis=1) + 0.5
    th_l, th_r = np.arctan((left - K[0, 2]) / K[0, 0]), np.arctan((right - K[0, 2]) / K[0, 0])
    bearing = float(np.median(0.5 * (th_l + th_r)))
    half = np.maximum(bearing - th_l, th_r - bearing)
    return bearing, dict(zip(rows.tolist(), half.tolist()))


def _revolution_points(us: np.ndarray, vs: np.ndarray, bearing: float, half: dict[int, float],
                       K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame surface points (M, 3) of pixels (us, vs) at unit axis distance (the geometry
    scales with it), and which pixels' rays meet the surface.

    A row's silhouette gives the radius at the height of its tangent points; a pixel's ray meets
    the surface nearer the camera, at another height (the camera looks down or up at it), so the
    radius there is looked up in that profile and the intersection redone (3 rounds)."""
    axis = np.array([math.sin(bearing), math.cos(bearing)])
    rows = np.array(sorted(half))
    r_rows = np.sin(np.array([half[v] for v in rows]))
    # tangent points lie sqrt(1 - r^2) from the camera (horizontally) at the row's slope
    h_rows = (rows - K[1, 2]) / K[1, 1] * np.sqrt(1.0 - r_rows ** 2) * math.cos(bearing)
    order = np.argsort(h_rows)
    h_rows, r_prof = h_rows[order], r_rows[order]
    slope = (vs - K[1, 2]) / K[1, 1]
    r = np.sin(np.array([half[int(v)] for v in vs]))
    ray = np.stack([(us - K[0, 2]) / K[0, 0], np.ones(len(us))], 1)
    a, b = (ray * ray).sum(1), ray @ axis
    for _ in range(3):
        # |t ray - axis|^2 = r^2: the nearer root
        disc = b * b - a * (1.0 - r * r)
        t = (b - np.sqrt(np.maximum(disc, 0))) / a
        r = np.interp(slope * t, h_rows, r_prof)
    return np.stack([t * ray[:, 0], slope * t, t], 1), disc > 0


def _axis_scale(disparity_px: np.ndarray, us: np.ndarray, vs: np.ndarray, pts_unit: np.ndarray, K: np.ndarray,
                baseline_m: float) -> float | None:
    """Axis distance (m): the median ratio of measured depth to unit-scale model depth."""
    d = disparity_px[vs, us]
    ok = np.isfinite(d) & (d > 0)
    if ok.sum() < 10:
        return None
    return float(np.median(K[0, 0] * baseline_m / d[ok] / pts_unit[ok, 2]))


def _revolution_pair_yaw(img0: np.ndarray, img1: np.ndarray, mask0: np.ndarray, mask1: np.ndarray,
                         disp0: np.ndarray, disp1: np.ndarray, K: np.ndarray, baseline_m: float,
                         pose0: np.ndarray, pose1: np.ndarray) -> float | None:
    """World heading change (rad) of a solid of revolution from frame 0 to 1; None when unreliable.

    img0/img1: (H, W) float32 texture images of the two frames; masks (H, W) bool; poses 4x4
    camera-to-world."""
    geo0, geo1 = _revolution_rows(mask0, K), _revolution_rows(mask1, K)
    if geo0 is None or geo1 is None:
        return None
    kernel = np.ones((5, 5), np.uint8)
    vs, us = np.nonzero(cv2.erode(mask0.astype(np.uint8), kernel))
    bearing0, half0 = geo0
    near_axis = np.abs(np.arctan((us - K[0, 2]) / K[0, 0]) - bearing0) < _ROUND_INNER * np.array([half0[v] for v in vs])
    us, vs = us[near_axis], vs[near_axis]
    pts0, ok = _revolution_points(us, vs, bearing0, half0, K)
    us, vs, pts0 = us[ok], vs[ok], pts0[ok]
    if len(us) > _ROUND_MAX_PIXELS:  # a large object: an even subset is plenty (and cv2.remap wants < 32767)
        keep = np.linspace(0, len(us) - 1, _ROUND_MAX_PIXELS).astype(int)
        us, vs, pts0 = us[keep], vs[keep], pts0[keep]
    v1, u1 = np.nonzero(cv2.erode(mask1.astype(np.uint8), kernel))
    if len(us) < 20 or len(u1) < 10:
        return None
    pts1, ok1 = _revolution_points(u1, v1, geo1[0], geo1[1], K)
    s0 = _axis_scale(disp0, us, vs, pts0, K, baseline_m)
    s1 = _axis_scale(disp1, u1[ok1], v1[ok1], pts1[ok1], K, baseline_m)
    if s0 is None or s1 is None:
        return None
    axis0 = _to_world(s0 * np.array([[math.sin(bearing0), 0.0, math.cos(bearing0)]]), pose0)[0]
    axis1 = _to_world(s1 * np.array([[math.sin(geo1[0]), 0.0, math.cos(geo1[0])]]), pose1)[0]
    rel = _to_world(s0 * pts0, pose0) - axis0
    target = img0[vs, us]
    inside1 = cv2.erode(mask1.astype(np.uint8), np.ones((3, 3), np.uint8))
    H, W = mask1.shape

    def cost(angle: float) -> float:
        q = rel.copy()
        q[:, [0, 2]] = _rotate_xz(rel[:, [0, 2]], angle)
        q[:, [0, 2]] += axis1[[0, 2]]
        q[:, 1] += axis0[1]
        qc = (q - pose1[:3, 3]) @ pose1[:3, :3]
        u = (K[0, 0] * qc[:, 0] / qc[:, 2] + K[0, 2]).astype(np.float32)
        v = (K[1, 1] * qc[:, 1] / qc[:, 2] + K[1, 2]).astype(np.float32)
        seen = inside1[np.clip(np.rint(v).astype(int), 0, H - 1), np.clip(np.rint(u).astype(int), 0, W - 1)] > 0
        if seen.sum() < 0.5 * len(target):
            return math.inf
        val = cv2.remap(img1, u[None], v[None], cv2.INTER_LINEAR)[0]
        return float(np.mean(np.abs(val - target)[seen]))

    # coarse grid, then a fine one around its best, then a parabola through the best three
    coarse = np.arange(-_ROUND_STEP_MAX_RAD, _ROUND_STEP_MAX_RAD + 1e-9, 0.01)
    costs = np.array([cost(a) for a in coarse])
    k = int(np.argmin(costs))
    if not np.isfinite(costs[k]) or k in (0, len(coarse) - 1):
        return None
    fine = coarse[k] + np.arange(-0.012, 0.0121, 0.002)
    costs = np.array([cost(a) for a in fine])
    k = int(np.argmin(costs))
    if not np.isfinite(costs[k]):
        return None
    if 0 < k < len(fine) - 1 and np.isfinite(costs[k - 1]) and np.isfinite(costs[k + 1]):
        curv = costs[k - 1] - 2 * costs[k] + costs[k + 1]
        if curv > 0:
            return float(fine[k] + 0.5 * (costs[k - 1] - costs[k + 1]) / curv * 0.002)
    return float(fine[k])


def _round_object_yaws(grays: list[np.ndarray], masks: np.ndarray, object_id: int, disparity_px: np.ndarray,
                       K: np.ndarray, baseline_m: float, camera_to_world: np.ndarray,
                       cfg: TrackConfig) -> list[float | None]:
    """:func:`object_yaws` for a solid of revolution, over its first run of frames in view with
    both sides of its silhouette its own."""
    n = len(grays)
    yaws: list[float | None] = [None] * n
    ms = [masks[i] == object_id for i in range(n)]
    usable = [int(ms[i].sum()) >= max(cfg.min_pixels, 30) and not _side_cut(masks[i], object_id, disparity_px[i])
              for i in range(n)]
    first = next((i for i in range(n) if usable[i]), None)
    if first is None:
        return yaws
    last = first
    while last + 1 < n and usable[last + 1]:
        last += 1
    hp = [_highpass_log(grays[i], ms[i], _ROUND_SIGMA_PX) for i in range(first, last + 1)]
    change = _texture_change(hp, ms[first:last + 1])

    def pair(images: list, k: int) -> float | None:
        return _revolution_pair_yaw(images[k - 1 - first], images[k - first], ms[k - 1], ms[k], disparity_px[k - 1],
                                    disparity_px[k], K, baseline_m, camera_to_world[k - 1], camera_to_world[k])

    # turn[k]: from the texture change at k-1 to that at k, i.e. over frames k-1.5 .. k-0.5. The
    # frames themselves give a steadier turn that the still shading pulls towards zero (0.8-0.9 x);
    # where the two disagree by more than that (a small or fast-moving object whose texture change
    # drowns in noise and resampling), the frames' turn is kept.
    turn: dict[int, float] = {}
    for k in range(first + 2, last + 1):
        a, b = pair(change, k), pair(hp, k)
        if a is not None and b is not None:
            lo, hi = sorted((_ROUND_AGREE[0] * b, _ROUND_AGREE[1] * b))
            if not lo - _ROUND_AGREE_RAD <= a <= hi + _ROUND_AGREE_RAD:
                a = b
        a = a if a is not None else b
        if a is not None:
            turn[k] = a
    keys = sorted(turn)
    h = _ROUND_MEDIAN_PAIRS // 2
    smooth = {k: float(np.median([turn[q] for q in keys[max(0, j - h):j + h + 1]])) for j, k in enumerate(keys)}
    yaws[first] = 0.0
    for j in range(first, last):
        # frames j .. j+1 lie between the spans of turn[j+1] and turn[j+2]
        near = [smooth[k] for k in (j + 1, j + 2) if k in smooth]
        if not near:
            break
        yaws[j + 1] = yaws[j] + float(np.mean(near))
    return yaws


_LK_OBJ = dict(winSize=(11, 11), maxLevel=2, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.01))


def object_yaws(grays: list[np.ndarray], masks: np.ndarray, object_id: int, disparity_px: np.ndarray, K: np.ndarray,
                baseline_m: float, camera_to_world: np.ndarray, cfg: TrackConfig | None = None) -> list[float | None]:
    """Heading change (rad) since the first visible frame, per frame (None = unknown); see module doc.

    grays: N (H, W) uint8 left frames; other arguments as in :func:`object_centers`. Round objects
    (see ``cfg.yaw_round_max_aspect_cv``) go through :func:`_round_object_yaws`, others through the
    KLT + Kabsch chain below.
    """
    cfg = cfg or TrackConfig()
    if cfg.yaw_round_max_aspect_cv > 0:
        cv = _aspect_cv(masks, object_id, disparity_px, cfg.min_pixels)
        if cv is not None and cv < cfg.yaw_round_max_aspect_cv:
            return _round_object_yaws(grays, masks, object_id, disparity_px, K, baseline_m, camera_to_world, cfg)
    n = len(grays)
    yaws: list[float | None] = [None] * n
    if cfg.yaw_smooth_px > 1:
        disparity_px = np.stack([_smooth_inside(disparity_px[i], masks[i] == object_id, cfg.yaw_smooth_px)
                                 for i in range(n)])
    anchor = -1          # frame whose yaw is known and where the tracked points were detected
    anchor_yaw = 0.0
    anchor_world = np.zeros((0, 3))
    pts = np.zeros((0, 2), np.float32)
    started = False
    for i in range(n):
        mask = masks[i] == object_id
        if mask.sum() < cfg.min_pixels:
            if started:
                break  # visibility gap: the chain cannot be linked any more
            continue
        if not started:
            started, yaws[i], anchor, anchor_yaw = True, 0.0, i, 0.0
        elif len(pts) >= cfg.yaw_min_points:
            # KLT on a crop around the object (pyramids of the full frame would cost several times more)
            x0, y0, x1, y1 = _crop_box(mask | (masks[i - 1] == object_id), margin=24)
            off = np.array([x0, y0], np.float32)
            a, b = grays[i - 1][y0:y1, x0:x1], grays[i][y0:y1, x0:x1]
            new, st, _ = cv2.calcOpticalFlowPyrLK(a, b, (pts - off).reshape(-1, 1, 2), None, **_LK_OBJ)
            back, st_b, _ = cv2.calcOpticalFlowPyrLK(b, a, new, None, **_LK_OBJ)
            new = new.reshape(-1, 2) + off
            back = back.reshape(-1, 2) + off
            ok = (st.ravel() == 1) & (st_b.ravel() == 1) & (np.linalg.norm(back - pts, axis=1) < 1.0)
            u = np.clip(np.rint(new[:, 0]).astype(int), 0, mask.shape[1] - 1)
            v = np.clip(np.rint(new[:, 1]).astype(int), 0, mask.shape[0] - 1)
            ok &= mask[v, u]
            pts, anchor_world = new[ok], anchor_world[ok]
            d = disparity_px[i][v[ok], u[ok]]
            has = np.isfinite(d) & (d > 0)
            if has.sum() >= cfg.yaw_min_points:
                cur_w = _to_world(backproject(pts[has].astype(np.float64), d[has].astype(np.float64), K, baseline_m),
                                  camera_to_world[i])
                delta = _fit_yaw(anchor_world[has], cur_w, cfg)
                if delta is not None:
                    yaws[i] = anchor_yaw + delta
        if yaws[i] is None:
            continue
        # Re-anchor on this frame when the point set has thinned out (or at the start).
        if i == anchor or len(pts) < max(2 * cfg.yaw_min_points, 12):
            inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8))
            inner &= np.isfinite(disparity_px[i]).astype(np.uint8)
            found = cv2.goodFeaturesToTrack(grays[i], maxCorners=60, qualityLevel=0.01, minDistance=3,
                                            mask=inner * 255, blockSize=3)
            pts = np.zeros((0, 2), np.float32) if found is None else found.reshape(-1, 2).astype(np.float32)
            d = disparity_px[i][np.rint(pts[:, 1]).astype(int), np.rint(pts[:, 0]).astype(int)] if len(pts) else np.zeros(0)
            good = np.isfinite(d) & (d > 0)
            pts = pts[good]
            anchor_world = _to_world(backproject(pts.astype(np.float64), d[good].astype(np.float64), K, baseline_m),
                                     camera_to_world[i]) if len(pts) else np.zeros((0, 3))
            anchor, anchor_yaw = i, float(yaws[i])
    return yaws
