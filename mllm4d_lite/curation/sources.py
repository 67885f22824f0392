"""Loaders that turn public stereo sources into the kit's :class:`~mllm4d_lite.curation.clip.Clip`.

Supported sources (all produce rectified left/right RGB frames, K of the left view, baseline):

* native clip folders (``clip.json`` + ``left.mp4`` + ``right.mp4``; see :mod:`mllm4d_lite.curation.clip`);
* KITTI raw drive folders: ``image_02/data/*.png`` (left colour), ``image_03/data/*.png`` (right
  colour) and ``calib_cam_to_cam.txt`` in the drive folder or its parent (the date folder).
  K = ``P_rect_02[:, :3]``, baseline = ``(P_rect_02[0,3] - P_rect_03[0,3]) / fx`` (the rectified
  projection matrices carry ``-fx * t_x``); fps from ``image_02/timestamps.txt`` when present, else 10;
* side-by-side stereo video (left eye in the left half) with a calibration file;
* a pair of left/right frame folders (``left/`` and ``right/`` of PNG/JPG images, sorted by name)
  with a calibration file.

Calibration file (YAML or JSON), values for ONE eye's full-resolution image::

    fx: 700.0          # focal length, px (fy: optional, default fx)
    cx: 320.0          # principal point, px
    cy: 240.0
    baseline_m: 0.12   # > 0; the right camera sits at +baseline_m along the left camera's x axis
    fps: 30            # frame folders only (video: read from the file); default 10
    layout: full       # side-by-side only: full | half (see below)

Side-by-side layouts: ``full`` = each eye keeps its full width, the video is twice as wide as
one eye; ``half`` = each eye was squeezed to half its width so the video has the width of one
eye. Half-width frames are kept squeezed (no resampling) and K is scaled to them:
``fx' = fx / 2``, ``cx' = (cx + 0.5) / 2 - 0.5`` (pixel-centre convention); disparity and depth
stay consistent because depth uses ``fx'`` with the squeezed disparity.

Discovery (:func:`find_sources`) for ``mllm4d curate --clips DIR``: a folder with ``clip.json``
is a native clip; a folder with ``image_02/data`` a KITTI drive; a folder with ``left/``,
``right/`` and ``calib.yaml`` (or ``.yml`` / ``.json``) a frame-folder pair; a video
``X.mp4``/``.mkv``/``.avi``/``.mov`` with ``X.calib.yaml`` (or ``.yml`` / ``.json``) beside it a
side-by-side video. Every error names the file and the fix.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from mllm4d_lite.curation.clip import Clip, ClipError
from mllm4d_lite.checks import MAX_FPS, NumberError, check_number
from mllm4d_lite.config import yaml_error_text
from mllm4d_lite.io import UnsafeIdError, safe_id

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")
VIDEO_EXTS = (".mp4", ".mkv", ".avi", ".mov", ".webm")
CALIB_NAMES = ("calib.yaml", "calib.yml", "calib.json")


# ----------------------------------------------------------------------------- calibration
def _positive(path: Path, data: dict[str, Any], key: str, default: float | None = None,
              le: float | None = None) -> float:
    """``data[key]`` (or ``default`` when absent) through the one number check: finite, > 0."""
    if key not in data:
        if default is not None:
            return float(default)
        raise ClipError(f"{path}: calibration lacks `{key}`; add it (see mllm4d_lite/curation/sources.py for the format)")
    hint = "the right camera must sit at +baseline_m along x; " if key == "baseline_m" else ""
    try:
        return check_number(data[key], f"`{key}`", path, gt=0, le=le, fix=f"{hint}fix the calibration file")
    except NumberError as err:
        raise ClipError(str(err)) from None


def read_calibration(path: str | Path) -> dict[str, Any]:
    """Read a small stereo calibration file (YAML/JSON) -> ``{"K": (3,3), "baseline_m", "fps"?, "layout"?}``."""
    path = Path(path)
    if not path.is_file():
        raise ClipError(f"{path}: calibration file not found; write fx, cx, cy, baseline_m there")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ClipError(f"{path}: calibration is not valid YAML/JSON{yaml_error_text(err)}; fix the "
                        "calibration file") from None
    if not isinstance(data, dict):
        raise ClipError(f"{path}: calibration must be a mapping with fx, cx, cy, baseline_m; got {type(data).__name__}")
    if "K" in data:
        try:
            k = np.asarray(data["K"], dtype=np.float64).reshape(3, 3)
        except (TypeError, ValueError):
            raise ClipError(f"{path}: `K` must be a 3x3 matrix, got {data['K']!r}") from None
        data = {**data, "fx": k[0, 0], "fy": k[1, 1], "cx": k[0, 2], "cy": k[1, 2]}
    fx = _positive(path, data, "fx")
    fy = _positive(path, data, "fy", default=fx)
    cx = _positive(path, data, "cx")
    cy = _positive(path, data, "cy")
    out: dict[str, Any] = {
        "K": np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]),
        "baseline_m": _positive(path, data, "baseline_m"),
    }
    if "fps" in data:
        out["fps"] = _positive(path, data, "fps", le=MAX_FPS)
    layout = str(data.get("layout", "full"))
    if layout not in ("full", "half"):
        raise ClipError(f"{path}: `layout` must be full or half, got {layout!r}")
    out["layout"] = layout
    return out


def read_kitti_cam_to_cam(path: str | Path, left_cam: int = 2, right_cam: int = 3) -> tuple[np.ndarray, float]:
    """Rectified K of ``left_cam`` and the baseline (m) to ``right_cam`` from KITTI's calib_cam_to_cam.txt."""
    path = Path(path)
    if not path.is_file():
        raise ClipError(f"{path}: KITTI calibration not found; copy calib_cam_to_cam.txt from the date folder")
    rows: dict[str, np.ndarray] = {}
    for line in path.read_text(errors="replace").splitlines():
        if ":" not in line:
            continue
        key, _, value = line.partition(":")
        try:
            rows[key.strip()] = np.array([float(v) for v in value.split()])
        except ValueError:
            continue  # e.g. calib_time
    mats = {}
    for cam in (left_cam, right_cam):
        key = f"P_rect_{cam:02d}"
        if key not in rows or rows[key].size != 12:
            raise ClipError(f"{path}: missing or malformed {key} (need 12 numbers); is this calib_cam_to_cam.txt?")
        mats[cam] = rows[key].reshape(3, 4)
    k = mats[left_cam][:, :3].copy()
    try:  # the one number check (mllm4d_lite.checks)
        fx = check_number(float(k[0, 0]), f"focal length of P_rect_{left_cam:02d}", path, gt=0,
                          fix="the file is malformed")
        if not np.all(np.isfinite(np.concatenate([mats[left_cam].ravel(), mats[right_cam].ravel()]))):
            raise NumberError(f"{path}: P_rect_{left_cam:02d}/P_rect_{right_cam:02d} hold non-finite numbers; "
                              "the file is malformed")
    except NumberError as err:
        raise ClipError(str(err)) from None
    baseline_m = float((mats[left_cam][0, 3] - mats[right_cam][0, 3]) / fx)
    if not baseline_m > 0:
        raise ClipError(
            f"{path}: baseline from P_rect_{left_cam:02d}/P_rect_{right_cam:02d} is {baseline_m:.4f} m (<= 0); "
            "swap the cameras or fix the file"
        )
    return k, baseline_m


# ----------------------------------------------------------------------------- frames
def _read_image(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ClipError(f"{path}: cannot read image (corrupt or unsupported format)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ClipError(f"{folder}: frame folder not found")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise ClipError(f"{folder}: no images ({', '.join(IMAGE_EXTS)}) found")
    return files


def _read_pair_folders(left_dir: Path, right_dir: Path, max_frames: int | None, stride: int) -> tuple[np.ndarray, np.ndarray]:
    lfiles, rfiles = _list_images(left_dir), _list_images(right_dir)
    if len(lfiles) != len(rfiles):
        raise ClipError(
            f"{left_dir} holds {len(lfiles)} frames but {right_dir} holds {len(rfiles)}; "
            "both views need the same frames"
        )
    keep = list(range(0, len(lfiles), max(1, stride)))[: max_frames or None]
    left, right = [], []
    for i in keep:
        a, b = _read_image(lfiles[i]), _read_image(rfiles[i])
        if a.shape != b.shape:
            raise ClipError(f"{lfiles[i]} is {a.shape[1]}x{a.shape[0]} but {rfiles[i]} is {b.shape[1]}x{b.shape[0]}; "
                            "rectify both views to one size")
        if left and a.shape != left[0].shape:
            raise ClipError(f"{lfiles[i]}: size {a.shape[1]}x{a.shape[0]} differs from earlier frames")
        left.append(a)
        right.append(b)
    return np.stack(left), np.stack(right)


def _safe_id(name: str, given: str | None = None) -> str:
    """The clip id of a source: ``given`` (an explicit id) must already be a plain file name and
    is refused otherwise; a FILE or FOLDER name (``name``, one path component read from disk) has
    each run of characters outside ``A-Za-z0-9_.-`` replaced by ``_`` (a documented mapping,
    logged when it changes the name; docs/data-format.md). Both go through :func:`safe_id`."""
    if given:
        try:
            return safe_id(given, "clip_id")
        except UnsafeIdError as err:
            raise ClipError(str(err)) from None
    mapped = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "clip"
    if mapped != name:
        log.info("clip id %r from the name %r (characters outside A-Za-z0-9_.- become _)", mapped, name)
    try:
        return safe_id(mapped, "clip_id", name)
    except UnsafeIdError as err:
        raise ClipError(f"{err}; rename it") from None


def _listed_id(name: str) -> str:
    """:func:`_safe_id` for discovery: "" for a refused name, so that the clip is skipped (with the
    reason) when it is loaded instead of ending the whole run at discovery."""
    try:
        return _safe_id(name)
    except ClipError:
        return ""


def _finish(clip: Clip) -> Clip:
    clip.check()
    return clip


# ----------------------------------------------------------------------------- loaders
def load_kitti_raw(drive_dir: str | Path, max_frames: int | None = None, stride: int = 1,
                   calib_path: str | Path | None = None, oxts: bool | None = None, clip_id: str | None = None) -> Clip:
    """A KITTI raw drive folder (``..._drive_XXXX_sync``) -> Clip (left = cam 2, right = cam 3).

    ``oxts``: also read ``oxts/data`` and the date's calibration into ``clip.gt`` (the left camera's
    ground-truth ``camera_to_world``, no objects; :mod:`mllm4d_lite.curation.kitti`). True: they must
    be there (``mllm4d fetch``, which writes the poses as the native clip's gt.json); None (default,
    ``mllm4d curate --clips DRIVE``): read them when ``oxts/data`` is there, else no ground truth; an
    unusable OXTS folder or missing IMU/Velodyne calibration is then a warning naming the file, and
    the drive is curated without ground truth; False: never."""
    drive_dir = Path(drive_dir)
    clip_id = _safe_id(drive_dir.name, clip_id)  # before any work
    if calib_path is None:
        candidates = [drive_dir / "calib_cam_to_cam.txt", drive_dir.parent / "calib_cam_to_cam.txt"]
        calib_path = next((c for c in candidates if c.is_file()), candidates[0])
    k, baseline_m = read_kitti_cam_to_cam(calib_path)
    left, right = _read_pair_folders(drive_dir / "image_02" / "data", drive_dir / "image_03" / "data", max_frames, stride)
    fps = 10.0
    ts_path = drive_dir / "image_02" / "timestamps.txt"
    if ts_path.is_file():
        fps = _fps_from_timestamps(ts_path, default=fps) / max(1, stride)
    else:
        fps /= max(1, stride)
    gt = None
    if oxts or (oxts is None and (drive_dir / "oxts" / "data").is_dir()):
        try:
            gt = _kitti_oxts_gt(drive_dir, Path(calib_path), stride, len(left))
        except ClipError as e:
            if oxts:
                raise
            log.warning("%s; curating %s without camera ground truth", e, drive_dir)
    return _finish(Clip(clip_id=clip_id, left=left, right=right, K=k, baseline_m=baseline_m,
                        fps=fps, source="kitti_raw", gt=gt, path=drive_dir))


def _kitti_oxts_gt(drive_dir: Path, calib_path: Path, stride: int, num_frames: int) -> dict:
    """The drive's OXTS records -> gt dict (left camera's ``camera_to_world``, no objects)."""
    from mllm4d_lite.curation import kitti

    records = kitti.read_oxts(drive_dir / "oxts")[:: max(1, stride)][:num_frames]
    if len(records) != num_frames:
        raise ClipError(f"{drive_dir / 'oxts' / 'data'}: {len(records)} OXTS records for {num_frames} frames; "
                        "a synced drive has one per frame (re-extract the drive)")
    poses = kitti.camera_poses(records, kitti.cam2_from_imu(calib_path.parent))
    return {"camera_to_world": poses.tolist(), "objects": [],
            "camera_pose_source": "KITTI OXTS GPS/IMU (devkit convertOxtsToPose) via calib_imu_to_velo, "
                                  "calib_velo_to_cam, R_rect_00 and P_rect_02"}


def _fps_from_timestamps(path: Path, default: float) -> float:
    from datetime import datetime

    times = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:  # KITTI: "2011-09-26 13:02:25.964389700" (nanoseconds; datetime takes microseconds)
            date, _, frac = line.partition(".")
            times.append(datetime.strptime(date, "%Y-%m-%d %H:%M:%S").timestamp() + float("0." + (frac or "0")))
        except ValueError:
            log.warning("%s: unreadable timestamp %r; using %.1f fps", path, line, default)
            return default
    if len(times) < 2:
        return default
    dt = np.median(np.diff(times))
    return float(1.0 / dt) if dt > 0 else default


def load_frame_folders(left_dir: str | Path, right_dir: str | Path, calib_path: str | Path,
                       clip_id: str | None = None, max_frames: int | None = None, stride: int = 1) -> Clip:
    """Left/right folders of rectified frames (sorted by file name) + calibration file -> Clip."""
    left_dir, right_dir = Path(left_dir), Path(right_dir)
    clip_id = _safe_id(left_dir.parent.name, clip_id)
    calib = read_calibration(calib_path)
    left, right = _read_pair_folders(left_dir, right_dir, max_frames, stride)
    return _finish(Clip(clip_id=clip_id, left=left, right=right, K=calib["K"],
                        baseline_m=calib["baseline_m"], fps=calib.get("fps", 10.0) / max(1, stride),
                        source="frame_folders", path=left_dir.parent))


def load_side_by_side(video_path: str | Path, calib_path: str | Path, clip_id: str | None = None,
                      max_frames: int | None = None) -> Clip:
    """A side-by-side stereo video (left eye in the left half) + calibration file -> Clip.

    ``layout: full`` -> each eye is W/2 wide and K is used as given; ``layout: half`` -> each eye
    was squeezed to W/2 and K's x row is halved (see the module docstring)."""
    from mllm4d_lite.curation.video import read_video

    video_path = Path(video_path)
    clip_id = _safe_id(video_path.stem, clip_id)
    calib = read_calibration(calib_path)
    frames, fps, _ = read_video(video_path, num_frames=max_frames)
    w = frames.shape[2]
    if w % 2:
        raise ClipError(f"{video_path}: side-by-side video must have an even width, got {w}")
    left, right = frames[:, :, : w // 2], frames[:, :, w // 2:]
    k = calib["K"].copy()
    if calib["layout"] == "half":
        k[0, 0] /= 2.0
        k[0, 2] = (k[0, 2] + 0.5) / 2.0 - 0.5
    if not (0 < k[0, 2] < w // 2 and 0 < k[1, 2] < frames.shape[1]):
        raise ClipError(f"{calib_path}: principal point ({k[0, 2]:.1f}, {k[1, 2]:.1f}) lies outside the "
                        f"{w // 2}x{frames.shape[1]} eye image; check cx, cy and layout ({calib['layout']})")
    return _finish(Clip(clip_id=clip_id, left=np.ascontiguousarray(left),
                        right=np.ascontiguousarray(right), K=k, baseline_m=calib["baseline_m"],
                        fps=float(fps or calib.get("fps", 10.0)), source=f"side_by_side_{calib['layout']}",
                        path=video_path))


def load_native(clip_dir: str | Path, load_depth: bool = True) -> Clip:
    """The kit's own clip folder (delegates to :func:`mllm4d_lite.curation.clip.load_clip`)."""
    from mllm4d_lite.curation import clip as clip_mod

    loader = getattr(clip_mod, "load_clip", None)
    if loader is None:
        raise ClipError(f"{clip_dir}: this build has no native clip loader (mllm4d_lite.curation.clip.load_clip)")
    return loader(Path(clip_dir), load_depth=load_depth)


# ----------------------------------------------------------------------------- discovery
@dataclass(frozen=True)
class ClipSource:
    """One loadable clip found under a folder (picklable, for worker processes)."""

    kind: str  # native | kitti_raw | frame_folders | side_by_side
    path: str
    calib: str = ""
    clip_id: str = ""

    def load(self, load_depth: bool = True, max_frames: int | None = None) -> Clip:
        if self.kind == "native":
            return load_native(self.path, load_depth=load_depth)
        if self.kind == "kitti_raw":
            return load_kitti_raw(self.path, max_frames=max_frames)
        if self.kind == "frame_folders":
            p = Path(self.path)
            return load_frame_folders(p / "left", p / "right", self.calib, clip_id=self.clip_id, max_frames=max_frames)
        if self.kind == "side_by_side":
            return load_side_by_side(self.path, self.calib, clip_id=self.clip_id, max_frames=max_frames)
        raise ClipError(f"{self.path}: unknown source kind {self.kind!r}")


def _calib_beside(folder: Path, stem: str | None = None) -> Path | None:
    names = [f"{stem}.calib{ext}" for ext in (".yaml", ".yml", ".json")] if stem else list(CALIB_NAMES)
    return next((folder / n for n in names if (folder / n).is_file()), None)


def classify(path: str | Path) -> ClipSource | None:
    """What kind of source ``path`` is (None when it is none of them)."""
    p = Path(path)
    if p.is_dir():
        if (p / "clip.json").is_file():
            return ClipSource("native", str(p), clip_id=p.name)
        if (p / "image_02" / "data").is_dir():
            return ClipSource("kitti_raw", str(p), clip_id=_listed_id(p.name))
        if (p / "left").is_dir() and (p / "right").is_dir():
            calib = _calib_beside(p)
            if calib is None:
                raise ClipError(f"{p}: has left/ and right/ frame folders but no calib.yaml; add fx, cx, cy, baseline_m")
            return ClipSource("frame_folders", str(p), str(calib), clip_id=_listed_id(p.name))
        return None
    if p.suffix.lower() in VIDEO_EXTS and p.is_file():
        calib = _calib_beside(p.parent, p.stem)
        if calib is not None:
            return ClipSource("side_by_side", str(p), str(calib), clip_id=_listed_id(p.stem))
    return None


def find_sources(root: str | Path) -> list[ClipSource]:
    """All clip sources at ``root`` (itself a source) or directly/recursively below it, sorted by path."""
    root = Path(root)
    if not root.exists():
        raise ClipError(f"{root}: clips folder not found")
    own = classify(root)
    if own is not None:
        return [own]
    found: list[ClipSource] = []

    def walk(folder: Path, depth: int) -> None:
        for child in sorted(folder.iterdir()):
            src = classify(child)
            if src is not None:
                found.append(src)
            elif child.is_dir() and depth < 3:
                walk(child, depth + 1)

    walk(root, 0)
    return found


def save_calibration(path: str | Path, K: np.ndarray, baseline_m: float, **extra: Any) -> None:
    """Write a calibration file readable by :func:`read_calibration` (YAML; JSON when ``.json``)."""
    path = Path(path)
    data = {"fx": float(K[0, 0]), "fy": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2]),
            "baseline_m": float(baseline_m), **extra}
    text = json.dumps(data, indent=1) if path.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
    path.write_text(text)
