"""What a training run saves and resumes from: the LoRA adapter and the trainer's checkpoints."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from mllm4d_lite.config import ConfigError

log = logging.getLogger(__name__)


def save_adapter(model, adapter_dir: str | Path, **save_kwargs: Any) -> Path:
    """Save a peft adapter to ``adapter_dir`` through ``<adapter_dir>.tmp``, replacing any old one,
    so a crash never leaves a half-written adapter."""
    adapter_dir = Path(adapter_dir)
    tmp = adapter_dir.with_name(adapter_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp), **save_kwargs)
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    tmp.replace(adapter_dir)
    return adapter_dir


def checkpoint_to_resume(folder: str | Path) -> str:
    """The last ``checkpoint-*`` in ``folder`` (``resume: true``). None there is a
    :class:`~mllm4d_lite.config.ConfigError`, raised before the run writes anything."""
    from transformers.trainer_utils import get_last_checkpoint

    folder = Path(folder)
    found = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    if found is None:
        raise ConfigError(f"`resume: true` but {folder} holds no checkpoint-*: nothing to resume; run "
                          "without --resume (or point --output-dir at the interrupted run)")
    log.info("resuming from %s", found)
    return found


def checkpoint_step(checkpoint: str | Path) -> int:
    """The optimizer step a ``checkpoint-N`` folder was saved at."""
    return int(Path(checkpoint).name.split("-")[-1])
