"""Benchmark of the GRPO stage on the tiny CPU profile: does the ST-reward rise?

Pipeline (all real stages, tiny profile):
  1. QA data from the synthetic clips' ground truth (``tiny_data/``; ``mllm4d synth`` makes it
     when absent): ``cot.jsonl`` (cold start), ``rft.jsonl`` (GRPO), ``bench.json`` (held out);
  2. ST-CoT cold start with ``mllm4d_lite.sft.train`` (LoRA on the tiny model);
  3. GRPO with ``recipes/tiny/grpo.yaml`` from the cold-start adapter;
  4. optional: held-out accuracy and ST-CoT format rate, cold start vs GRPO (``--eval-samples``).

Prints the mean total reward over the first and the last fifth of GRPO steps, the final format
component, s/step and the wall time of the GRPO run. Targets (GRPO issue): GRPO run <= 10 min,
last fifth - first fifth >= 0.1, format component ends >= 0.9.

    .venv/bin/python scripts/bench_grpo.py                 # ~5-8 min on 2 CPU cores
    .venv/bin/python scripts/bench_grpo.py --eval-samples 48
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_data(clips_dir: Path, out_dir: Path) -> Path:
    from mllm4d_lite import qa

    if not any(clips_dir.glob("*/gt.json")):
        from mllm4d_lite import synth

        synth.main(["--out", str(clips_dir), "--num-clips", "32", "--seed", "0"])
    anns = [qa.annotation_from_gt_dir(d) for d in sorted(p.parent for p in clips_dir.glob("*/gt.json"))]
    qa.build_datasets(anns, out_dir, qa.QAConfig())
    return out_dir


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/bench_grpo")
    ap.add_argument("--clips", default=str(REPO / "tiny_data"))
    ap.add_argument("--recipe", default=str(REPO / "recipes/tiny/grpo.yaml"))
    ap.add_argument("--cold-start-steps", type=int, default=1000)
    ap.add_argument("--cold-start-lr", type=float, default=5e-3)
    ap.add_argument("--grpo-steps", type=int, default=None, help="override the recipe's max_steps")
    ap.add_argument("--eval-samples", type=int, default=0, help="held-out bench entries to score (0 = skip)")
    ap.add_argument("--reuse-cold-start", action="store_true", help="reuse OUT/cold_start/adapter if present")
    ap.add_argument("--set", nargs="*", default=[], help="extra grpo overrides key=value")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    import torch

    torch.set_num_threads(1)
    from mllm4d_lite import grpo
    from mllm4d_lite.config import build_config, load_yaml, parse_overrides
    from mllm4d_lite.sft import SFTConfigKit, train

    out = Path(args.out)
    data = make_data(Path(args.clips), out / "data")

    t0 = time.perf_counter()
    adapter = out / "cold_start" / "adapter"
    if not (args.reuse_cold_start and (adapter / "adapter_config.json").is_file()):
        sft_cfg = SFTConfigKit(model="tiny", train_file=str(data / "cot.jsonl"), output_dir=str(out / "cold_start"),
                               max_steps=args.cold_start_steps, learning_rate=args.cold_start_lr,
                               lr_scheduler_type="cosine", warmup_ratio=0.03, logging_steps=25, save_steps=10_000,
                               num_threads=1, lora_r=32, lora_alpha=64, lora_dropout=0.0)
        train(sft_cfg)
    cold_s = time.perf_counter() - t0

    values = load_yaml(args.recipe)
    values.update(adapter_init=str(adapter), train_file=str(data / "rft.jsonl"), output_dir=str(out / "grpo"))
    if args.grpo_steps:
        values["max_steps"] = args.grpo_steps
    values.update(parse_overrides(args.set))
    cfg = build_config(grpo.GRPOConfigKit, values, source=args.recipe)
    t1 = time.perf_counter()
    summary = grpo.run(cfg)
    grpo_s = time.perf_counter() - t1

    rows = grpo.read_metrics(out / "grpo" / "metrics.jsonl")
    first, last = summary["reward_first_fifth"], summary["reward_last_fifth"]
    comps = {}
    for name in cfg.reward_funcs:
        comps[name] = grpo.fifth_means([r[name] for r in rows])
    result = {"grpo_steps": summary["steps"], "grpo_wall_s": round(grpo_s, 1), "s_per_step": summary["s_per_step"],
              "cold_start_wall_s": round(cold_s, 1), "reward_first_fifth": round(first, 4),
              "reward_last_fifth": round(last, 4), "reward_rise": round(last - first, 4),
              "format_final_step": rows[-1]["format"], "format_last_fifth": round(comps["format"][1], 4),
              "components_first_last_fifth": {k: [round(a, 4), round(b, 4)] for k, (a, b) in comps.items()},
              "completion_length_first_last": [rows[0]["completion_length"], rows[-1]["completion_length"]],
              "peak_memory_gb": summary["peak_memory_gb"]}

    if args.eval_samples:
        from mllm4d_lite.data import VideoCache, check_videos, load_records
        from mllm4d_lite.model import load_model_and_processor
        from mllm4d_lite.sft import quick_eval

        entries = load_records(data / "bench.json", args.eval_samples, seed=0)
        cache = VideoCache(cfg.num_frames)
        entries, _ = check_videos(entries, cache)
        for name, path in (("cold_start", adapter), ("grpo", out / "grpo" / "adapter")):
            model, processor = load_model_and_processor("tiny", adapter=str(path), device="cpu")
            ev = quick_eval(model, processor, entries, cache, mode="st-cot", max_new_tokens=cfg.max_completion_length)
            result[f"heldout_{name}"] = {"n": ev["n"], "accuracy": round(ev["accuracy"], 4),
                                         "format_rate": round(ev["format_rate"], 4)}

    (out / "bench_grpo.json").write_text(json.dumps(result, indent=1))
    ok = result["reward_rise"] >= 0.1 and result["format_last_fifth"] >= 0.9 and grpo_s <= 600
    print(f"bench_grpo: {result['grpo_steps']} GRPO steps in {grpo_s:.0f} s ({result['s_per_step']:.2f} s/step), "
          f"cold start {cold_s:.0f} s | reward first fifth {first:.3f} -> last fifth {last:.3f} "
          f"(rise {last - first:+.3f}, target >= 0.1) | format final step {result['format_final_step']:.3f}, "
          f"last fifth {result['format_last_fifth']:.3f} (target >= 0.9) | "
          + " ".join(f"{k} {a:.2f}->{b:.2f}" for k, (a, b) in comps.items())
          + (f" | held-out acc cold {result['heldout_cold_start']['accuracy']:.3f} -> grpo "
             f"{result['heldout_grpo']['accuracy']:.3f}" if args.eval_samples else "")
          + f" | {'PASS' if ok else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
