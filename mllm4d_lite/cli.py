"""The ``mllm4d`` command: one sub-command per stage.

Each stage lives in its own module with ``main(argv: list[str] | None) -> int`` and parses
its own options (``mllm4d <stage> --help``). Modules are imported only when their stage
runs, so ``mllm4d synth`` never pays for importing torch.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

# stage name -> (module, one-line description)
STAGES: dict[str, tuple[str, str]] = {
    "synth": ("mllm4d_lite.curation.synth", "render synthetic stereo clips with exact 4D ground truth"),
    "fetch": ("mllm4d_lite.curation.fetch", "download public stereo footage (KITTI raw + OXTS, side-by-side video) as clips"),
    "curate": ("mllm4d_lite.curation.curate", "stereo clips -> 4D annotations -> SFT / CoT / RFT / bench QA data"),
    "qa": ("mllm4d_lite.qa.stage", "4D annotations (or ground truth) -> SFT / CoT / RFT / bench QA data, est-vs-gt score"),
    "sft": ("mllm4d_lite.train.sft", "supervised fine-tuning (SFT and ST-CoT cold start) with (Q)LoRA"),
    "grpo": ("mllm4d_lite.train.grpo", "GRPO reinforcement fine-tuning with the ST-CoT prompt and ST-reward"),
    "eval": ("mllm4d_lite.eval.evaluate", "evaluate on VLM4D-format benchmarks / score prediction files"),
    "demo": ("mllm4d_lite.demo.run", "run every stage end to end on a profile (tiny by default)"),
    "plan": ("mllm4d_lite.train.plan", "predict a recipe's peak GPU memory per component before launch"),
}

USAGE = "usage: mllm4d [-h] {" + ",".join(STAGES) + "} ...\n"


def _help() -> str:
    lines = [USAGE, "mllm4d-lite: MLLM-4D (4D spatio-temporal reasoning) at small scale.\n", "stages:"]
    lines += [f"  {name:<8} {desc}" for name, (_, desc) in STAGES.items()]
    lines += ["", "Run `mllm4d <stage> --help` for a stage's options."]
    return "\n".join(lines) + "\n"


def setup_logging() -> None:
    level = os.environ.get("MLLM4D_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from mllm4d_lite.train.distributed import quiet_other_ranks

    quiet_other_ranks()  # under accelerate launch / torchrun, rank 0 alone logs and shows progress


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(_help())
        return 0 if argv else 2
    if argv[0] == "--version":
        from mllm4d_lite import __version__

        print(f"mllm4d-lite {__version__}")
        return 0
    stage, rest = argv[0], argv[1:]
    if stage not in STAGES:
        sys.stderr.write(USAGE + f"mllm4d: error: unknown stage {stage!r}; choose from {list(STAGES)}\n")
        return 2
    module = importlib.import_module(STAGES[stage][0])
    setup_logging()
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
