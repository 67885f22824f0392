"""Stage configs: one dataclass per stage, defaults < YAML (``--config``) < ``--key value``.

Every field has a default and a ``help`` string in its metadata. Unknown keys (in the
YAML or on the command line) are errors, values are type-checked on load, and every
stage saves its resolved config (plus seed and git revision) beside its outputs.
Command-line values are converted by the field's type annotation, never by YAML's guessing
(``--out 2024_01`` stays ``"2024_01"``; see :func:`_from_cli`), and numbers pass
:func:`mllm4d_lite.checks.check_number` (finite, the right type).

Example::

    @dataclass
    class SynthConfig:
        out: str = field(default="runs/synth", metadata={"help": "output folder"})
        num_clips: int = field(default=4, metadata={"help": "clips to write"})

    cfg = parse_config(SynthConfig, ["--num-clips", "8"], prog="mllm4d synth")
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

from mllm4d_lite.checks import NumberError, check_number
from mllm4d_lite.io import atomic_write_text

log = logging.getLogger(__name__)

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key is wrong; the message names the key and the fix."""


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class CliText(str):
    """A value exactly as typed on a command line (``--key VALUE``, ``--set KEY=VALUE``): it is
    converted by the field's type annotation in :func:`_coerce`, never by YAML's guessing."""


_YAML_NULLS = ("", "~", "null", "Null", "NULL")


def _scalar_types(tp: Any) -> bool:
    return tp in (str, int, float, bool)


def _from_cli(raw: str, tp: Any) -> Any:
    """A command-line string -> the input :func:`_coerce` expects for the field type ``tp``.

    ``str`` fields keep the text verbatim (``--out 2024_01`` stays ``"2024_01"``, ``--out no``
    stays ``"no"``); ``int`` / ``float`` / ``bool`` fields get the text, which :func:`_coerce`
    parses (numbers through :func:`mllm4d_lite.checks.check_number`); ``Optional[X]`` is ``None``
    for YAML's null spellings (``""``, ``~``, ``null``) and X otherwise; lists of those scalars
    are split by YAML's structure only (``[a, b]``; every item stays text) or by commas. Only
    fields typed ``Any``, ``dict`` or a mix still get YAML's typed scalars, as before.
    """
    raw = str(raw)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if type(None) in args and raw.strip() in _YAML_NULLS:
            return None
        if len(inner) == 1:
            return _from_cli(raw, inner[0])
    elif _scalar_types(tp):
        return raw
    elif (origin in (list, tuple) or tp in (list, tuple)) and all(_scalar_types(a) for a in args) and args:
        try:
            return yaml.load(raw, Loader=yaml.BaseLoader)  # structure only: every scalar stays a string
        except yaml.YAMLError:
            return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Check/convert ``value`` to the annotated type ``tp`` (int, float, str, bool, list, dict, Optional);
    a :class:`CliText` is first read by the type (:func:`_from_cli`)."""
    if isinstance(value, CliText):
        value = _from_cli(value, tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"`{name}`: bad value {value!r}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"`{name}` must be true or false, got {value!r}")
    if tp is int or tp is float:  # the one number check: right type and finite (mllm4d_lite.checks)
        if isinstance(value, (dict, list, tuple)) or value is None:
            raise ConfigError(f"`{name}` must be {'an integer' if tp is int else 'a number'}, got {value!r}")
        try:
            return check_number(value, f"`{name}`", kind=tp)
        except NumberError as err:
            raise ConfigError(str(err)) from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"`{name}` must be a string, got {value!r}")
        return str(value)
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"`{name}` must be a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(f"{name}[{i}]", v, inner) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"`{name}` must be a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(f"{name}.{k}", v, vt) for k, v in value.items()}
    return value


def build_config(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Make ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {source}; valid keys for {cls.__name__}: {sorted(names)}"
        )
    kwargs = {k: _coerce(k, v, hints[k]) for k, v in values.items()}
    cfg = cls(**kwargs)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as err:  # a stage's own check: the same one-line error on the command line
            raise ConfigError(str(err)) from None
    return cfg


def yaml_error_text(err: Exception) -> str:
    """PyYAML's error in one line: `` at line L, column C (problem)``."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or (str(err).splitlines() or [type(err).__name__])[0]
    return f"{where} ({problem})"


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe YAML (a flat mapping). Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (see recipes/ for the shipped ones)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML{yaml_error_text(err)}; fix the file, or start again from "
                          "a recipe in recipes/") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value, got {type(data).__name__}")
    return data


def load_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe YAML for a stage: :func:`load_yaml`, except that every top-level scalar keeps the
    text written in the file (a :class:`CliText`), so the field's type reads it exactly as on the
    command line: ``out: 2024_01`` stays the folder ``2024_01`` (YAML would read 202401) and
    ``out: no`` stays ``no`` (YAML: false); numbers and booleans are read by their fields' types.
    Lists and mappings keep YAML's values."""
    data = load_yaml(path)
    raw = yaml.load(Path(path).read_text(), Loader=yaml.BaseLoader) or {}  # structure only: scalars as text
    return {key: CliText(raw[key]) if not isinstance(value, (dict, list)) and isinstance(raw.get(key), str)
            else value for key, value in data.items()}


def _parse_cli_value(raw: str) -> CliText:
    """A command-line value, kept as typed; :func:`build_config` converts it by the field's type."""
    return CliText(raw)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` (the bench scripts' ``--set``) -> ``{key: CliText(value)}``; values are
    converted by :func:`build_config` as on the stage command lines (by the field's type, see
    :func:`_from_cli`), dashes in keys become underscores."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip().replace("-", "_")] = _parse_cli_value(raw)
    return out


def make_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with ``--config`` and one ``--key value`` option per field."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", default=None, help="recipe YAML (defaults < YAML < --key value)")
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        )
        kind = hints[f.name]
        extra: dict[str, Any] = {}
        if kind is bool:
            extra = {"nargs": "?", "const": "true"}
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=argparse.SUPPRESS,
            metavar=f.name.upper() if kind is not bool else "BOOL",
            help=f"{f.metadata.get('help', '')} (default: {default!r})".replace("%", "%%"),  # argparse formats %
            **extra,
        )
    return parser


def parse_config(
    cls: type[T], argv: Sequence[str] | None, prog: str, description: str = ""
) -> T:
    """Parse ``argv`` into a ``cls`` instance: defaults, then ``--config`` YAML, then flags."""
    parser = make_parser(cls, prog, description)
    ns = parser.parse_args(list(argv) if argv is not None else None)
    values: dict[str, Any] = {}
    source = "defaults"
    try:
        if ns.config:
            values.update(load_recipe(ns.config))
            # a run's resolved config.yaml (save_resolved) carries provenance under _meta; reusing
            # that file as a recipe (`--config runs/x/config.yaml`) must work, so _meta is not a setting
            values.pop("_meta", None)
            source = ns.config
        cli = {k: _parse_cli_value(v) for k, v in vars(ns).items() if k != "config"}
        values.update(cli)
        cfg = build_config(cls, values, source=f"{source} / command line")
    except ConfigError as err:
        parser.exit(2, f"{prog}: error: {err}\n")
    return cfg


def git_revision() -> str:
    """The kit's git revision (with ``-dirty``), or ``unknown`` outside a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def save_resolved(cfg: Any, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config plus git revision and command line to ``out_dir/name``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    meta = {"git_revision": git_revision(), "command": " ".join(sys.argv)}
    path = out_dir / name
    atomic_write_text(path, yaml.safe_dump({**data, "_meta": meta}, sort_keys=False))
    return path






def merge_config_classes(name: str, *classes: type) -> type:
    """One dataclass holding the fields of several stage configs (for a command that runs
    two stages, e.g. ``curate`` = 4D curation + QA). Field names must not collide."""
    fields: list[tuple[str, Any, Any]] = []
    seen: dict[str, str] = {}
    for cls in classes:
        hints = _field_types(cls)
        for f in dataclasses.fields(cls):
            if f.name in seen:
                raise ConfigError(f"field {f.name!r} is in both {seen[f.name]} and {cls.__name__}")
            seen[f.name] = cls.__name__
            kw: dict[str, Any] = {"metadata": f.metadata}
            if f.default is not dataclasses.MISSING:
                kw["default"] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                kw["default_factory"] = f.default_factory
            fields.append((f.name, hints[f.name], dataclasses.field(**kw)))
    return dataclasses.make_dataclass(name, fields)


def split_config(merged: Any, cls: type[T]) -> T:
    """Pull the fields of ``cls`` out of a merged config instance (validated again)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return build_config(cls, {k: v for k, v in dataclasses.asdict(merged).items() if k in names}, cls.__name__)
