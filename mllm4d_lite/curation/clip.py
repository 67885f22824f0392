"""The kit's in-memory stereo clip, and the native clip folder format (see docs/data-format.md).

Conventions (OpenCV): camera x right, y down, z forward; metres, seconds, pixels.
World frame of a clip = the LEFT camera's frame at frame 0.

On disk (``<clip_id>/``)::

    clip.json     {"clip_id", "source", "fps", "width", "height", "num_frames",
                   "K": [[fx,0,cx],[0,fy,cy],[0,0,1]], "baseline_m", "license"?}
    left.mp4      rectified left view (also what the model sees)
    right.mp4     rectified right view, same size and frame count
    masks.npz     optional: "masks" uint16 (N,H,W) instance ids on the left view (0 = background),
                  "labels" JSON string {id: "red cube", ...}
    gt.json       optional: {"camera_to_world": N x 4x4,
                             "objects": [{"id", "label", "centers_world": N x [x,y,z] | null}]}
    gt_depth.npz  optional: "depth_m" float32 (N,H,W), left view
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mllm4d_lite.checks import MAX_FPS, MAX_SIDE_PX, NumberError, check_number
from mllm4d_lite.io import UnsafeIdError, id_path, safe_id

log = logging.getLogger(__name__)

# clip.json keys with a fixed meaning; any other key is kept in Clip.meta and written back.
_CLIP_JSON_KEYS = ("clip_id", "source", "fps", "width", "height", "num_frames", "K", "baseline_m", "license")


class ClipError(ValueError):
    """A clip on disk is missing, corrupt or inconsistent; the message names the file and the fix."""


@dataclass
class Clip:
    """A rectified stereo clip.

    left, right: (N, H, W, 3) uint8 RGB frames of the left / right view.
    K: (3, 3) float64 intrinsics of the rectified left view (pixels).
    baseline_m: distance between the two optical centres (metres, > 0); the right camera
        sits at +baseline_m along the left camera's x axis.
    masks: optional (N, H, W) uint16 instance ids on the left view, 0 = background.
    labels: instance id -> name ("red cube").
    gt: optional ground truth as in gt.json (camera_to_world N x 4x4, objects with centers_world).
    gt_depth_m: optional (N, H, W) float32 metric depth of the left view.
    """

    clip_id: str
    left: np.ndarray
    right: np.ndarray
    K: np.ndarray
    baseline_m: float
    fps: float
    source: str = "unknown"
    masks: np.ndarray | None = None
    labels: dict[int, str] = field(default_factory=dict)
    gt: dict[str, Any] | None = None
    gt_depth_m: np.ndarray | None = None
    license: str | None = None
    path: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # extra clip.json keys (seed, generator, ...)

    @property
    def num_frames(self) -> int:
        return int(self.left.shape[0])

    @property
    def height(self) -> int:
        return int(self.left.shape[1])

    @property
    def width(self) -> int:
        return int(self.left.shape[2])

    @property
    def focal_px(self) -> float:
        return float(self.K[0, 0])

    def check(self) -> None:
        """Raise :class:`ClipError` when the views, intrinsics or baseline are inconsistent."""
        name = str(self.path or self.clip_id)
        if self.left.ndim != 4 or self.left.shape[-1] != 3:
            raise ClipError(f"{name}: left view must be (N,H,W,3), got {self.left.shape}")
        if self.left.shape != self.right.shape:
            raise ClipError(
                f"{name}: left and right views differ in shape {self.left.shape} vs {self.right.shape}; "
                "both views must be rectified to the same size and frame count"
            )
        if self.num_frames == 0:
            raise ClipError(f"{name}: clip has no frames")
        try:  # the one number check (mllm4d_lite.checks)
            check_number(self.baseline_m, "baseline_m", name, gt=0, strings=False, fix="fix the calibration")
            check_number(self.fps, "fps", name, gt=0, le=MAX_FPS, strings=False, fix="fix the frame rate")
        except NumberError as err:
            raise ClipError(str(err)) from None
        if self.K.shape != (3, 3) or not (self.K[0, 0] > 0 and self.K[1, 1] > 0):
            raise ClipError(f"{name}: K must be 3x3 with positive focal lengths, got {self.K.tolist()}")
        if self.masks is not None and self.masks.shape != self.left.shape[:3]:
            raise ClipError(f"{name}: masks shape {self.masks.shape} does not match frames {self.left.shape[:3]}")
        if self.gt_depth_m is not None and np.shape(self.gt_depth_m) != self.left.shape[:3]:
            raise ClipError(f"{name}: gt_depth_m shape {np.shape(self.gt_depth_m)} does not match frames "
                            f"{self.left.shape[:3]}")


# ------------------------------------------------------------------------------------------
# Native clip folders


def _clip_json(clip: Clip) -> dict[str, Any]:
    data: dict[str, Any] = {
        "clip_id": clip.clip_id, "source": clip.source, "fps": float(clip.fps),
        "width": clip.width, "height": clip.height, "num_frames": clip.num_frames,
        "K": np.asarray(clip.K, float).tolist(), "baseline_m": float(clip.baseline_m),
    }
    if clip.license is not None:
        data["license"] = clip.license
    for key, value in clip.meta.items():
        if key not in data:
            data[key] = value
    return data


def _depth_arrays(depth_m: np.ndarray) -> dict[str, np.ndarray]:
    """Compact depth storage: uint16 millimetres ("depth_mm", 0 = unknown) when every finite value
    fits in [0.001, 65.535] m, else float32 metres ("depth_m"). Loading gives float32 metres."""
    finite = np.isfinite(depth_m)
    vals = depth_m[finite]
    if vals.size and vals.min() >= 0.001 and vals.max() <= 65.535:
        mm = np.zeros(depth_m.shape, np.uint16)
        mm[finite] = np.round(vals * 1000.0).astype(np.uint16)
        return {"depth_mm": mm}
    return {"depth_m": depth_m.astype(np.float32)}


def save_clip(clip: Clip, out_dir: str | Path, crf: int = 18) -> Path:
    """Write ``clip`` as the native clip folder ``out_dir/<clip_id>/`` and return that path.

    Files: clip.json, left.mp4, right.mp4 (H.264, ``crf``), and when present masks.npz
    (uint16 ids + labels JSON), gt.json, gt_depth.npz (see :func:`_depth_arrays`). Everything is
    written into a hidden temporary folder beside the target and renamed at the end, so a
    failure leaves no half-written clip; an existing clip of the same id is replaced.
    """
    from mllm4d_lite.curation.video import write_video

    clip.check()
    try:
        safe_id(clip.clip_id, "clip_id")
    except UnsafeIdError as err:
        raise ClipError(str(err)) from None
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{clip.clip_id}.tmp-", dir=out_dir))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a clip folder is as readable as any other
    except OSError as err:
        raise ClipError(f"cannot write into {out_dir} ({err.strerror}); choose a writable output folder") from None
    final = id_path(out_dir, clip.clip_id, what="clip_id")
    try:
        (tmp / "clip.json").write_text(json.dumps(_clip_json(clip), indent=1))
        write_video(tmp / "left.mp4", clip.left, clip.fps, crf=crf)
        write_video(tmp / "right.mp4", clip.right, clip.fps, crf=crf)
        if clip.masks is not None:
            labels = json.dumps({str(k): v for k, v in clip.labels.items()})
            np.savez_compressed(tmp / "masks.npz", masks=clip.masks.astype(np.uint16), labels=np.array(labels))
        if clip.gt is not None:
            (tmp / "gt.json").write_text(json.dumps(clip.gt))
        if clip.gt_depth_m is not None:
            np.savez_compressed(tmp / "gt_depth.npz", **_depth_arrays(np.asarray(clip.gt_depth_m)))
        old = None
        if final.exists():
            old = out_dir / f".{clip.clip_id}.old-{tmp.name[-8:]}"
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    clip.path = final
    return final


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ClipError(f"{path}: malformed JSON ({err}); fix or regenerate the {what}") from None


def _parse_K(value: Any, path: Path) -> np.ndarray:
    try:
        K = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        K = np.zeros(0)
    ok = K.shape == (3, 3) and np.all(np.isfinite(K))
    if ok:
        try:  # focal lengths through the one number check
            for v in (K[0, 0], K[1, 1]):
                check_number(float(v), "focal length", gt=0)
        except NumberError:
            ok = False
    ok = ok and np.allclose(K[2], [0, 0, 1]) and K[1, 0] == 0 and K[2, 0] == 0
    if not ok:
        raise ClipError(
            f"{path}: bad \"K\" {value!r}; expected [[fx,0,cx],[0,fy,cy],[0,0,1]] with fx, fy > 0 (pixels)"
        )
    return K


def load_clip(clip_dir: str | Path, load_depth: bool = True) -> Clip:
    """Read a native clip folder (see the module docstring) into a :class:`Clip`.

    Checks clip.json (present, valid JSON, required keys, K, baseline_m > 0), that both videos
    decode to ``num_frames`` frames of ``width`` x ``height``, and the optional masks, gt and
    depth files against them. Any problem raises :class:`ClipError` naming the file and the fix.
    ``gt_depth_m`` is float32 metres (skipped when ``load_depth`` is False).
    """
    from mllm4d_lite.curation.video import VideoError, read_video

    clip_dir = Path(clip_dir)
    meta_path = clip_dir / "clip.json"
    if not clip_dir.is_dir():
        raise ClipError(f"{clip_dir}: not a clip folder (expected a folder with clip.json, left.mp4, right.mp4)")
    if not meta_path.is_file():
        raise ClipError(f"{meta_path}: missing; a clip folder needs clip.json, left.mp4 and right.mp4 "
                        "(see docs/data-format.md), e.g. regenerate it with `mllm4d synth`")
    meta = _read_json(meta_path, "clip.json")
    if not isinstance(meta, dict):
        raise ClipError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    missing = [k for k in ("fps", "width", "height", "num_frames", "K", "baseline_m") if k not in meta]
    if missing:
        raise ClipError(f"{meta_path}: missing key(s) {missing}; add them (see docs/data-format.md, clip.json)")
    try:
        raw_id = meta.get("clip_id", clip_dir.name)
        clip_id = safe_id(str(raw_id) if type(raw_id) is int else raw_id, "clip_id", meta_path)
    except UnsafeIdError as err:
        raise ClipError(f"{err}; fix clip.json") from None
    K = _parse_K(meta["K"], meta_path)
    try:  # the one number check (mllm4d_lite.checks): right type, finite, in range
        baseline_m = check_number(meta["baseline_m"], "baseline_m", meta_path, gt=0,
                                  fix="metres between the two optical centres; fix the calibration")
        fps = check_number(meta["fps"], "fps", meta_path, gt=0, le=MAX_FPS, fix="fix clip.json")
        width, height = (check_number(meta[k], k, meta_path, kind=int, ge=1, le=MAX_SIDE_PX, fix="fix clip.json")
                         for k in ("width", "height"))
        num_frames = check_number(meta["num_frames"], "num_frames", meta_path, kind=int, ge=1,
                                  fix="set it to the frame count of left.mp4 / right.mp4")
    except NumberError as err:
        raise ClipError(str(err)) from None
    views = {}
    for view in ("left", "right"):
        vpath = clip_dir / f"{view}.mp4"
        try:
            frames, _, _ = read_video(vpath, expected_frames=num_frames)
        except VideoError as err:
            fix = "" if "expected" in str(err) else "; re-export the video or regenerate the clip"
            raise ClipError(f"{err}{fix} (clip.json: num_frames={num_frames})") from None
        if frames.shape[1:3] != (height, width):
            raise ClipError(f"{vpath}: frames are {frames.shape[2]}x{frames.shape[1]}, clip.json says "
                            f"{width}x{height}; re-export the video or fix clip.json")
        views[view] = frames
    masks, labels = None, {}
    mpath = clip_dir / "masks.npz"
    if mpath.is_file():
        with np.load(mpath, allow_pickle=False) as data:
            if "masks" not in data:
                raise ClipError(f"{mpath}: no 'masks' array; write masks=uint16 (N,H,W)")
            masks = data["masks"].astype(np.uint16)
            if "labels" in data:
                raw = json.loads(str(data["labels"]))
                labels = {int(k): str(v) for k, v in raw.items()}
        if masks.shape != (num_frames, height, width):
            raise ClipError(f"{mpath}: masks shape {masks.shape} != (num_frames, height, width) "
                            f"{(num_frames, height, width)}; regenerate the masks")
    gt = None
    gpath = clip_dir / "gt.json"
    if gpath.is_file():
        gt = _read_json(gpath, "gt.json")
        poses = gt.get("camera_to_world") if isinstance(gt, dict) else None
        if poses is not None and np.asarray(poses, float).shape != (num_frames, 4, 4):
            raise ClipError(f"{gpath}: camera_to_world must be num_frames={num_frames} 4x4 matrices, "
                            f"got shape {np.asarray(poses, float).shape}")
    depth = None
    dpath = clip_dir / "gt_depth.npz"
    if load_depth and dpath.is_file():
        with np.load(dpath, allow_pickle=False) as data:
            if "depth_mm" in data:
                mm = data["depth_mm"]
                depth = mm.astype(np.float32) / np.float32(1000.0)
                depth[mm == 0] = np.nan
            elif "depth_m" in data:
                depth = data["depth_m"].astype(np.float32)
            else:
                raise ClipError(f"{dpath}: expected a 'depth_m' (float32 m) or 'depth_mm' (uint16 mm) array")
        if depth.shape != (num_frames, height, width):
            raise ClipError(f"{dpath}: depth shape {depth.shape} != {(num_frames, height, width)}")
    clip = Clip(
        clip_id=clip_id, left=views["left"], right=views["right"],
        K=K, baseline_m=baseline_m, fps=fps, source=str(meta.get("source", "unknown")),
        masks=masks, labels=labels, gt=gt, gt_depth_m=depth, license=meta.get("license"),
        path=clip_dir, meta={k: v for k, v in meta.items() if k not in _CLIP_JSON_KEYS},
    )
    clip.check()
    return clip
