"""The client's hand-packed fast path: enqueue.lua's calls as the bytes Redis reads.

redis-py's command path costs tens of microseconds per command, on the way from
enqueue to a step's start; here a workflow's share of enqueue.lua's ARGV is packed
once, and each call adds only its own head and tail. The worker's counterpart is
``blocking.py``. A newcomer may skip both: they change how fast, never what.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from .definitions import WorkflowDef


def bulks(args: Iterable[Any]) -> bytes:
    """Arguments as RESP bulk strings, encoded as redis-py does (str as UTF-8,
    numbers by repr)."""
    out = []
    for value in args:
        if isinstance(value, str):
            value = value.encode()
        elif not isinstance(value, bytes):
            value = repr(value).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(value), value))
    return b"".join(out)


@dataclass(frozen=True)
class Fields:
    """The part of enqueue.lua's ARGV that every run of a definition shares."""

    wf: WorkflowDef
    args: list[Any]
    packed: bytes


@dataclass(frozen=True)
class Call:
    """One call of enqueue.lua: its ARGV is head, the definition's fields, tail."""

    run_id: str
    head: list[Any]
    fields: Fields
    tail: list[Any]

    @property
    def args(self) -> list[Any]:
        return [*self.head, *self.fields.args, *self.tail]

    def packed(self, sha: str, key: str) -> bytes:
        """EVALSHA sha 1 key ARGV..., as the bytes Redis reads."""
        n = 4 + len(self.head) + len(self.fields.args) + len(self.tail)
        return b"".join(
            (
                b"*%d\r\n" % n,
                bulks(("EVALSHA", sha, 1, key, *self.head)),
                self.fields.packed,
                bulks(self.tail),
            )
        )


def send_packed(conn: Any, calls: list[Call], sha: str, key: str) -> list[Any] | None:
    """The calls' replies (errors among them), or None if the connection failed."""
    try:
        conn.send_packed_command([b"".join(c.packed(sha, key) for c in calls)])
        results = []
        for _ in calls:
            try:
                results.append(conn.read_response())
            except ResponseError as exc:
                results.append(exc)
        return results
    except Exception:
        conn.disconnect()  # it connects again when next used
        return None
    except BaseException:  # interrupted mid-reply: the connection is unusable
        conn.disconnect()
        raise
