"""Scene sampling for synthetic clips: objects, their motions and the camera trajectory, from a seed.

A scene is a textured ground plane, a textured cylindrical backdrop and 1-4 textured objects
(cube, sphere, cylinder, cone; one colour each) resting on the ground, each with its own motion
(static, translating in one of eight directions, turning in place, or driving along an arc).
A rectified stereo rig (baseline ``baseline_m`` along the camera x axis) moves through it
(static, forward/backward, sideways, panning, or combinations). :mod:`.render` draws it.

Conventions (as everywhere in the kit): camera x right, y DOWN, z forward; metres, seconds,
pixels. World = the LEFT camera frame at frame 0. The ground is the plane y = ``ground_y_m``
(> 0: below the camera). Headings (``yaw_rad``) are angles in the top-down (x right, z up) plot:
heading vector (cos yaw, sin yaw) in (x, z); a larger yaw is a counter-clockwise turn seen from
above in that plot, i.e. a turn to the LEFT for someone looking along +z. The camera looks
along +z at frame 0, so its yaw starts at pi/2.

The random draws of :func:`build_scene` (and of the textures it makes) come in a fixed order
from ``numpy.random.default_rng([seed, 0])``: a seed names a scene, so keep that order when editing.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from mllm4d_lite.curation.textures import backdrop_texture, ground_textures, object_texture

log = logging.getLogger(__name__)

SHAPES = ("cube", "sphere", "cylinder", "cone")
# Saturated base colours (RGB) that stay recognisable under shading and the grey-brown background.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (210, 40, 35),
    "green": (40, 170, 55),
    "blue": (40, 80, 220),
    "yellow": (230, 205, 40),
    "purple": (150, 60, 190),
    "orange": (245, 135, 30),
    "cyan": (45, 195, 210),
}
# Camera motions: name -> (translation direction in the camera's own frame (x right, z forward),
# pan sign (+1 = turn left = yaw increases)). Translation follows the current heading.
CAMERA_MOTIONS: dict[str, tuple[tuple[float, float], int]] = {
    "static": ((0.0, 0.0), 0),
    "forward": ((0.0, 1.0), 0),
    "backward": ((0.0, -1.0), 0),
    "left": ((-1.0, 0.0), 0),
    "right": ((1.0, 0.0), 0),
    "pan_left": ((0.0, 0.0), 1),
    "pan_right": ((0.0, 0.0), -1),
    "forward_pan_left": ((0.0, 1.0), 1),
    "forward_pan_right": ((0.0, 1.0), -1),
    "right_pan_left": ((1.0, 0.0), 1),
    "left_pan_right": ((-1.0, 0.0), -1),
}
# Object translation directions in the world x-z plane (angle in the top-down plot).
DIRECTIONS: dict[str, float] = {
    "right": 0.0, "away_right": 45.0, "away": 90.0, "away_left": 135.0,
    "left": 180.0, "toward_left": 225.0, "toward": 270.0, "toward_right": 315.0,
}
OBJECT_MOTIONS = ("static", "translate", "turn", "arc")


@dataclass
class CameraOptions:
    """The stereo rig and how it images the scene: part of :class:`SceneOptions`, and the same
    settings (names, defaults, help) on the ``mllm4d synth`` command line."""

    # The right camera sits at +baseline_m along camera x; both (rectified) views share hfov_deg.
    # Noise is Gaussian per channel (0-255 scale), blur a Gaussian, the right view's gain
    # 1 + uniform(-gain_jitter, +gain_jitter), brightness 1 - vignette in the image corners, and
    # specular the strength of a Blinn-Phong highlight on objects.
    baseline_m: float = field(default=0.3, metadata={"help": "stereo baseline (metres, > 0)"})
    hfov_deg: float = field(default=70.0, metadata={"help": "horizontal field of view (degrees)"})
    noise_std: float = field(default=3.0, metadata={"help": "sensor noise std (grey levels); 0 = off"})
    blur_sigma: float = field(default=0.9, metadata={"help": "optical blur sigma (pixels); 0 = off"})
    gain_jitter: float = field(default=0.02, metadata={"help": "right/left exposure mismatch (relative, +-)"})
    vignette: float = field(default=0.25, metadata={"help": "lens fall-off: corners this much darker; 0 = off"})
    specular: float = field(default=60.0, metadata={"help": "highlight strength on objects (grey levels); 0 = matte"})

    def validate(self) -> None:
        if not (self.baseline_m > 0):
            raise ValueError(f"baseline_m must be > 0, got {self.baseline_m}; use e.g. 0.3")
        if not (10.0 <= self.hfov_deg <= 150.0):
            raise ValueError(f"hfov_deg must be in [10, 150], got {self.hfov_deg}")
        if min(self.noise_std, self.blur_sigma, self.gain_jitter, self.specular) < 0:
            raise ValueError("noise_std, blur_sigma, gain_jitter and specular must be >= 0")
        if not (0 <= self.vignette < 1):
            raise ValueError(f"vignette must be in [0, 1), got {self.vignette}")


@dataclass
class SceneOptions(CameraOptions):
    """Generation options beyond seed/size/frames: the camera's (:class:`CameraOptions`) and the
    scene's below (recorded in clip.json under ``generator``, see :meth:`record`)."""

    num_objects: int | None = None   # 1-4; None = random
    num_moving: int | None = None    # how many objects move (0..num_objects); None = random
    camera_motion: str | None = None  # a key of CAMERA_MOTIONS; None = random
    camera_height_m: float | None = None  # camera height above ground; None = random 0.9-1.3 m
    backdrop_radius_m: float = 20.0  # radius of the cylindrical backdrop around the world origin
    depth_range_m: tuple[float, float] = (2.5, 7.5)  # objects start this far ahead of the camera
    travel_range_m: tuple[float, float] = (0.7, 1.6)  # path length of translating / arcing objects
    object_motions: tuple[str, ...] | None = None  # motions a moving object draws from; None = all
    directions: tuple[str, ...] | None = None  # keys of DIRECTIONS a translation draws from; None = all
    clip_id: str | None = None       # default synth_s<seed:05d>

    def validate(self) -> None:
        super().validate()
        if self.num_objects is not None and not (1 <= self.num_objects <= len(SHAPES)):
            raise ValueError(f"num_objects must be 1..{len(SHAPES)} or None, got {self.num_objects}")
        if self.num_moving is not None and self.num_moving < 0:
            raise ValueError(f"num_moving must be >= 0, got {self.num_moving}")
        if self.camera_motion is not None and self.camera_motion not in CAMERA_MOTIONS:
            raise ValueError(f"camera_motion {self.camera_motion!r} unknown; choose from {list(CAMERA_MOTIONS)}")
        for name in ("depth_range_m", "travel_range_m"):
            lo, hi = getattr(self, name)
            if not (0 < lo <= hi):
                raise ValueError(f"{name} must be (min, max) with 0 < min <= max, got {(lo, hi)}")
        if self.object_motions is not None and (not self.object_motions
                                                or set(self.object_motions) - set(OBJECT_MOTIONS[1:])):
            raise ValueError(f"object_motions must be a non-empty subset of {list(OBJECT_MOTIONS[1:])}, "
                             f"got {self.object_motions}")
        if self.directions is not None and (not self.directions or set(self.directions) - set(DIRECTIONS)):
            raise ValueError(f"directions must be a non-empty subset of {list(DIRECTIONS)}, got {self.directions}")
        if self.camera_height_m is not None and not (0.2 <= self.camera_height_m <= 5.0):
            raise ValueError(f"camera_height_m must be in [0.2, 5], got {self.camera_height_m}")

    def record(self) -> dict[str, Any]:
        """The options as clip.json's ``generator`` records them (all but ``clip_id``), in the key
        order that file has always had."""
        return {name: getattr(self, name) for name in _RECORD_ORDER}


_RECORD_ORDER = ("baseline_m", "hfov_deg", "num_objects", "num_moving", "camera_motion", "camera_height_m",
                 "noise_std", "blur_sigma", "gain_jitter", "vignette", "specular", "backdrop_radius_m",
                 "depth_range_m", "travel_range_m", "object_motions", "directions")


@dataclass
class SceneObject:
    """One object. ``base_world`` (N,3): centre of its footprint on the ground; ``yaw_rad`` (N,).

    dims_m = (length along its heading, height, width). Local frame: u along the heading,
    y down (as the world), w = u rotated by +90 deg in the top-down plot; y in [-height, 0].
    """

    id: int
    shape: str
    color: str
    dims_m: tuple[float, float, float]
    base_world: np.ndarray
    yaw_rad: np.ndarray
    motion: str
    texture: np.ndarray  # (T, T, 3) float32 RGB 0-255
    texel_m: float

    @property
    def label(self) -> str:
        return f"{self.color} {self.shape}"

    @property
    def centroid_height_m(self) -> float:
        """Height of the solid's centroid above the ground (cone: h/4; others: h/2)."""
        h = self.dims_m[1]
        return h / 4.0 if self.shape == "cone" else h / 2.0

    def centers_world(self) -> np.ndarray:
        """(N, 3) true centroid per frame (world frame, metres)."""
        c = self.base_world.copy()
        c[:, 1] -= self.centroid_height_m
        return c


@dataclass
class Scene:
    """Everything needed to render a clip; poses are per frame (N)."""

    width: int
    height: int
    fps: float
    K: np.ndarray
    baseline_m: float
    ground_y_m: float
    cam_to_world: np.ndarray  # (N, 4, 4) left camera
    cam_yaw_rad: np.ndarray   # (N,)
    camera_motion: str
    objects: list[SceneObject]
    ground_tex: list[np.ndarray]  # mip levels, (Tg, Tg, 3) float32
    ground_texel_m: float
    backdrop_tex: np.ndarray  # (Hb, Wb, 3) float32
    backdrop_texel_m: float
    backdrop_radius_m: float
    light_dir: np.ndarray     # (3,) unit vector towards the light, world frame

    @property
    def num_frames(self) -> int:
        return int(self.cam_to_world.shape[0])

    def camera_pose(self, frame: int, view: str = "left") -> np.ndarray:
        """4x4 camera-to-world of the left or right view at ``frame``."""
        pose = self.cam_to_world[frame].copy()
        if view == "right":
            pose[:3, 3] += self.baseline_m * pose[:3, 0]
        elif view != "left":
            raise ValueError(f"view must be 'left' or 'right', got {view!r}")
        return pose


def _rot_yaw(yaw: float) -> np.ndarray:
    """Camera-to-world rotation for a camera with heading ``yaw`` (no roll, no pitch).

    Columns are the camera axes in world coordinates: z = (cos yaw, 0, sin yaw), y = (0, 1, 0),
    x = y x z = (sin yaw, 0, -cos yaw). yaw = pi/2 gives the identity.
    """
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[s, 0.0, c], [0.0, 1.0, 0.0], [-c, 0.0, s]])


def _camera_trajectory(
    rng: np.random.Generator, motion: str, num_frames: int, fps: float
) -> tuple[np.ndarray, np.ndarray]:
    """(N,4,4) camera-to-world and (N,) yaw. Translation 0 or 0.6-1.5 m; pan 0 or 18-35 deg."""
    (dir_x, dir_z), pan_sign = CAMERA_MOTIONS[motion]
    dist_m = float(rng.uniform(0.6, 1.5)) if (dir_x or dir_z) else 0.0
    pan_rad = math.radians(float(rng.uniform(18, 35))) * pan_sign
    yaw0 = math.pi / 2
    span = max(num_frames - 1, 1)
    poses = np.zeros((num_frames, 4, 4))
    yaws = np.zeros(num_frames)
    pos = np.zeros(3)
    sub = 16  # integrate the heading-following translation with sub-steps
    for i in range(num_frames):
        if i > 0:
            for k in range(sub):
                frac = (i - 1 + (k + 0.5) / sub) / span
                yaw = yaw0 + pan_rad * frac
                rot = _rot_yaw(yaw)
                step = dist_m / span / sub
                pos = pos + step * (dir_x * rot[:, 0] + dir_z * rot[:, 2])
        yaws[i] = yaw0 + pan_rad * i / span
        poses[i] = np.eye(4)
        poses[i, :3, :3] = _rot_yaw(yaws[i])
        poses[i, :3, 3] = pos
    return poses, yaws


def _sample_dims(rng: np.random.Generator, shape: str) -> tuple[float, float, float]:
    if shape == "cube":
        e = float(rng.uniform(0.5, 0.85))
        return (e, e, e)
    if shape == "sphere":
        d = float(rng.uniform(0.5, 0.85))
        return (d, d, d)
    if shape == "cylinder":
        d, h = float(rng.uniform(0.4, 0.65)), float(rng.uniform(0.7, 1.1))
        return (d, h, d)
    d, h = float(rng.uniform(0.5, 0.8)), float(rng.uniform(0.75, 1.1))
    return (d, h, d)


def _object_track(
    rng: np.random.Generator, motion: str, start_xz: np.ndarray, num_frames: int,
    travel_range_m: tuple[float, float] = SceneOptions.travel_range_m, directions: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Footprint positions (N,2) in x-z, yaw (N,), and a motion name with its direction."""
    frac = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
    yaw0 = float(rng.uniform(-math.pi, math.pi))
    if motion == "static":
        return np.repeat(start_xz[None], num_frames, 0), np.full(num_frames, yaw0), "static"
    if motion == "turn":
        turn = math.radians(float(rng.uniform(40, 120))) * float(rng.choice([-1, 1]))
        name = "turn_left" if turn > 0 else "turn_right"
        return np.repeat(start_xz[None], num_frames, 0), yaw0 + turn * frac, name
    dist_m = float(rng.uniform(*travel_range_m))
    if motion == "translate":
        direction = str(rng.choice(list(directions or DIRECTIONS)))
        ang = math.radians(DIRECTIONS[direction])
        vec = np.array([math.cos(ang), math.sin(ang)])
        return start_xz[None] + dist_m * frac[:, None] * vec[None], np.full(num_frames, yaw0), f"translate_{direction}"
    # arc: drives along its heading while turning (a car taking a bend)
    turn = math.radians(float(rng.uniform(30, 75))) * float(rng.choice([-1, 1]))
    yaws = yaw0 + turn * frac
    pts = np.zeros((num_frames, 2))
    pts[0] = start_xz
    for i in range(1, num_frames):
        mid = 0.5 * (yaws[i] + yaws[i - 1])
        pts[i] = pts[i - 1] + dist_m / (num_frames - 1) * np.array([math.cos(mid), math.sin(mid)])
    return pts, yaws, "arc_left" if turn > 0 else "arc_right"


def _in_view_fraction(scene_poses: np.ndarray, K: np.ndarray, width: int, height: int,
                      centers: np.ndarray, margin_px: float) -> float:
    """Fraction of frames whose centre projects inside the image (with a margin)."""
    inside = 0
    for pose, c in zip(scene_poses, centers):
        p = pose[:3, :3].T @ (c - pose[:3, 3])
        if p[2] < 0.5:
            continue
        u = K[0, 0] * p[0] / p[2] + K[0, 2]
        v = K[1, 1] * p[1] / p[2] + K[1, 2]
        inside += (margin_px <= u < width - margin_px) and (0 <= v < height)
    return inside / len(centers)


def build_scene(seed: int, num_frames: int, width: int, height: int, fps: float,
                opts: SceneOptions) -> Scene:
    """Sample a scene (geometry, motions, textures) from ``seed``; rendering adds noise later."""
    rng = np.random.default_rng([seed, 0])
    fx = (width / 2.0) / math.tan(math.radians(opts.hfov_deg) / 2.0)
    K = np.array([[fx, 0.0, width / 2.0], [0.0, fx, height / 2.0], [0.0, 0.0, 1.0]])
    cam_h = opts.camera_height_m if opts.camera_height_m is not None else float(rng.uniform(0.9, 1.3))
    # a static camera is common in real footage: 20 %, the moving kinds share the rest
    names = list(CAMERA_MOTIONS)
    probs = np.array([0.2 if n == "static" else 0.8 / (len(names) - 1) for n in names])
    cam_motion = opts.camera_motion or str(rng.choice(names, p=probs))
    poses, yaws = _camera_trajectory(rng, cam_motion, num_frames, fps)

    n_obj = opts.num_objects or int(rng.integers(1, len(SHAPES) + 1))
    # each object moves with probability 0.6: clips hold 0..n movers (varied counting answers)
    n_moving = opts.num_moving if opts.num_moving is not None else int(rng.binomial(n_obj, 0.6))
    n_moving = min(n_moving, n_obj)
    shapes = list(rng.permutation(SHAPES)[:n_obj])
    colors = list(rng.permutation(list(COLORS))[:n_obj])
    moving = set(rng.permutation(n_obj)[:n_moving].tolist())
    tan_half = math.tan(math.radians(opts.hfov_deg) / 2.0)

    objects: list[SceneObject] = []
    placed: list[tuple[np.ndarray, float]] = []  # (N,2) track, footprint radius
    for i in range(n_obj):
        shape, color = str(shapes[i]), str(colors[i])
        dims = _sample_dims(rng, shape)
        radius = 0.5 * math.hypot(dims[0], dims[2])
        motion = str(rng.choice(list(opts.object_motions or OBJECT_MOTIONS[1:]))) if i in moving else "static"
        track = None
        for _attempt in range(300):
            depth = float(rng.uniform(*opts.depth_range_m))
            x = float(rng.uniform(-0.75, 0.75)) * depth * tan_half
            cand, cyaw, cname = _object_track(rng, motion, np.array([x, depth]), num_frames, opts.travel_range_m,
                                              opts.directions)
            base = np.stack([cand[:, 0], np.full(num_frames, cam_h), cand[:, 1]], 1)
            cen = base.copy()
            cen[:, 1] -= dims[1] / 2
            cam_xz = poses[:, [0, 2], 3]
            dist_cam = np.linalg.norm(cand - cam_xz, axis=1)
            if dist_cam.min() < radius + 1.6 or dist_cam.max() > 9.0:
                continue
            if any(np.linalg.norm(cand - t, axis=1).min() < radius + r + 0.15 for t, r in placed):
                continue
            if _in_view_fraction(poses, K, width, height, cen, margin_px=0.04 * width) < 0.7:
                continue
            track = (cand, cyaw, cname, base)
            break
        if track is None:  # crowded: fall back to a static object somewhere free, or drop it
            log.info("seed %d: could not place a moving %s in view; placing it static", seed, shape)
            if motion != "static":
                motion = "static"
                for _attempt in range(300):
                    depth = float(rng.uniform(*opts.depth_range_m))
                    x = float(rng.uniform(-0.7, 0.7)) * depth * tan_half
                    cand, cyaw, cname = _object_track(rng, "static", np.array([x, depth]), num_frames)
                    if any(np.linalg.norm(cand - t, axis=1).min() < radius + r + 0.15 for t, r in placed):
                        continue
                    if np.linalg.norm(cand - poses[:, [0, 2], 3], axis=1).min() < radius + 1.6:
                        continue
                    base = np.stack([cand[:, 0], np.full(num_frames, cam_h), cand[:, 1]], 1)
                    track = (cand, cyaw, cname, base)
                    break
            if track is None:
                continue
        cand, cyaw, cname, base = track
        placed.append((cand, radius))
        objects.append(SceneObject(
            id=len(objects) + 1, shape=shape, color=color, dims_m=dims, base_world=base,
            yaw_rad=cyaw, motion=cname, texture=object_texture(rng, COLORS[color]),
            texel_m=float(rng.uniform(0.012, 0.018)),
        ))
    if not objects:  # with the default options the first object always fits; narrow views can fail
        raise ValueError(
            f"seed {seed}: no object fits in view (hfov_deg {opts.hfov_deg}, depth_range_m {opts.depth_range_m}, "
            f"camera {cam_h:.2f} m high): near objects fall below a narrow view; widen hfov_deg, lower "
            "camera_height_m (e.g. 0.5) or move depth_range_m further out")

    light = np.array([-0.45, -1.0, -0.55])
    return Scene(
        width=width, height=height, fps=fps, K=K, baseline_m=opts.baseline_m, ground_y_m=cam_h,
        cam_to_world=poses, cam_yaw_rad=yaws, camera_motion=cam_motion, objects=objects,
        ground_tex=ground_textures(rng), ground_texel_m=0.02,
        backdrop_tex=backdrop_texture(rng), backdrop_texel_m=0.06,
        backdrop_radius_m=opts.backdrop_radius_m, light_dir=light / np.linalg.norm(light),
    )

