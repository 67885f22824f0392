"""``mllm4d curate``: stereo clips -> metric 4D annotations -> QA data (SFT / CoT / RFT / bench).

Per clip (:func:`curate_clip`): load (native folder, KITTI raw drive, side-by-side video or frame
folders; see :mod:`mllm4d_lite.curation.sources`) -> disparity per frame (:mod:`mllm4d_lite.curation.stereo`) ->
camera trajectory by stereo visual odometry with bundle adjustment (:mod:`mllm4d_lite.curation.odometry`)
-> object centres and relative yaw from the clip's masks (:mod:`mllm4d_lite.curation.tracks`) ->
``annotations/<clip_id>.json`` (the annotation format of docs/data-format.md plus ``clip_dir``,
``source``, per-object ``yaw_rad`` = heading change since the object's first visible frame, and a
``quality`` block). Clips without masks get no objects unless ``--object-backend flow``
(:mod:`mllm4d_lite.curation.flow_objects`: moving objects from residual scene flow, masks ignored);
the annotation's ``quality.objects`` says which. Then :func:`mllm4d_lite.qa.dataset.build_datasets`
turns the annotations into ``sft.jsonl``, ``cot.jsonl``, ``rft.jsonl``, ``bench.json`` and
``qa_summary.json``.

An existing ``--out`` is cleaned of what this run does not produce (:func:`remove_stale_outputs`:
annotations and plots of clips not curated now, QA files / scorecard this run does not write),
so ``mllm4d qa --annotations OUT/annotations`` never mixes in clips of an earlier run.

``--score`` (clips with gt.json / gt_depth.npz) adds ``scorecard.json`` (see
:mod:`mllm4d_lite.curation.scorecard`) with the QA agreement of estimated vs ground-truth
annotations; ``--plot`` writes ``plots/<clip_id>.png`` (top-down estimated vs ground truth).

Example::

    mllm4d curate --clips tiny_data --out runs/curate --workers 2 --score --plot
"""

from __future__ import annotations

import logging
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

from mllm4d_lite.config import ConfigError, merge_config_classes, parse_config, save_resolved, split_config
from mllm4d_lite.curation import detector_objects, flow_objects, odometry, receipts, stereo, tracks
from mllm4d_lite.curation.annotation import annotation_from_gt, annotation_from_gt_dir
from mllm4d_lite.curation.clip import Clip, ClipError
from mllm4d_lite.curation.engine_ray import RayEngineError  # the engine itself (and ray) load on use
from mllm4d_lite.curation.scorecard import aggregate_scores, plot_clip, score_clip, scorecard_text
from mllm4d_lite.curation.sources import ClipSource, find_sources
from mllm4d_lite.io import OutputDirError, atomic_write_json, id_path, prepare_output_dir, write_error_text
from mllm4d_lite.qa.agreement import agreement, scorecard_line
from mllm4d_lite.qa.config import QAConfig
from mllm4d_lite.qa.dataset import build_datasets

log = logging.getLogger(__name__)

#: where object tracks come from: the clip's instance masks, the mask-free flow backend, or a learned detector
OBJECT_BACKENDS = ("masks", "flow", "detector")

@dataclass
class CurateConfig:
    """Inputs, outputs and run options of ``mllm4d curate``."""

    clips: str = field(default="tiny_data", metadata={"help": "folder of clips (native folders, KITTI drives, side-by-side videos, frame folders)"})
    out: str = field(default="runs/curate", metadata={"help": "output folder (annotations/, QA files, scorecard.json, plots/)"})
    workers: int = field(default=1, metadata={"help": "clips processed in parallel (processes; with --engine ray: the CPUs of the local Ray instance)"})
    engine: str = field(default="local", metadata={"help": "local (this machine, --workers processes) | ray (one Ray task per clip; see --ray-address)"})
    ray_address: str = field(default="", metadata={"help": "--engine ray: empty = start a local Ray instance; auto = join this node's cluster; HOST:PORT or ray://HOST:PORT"})
    resume: bool = field(default=True, metadata={"help": "reuse clips this --out already finished from the same clip bytes, settings and code (curate_state/); false redoes every clip"})
    plot: bool = field(default=False, metadata={"help": "write plots/<clip_id>.png: top-down estimated vs ground-truth trajectories"})
    score: bool = field(default=False, metadata={"help": "score against ground truth (gt.json, gt_depth.npz) -> scorecard.json"})
    use_gt: bool = field(default=False, metadata={"help": "skip estimation: build QA data from ground-truth annotations"})
    max_frames: int = field(default=0, metadata={"help": "use at most this many frames per clip (0 = all; non-native sources)"})
    min_depth_m: float = field(default=1.0, metadata={"help": "nearest depth the disparity search covers (sets max disparity)"})
    qa: bool = field(default=True, metadata={"help": "build the QA data after the annotations"})
    object_backend: str = field(default="masks", metadata={"help": "masks (the clip's instance masks) | flow (moving objects from stereo + optical flow; masks ignored) | detector (zero-shot detector boxes + stereo depth; masks ignored)"})

    def validate(self) -> None:
        if self.object_backend not in OBJECT_BACKENDS:
            raise ConfigError(f"object_backend must be one of {list(OBJECT_BACKENDS)}, got {self.object_backend!r}; "
                              "use --object-backend flow for clips without masks")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.engine not in ("local", "ray"):
            raise ConfigError(f"engine must be local or ray, got {self.engine!r}")
        if self.ray_address and self.engine != "ray":
            raise ConfigError(f"--ray-address {self.ray_address} needs --engine ray")
        if self.min_depth_m <= 0:
            raise ConfigError(f"min_depth_m must be > 0, got {self.min_depth_m}")
        if self.use_gt and self.score:
            raise ConfigError("--use-gt and --score together compare ground truth with itself; choose one")


STAGE_CLASSES = (CurateConfig, stereo.StereoConfig, odometry.OdometryConfig, tracks.TrackConfig,
                 flow_objects.FlowObjectConfig, detector_objects.DetectorConfig)
#: the options a clip's receipt key covers (less receipts.RUN_ONLY_KEYS)
STAGE_KEYS = frozenset(f for cls in STAGE_CLASSES for f in cls.__dataclass_fields__)
# ``mllm4d curate``'s one flat set of flags / YAML keys: the stages above, then the QA step's
CurateRun = merge_config_classes("CurateRun", *STAGE_CLASSES, QAConfig)


# ----------------------------------------------------------------------------- one clip
def estimate_annotation(clip: Clip, min_depth_m: float = 1.0, stereo_cfg: stereo.StereoConfig | None = None,
                        vo_cfg: odometry.OdometryConfig | None = None, track_cfg: tracks.TrackConfig | None = None,
                        flow_cfg: flow_objects.FlowObjectConfig | None = None,
                        det_cfg: detector_objects.DetectorConfig | None = None, object_backend: str = "masks",
                        ) -> tuple[dict[str, Any], np.ndarray, dict[str, float]]:
    """Run the 4D pipeline on a loaded clip.

    ``object_backend`` "masks" takes objects from the clip's instance masks (none without masks);
    "flow" finds moving objects with :mod:`mllm4d_lite.curation.flow_objects` and never reads the
    masks (odometry then runs without them too), adding ``objects_log`` to the annotation; "detector"
    does the same from a zero-shot detector's boxes (:mod:`mllm4d_lite.curation.detector_objects`).

    Returns the annotation dict (docs/data-format.md + extensions), the disparity (N, H, W) float32 px and
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
    exclude = clip.masks > 0 if (clip.masks is not None and object_backend == "masks") else None
    vo = odometry.estimate_trajectory(clip.left, disparity, clip.K, clip.baseline_m, exclude, vo_cfg, right=clip.right)
    timings["odometry_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    objects = []
    obj_quality: dict[str, Any] = {}
    objects_log = None
    if object_backend == "flow":
        objects, objects_log, _ = flow_objects.flow_objects(clip.left, disparity, clip.K, clip.baseline_m,
                                                            vo.camera_to_world, flow_cfg, track_cfg)
        obj_quality["objects"] = "flow: moving objects from residual scene flow (masks ignored)"
    elif object_backend == "detector":
        det_cfg = det_cfg or detector_objects.DetectorConfig()
        objects, objects_log, _ = detector_objects.detector_objects(clip.left, disparity, clip.K, clip.baseline_m,
                                                                    vo.camera_to_world, det_cfg, track_cfg)
        obj_quality["objects"] = f"detector: {det_cfg.detector_model} boxes + stereo depth (masks ignored)"
    elif clip.masks is None:
        obj_quality["objects"] = ("none: this clip has no masks and no detector backend; --object-backend flow "
                                  "finds moving objects without masks")
        log.warning("%s: no masks, so no objects are annotated; --object-backend flow finds moving objects "
                    "without masks", clip.path or clip.clip_id)
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
    if objects_log is not None:
        ann["objects_log"] = objects_log
        # the flow backend sees moving objects only, a detector static ones too (docs/questions.md)
        ann["object_coverage"] = "moving" if object_backend == "flow" else "all"
    return ann, disparity, timings


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core: no oversubscription


def curate_clip(source: ClipSource, out_dir: str, run: dict[str, Any]) -> dict[str, Any]:
    """Process one clip source end to end; returns {"clip_id", "annotation", "score"?, "timings"} or
    {"error"}. Used directly and inside worker processes (arguments are picklable)."""
    cfg = CurateConfig(**{k: v for k, v in run.items() if k in CurateConfig.__dataclass_fields__})
    try:
        key = receipts.clip_key(source, run, STAGE_KEYS)
        done = receipts.load_done(source, out_dir, key, cfg.plot) if cfg.resume else None
        if done is not None:
            return done
        if cfg.object_backend == "detector":
            # torch before the first decode, or its matrix products crash after decord has loaded
            # (docs/stack.md, "Import torch before the first decode"); the other backends never load torch
            import torch  # noqa: F401
        t0 = time.perf_counter()
        clip = source.load(load_depth=cfg.score, max_frames=cfg.max_frames or None)
        load_s = time.perf_counter() - t0
        if clip.num_frames < 2:
            raise ClipError(f"{clip.num_frames} frame(s); a 4D annotation needs at least 2 (motion over time): "
                            "export the clip with more frames" + (", or raise --max-frames" if cfg.max_frames else ""))
        if cfg.use_gt:
            ann = annotation_from_gt(clip)
            disparity, timings = None, {}
        else:
            parts = [cls(**{k: v for k, v in run.items() if k in cls.__dataclass_fields__}) for cls in STAGE_CLASSES[1:]]
            ann, disparity, timings = estimate_annotation(clip, cfg.min_depth_m, *parts,
                                                          object_backend=cfg.object_backend)
        timings["load_s"] = load_s
        result: dict[str, Any] = {"clip_id": clip.clip_id, "annotation": ann, "timings": timings,
                                  "num_frames": clip.num_frames}
        if cfg.score and clip.gt is not None and disparity is not None:
            result["score"] = score_clip(clip, ann, disparity)
            result["gt_annotation"] = annotation_from_gt(clip)  # for the QA agreement (any source kind)
        # the clip id comes from data (clip.json, a file name): it must stay one plain file name
        ann_path = id_path(Path(out_dir) / "annotations", clip.clip_id, ".json", "clip_id", clip.path)
        if cfg.plot:
            plot_clip(clip, ann, id_path(Path(out_dir) / "plots", clip.clip_id, ".png", "clip_id", clip.path))
        atomic_write_json(ann_path, ann)
        result["receipt"] = receipts.write_receipt(source, out_dir, key, result, ann_path)  # last: the clip is done
        return result
    except (ClipError, ValueError, OSError) as err:  # VideoError/StereoError are ValueErrors
        return {"error": f"{source.path}: {err}", "source": source.path}
    except Exception as err:  # noqa: BLE001 - one odd clip (e.g. a cv2.error) must not end a long run
        log.debug("%s failed", source.path, exc_info=True)
        return {"error": f"{source.path}: {type(err).__name__}: {err}", "source": source.path}


# ----------------------------------------------------------------------------- command line
def run_clips(sources: list[ClipSource], out_dir: Path, run: dict[str, Any], workers: int,
              engine: str = "local", ray_address: str = "") -> tuple[list[dict], list[str]]:
    """Curate every source (in ``workers`` processes when > 1, or as Ray tasks with ``engine`` "ray");
    returns results (clips reused from an earlier run carry ``"reused": True``) and error lines."""
    results, errors = [], []
    bar = tqdm(total=len(sources), desc="curate", unit="clip", disable=None)
    if engine == "ray":
        from mllm4d_lite.curation import engine_ray  # imports ray only now

        for res in engine_ray.iter_results(sources, str(out_dir), run, ray_address, workers):
            (errors.append(res["error"]) if "error" in res else results.append(res))
            bar.update(1)
    elif workers <= 1:
        for src in sources:
            res = curate_clip(src, str(out_dir), run)
            (errors.append(res["error"]) if "error" in res else results.append(res))
            bar.update(1)
    else:
        # "spawn": forking a process that already runs OpenCV / OpenBLAS threads can deadlock the
        # children; spawned workers start clean (each imports the kit once).
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
    reused = sum(1 for r in results if r.get("reused"))
    if reused:
        log.info("%d clip(s) reused: this --out already holds them from the same clip bytes, settings and "
                 "code (%s/); --resume false redoes them", reused, receipts.RECEIPTS_DIR)
    results.sort(key=lambda r: r["clip_id"])
    return results, errors




#: files of ``--out`` that the QA step writes, and the scorecard (removed when this run writes none)
QA_FILES = ("sft.jsonl", "cot.jsonl", "rft.jsonl", "bench.json", "qa_summary.json")
SCORECARD_FILE = "scorecard.json"


def remove_stale_outputs(out: Path, clip_ids: set[str], keep_files: set[str] = frozenset(),
                         plots: bool = True) -> list[Path]:
    """Remove from ``out`` what the run that produced ``clip_ids`` did not: ``annotations/<id>.json``
    and ``plots/<id>.png`` of other ids (clips of an earlier run, or clips that failed now; every
    plot when ``plots`` is false, i.e. the run made none) and the
    files of :data:`QA_FILES` / :data:`SCORECARD_FILE` not in ``keep_files`` (names this run wrote).
    Hidden files (temporary files of a concurrent write) and other names are left alone. Returns
    the removed paths (the caller logs them)."""
    removed = []
    for folder, suffix, keep in (("annotations", ".json", clip_ids), ("plots", ".png", clip_ids if plots else set())):
        d = out / folder
        if not d.is_dir():
            continue
        for path in sorted(d.glob(f"*{suffix}")):
            if path.is_file() and not path.name.startswith(".") and path.name[:-len(suffix)] not in keep:
                path.unlink(missing_ok=True)
                removed.append(path)
    for name in (*QA_FILES, SCORECARD_FILE):
        path = out / name
        if name not in keep_files and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def run(run_cfg: Any) -> int:
    """The whole stage from a :data:`CurateRun` config: annotations, QA data, scorecard; the exit code."""
    try:
        cfg = split_config(run_cfg, CurateConfig)
        for cls in (*STAGE_CLASSES[1:], QAConfig):
            split_config(run_cfg, cls)  # validates each part
        sources = find_sources(cfg.clips)
        if not sources:
            raise ClipError(f"{cfg.clips}: no clips found (native clip folders, KITTI drives, side-by-side videos "
                            "with .calib.yaml, or left/ + right/ frame folders with calib.yaml)")
        out = prepare_output_dir(cfg.out)  # a file, read-only: one error line before any work
    except (ConfigError, ClipError, OutputDirError) as err:
        sys.stderr.write(f"mllm4d curate: error: {err}\n")
        return 2
    try:
        return _curate(run_cfg, cfg, sources, out)
    except RayEngineError as err:
        sys.stderr.write(f"mllm4d curate: error: {err}\n")
        return 2
    except OSError as err:  # e.g. the disk filled up: one line, no traceback, no temporary files left
        sys.stderr.write(f"mllm4d curate: error: {write_error_text(err, out)}\n")
        return 2


def _curate(run_cfg: Any, cfg: CurateConfig, sources: list[ClipSource], out: Path) -> int:
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    save_resolved(run_cfg, out)
    settings = asdict(run_cfg)
    start = time.perf_counter()
    workers = cfg.workers if cfg.engine == "ray" else min(cfg.workers, len(sources))
    results, errors = run_clips(sources, out, settings, workers, cfg.engine, cfg.ray_address)
    elapsed = time.perf_counter() - start
    annotations = [r["annotation"] for r in results]
    frames = sum(r["num_frames"] for r in results)
    summary = f"mllm4d curate: {len(results)}/{len(sources)} clips, {frames} frames in {elapsed:.1f} s"
    reused = sum(1 for r in results if r.get("reused"))
    if reused:
        summary += f" ({reused} reused from an earlier run)"
    if errors:
        summary += f", {len(errors)} skipped (see log)"
    written = set()
    if cfg.qa and annotations:
        written.update(QA_FILES)
        qa_summary = build_datasets(annotations, out, split_config(run_cfg, QAConfig))
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
            gt_anns = [r.get("gt_annotation") or annotation_from_gt_dir(Path(r["annotation"]["clip_dir"]))
                       for r in results if "score" in r]
            card["qa_agreement"] = agreement([r["annotation"] for r in results if "score" in r], gt_anns,
                                             split_config(run_cfg, QAConfig))
            text += "\n  " + scorecard_line(card["qa_agreement"])
            atomic_write_json(out / SCORECARD_FILE, card)
            written.add(SCORECARD_FILE)
            print(text)
            summary += f"; scorecard -> {out / 'scorecard.json'}"
    removed = remove_stale_outputs(out, {r["clip_id"] for r in results}, written, plots=cfg.plot)
    receipts.remove_stale_receipts(out, {r["receipt"] for r in results if "receipt" in r})
    if removed:
        names = ", ".join(str(p.relative_to(out)) for p in removed[:5]) + (" ..." if len(removed) > 5 else "")
        log.warning("%s held %d output(s) this run did not produce (other clips, or an earlier run's "
                    "QA / scorecard); removed so nothing is mixed: %s", out, len(removed), names)
        summary += f"; {len(removed)} stale output(s) removed"
    print(summary + f" -> {out}")
    return 1 if errors and not results else 0


def main(argv: list[str] | None = None) -> int:
    run_cfg = parse_config(CurateRun, argv, prog="mllm4d curate",
                           description="stereo clips -> 4D annotations (depth, camera trajectory, object tracks) -> QA data")
    return run(run_cfg)


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("MLLM4D_LOG_LEVEL", "INFO"))
    sys.exit(main())
