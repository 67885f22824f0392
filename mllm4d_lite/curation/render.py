"""Rendering of a synthetic scene: analytic ray casting, shading, optics and sensor noise (numpy).

Both views are rendered by analytic ray casting: every pixel's ray is intersected with the
ground, the backdrop and each object's exact surface, so per-pixel depth and instance ids are
exact and the z-buffer is the minimum hit depth. Procedural textures (:mod:`.textures`), Lambert
shading with soft shadows and a specular highlight, a slight optical blur, vignetting and sensor
noise make stereo matching no easier than on real video.

Ray parameters are camera z-depths: a pixel (u, v) has the camera-frame ray
``((u - cx) / fx, (v - cy) / fy, 1)`` (pixel centres at integer coordinates), so the hit
distance ``t`` along it equals the z-depth stored in ``gt_depth_m``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from mllm4d_lite.curation.scene import CameraOptions, Scene

_INF = np.float32(np.inf)


def _pixel_rays(K: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame ray x and y components (H, W) float32; the z component is 1."""
    u = (np.arange(width, dtype=np.float32) - np.float32(K[0, 2])) / np.float32(K[0, 0])
    v = (np.arange(height, dtype=np.float32) - np.float32(K[1, 2])) / np.float32(K[1, 1])
    return np.broadcast_to(u[None, :], (height, width)).copy(), np.broadcast_to(v[:, None], (height, width)).copy()


# Ray-solid intersections in the object's local frame (u along the heading, y down, w; the solid
# stands on y = 0). Arguments: o = ray origin (3 floats), dx, dy, dz = ray directions (arrays of
# one shape, camera z-depth parameterised). Each returns t (hit depth, inf on a miss), the unit
# surface normal (nu, ny, nw) and surface coordinates in metres (s, q) for the texture look-up.


def _hit_box(o, dx, dy, dz, half):
    """Slab test against |u| <= half[0], -2 half[1] <= y <= 0, |w| <= half[2]."""
    lo = (-half[0], -2 * half[1], -half[2])
    hi = (half[0], 0.0, half[2])
    ds = (dx, dy, dz)
    tnear = np.full(dx.shape, -_INF, np.float32)
    tfar = np.full(dx.shape, _INF, np.float32)
    axis = np.zeros(dx.shape, np.int8)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(3):
            d = np.where(np.abs(ds[i]) < 1e-9, np.float32(1e-9), ds[i])
            t1 = (lo[i] - o[i]) / d
            t2 = (hi[i] - o[i]) / d
            tmin = np.minimum(t1, t2)
            tmax = np.maximum(t1, t2)
            upd = tmin > tnear
            axis[upd] = i
            tnear = np.where(upd, tmin, tnear)
            tfar = np.minimum(tfar, tmax)
    hit = (tnear <= tfar) & (tnear > 1e-3)
    t = np.where(hit, tnear, _INF)
    pu, py, pw = o[0] + t * dx, o[1] + t * dy, o[2] + t * dz
    zeros = np.zeros_like(dx)
    nu = np.where(axis == 0, -np.sign(dx), zeros)
    ny = np.where(axis == 1, -np.sign(dy), zeros)
    nw = np.where(axis == 2, -np.sign(dz), zeros)
    # texture coords: the two coordinates spanning the hit face
    s = np.where(axis == 0, pw, pu)
    q = np.where(axis == 1, pw, py)
    return t, (nu, ny, nw), (s + 7.0, q + 3.0)


def _hit_sphere(o, dx, dy, dz, r):
    """Sphere of radius r resting on the ground (centre at y = -r)."""
    ou, oy, ow = o[0], o[1] + r, o[2]
    a = dx * dx + dy * dy + dz * dz
    b = dx * ou + dy * oy + dz * ow
    c = ou * ou + oy * oy + ow * ow - r * r
    disc = b * b - a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / a
    t = np.where((disc >= 0) & (t > 1e-3), t, _INF)
    pu, py, pw = ou + t * dx, oy + t * dy, ow + t * dz
    nu, ny, nw = pu / r, py / r, pw / r
    s = np.arctan2(nw, nu) * r
    q = np.arccos(np.clip(-ny, -1, 1)) * r
    return t, (nu, ny, nw), (s, q)


def _hit_cylinder(o, dx, dy, dz, r, h):
    """Vertical cylinder of radius r and height h, with its top cap (the bottom is never seen)."""
    a = dx * dx + dz * dz
    b = dx * o[0] + dz * o[2]
    c = o[0] ** 2 + o[2] ** 2 - r * r
    disc = b * b - a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        ts = (-b - np.sqrt(disc)) / a
        ys = o[1] + ts * dy
        side_ok = (disc >= 0) & (ts > 1e-3) & (ys >= -h) & (ys <= 0)
        tc = (-h - o[1]) / np.where(np.abs(dy) < 1e-9, np.float32(1e-9), dy)
        cu, cw = o[0] + tc * dx, o[2] + tc * dz
        cap_ok = (tc > 1e-3) & (cu * cu + cw * cw <= r * r)
    ts = np.where(side_ok, ts, _INF)
    tc = np.where(cap_ok, tc, _INF)
    use_cap = tc < ts
    t = np.minimum(ts, tc)
    pu, py, pw = o[0] + t * dx, o[1] + t * dy, o[2] + t * dz
    nu = np.where(use_cap, 0.0, pu / r).astype(np.float32)
    ny = np.where(use_cap, -1.0, 0.0).astype(np.float32)
    nw = np.where(use_cap, 0.0, pw / r).astype(np.float32)
    s = np.where(use_cap, pu, np.arctan2(pw, pu) * r)
    q = np.where(use_cap, pw + 5.0, py)
    return t, (nu, ny, nw), (s, q)


def _hit_cone(o, dx, dy, dz, r, h):
    """Cone with base radius r on the ground (y = 0) and apex at y = -h (local)."""
    k2 = (r / h) ** 2
    oY = o[1] + h  # Y = y + h: 0 at the apex, h at the base
    a = dx * dx + dz * dz - k2 * dy * dy
    b = dx * o[0] + dz * o[2] - k2 * oY * dy
    c = o[0] ** 2 + o[2] ** 2 - k2 * oY * oY
    disc = b * b - a * c
    with np.errstate(invalid="ignore", divide="ignore"):
        sq = np.sqrt(disc)
        a_safe = np.where(np.abs(a) < 1e-9, np.float32(1e-9), a)
        best = np.full(dx.shape, _INF, np.float32)
        for t in ((-b - sq) / a_safe, (-b + sq) / a_safe):
            Y = oY + t * dy
            ok = (disc >= 0) & (t > 1e-3) & (Y >= 0) & (Y <= h)
            best = np.where(ok & (t < best), t, best)
    t = best
    pu, py, pw = o[0] + t * dx, o[1] + t * dy, o[2] + t * dz
    nu, ny, nw = pu, -k2 * (py + h), pw
    norm = np.sqrt(nu * nu + ny * ny + nw * nw) + np.float32(1e-9)
    s = np.arctan2(pw, pu) * r
    return t, (nu / norm, ny / norm, nw / norm), (s, py)


def render_view(scene: Scene, frame: int, view: str = "left",
                rays: tuple[np.ndarray, np.ndarray] | None = None,
                specular: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one view of one frame, noise-free (``specular``: highlight strength, grey levels).

    Returns rgb (H, W, 3) float32 in [0, 255] (before blur/noise), depth_m (H, W) float32
    (camera z-depth), ids (H, W) uint16 (0 = ground/backdrop, else object id).
    """
    H, W = scene.height, scene.width
    xs, ys = rays if rays is not None else _pixel_rays(scene.K, W, H)
    pose = scene.camera_pose(frame, view)
    R = pose[:3, :3].astype(np.float32)
    o = pose[:3, 3].astype(np.float32)
    # world ray directions (z-depth parameterised: camera-frame z component is 1)
    dx = R[0, 0] * xs + R[0, 1] * ys + R[0, 2]
    dy = R[1, 0] * xs + R[1, 1] * ys + R[1, 2]
    dz = R[2, 0] * xs + R[2, 1] * ys + R[2, 2]

    # backdrop: inside of a vertical cylinder of radius Rb around the world origin
    Rb = np.float32(scene.backdrop_radius_m)
    a = dx * dx + dz * dz
    b = dx * o[0] + dz * o[2]
    c = o[0] * o[0] + o[2] * o[2] - Rb * Rb  # < 0: the camera is inside
    t_bg = (-b + np.sqrt(b * b - a * c)) / a
    # ground plane y = ground_y
    with np.errstate(divide="ignore"):
        t_gr = np.where(dy > 1e-6, (np.float32(scene.ground_y_m) - o[1]) / dy, _INF)
    on_ground = t_gr < t_bg
    depth = np.minimum(t_gr, t_bg).astype(np.float32)

    # Texture look-ups run only on the rows where ground / backdrop are seen (for a level
    # camera: the lower / upper half), which halves the cost of the remaps.
    L = scene.light_dir.astype(np.float32)
    rgb = np.empty((H, W, 3), np.float32)
    gx = o[0] + depth * dx
    gz = o[2] + depth * dz
    rows = np.flatnonzero(on_ground.any(axis=1))
    if rows.size:
        g0, g1 = int(rows[0]), int(rows[-1]) + 1
        # ground texture with a 3-level mip choice by footprint (texels per pixel ~ depth^2/(f*h))
        Tg = scene.ground_tex[0].shape[0]
        mx = np.mod(gx[g0:g1] / np.float32(scene.ground_texel_m), Tg).astype(np.float32)
        my = np.mod(gz[g0:g1] / np.float32(scene.ground_texel_m), Tg).astype(np.float32)
        cam_h = np.float32(scene.ground_y_m - float(o[1]))
        dg = depth[g0:g1]
        footprint = dg * dg / (np.float32(scene.K[1, 1] * scene.ground_texel_m) * cam_h)
        level = (footprint > 2.0).astype(np.int8) + (footprint > 6.0)
        ground = np.empty((g1 - g0, W, 3), np.float32)
        for k in range(3):
            band = np.flatnonzero((level == k).any(axis=1))
            if band.size:
                a0, a1 = int(band[0]), int(band[-1]) + 1
                tex = cv2.remap(scene.ground_tex[k], mx[a0:a1], my[a0:a1], cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_WRAP)
                np.copyto(ground[a0:a1], tex, where=(level[a0:a1] == k)[..., None])
        ground *= np.float32(0.35 + 0.65 * max(0.0, -float(L[1])))
        np.copyto(rgb[g0:g1], ground, where=on_ground[g0:g1, :, None])
    rows = np.flatnonzero((~on_ground).any(axis=1))
    if rows.size:
        b0, b1 = int(rows[0]), int(rows[-1]) + 1
        # backdrop texture: arc length around the cylinder x height above the ground
        tb = t_bg[b0:b1]
        ang = np.arctan2(o[2] + tb * dz[b0:b1], o[0] + tb * dx[b0:b1])
        Hb, Wb = scene.backdrop_tex.shape[:2]
        bx_map = np.mod(ang * (Rb / np.float32(scene.backdrop_texel_m)), Wb).astype(np.float32)
        height_m = np.float32(scene.ground_y_m) - (o[1] + tb * dy[b0:b1])
        by_map = (np.float32(Hb) - height_m / np.float32(scene.backdrop_texel_m)).astype(np.float32)
        backdrop = cv2.remap(scene.backdrop_tex, bx_map, by_map, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        backdrop *= np.float32(0.9)
        np.copyto(rgb[b0:b1], backdrop, where=~on_ground[b0:b1, :, None])
    ids = np.zeros((H, W), np.uint16)
    K = scene.K
    Rinv = pose[:3, :3].T
    _soft_shadows(scene, frame, rgb, on_ground, gx, gz, pose)
    for obj in scene.objects:
        length, h, width = obj.dims_m
        bw = obj.base_world[frame]
        # screen-space bounding rect of the object's bounding sphere
        centre = bw - np.array([0.0, h / 2, 0.0])
        rad = 0.5 * math.sqrt(length ** 2 + h ** 2 + width ** 2) * 1.02 + 0.02
        pc = Rinv @ (centre - pose[:3, 3])
        if pc[2] + rad < 0.05:
            continue
        if pc[2] - rad < 0.05:
            u0, u1, v0, v1 = 0, W, 0, H
        else:
            corners = pc[None, :] + rad * np.array(
                [[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
            us = K[0, 0] * corners[:, 0] / corners[:, 2] + K[0, 2]
            vs = K[1, 1] * corners[:, 1] / corners[:, 2] + K[1, 2]
            u0, u1 = max(0, int(math.floor(us.min()))), min(W, int(math.ceil(us.max())) + 1)
            v0, v1 = max(0, int(math.floor(vs.min()))), min(H, int(math.ceil(vs.max())) + 1)
        if u0 >= u1 or v0 >= v1:
            continue
        sl = (slice(v0, v1), slice(u0, u1))
        yaw = float(obj.yaw_rad[frame])
        cy_, sy_ = np.float32(math.cos(yaw)), np.float32(math.sin(yaw))
        rel = (o - bw.astype(np.float32))
        o_l = (cy_ * rel[0] + sy_ * rel[2], rel[1], -sy_ * rel[0] + cy_ * rel[2])
        rdx, rdy, rdz = dx[sl], dy[sl], dz[sl]
        ld = (cy_ * rdx + sy_ * rdz, rdy, -sy_ * rdx + cy_ * rdz)
        with np.errstate(invalid="ignore", over="ignore"):  # misses carry t = inf
            if obj.shape == "cube":
                t, n, st = _hit_box(o_l, *ld, (length / 2, h / 2, width / 2))
            elif obj.shape == "sphere":
                t, n, st = _hit_sphere(o_l, *ld, length / 2)
            elif obj.shape == "cylinder":
                t, n, st = _hit_cylinder(o_l, *ld, length / 2, h)
            else:
                t, n, st = _hit_cone(o_l, *ld, length / 2, h)
        closer = t < depth[sl]
        if not closer.any():
            continue
        # local normal -> world, Lambert shading (only where the object is the nearest surface)
        n0, n1, n2 = n[0][closer], n[1][closer], n[2][closer]
        nx = cy_ * n0 - sy_ * n2
        nz = sy_ * n0 + cy_ * n2
        shade = np.float32(0.3) + np.float32(0.7) * np.maximum(nx * L[0] + n1 * L[1] + nz * L[2], 0)
        T = obj.texture.shape[0]
        iu = (np.floor(st[0][closer] / obj.texel_m).astype(np.int64)) % T
        iv = (np.floor(st[1][closer] / obj.texel_m).astype(np.int64)) % T
        colour = obj.texture[iv, iu] * shade[:, None]
        if specular > 0:
            # Blinn-Phong highlight: view-dependent, so the two views differ a little (as real
            # surfaces do); half vector between the light and the direction to the camera
            vx, vy, vz = -rdx[closer], -rdy[closer], -rdz[closer]
            vn = np.sqrt(vx * vx + vy * vy + vz * vz)
            hx, hy, hz = L[0] + vx / vn, L[1] + vy / vn, L[2] + vz / vn
            hn = np.sqrt(hx * hx + hy * hy + hz * hz) + np.float32(1e-6)
            ndoth = np.maximum((nx * hx + n1 * hy + nz * hz) / hn, 0)
            colour += (np.float32(specular) * ndoth ** 40)[:, None]
        rgb_sl = rgb[sl]
        rgb_sl[closer] = colour
        depth[sl] = np.where(closer, t, depth[sl])
        ids_sl = ids[sl]
        ids_sl[closer] = obj.id
    return rgb, depth, ids


def _ground_rect(K: np.ndarray, pose: np.ndarray, ground_y: float, cx: float, cz: float,
                 half: float, W: int, H: int) -> tuple[int, int, int, int]:
    """Pixel rect (u0, u1, v0, v1) covering a ground square of half-size ``half`` at (cx, cz)."""
    corners = np.array([[cx + sx * half, ground_y, cz + sz * half] for sx in (-1, 1) for sz in (-1, 1)])
    pc = (corners - pose[:3, 3]) @ pose[:3, :3]
    if np.any(pc[:, 2] < 0.1):
        return 0, W, 0, H
    us = K[0, 0] * pc[:, 0] / pc[:, 2] + K[0, 2]
    vs = K[1, 1] * pc[:, 1] / pc[:, 2] + K[1, 2]
    return (max(0, int(us.min()) - 1), min(W, int(us.max()) + 2),
            max(0, int(vs.min()) - 1), min(H, int(vs.max()) + 2))


def _soft_shadows(scene: Scene, frame: int, rgb: np.ndarray, on_ground: np.ndarray,
                  gx: np.ndarray, gz: np.ndarray, pose: np.ndarray) -> None:
    """Darken the ground under each object: a soft disc shifted away from the light (in place).

    The shadow lies on the ground texture, so both views see it at the same 3D place.
    """
    L = scene.light_dir
    for obj in scene.objects:
        length, h, width = obj.dims_m
        bw = obj.base_world[frame]
        # where the light ray through the object's mid-height point meets the ground
        off = 0.5 * h / -L[1]
        sx, sz = bw[0] - L[0] * off, bw[2] - L[2] * off
        radius = 0.5 * math.hypot(length, width) * 0.85
        soft = 0.25 * radius + 0.1
        u0, u1, v0, v1 = _ground_rect(scene.K, pose, scene.ground_y_m, sx, sz, radius + soft, scene.width, scene.height)
        if u0 >= u1 or v0 >= v1:
            continue
        sl = (slice(v0, v1), slice(u0, u1))
        dist = np.sqrt((gx[sl] - np.float32(sx)) ** 2 + (gz[sl] - np.float32(sz)) ** 2)
        dark = np.clip((radius + soft - dist) / (2 * soft), 0, 1) * on_ground[sl]
        rgb[sl] *= (1.0 - np.float32(0.45) * dark)[..., None]


def _vignette(width: int, height: int, strength: float) -> np.ndarray:
    """(H, W, 1) float32 lens fall-off: 1 at the centre, 1 - strength in the corners."""
    u = (np.arange(width, dtype=np.float32) - (width - 1) / 2) / (width / 2)
    v = (np.arange(height, dtype=np.float32) - (height - 1) / 2) / (width / 2)
    r2 = u[None, :] ** 2 + v[:, None] ** 2
    return (1.0 - np.float32(strength) * r2 / r2.max())[..., None].astype(np.float32)


def _finish(rgb: np.ndarray, rng: np.random.Generator, blur_sigma: float, noise_std: float,
            gain: float = 1.0, vignette: np.ndarray | None = None) -> np.ndarray:
    """Optics and sensor: blur, vignetting x exposure gain, Gaussian noise, quantise to uint8."""
    if blur_sigma > 0:
        rgb = cv2.GaussianBlur(rgb, (0, 0), blur_sigma)
    if vignette is not None:
        rgb = rgb * (vignette * np.float32(gain))
    elif gain != 1.0:
        rgb = rgb * np.float32(gain)
    if noise_std > 0:
        rgb = rgb + rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(noise_std)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def render_scene(scene: Scene, opts: CameraOptions, seed: int,
                 progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Render all frames: left, right (N,H,W,3) uint8, depth_m (N,H,W) float32, ids (N,H,W) uint16.

    ``opts``: the camera's imaging settings (a :class:`SceneOptions` is one); the sensor noise
    is drawn from ``numpy.random.default_rng([seed, 1])``."""
    N, H, W = scene.num_frames, scene.height, scene.width
    rays = _pixel_rays(scene.K, W, H)
    noise_rng = np.random.default_rng([seed, 1])
    left = np.zeros((N, H, W, 3), np.uint8)
    right = np.zeros((N, H, W, 3), np.uint8)
    depth = np.zeros((N, H, W), np.float32)
    ids = np.zeros((N, H, W), np.uint16)
    gain_r = 1.0 + float(noise_rng.uniform(-opts.gain_jitter, opts.gain_jitter))
    frames = range(N)
    if progress:
        from tqdm import tqdm

        frames = tqdm(frames, desc="render", leave=False)
    vignette = _vignette(W, H, opts.vignette) if opts.vignette > 0 else None
    for i in frames:
        rgb_l, depth[i], ids[i] = render_view(scene, i, "left", rays, opts.specular)
        rgb_r, _, _ = render_view(scene, i, "right", rays, opts.specular)
        left[i] = _finish(rgb_l, noise_rng, opts.blur_sigma, opts.noise_std, 1.0, vignette)
        right[i] = _finish(rgb_r, noise_rng, opts.blur_sigma, opts.noise_std, gain_r, vignette)
    return left, right, depth, ids
