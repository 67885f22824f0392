"""Per-clip receipts: a re-run of ``mllm4d curate`` redoes only the clips that are missing.

After a clip's annotation (and plot) are written, :func:`write_receipt` writes
``OUT/curate_state/<source>.json``, where ``<source>`` is a digest of the clip source (kind, path,
calibration path; a clip's id is known only after loading it). The receipt holds:

* ``key``: SHA-256 of the clip's input bytes (:func:`content_digest`: every file the loader reads),
  the source path (the annotation records it as ``clip_dir``), the settings that shape the
  annotation (:func:`clip_key`: every stage option except the run-only ones of
  :data:`RUN_ONLY_KEYS`) and a digest of the curation code (:func:`code_digest`), so an edited
  clip, another setting or another kit version redoes the clip;
* ``annotation_sha256``: the bytes of ``annotations/<clip_id>.json`` as written;
* ``clip_id``, ``num_frames`` and ``score`` (with ``--score``): what the run's summary, QA step
  and scorecard need from the clip without loading it again.

A later run with the same ``--out`` (``--resume`` true, the default) finds a receipt with the
same key whose annotation file still has the recorded digest (and whose plot exists when
``--plot`` is on) and reuses it: :func:`load_done`. Anything else (no receipt, another key, an
edited or missing annotation, a corrupt receipt) redoes the clip. The receipt is written after
the annotation, both atomically, so a run killed at any point leaves either a finished clip or
one that is redone. Every engine (``--workers`` processes, Ray tasks) goes through the same
per-clip function, so the rule is the same for all.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from mllm4d_lite.io import atomic_write_json, id_path

log = logging.getLogger(__name__)

#: receipt folder inside ``--out``
RECEIPTS_DIR = "curate_state"
#: bump when the receipt's meaning changes (old receipts then redo their clips)
RECEIPT_VERSION = 1
#: options that do not change a clip's annotation (where and how the run goes, the QA step after it)
RUN_ONLY_KEYS = frozenset({"clips", "out", "workers", "engine", "ray_address", "resume", "qa"})
_CHUNK = 1 << 20


def source_name(source: Any) -> str:
    """The receipt's file stem for a :class:`~mllm4d_lite.curation.sources.ClipSource`."""
    text = json.dumps([source.kind, str(Path(source.path).absolute()), source.calib or ""])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def receipt_path(out_dir: str | Path, source: Any) -> Path:
    return Path(out_dir) / RECEIPTS_DIR / f"{source_name(source)}.json"


def _files_below(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def source_files(source: Any) -> list[Path]:
    """Every file the source's loader reads (see :mod:`mllm4d_lite.curation.sources`), sorted."""
    p = Path(source.path)
    if source.kind == "native":
        return _files_below(p)
    if source.kind == "kitti_raw":
        extra = [p / "image_02" / "timestamps.txt", p / "calib_cam_to_cam.txt", p.parent / "calib_cam_to_cam.txt"]
        return (_files_below(p / "image_02" / "data") + _files_below(p / "image_03" / "data")
                + [f for f in extra if f.is_file()])
    files = _files_below(p / "left") + _files_below(p / "right") if source.kind == "frame_folders" else [p]
    return files + ([Path(source.calib)] if source.calib else [])


def content_digest(source: Any) -> str:
    """SHA-256 over the names (relative to the source), sizes and bytes of :func:`source_files`."""
    h = hashlib.sha256()
    root = Path(source.path)
    for f in source_files(source):
        try:
            name = str(f.relative_to(root)) if f.is_relative_to(root) else str(f.absolute())
            h.update(f"{name}\0{f.stat().st_size}\0".encode())
            with open(f, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    h.update(chunk)
        except OSError as err:  # unreadable: the loader reports it; the key just never matches
            h.update(f"unreadable {f}: {err}".encode())
    return h.hexdigest()


#: curation modules off the per-clip path (synthetic clip generation, the engines, this file)
NOT_PER_CLIP = frozenset({"__init__.py", "synth.py", "scene.py", "render.py", "textures.py", "realtex.py",
                          "engine_ray.py", "receipts.py"})


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 of the curation package's Python files that the per-clip path may use (all but
    :data:`NOT_PER_CLIP`; a new module counts), so a kit change there redoes the clips."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(__file__).parent.glob("*.py") if p.name not in NOT_PER_CLIP):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def clip_key(source: Any, run: dict[str, Any], stage_keys: set[str] | frozenset[str]) -> str:
    """The key a receipt must match: inputs, source path, annotation settings, code."""
    settings = {k: run[k] for k in sorted(stage_keys) if k in run and k not in RUN_ONLY_KEYS}
    text = json.dumps({"version": RECEIPT_VERSION, "kind": source.kind, "path": str(Path(source.path).absolute()),
                       "calib": source.calib, "content": content_digest(source), "settings": settings,
                       "code": code_digest()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load_done(source: Any, out_dir: str | Path, key: str, plot: bool) -> dict[str, Any] | None:
    """The stored result of a finished clip (the dict :func:`curate_clip` returns, plus
    ``"reused": True``), or None when the clip must be (re)done."""
    path = receipt_path(out_dir, source)
    try:
        receipt = json.loads(path.read_text())
        if receipt.get("key") != key:
            return None
        ann_path = id_path(Path(out_dir) / "annotations", receipt["clip_id"], ".json", "clip_id", path)
        data = ann_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != receipt["annotation_sha256"]:
            log.info("%s: annotation changed since its receipt; redoing the clip", ann_path)
            return None
        if plot and not id_path(Path(out_dir) / "plots", receipt["clip_id"], ".png", "clip_id", path).is_file():
            return None
        result = {"clip_id": receipt["clip_id"], "annotation": json.loads(data), "timings": {},
                  "num_frames": int(receipt["num_frames"]), "reused": True, "receipt": path.name}
        for name in ("score", "gt_annotation"):
            if name in receipt:
                result[name] = receipt[name]
        return result
    except (OSError, ValueError, KeyError, TypeError):  # no receipt / annotation, or a damaged one
        return None


def write_receipt(source: Any, out_dir: str | Path, key: str, result: dict[str, Any], ann_path: Path) -> str:
    """Record a finished clip (after its annotation and plot are written); returns the receipt's name."""
    receipt = {"version": RECEIPT_VERSION, "key": key, "source": source.path, "clip_id": result["clip_id"],
               "num_frames": result["num_frames"],
               "annotation_sha256": hashlib.sha256(ann_path.read_bytes()).hexdigest()}
    for name in ("score", "gt_annotation"):
        if name in result:
            receipt[name] = result[name]
    path = receipt_path(out_dir, source)
    atomic_write_json(path, receipt)
    return path.name


def remove_stale_receipts(out: Path, keep_names: set[str]) -> list[Path]:
    """Remove receipts of sources this run did not finish (their annotations are removed too)."""
    removed = []
    folder = out / RECEIPTS_DIR
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if not path.name.startswith(".") and path.name not in keep_names:
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
