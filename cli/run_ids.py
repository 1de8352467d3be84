"""A run id as a person types it: whole, or a unique prefix (the examples print 8 characters).

Every command that takes a run id resolves it with ``resolve_run_id``.
"""

from __future__ import annotations

import re
from typing import Any

from rstick.client import Client

from .errors import BadInput

SCAN_COUNT = 1000  # index entries Redis looks at per ZSCAN call
SCAN_CALLS = 1000  # at most this many calls: a million runs in the index
MATCHES_SHOWN = 10  # an ambiguous prefix lists this many of its runs


def resolve_run_id(client: Client, given: str) -> str:
    """The id of the run ``given`` names: itself if such a run exists, else the one run
    whose id starts with it. BadInput (exit 2) if it names no run, or several (listing
    them)."""
    if not given:
        raise BadInput("an empty run id names no run")
    if client.redis.exists(client.keys.run(given)):
        return given
    indexes = [
        client.keys.runs(name.decode()) for name in client.redis.hkeys(client.keys.workflows)
    ]
    matches, complete = runs_starting_with(client.redis, indexes, given)
    if len(matches) == 1:
        return matches[0]
    if not matches:
        where = "" if complete else f" among the {SCAN_CALLS * SCAN_COUNT:,} runs looked at"
        raise BadInput(f"no run {given!r}{where} (see `rstick runs list`)")
    shown = sorted(matches)[:MATCHES_SHOWN]
    more = "" if len(matches) <= MATCHES_SHOWN and complete else ", ..."
    raise BadInput(
        f"run id prefix {given!r} is ambiguous: it matches {', '.join(shown)}{more}; "
        "give more characters"
    )


def runs_starting_with(redis: Any, indexes: list[str], prefix: str) -> tuple[list[str], bool]:
    """Run ids of the runs indexes (one per workflow) that start with ``prefix`` (ZSCAN
    with a MATCH pattern: Redis filters, only matches come back), and whether every
    index was looked at whole. Stops after ``SCAN_CALLS`` calls in all, or once more
    runs than ``MATCHES_SHOWN`` match: the prefix is ambiguous then, whatever else
    matches."""
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
    found: dict[str, None] = {}  # a scan may return a member twice
    calls = 0
    for index in indexes:
        cursor = 0
        while calls < SCAN_CALLS:
            calls += 1
            cursor, members = redis.zscan(index, cursor, match=pattern, count=SCAN_COUNT)
            found.update((m.decode(errors="backslashreplace"), None) for m, _ in members)
            if len(found) > MATCHES_SHOWN:
                return list(found), False
            if cursor == 0:
                break
        else:
            return list(found), False
    return list(found), True
