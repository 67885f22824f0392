"""The one check for numbers read from a file or the command line: right type, finite, in range.

Used by clip.json loading (:func:`mllm4d_lite.curation.clip.load_clip`), calibration files
(:func:`mllm4d_lite.curation.sources.read_calibration`) and the config coercion of command-line
and YAML values (:func:`mllm4d_lite.config.build_config`). The rules are listed in
docs/data-format.md ("Validation rules").

Example::

    fps = check_number(meta["fps"], "fps", source="clip.json", gt=0, le=1000)
    n = check_number(meta["num_frames"], "num_frames", source="clip.json", kind=int, ge=1)
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any


class NumberError(ValueError):
    """A number is missing its type, not finite or out of range; the message names the source, the
    value and the rule."""


def _range_text(gt: float | None, ge: float | None, lt: float | None, le: float | None) -> str:
    parts = []
    if gt is not None:
        parts.append(f"> {gt:g}")
    if ge is not None:
        parts.append(f">= {ge:g}")
    if lt is not None:
        parts.append(f"< {lt:g}")
    if le is not None:
        parts.append(f"<= {le:g}")
    return " and ".join(parts)


def check_number(value: Any, name: str, source: str | Path | None = None, kind: type = float, *,
                 gt: float | None = None, ge: float | None = None, lt: float | None = None,
                 le: float | None = None, fix: str = "", strings: bool = True) -> Any:
    """``value`` as ``kind`` (``int`` or ``float``) when it is a finite number in range, else
    :class:`NumberError` naming ``source`` (a file, or ``None``), ``name`` (used verbatim, so the
    caller decides on backticks) and the value.

    Accepted: ints and floats (an ``int`` field takes an integral float such as ``16.0``), and, when
    ``strings`` is true, a string holding one (``"0.12"`` in a YAML file). Refused: booleans,
    other types, NaN and +-infinity (also as ``"nan"`` / ``".inf"``), values outside
    ``gt`` / ``ge`` / ``lt`` / ``le``. ``fix`` (one clause) is appended to the message.
    """
    where = f"{source}: " if source is not None else ""
    tail = f"; {fix}" if fix else ""
    rng = _range_text(gt, ge, lt, le)
    want = ("an integer" if kind is int else "a number") + (f" {rng}" if rng else "")
    number: float | int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, numbers.Real):  # int, float and numpy scalars
        number = float(value) if not isinstance(value, numbers.Integral) else int(value)
    elif strings and isinstance(value, str):
        text = value.strip().lower()
        if text in (".inf", "+.inf", "-.inf", ".nan"):  # YAML spellings
            text = text.replace(".", "")
        try:
            number = int(text) if kind is int and text.lstrip("+-").isdigit() else float(text)
        except ValueError:
            number = None
    if number is None:
        raise NumberError(f"{where}{name} must be {want}, got {value!r}{tail}")
    if not math.isfinite(number):
        raise NumberError(f"{where}{name} must be {rng + ' and ' if rng else ''}finite, got {value!r}{tail}")
    if kind is int:
        if number != int(number):
            raise NumberError(f"{where}{name} must be {want}, got {value!r}{tail}")
        number = int(number)
    else:
        number = float(number)
    if ((gt is not None and not number > gt) or (ge is not None and not number >= ge)
            or (lt is not None and not number < lt) or (le is not None and not number <= le)):
        raise NumberError(f"{where}{name} must be {rng}, got {value!r}{tail}")
    return number


#: highest frame rate accepted in clip.json / calibration files (frames per second)
MAX_FPS = 1000.0
#: widest / tallest frame accepted in clip.json (pixels; 8K video is 7680 wide)
MAX_SIDE_PX = 16384
#: most frames one synthetic clip may have (a 20-minute clip at 8 fps is 9600 frames)
MAX_FRAMES = 10_000


def available_memory_bytes() -> int | None:
    """RAM the system can give a new allocation now (``MemAvailable`` of /proc/meminfo, else the free
    physical pages); ``None`` when the platform tells neither."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def gib(n_bytes: float) -> str:
    """``n_bytes`` as a short GiB figure for messages (``"1.5 GiB"``)."""
    return f"{n_bytes / 2**30:.3g} GiB"
