"""What TRL hands an ST-reward function: the completions and the dataset's columns.

Completions may be plain text or conversational (``[{"role": "assistant", "content": "..." |
[{"type": "text", "text": ...}]}]``); columns arrive through ``**kwargs`` as lists, one item per
completion (a scalar or a one-item list is broadcast). A missing column, or one of the wrong
length, is a wiring error and raises ``ValueError``.
"""

from __future__ import annotations

import json
from typing import Any, Mapping


def completion_text(completion: Any) -> str | None:
    """The text of one completion, or None when it cannot be read.

    Accepts a string, a message ``{"role": "assistant", "content": ...}``, or a list of
    messages (TRL's conversational form; the assistant messages' texts are joined with
    newlines, messages without a role count as the assistant's). ``content`` may be a string
    or a list of parts ``{"type": "text", "text": ...}`` (other parts are skipped).

    >>> completion_text([{"role": "assistant", "content": [{"type": "text", "text": "hi"}]}])
    'hi'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    if not isinstance(completion, (list, tuple)):
        return None
    texts = []
    for message in completion:
        if not isinstance(message, Mapping) or message.get("role", "assistant") != "assistant":
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, (list, tuple)):
            parts = [p if isinstance(p, str) else p.get("text") for p in content
                     if isinstance(p, str) or (isinstance(p, Mapping) and p.get("type", "text") == "text")]
            if not all(isinstance(p, str) for p in parts):
                return None
            texts.append("".join(parts))
        else:
            return None
    return "\n".join(texts) if texts else None


def as_completion_list(completions: Any, reward: str) -> list[Any]:
    """The batch as a list; a bare string or non-sequence is a wiring error (not model output)."""
    if isinstance(completions, (str, bytes)) or not isinstance(completions, (list, tuple)):
        raise ValueError(f"{reward}_reward takes a list of completions (one per sample), got "
                         f"{type(completions).__name__}; wrap a single completion as [completion]")
    return list(completions)


def column(kwargs: Mapping[str, Any], name: str, n: int, reward: str, required: bool = True) -> list[Any]:
    """Column ``name`` as a list of ``n`` items; a scalar or a one-item list is broadcast."""
    if name not in kwargs:
        if not required:
            return [None] * n
        raise ValueError(
            f"{reward}_reward needs the dataset column {name!r} (rft.jsonl records carry it); got "
            f"columns {sorted(k for k in kwargs if k not in ('trainer_state', 'log_extra', 'log_metric'))}"
        )
    value = kwargs[name]
    if isinstance(value, (list, tuple)):
        if len(value) == n:
            return list(value)
        if len(value) == 1:
            return list(value) * n
        raise ValueError(f"column {name!r} has {len(value)} items for {n} completions; pass one per completion")
    return [value] * n


def maybe_json(value: Any) -> Any:
    """Columns stored as JSON strings (to dodge Arrow's struct columns) are decoded."""
    if isinstance(value, str) and value.strip()[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value

