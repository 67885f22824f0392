"""Stereo depth: disparity from a rectified pair, and metric depth from disparity.

Conventions: images are (H, W, 3) uint8 RGB, rectified so that a scene point at column ``x`` in
the left view appears at column ``x - d`` in the right view; ``d`` is the disparity in pixels
(> 0). Depth in metres is ``depth_m = focal_px * baseline_m / disparity_px``. Unknown
disparities are NaN.

The default backend ("sgbm") is OpenCV's semi-global matching (3-way), improved by:

1. left padding by ``max_disparity_px`` columns, so SGBM returns values in the left border band
   that it otherwise leaves empty (a sizeable share of the ground-truth pixels on real pairs);
2. a left-right consistency check: the right view's disparity is computed by matching the
   mirrored pair, and a left disparity survives only if the right disparity at ``x - d`` agrees
   within ``lr_max_diff_px`` (removes occlusions and mismatches);
3. hole handling: holes up to ``fill_max_width_px`` wide along a scanline are filled with the
   smaller (background) of the two neighbouring valid disparities, the usual occlusion fill;
   wider holes stay NaN.

``scripts/bench_curate.py`` compares it with plain SGBM (:func:`plain_sgbm_disparity`) on the
Middlebury motorcycle pair (``skimage.data.stereo_motorcycle()``); the figures are in
docs/results.md.

A learned stereo model can be plugged in as a backend (``backend="torchscript"``, reading a
user-provided TorchScript export from ``weights_dir``), or any callable registered with
:func:`register_backend`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

log = logging.getLogger(__name__)


class StereoError(ValueError):
    """Bad stereo input or backend configuration; the message names the problem and the fix."""


@dataclass
class StereoConfig:
    """Settings of :func:`compute_disparity` (also embedded in the curate config)."""

    backend: str = field(default="sgbm", metadata={"help": "disparity backend: sgbm | torchscript | a registered name"})
    block_size: int = field(default=3, metadata={"help": "SGBM matching block size (odd, px)"})
    p1_factor: int = field(default=8, metadata={"help": "SGBM P1 = p1_factor * 3 * block_size^2"})
    p2_factor: int = field(default=32, metadata={"help": "SGBM P2 = p2_factor * 3 * block_size^2"})
    uniqueness_ratio: int = field(default=10, metadata={"help": "SGBM uniqueness ratio (percent)"})
    speckle_window: int = field(default=100, metadata={"help": "SGBM speckle filter window (px, 0 = off)"})
    lr_max_diff_px: float = field(default=1.0, metadata={"help": "left-right check tolerance (px, <0 = off)"})
    fill_max_width_px: int = field(default=8, metadata={"help": "fill scanline holes up to this width (px, 0 = off)"})
    weights_dir: str = field(default="", metadata={"help": "folder with model.pt for backend=torchscript"})
    device: str = field(default="cuda", metadata={"help": "torch device for learned backends"})


DisparityFn = Callable[[np.ndarray, np.ndarray, int, StereoConfig], np.ndarray]
_BACKENDS: dict[str, DisparityFn] = {}


def register_backend(name: str, fn: DisparityFn) -> None:
    """Register ``fn(left, right, max_disparity_px, cfg) -> (H, W) float32 disparity (NaN unknown)``."""
    _BACKENDS[name] = fn


def available_backends() -> list[str]:
    return sorted(_BACKENDS)


def _check_pair(left: np.ndarray, right: np.ndarray) -> None:
    if left.shape != right.shape:
        raise StereoError(
            f"left and right images differ in shape {left.shape} vs {right.shape}; rectify both views to one size"
        )
    if left.ndim != 3 or left.shape[2] != 3 or left.dtype != np.uint8:
        raise StereoError(f"images must be (H, W, 3) uint8, got {left.dtype} {left.shape}")


def _sgbm(left: np.ndarray, right: np.ndarray, num_disp: int, cfg: StereoConfig) -> np.ndarray:
    """Raw SGBM disparity (px, float32, < 0 = invalid) with ``num_disp`` columns of left padding."""
    bs = cfg.block_size
    matcher = cv2.StereoSGBM_create(
        minDisparity=0,
        numDisparities=num_disp,
        blockSize=bs,
        P1=cfg.p1_factor * 3 * bs * bs,
        P2=cfg.p2_factor * 3 * bs * bs,
        uniquenessRatio=cfg.uniqueness_ratio,
        speckleWindowSize=cfg.speckle_window,
        speckleRange=2,
        disp12MaxDiff=1,
        mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY,
    )
    pad_l = cv2.copyMakeBorder(left, 0, 0, num_disp, 0, cv2.BORDER_REPLICATE)
    pad_r = cv2.copyMakeBorder(right, 0, 0, num_disp, 0, cv2.BORDER_REPLICATE)
    raw = matcher.compute(pad_l, pad_r)[:, num_disp:]
    return raw.astype(np.float32) / 16.0  # OpenCV returns fixed point with 4 fractional bits


def lr_consistency(disp_left: np.ndarray, disp_right: np.ndarray, max_diff_px: float) -> np.ndarray:
    """Mask of left disparities confirmed by the right view's disparity map.

    disp_left, disp_right: (H, W) px, negative or NaN = invalid; the right map is indexed by right
    image columns. A pixel passes when ``x - d >= 0`` and ``|d_L(x) - d_R(x - d_L(x))| <= max_diff_px``.
    """
    h, w = disp_left.shape
    xs = np.arange(w, dtype=np.float32)[None, :]
    xr = np.rint(xs - disp_left)
    inside = np.isfinite(xr) & (xr >= 0)
    xr_idx = np.clip(np.nan_to_num(xr, nan=0), 0, w - 1).astype(np.int64)
    d_r = disp_right[np.arange(h)[:, None], xr_idx]
    with np.errstate(invalid="ignore"):
        return inside & (disp_left >= 0) & (d_r >= 0) & (np.abs(disp_left - d_r) <= max_diff_px)


def fill_scanline_holes(disp: np.ndarray, max_width_px: int) -> np.ndarray:
    """Fill NaN runs of at most ``max_width_px`` along each row with the smaller (farther)
    of the two bounding valid disparities; runs touching the image border or wider stay NaN."""
    h, w = disp.shape
    hole = ~np.isfinite(disp)
    cols = np.broadcast_to(np.arange(w), (h, w))
    last_valid = np.maximum.accumulate(np.where(hole, -1, cols), axis=1)
    next_valid = np.minimum.accumulate(np.where(hole, w, cols)[:, ::-1], axis=1)[:, ::-1]
    rows = np.arange(h)[:, None]
    left_val = disp[rows, np.clip(last_valid, 0, w - 1)]
    right_val = disp[rows, np.clip(next_valid, 0, w - 1)]
    width = next_valid - last_valid - 1
    fill = hole & (last_valid >= 0) & (next_valid < w) & (width <= max_width_px)
    out = disp.copy()
    out[fill] = np.minimum(left_val, right_val)[fill]
    return out


def _sgbm_backend(left: np.ndarray, right: np.ndarray, max_disparity_px: int, cfg: StereoConfig) -> np.ndarray:
    num_disp = int(np.ceil(max(16, max_disparity_px) / 16.0) * 16)  # SGBM needs a multiple of 16
    disp_l = _sgbm(left, right, num_disp, cfg)
    if cfg.lr_max_diff_px >= 0:
        # Right-view disparity: match the mirrored pair (mirrored right becomes the reference).
        disp_r = _sgbm(np.ascontiguousarray(right[:, ::-1]), np.ascontiguousarray(left[:, ::-1]), num_disp, cfg)
        disp_r = disp_r[:, ::-1]
        ok = lr_consistency(disp_l, disp_r, cfg.lr_max_diff_px)
    else:
        ok = disp_l >= 0
    disp = np.where(ok, disp_l, np.nan).astype(np.float32)
    if cfg.fill_max_width_px > 0:
        disp = fill_scanline_holes(disp, cfg.fill_max_width_px)
    return disp


def _torchscript_backend(left: np.ndarray, right: np.ndarray, max_disparity_px: int, cfg: StereoConfig) -> np.ndarray:
    """A learned stereo model (e.g. RAFT-Stereo, FoundationStereo) exported by the user to
    TorchScript as ``<weights_dir>/model.pt``: called as ``model(left, right)`` with (1, 3, H, W)
    float32 RGB tensors in [0, 255]; returns (1, 1, H, W) or (1, H, W) or (H, W) disparity in px.
    No weights ship with the kit."""
    path = Path(cfg.weights_dir) / "model.pt"
    if not cfg.weights_dir or not path.is_file():
        raise StereoError(
            f"backend 'torchscript' needs a TorchScript stereo model at {path}; "
            "export your RAFT-Stereo / FoundationStereo weights there or use backend=sgbm"
        )
    import torch

    key = (str(path), cfg.device)
    model = _MODEL_CACHE.get(key)
    if model is None:
        device = cfg.device if (cfg.device != "cuda" or torch.cuda.is_available()) else "cpu"
        model = torch.jit.load(str(path), map_location=device).eval()
        _MODEL_CACHE[key] = model
    device = next(iter(model.parameters()), torch.zeros(0)).device
    to_t = lambda im: torch.from_numpy(im).permute(2, 0, 1)[None].float().to(device)  # noqa: E731
    with torch.inference_mode():
        out = model(to_t(left), to_t(right))
    disp = out.detach().float().cpu().numpy().reshape(left.shape[:2]).astype(np.float32)
    disp[~(disp > 0) | (disp > max_disparity_px)] = np.nan
    return disp


_MODEL_CACHE: dict[tuple[str, str], object] = {}
register_backend("sgbm", _sgbm_backend)
register_backend("torchscript", _torchscript_backend)


def compute_disparity(
    left: np.ndarray,
    right: np.ndarray,
    max_disparity_px: int = 64,
    cfg: StereoConfig | None = None,
) -> np.ndarray:
    """Disparity of the left view.

    Args:
        left, right: (H, W, 3) uint8 RGB rectified images of the same size.
        max_disparity_px: largest disparity searched (rounded up to a multiple of 16 for SGBM).
        cfg: backend and filter settings (defaults: :class:`StereoConfig`).
    Returns:
        (H, W) float32 disparity in pixels, NaN where unknown.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0); right = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
    >>> left = np.roll(right, 5, axis=1)  # a fronto-parallel plane at 5 px disparity
    >>> float(np.nanmedian(compute_disparity(left, right, 16)))
    5.0
    """
    cfg = cfg or StereoConfig()
    left, right = np.asarray(left), np.asarray(right)
    _check_pair(left, right)
    if max_disparity_px <= 0:
        raise StereoError(f"max_disparity_px must be > 0, got {max_disparity_px}")
    fn = _BACKENDS.get(cfg.backend)
    if fn is None:
        raise StereoError(f"unknown stereo backend {cfg.backend!r}; choose from {available_backends()}")
    return fn(np.ascontiguousarray(left), np.ascontiguousarray(right), int(max_disparity_px), cfg)


def disparity_to_depth(disparity_px: np.ndarray, focal_px: float, baseline_m: float) -> np.ndarray:
    """Metric depth ``focal_px * baseline_m / disparity_px`` (m); NaN where disparity is NaN or <= 0."""
    if not baseline_m > 0:
        raise StereoError(f"baseline_m must be > 0, got {baseline_m}; fix the calibration")
    d = np.asarray(disparity_px, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.float32(focal_px * baseline_m) / d
    depth[~(d > 0)] = np.nan
    return depth


def max_disparity_for(focal_px: float, baseline_m: float, min_depth_m: float, width: int) -> int:
    """Disparity search range (px, multiple of 16) that covers depths down to ``min_depth_m``,
    capped at half the image width."""
    need = focal_px * baseline_m / max(min_depth_m, 1e-6)
    return int(min(max(16, np.ceil(need / 16.0) * 16), max(16, (width // 2) // 16 * 16)))


def disparity_metrics(disp_px: np.ndarray, gt_disp_px: np.ndarray, bad_threshold_px: float = 3.0) -> dict[str, float]:
    """Compare an estimate with ground truth (both (H, W) px; GT non-finite or <= 0 = unknown).

    Returns ``coverage`` (share of GT pixels with an estimate), ``epe_px`` (mean |error| on covered
    pixels) and ``bad_px`` (share of GT pixels with error > threshold, uncovered counted bad).
    """
    gt_ok = np.isfinite(gt_disp_px) & (gt_disp_px > 0)
    est_ok = np.isfinite(disp_px) & gt_ok
    n = int(gt_ok.sum())
    if n == 0:
        return {"coverage": float("nan"), "epe_px": float("nan"), "bad_px": float("nan"), "num_gt_px": 0}
    err = np.abs(np.where(est_ok, disp_px, 0) - np.where(gt_ok, gt_disp_px, 0))
    bad = (~est_ok | (err > bad_threshold_px)) & gt_ok
    return {
        "coverage": float(est_ok.sum() / n),
        "epe_px": float(err[est_ok].mean()) if est_ok.any() else float("nan"),
        "bad_px": float(bad.sum() / n),
        "num_gt_px": n,
    }


def plain_sgbm_disparity(left: np.ndarray, right: np.ndarray, max_disparity_px: int = 96) -> np.ndarray:
    """The reference: bare ``cv2.StereoSGBM`` with fixed reference settings (block 5, P1=8*3*25, P2=32*3*25,
    uniqueness 10, speckle 100/2, disp12MaxDiff 1, 3-way), no padding/LR/fill; NaN where <= 0."""
    num_disp = int(np.ceil(max_disparity_px / 16.0) * 16)
    matcher = cv2.StereoSGBM_create(
        minDisparity=0, numDisparities=num_disp, blockSize=5, P1=8 * 3 * 25, P2=32 * 3 * 25,
        uniquenessRatio=10, speckleWindowSize=100, speckleRange=2, disp12MaxDiff=1,
        mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY,
    )
    raw = matcher.compute(left, right).astype(np.float32) / 16.0
    return np.where(raw > 0, raw, np.nan).astype(np.float32)
