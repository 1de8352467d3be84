"""Records that cross Redis: runs, their steps, workers. The state machine lives here."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from .codec import unpack
from .errors import StepError
from .protocol import CHILD_LINK, RunField, StepField


class StickyStrategy(enum.StrEnum):
    """SOFT: a lost worker's runs move to another worker. HARD: they wait for it."""

    SOFT = "soft"
    HARD = "hard"
    NONE = "none"


class RunStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})


class StepStatus(enum.StrEnum):
    WAITING = "waiting"  # parents not done yet
    QUEUED = "queued"  # in a stream (or held until the run is pinned)
    RUNNING = "running"
    RETRYING = "retrying"  # failed, next attempt in the delayed set
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABANDONED = "abandoned"  # finished after its run had already ended
    CANCELLED = "cancelled"  # its run was cancelled before it finished


def _s(raw: dict[bytes, bytes], name: str, default: str = "") -> str:
    v = raw.get(name.encode())
    return v.decode() if v is not None else default


def _ms(raw: dict[bytes, bytes], name: str) -> float | None:
    v = raw.get(name.encode())
    return int(v) / 1000 if v else None


@dataclass
class StepState:
    name: str
    status: StepStatus
    attempts: int
    worker: str | None
    started_at: float | None
    finished_at: float | None
    error: StepError | None

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status.value,
            "worker": self.worker,
            "attempts": self.attempts,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration": self.duration,
            "error": None if self.error is None else vars(self.error),
        }


def decode_error(data: bytes | None) -> StepError | None:
    if not data:
        return None
    value = unpack(data)
    if isinstance(value, dict):
        return StepError(
            str(value.get("type", "")), str(value.get("message", "")), str(value.get("tb", ""))
        )
    return StepError("Error", str(value))


@dataclass
class Run:
    """A run as stored in ``{ns}:run:<id>``."""

    run_id: str
    workflow: str
    status: RunStatus
    sticky: StickyStrategy
    worker: str | None
    epoch: int
    queue: str
    created_at: float | None
    started_at: float | None
    finished_at: float | None
    steps: list[StepState]
    error_step: str | None = None
    parent: str | None = None  # "run_id/step" of the run that spawned this one
    parked_until: float | None = None
    is_task: bool = False
    reassigned: bool = False
    children: list[str] = field(default_factory=list)
    # Why the run cannot go on now, and since when: {"reason": "no_worker_with_code",
    # "since": seconds}. None while it can.
    waiting: dict[str, Any] | None = None

    @classmethod
    def from_hash(cls, run_id: str, raw: dict[bytes, bytes]) -> Run:
        F, S = RunField, StepField
        steps = []
        for name in _s(raw, F.STEPS).split():
            steps.append(
                StepState(
                    name=name,
                    status=StepStatus(_s(raw, S.STATUS.of(name), "waiting")),
                    attempts=int(_s(raw, S.ATTEMPT.of(name), "0")),
                    worker=_s(raw, S.WORKER.of(name)) or None,
                    started_at=_ms(raw, S.STARTED.of(name)),
                    finished_at=_ms(raw, S.FINISHED.of(name)),
                    error=decode_error(raw.get(S.ERROR.of(name).encode())),
                )
            )
        parent_run = _s(raw, F.PARENT_RUN)
        link = CHILD_LINK.encode()
        return cls(
            run_id=run_id,
            workflow=_s(raw, F.WORKFLOW),
            status=RunStatus(_s(raw, F.STATUS, "queued")),
            sticky=StickyStrategy(_s(raw, F.STICKY, "none")),
            worker=_s(raw, F.WORKER) or None,
            epoch=int(_s(raw, F.EPOCH, "0")),
            queue=_s(raw, F.QUEUE),
            created_at=_ms(raw, F.CREATED),
            started_at=_ms(raw, F.STARTED),
            finished_at=_ms(raw, F.FINISHED),
            steps=steps,
            error_step=_s(raw, F.ERROR_STEP) or None,
            parent=f"{parent_run}/{_s(raw, F.PARENT_STEP)}" if parent_run else None,
            parked_until=_ms(raw, F.PARKED),
            is_task=_s(raw, F.KIND) == "task",
            reassigned=_s(raw, F.REASSIGNED) == "1",
            children=sorted(k.decode()[len(link) :] for k in raw if k.startswith(link)),
            waiting={"reason": _s(raw, F.WAITING), "since": _ms(raw, F.WAITING_SINCE)}
            if raw.get(F.WAITING.encode())
            else None,
        )

    def step(self, name: str) -> StepState:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "workflow": self.workflow,
            "status": self.status.value,
            "sticky": self.sticky.value,
            "worker": self.worker,
            "epoch": self.epoch,
            "queue": self.queue,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error_step": self.error_step,
            "parent": self.parent,
            "children": self.children,
            "parked_until": self.parked_until,
            "waiting": self.waiting,
            "steps": [s.to_json() for s in self.steps],
        }


@dataclass(frozen=True)
class Cancellation:
    """What ``cancel`` did: the run's status afterwards (CANCELLED, or the status it
    had already ended with) and every run the call cancelled, the run itself first
    when it was one of them, then its descendants."""

    run_id: str
    status: RunStatus
    cancelled: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status.value,
            "cancelled": list(self.cancelled),
        }


@dataclass
class WorkerInfo:
    worker_id: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    running: int
    pinned: int
    started_at: float | None
    last_heartbeat: float | None
    alive: bool
    workflows: list[str]

    @classmethod
    def from_hash(
        cls, worker_id: str, raw: dict[bytes, bytes], deadline: float, pinned: int, now: float
    ) -> WorkerInfo:
        """A worker as stored in ``{ns}:worker:<id>``, with its heartbeat deadline and
        pinned count; ``now`` and ``deadline`` are Redis's time, in seconds."""
        return cls(
            worker_id=worker_id,
            host=_s(raw, "host"),
            pid=int(_s(raw, "pid", "0")),
            queues=_s(raw, "queues").split(),
            concurrency=int(_s(raw, "concurrency", "0")),
            running=int(_s(raw, "running", "0")),
            pinned=pinned,
            started_at=_ms(raw, "started"),
            last_heartbeat=_ms(raw, "beat"),
            alive=deadline > now and not raw.get(b"reaped"),
            workflows=_s(raw, "workflows").split(),
        )

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))
