"""Small I/O helpers every stage uses: safe ids, atomic writes, JSONL, figures.

A stage never leaves a half-written file: text, JSON and figures go to a uniquely named hidden
temporary file beside the target (``tempfile.mkstemp`` in the target's folder, named
``.<name>.<pid>.<random>.tmp``) and are renamed over it in one step; any failure (a full disk
included) removes the temporary file. Two runs writing the same file at once therefore never share
a temporary name: the last rename wins and both succeed. A run killed with SIGKILL cannot clean
up; the next stage given that folder (:func:`prepare_output_dir`) removes the temporary files of
processes that no longer run (:func:`remove_stale_temps`), never those of a live one.

Every id read from data (a clip id, a record id, a stage name) that becomes part of a file name
goes through :func:`safe_id` / :func:`id_path`, which refuse (never rewrite) anything that is not
one plain path component. The rules are in docs/data-format.md ("Validation rules").
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

#: longest id accepted (file systems allow 255 bytes per name; room is left for suffixes)
MAX_ID_LEN = 200


class UnsafeIdError(ValueError):
    """An id from data cannot be used as a file name; the message names the source and the value."""


def safe_id(value: Any, what: str = "id", source: str | Path | None = None) -> str:
    """Return ``value`` unchanged when it can be one file name, else raise :class:`UnsafeIdError`.

    Refused: non-strings, the empty string, more than :data:`MAX_ID_LEN` characters, ``/`` or
    ``\\`` (path separators, so no absolute paths either), control characters (NUL, newline, ...),
    ``.`` and ``..``, and a leading ``.`` (hidden names are reserved for temporary files).
    ``what`` names the field (``clip_id``) and ``source`` the file it came from, for the message.
    """
    where = f"{source}: " if source is not None else ""
    fix = "use letters, digits, '_', '-' or '.' (not first)"
    if not isinstance(value, str):
        raise UnsafeIdError(f"{where}`{what}` must be a string, got {value!r}; {fix}")
    problem = None
    if not value:
        problem = "is empty"
    elif len(value) > MAX_ID_LEN:
        problem = f"is longer than {MAX_ID_LEN} characters"
    elif "/" in value or "\\" in value:
        problem = "contains a path separator"
    elif any(ord(c) < 32 or ord(c) == 127 for c in value):
        problem = "contains a control character"
    elif value in (".", ".."):
        problem = "is a relative folder name"
    elif value.startswith("."):
        problem = "starts with '.' (hidden names are reserved for temporary files)"
    if problem:
        raise UnsafeIdError(f"{where}`{what}` {value!r} {problem}, so it cannot be a file name; {fix}")
    return value


def id_path(folder: str | Path, value: Any, suffix: str = "", what: str = "id",
            source: str | Path | None = None) -> Path:
    """``folder / (value + suffix)`` after :func:`safe_id`; the result always lies directly in ``folder``."""
    folder = Path(folder)
    path = folder / (safe_id(value, what, source) + suffix)
    if path.parent != folder:  # pragma: no cover - safe_id already rules this out
        raise UnsafeIdError(f"{source or ''}: `{what}` {value!r} would leave {folder}")
    return path


def _write_fd(fd: int, data: bytes) -> None:
    """Write all of ``data`` to the open descriptor ``fd`` (a separate function so tests can fail it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask  # what open() would have given; mkstemp makes 0600


def temp_prefix(name: str) -> str:
    """The start of a temporary name for target ``name``: hidden, with this process's id, so
    :func:`remove_stale_temps` can tell a killed run's leftovers from a live run's files."""
    return f".{name}.{os.getpid()}."


def _temp_beside(path: Path, suffix: str = ".tmp") -> tuple[int, Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=suffix, dir=path.parent)
    return fd, Path(tmp)


#: a temporary name of :func:`temp_prefix` + mkstemp/mkdtemp's 8 random characters + ``.tmp[.ext]``
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def remove_stale_temps(folder: str | Path, depth: int = 3) -> list[Path]:
    """Remove the kit's temporary files and folders (``.<name>.<pid>.<random>.tmp[.ext]``) in
    ``folder`` and up to ``depth`` levels below it whose process no longer runs on this machine
    (a run killed with SIGKILL while writing); returns what was removed. Temporary files of a
    running process (two runs sharing a folder) are left alone."""
    removed: list[Path] = []
    folder = Path(folder)
    if depth < 0 or not folder.is_dir():
        return removed
    try:
        children = list(folder.iterdir())
    except OSError:
        return removed
    for child in children:
        match = _TEMP_NAME.match(child.name)
        if match and not _process_alive(int(match.group(1))):
            try:
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
                removed.append(child)
            except OSError:
                pass
        elif child.is_dir() and not child.is_symlink() and not child.name.startswith("."):
            removed += remove_stale_temps(child, depth - 1)
    return removed


def _write_temp(path: Path, data: bytes) -> Path:
    """``data`` into a new unique temporary file beside ``path``; removed again on any failure."""
    fd, tmp = _temp_beside(path)
    try:
        try:
            _write_fd(fd, data)
            os.fchmod(fd, _file_mode())
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a unique temporary file and one rename."""
    path = Path(path)
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file, so a crash leaves no half file."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_many(files: Mapping[str | Path, str]) -> None:
    """Write several text files: every temporary file first, then the renames, so a failure while
    writing (a full disk) leaves all the old files as they were and no temporary file behind."""
    temps: list[tuple[Path, Path]] = []
    try:
        for path, text in files.items():
            temps.append((_write_temp(Path(path), text.encode("utf-8")), Path(path)))
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            with contextlib.suppress(OSError):
                tmp.unlink()  # only the ones not renamed are still there


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
    """Save a matplotlib figure to ``path`` through a unique temporary file, then close it."""
    plt = pyplot()
    path = Path(path)
    fd, tmp = _temp_beside(path, suffix=".tmp" + path.suffix)  # the suffix tells matplotlib the format
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format=path.suffix.lstrip(".") or None, **({} if dpi is None else {"dpi": dpi}))
            os.fchmod(fh.fileno(), _file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    finally:
        plt.close(fig)
    return path


class OutputDirError(ValueError):
    """An output folder cannot be used (a file, read-only, full); the message names it and the fix."""


def prepare_output_dir(path: str | Path, option: str = "--out") -> Path:
    """Create ``path`` (and parents) and prove it writable with a throw-away temporary file, before
    any work starts; :class:`OutputDirError` (one line naming the folder and ``option``) otherwise.
    Temporary files a killed run left there are removed (:func:`remove_stale_temps`)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{option} {path} is an existing file, not a folder; choose another {option}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise OutputDirError(f"{option} {path} is not writable ({err.strerror or err}); "
                             f"choose another {option} or fix its permissions") from None
    stale = remove_stale_temps(path)
    if stale:
        log.warning("removed %d temporary file(s) an interrupted run left in %s (e.g. %s)", len(stale), path,
                    stale[0].name)
    return path


def write_error_text(err: OSError, where: str | Path, option: str = "--out") -> str:
    """One line for a failed write (``err``) under ``where``: what happened and the fix."""
    fix = (f"free disk space or choose another {option}" if err.errno in (errno.ENOSPC, errno.EDQUOT)
           else f"check the folder's permissions or choose another {option}")
    name = f" {err.filename}" if err.filename else ""
    return f"cannot write{name} under {where} ({err.strerror or err}); {fix}"


#: errors of a write whatever the file: the disk or quota is full, the file system is read-only
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def is_write_error(err: OSError, where: str | Path | None) -> bool:
    """Whether ``err`` is a failed write under the output folder ``where`` (a full disk, a read-only
    file system, or any error naming a file in ``where``; ``None``: no output folder), rather than a
    fault elsewhere."""
    if err.errno in _WRITE_ERRNOS:
        return True
    if not err.filename or where is None:
        return False
    try:
        return Path(os.path.abspath(str(err.filename))).is_relative_to(Path(os.path.abspath(where)))
    except (TypeError, ValueError):
        return False


def run_stage(prog: str, run: Callable[[Any], T], cfg: Any, errors: tuple[type[BaseException], ...],
              out: str | Path | None, option: str = "--out") -> T | None:
    """``run(cfg)`` for a stage's ``main()``: its result, or ``None`` after one line on stderr
    (``<prog>: error: ...``, no traceback) when it raises one of ``errors`` (bad input: the
    message names the file or value and the fix), :class:`OutputDirError` (``option`` names a file
    or a read-only folder) or a failed write under ``out`` (:func:`is_write_error`: a full disk).
    Any other exception is a bug and propagates with its traceback."""
    try:
        return run(cfg)
    except (OutputDirError, *errors) as err:
        sys.stderr.write(f"{prog}: error: {err}\n")
    except OSError as err:
        if not is_write_error(err, out):
            raise
        sys.stderr.write(f"{prog}: error: {write_error_text(err, out or '.', option)}\n")
    return None
