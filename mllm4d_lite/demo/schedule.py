"""How the demo runs its stages: each in a child process, and two at once on a machine with two cores.

Every stage runs as ``python -m mllm4d_lite <stage> ...`` (a clean interpreter that gives its
memory back when it ends). When the recipes train on the CPU and the machine has two cores or
more, work that does not wait for the stage in progress runs beside it on the other core
(:class:`SideJobs`). The training stage then uses one thread, and follows a thread-share file
(``$MLLM4D_THREADS_FILE``, read by ``train.callbacks.thread_share_callback``) to take the
second core back as soon as the side jobs are done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Iterator

from mllm4d_lite.config import load_yaml
from mllm4d_lite.io import atomic_write_text
from mllm4d_lite.train.callbacks import THREADS_FILE_ENV

log = logging.getLogger(__name__)


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def side_by_side(recipes: Path) -> bool:
    """Whether two jobs may run at once: the recipes train on the CPU (one thread each while a job
    runs beside them) and the machine has two cores or more. On a GPU profile two jobs would share
    one GPU's memory."""
    return cores() >= 2 and str(load_yaml(recipes / "sft.yaml").get("device", "")) == "cpu"


# ----------------------------------------------------------------------------------------------
# Stage processes
# ----------------------------------------------------------------------------------------------

def start_stage(stage: str, argv: list[str], log_file: Path | None = None, env: dict[str, str] | None = None):
    """Start ``mllm4d <stage> argv`` without waiting; its output goes to ``log_file`` when given.
    ``env``: variables added to the child's environment."""
    import subprocess

    cmd = [sys.executable, "-m", "mllm4d_lite", stage, *argv]
    log.info("$ mllm4d %s %s%s", stage, " ".join(argv), f"  (in the background, log: {log_file})" if log_file else "")
    child_env = {**os.environ, **env} if env else None
    if log_file is None:
        proc = subprocess.Popen(cmd, env=child_env)
    else:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "w") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=child_env)
    proc.description = f"mllm4d {stage} {' '.join(argv)}"  # type: ignore[attr-defined]
    return proc


def wait_stage(proc) -> None:
    """Wait for a stage started by :func:`start_stage`; a non-zero exit is an error naming the command."""
    rc = proc.wait()
    if rc:
        raise RuntimeError(f"stage command failed (exit {rc}): {proc.description}")


def call_stage(stage: str, argv: list[str], env: dict[str, str] | None = None) -> None:
    """Run ``mllm4d <stage> argv`` in a child process and wait for it (:func:`start_stage`)."""
    wait_stage(start_stage(stage, argv, env=env))


@contextlib.contextmanager
def killed_on_error(proc) -> Iterator[None]:
    """Kill the background stage ``proc`` (if still running) when the body fails."""
    try:
        yield
    except BaseException:
        if proc is not None and proc.poll() is None:
            proc.kill()
        raise


# ----------------------------------------------------------------------------------------------
# Work beside a training stage
# ----------------------------------------------------------------------------------------------

def thread_share_env(threads_file: Path) -> dict[str, str]:
    """The environment that makes a training stage follow ``threads_file`` (its CPU thread count)."""
    return {THREADS_FILE_ENV: str(threads_file)}


def _share_threads(threads_file: Path, threads: int) -> None:
    atomic_write_text(threads_file, f"{threads}\n")


class SideJobs:
    """``with SideJobs(parallel, jobs, threads_file): body`` runs ``jobs`` (one after another) in a
    thread while ``body`` runs, when ``parallel``; else after ``body``. An error of a job is raised
    on exit.

    ``threads_file`` (when ``parallel``): holds 1 while the jobs run and the machine's core count
    once they are done; the body's training stage follows it (:func:`thread_share_env`), so it
    takes the second core as soon as the jobs leave it."""

    def __init__(self, parallel: bool, jobs: list[Callable[[], None]], threads_file: Path | None = None):
        self.parallel, self.jobs, self.error, self.thread = parallel, jobs, None, None
        self.threads_file = threads_file

    def _work(self) -> None:
        try:
            for job in self.jobs:
                job()
        except BaseException as err:  # noqa: BLE001 - handed to the main thread
            self.error = err
        finally:
            if self.parallel and self.threads_file is not None:
                _share_threads(self.threads_file, cores())

    def __enter__(self) -> "SideJobs":
        if self.parallel:
            import threading

            if self.threads_file is not None:
                _share_threads(self.threads_file, 1)
            self.thread = threading.Thread(target=self._work, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.thread is not None:
            self.thread.join()
        elif exc is None:
            self._work()
        if exc is None and self.error is not None:
            raise self.error
