"""The kit's in-memory stereo clip, and the native clip folder format (see docs in README).

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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


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
        if not (self.baseline_m > 0):
            raise ClipError(f"{name}: baseline_m must be > 0, got {self.baseline_m}; fix the calibration")
        if self.K.shape != (3, 3) or not (self.K[0, 0] > 0 and self.K[1, 1] > 0):
            raise ClipError(f"{name}: K must be 3x3 with positive focal lengths, got {self.K.tolist()}")
        if self.masks is not None and self.masks.shape != self.left.shape[:3]:
            raise ClipError(f"{name}: masks shape {self.masks.shape} does not match frames {self.left.shape[:3]}")
