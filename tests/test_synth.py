"""Synthetic clips: geometry checked against the exact ground truth, determinism, CLI errors."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from mllm4d_lite.curation import synth
from mllm4d_lite.curation.clip import load_clip
from mllm4d_lite.curation.render import render_view
from mllm4d_lite.curation.scene import CameraOptions, SceneOptions, build_scene
from mllm4d_lite.curation.synth import generate_clip

W, H, N = 160, 120, 6  # small clips keep the suite fast
SEEDS = list(range(8))


@pytest.fixture(scope="module")
def clips():
    return {s: generate_clip(s, N, W, H, fps=8.0, num_objects=4 if s % 2 else None) for s in SEEDS}


def _project(K, cam_to_world, p_world):
    p = cam_to_world[:3, :3].T @ (np.asarray(p_world) - cam_to_world[:3, 3])
    return K[0, 0] * p[0] / p[2] + K[0, 2], K[1, 1] * p[1] / p[2] + K[1, 2], p[2]


def test_clip_contents(clips):
    for seed, clip in clips.items():
        assert clip.left.shape == clip.right.shape == (N, H, W, 3) and clip.left.dtype == np.uint8
        assert clip.masks.shape == (N, H, W) and clip.masks.dtype == np.uint16
        assert clip.gt_depth_m.shape == (N, H, W) and clip.gt_depth_m.dtype == np.float32
        assert np.all(np.isfinite(clip.gt_depth_m)) and clip.gt_depth_m.min() > 0.3
        assert clip.source == "synthetic" and clip.meta["seed"] == seed and clip.license
        objs = clip.gt["objects"]
        assert 1 <= len(objs) <= 4
        assert len({o["label"] for o in objs}) == len(objs)          # names a question can use
        assert len({o["shape"] for o in objs}) == len(objs)
        assert len({o["color"] for o in objs}) == len(objs)
        assert set(clip.labels) == {o["id"] for o in objs}
        for o in objs:
            assert o["label"] == f"{o['color']} {o['shape']}"
            assert np.asarray(o["centers_world"]).shape == (N, 3)
            assert len(o["yaw_rad"]) == len(o["visible"]) == N
            counts = [(clip.masks[i] == o["id"]).sum() for i in range(N)]
            assert o["visible"] == [c >= 20 for c in counts]


def test_camera_poses_are_rigid(clips):
    for clip in clips.values():
        poses = np.asarray(clip.gt["camera_to_world"])
        assert poses.shape == (N, 4, 4)
        np.testing.assert_allclose(poses[0], np.eye(4), atol=1e-9)  # world = left camera at frame 0
        for T in poses:
            R = T[:3, :3]
            np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-6)
            assert abs(np.linalg.det(R) - 1) < 1e-6
            np.testing.assert_allclose(T[3], [0, 0, 0, 1])


def test_centres_project_into_masks(clips):
    """Each visible object's true centroid projects on (or within 2 px of) its mask, unless
    another object covers that spot; the depth map there lies in front of the centroid."""
    checked = skipped = 0
    for clip in clips.values():
        poses = np.asarray(clip.gt["camera_to_world"])
        for o in clip.gt["objects"]:
            size = max(o["dims_m"])
            for i in range(N):
                if not o["visible"][i]:
                    continue
                u, v, z = _project(clip.K, poses[i], o["centers_world"][i])
                ui, vi = int(round(u)), int(round(v))
                if not (0 <= ui < W and 0 <= vi < H):
                    skipped += 1  # centre outside the image: object cut by the border
                    continue
                owner = clip.masks[i, vi, ui]
                if owner not in (0, o["id"]):
                    skipped += 1  # occluded at the centre by a nearer object
                    continue
                mask = (clip.masks[i] == o["id"]).astype(np.uint8)
                dist = cv2.distanceTransform(1 - mask, cv2.DIST_L2, 5)[vi, ui]
                assert dist <= 2.0, (clip.clip_id, o["label"], i, dist)
                if owner == o["id"]:
                    d = clip.gt_depth_m[i, vi, ui]
                    assert z - size <= d <= z + 1e-3, (clip.clip_id, o["label"], i, d, z)
                checked += 1
    assert checked > 0.8 * (checked + skipped) and checked > 50


def test_mask_points_lie_on_the_true_solid(clips):
    """Back-project every masked pixel with the true depth and pose, move it into the object's
    frame with the true centre and yaw: it must lie on the object's solid (this fixes the yaw
    convention: a box turned the wrong way would stick out of its footprint)."""
    tested = 0
    for clip in clips.values():
        poses = np.asarray(clip.gt["camera_to_world"])
        Kinv = np.linalg.inv(clip.K)
        ground_y = clip.gt["ground_y_m"]
        for o in clip.gt["objects"]:
            length, height, width = o["dims_m"]
            for i in range(0, N, 2):
                vs, us = np.nonzero(clip.masks[i] == o["id"])
                if len(us) < 20:
                    continue
                rays = Kinv @ np.stack([us, vs, np.ones_like(us)]).astype(float)
                pts_cam = rays * clip.gt_depth_m[i, vs, us]
                pts = poses[i][:3, :3] @ pts_cam + poses[i][:3, 3:4]
                base = np.asarray(o["centers_world"][i])
                yaw = o["yaw_rad"][i]
                rel = pts - np.array([base[0], ground_y, base[2]])[:, None]
                lu = math.cos(yaw) * rel[0] + math.sin(yaw) * rel[2]
                lw = -math.sin(yaw) * rel[0] + math.cos(yaw) * rel[2]
                ly = rel[1]
                tol = 0.02
                assert ly.max() <= tol and ly.min() >= -height - tol
                if o["shape"] == "cube":
                    assert np.abs(lu).max() <= length / 2 + tol and np.abs(lw).max() <= width / 2 + tol
                    # points touch the faces: the max extent is attained on some face
                    assert max(np.abs(lu).max() - length / 2, np.abs(lw).max() - width / 2, -ly.min() - height) > -tol
                elif o["shape"] == "sphere":
                    r = length / 2
                    dist = np.sqrt(lu ** 2 + (ly + r) ** 2 + lw ** 2)
                    assert np.abs(dist - r).max() <= tol
                else:
                    rad = np.hypot(lu, lw)
                    allowed = length / 2 if o["shape"] == "cylinder" else (length / 2) * (ly + height) / height
                    assert (rad - allowed).max() <= tol
                tested += 1
    assert tested > 20


def test_objects_are_textured_for_feature_tracking():
    """Curation tracks corners on objects: every sizeable object mask holds Shi-Tomasi corners."""
    checked = 0
    for seed in (1, 3, 5):
        clip = generate_clip(seed, 2, 320, 240, num_objects=4)
        grey = cv2.cvtColor(clip.left[0], cv2.COLOR_RGB2GRAY)
        for oid in clip.labels:
            mask = (clip.masks[0] == oid).astype(np.uint8)
            if mask.sum() < 400:
                continue
            inner = cv2.erode(mask, np.ones((5, 5), np.uint8))
            corners = cv2.goodFeaturesToTrack(grey, 200, 0.01, 3, mask=inner)
            n = 0 if corners is None else len(corners)
            assert n >= 5, (seed, clip.labels[oid], int(mask.sum()), n)
            checked += 1
    assert checked >= 4


def test_yaw_convention_matches_motion():
    """An object driving along an arc moves along its heading (cos yaw, sin yaw) in x-z."""
    found = 0
    for seed in range(40):
        scene = build_scene(seed, 16, 320, 240, 8.0, SceneOptions())
        for obj in scene.objects:
            if obj.motion.startswith("arc"):
                step = np.diff(obj.base_world[:, [0, 2]], axis=0)
                mid = 0.5 * (obj.yaw_rad[1:] + obj.yaw_rad[:-1])
                heading = np.stack([np.cos(mid), np.sin(mid)], 1)
                cos = (step * heading).sum(1) / np.linalg.norm(step, axis=1)
                assert cos.min() > 0.999
                turned_left = obj.yaw_rad[-1] > obj.yaw_rad[0]
                assert obj.motion == ("arc_left" if turned_left else "arc_right")
                found += 1
    assert found >= 3


def test_motion_magnitudes_and_ground_contact():
    counts_moving = set()
    for seed in range(40):
        scene = build_scene(seed, 16, 320, 240, 8.0, SceneOptions())
        cam = scene.cam_to_world[:, :3, 3]
        travel = np.linalg.norm(cam[-1] - cam[0])
        assert travel == 0 or travel >= 0.5
        pan = abs(scene.cam_yaw_rad[-1] - scene.cam_yaw_rad[0])
        assert pan == 0 or pan >= math.radians(15)
        if scene.camera_motion == "static":
            assert travel == 0 and pan == 0
        moving = 0
        for obj in scene.objects:
            c = obj.centers_world()
            np.testing.assert_allclose(c[:, 1] + obj.centroid_height_m, scene.ground_y_m)  # on the ground
            disp = np.linalg.norm(c[-1] - c[0])
            turn = abs(obj.yaw_rad[-1] - obj.yaw_rad[0])
            if obj.motion == "static":
                assert np.all(c == c[0]) and np.all(obj.yaw_rad == obj.yaw_rad[0])
            else:
                moving += 1
                assert disp >= 0.5 or turn >= math.radians(15), (seed, obj.motion, disp, turn)
            dist = np.linalg.norm(c[:, [0, 2]] - cam[:, [0, 2]], axis=1)
            assert dist.min() >= 1.5 and dist.max() <= 9.5
        counts_moving.add(moving)
    assert len(counts_moving) >= 3  # counting questions get varied answers


def test_depth_and_travel_ranges():
    """The near/far and path-length knobs (larger objects and motions in pixels for the learning
    benchmark) hold for every object; the defaults keep the original draws (tiny_data test below)."""
    opts = SceneOptions(hfov_deg=40.0, num_objects=1, num_moving=1, camera_motion="static", camera_height_m=0.5,
                        depth_range_m=(2.5, 3.5), travel_range_m=(1.2, 1.8))
    translated = 0
    for seed in range(12):
        scene = build_scene(seed, 16, 160, 120, 8.0, opts)
        (obj,) = scene.objects
        c = obj.centers_world()  # static camera at the origin looking along +z
        assert 2.5 <= c[0, 2] <= 3.5, (seed, c[0])
        if obj.motion.startswith("translate"):
            translated += 1
            assert 1.2 - 1e-9 <= np.linalg.norm(c[-1, [0, 2]] - c[0, [0, 2]]) <= 1.8 + 1e-9
    assert translated >= 2
    for bad in ({"depth_range_m": (3.0, 2.0)}, {"travel_range_m": (0.0, 1.0)}):
        with pytest.raises(ValueError, match="0 < min <= max"):
            generate_clip(0, 4, 96, 64, **bad)
    # lateral translations only: every mover slides left or right (x changes, depth does not)
    lateral = dataclasses.replace(opts, object_motions=("translate",), directions=("left", "right"))
    seen = set()
    for seed in range(8):
        (obj,) = build_scene(seed, 16, 160, 120, 8.0, lateral).objects
        assert obj.motion in ("translate_left", "translate_right")
        c = obj.centers_world()
        assert abs(c[-1, 2] - c[0, 2]) < 1e-9 and np.sign(c[-1, 0] - c[0, 0]) == (1 if obj.motion.endswith("right") else -1)
        seen.add(obj.motion)
    assert len(seen) == 2
    with pytest.raises(ValueError, match="lower camera_height_m"):  # near objects below a narrow view
        build_scene(40126, 16, 160, 120, 8.0, dataclasses.replace(opts, camera_height_m=None, num_moving=None))
    with pytest.raises(ValueError, match="object_motions"):
        generate_clip(0, 4, 96, 64, object_motions=("fly",))
    with pytest.raises(ValueError, match="directions"):
        generate_clip(0, 4, 96, 64, directions=())


def _bilinear(img, x, y):
    return cv2.remap(img, x.astype(np.float32), y.astype(np.float32), cv2.INTER_LINEAR)


def _stereo_errors(left, right, depth, right_depth, K, baseline_m, extra_shift_px=0.0):
    """Colour error (grey levels) between left pixels and the right view at x - fx*B/Z."""
    grey = cv2.cvtColor(left, cv2.COLOR_RGB2GRAY).astype(np.float32)
    grad = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    vs, us = np.mgrid[0:left.shape[0], 0:left.shape[1]].astype(np.float32)
    disp = K[0, 0] * baseline_m / depth
    xr = us - disp - extra_shift_px
    warped = _bilinear(right.astype(np.float32), xr, vs)
    depth_r = _bilinear(right_depth, xr, vs)
    # textured, visible in the right view (same surface: depth agrees), away from the border
    ok = (grad > 20) & (xr > 2) & (xr < left.shape[1] - 3) & (np.abs(depth_r - depth) < 0.02 * depth)
    err = np.abs(warped - left.astype(np.float32)).mean(-1)
    return err[ok]


@pytest.mark.parametrize("noise", [False, True])
def test_right_view_matches_left_at_true_disparity(noise):
    """For textured pixels, right(x - fx*B/Z, y) has the left view's colour; a 2-px wrong
    disparity does not (so the check has power)."""
    # noise=False: an ideal camera (no noise, exposure mismatch, vignetting or highlights);
    # noise=True: the defaults every clip is made with
    opts = dict(num_objects=4) if noise else dict(num_objects=4, noise_std=0.0, gain_jitter=0.0, vignette=0.0,
                                                  specular=0.0)
    for seed in (1, 2):
        clip = generate_clip(seed, 3, 320, 240, **opts)
        scene = build_scene(seed, 3, 320, 240, 8.0, SceneOptions(**opts))
        for i in range(3):
            _, right_depth, _ = render_view(scene, i, "right")
            err = _stereo_errors(clip.left[i], clip.right[i], clip.gt_depth_m[i], right_depth,
                                 clip.K, clip.baseline_m)
            wrong = _stereo_errors(clip.left[i], clip.right[i], clip.gt_depth_m[i], right_depth,
                                   clip.K, clip.baseline_m, extra_shift_px=2.0)
            assert err.size > 3000
            # ideal camera: only interpolation error remains; with noise (std 3 per view), a
            # +-2 % exposure mismatch, vignetting and highlights the floor is ~3.5 grey levels
            limit = 4.0 if noise else 1.0
            assert np.median(err) < limit and err.mean() < limit + 0.5, (seed, i, np.median(err), err.mean())
            assert wrong.mean() > (2.0 if noise else 4.0) * err.mean(), (wrong.mean(), err.mean())


def test_depth_agrees_with_camera_motion(clips):
    """Static background points of frame 0, moved with the true poses into frame k, land where
    frame k's depth map has the same depth."""
    for clip in clips.values():
        poses = np.asarray(clip.gt["camera_to_world"])
        Kinv = np.linalg.inv(clip.K)
        vs, us = np.nonzero(clip.masks[0] == 0)
        pts = Kinv @ np.stack([us, vs, np.ones_like(us)]).astype(float) * clip.gt_depth_m[0, vs, us]
        k = N - 1
        T = np.linalg.inv(poses[k]) @ poses[0]
        pk = T[:3, :3] @ pts + T[:3, 3:4]
        uk = clip.K[0, 0] * pk[0] / pk[2] + clip.K[0, 2]
        vk = clip.K[1, 1] * pk[1] / pk[2] + clip.K[1, 2]
        inside = (pk[2] > 0.5) & (uk > 1) & (uk < W - 2) & (vk > 1) & (vk < H - 2)
        ui, vi = np.round(uk[inside]).astype(int), np.round(vk[inside]).astype(int)
        bg = clip.masks[k, vi, ui] == 0
        sampled = _bilinear(clip.gt_depth_m[k], uk[inside][bg], vk[inside][bg]).ravel()
        rel = np.abs(sampled - pk[2][inside][bg]) / pk[2][inside][bg]
        assert rel.size > 0.3 * len(us)
        assert np.median(rel) < 0.005, (clip.clip_id, np.median(rel))


def test_determinism(tmp_path):
    a = generate_clip(11, 4, 96, 64)
    b = generate_clip(11, 4, 96, 64)
    c = generate_clip(12, 4, 96, 64)
    assert np.array_equal(a.left, b.left) and np.array_equal(a.right, b.right)
    assert np.array_equal(a.gt_depth_m, b.gt_depth_m) and np.array_equal(a.masks, b.masks)
    assert json.dumps(a.gt) == json.dumps(b.gt)
    assert not np.array_equal(a.left, c.left)
    pa = synth.save_clip(a, tmp_path / "a")
    pb = synth.save_clip(b, tmp_path / "b")
    la, lb = load_clip(pa), load_clip(pb)
    assert np.array_equal(la.left, lb.left) and np.array_equal(la.right, lb.right)
    assert (pa / "gt.json").read_bytes() == (pb / "gt.json").read_bytes()
    for name in ("left.mp4", "right.mp4", "masks.npz", "gt_depth.npz"):  # byte-identical files
        assert (pa / name).read_bytes() == (pb / name).read_bytes(), name


def test_bad_generate_arguments():
    with pytest.raises(ValueError, match="num_frames"):
        generate_clip(0, 0, 96, 64)
    with pytest.raises(ValueError, match="baseline_m"):
        generate_clip(0, 4, 96, 64, baseline_m=-0.1)
    with pytest.raises(ValueError, match="even"):
        generate_clip(0, 4, 95, 64)
    with pytest.raises(ValueError, match="unknown synth option"):
        generate_clip(0, 4, 96, 64, baselin_m=0.3)


def test_cli_writes_loadable_clips_and_plot(tmp_path, capsys):
    out = tmp_path / "clips"
    rc = synth.main(["--out", str(out), "--num-clips", "2", "--seed", "7", "--frames", "4",
                     "--size", "96x64", "--plot"])
    assert rc == 0
    assert "wrote 2 clips" in capsys.readouterr().out
    dirs = sorted(p for p in out.iterdir() if p.is_dir())
    assert [p.name for p in dirs] == ["synth_s00007", "synth_s00008"]
    for d in dirs:
        assert {"clip.json", "left.mp4", "right.mp4", "masks.npz", "gt.json", "gt_depth.npz",
                "trajectory.png"} <= {p.name for p in d.iterdir()}
        clip = load_clip(d)
        assert clip.num_frames == 4 and clip.width == 96 and clip.gt_depth_m.dtype == np.float32
        ref = generate_clip(clip.meta["seed"], 4, 96, 64)  # the recorded seed reproduces it
        assert json.dumps(ref.gt) == (d / "gt.json").read_text()
        assert np.abs(clip.gt_depth_m - ref.gt_depth_m).max() <= 0.00051
        assert np.array_equal(clip.masks, ref.masks)


@pytest.mark.parametrize("args, message", [
    (["--frames", "0"], "frames"),
    (["--frames", "1"], "`frames` must be >= 2"),
    (["--baseline-m", "-0.2"], "baseline_m"),
    (["--size", "97x64"], "even"),
    (["--directions", "up"], "directions"),
    (["--camera-motion", "sideways"], "camera_motion"),
    (["--depth-range", "3"], "depth_range"),
    (["--clip-prefix", "a/b"], "clip_prefix"),
])
def test_cli_bad_arguments(tmp_path, capsys, args, message):
    out = tmp_path / "clips"
    with pytest.raises(SystemExit) as exc:
        synth.main(["--out", str(out), "--num-clips", "1"] + args)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_synth_config_is_composed_of_the_scene_options():
    """`mllm4d synth`'s camera flags are CameraOptions' fields (shared with SceneOptions, one
    definition each), and its scene choices map onto SceneOptions."""
    fields = {f.name: f for f in dataclasses.fields(synth.SynthConfig)}
    for f in dataclasses.fields(CameraOptions):
        assert (fields[f.name].default, fields[f.name].metadata) == (f.default, f.metadata)
    assert synth.SynthConfig().scene_options() == {**dataclasses.asdict(CameraOptions()),
                                                   "depth_range_m": SceneOptions.depth_range_m,
                                                   "travel_range_m": SceneOptions.travel_range_m}
    cfg = synth.SynthConfig(camera_motion="static", num_objects=2, depth_range="3,4", directions="left, right",
                            hfov_deg=40.0)
    assert SceneOptions(**cfg.scene_options()) == SceneOptions(
        hfov_deg=40.0, camera_motion="static", num_objects=2, depth_range_m=(3.0, 4.0), directions=("left", "right"))


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        synth.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--out", "--num-clips", "--seed", "--frames", "--size", "--fps", "--baseline-m", "--plot"):
        assert flag in out


def test_cli_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    rc = synth.main(["--out", str(blocker / "clips"), "--num-clips", "1", "--frames", "2", "--size", "32x32"])
    assert rc == 2
    assert "not writable" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder"


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    import mllm4d_lite.curation.video as video

    clip = generate_clip(3, 2, 32, 32)
    real = video.write_video

    def failing(path, frames, fps, crf=18):
        if Path(path).name == "right.mp4":
            raise OSError("disk full")
        return real(path, frames, fps, crf)

    monkeypatch.setattr(video, "write_video", failing)
    with pytest.raises(OSError, match="disk full"):
        synth.save_clip(clip, tmp_path)
    assert list(tmp_path.iterdir()) == []


TINY = Path(__file__).resolve().parent.parent / "tiny_data"


def test_tiny_data_is_complete_and_reproducible():
    clips = sorted(p for p in TINY.glob("synth_s*") if p.is_dir())
    assert len(clips) >= 24
    total = sum(p.stat().st_size for p in TINY.rglob("*") if p.is_file())
    assert total < 22e6, f"tiny_data is {total / 1e6:.1f} MB"
    readme = (TINY / "README.md").read_text()
    assert "mllm4d synth --out tiny_data --num-clips 32 --seed 0 --frames 16 --size 320x240 --fps 8" in readme
    assert "CC0" in readme
    for p in clips:
        assert p.name in readme
        clip = load_clip(p, load_depth=False)
        assert clip.source == "synthetic" and clip.num_frames >= 16 and (clip.width, clip.height) == (320, 240)
    # the recorded seed and options rebuild the stored ground truth exactly
    p = clips[3]
    meta = json.loads((p / "clip.json").read_text())
    g = meta["generator"]
    option_names = {f.name for f in dataclasses.fields(SceneOptions)}
    ref = generate_clip(meta["seed"], g["num_frames"], g["width"], g["height"], g["fps"],
                        **{k: v for k, v in g.items() if k in option_names})
    assert json.dumps(ref.gt) == (p / "gt.json").read_text()
    stored = load_clip(p)
    assert np.abs(stored.gt_depth_m - ref.gt_depth_m).max() <= 0.00051
    assert np.abs(stored.left.astype(int) - ref.left).mean() < 4  # H.264 crf 20


def test_tiny_data_lateral_is_complete_and_reproducible(tmp_path):
    """The demo's clips: 96 scenes of one object sliding left / right or standing still before a
    static camera, rebuilt exactly from the command in the README."""
    lateral = TINY / "lateral"
    clips = sorted(p for p in lateral.glob("lateral_s*") if p.is_dir())
    assert [p.name for p in clips] == [f"lateral_s{seed:05d}" for seed in range(1000, 1096)]
    readme = (TINY / "README.md").read_text()
    cmd = ("mllm4d synth --out tiny_data/lateral --num-clips 96 --seed 1000 --frames 16 --size 160x120 --fps 8 "
           "--hfov-deg 40 --camera-motion static --num-objects 1 --camera-height-m 0.5 --depth-range 2.5,3.5 "
           "--travel-range 1.2,1.8 --object-motions translate --directions left,right --clip-prefix lateral")
    assert cmd in readme
    motions = set()
    for p in clips:
        gt = json.loads((p / "gt.json").read_text())
        assert gt["camera_motion"] == "static" and len(gt["objects"]) == 1
        motions.add(gt["objects"][0]["motion"])
    assert motions == {"static", "translate_left", "translate_right"}
    # the command line, run again, writes the same clips
    out = tmp_path / "lateral"
    argv = cmd.split()[2:]
    argv[argv.index("tiny_data/lateral")] = str(out)
    argv[argv.index("96")] = "2"
    assert synth.main(argv) == 0
    for p in clips[:2]:
        assert (out / p.name / "gt.json").read_text() == (p / "gt.json").read_text()
        stored, again = load_clip(p), load_clip(out / p.name)
        assert (stored.width, stored.height, stored.num_frames) == (160, 120, 16)
        assert np.array_equal(stored.masks, again.masks)
        assert np.abs(stored.left.astype(int) - again.left).mean() < 1.0


def test_tiny_data_videos_carry_the_true_stereo_geometry():
    """On decoded tiny_data video (H.264), the right view at x - fx*B/Z still matches the left."""
    clip = load_clip(TINY / "synth_s00001")
    g = clip.meta["generator"]
    option_names = {f.name for f in dataclasses.fields(SceneOptions)}
    scene = build_scene(clip.meta["seed"], clip.num_frames, clip.width, clip.height, clip.fps,
                        SceneOptions(**{k: v for k, v in g.items() if k in option_names}))
    for i in (0, clip.num_frames - 1):
        _, right_depth, _ = render_view(scene, i, "right")
        err = _stereo_errors(clip.left[i], clip.right[i], clip.gt_depth_m[i], right_depth, clip.K, clip.baseline_m)
        swapped = _stereo_errors(clip.right[i], clip.left[i], clip.gt_depth_m[i], right_depth, clip.K, clip.baseline_m)
        assert err.size > 3000 and np.median(err) < 4.5 and err.mean() < 5.0, (np.median(err), err.mean())
        assert swapped.mean() > 2 * err.mean()


def test_tiny_data_video_readable_by_decord_pyav_opencv():
    import av
    import decord

    path = TINY / "synth_s00000" / "left.mp4"
    assert len(decord.VideoReader(str(path))) == 16
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 16
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 16


def test_cli_scene_options(tmp_path, capsys):
    """--camera-motion / --num-objects / --object-motions / --directions / ranges reach the scene,
    --clip-prefix names the folders, and the recorded generator options rebuild each clip."""
    out = tmp_path / "clips"
    rc = synth.main(["--out", str(out), "--num-clips", "3", "--seed", "11", "--frames", "4", "--size", "64x48",
                     "--camera-motion", "static", "--num-objects", "1", "--object-motions", "translate",
                     "--directions", "left,right", "--depth-range", "2.5,3.5", "--travel-range", "1.2,1.8",
                     "--camera-height-m", "0.5", "--hfov-deg", "40", "--clip-prefix", "lateral"])
    assert rc == 0, capsys.readouterr().err
    dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert dirs == ["lateral_s00011", "lateral_s00012", "lateral_s00013"]
    assert (out / "synth_config_lateral.yaml").is_file() and not (out / "synth_config.yaml").exists()
    option_names = {f.name for f in dataclasses.fields(SceneOptions)}
    for name in dirs:
        meta = json.loads((out / name / "clip.json").read_text())
        gt = json.loads((out / name / "gt.json").read_text())
        assert meta["clip_id"] == name
        assert gt["camera_motion"] == "static" and gt["ground_y_m"] == pytest.approx(0.5)
        assert len(gt["objects"]) == 1
        obj = gt["objects"][0]
        assert obj["motion"] in ("static", "translate_left", "translate_right"), obj["motion"]
        start = np.array(obj["centers_world"][0])
        assert 2.5 - 1e-6 <= start[2] <= 3.5 + 1e-6, start  # static camera looks along +z
        path = np.linalg.norm(np.diff(np.array(obj["centers_world"])[:, [0, 2]], axis=0), axis=1).sum()
        if obj["motion"] != "static":
            assert 1.2 - 1e-3 <= path <= 1.8 + 1e-3, path
        g = meta["generator"]
        assert g["directions"] == ["left", "right"] and g["object_motions"] == ["translate"]
        ref = generate_clip(meta["seed"], g["num_frames"], g["width"], g["height"], g["fps"], clip_id=name,
                            **{k: (tuple(v) if isinstance(v, list) else v) for k, v in g.items() if k in option_names})
        assert json.dumps(ref.gt) == (out / name / "gt.json").read_text()
