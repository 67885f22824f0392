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
cannot be linked, so later frames stay None.
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


_LK_OBJ = dict(winSize=(11, 11), maxLevel=2, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.01))


def object_yaws(grays: list[np.ndarray], masks: np.ndarray, object_id: int, disparity_px: np.ndarray, K: np.ndarray,
                baseline_m: float, camera_to_world: np.ndarray, cfg: TrackConfig | None = None) -> list[float | None]:
    """Heading change (rad) since the first visible frame, per frame (None = unknown); see module doc.

    grays: N (H, W) uint8 left frames; other arguments as in :func:`object_centers`.
    """
    cfg = cfg or TrackConfig()
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
