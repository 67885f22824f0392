"""Motion in an annotation: the per-clip numeric view, track smoothing and the motion classifiers.

Everything is measured in the world frame (the left camera at the clip's first frame: x right,
y down, z forward, metres); docs/questions.md gives the rules and thresholds.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Sequence

import numpy as np

from mllm4d_lite.qa.config import QAConfig


def round_cm(v: np.ndarray) -> list[float]:
    return [round(float(x), 2) + 0.0 for x in v]  # + 0.0 turns -0.0 into 0.0


def _heading_deg(vec_xz: tuple[float, float]) -> float:
    """Heading of a horizontal vector in the top-down plot (x right, z up): atan2(z, x) in degrees."""
    return math.degrees(math.atan2(vec_xz[1], vec_xz[0]))


def wrap_deg(a: float) -> float:
    return (a + 180.0) % 360.0 - 180.0


def classify_translation(d: np.ndarray, cfg: QAConfig) -> str | None:
    """Direction label of a displacement ``d = [dx, dy, dz]`` (m, world frame), or None when it is
    too close to a decision threshold. Labels: static, left, right, towards, away (objects);
    the camera uses the same keys (towards = backward, away = forward)."""
    dx, dy, dz = (float(v) for v in d)
    horizontal = math.hypot(dx, dz)
    if math.sqrt(dx * dx + dy * dy + dz * dz) < cfg.qa_static_max_m:
        return "static"
    if horizontal <= cfg.qa_moving_min_m or abs(dy) > cfg.qa_max_vertical_ratio * horizontal:
        return None
    angle = math.degrees(math.atan2(abs(dz), abs(dx)))  # 0 = purely sideways, 90 = purely depth
    if abs(angle - 45.0) < cfg.qa_direction_margin_deg:
        return None
    if angle < 45.0:
        return "right" if dx > 0 else "left"
    return "away" if dz > 0 else "towards"


def classify_change(change: float, cfg: QAConfig) -> str | None:
    """'same' / 'increase' / 'decrease' for a signed distance change (m), None near thresholds."""
    if abs(change) < cfg.qa_static_max_m:
        return "same"
    if abs(change) <= cfg.qa_moving_min_m:
        return None
    return "increase" if change > 0 else "decrease"


def classify_angle(delta_deg: float, static_deg: float, min_deg: float) -> str | None:
    """'none' / 'ccw' (positive) / 'cw' (negative), None near thresholds."""
    if abs(delta_deg) < static_deg:
        return "none"
    if abs(delta_deg) <= min_deg:
        return None
    return "ccw" if delta_deg > 0 else "cw"


def smooth_track(values: np.ndarray, degree: int, outlier: float) -> np.ndarray:
    """Robust polynomial fit in time of a per-frame track.

    values: (N, D) with NaN rows where unknown. Fits a degree-``degree`` polynomial per column by
    least squares over the known rows, drops rows whose residual norm exceeds
    ``max(outlier, 3 x median residual)`` and refits once; returns the fitted values at the known
    rows (NaN rows stay NaN). ``degree < 1``, or too few known rows, returns ``values`` unchanged.
    Exact for ground truth moving at constant velocity or acceleration; on estimates it removes
    per-frame noise, e.g. the centroid shift of an object half out of view at the first frame.
    """
    known = ~np.isnan(values).any(axis=1)
    t = np.flatnonzero(known).astype(np.float64)
    if degree < 1 or t.size < degree + 3:
        return values
    x = (t - t.mean()) / max(float(t.std()), 1.0)  # centred and scaled: well-conditioned Vandermonde
    vander = np.vander(x, degree + 1)
    y = values[known]
    coef, *_ = np.linalg.lstsq(vander, y, rcond=None)
    residual = np.linalg.norm(y - vander @ coef, axis=1)
    keep = residual <= max(outlier, 3.0 * float(np.median(residual)))
    if not keep.all() and keep.sum() >= degree + 3:
        coef, *_ = np.linalg.lstsq(vander[keep], y[keep], rcond=None)
    out = values.copy()
    out[known] = vander @ coef
    return out


class ClipView:
    """Numpy view of one annotation: camera (N,3), rotations (N,3,3), object centres (N,3) with NaN."""

    def __init__(self, ann: dict[str, Any], cfg: QAConfig):
        self.ann = ann
        self.clip_id = str(ann["clip_id"])
        self.n = int(ann["num_frames"])
        self.fps = float(ann["fps"])
        self.cam = np.asarray(ann["camera_centers"], dtype=np.float64).reshape(self.n, 3)
        self.c2w = np.asarray(ann["camera_to_world"], dtype=np.float64).reshape(self.n, 4, 4)
        self.objects: list[dict[str, Any]] = []
        labels = Counter(str(o["label"]) for o in ann["objects"])
        for o in ann["objects"]:
            centers = np.full((self.n, 3), np.nan)
            for t, c in enumerate(o["centers"]):
                if c is not None:
                    centers[t] = c
            yaw = np.full(self.n, np.nan)
            for t, y in enumerate(o.get("yaw_rad") or [None] * self.n):
                if y is not None:
                    yaw[t] = y
            visible = ~np.isnan(centers).any(axis=1)
            idx = np.flatnonzero(visible)
            centers = smooth_track(centers, cfg.qa_smooth_degree, cfg.qa_smooth_outlier_m)
            known_yaw = ~np.isnan(yaw)
            if known_yaw.sum() >= 2:
                yaw[known_yaw] = np.unwrap(yaw[known_yaw])
                yaw = smooth_track(yaw[:, None], cfg.qa_smooth_degree, math.radians(cfg.qa_smooth_outlier_deg))[:, 0]
            self.objects.append({
                "id": o.get("id"), "label": str(o["label"]), "centers": centers, "yaw": yaw,
                "visible": visible, "unique": labels[str(o["label"])] == 1,
                "span": (int(idx[0]), int(idx[-1])) if idx.size else None,
            })

    def object_ok(self, obj: dict[str, Any], cfg: QAConfig) -> bool:
        """Visible often enough to be asked about, with distinct first and last frames."""
        span = obj["span"]
        return (span is not None and span[1] > span[0]
                and obj["visible"].sum() >= cfg.qa_min_visible_fraction * self.n)

    def common_span(self, objs: Sequence[dict[str, Any]], cfg: QAConfig) -> tuple[int, int] | None:
        """First and last frame where all ``objs`` are visible (co-visible in enough frames), else None."""
        both = np.logical_and.reduce([o["visible"] for o in objs])
        idx = np.flatnonzero(both)
        if idx.size < 2 or idx.size < cfg.qa_min_visible_fraction * self.n:
            return None
        return int(idx[0]), int(idx[-1])

    def cam_state(self, f0: int, f1: int) -> list[list[float]]:
        return [round_cm(self.cam[f0]), round_cm(self.cam[f1])]

    def camera_heading_pitch_deg(self, t: int) -> tuple[float, float]:
        fwd = self.c2w[t, :3, 2]
        pitch = math.degrees(math.asin(float(np.clip(-fwd[1] / max(np.linalg.norm(fwd), 1e-9), -1, 1))))
        return _heading_deg((fwd[0], fwd[2])), pitch
