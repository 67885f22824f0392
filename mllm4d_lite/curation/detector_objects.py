"""Learned-detector object backend (``--object-backend detector``): an optional slot.

A transformers zero-shot (open-vocabulary) detector, OWLv2 by default
(``Owlv2ForObjectDetection`` + ``Owlv2Processor``; an OWL-ViT folder works too), finds boxes for
the ``--detector-labels`` text queries on every left frame. The clip's instance masks, if any, are
never read, and no segmenter weights are needed:

1. **Boxes.** Scores above ``detector_threshold``; per label, boxes overlapping a higher-scoring
   one by IoU > ``detector_nms_iou`` are dropped (:func:`nms`).
2. **Box -> mask** (:func:`box_to_mask`). The object's depth is the median depth of the box's
   central half (the object fills the middle of its box; the background shows at the edges). The
   mask is the box's pixels whose depth lies within ``detector_depth_tol`` x that depth of it,
   largest connected component.
3. **Tracks** (:func:`link_detections`). Detections are lifted to world coordinates (odometry
   poses) and linked frame to frame by the nearest world centroid of the same label (gate
   ``detector_link_max_m`` per frame of gap, at most ``detector_max_gap`` missing frames). A track
   seen on fewer than ``detector_min_track_fraction`` of the frames is dropped.
4. **Centres.** Each kept track's per-frame masks (nearer objects painted over farther ones) go
   through :func:`tracks.object_centers` / :func:`tracks.object_yaws`, exactly as the mask path,
   so the annotation has the mask path's structure plus ``objects_log`` (one entry per candidate
   track: ``candidate``, ``kept``, ``reason``, ``frames_seen``, ``label``, ``id`` when kept).

The detector sees static objects as well as moving ones, so annotations carry
``object_coverage: "all"``. Weights come from the hub (e.g. ``google/owlv2-base-patch16-ensemble``)
on a networked machine, or from a local folder; the kit's tests run the code path on a tiny
random-weight OWLv2 only (docs/method.md).

Conventions: camera x right, y down, z forward; world = left camera at frame 0; metres, pixels;
boxes (x0, y0, x1, y1) in pixels of the left frame.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from mllm4d_lite.curation import tracks
from mllm4d_lite.curation.linking import greedy_assign
from mllm4d_lite.curation.odometry import backproject

log = logging.getLogger(__name__)

DEFAULT_MODEL = "google/owlv2-base-patch16-ensemble"


class DetectorError(ValueError):
    """The detector could not be loaded or run (one line, names the model and the fix)."""


@dataclass
class DetectorConfig:
    """Settings of the learned-detector object backend (``--object-backend detector``)."""

    detector_model: str = field(default=DEFAULT_MODEL, metadata={"help": "detector backend: OWLv2 / OWL-ViT hub name or local folder (hub names need the network or a filled HF cache)"})
    detector_labels: str = field(default="person,car,bicycle,chair,box,ball,bottle,toy", metadata={"help": "detector backend: comma-separated text queries"})
    detector_threshold: float = field(default=0.2, metadata={"help": "detector backend: smallest box score kept"})
    detector_nms_iou: float = field(default=0.5, metadata={"help": "detector backend: boxes of one label overlapping more than this IoU are one"})
    detector_depth_tol: float = field(default=0.15, metadata={"help": "detector backend: box pixels within this fraction of the box's depth belong to the object"})
    detector_link_max_m: float = field(default=0.6, metadata={"help": "detector backend: largest centroid jump per frame when linking (m)"})
    detector_max_gap: int = field(default=3, metadata={"help": "detector backend: missing frames a track may bridge"})
    detector_min_track_fraction: float = field(default=0.3, metadata={"help": "detector backend: share of the frames a track must be seen on"})

    def validate(self) -> None:
        if not self.detector_model.strip():
            raise ValueError(f"detector_model must name a hub model or a folder, e.g. {DEFAULT_MODEL}")
        if not self.labels():
            raise ValueError(f"detector_labels {self.detector_labels!r} holds no query; give e.g. 'person,car'")
        for name in ("detector_threshold", "detector_nms_iou", "detector_min_track_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("detector_depth_tol", "detector_link_max_m"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.detector_max_gap < 0:
            raise ValueError(f"detector_max_gap must be >= 0, got {self.detector_max_gap}")

    def labels(self) -> list[str]:
        return [s.strip() for s in self.detector_labels.split(",") if s.strip()]


# ----------------------------------------------------------------------------- the detector
def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def nms(dets: list[dict[str, Any]], iou_max: float) -> list[dict[str, Any]]:
    """Greedy per-label non-maximum suppression of ``{"box", "score", "label"}`` detections."""
    out: list[dict[str, Any]] = []
    for det in sorted(dets, key=lambda d: -d["score"]):
        if all(o["label"] != det["label"] or _iou(o["box"], det["box"]) <= iou_max for o in out):
            out.append(det)
    return out


@functools.lru_cache(maxsize=2)
def load_detector(model_name: str, device: str = "cpu") -> tuple[str, Any, Any]:
    """(model type, model in eval mode on ``device``, processor) of an OWLv2 / OWL-ViT hub name or
    folder, cached per process (curation calls it once per clip; a failed load is not cached).
    Raises :class:`DetectorError` (one line) when it cannot be loaded or is no zero-shot detector."""
    try:
        from transformers import AutoConfig, Owlv2ForObjectDetection, Owlv2Processor, OwlViTForObjectDetection, OwlViTProcessor
    except ImportError as err:
        raise DetectorError(f"--object-backend detector needs torch and transformers ({err}); "
                            "pip install -r requirements.txt") from err
    try:
        kind = AutoConfig.from_pretrained(model_name).model_type
        model_cls, proc_cls = ((Owlv2ForObjectDetection, Owlv2Processor) if kind == "owlv2"
                               else (OwlViTForObjectDetection, OwlViTProcessor) if kind == "owlvit" else (None, None))
        if model_cls is None:
            raise DetectorError(f"--detector-model {model_name}: model type {kind!r} is not a zero-shot "
                                "detector this slot runs; use an OWLv2 or OWL-ViT model (e.g. " + DEFAULT_MODEL + ")")
        model = model_cls.from_pretrained(model_name).eval().to(device)
        processor = proc_cls.from_pretrained(model_name)
    except (OSError, ValueError) as err:
        if isinstance(err, DetectorError):
            raise
        raise DetectorError(f"--detector-model {model_name}: cannot load ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}); give a local folder, or download "
                            "the weights on a networked machine (docs/stack.md)") from err
    return kind, model, processor


def detect_boxes(left: np.ndarray, cfg: DetectorConfig) -> list[list[dict[str, Any]]]:
    """Run the zero-shot detector on each left frame.

    left: (N, H, W, 3) uint8 RGB. Returns per frame a list of ``{"box": (4,) float x0 y0 x1 y1 px
    clipped to the image, "score": float, "label": str}`` after the threshold and :func:`nms`.
    transformers / torch are imported here only (the backend is optional); the model is loaded once
    per process (:func:`load_detector`).
    """
    try:
        import torch
    except ImportError as err:
        raise DetectorError(f"--object-backend detector needs torch and transformers ({err}); "
                            "pip install -r requirements.txt") from err
    kind, model, processor = load_detector(cfg.detector_model, "cpu")
    labels = cfg.labels()
    n, H, W = left.shape[:3]
    # OWLv2 pads the image to a square (bottom / right) before resizing: its boxes are relative to
    # that square; OWL-ViT stretches the image, so its boxes are relative to (H, W)
    target = torch.tensor([[max(H, W), max(H, W)]] if kind == "owlv2" else [[H, W]])
    out: list[list[dict[str, Any]]] = []
    with torch.no_grad():
        for t in tqdm(range(n), desc="detector", unit="frame", disable=None, leave=False):
            inputs = processor(text=[labels], images=left[t], return_tensors="pt")
            res = processor.post_process_grounded_object_detection(model(**inputs), threshold=cfg.detector_threshold,
                                                                   target_sizes=target, text_labels=[labels])[0]
            dets = []
            for box, score, lab in zip(res["boxes"].numpy(), res["scores"].numpy(), res["labels"].numpy()):
                box = np.clip(box.astype(np.float64), 0, [W, H, W, H])
                if box[2] - box[0] >= 2 and box[3] - box[1] >= 2:
                    dets.append({"box": box, "score": float(score), "label": labels[int(lab)]})
            out.append(nms(dets, cfg.detector_nms_iou))
    return out


# ----------------------------------------------------------------------------- boxes -> masks -> tracks
def box_to_mask(box: np.ndarray, disparity: np.ndarray, K: np.ndarray, baseline_m: float,
                depth_tol: float) -> np.ndarray | None:
    """The object's pixels in a box: depth within ``depth_tol`` x the median depth of the box's
    central half, largest connected component. disparity (H, W) px (NaN unknown); returns an
    (H, W) bool mask, or None when the box holds too little depth."""
    H, W = disparity.shape
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(W, x1), min(H, y1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    crop = disparity[y0:y1, x0:x1]
    h, w = crop.shape
    centre = crop[h // 4: h - h // 4, w // 4: w - w // 4]
    centre = centre[np.isfinite(centre) & (centre > 0)]
    if len(centre) < 10:
        return None
    fb = K[0, 0] * baseline_m
    z_obj = fb / float(np.median(centre))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = fb / crop
        inside = (np.isfinite(z) & (crop > 0) & (np.abs(z - z_obj) <= depth_tol * z_obj)).astype(np.uint8)
    n_cc, lab, stats, _ = cv2.connectedComponentsWithStats(inside, connectivity=8)
    if n_cc < 2:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = lab == best
    return mask


def _world_centroid(mask: np.ndarray, disparity: np.ndarray, K: np.ndarray, baseline_m: float,
                    cam_to_world: np.ndarray) -> np.ndarray:
    v, u = np.nonzero(mask & np.isfinite(disparity))
    pts = backproject(np.stack([u, v], 1).astype(np.float64), disparity[v, u].astype(np.float64), K, baseline_m)
    c = np.median(pts, axis=0)
    return cam_to_world[:3, :3] @ c + cam_to_world[:3, 3]


def link_detections(detections: list[list[dict[str, Any]]], link_max_m: float, max_gap: int) -> list[dict[str, Any]]:
    """Link per-frame detections (``center`` world (3,), ``label``, ``mask``) into tracks
    ``{"label", "frames": [t...], "masks": {t: mask}, "centers": {t: (3,)}}``: greedily by world
    centroid distance (:func:`linking.greedy_assign`), same label only, gate ``link_max_m`` x frames
    since last seen."""
    done: list[dict[str, Any]] = []
    active: list[dict[str, Any]] = []
    for t, dets in enumerate(detections):
        still = []
        for tr in active:
            (still if t - tr["frames"][-1] <= max_gap + 1 else done).append(tr)
        active = still
        pairs = []
        for i, det in enumerate(dets):
            for j, tr in enumerate(active):
                if tr["label"] != det["label"]:
                    continue
                gap = t - tr["frames"][-1]
                dist = float(np.linalg.norm(det["center"] - tr["centers"][tr["frames"][-1]]))
                if dist <= link_max_m * gap:
                    pairs.append((dist, j, i))
        used_d = set()
        for j, i in greedy_assign(pairs):
            used_d.add(i)
            tr = active[j]
            tr["frames"].append(t)
            tr["masks"][t], tr["centers"][t] = dets[i]["mask"], dets[i]["center"]
        for i, det in enumerate(dets):
            if i not in used_d:
                active.append({"label": det["label"], "frames": [t], "masks": {t: det["mask"]},
                               "centers": {t: det["center"]}})
    return done + active


def objects_from_boxes(boxes: list[list[dict[str, Any]]], left: np.ndarray, disparity: np.ndarray, K: np.ndarray,
                       baseline_m: float, camera_to_world: np.ndarray, cfg: DetectorConfig | None = None,
                       track_cfg: tracks.TrackConfig | None = None
                       ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], np.ndarray]:
    """Per-frame boxes (``box``, ``label``, optional ``score``) -> annotation objects.

    Args: boxes: N lists; left (N, H, W, 3) uint8; disparity (N, H, W) px (NaN unknown);
    camera_to_world (N, 4, 4). Returns (objects, objects_log, masks (N, H, W) uint16), as
    :func:`mllm4d_lite.curation.flow_objects.flow_objects` does.
    """
    cfg = cfg or DetectorConfig()
    track_cfg = track_cfg or tracks.TrackConfig()
    n, H, W = disparity.shape
    detections: list[list[dict[str, Any]]] = []
    no_depth = 0
    for t in range(n):
        dets = []
        for b in boxes[t]:
            mask = box_to_mask(np.asarray(b["box"], float), disparity[t], K, baseline_m, cfg.detector_depth_tol)
            if mask is None:
                no_depth += 1
                continue
            dets.append({"label": b["label"], "mask": mask,
                         "center": _world_centroid(mask, disparity[t], K, baseline_m, camera_to_world[t])})
        detections.append(dets)
    candidates = link_detections(detections, cfg.detector_link_max_m, cfg.detector_max_gap)
    min_frames = max(2, int(np.ceil(cfg.detector_min_track_fraction * n)))
    log_entries: list[dict[str, Any]] = []
    kept = []
    for k, tr in enumerate(sorted(candidates, key=lambda tr: (tr["frames"][0], -len(tr["frames"])))):
        entry: dict[str, Any] = {"candidate": k, "label": tr["label"], "frames_seen": len(tr["frames"]),
                                 "first_frame": tr["frames"][0], "last_frame": tr["frames"][-1]}
        if len(tr["frames"]) < min_frames:
            entry.update(kept=False, reason=f"detected on {len(tr['frames'])}/{n} frames (< {min_frames}): a "
                                            "spurious or brief detection")
        else:
            entry.update(kept=True)
            kept.append((entry, tr))
        log_entries.append(entry)
    if no_depth:
        log_entries.append({"boxes": no_depth, "kept": False,
                            "reason": f"{no_depth} box(es) with too little stereo depth inside to place a mask"})
    # instance masks: nearer objects painted last, so they occlude farther ones as in a rendered mask
    masks = np.zeros((n, H, W), np.uint16)
    for t in range(n):
        order = sorted((float(np.linalg.norm(tr["centers"][t] - camera_to_world[t, :3, 3])), oid)
                       for oid, (_, tr) in enumerate(kept, start=1) if t in tr["masks"])
        for _, oid in reversed(order):
            masks[t][kept[oid - 1][1]["masks"][t]] = oid
    grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in left]
    objects = []
    for oid, (entry, tr) in enumerate(kept, start=1):
        centers, _ = tracks.object_centers(masks, oid, disparity, K, baseline_m, camera_to_world, track_cfg)
        n_centres = sum(c is not None for c in centers)
        if n_centres < 2:
            entry.update(kept=False, reason=f"detected on {entry['frames_seen']} frames, but a centre could be "
                                            f"placed on only {n_centres}")
            masks[masks == oid] = 0
            continue
        yaws = tracks.object_yaws(grays, masks, oid, disparity, K, baseline_m, camera_to_world, track_cfg)
        entry.update(id=oid, reason=f"detected on {entry['frames_seen']}/{n} frames (>= {min_frames}); centre on "
                                    f"{n_centres} frames")
        objects.append({"id": oid, "label": tr["label"], "centers": centers,
                        "yaw_rad": [None if (y is None or c is None) else round(float(y), 5)
                                    for c, y in zip(centers, yaws)]})
    # unique labels: number the ones that share a query
    counts, seen = Counter(o["label"] for o in objects), Counter()
    for obj in objects:
        if counts[obj["label"]] > 1:
            seen[obj["label"]] += 1
            obj["label"] = f"{obj['label']} {seen[obj['label']]}"
    for entry in log_entries:
        if entry.get("id") is not None:
            entry["label"] = next(o["label"] for o in objects if o["id"] == entry["id"])
    log.info("detector objects: %d object(s) kept of %d candidate track(s)", len(objects), len(candidates))
    return objects, log_entries, masks


def detector_objects(left: np.ndarray, disparity: np.ndarray, K: np.ndarray, baseline_m: float,
                     camera_to_world: np.ndarray, cfg: DetectorConfig | None = None,
                     track_cfg: tracks.TrackConfig | None = None
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], np.ndarray]:
    """The backend: :func:`detect_boxes` then :func:`objects_from_boxes` (same arguments and returns)."""
    cfg = cfg or DetectorConfig()
    boxes = detect_boxes(left, cfg)
    return objects_from_boxes(boxes, left, disparity, K, baseline_m, camera_to_world, cfg, track_cfg)
