"""Every stage end to end on a profile (``mllm4d demo``)."""
