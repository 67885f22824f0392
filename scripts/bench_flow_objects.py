"""Benchmark of the mask-free object backend (``mllm4d curate --object-backend flow``) beside the
mask-based path, on hidden-seed synthetic clips.

    .venv/bin/python scripts/bench_flow_objects.py                       # 20 clips, seeds 9100..9119
    .venv/bin/python scripts/bench_flow_objects.py --num-clips 40 --seed 9100 --workers 2 --json out.json
    .venv/bin/python scripts/bench_flow_objects.py --num-clips 30 --seed 9200 --verbose    # held out

Seeds 9100 and up are used by neither tiny_data (0-31, 1000-1095) nor the tests. Every clip is
rendered, written as a native clip folder (H.264, as ``mllm4d synth`` writes it) and loaded back,
then curated twice: with its masks (``masks`` backend) and with the masks withheld (``flow``).

Prints, per backend, against the exact ground truth:
  * found: share of the moving objects (the centre travels >= 0.3 m in the top-down view and the
    object is visible in >= half of the frames) matched by an estimated object
    (:func:`mllm4d_lite.curation.flow_objects.match_to_gt`: median centre error <= 25 % of the distance);
    objects that turn in place are counted apart;
  * spurious per 10 clips: estimated objects that match no ground-truth object (flow: no moving
    one, as the flow backend reports only objects it saw move);
  * centre error: median over the matched moving objects' frames, % of the distance to the camera;
  * direction error: median over the matched moving objects of the top-down direction error of the
    first-to-last displacement (as ``--score``);
  * Q/A agreement: questions built from the estimated and the ground-truth annotations
    (:func:`mllm4d_lite.qa.agreement.agreement`), estimated objects carrying their matched gt
    label; the share of the object questions (every category but camera_* and false_positive) both
    produce that agree (numeric: within 15 %), and per category. The flow backend's annotations
    hold moving objects only (``object_coverage`` "moving", docs/data-format.md), so the QA step
    asks them no "how many are not moving" count and no false-positive question: those are
    ground-truth-only questions, not disagreements.
``--verbose`` lists, per clip, the flow backend's missed moving objects (distance, travel, speed
along and across the line of sight), spurious objects and tracks merged as parts of one object.
Targets (issue #24): found >= 90 %, spurious <= 1 per 10 clips, centre error <= 10 %, direction
error <= 20 deg, object Q/A agreement >= 90 %.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mllm4d_lite.curation import synth  # noqa: E402
from mllm4d_lite.curation.annotation import annotation_from_gt  # noqa: E402
from mllm4d_lite.curation.clip import save_clip  # noqa: E402
from mllm4d_lite.curation.curate import estimate_annotation  # noqa: E402
from mllm4d_lite.curation.flow_objects import FlowObjectConfig, match_to_gt  # noqa: E402
from mllm4d_lite.curation.sources import find_sources  # noqa: E402
from mllm4d_lite.qa.agreement import agreement  # noqa: E402
from mllm4d_lite.qa.config import QAConfig  # noqa: E402

BACKENDS = ("masks", "flow")


def _movers(gt: dict) -> tuple[list[int], list[int]]:
    """Ids of gt objects that travel >= 0.3 m (top-down) and are visible on >= half the frames, and
    of those that turn in place (moving, but travelling less)."""
    travel, turn = [], []
    for g in gt["objects"]:
        c = np.asarray(g["centers_world"], float)
        if g["motion"] == "static" or sum(g["visible"]) < 0.5 * len(c):
            continue
        (travel if math.hypot(*(c[-1] - c[0])[[0, 2]]) >= 0.3 else turn).append(g["id"])
    return travel, turn


def score_backend(ann: dict, gt: dict, moving_only: bool) -> dict:
    """Found / spurious / centre and direction errors of one annotation against gt.json."""
    travel, turn = _movers(gt)
    # an object of the flow backend claims to move: matched to a static gt object it is spurious too
    claimable = {g["id"] for g in gt["objects"] if g["motion"] != "static" or not moving_only}
    match = match_to_gt(ann["objects"], gt)
    cam = np.asarray(gt["camera_to_world"], float)[:, :3, 3]
    gts = {g["id"]: g for g in gt["objects"]}
    rel, direction = [], []
    for e in ann["objects"]:
        gid = match.get(e["id"])
        if gid not in travel:
            continue
        g = gts[gid]
        gc = np.asarray(g["centers_world"], float)
        frames = [t for t, c in enumerate(e["centers"]) if c is not None and g["visible"][t]]
        rel += [np.linalg.norm(np.asarray(e["centers"][t]) - gc[t]) / np.linalg.norm(gc[t] - cam[t]) for t in frames]
        f0, f1 = frames[0], frames[-1]
        d_gt, d_est = gc[f1] - gc[f0], np.asarray(e["centers"][f1]) - np.asarray(e["centers"][f0])
        if math.hypot(d_gt[0], d_gt[2]) >= 0.3:
            a = math.degrees(math.atan2(d_est[2], d_est[0]) - math.atan2(d_gt[2], d_gt[0]))
            direction.append(abs((a + 180.0) % 360.0 - 180.0))
    found = set(match.values())
    missed = [describe_gt_object(gts[gid], cam) for gid in travel if gid not in found]
    spurious = [{"label": e["label"], "frames_with_centre": sum(c is not None for c in e["centers"]),
                 "matched_gt": match.get(e["id"])} for e in ann["objects"] if match.get(e["id"]) not in claimable]
    merges = [e["reason"] for e in ann.get("objects_log") or [] if "merged_into" in e]
    return {"movers": len(travel), "found": len(found & set(travel)), "turners": len(turn), "merges": merges,
            "turners_found": len(found & set(turn)), "spurious": len(spurious),
            "missed": missed, "spurious_objects": spurious, "centre_rel": rel, "direction_deg": direction}


def describe_gt_object(g: dict, cam: np.ndarray) -> dict:
    """A ground-truth object for the --verbose listing: distance to the camera at its first visible
    frame, travel (top-down, m), speed along / across the line of sight (m per frame; + = away)."""
    c = np.asarray(g["centers_world"], float)
    vis = np.flatnonzero(g["visible"])
    f0, f1 = int(vis[0]), int(vis[-1])
    d = c[f1] - c[f0]
    sight = (c[f0] - cam[f0])[[0, 2]]
    sight /= max(np.linalg.norm(sight), 1e-9)
    along = float(np.dot(d[[0, 2]], sight))
    across = float(sight[0] * d[2] - sight[1] * d[0])
    frames = max(f1 - f0, 1)
    return {"id": g["id"], "label": g["label"], "motion": g["motion"],
            "distance_m": float(np.linalg.norm(c[f0] - cam[f0])), "travel_m": float(math.hypot(d[0], d[2])),
            "radial_m_per_frame": along / frames, "lateral_m_per_frame": across / frames,
            "visible_frames": len(vis)}


def relabelled(ann: dict, gt: dict) -> dict:
    """``ann`` with each matched object named as its ground-truth object (Q/A match by name)."""
    match = match_to_gt(ann["objects"], gt)
    labels = {g["id"]: g["label"] for g in gt["objects"]}
    taken = {labels[g] for g in match.values()}
    objects = []
    for o in ann["objects"]:
        label = labels[match[o["id"]]] if o["id"] in match else o["label"]
        if o["id"] not in match and label in taken:
            label = f"unmatched {label}"
        objects.append({**o, "label": label})
    return {**ann, "objects": objects}


def run_clip(clip_dir: str, flow_options: dict | None = None) -> dict:
    """Both backends on one clip folder; returns per-backend scores, annotations and seconds.
    ``flow_options``: FlowObjectConfig fields to override."""
    src = find_sources(clip_dir)[0]
    out = {}
    for backend in BACKENDS:
        clip = src.load(load_depth=False)
        if backend == "flow":
            clip.masks, clip.labels = None, {}  # withheld: the flow backend must not need them
        t0 = time.perf_counter()
        ann, _, _ = estimate_annotation(clip, flow_cfg=FlowObjectConfig(**(flow_options or {})),
                                        object_backend=backend)
        seconds = time.perf_counter() - t0
        out[backend] = {"score": score_backend(ann, clip.gt, moving_only=backend == "flow"), "annotation": relabelled(ann, clip.gt),
                        "seconds": seconds}
    out["gt_annotation"] = annotation_from_gt(clip)
    out["camera_motion"] = clip.gt["camera_motion"]
    return out


def object_agreement(per_cat: dict) -> tuple[int, int]:
    cats = [c for c in per_cat if not c.startswith("camera") and c != "false_positive"]
    return sum(per_cat[c]["agree"] for c in cats), sum(per_cat[c]["matched"] for c in cats)


def summarise(results: list[dict]) -> dict:
    qa_cfg = QAConfig()
    gt_anns = [r["gt_annotation"] for r in results]
    out = {"clips": len(results)}
    for backend in BACKENDS:
        s = [r[backend]["score"] for r in results]
        movers, found = sum(x["movers"] for x in s), sum(x["found"] for x in s)
        rel = [v for x in s for v in x["centre_rel"]]
        dirs = [v for x in s for v in x["direction_deg"]]
        agr = agreement([r[backend]["annotation"] for r in results], gt_anns, qa_cfg)
        ok, n = object_agreement(agr["per_category"])
        out[backend] = {
            "movers": movers, "found": found, "found_pct": 100.0 * found / max(movers, 1),
            "turners": sum(x["turners"] for x in s), "turners_found": sum(x["turners_found"] for x in s),
            "spurious": sum(x["spurious"] for x in s),
            "spurious_per_10_clips": 10.0 * sum(x["spurious"] for x in s) / len(results),
            "centre_err_median_pct": 100.0 * float(np.median(rel)) if rel else None,
            "centre_frames": len(rel),
            "direction_err_median_deg": float(np.median(dirs)) if dirs else None,
            "direction_objects": len(dirs),
            "object_qa_agree": ok, "object_qa_matched": n, "object_qa_pct": 100.0 * ok / max(n, 1),
            "qa_per_category": {k: v for k, v in agr["per_category"].items()},
            "seconds_per_clip": float(np.mean([r[backend]["seconds"] for r in results])),
        }
    return out


def _fmt(v, f="{:.1f}") -> str:
    return "n/a" if v is None else f.format(v)


def print_table(summary: dict) -> None:
    print(f"mask-free object backend vs masks on {summary['clips']} hidden-seed clips")
    print(f"{'':34s}{'masks':>14s}{'flow':>14s}   target (flow)")
    m, f = summary["masks"], summary["flow"]
    rows = [
        ("moving objects found", f"{m['found']}/{m['movers']} {m['found_pct']:.0f}%",
         f"{f['found']}/{f['movers']} {f['found_pct']:.0f}%", ">= 90%"),
        ("turning in place found", f"{m['turners_found']}/{m['turners']}", f"{f['turners_found']}/{f['turners']}", "-"),
        ("spurious per 10 clips", f"{m['spurious_per_10_clips']:.1f}", f"{f['spurious_per_10_clips']:.1f}", "<= 1"),
        ("centre error, % of distance", _fmt(m["centre_err_median_pct"]), _fmt(f["centre_err_median_pct"]), "<= 10"),
        ("direction error, deg", _fmt(m["direction_err_median_deg"]), _fmt(f["direction_err_median_deg"]), "<= 20"),
        ("object Q/A agreement", f"{m['object_qa_pct']:.1f}% of {m['object_qa_matched']}",
         f"{f['object_qa_pct']:.1f}% of {f['object_qa_matched']}", ">= 90%"),
        ("seconds per clip", f"{m['seconds_per_clip']:.1f}", f"{f['seconds_per_clip']:.1f}", "-"),
    ]
    for name, a, b, t in rows:
        print(f"  {name:32s}{a:>14s}{b:>14s}   {t}")
    cats = sorted(set(m["qa_per_category"]) | set(f["qa_per_category"]))
    print("  Q/A per category (agree/matched):")
    def cell(d: dict | None) -> str:
        return "-" if d is None else f"{d['agree']}/{d['matched']}"

    for c in cats:
        print(f"    {c:30s}{cell(m['qa_per_category'].get(c)):>14s}{cell(f['qa_per_category'].get(c)):>14s}")


def print_verbose(per_clip: list[dict]) -> None:
    """Per clip: the flow backend's missed moving objects and spurious objects."""
    print("flow backend, per clip (misses: distance, travel, radial / lateral m per frame, + = away / left-to-right):")
    for c in per_clip:
        f = c["flow"]
        if not (f["missed"] or f["spurious_objects"] or f.get("merges")):
            continue
        turner_instead = " (a turner was found)" if f["missed"] and f["turners_found"] else ""
        print(f"  {c['clip']} camera {c['camera_motion']}: found {f['found']}/{f['movers']}, "
              f"spurious {f['spurious']}{turner_instead}")
        for m in f["missed"]:
            print(f"    missed {m['label']} ({m['motion']}): {m['distance_m']:.1f} m away, travel {m['travel_m']:.2f} m, "
                  f"radial {m['radial_m_per_frame']:+.3f}, lateral {m['lateral_m_per_frame']:+.3f} m/frame, "
                  f"visible {m['visible_frames']} frames")
        for sp in f["spurious_objects"]:
            what = "no gt object" if sp["matched_gt"] is None else f"static gt object {sp['matched_gt']}"
            print(f"    spurious {sp['label']}: centre on {sp['frames_with_centre']} frames, matches {what}")
        for reason in f.get("merges", []):
            print(f"    merged: {reason}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-clips", type=int, default=20)
    ap.add_argument("--seed", type=int, default=9100, help="clip i uses seed + i (hidden: not in tiny_data or tests)")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--json", default="", help="also write the summary here")
    ap.add_argument("--verbose", action="store_true", help="list the flow backend's misses, spurious objects and merged tracks per clip")
    ap.add_argument("--flow", nargs="*", default=[], metavar="KEY=VALUE",
                    help="FlowObjectConfig overrides, e.g. flow_gap=2 flow_seed_score=6")
    args = ap.parse_args(argv)
    fields = FlowObjectConfig.__dataclass_fields__
    flow_options = {}
    for item in args.flow:
        key, _, value = item.partition("=")
        if key not in fields:
            ap.error(f"--flow {item}: unknown key {key!r}; choose from {sorted(fields)}")
        flow_options[key] = type(fields[key].default)(value)
    FlowObjectConfig(**flow_options).validate()
    with tempfile.TemporaryDirectory() as tmp:
        dirs = []
        for i in tqdm(range(args.num_clips), desc="synth", unit="clip"):
            clip = synth.generate_clip(args.seed + i, num_frames=args.frames)
            dirs.append(str(save_clip(clip, tmp, crf=20)))
        if args.workers > 1:
            with ProcessPoolExecutor(args.workers) as pool:
                results = list(tqdm(pool.map(run_clip, dirs, [flow_options] * len(dirs)), total=len(dirs),
                                    desc="curate", unit="clip"))
        else:
            results = [run_clip(d, flow_options) for d in tqdm(dirs, desc="curate", unit="clip")]
    summary = summarise(results)
    summary["seeds"] = [args.seed, args.seed + args.num_clips - 1]
    summary["flow_options"] = flow_options
    summary["per_clip"] = [{"clip": Path(d).name, "camera_motion": r["camera_motion"],
                            **{b: {k: v for k, v in r[b]["score"].items() if k not in ("centre_rel", "direction_deg")}
                               for b in BACKENDS}} for d, r in zip(dirs, results)]
    print_table(summary)
    if args.verbose:
        print_verbose(summary["per_clip"])
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
