"""What crosses the line between Python and the Lua scripts, typed on the Python side.

Each script's header names the Python reader of its reply; this module is where
those replies and argument lists take shape, so that a field added on one side
and not the other fails a test (tests/test_protocol.py) rather than a run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def text(value: bytes | str) -> str:
    """A name from Redis; bytes that are not UTF-8 (hand-written entries) stay visible."""
    return value.decode(errors="backslashreplace") if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class Claim:
    """One reply of take.lua's ``claim``: a step to start here, or what became of an
    entry this worker read and will not run."""

    kind: str  # "run", "fwd", "wait", "drop" or "dead"
    run_id: str
    step: str
    detail: str = ""  # fwd: the worker it went to; wait, drop, dead: why
    attempt: int = 0
    epoch: int = 0
    workflow: str = ""
    stream: str = ""
    entry_id: str = ""
    input: bytes | None = None
    reassigned: bool = False
    lost: int = 0  # how often this step's worker was lost (not counted as retries)
    parents: dict[str, bytes | None] = field(default_factory=dict)

    @classmethod
    def from_reply(cls, reply: list[Any]) -> Claim:
        kind, run_id, step = text(reply[0]), text(reply[1]), text(reply[2])
        if kind == "dead":
            return cls(
                kind, run_id, step, text(reply[3]), stream=text(reply[4]), entry_id=text(reply[5])
            )
        if kind != "run":
            return cls(kind, run_id, step, text(reply[3]))
        return cls(
            kind,
            run_id,
            step,
            attempt=int(reply[3]),
            epoch=int(reply[4]),
            workflow=text(reply[5]),
            stream=text(reply[6]),
            entry_id=text(reply[7]),
            input=reply[8],
            reassigned=reply[9] == b"1",
            lost=int(reply[10]),
            parents={text(reply[i]): reply[i + 1] or None for i in range(11, len(reply), 2)},
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """One item of complete.lua's batch: how a step's attempt ended."""

    kind: str  # "ok" (payload: output), "retry" (payload: error), "fail", "dead"
    stream: str
    entry_id: str
    run_id: str
    step: str
    attempt: int
    epoch: int
    payload: bytes
    delay_ms: int  # for "retry": when the next attempt is due, from now
    children: tuple[str, ...]  # the steps whose parents include this one

    @property
    def entry(self) -> str:
        """The entry it settles, as the worker keys its running steps."""
        return f"{self.stream} {self.entry_id}"

    def to_args(self) -> list[Any]:
        """Its part of complete.lua's ARGV."""
        return [
            self.kind,
            self.stream,
            self.entry_id,
            self.run_id,
            self.step,
            self.attempt,
            self.epoch,
            self.payload,
            self.delay_ms,
            len(self.children),
            *self.children,
        ]
