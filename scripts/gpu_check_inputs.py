"""Inputs of the GPU check: a few curated tiny_data clips, their decoded frames, and token counts.

:func:`prepare` runs on a machine with the kit's full environment (``bash scripts/gpu_check.sh
--prepare``). It curates a few of ``tiny_data``'s varied clips with ``mllm4d curate`` and writes,
under ``runs/gpu_check_inputs/`` (git-ignored; carried to the GPU machine):

- ``sft.jsonl``, ``cot.jsonl``, ``rft.jsonl``: the curated records, each ``video`` pointing at
  ``clips/<clip>/left.mp4`` (copied beside them);
- ``frames.npz`` (clip -> every frame, (T, H, W, 3) uint8, as the kit's decoder returns them) and
  ``frames.json`` (fps, sha256 of each clip's frames and of its ``left.mp4``): the lent GPU machine
  has no video decoder, so the check serves these instead (``gpu_check_stage.use_frame_bundle``);
- ``MANIFEST.json``: what was made, from what, with which command.

:func:`stage_tokens` counts, with the real processor and the kit's own collator, the tokens of the
records a stage will draw, so that the planner is asked about the very inputs the check runs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parent.parent
DEFAULT_INPUTS = "runs/gpu_check_inputs"
DEFAULT_CLIPS = ("tiny_data/synth_s00000", "tiny_data/synth_s00001", "tiny_data/synth_s00002")
CURATE_ARGS = ("--workers", "1", "--bench-fraction", "0", "--rft-fraction", "0.3")
FILES = ("sft.jsonl", "cot.jsonl", "rft.jsonl")


class InputsError(RuntimeError):
    """The check's inputs are missing or incomplete; the message says how to make them."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def prepare(out: str | Path = DEFAULT_INPUTS, clips: Sequence[str | Path] = DEFAULT_CLIPS) -> dict[str, Any]:
    """Curate ``clips`` into ``out`` (replaced) with the frames bundle; returns the manifest."""
    import numpy as np
    import torch  # noqa: F401  before the first decode (docs/stack.md: decord first crashes torch later)

    from mllm4d_lite.curation.video import read_video

    out = Path(out)
    clips = [Path(c).resolve() for c in clips]
    missing = [str(c) for c in clips if not (c / "left.mp4").is_file()]
    if missing:
        raise InputsError(f"clip folder(s) without left.mp4: {missing}; pass tiny_data/<clip> folders")
    with tempfile.TemporaryDirectory(prefix="gpu_check_inputs.") as tmp:
        links, data = Path(tmp) / "clips", Path(tmp) / "data"
        links.mkdir()
        for clip in clips:
            (links / clip.name).symlink_to(clip)
        command = [sys.executable, "-m", "mllm4d_lite", "curate", "--clips", str(links), "--out", str(data),
                   *CURATE_ARGS]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise InputsError(f"mllm4d curate failed ({done.returncode}): {done.stderr.strip()[-800:]}")
        if out.exists():
            shutil.rmtree(out)
        (out / "clips").mkdir(parents=True)
        counts = {}
        for name in FILES:
            rows = [json.loads(line) for line in (data / name).read_text().splitlines() if line.strip()]
            if not rows:
                raise InputsError(f"curating {len(clips)} clips gave no {name} records; add clips")
            for row in rows:
                row["video"] = f"clips/{Path(row['video']).parent.name}/left.mp4"
            (out / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
            counts[name] = len(rows)
    arrays, fps, sha = {}, {}, {}
    for clip in clips:
        dest = out / "clips" / clip.name
        dest.mkdir()
        shutil.copy2(clip / "left.mp4", dest / "left.mp4")
        frames, rate, _ = read_video(dest / "left.mp4", None)
        arrays[clip.name], fps[clip.name] = frames, float(rate)
        sha[clip.name] = {"frames": _sha256(frames.tobytes()), "shape": list(frames.shape),
                          "left_mp4": _sha256((dest / "left.mp4").read_bytes())}
    np.savez_compressed(out / "frames.npz", **arrays)
    (out / "frames.json").write_text(json.dumps({"fps": fps, "sha256": sha}, indent=1) + "\n")
    from mllm4d_lite.config import git_revision

    manifest = {"clips": [c.name for c in clips], "records": counts,
                "curate": "mllm4d curate --clips <these clips> --out <inputs> " + " ".join(CURATE_ARGS),
                "frames": "mllm4d_lite.curation.video.read_video(left.mp4) of each clip, all frames",
                "kit_revision": git_revision()}
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def slim_wheel(wheel: str | Path, drop: Callable[[str], bool]) -> tuple[int, int]:
    """Rewrite ``wheel`` in place without the files ``drop`` selects, with its ``RECORD`` listing
    exactly what is left (hash and size of each file, as the wheel format asks); returns the
    archive's size before and after, in bytes. For bitsandbytes, whose wheel carries one library
    per CUDA / ROCm version: the GPU machine needs only its own CUDA's."""
    import base64
    import zipfile

    wheel = Path(wheel)
    before = wheel.stat().st_size
    tmp = wheel.with_name(wheel.name + ".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        names = [n for n in src.namelist() if not drop(n)]
        record = next(n for n in names if n.endswith(".dist-info/RECORD"))
        rows = []
        for name in names:
            if name == record:
                continue
            data = src.read(name)
            dst.writestr(src.getinfo(name), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append(f"{name},sha256={digest},{len(data)}")
        dst.writestr(record, "\n".join([*rows, f"{record},,"]) + "\n")
    tmp.replace(wheel)
    return before, wheel.stat().st_size


def bitsandbytes_drop(keep_cuda: Sequence[str]) -> Callable[[str], bool]:
    """The files of the bitsandbytes wheel a CUDA machine with one of ``keep_cuda`` (e.g. ``130``
    for CUDA 13.0, as ``torch.version.cuda`` reads) does not load: every other CUDA and every ROCm
    library (the CPU library stays)."""
    import re

    pattern = re.compile(r"bitsandbytes/libbitsandbytes_(cuda(\d+)|rocm\d+)\.(so|dll|dylib)$")

    def drop(name: str) -> bool:
        match = pattern.search(name)
        return bool(match) and match.group(2) not in set(keep_cuda)

    return drop


def check_inputs(inputs: str | Path) -> dict[str, Any]:
    """The manifest of a prepared inputs folder, or an :class:`InputsError` saying how to make it."""
    inputs = Path(inputs)
    need = [inputs / n for n in (*FILES, "frames.npz", "frames.json", "MANIFEST.json")]
    absent = [str(p) for p in need if not p.is_file()]
    if absent:
        raise InputsError(f"GPU check inputs missing ({', '.join(absent)}): run `bash scripts/gpu_check.sh --prepare` "
                          "where the kit's .venv is set up, then carry runs/gpu_check_inputs with the working tree")
    return json.loads((inputs / "MANIFEST.json").read_text())


def source_size(inputs: str | Path) -> tuple[int, int]:
    """(height, width) of the prepared clips' frames."""
    shapes = {tuple(v["shape"][1:3]) for v in json.loads((Path(inputs) / "frames.json").read_text())["sha256"].values()}
    if len(shapes) != 1:
        raise InputsError(f"the prepared clips have several frame sizes {sorted(shapes)}; use clips of one size")
    return shapes.pop()


def stage_records(kind: str, cfg) -> list[dict[str, Any]]:
    """The records the stage of ``cfg`` trains on, chosen as the stage itself chooses them."""
    if kind == "grpo":
        from mllm4d_lite.train.grpo_data import load_pool

        return load_pool(cfg)
    from mllm4d_lite.train.records import load_records

    return load_records(cfg.train_file, cfg.max_train_samples or None, seed=cfg.seed, categories=cfg.train_categories)


def stage_tokens(kind: str, cfg) -> dict[str, int]:
    """Tokens of the longest record the stage draws, counted with the real processor of
    ``cfg.model`` (a ``shapes:`` name) and the kit's collator / GRPO prompt.

    Returns ``prompt_with_video`` (everything before the answer or completion, the video's
    tokens included), ``answer`` (SFT: the loss tokens, ``<|im_end|>`` included; GRPO:
    ``max_completion_length``), ``visual_tokens`` (one clip, from ``video_grid_thw``) and
    ``records``.
    """
    from mllm4d_lite.train.collator import IGNORE_INDEX, VideoSFTCollator
    from mllm4d_lite.train.loading import set_pixel_budget
    from mllm4d_lite.train.shapes import build_shape_processor
    from mllm4d_lite.train.video_inputs import VideoCache, count_visual_tokens, video_kwargs

    records = stage_records(kind, cfg)
    processor = build_shape_processor(cfg.model)
    processor.tokenizer.padding_side = "left"
    set_pixel_budget(processor, cfg.max_pixels, cfg.min_pixels)
    cache = VideoCache(cfg.num_frames)
    prompts, answers = [], []
    if kind == "grpo":
        from mllm4d_lite.train.grpo_data import prompt_messages

        for rec in records:
            text = processor.apply_chat_template(prompt_messages(rec, cfg.use_st_cot_prompt), tokenize=False,
                                                 add_generation_prompt=True)
            batch = processor(text=[text], return_tensors="pt", **video_kwargs(processor, [cache.get(rec["video_path"])]))
            prompts.append(int(batch["input_ids"].shape[1]))
        answers = [cfg.max_completion_length]
    else:
        collator = VideoSFTCollator(processor, cache)
        for rec in records:
            batch = collator([rec])
            answer = int((batch["labels"] != IGNORE_INDEX).sum())
            prompts.append(int(batch["attention_mask"].sum()) - answer)
            answers.append(answer)
    frames, meta = cache.get(records[0]["video_path"])
    visual = count_visual_tokens(processor, frames, meta)["visual_tokens"]
    return {"prompt_with_video": max(prompts), "answer": max(answers), "visual_tokens": int(visual),
            "records": len(records)}


__all__ = ["DEFAULT_INPUTS", "InputsError", "bitsandbytes_drop", "check_inputs", "prepare", "slim_wheel", "source_size", "stage_records",
           "stage_tokens"]


if __name__ == "__main__":  # bash scripts/gpu_check.sh --fetch-wheels: slim-bitsandbytes WHEEL CUDA...
    if len(sys.argv) < 4 or sys.argv[1] != "slim-bitsandbytes":
        sys.exit("usage: python scripts/gpu_check_inputs.py slim-bitsandbytes WHEEL CUDA_VERSION... (e.g. 130 132)")
    size_before, size_after = slim_wheel(sys.argv[2], bitsandbytes_drop(sys.argv[3:]))
    print(f"{Path(sys.argv[2]).name}: {size_before / 1e6:.1f} MB -> {size_after / 1e6:.1f} MB "
          f"(kept the CPU and CUDA {' '.join(sys.argv[3:])} libraries)")

