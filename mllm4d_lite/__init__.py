"""mllm4d-lite: a single-GPU reproduction kit of MLLM-4D (4D spatio-temporal reasoning from stereo video)."""

__version__ = "0.1.0"
