"""Benchmark the synthetic stereo renderer: stereo frame pairs per second on one core.

    .venv/bin/python scripts/bench_synth.py                 # 320x240, 4 objects, 8 clips x 16 frames
    .venv/bin/python scripts/bench_synth.py --size 640x480 --clips 2

Prints the rendering rate (ray casting both views + blur + noise, what `generate_clip` does) and
the end-to-end rate including H.264 encoding of both views (`save_clip`). Single-threaded:
OMP/MKL/OpenBLAS threads = 1 and cv2.setNumThreads(1). CPU time is printed beside wall time, so
a machine shared with other jobs can be told apart from a slow renderer.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402

from mllm4d_lite.curation.clip import save_clip  # noqa: E402
from mllm4d_lite.curation.render import render_scene  # noqa: E402
from mllm4d_lite.curation.scene import SceneOptions, build_scene  # noqa: E402
from mllm4d_lite.curation.synth import generate_clip  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--objects", type=int, default=4)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    width, height = (int(v) for v in args.size.split("x"))
    opts = SceneOptions(num_objects=args.objects)

    render_scene(build_scene(999, 2, width, height, 8.0, opts), opts, 999)  # warm-up
    wall = cpu = 0.0
    for seed in range(args.clips):
        scene = build_scene(seed, args.frames, width, height, 8.0, opts)
        t0, c0 = time.perf_counter(), time.process_time()
        render_scene(scene, opts, seed)
        wall += time.perf_counter() - t0
        cpu += time.process_time() - c0
    pairs = args.clips * args.frames
    print(f"render: {pairs / wall:.1f} stereo pairs/s wall, {pairs / cpu:.1f} pairs/s CPU "
          f"({width}x{height}, {args.objects} objects, {pairs} pairs, 1 thread)")

    t0, c0 = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.clips):
            save_clip(generate_clip(seed, args.frames, width, height, 8.0, num_objects=args.objects), tmp, crf=20)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"generate + encode + save: {pairs / wall:.1f} pairs/s wall, {pairs / cpu:.1f} pairs/s CPU")


if __name__ == "__main__":
    main()
