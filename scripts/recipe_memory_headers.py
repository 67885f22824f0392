"""The "Peak memory" comment of the 24 GB recipes, written from the memory planner's prediction.

    python scripts/recipe_memory_headers.py            # print each recipe's block
    python scripts/recipe_memory_headers.py --check    # exit 1 when a header differs from the planner
    python scripts/recipe_memory_headers.py --write    # rewrite the blocks in place (comments only)

Each block gives the figures ``mllm4d plan --config <recipe>`` prints (base weights, LoRA state,
activations at the peak, the peak allocated and on the card), labelled as predictions with that
command. Only comment lines change: the file's YAML is checked to load to the same values.
A recipe's block replaces its ``# Peak memory`` lines (or goes right before ``# Paper``).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RECIPES = tuple(f"recipes/{p}/{s}.yaml" for p in ("qwen2.5-vl-3b", "qwen3-vl-4b") for s in ("sft", "cold_start", "grpo"))
WHOSE = {"SFT": "", "cold start": " (the SFT adapter's)", "GRPO": " (the cold-start adapter's)"}


def memory_block(recipe: str) -> str:
    """The comment block for ``recipe`` (a path relative to the checkout), from ``plan_recipe``."""
    from mllm4d_lite.train.plan import plan_recipe

    p = plan_recipe(recipe)
    s, c, t = p.setup, p.components, p.tokens
    held = c["persistent"]
    lora_rows = [k for k in held if k.startswith(("LoRA", "AdamW", "reference"))]
    base = {k: v for k, v in held.items() if k not in lora_rows}
    weights, nf4, vision = sum(base.values()), base["LLM decoder Linear weights (NF4)"], base["vision tower + mergers"]
    embed = sum(v for k, v in base.items() if k.startswith(("embeddings", "lm_head")))
    grads, lora_w = c["train"]["LoRA gradients"], held["LoRA weights"]
    adam, ref = held["AdamW moments (2 per LoRA param)"], held.get("reference adapter (frozen fp32 copy)", 0.0)
    lora = lora_w + adam + ref + grads
    if p.peak_phase != "train":
        raise SystemExit(f"{recipe}: the predicted peak is in {p.peak_phase}; this block describes a training peak")
    act = p.phases["train"] - weights - lora
    lines = ["# Peak memory, PREDICTED by the kit's planner, not measured (no GPU run recorded yet), GB = 2^30 bytes:",
             f"#   mllm4d plan --config {recipe}",
             '#   (its rules: docs/memory.md; to measure on a GPU: bash scripts/gpu_check.sh, docs/memory.md "GPU check")']
    if s.stage == "sft":
        lines += ["#   on the transformers + peft + bitsandbytes path (the fallback where Unsloth does not import):",
                  f"#   - base weights {weights:.2f} = LLM projections in NF4 {nf4:.2f} + embeddings {embed:.2f} "
                  f"+ vision tower {vision:.2f}",
                  "#     (these two in fp32: peft's k-bit preparation upcasts every unquantised parameter)"]
    else:
        lines.append(f"#   - base weights {weights:.2f} = LLM projections in NF4 {nf4:.2f} + embeddings {embed:.2f} "
                     f"+ vision tower {vision:.2f} (bf16)")
    dtype = "fp32" if (s.lora_fp32 or s.quant == "none") else "bf16"
    head = (f"#   - LoRA{WHOSE[s.label]} {lora:.2f} = r {s.lora.r}, {s.lora.params / 1e6:.1f} M params in {dtype}: "
            f"weights {lora_w:.2f} + gradients {grads:.2f}")
    tail = f" + AdamW moments {adam:.2f}" + (f" + TRL's frozen reference copy {ref:.2f}" if ref else "")
    lines += [head + tail] if len(head + tail) <= 110 else [head, "#    " + tail]
    if s.stage == "grpo":
        gen = max((k for k in p.phases if k != "train"), key=lambda k: p.phases[k])
        kv = c["generation: decoding"]["KV cache (prompts + completions)"]
        lines += [f"#   - activations {act:.2f} at a training micro-batch of {s.batch} x {t['sequence']:,} tokens "
                  f"({t['visual_per_clip']} visual;",
                  f"#     every completion at {s.answer_tokens}); generating {s.generation_batch} completions (KV cache "
                  f"{kv:.2f}) peaks lower, {p.phases[gen]:.1f} in {gen.split(':')[-1].strip()}"]
    else:
        lines.append(f"#   - activations {act:.2f} at a micro-batch of {s.batch} x {t['sequence']:,} tokens "
                     f"({t['visual_per_clip']} visual; {s.prompt_text_tokens} prompt + {s.answer_tokens} answer assumed)")
    lines.append(f"#   predicted peak: {p.peak_allocated_gb:.1f} GB allocated, {p.peak_gb:.1f} GB on the card of "
                 f"{p.gpu_gb:g} (+10 % allocator reserve, 0.6 CUDA context): {'fits' if p.fits else 'DOES NOT FIT'}")
    return "\n".join(lines) + "\n"


def with_block(text: str, block: str) -> str:
    """``text`` with its ``# Peak memory`` comment lines replaced by ``block`` (inserted before the
    ``# Paper`` line when it has none); the YAML values must not change."""
    import yaml

    lines = text.splitlines(keepends=True)
    end = next(i for i, line in enumerate(lines) if line.startswith("# Paper"))
    start = next((i for i, line in enumerate(lines[:end]) if line.startswith("# Peak memory")), end)
    new = "".join(lines[:start]) + block + "".join(lines[end:])
    if yaml.safe_load(new) != yaml.safe_load(text):
        raise RuntimeError("rewriting the header changed the recipe's values; nothing written")
    return new


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    stale = []
    for recipe in RECIPES:
        path = REPO / recipe
        text = path.read_text()
        new = with_block(text, memory_block(recipe))
        if "--write" in args and new != text:
            path.write_text(new)
        elif "--check" in args and new != text:
            stale.append(recipe)
        elif not args:
            print(memory_block(recipe))
    if stale:
        print(f"stale memory headers: {stale}; run `python scripts/recipe_memory_headers.py --write`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    logging.disable(logging.WARNING)  # the planner's notes would bury the headers (the script only, not main())
    import os

    os.chdir(REPO)  # the recipes name their paths from the checkout's root
    sys.exit(main())
