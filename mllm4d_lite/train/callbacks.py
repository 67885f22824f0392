"""Trainer callbacks and the run records they keep, shared by the SFT and GRPO stages.

- :func:`quiet_progress`: transformers' progress bar without its dict dump on every log.
- :func:`thread_share_callback` / :func:`follow_thread_share`: torch's CPU threads follow a file
  (``$MLLM4D_THREADS_FILE``, :data:`THREADS_FILE_ENV`), which the demo writes when a core frees up.
- ``metrics.jsonl``, one JSON row per logging step: :func:`append_jsonl_row`, :func:`read_metrics`,
  :func:`trim_metrics` (a resumed run drops the rows after its checkpoint), :func:`peak_memory_gb`.
- :func:`sft_metrics_callback`: the SFT stage's row and log line per logging interval (GRPO's is in
  :mod:`mllm4d_lite.train.grpo_metrics`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

THREADS_FILE_ENV = "MLLM4D_THREADS_FILE"


def quiet_progress(trainer) -> None:
    """Keep transformers' progress bar but drop its dict dump on every log (the stages log a line)."""
    from transformers.trainer_callback import ProgressCallback

    class QuietProgress(ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            return

    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(QuietProgress())


def thread_share_callback(path: str | Path | None = None):
    """A ``TrainerCallback`` that, before each step, sets torch's CPU threads to the number written
    in ``path`` (default: the file ``$MLLM4D_THREADS_FILE`` names); None when neither is given.

    The demo trains on one core while evaluations run on the other, then writes the core count to
    the file once they are done, so the training takes the free core. Threads change the speed only:
    a tiny-model run gives the same weights with 1 or 2 threads (README, "The demo"). A missing,
    empty or non-numeric file leaves the threads as they are.
    """
    import torch
    from transformers import TrainerCallback

    path = path or os.environ.get(THREADS_FILE_ENV)
    if not path:
        return None
    path = Path(path)

    class FollowThreads(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            try:
                n = int(path.read_text().strip())
            except (OSError, ValueError):
                return
            if n > 0 and n != torch.get_num_threads():
                log.info("step %d: %d CPU thread(s) from here on (%s)", state.global_step, n, path)
                torch.set_num_threads(n)

    return FollowThreads()


def follow_thread_share(trainer) -> None:
    """Add :func:`thread_share_callback` to ``trainer`` when ``$MLLM4D_THREADS_FILE`` is set."""
    callback = thread_share_callback()
    if callback is not None:
        trainer.add_callback(callback)


# ----------------------------------------------------------------------------------------------
# metrics.jsonl
# ----------------------------------------------------------------------------------------------

def peak_memory_gb(device: str) -> float:
    """Peak CUDA memory allocated (on a CUDA ``device``) or the peak resident set size of this
    process (CPU), GB."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: kilobytes


def append_jsonl_row(path: Path, row: dict[str, Any]) -> None:
    """Append ``row`` as one JSON line to ``path`` (``metrics.jsonl``, GRPO's ``samples.jsonl``)."""
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def _jsonl_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(line, row)`` for each complete JSON line of ``path``; a torn line (a run killed while
    appending) is dropped."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s: dropped an incomplete line (a run stopped while writing it)", path)
            continue
        if isinstance(row, dict):
            rows.append((line, row))
    return rows


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` (none when the file is missing; a torn last line is dropped)."""
    path = Path(path)
    return [row for _, row in _jsonl_rows(path)] if path.is_file() else []


def trim_metrics(path: Path, last_step: int) -> None:
    """Rewrite ``metrics.jsonl`` (or ``samples.jsonl``) with its rows of ``step`` <= ``last_step``
    only (a run resumed from the checkpoint of that step logs the later ones again), atomically;
    torn lines are dropped, and ``last_step`` 0 leaves no metrics row (they start at step 1)."""
    from mllm4d_lite.io import atomic_write_text

    path = Path(path)
    kept = [line for line, row in _jsonl_rows(path) if row.get("step", 0) <= last_step] if path.is_file() else []
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def sft_metrics_callback(metrics_path: Path, collator, device: str):
    """The SFT stage's ``TrainerCallback``: one ``metrics.jsonl`` row and one log line per logging
    interval (loss, lr, s/step, tokens/s from ``collator.num_tokens``, peak memory), written by the
    main process only in a multi-process run (tokens/s and memory are then the main process's)."""
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def __init__(self):
            self.t0 = time.perf_counter()
            self.step0 = 0
            self.tokens0 = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.t0, self.step0, self.tokens0 = time.perf_counter(), state.global_step, collator.num_tokens

        def on_log(self, args, state, control, logs=None, **kwargs):
            # every process of a multi-process run calls on_log with the same (all-reduced) loss:
            # the main one alone writes the row
            if not logs or "loss" not in logs or not state.is_world_process_zero:
                return
            now, steps = time.perf_counter(), max(state.global_step - self.step0, 1)
            dt = now - self.t0
            row = {"step": state.global_step, "max_steps": state.max_steps, "epoch": round(state.epoch or 0.0, 4),
                   "loss": float(logs["loss"]), "lr": float(logs.get("learning_rate", 0.0)),
                   "s_per_step": dt / steps, "tokens_per_s": (collator.num_tokens - self.tokens0) / max(dt, 1e-9),
                   "peak_mem_gb": peak_memory_gb(device)}
            for key in ("grad_norm", "mean_token_accuracy"):
                if key in logs:
                    row[key] = float(logs[key])
            append_jsonl_row(metrics_path, row)
            log.info("step %d/%d | loss %.4f | lr %.2e | %.3f s/step | tok/s %.0f | mem %.2f GB", row["step"],
                     row["max_steps"], row["loss"], row["lr"], row["s_per_step"], row["tokens_per_s"],
                     row["peak_mem_gb"])
            self.t0, self.step0, self.tokens0 = now, state.global_step, collator.num_tokens

    return MetricsCallback()
