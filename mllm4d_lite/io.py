"""Small I/O helpers every stage uses: atomic writes, JSONL, figures.

A stage never leaves a half-written file: text, JSON and figures go to a temporary file
beside the target and are renamed over it in one step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a crash leaves no half file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 1) -> None:
    """JSON through :func:`atomic_write_text`."""
    atomic_write_text(path, json.dumps(obj, indent=indent))


def pyplot():
    """``matplotlib.pyplot`` on the file-only Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int | None = None) -> Path:
    """Save a matplotlib figure to ``path`` through a temporary file, then close it."""
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, **({} if dpi is None else {"dpi": dpi}))
    plt.close(fig)
    tmp.replace(path)
    return path
