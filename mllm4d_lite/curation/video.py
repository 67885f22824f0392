"""Video encoding and decoding.

Decoding goes through decord (the kit's choice, see docs/stack.md) and falls back to PyAV where decord
is missing or fails to open a file. Frames are RGB uint8 arrays shaped (T, H, W, 3).
Encoding uses PyAV with H.264 (yuv420p), which decord, PyAV and OpenCV all read.

Import order: a process that will also run torch must import torch *before* its first decode.
Loading decord first makes torch's later matrix products crash (segmentation fault, after
"[NVBLAS] CPU Blas library need to be provided"). The training and evaluation stages load the
model first; curation never imports torch, so decoding does not import it either (it would
slow the start of every curation worker).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)


class VideoError(ValueError):
    """A video cannot be read or written; the message names the file and what to do."""


def sample_indices(num_frames: int, num_samples: int | None) -> list[int]:
    """Evenly spaced frame indices (first and last included) for ``num_samples`` frames.

    >>> sample_indices(16, 4)
    [0, 5, 10, 15]
    """
    if num_frames <= 0:
        return []
    if num_samples is None or num_samples >= num_frames:
        return list(range(num_frames))
    if num_samples == 1:
        return [0]
    return [int(round(i * (num_frames - 1) / (num_samples - 1))) for i in range(num_samples)]


def _read_decord(path: Path, num_samples: int | None) -> tuple[np.ndarray, float, list[int]]:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    total = len(reader)
    indices = sample_indices(total, num_samples)
    if not indices:
        raise VideoError(f"{path}: video has no frames")
    frames = reader.get_batch(indices).asnumpy()
    return frames, float(reader.get_avg_fps()), indices


def _read_pyav(path: Path, num_samples: int | None) -> tuple[np.ndarray, float, list[int]]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        all_frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    if not all_frames:
        raise VideoError(f"{path}: video has no frames")
    indices = sample_indices(len(all_frames), num_samples)
    return np.stack([all_frames[i] for i in indices]), fps, indices


def read_video(
    path: str | Path, num_frames: int | None = None, expected_frames: int | None = None
) -> tuple[np.ndarray, float, list[int]]:
    """Decode ``path`` into RGB frames.

    Args:
        num_frames: sample this many evenly spaced frames (first and last included); None = all.
        expected_frames: when given, a file holding a different number of frames is an error
            (a truncated or mismatched video).
    Returns:
        frames (T, H, W, 3) uint8, fps (float), indices of the returned frames in the file.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: video file not found")
    errors = []
    for reader in (_read_decord, _read_pyav):
        try:
            if expected_frames is not None:
                frames, fps, indices = reader(path, None)
                if frames.shape[0] != expected_frames:
                    raise VideoError(
                        f"{path}: holds {frames.shape[0]} frames, expected {expected_frames} "
                        "(truncated or mismatched video; re-export or re-generate the clip)"
                    )
                keep = sample_indices(frames.shape[0], num_frames)
                return frames[keep], fps, keep
            return reader(path, num_frames)
        except VideoError:
            raise
        except ImportError as err:
            errors.append(f"{reader.__name__}: {err}")
        except Exception as err:  # decoders raise their own types on corrupt files
            errors.append(f"{reader.__name__}: {type(err).__name__}: {err}")
    raise VideoError(f"{path}: cannot decode video ({'; '.join(errors)}); is the file complete?")


def write_video(path: str | Path, frames: np.ndarray | Sequence[np.ndarray], fps: float, crf: int = 18) -> None:
    """Encode RGB uint8 frames (T, H, W, 3) to an H.264 mp4 (even width and height required).

    Written to a unique hidden temporary file beside ``path`` first (:mod:`mllm4d_lite.io`) and
    renamed, so a crash leaves no half-written file and two writers never share a temporary name;
    a failed encode removes the temporary file.
    ``crf`` 18 is visually lossless; lower is closer to lossless (0 = lossless, larger files).
    """
    import av

    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise VideoError(f"{path}: frames must be uint8 (T,H,W,3), got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if t == 0:
        raise VideoError(f"{path}: no frames to write")
    if h % 2 or w % 2:
        raise VideoError(f"{path}: H.264 needs even width and height, got {w}x{h}")
    from fractions import Fraction

    from mllm4d_lite.io import _file_mode, _temp_beside

    fd, tmp = _temp_beside(path, suffix=".tmp" + path.suffix)  # unique: concurrent writers never share it
    os.close(fd)
    try:
        with av.open(str(tmp), mode="w") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            # mbtree=0: with x264's macroblock-tree rate control, encoding the same frames twice can
            # give different files and decoded frames (even single-threaded); without it repeated
            # encodes are identical, so a clip's files depend on its content only.
            stream.options = {"crf": str(crf), "preset": "medium", "tune": "film", "x264-params": "mbtree=0"}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.chmod(tmp, _file_mode())  # mkstemp makes 0600; the video gets what open() would give
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
