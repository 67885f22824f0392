"""``mllm4d curate --engine ray``: one Ray task per clip, on a local Ray instance or a cluster.

Each task runs the same per-clip function as ``--workers`` processes
(:func:`mllm4d_lite.curation.curate.curate_clip`): it writes ``annotations/<clip_id>.json`` (and
``plots/``, the clip's receipt) atomically itself and returns the small result dict, so the
annotations are byte-identical to a single-process run and a killed or failed job re-run with
the same ``--out`` redoes only the clips without a valid receipt
(:mod:`mllm4d_lite.curation.receipts`).

``--ray-address``: empty (default) starts a local Ray instance for this run (``--workers N`` > 1
gives it N CPUs, else all cores) and stops it at the end; ``auto`` joins the cluster this node
belongs to (``ray start --head`` / ``ray start --address=HEAD:6379`` beforehand); any other value
(``HOST:PORT``, ``ray://HOST:10001``) is passed to ``ray.init(address=...)``. On a cluster every
node needs the same kit install (the ``.venv``) and must see ``--clips`` and ``--out`` at the same
paths (a shared file system), since the tasks read clips and write outputs where they run.

Ray is imported only here, and this module only when ``--engine ray`` is asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

#: tasks in flight per cluster CPU: keeps the scheduler fed while bounding the driver's bookkeeping
IN_FLIGHT_PER_CPU = 2


class RayEngineError(RuntimeError):
    """Ray is missing or the cluster cannot be reached; the message says what to do."""


def _clip_task(source: Any, out_dir: str, run: dict[str, Any]) -> dict[str, Any]:
    import cv2

    from mllm4d_lite.curation.curate import curate_clip

    cv2.setNumThreads(1)  # one task per CPU, as in the --workers processes
    return curate_clip(source, out_dir, run)


def connect(address: str, workers: int) -> bool:
    """``ray.init`` for ``address`` ("" = a new local instance); returns whether this call connected
    (and so should disconnect). A process already connected (a test, a notebook) keeps its connection."""
    try:
        import ray
    except ImportError as err:
        raise RayEngineError(f"--engine ray needs the `ray` package ({err}); install the pinned one: "
                             "pip install -r requirements.txt") from None
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "configure_logging": False}
    if address:
        kwargs["address"] = address
        if workers > 1:
            log.warning("--workers %d is ignored when joining a Ray cluster (--ray-address %s): its CPUs decide",
                        workers, address)
    elif workers > 1:
        kwargs["num_cpus"] = workers
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"the Ray cluster at --ray-address {address}" if address else "a local Ray instance"
        fix = ("start it first (`ray start --head`) or leave --ray-address empty for a local instance"
               if address else "check `ray status` / free memory, or use --engine local")
        raise RayEngineError(f"could not connect to {where}: {str(err).splitlines()[0] if str(err) else err}; {fix}") from None
    return True


def iter_results(sources: list[Any], out_dir: str, run: dict[str, Any], address: str = "",
                 workers: int = 1) -> Iterator[dict[str, Any]]:
    """Curate every source as a Ray task; yields each clip's result dict (or ``{"error"}``) as it
    finishes, in completion order."""
    owns = connect(address, workers)
    import ray

    try:
        task = ray.remote(num_cpus=1)(_clip_task)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        limit = max(2, IN_FLIGHT_PER_CPU * cpus)
        log.info("Ray: %d clip(s) on %d CPU(s), at most %d in flight", len(sources), cpus, limit)
        todo = list(reversed(sources))
        running: dict[Any, Any] = {}
        while todo or running:
            while todo and len(running) < limit:
                src = todo.pop()
                running[task.remote(src, out_dir, run)] = src
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                src = running.pop(ref)
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayError as err:  # a lost node or killed worker: this clip only
                    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                    yield {"error": f"{src.path}: Ray task failed: {first}", "source": src.path}
    finally:
        if owns:
            ray.shutdown()
