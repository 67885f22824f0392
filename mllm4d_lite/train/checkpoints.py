"""What a training run saves and resumes from: the LoRA adapter and the trainer's checkpoints."""

from __future__ import annotations

import json
import logging
import re
import shutil
import struct
import zipfile
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


#: files every kit checkpoint holds (``save_only_model=False``): trainer state, optimizer, scheduler
REQUIRED_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
#: the weights: a LoRA adapter (the kit's runs), else a full model
WEIGHT_FILES = (("adapter_config.json", "adapter_model.safetensors"), ("adapter_config.json", "adapter_model.bin"),
                ("model.safetensors",), ("model.safetensors.index.json",), ("pytorch_model.bin",))
_CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def _file_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete file of its kind (None when it is): JSON parses, a
    safetensors file is exactly as long as its header says, a ``torch.save`` file is a readable
    zip archive (its directory sits at the end, so any truncation loses it)."""
    if not path.is_file():
        return f"{path.name} is missing"
    size = path.stat().st_size
    if size == 0:
        return f"{path.name} is empty"
    try:
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".safetensors":
            with path.open("rb") as fh:
                head = fh.read(8)
                n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
                if n < 0 or 8 + n > size:
                    return f"{path.name} is truncated (header)"
                header = json.loads(fh.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
            if size != 8 + n + end:
                return f"{path.name} is truncated ({size} of {8 + n + end} bytes)"
        elif path.suffix in (".pt", ".pth", ".bin"):
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if info.header_offset + info.compress_size > size:
                        return f"{path.name} is truncated"
    except (ValueError, KeyError, TypeError, IndexError, OSError, zipfile.BadZipFile, struct.error) as err:
        return f"{path.name} is unreadable ({type(err).__name__})"
    return None


def checkpoint_problem(checkpoint: str | Path) -> str | None:
    """Why a ``checkpoint-N`` folder cannot be resumed from (None when it is complete): one of
    :data:`REQUIRED_FILES` is missing or torn, its weights (:data:`WEIGHT_FILES`) are, or an
    ``rng_state*.pth`` / ``training_args.bin`` present is torn."""
    checkpoint = Path(checkpoint)
    for name in REQUIRED_FILES:
        problem = _file_problem(checkpoint / name)
        if problem:
            return problem
    weights = next((group for group in WEIGHT_FILES if (checkpoint / group[-1]).exists()), None)
    if weights is None:
        return "no adapter_model.safetensors (or model weights)"
    for name in weights:
        problem = _file_problem(checkpoint / name)
        if problem:
            return problem
    for path in sorted(checkpoint.glob("rng_state*.pth")) + [checkpoint / "training_args.bin"]:
        problem = _file_problem(path) if path.exists() else None
        if problem:
            return problem
    return None


def checkpoint_to_resume(folder: str | Path) -> str:
    """The newest complete ``checkpoint-*`` in ``folder`` (``resume: true``).

    A newer checkpoint that is incomplete (a run killed while saving it: a file missing or
    truncated, see :func:`checkpoint_problem`) is passed over with a warning naming it and the
    reason. None there, or none complete, is a :class:`~mllm4d_lite.config.ConfigError`, raised
    before the run writes anything."""
    folder = Path(folder)
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = _CHECKPOINT_NAME.match(path.name)
            if match and path.is_dir():
                found.append((int(match.group(1)), path))
    if not found:
        raise ConfigError(f"`resume: true` but {folder} holds no checkpoint-*: nothing to resume; run "
                          "without --resume (or point --output-dir at the interrupted run)")
    torn = []
    for _, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            if torn:
                log.warning("%s incomplete (%s); resuming from the newest complete checkpoint %s",
                            ", ".join(f"{p.name} is" for p, _ in torn), "; ".join(r for _, r in torn), path)
            else:
                log.info("resuming from %s", path)
            return str(path)
        torn.append((path, problem))
    raise ConfigError(f"`resume: true` but every checkpoint in {folder} is incomplete ("
                      + "; ".join(f"{p.name}: {r}" for p, r in torn[:3]) + "); run without --resume to start over")


def checkpoint_step(checkpoint: str | Path) -> int:
    """The optimizer step a ``checkpoint-N`` folder was saved at."""
    return int(Path(checkpoint).name.split("-")[-1])
