"""Shared fixtures: offline everywhere, a cached tiny model per family, tiny videos."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch  # noqa: F401  before any test decodes a video: decord loaded first makes torch's matrix
#               products crash later in the same process (docs/stack.md, "Import torch before the first decode")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


class _NoNetwork(socket.socket):
    def connect(self, address):  # pragma: no cover - only hit when something tries the network
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "localhost", "::1"):
            raise RuntimeError(f"test tried to reach the network: {address}")
        return super().connect(address)


@pytest.fixture(autouse=True, scope="session")
def _block_network():
    """Tests must never download anything: any non-loopback connection fails loudly."""
    original = socket.socket
    socket.socket = _NoNetwork
    yield
    socket.socket = original


@pytest.fixture(scope="session")
def tiny_model_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny_models")


@pytest.fixture(scope="session")
def tiny_qwen25(tiny_model_root) -> Path:
    from mllm4d_lite.train.tiny_model import build_tiny_model

    return build_tiny_model(tiny_model_root / "qwen2.5-vl", family="qwen2.5-vl", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen3(tiny_model_root) -> Path:
    from mllm4d_lite.train.tiny_model import build_tiny_model

    return build_tiny_model(tiny_model_root / "qwen3-vl", family="qwen3-vl", seed=0)


@pytest.fixture(scope="session")
def random_video(tmp_path_factory) -> Path:
    """A 16-frame 160x120 video of smooth random texture (8 fps)."""
    import cv2

    from mllm4d_lite.curation.video import write_video

    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur((rng.random((120, 200, 3)) * 255).astype(np.uint8), (5, 5), 1.5)
    frames = np.stack([base[:, i * 2:i * 2 + 160] for i in range(16)])
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(path, frames, fps=8.0)
    return path


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread (the tiny model is fastest so, and the CI machine is shared);
    the thread count is restored afterwards. Test modules opt in with an autouse fixture."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_read_only(monkeypatch):
    """``make_read_only(folder)``: create ``folder`` read-only (chmod 555). As root chmod does not
    stop writes, so the kit's write probe (``tempfile.NamedTemporaryFile`` in ``mllm4d_lite.io``)
    is failed with EACCES instead. The caller restores the mode (``chmod(0o755)``) when done."""
    import errno

    from mllm4d_lite import io as kit_io

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o555)
        if os.geteuid() == 0:
            def denied(*args, **kwargs):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

            monkeypatch.setattr(kit_io.tempfile, "NamedTemporaryFile", denied)
        return folder

    return make
