"""One step of the GPU check, in a process of its own (started by scripts/gpu_check.py).

    python scripts/gpu_check_stage.py SPEC.json

SPEC (JSON) names what to run:

- ``kind``: ``build`` (the random-weight ``shapes:`` model folder, :func:`shapes.shape_model_dir`),
  ``sft`` (``mllm4d sft``: SFT and cold start) or ``grpo`` (``mllm4d grpo``);
- ``model``, ``shape_layers``; ``recipe`` and ``overrides`` (the stage's ``--key value`` list);
- ``device`` (``cuda`` or ``cpu``); ``cap_gib``: on CUDA, the memory torch's allocator may use
  (``torch.cuda.set_per_process_memory_fraction(cap / total)``), so a run behaves as on a card of
  that size;
- ``frames``: an ``.npz`` of pre-decoded clips (``gpu_check.py --prepare``) that stands in for the
  video decoder (the lent GPU machine has none): see :func:`use_frame_bundle`;
- ``progress`` / ``result``: JSON files this process writes. ``progress`` is rewritten every
  ``poll_s`` seconds with the peaks so far, so a stage killed at its time limit still leaves its
  figures; ``result`` is written at the end (``status``: ok | oom | error).

Memory is read from torch's caching allocator on CUDA (``max_memory_allocated``,
``max_memory_reserved``; GiB = 2^30 bytes) and is this process's peak resident set size on a CPU
(dry run; not comparable with GPU figures).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

GIB = 2 ** 30
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a file from anywhere: the kit is importable from the checkout
    sys.path.insert(0, str(REPO))

log = logging.getLogger("gpu_check_stage")


def write_json(path: str | Path, obj: Any) -> None:
    """Atomic JSON write (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


class MemoryProbe:
    """Peaks of this process's memory, written to ``progress`` every ``poll_s`` seconds by a
    daemon thread; :meth:`mark` records the current figures under a name (e.g. after loading)."""

    def __init__(self, device: str, progress: str | Path, poll_s: float = 1.0):
        self.cuda = device.startswith("cuda")
        self.progress = Path(progress)
        self.poll_s = poll_s
        self.t0 = time.perf_counter()
        self.marks: dict[str, dict[str, float]] = {}
        self.info: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def read(self) -> dict[str, float]:
        """Peak (and current) memory in GiB, with seconds since start."""
        out: dict[str, float] = {"elapsed_s": round(time.perf_counter() - self.t0, 2)}
        if self.cuda:
            import torch

            out.update(peak_allocated_gib=torch.cuda.max_memory_allocated() / GIB,
                       peak_reserved_gib=torch.cuda.max_memory_reserved() / GIB,
                       allocated_gib=torch.cuda.memory_allocated() / GIB)
        else:
            import resource

            out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux: KiB
        return {k: round(v, 4) for k, v in out.items()}

    def mark(self, name: str, **extra: float) -> None:
        self.marks[name] = {**self.read(), **extra}
        self.write()

    def write(self, **extra: Any) -> None:
        write_json(self.progress, {"now": self.read(), "marks": self.marks, "info": self.info, **extra})

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.write()
            except Exception:  # a full disk must not kill the measured run
                pass

    def start(self) -> "MemoryProbe":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()


def cap_cuda_memory(cap_gib: float | None) -> dict[str, Any]:
    """Limit torch's allocator on device 0 to ``cap_gib`` GiB; returns what the card is."""
    import torch

    props = torch.cuda.get_device_properties(0)
    total = props.total_memory
    info = {"gpu": props.name, "gpu_total_gib": round(total / GIB, 2), "cap_gib": cap_gib,
            "torch": torch.__version__, "cuda": torch.version.cuda}
    if cap_gib:
        fraction = min(1.0, cap_gib * GIB / total)
        torch.cuda.set_per_process_memory_fraction(fraction, 0)
        info["memory_fraction"] = round(fraction, 5)
    return info


def use_frame_bundle(bundle: str | Path) -> int:
    """Serve decoded frames from ``bundle`` instead of decord, for the clips it holds.

    The bundle (``frames.npz``: clip id -> all frames (T, H, W, 3) uint8, with ``frames.json``:
    clip id -> fps) was decoded by the kit's own decoder when the inputs were prepared. The kit's
    decoders are looked up by :func:`mllm4d_lite.curation.video.read_video` at each call, so
    replacing ``_read_decord`` keeps everything else of the path (file checks, frame sampling,
    odd-count padding, metadata) as it is. Other files still go to the real decoders.
    Returns the number of clips served.
    """
    import numpy as np

    import mllm4d_lite.curation.video as video

    bundle = Path(bundle)
    arrays = np.load(bundle)
    fps = json.loads(bundle.with_suffix(".json").read_text())["fps"]
    frames = {clip: arrays[clip] for clip in arrays.files}
    original = video._read_decord

    def read_from_bundle(path: Path, num_samples: int | None):
        clip = Path(path).parent.name
        if clip not in frames:
            return original(path, num_samples)
        indices = video.sample_indices(frames[clip].shape[0], num_samples)
        return frames[clip][indices], float(fps[clip]), indices

    video._read_decord = read_from_bundle
    return len(frames)


BLOCK_ENV = "GPU_CHECK_BLOCK_IMPORTS"


def block_imports(names: str | None = None) -> list[str]:
    """Make the top-level modules named in ``names`` (comma-separated; default ``$GPU_CHECK_BLOCK_IMPORTS``)
    unimportable in this process, as they are on the lent GPU machine (a dry run hides the video
    decoders ``decord`` and ``av``, so it proves the frames bundle stands in for them).

    A ``None`` entry in ``sys.modules`` is Python's own "not available": ``import`` raises
    ``ModuleNotFoundError`` and ``importlib.util.find_spec`` (which transformers' availability checks
    use) returns None. Call it before anything imports them."""
    blocked = [n.strip() for n in (names if names is not None else os.environ.get(BLOCK_ENV, "")).split(",") if n.strip()]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]
    return blocked


def watch_loading(probe: MemoryProbe) -> None:
    """Record memory right after the stage loads its model (base weights, before LoRA)."""
    import mllm4d_lite.train.loading as loading

    original = loading.load_model_and_processor

    def load(*args, **kwargs):
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        probe.mark("after_load", load_s=round(time.perf_counter() - t0, 2))
        return out

    loading.load_model_and_processor = load


def run_build(spec: dict[str, Any]) -> dict[str, Any]:
    """Build (or find cached) the ``shapes:`` model folder; on CUDA the random weights are drawn
    on the GPU (seconds instead of a minute of CPU time), with a CPU build as the fallback."""
    import torch

    from mllm4d_lite.train.shapes import shape_model_dir, shape_model_path

    name, layers = spec["model"], int(spec["shape_layers"])
    cached = (shape_model_path(name, layers) / "SHAPE_MODEL.json").is_file()
    where = "cpu"
    if spec["device"].startswith("cuda") and not cached:
        try:
            with torch.device("cuda"):
                path = shape_model_dir(name, layers)
            where = "cuda"
        except Exception as err:  # the CPU build is slower but always works
            log.warning("building %s on the GPU failed (%s: %s); building on the CPU", name, type(err).__name__, err)
            torch.cuda.empty_cache()
            path = shape_model_dir(name, layers)
    else:
        path = shape_model_dir(name, layers)
    info = json.loads((path / "SHAPE_MODEL.json").read_text())
    return {"path": str(path), "cached": cached, "built_on": None if cached else where,
            "parameters": info.get("parameters")}


def run_stage(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``mllm4d sft`` / ``mllm4d grpo`` on the recipe with the spec's overrides."""
    from mllm4d_lite.config import parse_config

    argv = ["--config", spec["recipe"], *spec["overrides"]]
    if spec["kind"] == "grpo":
        from mllm4d_lite.train import grpo

        summary = grpo.run(parse_config(grpo.GRPOConfig, argv, prog="mllm4d grpo"))
    else:
        from mllm4d_lite.train import sft

        summary = sft.run(parse_config(sft.SFTConfig, argv, prog="mllm4d sft"))
    return {k: v for k, v in summary.items() if k in ("steps", "train_s", "elapsed_s", "s_per_step", "sample_cost",
                                                      "final_loss", "adapter", "train_records", "format_last")}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python scripts/gpu_check_stage.py SPEC.json (written by scripts/gpu_check.py)\n")
        return 2
    spec = json.loads(Path(args[0]).read_text())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    result: dict[str, Any] = {"kind": spec["kind"], "status": "error"}
    probe = MemoryProbe(spec["device"], spec["progress"], float(spec.get("poll_s", 1.0)))
    probe.info["hidden_modules"] = block_imports()
    try:
        import torch  # before any decoder (docs/stack.md: import torch before the first decode)

        if spec["device"].startswith("cuda"):
            probe.info.update(cap_cuda_memory(spec.get("cap_gib")))
        else:
            probe.info.update(torch=torch.__version__, device="cpu")
        if spec.get("frames"):
            probe.info["bundle_clips"] = use_frame_bundle(spec["frames"])
        watch_loading(probe)
        probe.start()
        probe.write()
        detail = run_build(spec) if spec["kind"] == "build" else run_stage(spec)
        result.update(status="ok", detail=detail)
    except BaseException as err:  # report everything, OOM first
        oom = type(err).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(err)
        result.update(status="oom" if oom else "error", error=f"{type(err).__name__}: {str(err).splitlines()[0][:400]}"
                      if str(err) else type(err).__name__, traceback=traceback.format_exc()[-4000:])
        log.error("%s failed: %s", spec["kind"], result["error"])
    finally:
        probe.stop()
    result.update(memory=probe.read(), marks=probe.marks, info=probe.info)
    write_json(spec["result"], result)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
