"""The 4D annotation of a clip: schema check, loading, and the annotation built from ground truth.

An annotation (``annotations/<clip_id>.json``, the output of curation and the input of the QA
step) holds the camera trajectory and per-frame object centres of one clip; the schema is in
docs/data-format.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from mllm4d_lite.io import UnsafeIdError, safe_id


class AnnotationError(ValueError):
    """Bad annotation input; the message names the file / clip and the fix."""


def validate_annotation(ann: Any, name: str = "annotation") -> None:
    """Raise :class:`AnnotationError` naming ``name`` when ``ann`` does not follow docs/data-format.md."""
    if not isinstance(ann, dict):
        raise AnnotationError(f"{name}: expected a JSON object (docs/data-format.md annotation), "
                              f"got {type(ann).__name__}")
    required = ("clip_id", "num_frames", "fps", "camera_to_world", "camera_centers", "objects")
    missing = [k for k in required if k not in ann]
    if missing:
        raise AnnotationError(f"{name}: missing key(s) {missing}; re-run `mllm4d curate` to rewrite the annotation")
    try:
        safe_id(ann["clip_id"], "clip_id", name)  # it names files (annotations/<clip_id>.json, record ids)
    except UnsafeIdError as err:
        raise AnnotationError(f"{err}; re-run `mllm4d curate`") from None
    n = ann["num_frames"]
    if not isinstance(n, int) or n < 2:
        raise AnnotationError(f"{name}: num_frames must be an integer >= 2, got {n!r}")
    if not (isinstance(ann["fps"], (int, float)) and ann["fps"] > 0):
        raise AnnotationError(f"{name}: fps must be > 0, got {ann['fps']!r}")
    for key, shape in (("camera_to_world", (n, 4, 4)), ("camera_centers", (n, 3))):
        try:
            arr = np.asarray(ann[key], dtype=np.float64)
        except (TypeError, ValueError):
            raise AnnotationError(f"{name}: {key} is not a numeric array; expected {shape}") from None
        if arr.shape != shape or not np.isfinite(arr).all():
            raise AnnotationError(f"{name}: {key} must be finite with shape {shape}, got {arr.shape}")
    for i, obj in enumerate(ann["objects"]):
        if not isinstance(obj, dict) or "label" not in obj or "centers" not in obj:
            raise AnnotationError(f"{name}: objects[{i}] needs 'label' and 'centers'")
        if len(obj["centers"]) != n:
            raise AnnotationError(f"{name}: objects[{i}] ({obj['label']}) has {len(obj['centers'])} centres "
                                  f"for {n} frames")
        for t, c in enumerate(obj["centers"]):
            if c is not None and (len(c) != 3 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in c)):
                raise AnnotationError(f"{name}: objects[{i}].centers[{t}] must be [x, y, z] or null, got {c!r}")
        yaw = obj.get("yaw_rad")
        if yaw is not None and len(yaw) != n:
            raise AnnotationError(f"{name}: objects[{i}] ({obj['label']}) has {len(yaw)} yaw values for {n} frames")


def load_annotations(ann_dir: str | Path) -> list[dict[str, Any]]:
    """Read and validate every ``<ann_dir>/*.json`` (sorted by name)."""
    ann_dir = Path(ann_dir)
    files = sorted(ann_dir.glob("*.json"))
    if not files:
        raise AnnotationError(f"no annotations in {ann_dir}; run `mllm4d curate` first "
                              "(it writes annotations/<clip_id>.json)")
    out = []
    for path in files:
        try:
            ann = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise AnnotationError(f"{path}: not valid JSON ({err}); delete it and re-run curation") from None
        validate_annotation(ann, str(path))
        out.append(ann)
    return out


# --------------------------------------------------------------------------- from ground truth


def _annotation_from_gt_dict(clip_id: str, fps: float, clip_dir: str, source: str, gt: dict[str, Any],
                             num_frames: int | None = None) -> dict[str, Any]:
    c2w = np.asarray(gt["camera_to_world"], dtype=np.float64)
    n = int(num_frames or c2w.shape[0])
    if c2w.shape != (n, 4, 4):
        raise AnnotationError(f"{clip_dir}/gt.json: camera_to_world has shape {c2w.shape}, expected ({n}, 4, 4)")
    objects = []
    for i, obj in enumerate(gt.get("objects", [])):
        centers = obj.get("centers_world") or [None] * n
        visible = obj.get("visible") or [c is not None for c in centers]
        yaw = obj.get("yaw_rad") or [None] * n
        if len(centers) != n or len(visible) != n or len(yaw) != n:
            raise AnnotationError(f"{clip_dir}/gt.json: objects[{i}] has per-frame lists of length "
                                  f"{len(centers)}/{len(visible)}/{len(yaw)}, expected {n}")
        objects.append({
            "id": obj.get("id", i + 1), "label": str(obj.get("label", f"object {i + 1}")),
            "centers": [[float(v) for v in c] if (c is not None and vis) else None for c, vis in zip(centers, visible)],
            "yaw_rad": [float(y) if (y is not None and vis) else None for y, vis in zip(yaw, visible)],
        })
    return {"clip_id": clip_id, "num_frames": n, "fps": float(fps), "clip_dir": str(clip_dir), "source": source,
            "camera_to_world": c2w.tolist(), "camera_centers": c2w[:, :3, 3].tolist(), "objects": objects,
            "quality": {"annotation": "ground truth"}}


def annotation_from_gt(clip: Any) -> dict[str, Any]:
    """The annotation built from a ``Clip``'s ground truth (``clip.gt`` as in gt.json).

    Object centres (true centroids) and yaw are set to null where the object is not visible, so the
    ground-truth annotation states only what an estimator could see."""
    if not clip.gt:
        raise AnnotationError(f"clip {clip.clip_id} ({clip.path}) has no gt.json; --use-gt needs synthetic clips "
                              "with ground truth")
    return _annotation_from_gt_dict(clip.clip_id, clip.fps, str(clip.path or clip.clip_id), clip.source, clip.gt,
                                    num_frames=clip.num_frames)


def annotation_from_gt_dir(clip_dir: str | Path) -> dict[str, Any]:
    """Like :func:`annotation_from_gt`, read straight from ``clip.json`` + ``gt.json`` (no video decode)."""
    clip_dir = Path(clip_dir)
    for name in ("clip.json", "gt.json"):
        if not (clip_dir / name).is_file():
            raise AnnotationError(f"{clip_dir / name} not found; --use-gt needs clips with ground truth "
                                  "(e.g. from `mllm4d synth`)")
    meta = json.loads((clip_dir / "clip.json").read_text())
    gt = json.loads((clip_dir / "gt.json").read_text())
    return _annotation_from_gt_dict(str(meta.get("clip_id", clip_dir.name)), float(meta["fps"]), str(clip_dir),
                                    str(meta.get("source", "unknown")), gt, num_frames=meta.get("num_frames"))


def gt_annotations_from_clips(clips_dir: str | Path) -> list[dict[str, Any]]:
    """Ground-truth annotations of every ``<clips_dir>/*/gt.json`` clip folder (sorted)."""
    dirs = sorted(p.parent for p in Path(clips_dir).glob("*/gt.json"))
    if not dirs:
        raise AnnotationError(f"no clip folders with gt.json under {clips_dir}; generate some with "
                              f"`mllm4d synth --out {clips_dir}`")
    return [annotation_from_gt_dir(d) for d in dirs]
