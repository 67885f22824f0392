"""``mllm4d curate``: stereo clips -> metric 4D annotations -> QA data (SFT / CoT / RFT / bench).

Per clip (:func:`curate_clip`): load (native folder, KITTI raw drive, side-by-side video or frame
folders; see :mod:`mllm4d_lite.curation.sources`) -> disparity per frame (:mod:`mllm4d_lite.curation.stereo`) ->
camera trajectory by stereo visual odometry with bundle adjustment (:mod:`mllm4d_lite.curation.odometry`)
-> object centres and relative yaw from the clip's masks (:mod:`mllm4d_lite.curation.tracks`) ->
``annotations/<clip_id>.json`` (design.md schema plus ``clip_dir``, ``source``, per-object
``yaw_rad`` = heading change since the object's first visible frame, and a ``quality`` block).
Clips without masks get no objects (a detector/tracker backend is a later step; the annotation's
``quality.objects`` says so). Then :func:`mllm4d_lite.qa.dataset.build_datasets` turns the annotations
into ``sft.jsonl``, ``cot.jsonl``, ``rft.jsonl``, ``bench.json`` and ``qa_summary.json``.

``--score`` (clips with gt.json / gt_depth.npz) adds ``scorecard.json``: disparity end-point
error and bad-3px vs ``gt_depth`` (uncovered pixels count as bad), camera absolute trajectory
error through evo (translation part, no alignment: both trajectories are metric and start at the
same frame), object centre error (m and % of the distance to the camera), motion-direction error
for objects moving >= 0.3 m, yaw-change error, and the QA agreement of estimated vs ground-truth
annotations. ``--plot`` writes ``plots/<clip_id>.png`` (top-down estimated vs ground truth).

Example::

    mllm4d curate --clips tiny_data --out runs/curate --workers 2 --score --plot
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from mllm4d_lite.curation import odometry, stereo, tracks
from mllm4d_lite.curation.clip import Clip, ClipError
from mllm4d_lite.config import ConfigError, merge_config_classes, parse_config, save_resolved, split_config
from mllm4d_lite.io import atomic_write_json, save_figure
from mllm4d_lite.curation.sources import ClipSource, find_sources

log = logging.getLogger(__name__)


@dataclass
class CurateConfig:
    """Inputs, outputs and run options of ``mllm4d curate``."""

    clips: str = field(default="tiny_data", metadata={"help": "folder of clips (native folders, KITTI drives, side-by-side videos, frame folders)"})
    out: str = field(default="runs/curate", metadata={"help": "output folder (annotations/, QA files, scorecard.json, plots/)"})
    workers: int = field(default=1, metadata={"help": "clips processed in parallel (processes)"})
    plot: bool = field(default=False, metadata={"help": "write plots/<clip_id>.png: top-down estimated vs ground-truth trajectories"})
    score: bool = field(default=False, metadata={"help": "score against ground truth (gt.json, gt_depth.npz) -> scorecard.json"})
    use_gt: bool = field(default=False, metadata={"help": "skip estimation: build QA data from ground-truth annotations"})
    max_frames: int = field(default=0, metadata={"help": "use at most this many frames per clip (0 = all; non-native sources)"})
    min_depth_m: float = field(default=1.0, metadata={"help": "nearest depth the disparity search covers (sets max disparity)"})
    qa: bool = field(default=True, metadata={"help": "build the QA data after the annotations"})

    def validate(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.min_depth_m <= 0:
            raise ConfigError(f"min_depth_m must be > 0, got {self.min_depth_m}")
        if self.use_gt and self.score:
            raise ConfigError("--use-gt and --score together compare ground truth with itself; choose one")


STAGE_CLASSES = (CurateConfig, stereo.StereoConfig, odometry.OdometryConfig, tracks.TrackConfig)


# ----------------------------------------------------------------------------- one clip
def estimate_annotation(clip: Clip, min_depth_m: float = 1.0, stereo_cfg: stereo.StereoConfig | None = None,
                        vo_cfg: odometry.OdometryConfig | None = None, track_cfg: tracks.TrackConfig | None = None,
                        ) -> tuple[dict[str, Any], np.ndarray, dict[str, float]]:
    """Run the 4D pipeline on a loaded clip.

    Returns the annotation dict (design.md + extensions), the disparity (N, H, W) float32 px and
    per-stage timings in seconds (``disparity_s``, ``odometry_s``, ``tracks_s``).
    """
    stereo_cfg = stereo_cfg or stereo.StereoConfig()
    vo_cfg = vo_cfg or odometry.OdometryConfig()
    track_cfg = track_cfg or tracks.TrackConfig()
    clip.check()
    timings: dict[str, float] = {}
    max_disp = stereo.max_disparity_for(clip.focal_px, clip.baseline_m, min_depth_m, clip.width)
    t0 = time.perf_counter()
    disparity = np.stack([stereo.compute_disparity(clip.left[i], clip.right[i], max_disp, stereo_cfg)
                          for i in range(clip.num_frames)])
    timings["disparity_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    exclude = clip.masks > 0 if clip.masks is not None else None
    vo = odometry.estimate_trajectory(clip.left, disparity, clip.K, clip.baseline_m, exclude, vo_cfg, right=clip.right)
    timings["odometry_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    objects = []
    obj_quality: dict[str, Any] = {}
    if clip.masks is None:
        obj_quality["objects"] = ("none: this clip has no masks; objects need a detector/tracker backend, "
                                  "which is a later step")
        log.warning("%s: no masks, so no objects are annotated (a detector/tracker backend is a later step)",
                    clip.path or clip.clip_id)
    else:
        grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in clip.left]
        ids = sorted(set(int(i) for i in np.unique(clip.masks)) - {0} | set(clip.labels))
        with_center = []
        for oid in ids:
            centers, stats = tracks.object_centers(clip.masks, oid, disparity, clip.K, clip.baseline_m,
                                                   vo.camera_to_world, track_cfg)
            yaws = tracks.object_yaws(grays, clip.masks, oid, disparity, clip.K, clip.baseline_m,
                                      vo.camera_to_world, track_cfg)
            yaws = [None if c is None else y for c, y in zip(centers, yaws)]
            objects.append({"id": oid, "label": clip.labels.get(oid, f"object {oid}"), "centers": centers,
                            "yaw_rad": [None if y is None else round(float(y), 5) for y in yaws]})
            with_center.append(stats["frames_with_center"] / clip.num_frames)
        obj_quality["objects"] = "masks"
        obj_quality["object_frames_with_center"] = float(np.mean(with_center)) if with_center else 0.0
    timings["tracks_s"] = time.perf_counter() - t0
    valid = np.isfinite(disparity)
    poses = vo.camera_to_world
    quality = {"stereo_density": float(valid.mean()), "max_disparity_px": float(max_disp),
               **{k: round(v, 4) for k, v in vo.quality.items()}, **obj_quality,
               "stereo_backend": stereo_cfg.backend}
    ann = {
        "clip_id": clip.clip_id,
        "num_frames": clip.num_frames,
        "fps": float(clip.fps),
        "clip_dir": str(clip.path) if clip.path is not None else clip.clip_id,
        "source": clip.source,
        "camera_to_world": np.round(poses, 6).tolist(),
        "camera_centers": np.round(poses[:, :3, 3], 6).tolist(),
        "objects": [{**o, "centers": [None if c is None else [round(v, 5) for v in c] for c in o["centers"]]}
                    for o in objects],
        "quality": quality,
    }
    return ann, disparity, timings


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core: no oversubscription


def curate_clip(source: ClipSource, out_dir: str, run: dict[str, Any]) -> dict[str, Any]:
    """Process one clip source end to end; returns {"clip_id", "annotation", "score"?, "timings"} or
    {"error"}. Used directly and inside worker processes (arguments are picklable)."""
    cfg = CurateConfig(**{k: v for k, v in run.items() if k in CurateConfig.__dataclass_fields__})
    try:
        t0 = time.perf_counter()
        clip = source.load(load_depth=cfg.score, max_frames=cfg.max_frames or None)
        load_s = time.perf_counter() - t0
        if clip.num_frames < 2:
            raise ClipError(f"{clip.num_frames} frame(s); a 4D annotation needs at least 2 (motion over time): "
                            "export the clip with more frames" + (", or raise --max-frames" if cfg.max_frames else ""))
        if cfg.use_gt:
            from mllm4d_lite.qa import dataset as qa

            ann = qa.annotation_from_gt(clip)
            disparity, timings = None, {}
        else:
            parts = [cls(**{k: v for k, v in run.items() if k in cls.__dataclass_fields__}) for cls in STAGE_CLASSES[1:]]
            ann, disparity, timings = estimate_annotation(clip, cfg.min_depth_m, *parts)
        timings["load_s"] = load_s
        result: dict[str, Any] = {"clip_id": clip.clip_id, "annotation": ann, "timings": timings,
                                  "num_frames": clip.num_frames}
        if cfg.score and clip.gt is not None and disparity is not None:
            result["score"] = score_clip(clip, ann, disparity)
        if cfg.plot:
            plot_clip(clip, ann, Path(out_dir) / "plots" / f"{clip.clip_id}.png")
        atomic_write_json(Path(out_dir) / "annotations" / f"{clip.clip_id}.json", ann)
        return result
    except (ClipError, ValueError, OSError) as err:  # VideoError/StereoError are ValueErrors
        return {"error": f"{source.path}: {err}", "source": source.path}
    except Exception as err:  # noqa: BLE001 - one odd clip (e.g. a cv2.error) must not end a long run
        log.debug("%s failed", source.path, exc_info=True)
        return {"error": f"{source.path}: {type(err).__name__}: {err}", "source": source.path}


# ----------------------------------------------------------------------------- scoring
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
    out: dict[str, Any] = {"clip_id": clip.clip_id, "camera_motion": gt.get("camera_motion")}
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
    for g in gt.get("objects", []):
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
    """Scorecard over clips, with the issue's targets and pass/fail."""
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
    card["objects"] = {
        "centre_err_median_m": _median([r for s in scores for r in s["objects"]["centre_err_m"]]),
        "centre_err_median_pct_distance": None if not rel else 100.0 * float(np.median(rel)),
        "centre_frames": len(rel),
        "direction_err_median_deg": _median([r for s in scores for r in s["objects"]["direction_err_deg"]]),
        "direction_objects": sum(len(s["objects"]["direction_err_deg"]) for s in scores),
        "yaw_change_err_median_deg": _median([r for s in scores for r in s["objects"]["yaw_change_err_deg"]]),
        "targets": "centre error median <= 10% of distance; direction error median <= 20 deg (objects moving >= 0.3 m)",
    }
    c, o = card["camera"], card["objects"]
    card["pass"] = {
        "disparity_recorded": bool(disp),
        "camera_ate": c["clips_within_target"] == len(cams),
        "static_drift": c["static_max_drift_m"] is None or c["static_max_drift_m"] <= 0.02,
        "object_centres": o["centre_err_median_pct_distance"] is not None and o["centre_err_median_pct_distance"] <= 10.0,
        "object_direction": o["direction_err_median_deg"] is None or o["direction_err_median_deg"] <= 20.0,
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
                 f"({c['ate_median_pct_path'] if c['ate_median_pct_path'] is not None else float('nan'):.1f}% of path), "
                 f"worst clip {100 * c['ate_worst_median_m']:.1f} cm; {c['clips_within_target']}/{card['clips']} clips "
                 f"within max(5 cm, 3%)"
                 + (f"; static drift max {100 * c['static_max_drift_m']:.2f} cm over {c['static_clips']} clips"
                    if c["static_max_drift_m"] is not None else ""))
    o = card["objects"]
    fmt = lambda v, f: "n/a" if v is None else f.format(v)  # noqa: E731
    lines.append(f"  objects: centre error median {fmt(o['centre_err_median_m'], '{:.3f}')} m = "
                 f"{fmt(o['centre_err_median_pct_distance'], '{:.1f}')}% of distance ({o['centre_frames']} object-frames); "
                 f"motion direction error median {fmt(o['direction_err_median_deg'], '{:.1f}')} deg "
                 f"({o['direction_objects']} moving objects); yaw-change error median "
                 f"{fmt(o['yaw_change_err_median_deg'], '{:.1f}')} deg")
    lines.append("  targets: " + ", ".join(f"{k} {'PASS' if v else 'MISS'}" for k, v in card["pass"].items()))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots
def plot_clip(clip: Clip, ann: dict[str, Any], path: Path) -> Path:
    """Top-down (x right, z up) estimated vs ground-truth camera and object trajectories -> PNG."""
    from mllm4d_lite.io import pyplot

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


# ----------------------------------------------------------------------------- command line
def _import_qa():
    try:
        from mllm4d_lite.qa import dataset as qa
    except ImportError as err:  # pragma: no cover - qa lands with its own issue
        log.warning("QA step skipped: mllm4d_lite.qa.dataset is not importable (%s)", err)
        return None
    return qa


def run_clips(sources: list[ClipSource], out_dir: Path, run: dict[str, Any], workers: int) -> tuple[list[dict], list[str]]:
    """Curate every source (in ``workers`` processes when > 1); returns results and error lines."""
    results, errors = [], []
    bar = tqdm(total=len(sources), desc="curate", unit="clip", disable=None)
    if workers <= 1:
        for src in sources:
            res = curate_clip(src, str(out_dir), run)
            (errors.append(res["error"]) if "error" in res else results.append(res))
            bar.update(1)
    else:
        # "spawn": forking a process that already runs OpenCV / OpenBLAS threads can deadlock the
        # children (seen here); spawned workers start clean (about a second each to import).
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init, mp_context=ctx) as pool:
            futures = {pool.submit(curate_clip, src, str(out_dir), run): src for src in sources}
            for fut in as_completed(futures):
                try:
                    res = fut.result()
                except Exception as err:  # a crashed worker must not take the other clips down
                    res = {"error": f"{futures[fut].path}: {type(err).__name__}: {err}"}
                (errors.append(res["error"]) if "error" in res else results.append(res))
                bar.update(1)
    bar.close()
    for line in errors:
        log.error("skipped %s", line)
    results.sort(key=lambda r: r["clip_id"])
    return results, errors


def main(argv: list[str] | None = None) -> int:
    qa = _import_qa()
    classes = STAGE_CLASSES + ((qa.QAConfig,) if qa is not None else ())
    merged = merge_config_classes("CurateRun", *classes)
    run_cfg = parse_config(merged, argv, prog="mllm4d curate",
                           description="stereo clips -> 4D annotations (depth, camera trajectory, object tracks) -> QA data")
    try:
        cfg = split_config(run_cfg, CurateConfig)
        for cls in classes[1:]:
            split_config(run_cfg, cls)  # validates each part
        sources = find_sources(cfg.clips)
        if not sources:
            raise ClipError(f"{cfg.clips}: no clips found (native clip folders, KITTI drives, side-by-side videos "
                            "with .calib.yaml, or left/ + right/ frame folders with calib.yaml)")
    except (ConfigError, ClipError) as err:
        sys.stderr.write(f"mllm4d curate: error: {err}\n")
        return 2
    out = Path(cfg.out)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    save_resolved(run_cfg, out)
    run = asdict(run_cfg)
    start = time.perf_counter()
    results, errors = run_clips(sources, out, run, min(cfg.workers, len(sources)))
    elapsed = time.perf_counter() - start
    annotations = [r["annotation"] for r in results]
    frames = sum(r["num_frames"] for r in results)
    summary = f"mllm4d curate: {len(results)}/{len(sources)} clips, {frames} frames in {elapsed:.1f} s"
    if errors:
        summary += f", {len(errors)} skipped (see log)"
    if cfg.qa and qa is not None and annotations:
        qa_cfg = split_config(run_cfg, qa.QAConfig)
        qa_summary = qa.build_datasets(annotations, out, qa_cfg)
        unique = qa_summary["unique_questions"]
        rft = f" + {unique['rft']} RFT-only" if "rft" in unique else ""
        summary += f"; QA {unique['train']} train{rft} + {unique['bench']} bench questions"
    if cfg.score:
        scores = [r["score"] for r in results if "score" in r]
        if not scores:
            log.warning("--score: no clip has ground truth (gt.json); nothing to score")
        else:
            card = aggregate_scores(scores)
            card["per_clip"] = [{k: v for k, v in s.items() if k != "objects"} for s in scores]
            text = scorecard_text(card)
            card["summary"] = text.splitlines()
            if qa is not None:
                gt_anns = [qa.annotation_from_gt_dir(Path(r["annotation"]["clip_dir"])) for r in results
                           if "score" in r]
                agreement = qa.agreement([r["annotation"] for r in results if "score" in r], gt_anns,
                                         split_config(run_cfg, qa.QAConfig))
                card["qa_agreement"] = agreement
                text += "\n  " + qa.scorecard_line(agreement)
            atomic_write_json(out / "scorecard.json", card)
            print(text)
            summary += f"; scorecard -> {out / 'scorecard.json'}"
    print(summary + f" -> {out}")
    return 1 if errors and not results else 0


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("MLLM4D_LOG_LEVEL", "INFO"))
    sys.exit(main())
