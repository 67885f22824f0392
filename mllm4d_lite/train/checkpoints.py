"""What a training run saves and resumes from: the LoRA adapter, the trainer's checkpoints, and
``run_key.json`` (what the checkpoints were trained on: :func:`run_key`, :func:`resume_point`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from mllm4d_lite.config import ConfigError
from mllm4d_lite.io import atomic_write_json, temp_prefix

log = logging.getLogger(__name__)


def save_adapter(model, adapter_dir: str | Path, **save_kwargs: Any) -> Path:
    """Save a peft adapter to ``adapter_dir`` through a unique hidden temporary folder beside it
    (:func:`mllm4d_lite.io.temp_prefix`), replacing any old one, so a crash never leaves a
    half-written adapter and a failed save (a full disk) leaves no temporary folder."""
    adapter_dir = Path(adapter_dir)
    adapter_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(adapter_dir.name), suffix=".tmp", dir=adapter_dir.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the adapter is as readable as any folder
        model.save_pretrained(str(tmp), **save_kwargs)
        if adapter_dir.exists():
            shutil.rmtree(adapter_dir)
        tmp.replace(adapter_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return adapter_dir


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


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


# ----------------------------------------------------------------------------------------------
# what a run's checkpoints were made from (resume keyed on content)
# ----------------------------------------------------------------------------------------------

RUN_KEY_FILE = "run_key.json"
#: settings a resumed run may change: how long it trains, how often it logs and saves, where and
#: on how many threads it runs, the optional evaluation after training. Every other setting is
#: part of what the checkpoints were trained with.
RESUME_FREE_FIELDS = frozenset({
    "output_dir", "resume", "max_steps", "num_train_epochs", "logging_steps", "save_steps", "save_total_limit",
    "num_threads", "device", "gradient_checkpointing", "cache_videos", "sample_every",
    "eval_file", "eval_mode", "eval_max_samples", "eval_max_new_tokens"})
#: settings naming files: compared as absolute paths (a resume from another working folder is the same run)
_PATH_FIELDS = ("train_file", "adapter_init")


def content_digest(paths: list[str | Path]) -> str:
    """``sha256:<hex>`` of the bytes of ``paths`` in order (a folder: each file below it, sorted by
    relative path, hidden files skipped, each name hashed with its bytes); a missing path hashes as
    missing."""
    h = hashlib.sha256()
    for path in paths:
        path = Path(path)
        files = ([path] if path.is_file() else
                 sorted(p for p in path.rglob("*") if p.is_file() and not any(
                     part.startswith(".") for part in p.relative_to(path).parts)) if path.is_dir() else [])
        h.update(f"<{len(files)} files>".encode())
        for file in files:
            h.update(str(file.relative_to(path) if path.is_dir() else file.name).encode() + b"\0")
            with file.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
            h.update(b"\0")
    return "sha256:" + h.hexdigest()


def run_key(cfg: Any) -> dict[str, Any]:
    """What a training run's checkpoints depend on: ``settings`` (the resolved config without
    :data:`RESUME_FREE_FIELDS`, file settings as absolute paths) and ``inputs_digest``
    (:func:`content_digest` of ``train_file`` and of the ``adapter_init`` folder when set: the
    records and the starting / KL-reference adapter). Videos are not hashed."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUME_FREE_FIELDS}
    for name in _PATH_FIELDS:
        if settings.get(name):
            settings[name] = os.path.abspath(settings[name])
    inputs = [cfg.train_file] + ([cfg.adapter_init] if getattr(cfg, "adapter_init", None) else [])
    return {"settings": json.loads(json.dumps(settings, default=str)), "inputs_digest": content_digest(inputs)}


def remove_checkpoints(folder: str | Path) -> list[Path]:
    """Delete every ``checkpoint-N`` folder in ``folder``; returns them."""
    folder = Path(folder)
    found = [p for p in folder.iterdir() if _CHECKPOINT_NAME.match(p.name) and p.is_dir()] if folder.is_dir() else []
    for path in found:
        shutil.rmtree(path)
    return found


def resume_point(cfg: Any, out: str | Path, checkpoints: str | Path, resume_from: str | None) -> str | None:
    """Check ``resume_from`` (the checkpoint :func:`checkpoint_to_resume` chose, or None for a fresh
    run) against ``OUT/run_key.json`` (:func:`run_key`) and write the key of this run there; returns
    the checkpoint to resume from, or None to train from step 0.

    - Other settings than the checkpoints were trained with: :class:`ConfigError` (they would mix
      two runs), naming the changed settings.
    - Same settings, but the records (or the ``adapter_init`` folder) changed under the same path:
      a warning says so, the old checkpoints are removed and the run starts over.
    - A run without ``resume``: checkpoints of an earlier run in ``checkpoints`` are removed (a later
      ``--resume`` must never pick one of them up), with a warning.
    - A folder from before run keys: resumed as before, with a warning that the inputs are unchecked.
    """
    out, key_path = Path(out), Path(out) / RUN_KEY_FILE
    key = run_key(cfg)
    if resume_from is not None:
        old = None
        if key_path.is_file():
            try:
                old = json.loads(key_path.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError):
                old = None
            if not isinstance(old, dict) or not isinstance(old.get("settings"), dict):
                raise ConfigError(f"{key_path} is unreadable, so what the checkpoints in {checkpoints} were trained "
                                  "on is unknown; run without --resume to start over")
        if old is None:
            log.warning("%s has no %s (a run from before resume keys): resuming from %s without checking that the "
                        "records and settings are the same", out, RUN_KEY_FILE, resume_from)
        elif old["settings"] != key["settings"]:
            changed = {k: (old["settings"].get(k), v) for k, v in key["settings"].items()
                       if old["settings"].get(k) != v}
            changed.update({k: (v, None) for k, v in old["settings"].items() if k not in key["settings"]})
            raise ConfigError(f"--resume: the checkpoints in {checkpoints} were trained with other settings (changed: "
                              f"{changed}); resume with the same settings, use another --output-dir, or run without "
                              "--resume to start over")
        elif old.get("inputs_digest") != key["inputs_digest"]:
            log.warning("%s%s changed since the checkpoints in %s were saved (inputs digest %s -> %s): starting over "
                        "from step 0; the old checkpoints are removed", cfg.train_file,
                        f" (or {cfg.adapter_init})" if getattr(cfg, "adapter_init", None) else "", checkpoints,
                        str(old.get("inputs_digest"))[:19], key["inputs_digest"][:19])
            resume_from = None
    if resume_from is None:
        removed = remove_checkpoints(checkpoints)
        if removed and not cfg.resume:
            log.warning("starting over: removed %d checkpoint(s) of an earlier run from %s (--resume continues a run)",
                        len(removed), checkpoints)
    atomic_write_json(key_path, key)
    return resume_from
