"""Procedural textures of the synthetic scenes: objects, paved ground, a backdrop of buildings.

Checker patterns and multi-scale value noise (numpy + OpenCV resizes), drawn from the scene's
random generator; the draw order is part of a scene's seed, so keep it when editing.
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np


def _smooth_noise(rng: np.random.Generator, size: int, octaves: Sequence[int]) -> np.ndarray:
    """(size, size) float32 multi-octave value noise in ~[-1, 1], tileable (wrap-around)."""
    out = np.zeros((size, size), np.float32)
    total = 0.0
    for i, cells in enumerate(octaves):
        coarse = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
        # tile 3x3 then crop the middle so the resize wraps seamlessly
        big = cv2.resize(np.tile(coarse, (3, 3)), (3 * size, 3 * size), interpolation=cv2.INTER_CUBIC)
        amp = 0.6 ** i
        out += amp * big[size:2 * size, size:2 * size]
        total += amp
    return out / total


def object_texture(rng: np.random.Generator, rgb: tuple[int, int, int], size: int = 64) -> np.ndarray:
    """Checker (8-texel squares) times noise, tinted with the object's base colour."""
    yy, xx = np.mgrid[0:size, 0:size]
    checker = ((yy // 8 + xx // 8) % 2).astype(np.float32)
    noise = _smooth_noise(rng, size, (8, 16, 32))
    light = 0.62 + 0.38 * checker + 0.18 * noise  # keeps the hue, varies the brightness
    tex = np.asarray(rgb, np.float32)[None, None, :] * light[..., None]
    # a few bright/dark speckles: corners for feature trackers
    speck = rng.uniform(0, 1, (size, size)) < 0.04
    tex[speck] *= rng.choice([0.5, 1.4], size=(int(speck.sum()), 1)).astype(np.float32)
    return np.clip(tex, 0, 255).astype(np.float32)


def ground_textures(rng: np.random.Generator, size: int = 256) -> list[np.ndarray]:
    """Paved ground: tiles with seams + noise, in muted grey-brown; 3 pre-blurred mip levels."""
    # moderate, mostly coarse texture (paving, not gravel): with the default noise and blur,
    # stereo matching on it is about as hard as on a real stereo pair (docs/results.md)
    noise = _smooth_noise(rng, size, (4, 8, 16, 32))
    yy, xx = np.mgrid[0:size, 0:size]
    tile = 32  # texels per tile
    seam = ((yy % tile) < 2) | ((xx % tile) < 2)
    tile_shade = rng.uniform(-0.15, 0.15, (size // tile, size // tile)).astype(np.float32)
    tile_shade = np.kron(tile_shade, np.ones((tile, tile), np.float32))
    # grey-brown (never green/blue/red-looking): a grey level plus a fixed warm tint
    base = np.float32(rng.uniform(105, 145)) * np.asarray([1.0, 0.93, 0.82], np.float32)
    light = 1.0 + 0.2 * noise + tile_shade - 0.2 * seam
    tex = np.clip(base[None, None, :] * light[..., None], 0, 255).astype(np.float32)
    return [tex, _blur_wrap(tex, 1.2), _blur_wrap(tex, 3.0)]


def _blur_wrap(tex: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a tileable texture (wrap-around borders)."""
    pad = int(math.ceil(4 * sigma))
    big = np.pad(tex, ((pad, pad), (pad, pad), (0, 0)), mode="wrap")
    return cv2.GaussianBlur(big, (0, 0), sigma)[pad:-pad, pad:-pad].copy()


def backdrop_texture(rng: np.random.Generator, width: int = 1024, height: int = 256) -> np.ndarray:
    """Backdrop: blocks of different shades ("buildings") with windows or plain, + noise."""
    tex = np.zeros((height, width, 3), np.float32)
    x = 0
    while x < width:
        w = int(rng.integers(24, 96))
        top = int(rng.integers(0, height // 2))
        # muted colours (grey + a small tint) so the objects' colour names stay unambiguous
        colour = (rng.uniform(70, 190) + rng.uniform(-18, 18, 3)).astype(np.float32)
        sky = np.asarray([150, 175, 205], np.float32) + rng.uniform(-15, 15, 3).astype(np.float32)
        tex[:top, x:x + w] = sky
        tex[top:, x:x + w] = colour
        # windows / panels on most blocks; about a third are plain walls, weakly textured
        # surfaces where stereo matching is ambiguous, as on real facades
        plain = rng.uniform() < 0.35
        for wy in range(top + 6, height - 8, 14) if not plain else ():
            for wx in range(x + 4, min(x + w, width) - 6, 12):
                if rng.uniform() < 0.7:
                    tex[wy:wy + 7, wx:wx + 6] = colour * rng.uniform(0.45, 0.8)
        x += w
    noise = cv2.resize(_smooth_noise(rng, height, (8, 32, 64)), (width, height))
    tex *= (1.0 + 0.25 * noise)[..., None]
    return np.clip(tex, 0, 255).astype(np.float32)
