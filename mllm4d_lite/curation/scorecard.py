"""Scoring of curated clips against their ground truth (``mllm4d curate --score``) and the
top-down plot of estimated vs true trajectories (``--plot``).

Per clip (:func:`score_clip`, for clips with gt.json / gt_depth.npz): disparity end-point error
and bad-3px vs ``gt_depth`` (uncovered pixels count as bad), camera absolute trajectory error
through evo (translation part, no alignment: both trajectories are metric and start at the same
frame), object centre error (m and % of the distance to the camera), motion-direction error for
objects moving >= 0.3 m, and yaw-change error. :func:`aggregate_scores` sums the clips up into
``scorecard.json`` with the curation targets and pass/fail; :func:`scorecard_text` prints it.

A clip whose gt.json holds camera poses only (a fetched KITTI drive: OXTS poses, no objects) and
no gt_depth.npz is scored on the camera; the object and disparity targets are then ``null``
("n/a": nothing to score against), never a pass or a miss.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mllm4d_lite.curation import stereo
from mllm4d_lite.curation.clip import Clip
from mllm4d_lite.io import pyplot, save_figure


def trajectory_ate(est_c2w: np.ndarray, gt_c2w: np.ndarray) -> dict[str, float]:
    """Absolute trajectory error of camera positions via evo (translation part, no alignment).

    Returns median / rmse / max (m), the ground-truth path length (m) and median as % of it.
    """
    from evo.core import metrics, trajectory

    ref = trajectory.PosePath3D(poses_se3=[np.asarray(p, float) for p in gt_c2w])
    est = trajectory.PosePath3D(poses_se3=[np.asarray(p, float) for p in est_c2w])
    ape = metrics.APE(metrics.PoseRelation.translation_part)
    ape.process_data((ref, est))
    path_m = float(ref.path_length)
    med = float(ape.get_statistic(metrics.StatisticsType.median))
    return {"ate_median_m": med, "ate_rmse_m": float(ape.get_statistic(metrics.StatisticsType.rmse)),
            "ate_max_m": float(ape.get_statistic(metrics.StatisticsType.max)), "path_length_m": path_m,
            "ate_median_pct_path": 100.0 * med / path_m if path_m > 1e-6 else float("nan")}


def _angle_deg(a: float) -> float:
    return (a + 180.0) % 360.0 - 180.0


def score_clip(clip: Clip, ann: dict[str, Any], disparity: np.ndarray) -> dict[str, Any]:
    """Errors of one clip's annotation against its ground truth (see the module docstring)."""
    gt = clip.gt or {}
    out: dict[str, Any] = {"clip_id": clip.clip_id, "camera_motion": gt.get("camera_motion"),
                           "gt_objects": len(gt.get("objects") or []), "gt_depth": clip.gt_depth_m is not None}
    if clip.gt_depth_m is not None:
        gt_disp = clip.focal_px * clip.baseline_m / clip.gt_depth_m
        per = [stereo.disparity_metrics(disparity[i], gt_disp[i]) for i in range(clip.num_frames)]
        out["disparity"] = {k: float(np.mean([p[k] for p in per])) for k in ("coverage", "epe_px", "bad_px")}
    gt_c2w = np.asarray(gt["camera_to_world"], float)
    est_c2w = np.asarray(ann["camera_to_world"], float)
    out["camera"] = trajectory_ate(est_c2w, gt_c2w)
    out["camera"]["drift_m"] = float(np.linalg.norm(est_c2w[-1, :3, 3] - gt_c2w[-1, :3, 3]))
    # Static = neither moves nor turns (a camera panning in place is not static).
    turn = np.degrees(np.arccos(np.clip((np.trace(gt_c2w[0, :3, :3].T @ gt_c2w[-1, :3, :3]) - 1) / 2, -1, 1)))
    out["camera"]["static"] = bool(out["camera"]["path_length_m"] < 0.01 and turn < 1.0)
    est_objs = {o["id"]: o for o in ann["objects"]}
    centre_err_m, centre_err_rel, direction_err, yaw_err = [], [], [], []
    for g in gt.get("objects") or []:
        e = est_objs.get(g["id"])
        if e is None:
            continue
        gc = np.asarray(g["centers_world"], float)
        vis = g.get("visible", [True] * len(gc))
        frames = [i for i, c in enumerate(e["centers"]) if c is not None and vis[i]]
        for i in frames:
            err = float(np.linalg.norm(np.asarray(e["centers"][i]) - gc[i]))
            dist = float(np.linalg.norm(gc[i] - gt_c2w[i, :3, 3]))
            centre_err_m.append(err)
            centre_err_rel.append(err / max(dist, 1e-6))
        if len(frames) >= 2:
            f0, f1 = frames[0], frames[-1]
            d_gt = gc[f1] - gc[f0]
            d_est = np.asarray(e["centers"][f1]) - np.asarray(e["centers"][f0])
            if math.hypot(d_gt[0], d_gt[2]) >= 0.3:
                a = math.degrees(math.atan2(d_est[2], d_est[0]) - math.atan2(d_gt[2], d_gt[0]))
                direction_err.append(abs(_angle_deg(a)))
        yaws = [i for i, y in enumerate(e.get("yaw_rad") or []) if y is not None]
        if len(yaws) >= 2 and g.get("yaw_rad"):
            gy = np.unwrap(np.asarray(g["yaw_rad"], float))
            f0, f1 = yaws[0], yaws[-1]
            est_change = e["yaw_rad"][f1] - e["yaw_rad"][f0]
            yaw_err.append(abs(math.degrees(est_change - (gy[f1] - gy[f0]))))
    out["objects"] = {"centre_err_m": centre_err_m, "centre_err_rel": centre_err_rel,
                      "direction_err_deg": direction_err, "yaw_change_err_deg": yaw_err}
    return out


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def aggregate_scores(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """Scorecard over clips, with the targets and pass/fail: per clip median ATE <= max(5 cm, 3% of
    the path), static cameras drift <= 2 cm, object centre error median <= 10% of the distance,
    motion direction error median <= 20 deg."""
    card: dict[str, Any] = {"clips": len(scores)}
    disp = [s["disparity"] for s in scores if "disparity" in s]
    if disp:
        card["disparity"] = {k: float(np.mean([d[k] for d in disp])) for k in ("coverage", "epe_px", "bad_px")}
    cams = [s["camera"] for s in scores]
    passes = [c["ate_median_m"] <= max(0.05, 0.03 * c["path_length_m"]) for c in cams]
    static = [s["camera"] for s in scores if s["camera"]["static"]]
    card["camera"] = {
        "ate_median_m": _median([c["ate_median_m"] for c in cams]),
        "ate_median_pct_path": _median([c["ate_median_pct_path"] for c in cams if np.isfinite(c["ate_median_pct_path"])]),
        "ate_worst_median_m": max((c["ate_median_m"] for c in cams), default=None),
        "clips_within_target": int(sum(passes)),
        "target": "per clip median ATE <= max(5 cm, 3% of path length)",
        "static_clips": len(static),
        "static_max_drift_m": max((c["ate_max_m"] for c in static), default=None),
        "static_target": "static cameras drift <= 2 cm",
    }
    rel = [r for s in scores for r in s["objects"]["centre_err_rel"]]
    gt_objects = sum(s.get("gt_objects", 1) for s in scores)
    card["objects"] = {
        "gt_objects": gt_objects,
        "centre_err_median_m": _median([r for s in scores for r in s["objects"]["centre_err_m"]]),
        "centre_err_median_pct_distance": None if not rel else 100.0 * float(np.median(rel)),
        "centre_frames": len(rel),
        "direction_err_median_deg": _median([r for s in scores for r in s["objects"]["direction_err_deg"]]),
        "direction_objects": sum(len(s["objects"]["direction_err_deg"]) for s in scores),
        "yaw_change_err_median_deg": _median([r for s in scores for r in s["objects"]["yaw_change_err_deg"]]),
        "targets": "centre error median <= 10% of distance; direction error median <= 20 deg (objects moving >= 0.3 m)",
    }
    c, o = card["camera"], card["objects"]
    if not gt_objects:
        o["absent"] = ("no clip has object ground truth (camera poses only, e.g. a KITTI drive with OXTS): "
                       "objects are not scored")
    # None = n/a: the clips hold no ground truth for that target (no gt_depth.npz, no gt objects)
    card["pass"] = {
        "disparity_recorded": bool(disp) if disp or any(s.get("gt_depth", True) for s in scores) else None,
        "camera_ate": c["clips_within_target"] == len(cams),
        "static_drift": c["static_max_drift_m"] is None or c["static_max_drift_m"] <= 0.02,
        "object_centres": None if not gt_objects else (
            o["centre_err_median_pct_distance"] is not None and o["centre_err_median_pct_distance"] <= 10.0),
        "object_direction": None if not gt_objects else (
            o["direction_err_median_deg"] is None or o["direction_err_median_deg"] <= 20.0),
    }
    return card


def scorecard_text(card: dict[str, Any]) -> str:
    """Human-readable scorecard lines."""
    lines = [f"scorecard over {card['clips']} clips:"]
    if "disparity" in card:
        d = card["disparity"]
        lines.append(f"  disparity: EPE {d['epe_px']:.2f} px on {100 * d['coverage']:.1f}% covered, "
                     f"bad-3px {100 * d['bad_px']:.1f}% (uncovered counted bad)")
    c = card["camera"]
    lines.append(f"  camera ATE (evo, no alignment): median {100 * c['ate_median_m']:.1f} cm "
                 + (f"({c['ate_median_pct_path']:.1f}% of path), " if c["ate_median_pct_path"] is not None
                    else "(no clip with a camera path: all static), ")
                 + f"worst clip {100 * c['ate_worst_median_m']:.1f} cm; {c['clips_within_target']}/{card['clips']} clips "
                 f"within max(5 cm, 3%)"
                 + (f"; static drift max {100 * c['static_max_drift_m']:.2f} cm over {c['static_clips']} clips"
                    if c["static_max_drift_m"] is not None else ""))
    o = card["objects"]
    fmt = lambda v, f: "n/a" if v is None else f.format(v)  # noqa: E731
    if o.get("absent"):
        lines.append(f"  objects: absent ({o['absent']})")
    else:
        lines.append(f"  objects: centre error median {fmt(o['centre_err_median_m'], '{:.3f}')} m = "
                     f"{fmt(o['centre_err_median_pct_distance'], '{:.1f}')}% of distance ({o['centre_frames']} "
                     f"object-frames); motion direction error median {fmt(o['direction_err_median_deg'], '{:.1f}')} "
                     f"deg ({o['direction_objects']} moving objects); yaw-change error median "
                     f"{fmt(o['yaw_change_err_median_deg'], '{:.1f}')} deg")
    verdict = {True: "PASS", False: "MISS", None: "n/a"}
    lines.append("  targets: " + ", ".join(f"{k} {verdict[v]}" for k, v in card["pass"].items()))
    return "\n".join(lines)



def plot_clip(clip: Clip, ann: dict[str, Any], path: Path) -> Path:
    """Top-down (x right, z up) estimated vs ground-truth camera and object trajectories -> PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    est = np.asarray(ann["camera_centers"], float)
    ax.plot(est[:, 0], est[:, 2], "b.-", lw=1, ms=3, label="camera (estimated)")
    if clip.gt:
        gt = np.asarray(clip.gt["camera_to_world"], float)[:, :3, 3]
        ax.plot(gt[:, 0], gt[:, 2], "k.--", lw=1, ms=3, label="camera (ground truth)")
    gt_objs = {o["id"]: o for o in (clip.gt or {}).get("objects", [])}
    cmap = plt.get_cmap("tab10")
    for k, obj in enumerate(ann["objects"]):
        pts = np.array([c for c in obj["centers"] if c is not None], float).reshape(-1, 3)
        colour = cmap(k % 10)
        if len(pts):
            ax.plot(pts[:, 0], pts[:, 2], "-", color=colour, lw=2, label=f"{obj['label']} (est.)")
            ax.plot(pts[0, 0], pts[0, 2], "o", color=colour, ms=4)
        g = gt_objs.get(obj["id"])
        if g is not None:
            gc = np.asarray(g["centers_world"], float)
            ax.plot(gc[:, 0], gc[:, 2], "--", color=colour, lw=1)
    ax.set_xlabel("x (m, right)")
    ax.set_ylabel("z (m, forward)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=6)
    ax.set_title(f"{clip.clip_id}: estimated (solid) vs ground truth (dashed)", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, path)
