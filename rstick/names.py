"""Which names the Redis layout can hold: workflows, steps, tasks, queues."""

from __future__ import annotations

from .errors import DefinitionError


def check_name(kind: str, name: str) -> str:
    """Refuse a name the Redis layout cannot hold; return it.

    Step, workflow and queue names are stored space-separated (a run's steps,
    a worker's workflows and queues) and step names in retry entries
    ``run|step|attempt|epoch``: a name with whitespace or ``|`` would be split
    apart, or an empty one lost, long after it was accepted.
    """
    if not isinstance(name, str) or not name:
        raise DefinitionError(f"{kind} name {name!r} must be a non-empty string")
    for ch in name:
        if ch.isspace():
            raise DefinitionError(
                f"{kind} name {name!r} contains whitespace ({ch!r}): "
                "names are stored space-separated in Redis"
            )
        if ch == "|":
            raise DefinitionError(
                f"{kind} name {name!r} contains '|': it separates the fields of "
                "retry entries ('run|step|attempt|epoch')"
            )
    return name
