"""Multi-process runs (``accelerate launch``, ``torchrun``): which process writes the outputs.

Under ``accelerate launch --config_file recipes/accelerate/<x>.yaml -m mllm4d_lite sft|grpo ...``
every process runs the whole stage. The Trainer itself saves checkpoints from the main process only
(and one ``rng_state_<rank>.pth`` per process); everything the kit writes beside it
(``config.yaml``, ``metrics.jsonl``, ``samples.jsonl``, ``adapter/``, plots, ``summary.json``,
``eval.json``) is written by the process of global rank 0 only, and the other processes log
warnings and errors only, without progress bars (:func:`quiet_other_ranks`). docs/scaling.md says
how to launch.

The rank comes from the launcher's environment (``RANK``: torchrun, accelerate, DeepSpeed;
``PMI_RANK`` / ``OMPI_COMM_WORLD_RANK``: mpirun), so it is known before the Trainer sets up the
process group; a plain ``mllm4d sft`` run is rank 0 of 1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from typing import Any, Sequence

log = logging.getLogger(__name__)

RANK_ENV = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK")
WORLD_SIZE_ENV = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")


def _env_int(names: Sequence[str], default: int) -> int:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return default


def process_rank() -> int:
    """Global rank of this process (0 outside a multi-process launch)."""
    return _env_int(RANK_ENV, 0)


def world_size() -> int:
    """Number of processes of the run (1 outside a multi-process launch)."""
    return max(1, _env_int(WORLD_SIZE_ENV, 1))


def is_main_process() -> bool:
    """True on the process that writes the run's outputs (global rank 0)."""
    return process_rank() == 0


def quiet_other_ranks() -> None:
    """On a process other than rank 0: log warnings and errors only, and no tqdm bars
    (``TQDM_DISABLE``, read by every tqdm bar created after this call)."""
    if is_main_process():
        return
    logging.getLogger().setLevel(logging.WARNING)
    os.environ["TQDM_DISABLE"] = "1"


def share_from_main(value: Any, device: str) -> Any:
    """Rank 0's ``value`` on every process (``value`` itself in a single-process run).

    The stages prepare their output folder on rank 0 alone (stale temporary files, old
    checkpoints, ``run_key.json``, ``config.yaml``), and rank 0 decides whether to resume and from
    which checkpoint; the other ranks must resume from the same one. This sets up the process
    group the Trainer would set up a moment later (accelerate's ``PartialState``: gloo on a CPU,
    NCCL on GPUs, DeepSpeed's own under a DeepSpeed config) and broadcasts ``value`` (picklable)
    from rank 0, which also makes every rank wait until rank 0 has prepared the folder.
    """
    if world_size() < 2:
        return value
    import torch.distributed as dist
    from accelerate import PartialState

    PartialState(cpu=not str(device).startswith("cuda"))
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def whole_lora_weights(model):
    """Under DeepSpeed ZeRO-3, the LoRA weights of ``model`` gathered whole on every process for the
    duration, so that rank 0 saves real weights rather than its shard (ZeRO-3 leaves each process
    a slice, or an empty placeholder, of every parameter above its persistence threshold). A
    collective: every process must enter it. Elsewhere (one process, DDP, ZeRO-1/2) it does nothing."""
    from mllm4d_lite.train.loading import parameter_sharding

    params = [p for n, p in model.named_parameters() if "lora_" in n and hasattr(p, "ds_id")]
    if parameter_sharding() != "DeepSpeed ZeRO-3" or not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def records_digest(records: Sequence[dict[str, Any]]) -> str:
    """SHA-256 of the records in order (their JSON with sorted keys): equal on every rank when every
    rank trains on the same data in the same order."""
    h = hashlib.sha256()
    for record in records:
        h.update(json.dumps(record, sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def same_data_callback(records: Sequence[dict[str, Any]], what: str):
    """A ``TrainerCallback`` that, at the start of training, checks that every process holds the
    same records (:func:`records_digest`): each rank loads and filters the data itself, and the
    distributed sampler only splits indices, so different data on two ranks (e.g. a video one
    rank could not read) would silently train on a mix. Raises
    :class:`~mllm4d_lite.train.records.DataError` (one error line from the stage) on every rank when
    they differ; does nothing in a single-process run."""
    from transformers import TrainerCallback

    from mllm4d_lite.train.records import DataError

    digest = records_digest(records)

    class SameData(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
                return
            digests: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(digests, (digest, len(records)))
            if len(set(digests)) > 1:
                raise DataError(f"{what}: the processes hold different training records "
                                   f"({[n for _, n in digests]} records per rank); every rank must read the same "
                                   "files (a shared file system, identical paths and readable videos on every node)")
            if dist.get_rank() == 0:
                log.info("%d processes hold the same %d training records (%s)", len(digests), len(records),
                         digest[:12])

    return SameData()


__all__ = ["is_main_process", "process_rank", "quiet_other_ranks", "records_digest", "same_data_callback",
           "share_from_main", "whole_lora_weights", "world_size"]
