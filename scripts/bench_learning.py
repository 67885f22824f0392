"""Learning benchmark: does SFT on the tiny profile learn from the video?

Trains the tiny SFT recipe on synthetic clips and scores held-out direction questions (clips
never seen in training) three ways: SFT (the recipe as is), blind (the same recipe trained AND
evaluated with every frame blanked, same token counts: what the question text alone gives) and
chance (the mean of 1 / number of options). SFT well above blind means the video reaches the
model and the labels are learnable from it. Then the cold-start recipe continues from the SFT
adapter on ST-CoT answers, and the share of held-out replies in the ST-CoT format is reported.
It also prints accuracy per true answer and how often each option was picked: a model that only
tells moving from still can clear the blind control where "not moving" is common. The learning
target checked at the end: SFT >= 2x chance and >= blind + 15 points.

    .venv/bin/python scripts/bench_learning.py                       # 256 clips, ~15-25 min on 2 cores
    .venv/bin/python scripts/bench_learning.py --clips tiny_data     # the committed 32 clips
    .venv/bin/python scripts/bench_learning.py --toy                 # toy left/right set, ~1 min
    .venv/bin/python scripts/bench_learning.py --preset lateral      # the setting that meets the target (~20 min)

Presets: ``lateral`` = ``--clips runs/learn_lat/clips --out runs/learn_lat --synth-seed 50000
--num-clips 1024 --synth-size 160x120 --camera-motion static --num-objects 1 --hfov 40
--camera-height 0.5 --depth-range 2.5,3.5 --travel-range 1.2,1.8 --object-motions translate
--directions left,right --option-order fixed --set model=tiny-motion --max-steps 1500``
(explicit options win).

Writes ``<out>/learning.json`` and prints the tables. Clips are generated with the synth module
when ``--clips`` does not exist; data with ``mllm4d qa --use-gt``. Every figure measured with it,
and what it took to reach the target, is in docs/results.md (section 7).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DIRECTION_CATEGORIES = ("object_direction", "object_direction_phase", "camera_direction")


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def synth_clips(out: Path, num_clips: int, seed: int, size: str, **options) -> None:
    """Render ``num_clips`` synthetic clips (16 frames, 8 fps) with the synth module's own API;
    ``options`` are :class:`mllm4d_lite.curation.synth.SceneOptions` fields (None = the generator's default)."""
    from tqdm import tqdm

    from mllm4d_lite.curation.clip import save_clip
    from mllm4d_lite.curation.synth import generate_clip

    width, height = (int(v) for v in size.split("x"))
    options = {k: v for k, v in options.items() if v is not None}
    for i in tqdm(range(num_clips), desc="synth clips"):
        if (out / f"synth_s{seed + i:05d}" / "gt.json").is_file():
            continue
        save_clip(generate_clip(seed + i, 16, width, height, 8.0, **options), out, crf=20)


def by_answer(eval_json: Path, bench: list[dict]) -> dict[str, dict]:
    """Accuracy per true answer text and how often each option text was picked: shows whether
    an SFT gain is direction (left / right / toward / away) or only moving vs still."""
    truth = {e["id"]: e for e in bench}
    table: dict[str, dict] = {}
    for p in json.loads(eval_json.read_text())["predictions"]:
        e = truth[p["id"]]
        row = table.setdefault(e["answer"], {"n": 0, "correct": 0.0, "picked": 0})
        row["n"] += 1
        row["correct"] += p["score"]
        picked = e["choices"].get(p.get("extracted") or "", None)
        if picked is not None:
            table.setdefault(picked, {"n": 0, "correct": 0.0, "picked": 0})["picked"] += 1
    return {k: {"n": v["n"], "accuracy": round(v["correct"] / v["n"], 3) if v["n"] else None, "picked": v["picked"]}
            for k, v in sorted(table.items(), key=lambda kv: -kv[1]["n"])}


def _range(text: str | None) -> tuple[float, float] | None:
    from mllm4d_lite.curation.synth import parse_range

    if text is None:
        return None
    try:
        return parse_range(text, "the range")
    except ValueError as err:
        raise SystemExit(str(err)) from None


def filter_jsonl(src: Path, dst: Path, categories: tuple[str, ...] | None) -> int:
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    if categories:
        rows = [r for r in rows if r["category"] in categories]
    for r in rows:  # keep video paths valid from the new folder
        r["video"] = str((src.parent / r["video"]).resolve())
    dst.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def bench_overrides(items: list[str], reserved) -> dict:
    """``--set KEY=VALUE`` items as recipe overrides; a key the benchmark sets itself for each run
    (e.g. ``blind``) is refused, since the run's own value would silently win."""
    from mllm4d_lite.config import parse_overrides

    overrides = parse_overrides(items)
    for key in sorted(overrides.keys() & set(reserved)):
        raise SystemExit(f"--set {key}=... is set by the benchmark itself for each run; drop it")
    return overrides


def run_toy(args, out: Path) -> int:
    """SFT vs blind on the toy set: a bright square slides left or right (4 shuffled options)."""
    from mllm4d_lite.train import sft as S
    from mllm4d_lite.config import build_config, load_yaml
    from mllm4d_lite.train.toy_data import write_toy_direction_set

    width, height = (int(v) for v in args.toy_size.split("x"))
    backgrounds = None
    if args.toy_background == "synth":  # first frames of synthetic clips: a cluttered, structured scene
        import torch  # noqa: F401  -- before the first decode (see mllm4d_lite.curation.video: import order)

        from mllm4d_lite.curation.video import read_video

        clips = (REPO / args.clips).resolve()
        if not any(clips.glob("*/left.mp4")):
            synth_clips(clips, 64, args.synth_seed, args.toy_size, camera_motion="static")
        backgrounds = [read_video(video, 1)[0][0] for video in sorted(clips.glob("*/left.mp4"))[:256]]
    knobs = dict(width=width, height=height, shuffle_choices=True, travel=args.toy_travel, square=args.toy_square,
                 backgrounds=backgrounds)
    train = write_toy_direction_set(out / "toy_train", args.toy_clips, seed=0, **knobs)
    held = write_toy_direction_set(out / "toy_heldout", 64, seed=1, **knobs)
    overrides = bench_overrides(args.set, reserved={"blind"})
    results = {"chance": {"accuracy": 0.25}}  # 4 options; the blind control can reach 0.5 (always left or right)
    for name, blind in [("sft", False)] + ([] if args.skip_blind else [("blind", True)]):
        values = load_yaml(REPO / args.sft_config)
        values.update(train_file=str(train), eval_file=str(held), output_dir=str(out / name),
                      max_steps=args.max_steps or 400)
        values.update(overrides)
        values["blind"] = blind
        summary = S.run(build_config(S.SFTConfig, values, args.sft_config))
        results[name] = {"accuracy": summary["eval"]["accuracy"], "train_s": summary["train_s"],
                         "steps": summary["steps"]}
    results["setup"] = {"size": args.toy_size, "travel": args.toy_travel, "square": args.toy_square,
                        "background": args.toy_background, "train_clips": args.toy_clips, "set": args.set}
    (out / "learning_toy.json").write_text(json.dumps(results, indent=1))
    print("\n| toy run | held-out accuracy | train time |\n| --- | --- | --- |")
    for name in [n for n in ("chance", "sft", "blind") if n in results]:
        r = results[name]
        print(f"| {name} | {r['accuracy']:.3f} | {r.get('train_s', 0):.0f} s |")
    return 0


# ``--preset lateral``: the setting that meets the learning target (see the module docstring).
PRESETS = {
    "lateral": dict(clips="runs/learn_lat/clips", out="runs/learn_lat", synth_seed=50000, num_clips=1024,
                    synth_size="160x120", camera_motion="static", num_objects=1, hfov=40.0, camera_height=0.5,
                    depth_range="2.5,3.5", travel_range="1.2,1.8", object_motions="translate",
                    directions="left,right", option_order="fixed", max_steps=1500, model="tiny-motion"),
}


def apply_preset(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Fill the preset's values into every option left at its default; ``model`` goes to ``--set``
    unless a ``--set model=...`` is given."""
    if not args.preset:
        return args
    values = dict(PRESETS[args.preset])
    model = values.pop("model")
    for key, value in values.items():
        if getattr(args, key) == parser.get_default(key):
            setattr(args, key, value)
    if not any(item.split("=", 1)[0].strip() == "model" for item in args.set):
        args.set = [*args.set, f"model={model}"]
    return args


def build_parser() -> argparse.ArgumentParser:
    from mllm4d_lite.qa.config import OPTION_ORDERS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="lateral: one object sliding before a static camera, tiny-motion, fixed option order, "
                         "1500 steps (the setting that meets the learning target); explicit options win")
    ap.add_argument("--clips", default="runs/learn/clips", help="folder of synthetic clips (made if missing)")
    ap.add_argument("--num-clips", type=int, default=256, help="clips to synthesise when --clips is missing")
    ap.add_argument("--synth-seed", type=int, default=1000, help="seed of the synthesised clips")
    ap.add_argument("--synth-size", default="320x240", help="WIDTHxHEIGHT of synthesised clips")
    ap.add_argument("--camera-motion", default=None,
                    help="synthesise clips with this camera motion only (e.g. static); default: random mix")
    ap.add_argument("--num-objects", type=int, default=None, help="objects per synthesised clip (default: random 1-4)")
    ap.add_argument("--hfov", type=float, default=None,
                    help="horizontal field of view of synthesised clips in degrees (default 70; narrower = "
                         "objects and their motions larger in pixels)")
    ap.add_argument("--camera-height", type=float, default=None,
                    help="camera height above the ground in metres (default: random 0.9-1.3; lower keeps "
                         "near objects in a narrow view)")
    ap.add_argument("--depth-range", default=None, metavar="MIN,MAX",
                    help="objects start MIN-MAX metres ahead (default 2.5,7.5; nearer = larger in pixels)")
    ap.add_argument("--travel-range", default=None, metavar="MIN,MAX",
                    help="path length of moving objects in metres (default 0.7,1.6)")
    ap.add_argument("--object-motions", default=None, metavar="M1,M2",
                    help="motions a moving object draws from (translate, turn, arc; default all)")
    ap.add_argument("--directions", default=None, metavar="D1,D2",
                    help="directions a translation draws from (e.g. left,right; default all eight)")
    ap.add_argument("--option-order", choices=OPTION_ORDERS, default=OPTION_ORDERS[0],
                    help="qa_option_order of the generated questions: balanced (shuffled letters, VLM4D style) or "
                         "fixed (one canonical option order; the tiny random LLM cannot learn a shuffled letter lookup)")
    ap.add_argument("--out", default="runs/learn", help="output folder")
    ap.add_argument("--sft-config", default="recipes/tiny/sft.yaml")
    ap.add_argument("--cold-config", default="recipes/tiny/cold_start.yaml")
    ap.add_argument("--train-categories", default="direction",
                    help="'direction' (the three direction categories) or 'all'")
    ap.add_argument("--max-steps", type=int, default=0, help="override the recipe's max_steps (0 = keep)")
    ap.add_argument("--cold-max-steps", type=int, default=0, help="override the cold-start max_steps (0 = keep)")
    ap.add_argument("--toy", action="store_true",
                    help="instead: the toy left/right set (--toy-clips train / 64 held-out clips, shuffled "
                         "options), a check that the video path carries a learnable signal")
    ap.add_argument("--toy-size", default="64x48", help="--toy: WIDTHxHEIGHT of the toy clips")
    ap.add_argument("--toy-travel", type=float, default=None,
                    help="--toy: distance the square slides, as a fraction of the width (default: edge to edge)")
    ap.add_argument("--toy-square", type=float, default=1 / 3, help="--toy: side of the square / frame height")
    ap.add_argument("--toy-background", choices=("noise", "synth"), default="noise",
                    help="--toy: uniform noise, or first frames of the synthetic clips in --clips (clutter)")
    ap.add_argument("--toy-clips", type=int, default=96, help="--toy: training clips (64 held out)")
    ap.add_argument("--skip-blind", action="store_true", help="skip the blind control (synthetic and --toy runs)")
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a recipe value for the SFT runs (repeatable), e.g. --set lora_r=64")
    return ap


def main() -> int:
    ap = build_parser()
    args = apply_preset(ap.parse_args(), ap)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")

    from mllm4d_lite.train import sft as S
    from mllm4d_lite.config import build_config, load_yaml

    out = (REPO / args.out).resolve()
    if args.toy:
        return run_toy(args, out)
    clips = (REPO / args.clips).resolve()
    scene = dict(camera_motion=args.camera_motion, num_objects=args.num_objects, hfov_deg=args.hfov,
                 camera_height_m=args.camera_height, depth_range_m=_range(args.depth_range),
                 travel_range_m=_range(args.travel_range),
                 object_motions=tuple(args.object_motions.split(",")) if args.object_motions else None,
                 directions=tuple(args.directions.split(",")) if args.directions else None)
    if not clips.is_dir() or any(v is not None for v in scene.values()):
        synth_clips(clips, args.num_clips, args.synth_seed, args.synth_size, **scene)
    data = out / "data"
    run([sys.executable, "-m", "mllm4d_lite", "qa", "--clips", str(clips), "--use-gt", "--out", str(data),
         "--qa-option-order", args.option_order])

    cats = DIRECTION_CATEGORIES if args.train_categories == "direction" else None
    n_sft = filter_jsonl(data / "sft.jsonl", out / "train_sft.jsonl", cats)
    n_cot = filter_jsonl(data / "cot.jsonl", out / "train_cot.jsonl", cats)
    bench = [e for e in json.loads((data / "bench.json").read_text()) if e["category"] in DIRECTION_CATEGORIES]
    for e in bench:
        e["video"] = str((data / e["video"]).resolve())
    (out / "bench_direction.json").write_text(json.dumps(bench, indent=1))
    chance = sum(1.0 / len(e["choices"]) for e in bench) / len(bench)
    print(f"train: {n_sft} SFT / {n_cot} CoT records ({args.train_categories}); bench: {len(bench)} held-out "
          f"direction questions; chance {chance:.3f}", flush=True)

    def sft_cfg(name: str, config: str, train_file: Path, **kw):
        values = load_yaml(REPO / config)
        values.update(train_file=str(train_file), output_dir=str(out / name), eval_file=str(out / "bench_direction.json"))
        values.update(bench_overrides(args.set, reserved=kw.keys()))
        values.update(kw)
        return build_config(S.SFTConfig, values, config)

    results: dict[str, dict] = {"chance": {"accuracy": chance}}
    over = {"max_steps": args.max_steps} if args.max_steps else {}
    runs = [("sft", False)] + ([] if args.skip_blind else [("blind", True)])
    for name, blind in runs:
        t0 = time.perf_counter()
        summary = S.run(sft_cfg(name, args.sft_config, out / "train_sft.jsonl", blind=blind, **over))
        results[name] = {"accuracy": summary["eval"]["accuracy"], "by_category": summary["eval"]["by_category"],
                         "train_seconds": summary["train_s"], "steps": summary["steps"],
                         "final_loss": summary["final_loss"], "wall_seconds": round(time.perf_counter() - t0, 1),
                         "by_answer": by_answer(out / name / "eval.json", bench)}
        print(f"{name}: acc {results[name]['accuracy']:.3f} after {summary['steps']} steps, "
              f"train {summary['train_s']:.0f} s", flush=True)
    if not args.skip_cold:
        cold_over = {"max_steps": args.cold_max_steps} if args.cold_max_steps else {}
        summary = S.run(sft_cfg("cold_start", args.cold_config, out / "train_cot.jsonl",
                                  adapter_init=str(out / "sft" / "adapter"), eval_mode="st-cot", **cold_over))
        results["cold_start"] = {"accuracy": summary["eval"]["accuracy"], "format_rate": summary["eval"]["format_rate"],
                                 "train_seconds": summary["train_s"], "steps": summary["steps"]}
        print(f"cold start: ST-CoT format {summary['eval']['format_rate']:.3f}, acc {summary['eval']['accuracy']:.3f}, "
              f"train {summary['train_s']:.0f} s", flush=True)

    results["setup"] = {"clips": str(clips), **scene, "synth_size": args.synth_size, "bench_questions": len(bench),
                        "train_sft_records": n_sft,
                        "train_categories": args.train_categories, "sft_config": args.sft_config,
                        "option_order": args.option_order,
                        "set": args.set, "max_steps": args.max_steps}
    (out / "learning.json").write_text(json.dumps(results, indent=1))
    print("\n| run | held-out direction accuracy | train time |\n| --- | --- | --- |")
    print(f"| chance | {chance:.3f} | - |")
    for name in ("sft", "blind"):
        if name in results:
            print(f"| {name} | {results[name]['accuracy']:.3f} | {results[name]['train_seconds']:.0f} s |")
    runs_done = [n for n in ("sft", "blind") if n in results]
    print("\nper true answer: accuracy (n) / times picked\n| answer | " + " | ".join(runs_done) + " |\n| --- |"
          + " --- |" * len(runs_done))
    for answer in results["sft"]["by_answer"]:
        cells = []
        for n in runs_done:
            r = results[n]["by_answer"].get(answer, {})
            acc = "-" if r.get("accuracy") is None else f"{r['accuracy']:.2f} ({r['n']})"
            cells.append(f"{acc} / {r.get('picked', 0)}")
        print(f"| {answer} | " + " | ".join(cells) + " |")
    if "cold_start" in results:
        c = results["cold_start"]
        print(f"| cold start (ST-CoT) | {c['accuracy']:.3f} (format {c['format_rate']:.3f}) | {c['train_seconds']:.0f} s |")
    if "blind" in results:
        sft_acc, blind_acc = results["sft"]["accuracy"], results["blind"]["accuracy"]
        ok = sft_acc >= 2 * chance and sft_acc >= blind_acc + 0.15
        print(f"\nSFT {sft_acc:.3f} vs 2x chance {2 * chance:.3f} and blind + 15 pts {blind_acc + 0.15:.3f}: "
              f"{'PASS' if ok else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
