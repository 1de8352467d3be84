"""The client's hand-packed fast path: enqueue.lua's calls as the bytes Redis reads.

redis-py's command path costs tens of microseconds per command, on the way from
enqueue to a step's start; here a workflow's share of enqueue.lua's ARGV is packed
once, and each call adds only its own head and tail. The worker's counterpart is
``blocking.py``. A newcomer may skip both: they change how fast, never what.
"""

from __future__ import annotations

import functools
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


@dataclass(frozen=True, slots=True)
class Call:
    """One call of enqueue.lua. Its ARGV: the head (the namespace and what is the
    same for every run of a workflow enqueued alike), the run's id and delay, the
    definition's fields, then the tail (the run's own fields, its input last)."""

    run_id: str
    head: tuple[Any, ...]  # prefix, workflow, queue, pin, parent run, parent step
    delay_ms: int
    fields: Fields
    tail: tuple[Any, ...]  # (field, value) * n of the run's hash, before its input
    data: bytes  # the packed input

    @property
    def args(self) -> list[Any]:
        return [*self.head, self.run_id, self.delay_ms, *self.fields.args, *self.tail, self.data]

    def packed(self, sha: str, key: str) -> bytes:
        """EVALSHA sha 1 key ARGV..., as the bytes Redis reads: what is the same for
        every run of a workflow is packed once (``_packed_once``)."""
        n = 4 + len(self.head) + 2 + len(self.fields.args) + len(self.tail) + 1
        run_id, delay = self.run_id.encode(), b"%d" % self.delay_ms
        return b"".join(
            (
                b"*%d\r\n" % n,
                _packed_once(("EVALSHA", sha, 1, key, *self.head)),
                b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(run_id), run_id, len(delay), delay),
                self.fields.packed,
                _packed_once(self.tail),
                b"$%d\r\n%s\r\n" % (len(self.data), self.data),
            )
        )


@functools.lru_cache(maxsize=1024)
def _packed_once(args: tuple[Any, ...]) -> bytes:
    return bulks(args)


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
