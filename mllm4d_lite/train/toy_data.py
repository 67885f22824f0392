"""A toy left/right video QA set (a square slides across a background), for tests and the learning benchmark."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from mllm4d_lite import prompts


def write_toy_direction_set(out_dir: str | Path, num_clips: int = 16, seed: int = 0, num_frames: int = 8,
                            width: int = 64, height: int = 48, shuffle_choices: bool = False,
                            travel: float | None = None, square: float = 1 / 3,
                            backgrounds: Sequence[np.ndarray] | None = None) -> Path:
    """A toy left/right set for tests and smoke runs: ``out_dir/{videos/*.mp4, sft.jsonl}``.

    Each clip shows a bright square sliding left or right over a textured background; each
    record asks which way it moves (choices A: left, B: right, C: up, D: not moving, or in a
    seeded random order with ``shuffle_choices``) and answers with the letter. Learnable only
    from the video. Returns the jsonl path.

    Knobs for the learning benchmark (defaults: the original set): ``travel``, the distance the
    square slides as a fraction of the width (default: edge to edge), from a random start;
    ``square``, its side as a fraction of the height; ``backgrounds``, (H, W, 3) uint8 images
    (e.g. first frames of synthetic clips) to slide over instead of uniform noise.
    """
    from mllm4d_lite.curation.video import write_video

    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    choices = {"A": "left", "B": "right", "C": "up", "D": "not moving"}
    lines = []
    for i in range(num_clips):
        direction = ("left", "right")[i % 2]
        if backgrounds:
            background = np.asarray(backgrounds[int(rng.integers(len(backgrounds)))], dtype=np.uint8)
            if background.shape[:2] != (height, width):
                import cv2

                background = cv2.resize(background, (width, height), interpolation=cv2.INTER_AREA)
        else:
            background = (rng.random((height, width, 3)) * 80 + 60).astype(np.uint8)
        frames = np.repeat(background[None], num_frames, axis=0)
        size = max(2, int(round(height * square)))
        y = int(rng.integers(0, height - size))
        if travel is None:  # edge to edge
            start, span = 2, width - size - 4
        else:
            span = int(round(travel * width))
            if not 0 < span <= width - size:
                raise ValueError(f"travel {travel} of a {width}-px width leaves no room for a {size}-px square")
            start = int(rng.integers(0, width - size - span + 1))
        for t in range(num_frames):
            frac = t / (num_frames - 1)
            x = int(start + (frac if direction == "right" else 1.0 - frac) * span)
            frames[t, y:y + size, x:x + size] = (250, 40, 40)
        name = f"videos/toy_{seed}_{i:03d}.mp4"
        write_video(out / name, frames, fps=8.0)
        question = "Which way does the red cube move?"
        if shuffle_choices:
            texts = list(choices.values())
            rng.shuffle(texts)
            choices = dict(zip(prompts.LETTERS, texts))
        letter = next(k for k, v in choices.items() if v == direction)
        lines.append(json.dumps({
            "id": f"toy-{seed}-{i:03d}", "clip_id": f"toy_{seed}_{i:03d}", "video": name,
            "category": "object_direction", "question": question, "question_type": "multiple-choice",
            "choices": choices, "answer": direction, "solution": {},
            "prompt": prompts.direct_prompt(question, choices),
            "response": letter}))
    path = out / "sft.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
