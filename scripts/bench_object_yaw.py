"""Benchmark of the objects' yaw-change estimate (mllm4d_lite.curation.tracks.object_yaws) against
exact ground truth, on generated clips whose moving objects turn in place or drive along an arc.

    .venv/bin/python scripts/bench_object_yaw.py                     # seeds 7100-7119
    .venv/bin/python scripts/bench_object_yaw.py --num-seeds 8 --seed 7200 --json /tmp/yaw.json

Clips: 320x240, 70 deg, 16 frames (tiny_data's setting), 1-3 objects of which all move with
motions ``turn`` / ``arc``, random camera motion; seeds ``seed .. seed + num_seeds - 1`` (none is
used by tiny_data or the tests). Each clip goes through H.264 (crf 20, as tiny_data) and back,
then SGBM disparity and the odometry (object masks excluded, as ``mllm4d curate``).

For every object the yaw change is taken as the scorecard does: from the first to the last frame
with an estimate (frames with no centre dropped, as curate does), and compared with the truth over
the same frames. Objects whose true change there is below ``--min-turn-deg`` are skipped (a ratio
of small numbers). Printed per mode (camera poses: ground truth / estimated; disparity: SGBM, and
with ``--gt-disparity`` also the ground-truth disparity):
  * ratio estimated / true yaw change: median, 10th-90th percentile, min, max (target 0.9-1.1);
  * sign errors (estimate turning the other way);
  * absolute error median (deg), the scorecard's "yaw-change error";
each for all objects, cubes, and round objects (sphere, cylinder, cone).
``--json PATH`` writes every per-object figure. Seeds 7100-7119 (the default) are the ones the
yaw estimate was tuned on; 7200-7239 are held out (docs/results.md, "Object yaw change").
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mllm4d_lite.curation import odometry, stereo, synth, tracks  # noqa: E402
from mllm4d_lite.curation.clip import load_clip, save_clip  # noqa: E402
from mllm4d_lite.io import atomic_write_json  # noqa: E402


def object_yaw_changes(clip, disparity: np.ndarray, poses: np.ndarray, cfg: tracks.TrackConfig,
                       min_turn_deg: float) -> list[dict]:
    """Per turning object: estimated and true yaw change (deg) over its estimated span."""
    grays = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in clip.left]
    out = []
    for obj in clip.gt["objects"]:
        oid = obj["id"]
        centers, _ = tracks.object_centers(clip.masks, oid, disparity, clip.K, clip.baseline_m, poses, cfg)
        yaws = tracks.object_yaws(grays, clip.masks, oid, disparity, clip.K, clip.baseline_m, poses, cfg)
        known = [i for i, (c, y) in enumerate(zip(centers, yaws)) if c is not None and y is not None]
        if len(known) < 2:
            continue
        f0, f1 = known[0], known[-1]
        gy = np.unwrap(np.asarray(obj["yaw_rad"], float))
        true_deg = math.degrees(gy[f1] - gy[f0])
        if abs(true_deg) < min_turn_deg:
            continue
        est_deg = math.degrees(yaws[f1] - yaws[f0])
        out.append({"object": oid, "label": obj["label"], "motion": obj["motion"], "frames": [f0, f1],
                    "true_deg": round(true_deg, 2), "est_deg": round(est_deg, 2),
                    "ratio": round(est_deg / true_deg, 4)})
    return out


def summarise(rows: list[dict]) -> str:
    if not rows:
        return "no turning objects with an estimate"
    r = np.array([x["ratio"] for x in rows])
    err = np.array([abs(x["est_deg"] - x["true_deg"]) for x in rows])
    p10, p50, p90 = np.percentile(r, [10, 50, 90])
    return (f"{len(rows):3d} objects | ratio median {p50:.3f} (p10-p90 {p10:.2f}-{p90:.2f}, "
            f"min {r.min():.2f}, max {r.max():.2f}) | sign errors {int((r < 0).sum())} | "
            f"abs error median {np.median(err):.1f} deg")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=7100, help="first seed")
    ap.add_argument("--num-seeds", type=int, default=20, help="clips to generate")
    ap.add_argument("--frames", type=int, default=16, help="frames per clip")
    ap.add_argument("--min-turn-deg", type=float, default=10.0, help="skip objects turning less than this")
    ap.add_argument("--gt-disparity", action="store_true", help="also run with the ground-truth disparity")
    ap.add_argument("--json", type=Path, default=None, help="write per-object figures here")
    args = ap.parse_args(argv)
    if args.num_seeds < 1 or args.frames < 4:
        ap.error(f"--num-seeds must be >= 1 and --frames >= 4 (got {args.num_seeds}, {args.frames})")
    cfg = tracks.TrackConfig()
    modes = ["sgbm/gt_cam", "sgbm/est_cam"] + (["gt_disp/gt_cam"] if args.gt_disparity else [])
    rows: dict[str, list[dict]] = {m: [] for m in modes}
    t_start = time.perf_counter()
    try:
        from tqdm import tqdm
        seeds = tqdm(range(args.seed, args.seed + args.num_seeds), desc="clips", file=sys.stderr)
    except ImportError:  # pragma: no cover
        seeds = range(args.seed, args.seed + args.num_seeds)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            rng = np.random.default_rng(seed)
            n_obj = int(rng.integers(1, 4))
            clip = synth.generate_clip(seed, args.frames, num_objects=n_obj, num_moving=n_obj,
                                       object_motions=("turn", "arc"))
            gt_depth = clip.gt_depth_m
            clip = load_clip(save_clip(clip, Path(tmp) / f"s{seed}", crf=20))
            gt_poses = np.asarray(clip.gt["camera_to_world"], float)
            max_disp = stereo.max_disparity_for(clip.focal_px, clip.baseline_m, 1.0, clip.width)
            disp = np.stack([stereo.compute_disparity(clip.left[i], clip.right[i], max_disp)
                             for i in range(clip.num_frames)])
            vo = odometry.estimate_trajectory(clip.left, disp, clip.K, clip.baseline_m, clip.masks > 0,
                                              right=clip.right)
            runs = {"sgbm/gt_cam": (disp, gt_poses), "sgbm/est_cam": (disp, vo.camera_to_world)}
            if args.gt_disparity:
                with np.errstate(divide="ignore"):
                    runs["gt_disp/gt_cam"] = (clip.focal_px * clip.baseline_m / gt_depth, gt_poses)
            for mode, (d, poses) in runs.items():
                for r in object_yaw_changes(clip, d, poses, cfg, args.min_turn_deg):
                    rows[mode].append({"seed": seed, **r})
    print(f"object yaw change, seeds {args.seed}-{args.seed + args.num_seeds - 1}, {args.frames} frames, "
          f"{time.perf_counter() - t_start:.0f} s")
    for mode in modes:
        print(f"  {mode:15s} all   {summarise(rows[mode])}")
        for name, is_cube in (("cubes", True), ("round", False)):
            sub = [r for r in rows[mode] if r["label"].endswith("cube") == is_cube]
            print(f"  {'':15s} {name:5s} {summarise(sub)}")
    if args.json:
        atomic_write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
