"""mllm4d-lite: a single-GPU reproduction kit of MLLM-4D (4D spatio-temporal reasoning from stereo video)."""

import os
import sys

__version__ = "0.1.0"

# DeepSpeed (installed for the launch configs, docs/scaling.md) is imported by transformers whenever a
# model loads. On a machine without an NVIDIA GPU its accelerator probe then prints "Setting
# accelerator to CPU" on stdout, which would mix into the stages' output. Naming the CPU accelerator
# up front silences it; a machine with an NVIDIA GPU, or a DS_ACCELERATOR set by the user, is left alone.
if sys.platform.startswith("linux") and "DS_ACCELERATOR" not in os.environ and not os.path.exists("/dev/nvidiactl"):
    os.environ["DS_ACCELERATOR"] = "cpu"
