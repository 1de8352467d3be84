"""Which names the Redis layout can hold: workflows, steps, tasks, queues, events
and worker ids."""

from __future__ import annotations

import unicodedata

from .errors import DefinitionError

MAX_NAME_BYTES = 200  # names travel in every stream entry and history event

# Control (NUL, DEL, C1), format (zero-width, bidi overrides) and surrogate code
# points: invisible or misleading in logs and tables, and a lone surrogate cannot
# be encoded as UTF-8 at all, so Redis could never receive the name.
_INVISIBLE = {"Cc": "a control character", "Cf": "a format character", "Cs": "a surrogate"}


def name_problem(kind: str, name: object) -> str | None:
    """Why ``name`` cannot be a ``kind`` name (or ``kind`` itself, as in "worker id"),
    or None when it can."""
    label = kind if kind.endswith(" id") else f"{kind} name"
    if not isinstance(name, str) or not name:
        return f"{label} {name!r} must be a non-empty string"
    for ch in name:
        if ch.isspace():
            return (
                f"{label} {name!r} contains whitespace ({ch!r}): "
                "names are stored space-separated in Redis"
            )
        if ch == "|":
            return (
                f"{label} {name!r} contains '|': it separates the fields of "
                "retry entries ('run|step|attempt|epoch')"
            )
        if ch in "{}":
            return (
                f"{label} {name!r} contains {ch!r}: braces mark a key's hash tag, "
                "and only the namespace's {ns} may hold one"
            )
        what = _INVISIBLE.get(unicodedata.category(ch))
        if what:
            return f"{label} {name!r} contains {what} (U+{ord(ch):04X})"
    size = len(name.encode())
    if size > MAX_NAME_BYTES:
        return (
            f"{label} {name[:40]!r}... is {size} bytes long, "
            f"over the limit of {MAX_NAME_BYTES} (UTF-8)"
        )
    return None


def check_name(kind: str, name: str, error: type[Exception] = DefinitionError) -> str:
    """Refuse a name the Redis layout cannot hold (raise ``error``); return it.

    Step, workflow and queue names are stored space-separated (a run's steps,
    a worker's workflows and queues) and step names in retry entries
    ``run|step|attempt|epoch``: a name with whitespace or ``|`` would be split
    apart, or an empty one lost, long after it was accepted.
    """
    problem = name_problem(kind, name)
    if problem:
        raise error(problem)
    return name
