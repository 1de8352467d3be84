"""What crosses the line between Python and the Lua scripts, typed on the Python side.

Each script's header names the Python reader of its reply; this module is where
those replies and argument lists take shape, so that a field added on one side
and not the other fails a test (tests/test_protocol.py) rather than a run.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import defaults

if TYPE_CHECKING:
    from .definitions import WorkflowDef


class RunField(enum.StrEnum):
    """The fields of a run's hash, ``{ns}:run:<id>`` (the scripts spell the same
    names; tests/test_protocol.py checks that nothing else ever appears there)."""

    WORKFLOW = "wf"
    SHAPE = "shape"  # its workflow's steps and parents, hashed (shape_of): who may run it
    KIND = "kind"  # "task" or "workflow"
    STATUS = "status"  # RunStatus
    STICKY = "sticky"  # StickyStrategy
    QUEUE = "queue"
    EPOCH = "epoch"  # a SOFT run's moves so far; fences completions of the last worker
    WORKER = "worker"  # the pinned worker ("" while unpinned)
    STEPS = "steps"  # every step, space-separated
    LEFT = "left"  # steps not yet succeeded
    HELD = "held"  # steps queued until a worker pins the run, space-separated
    SCHEDULE_TIMEOUT = "sto"  # seconds a parked or waiting run may wait
    RETENTION = "retention"  # seconds its keys stay once it ended
    INPUT = "input"  # msgpack
    CREATED = "created"  # ms, Redis time, like every time here
    STARTED = "started"
    FINISHED = "finished"
    ERROR_STEP = "error_step"  # the step whose failure ended the run
    PARENT_RUN = "parent_run"
    PARENT_STEP = "parent_step"
    STICKY_CHILD = "sticky_child"  # "1": pinned at creation to its parent's worker
    PARKED = "parked"  # a HARD run waiting for its worker: until when
    REASSIGNED = "reassigned"  # "1" once it moved from a lost worker
    WAITING = "waiting"  # why it cannot go on ("no_worker_with_code")
    WAITING_SINCE = "waiting_since"
    FOLLOWS = "follows"  # a sticky child held until this parent is pinned again
    FOLLOWERS = "followers"  # the children that follow this run, space-separated


class StepField(enum.StrEnum):
    """The fields of one step in its run's hash: ``<step>.<suffix>``."""

    STATUS = "st"  # StepStatus
    ATTEMPT = "a"  # the current attempt (0: not yet queued)
    WORKER = "w"  # the worker of its current (or last) attempt
    STARTED = "t0"
    FINISHED = "t1"
    ERROR = "e"  # msgpack {"type", "message", "tb"}
    PARENTS = "par"  # its parents, space-separated
    PENDING = "p"  # parents not yet succeeded
    LOST = "lost"  # attempts lost with their worker
    COMPLETED = "c"  # the attempt whose completion was applied last
    SCHEDULE_TIMEOUT = "sto"  # its own, when it has one
    OUTPUT = "o"  # msgpack, once it succeeded

    def of(self, step: str) -> str:
        """The field of this step: ``StepField.STATUS.of("a") == "a.st"``."""
        return f"{step}.{self.value}"


CHILD_LINK = "c|"  # a run's field "c|<child run id>" = the step that spawned that child

# The fields of every entry on a stream: run, step, attempt, epoch, workflow.
ENTRY_FIELDS = ("r", "s", "a", "e", "w")


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


def enqueue_fields(wf: WorkflowDef, *, pinned: bool, retention: float) -> list[Any]:
    """What enqueue.lua is given for any run of ``wf`` (the client packs it once per
    definition): the roots it dispatches now, then the run's hash.

    Every step waits at attempt 0 but the roots, queued at attempt 1. The roots of a
    run pinned at creation all go to its worker now; an unpinned sticky run sends
    its first root to the shared queue and holds the others until a worker pins it;
    any other run sends every root now."""
    F, S = RunField, StepField
    roots = wf.roots
    sticky = wf.sticky.value != "none"
    now_roots = roots if pinned or not sticky else roots[:1]
    held = [] if pinned or not sticky else roots[1:]
    args: list[Any] = [len(now_roots), *now_roots]
    args += [F.WORKFLOW, wf.name, F.SHAPE, shape_of(wf)]
    args += [F.KIND, "task" if wf.is_task else "workflow"]
    args += [F.STATUS, "queued", F.STICKY, wf.sticky.value, F.QUEUE, wf.queue, F.EPOCH, "0"]
    args += [F.LEFT, len(wf.steps), F.SCHEDULE_TIMEOUT, wf.schedule_timeout]
    args += [F.RETENTION, int(retention)]
    for s in wf.steps.values():
        root = not s.parents
        args += [S.STATUS.of(s.name), "queued" if root else "waiting"]
        args += [S.ATTEMPT.of(s.name), "1" if root else "0"]
        if s.parents:
            args += [
                S.PENDING.of(s.name),
                len(s.parents),
                S.PARENTS.of(s.name),
                " ".join(s.parents),
            ]
        if s.schedule_timeout is not None:
            args += [S.SCHEDULE_TIMEOUT.of(s.name), s.schedule_timeout]
    args += [F.STEPS, " ".join(wf.steps), F.HELD, " ".join(held)]
    return args


def shape_of(wf: WorkflowDef) -> str:
    """Its steps and their parents, hashed: two definitions of a workflow with the
    same shape run each other's runs (a step's new body is fine); another shape
    cannot (a worker completing a step names the steps it releases from its own
    definition)."""
    steps = sorted((s.name, sorted(s.parents)) for s in wf.steps.values())
    return hashlib.sha1(json.dumps(steps).encode()).hexdigest()[:12]


def code_words(workflows: Iterable[WorkflowDef]) -> str:
    """What a worker has the code of, as take.lua, due.lua and reap_waiting.lua read it
    (``has_code`` in lib.lua): " name name|shape ... ". A worker may have another
    definition of a workflow than a run's (a rolling deploy that adds a step): it
    takes only the runs of its own shape. ('|' is refused in names: the words
    cannot collide.)"""
    words = [w for wf in workflows for w in (wf.name, f"{wf.name}|{shape_of(wf)}")]
    return " " + " ".join(words) + " "


def standstill_ms(heartbeat: float) -> int:
    """beat.lua's and lead.lua's gap_ms: no beat nor pass landing for longer means
    Redis stood still (note_activity in lib.lua)."""
    return int(defaults.STANDSTILL_BEATS * heartbeat * 1000)
