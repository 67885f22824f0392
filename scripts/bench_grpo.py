"""Benchmark of the GRPO stage on the tiny CPU profile: does the ST-reward rise?

Starts from what the demo built (``bash run.sh``): the ST-CoT cold-start adapter and the curated
``rft.jsonl`` / ``bench.json`` under ``runs/demo``, and runs ``recipes/tiny/grpo.yaml`` (plus any
``--set key=value`` overrides) into ``--out``.

Prints the mean total reward over the first and the last fifth of GRPO steps, each component,
the format component at the end, s/step and the wall time. Targets: GRPO run
<= 10 min, last fifth - first fifth >= 0.1, format component ends >= 0.9; and GRPO does not
lower held-out accuracy below the cold start's (the held-out check below, every category).

The training reward of a step depends on which prompts it drew as much as on the policy: over
less than one pass through the prompts, the fifths hold different prompts. So the run
trains on a pool of prompts sized to one fifth of its prompt draws (``--pool``, default): every
fifth is one whole pass, and first vs last fifth compare the same prompts. Since it trains on
those prompts five times, a rise can also be GRPO fitting them: the held-out check (greedy ST-CoT
replies to every question of the benchmark, before and after, per category; categories GRPO
trained on are starred) says whether it generalises, and whether it unlearns the categories it
does not train on.

Before and after the run it also samples ``--start-samples`` fresh replies per pool prompt (as GRPO
samples them) from the cold start and from the GRPO adapter, and prints their mean reward: the
pool's reward outside training. The cold start's figure says where the first fifth should sit if
the policy did not learn within it; the pair is a second, independent before/after of the rise.

The demo curates with ``--rft-fraction 0.25``, so ``rft.jsonl`` holds prompts of clips that SFT and
the cold start never saw. Figures per seed: docs/results.md.

    .venv/bin/python scripts/bench_grpo.py                        # ~3.5 min after `bash run.sh`
    .venv/bin/python scripts/bench_grpo.py --set seed=1 beta=0.1
    .venv/bin/python scripts/bench_grpo.py --set max_steps=150 --eval-samples 0
    .venv/bin/python scripts/bench_grpo.py --cold-start runs/other/adapter --curate runs/other/curate
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", default="runs/demo", help="demo output folder (cold_start/adapter, curate/)")
    ap.add_argument("--cold-start", default=None, help="cold-start adapter folder (default: DEMO/cold_start/adapter)")
    ap.add_argument("--curate", default=None,
                    help="curate folder with rft.jsonl and bench.json (default: DEMO/curate), e.g. clips the "
                         "cold start never saw")
    ap.add_argument("--out", default="runs/bench_grpo")
    ap.add_argument("--recipe", default=str(REPO / "recipes/tiny/grpo.yaml"))
    ap.add_argument("--pool", type=int, default=-1,
                    help="prompts to train on (-1 = one fifth of the run's prompt draws; 0 = all)")
    ap.add_argument("--eval-samples", type=int, default=-1,
                    help="held-out bench entries to score, every category (-1 = the whole benchmark, 0 = skip)")
    ap.add_argument("--start-samples", type=int, default=8,
                    help="replies sampled per pool prompt, as GRPO samples them, from the cold start before "
                         "and from the GRPO adapter after training (0 = skip): the pool's reward outside the run")
    ap.add_argument("--set", nargs="*", default=[], help="grpo overrides key=value")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from mllm4d_lite.config import build_config, load_yaml, parse_overrides
    from mllm4d_lite.train import grpo
    from mllm4d_lite.train.callbacks import read_metrics
    from mllm4d_lite.train.grpo_data import load_pool
    from mllm4d_lite.train.grpo_metrics import fifth_means

    demo = Path(args.demo)
    adapter = Path(args.cold_start) if args.cold_start else demo / "cold_start" / "adapter"
    curate = Path(args.curate) if args.curate else demo / "curate"
    rft, bench = curate / "rft.jsonl", curate / "bench.json"
    missing = [str(p) for p in (adapter / "adapter_config.json", rft, bench) if not p.is_file()]
    if missing:
        sys.exit(f"bench_grpo: missing {missing}; run the demo first (`bash run.sh`) or pass --demo / "
                 "--cold-start / --curate")
    out = Path(args.out)
    values = load_yaml(args.recipe)
    values.update(adapter_init=str(adapter), train_file=str(rft), output_dir=str(out / "grpo"))
    values.update(parse_overrides(args.set))
    cfg = build_config(grpo.GRPOConfig, values, source=args.recipe)
    pool = round(cfg.max_steps // 5 * cfg.prompts_per_step()) if args.pool < 0 else args.pool
    cfg.max_samples = pool or None
    cfg.validate()

    pool_reward: dict = {}
    if args.start_samples > 0:  # the pool and its frames are read once, for before and after
        import torch  # noqa: F401  (before the first decode, see mllm4d_lite/curation/video.py)

        from mllm4d_lite.train.video_inputs import VideoCache, check_videos

        pool_cache = VideoCache(cfg.num_frames)
        pool_records, _ = check_videos(load_pool(cfg), pool_cache)
        pool_reward["cold_start"] = sampled_pool_reward(cfg, adapter, pool_records, pool_cache, args.start_samples)

    t0 = time.perf_counter()
    summary = grpo.run(cfg)
    grpo_s = time.perf_counter() - t0
    rows = read_metrics(out / "grpo" / "metrics.jsonl")
    comps = {name: fifth_means([r[name] for r in rows]) for name in cfg.reward_funcs}
    first, last = summary["reward_first_fifth"], summary["reward_last_fifth"]
    fmt_last = comps["format"][1] if "format" in comps else float("nan")
    result = {"grpo_steps": summary["steps"], "grpo_wall_s": round(grpo_s, 1), "s_per_step": summary["s_per_step"],
              "train_prompts": summary["train_prompts"], "fifths_see_same_prompts": summary["fifths_see_same_prompts"],
              "reward_first_fifth": round(first, 4), "reward_last_fifth": round(last, 4),
              "reward_rise": round(last - first, 4), "format_last_fifth": round(fmt_last, 4),
              "components_first_last_fifth": {k: [round(a, 4), round(b, 4)] for k, (a, b) in comps.items()},
              "kl_last_fifth": round(fifth_means([r["kl"] or 0.0 for r in rows])[1], 4),
              "train_accuracy_by_category_first_last_fifth": summary["accuracy_by_category_first_last_fifth"],
              "peak_memory_gb": summary["peak_memory_gb"], "overrides": args.set}

    if pool_reward:
        pool_reward["grpo"] = sampled_pool_reward(cfg, out / "grpo" / "adapter", pool_records, pool_cache,
                                                  args.start_samples)
        result["pool_reward_sampled"] = {"replies_per_prompt": args.start_samples, **pool_reward}

    if args.eval_samples:
        from mllm4d_lite.train.loading import load_model_and_processor
        from mllm4d_lite.train.records import load_records
        from mllm4d_lite.train.sft import quick_eval
        from mllm4d_lite.train.video_inputs import VideoCache, check_videos

        entries = load_records(bench, None if args.eval_samples < 0 else args.eval_samples, seed=0)
        cache = VideoCache(cfg.num_frames)
        entries, _ = check_videos(entries, cache)
        for name, path in (("cold_start", adapter), ("grpo", out / "grpo" / "adapter")):
            model, processor = load_model_and_processor(cfg.model, adapter=str(path), device="cpu")
            ev = quick_eval(model, processor, entries, cache, mode="st-cot", max_new_tokens=cfg.max_completion_length)
            result[f"heldout_{name}"] = {"n": ev["n"], "accuracy": round(ev["accuracy"], 4),
                                         "format_rate": round(ev["format_rate"], 4),
                                         "by_category": {k: {"n": v["n"], "accuracy": round(v["accuracy"], 4)}
                                                         for k, v in sorted(ev["by_category"].items())}}

    targets = {"rise >= 0.1": result["reward_rise"] >= 0.1, "format >= 0.9": fmt_last >= 0.9,
               "GRPO <= 10 min": grpo_s <= 600}
    held = ""
    if args.eval_samples:
        c, g = result["heldout_cold_start"], result["heldout_grpo"]
        trained = set(cfg.train_categories or c["by_category"])
        cats = ", ".join(f"{k}{'*' if k in trained else ''} ({v['n']}) {v['accuracy']:.2f}->"
                         f"{g['by_category'][k]['accuracy']:.2f}" for k, v in c["by_category"].items())
        held = (f" | held-out ({c['n']} questions, every category) accuracy cold start {c['accuracy']:.3f} -> "
                f"GRPO {g['accuracy']:.3f} ({g['accuracy'] - c['accuracy']:+.3f}), format {c['format_rate']:.2f} -> "
                f"{g['format_rate']:.2f}; per category (* = trained on): {cats}")
        targets["held-out >= cold start"] = g["accuracy"] >= c["accuracy"]
    result["targets"] = targets
    (out / "bench_grpo.json").write_text(json.dumps(result, indent=1))
    print(f"bench_grpo: {result['grpo_steps']} GRPO steps in {grpo_s:.0f} s ({result['s_per_step']:.2f} s/step) on "
          f"{result['train_prompts']} prompts ({'same' if result['fifths_see_same_prompts'] else 'different'} "
          f"prompts in each fifth) | reward first fifth {first:.3f} -> last fifth {last:.3f} "
          f"(rise {last - first:+.3f}, target >= 0.1) | format last fifth {fmt_last:.3f} (target >= 0.9) | "
          + " ".join(f"{k} {a:.2f}->{b:.2f}" for k, (a, b) in comps.items())
          + f" | KL last fifth {result['kl_last_fifth']:.3f} | training accuracy by category, first -> last "
          f"fifth: " + ", ".join(f"{k} {_fmt(a)}->{_fmt(b)}" for k, (a, b) in
                                 result["train_accuracy_by_category_first_last_fifth"].items())
          + pool_line(result.get("pool_reward_sampled")) + held + " | "
          + ", ".join(f"{name} {'PASS' if hit else 'MISS'}" for name, hit in targets.items()))
    return 0


def sampled_pool_reward(cfg, adapter: Path, records: list, cache, replies: int) -> dict:
    """Mean total reward (the recipe's weights) of ``replies`` fresh replies per prompt of the GRPO
    pool (``records``, frames from ``cache``), sampled as GRPO samples them (temperature, top-p/k,
    min-p, length), from ``adapter``: the pool's reward outside the run, before and after, per category."""
    import torch

    from mllm4d_lite.train.grpo_data import prompt_messages, reward_columns
    from mllm4d_lite.train.grpo_trainer import vision_token_ids
    from mllm4d_lite.train.loading import load_model_and_processor
    from mllm4d_lite.train.rewards import get_reward_funcs
    from mllm4d_lite.train.video_inputs import video_kwargs

    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    model, processor = load_model_and_processor(cfg.model, adapter=str(adapter), device="cpu", dtype=cfg.dtype,
                                                max_pixels=cfg.max_pixels, min_pixels=cfg.min_pixels)
    tok = processor.tokenizer
    suppress = vision_token_ids(tok)
    funcs = get_reward_funcs(cfg.reward_funcs, strict_release=cfg.strict_release_rewards)
    per_prompt: list[tuple[str, float]] = []
    for start in range(0, len(records), 2):
        batch = records[start:start + 2]
        texts = [processor.apply_chat_template(prompt_messages(r, cfg.use_st_cot_prompt), tokenize=False,
                                               add_generation_prompt=True) for r in batch]
        enc = processor(text=texts, padding=True, return_tensors="pt",
                        **video_kwargs(processor, [cache.get(r["video_path"]) for r in batch]))
        with torch.no_grad():
            ids = model.generate(**enc, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                                 top_k=cfg.top_k, min_p=cfg.min_p or None, max_new_tokens=cfg.max_completion_length,
                                 num_return_sequences=replies, suppress_tokens=suppress,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
        texts_out = tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for j, rec in enumerate(batch):
            completions = texts_out[j * replies:(j + 1) * replies]
            columns = {k: [v] * replies for k, v in reward_columns(rec).items()}
            scores = [f(completions, **columns) for f in funcs]
            total = sum(w * sum(sc) / replies for w, sc in zip(cfg.reward_weights, scores))
            per_prompt.append((str(rec.get("category")), total))
    by_category: dict[str, list[float]] = {}
    for category, total in per_prompt:
        by_category.setdefault(category, []).append(total)
    return {"prompts": len(per_prompt), "reward": round(sum(t for _, t in per_prompt) / len(per_prompt), 4),
            "by_category": {k: round(sum(v) / len(v), 4) for k, v in sorted(by_category.items())}}


def pool_line(pool: dict | None) -> str:
    if not pool:
        return ""
    before, after = pool["cold_start"], pool["grpo"]
    return (f" | pool reward, {pool['replies_per_prompt']} fresh replies per prompt outside the run: cold start "
            f"{before['reward']:.3f} -> GRPO {after['reward']:.3f} ({after['reward'] - before['reward']:+.3f})")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
