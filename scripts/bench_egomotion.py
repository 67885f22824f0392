"""Benchmark of the stereo ego-motion (mllm4d_lite.curation.odometry) against exact ground truth,
on generated clips that stress it: a static camera with objects moving in view, and yawing cameras.

    .venv/bin/python scripts/bench_egomotion.py                       # 8 seeds per suite from 5000
    .venv/bin/python scripts/bench_egomotion.py --num-seeds 16 --seed 6000 --suites static_movers yaw
    .venv/bin/python scripts/bench_egomotion.py --clips tiny_data/lateral  # clip folders as they are

Suites (seeds ``seed .. seed + num_seeds - 1``; none of them is used by tiny_data or the tests):
  * static_movers:  320x240, 70 deg, static camera, 3 objects of which 2 move.
  * static_lateral: the demo's setting (tiny_data/lateral): 160x120, 40 deg, camera 0.5 m high, one
                    object sliding 1.2-1.8 m left or right 2.5-3.5 m ahead.
  * yaw:            320x240, 70 deg, every camera motion that pans (18-35 deg), random objects.
  * yaw_narrow:     160x120, 40 deg, camera 0.5 m high, pan_left / pan_right, 2 objects.
  * slow:           320x240, 70 deg, a camera moving forward / right / backward / left at a quarter
                    of the generator's speed (1-2.5 cm per frame): the static test must not freeze it.

Each clip goes through H.264 (crf 20, as tiny_data) and back, then SGBM disparity and the odometry,
twice: with the object masks excluded (``mllm4d curate``'s mask path) and without any mask (what a
mask-free object backend gets). Printed per suite and mode:
  * drift: the largest camera-position error over the clip (m; the scorecard's static drift),
    median and max over clips (target <= 2 cm for static cameras);
  * ATE: per-clip median position error (evo, no alignment), median and max over clips;
  * yaw ratio: estimated / true camera yaw change from the first to the last frame (target 0.9-1.1),
    median, min and max over the yawing clips.
``--json PATH`` also writes every per-clip figure. ``--clips DIR ...`` runs the same on existing
clip folders (each with gt.json and masks; e.g. the demo's tiny_data/lateral, or the output of
``mllm4d synth``) instead of the suites, all their frames as they are, and adds per mode the clips
that miss their target (static: drift <= 2 cm; moving: ATE <= max(5 cm, 3 % of the path)).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mllm4d_lite.curation import odometry, stereo, synth  # noqa: E402
from mllm4d_lite.curation.clip import load_clip, save_clip  # noqa: E402
from mllm4d_lite.curation.scorecard import trajectory_ate  # noqa: E402
from mllm4d_lite.io import atomic_write_json  # noqa: E402

PAN_MOTIONS = ("pan_left", "pan_right", "forward_pan_left", "forward_pan_right", "right_pan_left", "left_pan_right")
SUITES = ("static_movers", "static_lateral", "yaw", "yaw_narrow", "slow")
LATERAL = dict(width=160, height=120, hfov_deg=40.0, camera_height_m=0.5)


def suite_options(suite: str, k: int) -> dict:
    """generate_clip keyword arguments of the k-th clip of a suite."""
    if suite == "static_movers":
        return dict(camera_motion="static", num_objects=3, num_moving=2)
    if suite == "static_lateral":
        return dict(camera_motion="static", num_objects=1, depth_range_m=(2.5, 3.5), travel_range_m=(1.2, 1.8),
                    object_motions=("translate",), directions=("left", "right"), **LATERAL)
    if suite == "yaw":
        return dict(camera_motion=PAN_MOTIONS[k % len(PAN_MOTIONS)])
    if suite == "yaw_narrow":
        return dict(camera_motion=("pan_left", "pan_right")[k % 2], num_objects=2, depth_range_m=(2.5, 4.5),
                    **LATERAL)
    if suite == "slow":
        return dict(camera_motion=("forward", "right", "backward", "left")[k % 4], slow_down=4)
    raise ValueError(f"unknown suite {suite!r}; choose from {', '.join(SUITES)}")


def yaw_change_rad(c2w: np.ndarray) -> float:
    """Camera yaw (turn about the camera's y axis, y down: + = turn right) from frame 0 to the last."""
    rel = c2w[0, :3, :3].T @ c2w[-1, :3, :3]
    return math.atan2(rel[0, 2], rel[2, 2])


def run_clip(seed: int, frames: int, opts: dict, tmp: Path, vo_cfg: odometry.OdometryConfig) -> dict:
    slow_down = opts.pop("slow_down", 1)  # render slow_down x the frames, keep the first ones
    clip = synth.generate_clip(seed, frames * slow_down, **opts)
    clip = load_clip(save_clip(clip, tmp, crf=20))  # the H.264 round trip of real curation input
    return score_clip_odometry(clip, frames, vo_cfg, seed)


def score_clip_odometry(clip, frames: int, vo_cfg: odometry.OdometryConfig, seed: int | None = None) -> dict:
    """Odometry of a loaded clip's first ``frames`` frames with and without its masks, scored."""
    left, right, masks = clip.left[:frames], clip.right[:frames], clip.masks[:frames]
    gt = np.asarray(clip.gt["camera_to_world"], float)[:frames]
    max_disp = stereo.max_disparity_for(clip.focal_px, clip.baseline_m, 1.0, clip.width)
    disp = np.stack([stereo.compute_disparity(left[i], right[i], max_disp) for i in range(frames)])
    row = {"seed": seed, "clip_id": clip.clip_id, "camera_motion": clip.gt.get("camera_motion"),
           "moving_objects": sum(o["motion"] != "static" for o in clip.gt["objects"])}
    for mode, exclude in (("masks", masks > 0), ("no_masks", None)):
        t0 = time.perf_counter()
        res = odometry.estimate_trajectory(left, disp, clip.K, clip.baseline_m, exclude, vo_cfg, right=right)
        est = res.camera_to_world
        ate = trajectory_ate(est, gt)
        gt_yaw = yaw_change_rad(gt)
        turn = math.degrees(math.acos(float(np.clip((np.trace(gt[0, :3, :3].T @ gt[-1, :3, :3]) - 1) / 2, -1, 1))))
        static = ate["path_length_m"] < 0.01 and turn < 1.0  # as the scorecard
        drift = float(np.linalg.norm(est[:, :3, 3] - gt[:, :3, 3], axis=1).max())
        row[mode] = {"static": bool(static),
                     "within_target": bool(drift <= 0.02 if static else
                                           ate["ate_median_m"] <= max(0.05, 0.03 * ate["path_length_m"])),
                     "drift_m": drift, "ate_median_m": ate["ate_median_m"], "path_length_m": ate["path_length_m"],
                     "yaw_true_deg": math.degrees(gt_yaw),
                     "yaw_ratio": yaw_change_rad(est) / gt_yaw if abs(gt_yaw) > math.radians(5) else None,
                     "failed_frames": len(res.failed_frames), "static_frames": int(res.quality["vo_static_frames"]),
                     "seconds": time.perf_counter() - t0}
    return row


def summary(rows: list[dict], mode: str) -> str:
    drift = np.array([r[mode]["drift_m"] for r in rows])
    ate = np.array([r[mode]["ate_median_m"] for r in rows])
    ate_pct = [r[mode]["ate_median_m"] / r[mode]["path_length_m"] for r in rows if r[mode]["path_length_m"] > 0.01]
    ratios = np.array([r[mode]["yaw_ratio"] for r in rows if r[mode]["yaw_ratio"] is not None])
    text = (f"drift median {100 * np.median(drift):.2f} cm max {100 * drift.max():.2f} cm "
            f"({(drift <= 0.02).sum()}/{len(drift)} <= 2 cm) | ATE median {100 * np.median(ate):.2f} cm "
            f"max {100 * ate.max():.2f} cm" + (f" ({100 * np.median(ate_pct):.1f} % of path)" if ate_pct else ""))
    text += f" | {sum(r[mode]['within_target'] for r in rows)}/{len(rows)} within target"
    if len(ratios):
        text += (f" | yaw ratio median {np.median(ratios):.3f} min {ratios.min():.3f} max {ratios.max():.3f} "
                 f"({((ratios >= 0.9) & (ratios <= 1.1)).sum()}/{len(ratios)} in 0.9-1.1)")
    return text


def run_clip_folders(paths: list[str], vo_cfg: odometry.OdometryConfig, json_path: str, tqdm) -> int:
    """``--clips``: every clip folder under ``paths`` with and without its masks; prints the summary
    and the clips that miss their target."""
    folders = []
    for p in map(Path, paths):
        found = [p] if (p / "clip.json").is_file() else sorted(c.parent for c in p.glob("*/clip.json"))
        if not found:
            print(f"bench_egomotion: no clip folder (with clip.json) at {p}; give a clip folder or a folder of them",
                  file=sys.stderr)
            return 2
        folders += found
    rows = []
    for folder in tqdm(folders, desc="clips"):
        clip = load_clip(folder)
        if clip.gt is None or clip.masks is None:
            print(f"bench_egomotion: {folder} has no gt.json or no masks; --clips needs both (mllm4d synth writes them)",
                  file=sys.stderr)
            return 2
        rows.append(score_clip_odometry(clip, clip.num_frames, vo_cfg, clip.meta.get("seed")))
    print(f"bench_egomotion: {len(rows)} clip folders ({', '.join(paths)})")
    for mode in ("masks", "no_masks"):
        secs = np.mean([r[mode]["seconds"] for r in rows])
        print(f"  {mode:8s}: {summary(rows, mode)} | {secs:.2f} s/clip")
        missed = [r for r in rows if not r[mode]["within_target"]]
        if missed:
            print("    missed: " + ", ".join(
                f"{r['clip_id']} ({'drift' if r[mode]['static'] else 'ATE'} "
                f"{100 * (r[mode]['drift_m'] if r[mode]['static'] else r[mode]['ate_median_m']):.1f} cm)" for r in missed))
    if json_path:
        atomic_write_json(json_path, {"clips": rows})
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=5000, help="first seed of every suite (default 5000)")
    ap.add_argument("--num-seeds", type=int, default=8, help="clips per suite (default 8)")
    ap.add_argument("--frames", type=int, default=16, help="frames per clip (default 16, as tiny_data)")
    ap.add_argument("--suites", nargs="+", default=list(SUITES), choices=SUITES,
                    help="which suites to run (default: all)")
    ap.add_argument("--json", default="", help="also write the per-clip figures to this JSON file")
    ap.add_argument("--clips", nargs="+", default=[],
                    help="clip folders, or folders of clip folders, to run instead of the suites")
    args = ap.parse_args(argv)
    if args.num_seeds < 1 or args.frames < 2:
        ap.error(f"--num-seeds must be >= 1 and --frames >= 2, got {args.num_seeds} and {args.frames}")
    from tqdm import tqdm

    vo_cfg = odometry.OdometryConfig()
    results: dict[str, list[dict]] = {}
    if args.clips:
        return run_clip_folders(args.clips, vo_cfg, args.json, tqdm)
    with tempfile.TemporaryDirectory() as tmp:
        for suite in args.suites:
            rows = []
            for k in tqdm(range(args.num_seeds), desc=suite):
                seed = args.seed + k
                opts = suite_options(suite, k)
                size = {"width": opts.pop("width", 320), "height": opts.pop("height", 240)}
                clip_tmp = Path(tmp) / suite
                rows.append(run_clip(seed, args.frames, {**size, **opts, "clip_id": f"{suite}_s{seed:05d}"}, clip_tmp,
                                     vo_cfg))
            results[suite] = rows
    print(f"bench_egomotion: seeds {args.seed}-{args.seed + args.num_seeds - 1}, {args.frames} frames, H.264 crf 20")
    for suite, rows in results.items():
        for mode in ("masks", "no_masks"):
            secs = np.mean([r[mode]["seconds"] for r in rows])
            print(f"  {suite:15s} {mode:8s}: {summary(rows, mode)} | {secs:.2f} s/clip")
    if args.json:
        atomic_write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
