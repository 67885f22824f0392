"""Benchmark of the 4D curation: stereo quality on Middlebury, and speed of the whole pipeline
against the bare disparity calls on the same frames.

    .venv/bin/python scripts/bench_curate.py                      # tiny_data, all clips
    .venv/bin/python scripts/bench_curate.py --clips DIR --max-clips 8 --threads 1

Prints:
  * Middlebury motorcycle (skimage.data.stereo_motorcycle, full 741x500, 96 disparities): coverage,
    end-point error and bad-3px (uncovered counted bad) of plain cv2.StereoSGBM with fixed
    reference settings and of mllm4d_lite.curation.stereo.compute_disparity; targets bad-3px <= 15%, EPE <= 1.0 px.
  * Speed: frames per second of the bare compute_disparity calls on every frame of the clips
    (frames already decoded), and of the whole curation per clip (decode + disparity + odometry +
    object tracks + writing the annotation), with the ratio whole / bare (target <= 1.5) and the
    per-stage split.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mllm4d_lite.curation import stereo  # noqa: E402
from mllm4d_lite.curation.curate import estimate_annotation  # noqa: E402
from mllm4d_lite.curation.sources import find_sources  # noqa: E402
from mllm4d_lite.io import atomic_write_json  # noqa: E402


def middlebury() -> dict:
    from skimage import data

    left, right, gt = data.stereo_motorcycle()
    t0 = time.perf_counter()
    plain = stereo.plain_sgbm_disparity(left, right, 96)
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = stereo.compute_disparity(left, right, 96)
    t_ours = time.perf_counter() - t0
    return {"plain_sgbm": {**stereo.disparity_metrics(plain, gt), "seconds": t_plain},
            "ours": {**stereo.disparity_metrics(ours, gt), "seconds": t_ours}}


def speed(clips_dir: str, max_clips: int) -> dict:
    sources = find_sources(clips_dir)[: max_clips or None]
    if not sources:
        raise SystemExit(f"no clips under {clips_dir}")
    bare_s, whole_s, frames = 0.0, 0.0, 0
    stages = {"load_s": 0.0, "disparity_s": 0.0, "odometry_s": 0.0, "tracks_s": 0.0, "write_s": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for src in sources:
            # whole curation of the clip, as `mllm4d curate` runs it
            t0 = time.perf_counter()
            clip = src.load(load_depth=False)
            t_load = time.perf_counter() - t0
            ann, _, timings = estimate_annotation(clip)
            t1 = time.perf_counter()
            atomic_write_json(Path(tmp) / f"{clip.clip_id}.json", ann)
            t_write = time.perf_counter() - t1
            whole_s += time.perf_counter() - t0
            stages["load_s"] += t_load
            stages["write_s"] += t_write
            for k in ("disparity_s", "odometry_s", "tracks_s"):
                stages[k] += timings[k]
            # bare disparity calls on the same frames
            max_disp = stereo.max_disparity_for(clip.focal_px, clip.baseline_m, 1.0, clip.width)
            t0 = time.perf_counter()
            for i in range(clip.num_frames):
                stereo.compute_disparity(clip.left[i], clip.right[i], max_disp)
            bare_s += time.perf_counter() - t0
            frames += clip.num_frames
    return {"clips": len(sources), "frames": frames, "bare_disparity_fps": frames / bare_s,
            "whole_curation_fps": frames / whole_s, "ratio_whole_over_bare": whole_s / bare_s,
            "stage_seconds": stages, "bare_disparity_s": bare_s, "whole_s": whole_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", default=str(ROOT / "tiny_data"))
    ap.add_argument("--max-clips", type=int, default=0, help="0 = all")
    ap.add_argument("--threads", type=int, default=0, help="cv2.setNumThreads (0 = OpenCV default)")
    ap.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.threads:
        cv2.setNumThreads(args.threads)
    mb = middlebury()
    for name, m in mb.items():
        print(f"middlebury {name:10s}: coverage {100 * m['coverage']:.1f}%  EPE {m['epe_px']:.3f} px  "
              f"bad-3px {100 * m['bad_px']:.1f}%  ({m['seconds'] * 1000:.0f} ms)")
    ok = mb["ours"]["bad_px"] <= 0.15 and mb["ours"]["epe_px"] <= 1.0
    print(f"middlebury targets (bad-3px <= 15%, EPE <= 1.0 px): {'PASS' if ok else 'MISS'}")
    sp = speed(args.clips, args.max_clips)
    st = sp["stage_seconds"]
    print(f"speed on {sp['clips']} clips / {sp['frames']} frames (cv2 threads {cv2.getNumThreads()}): "
          f"bare disparity {sp['bare_disparity_fps']:.1f} fps, whole curation {sp['whole_curation_fps']:.1f} fps, "
          f"ratio {sp['ratio_whole_over_bare']:.2f} (target <= 1.5: {'PASS' if sp['ratio_whole_over_bare'] <= 1.5 else 'MISS'})")
    print("  stage split (s): " + ", ".join(f"{k[:-2]} {v:.2f}" for k, v in st.items()))
    if args.json:
        atomic_write_json(args.json, {"middlebury": mb, "speed": sp})
    return 0


if __name__ == "__main__":
    sys.exit(main())
