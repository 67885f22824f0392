"""Phases 2-3: SFT, ST-CoT cold start and GRPO of a Qwen-VL with (Q)LoRA; the ST-reward."""
