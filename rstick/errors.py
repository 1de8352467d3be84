"""Exceptions raised by rstick."""

from __future__ import annotations

from dataclasses import dataclass

from redis.exceptions import ConnectionError as RedisConnectionError


class RstickError(Exception):
    """Base class of every rstick error."""


class UnknownWorkflow(RstickError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown workflow {name!r}")
        self.name = name


class DefinitionError(RstickError):
    """A workflow or step definition is invalid (cycle, unknown parent, duplicate)."""


class SerializationError(RstickError, TypeError):
    """A value is not a msgpack value; the message names the offending path."""


class PayloadTooLarge(RstickError, ValueError):
    """An input or output packs to more than ``Rstick(max_payload_bytes=...)``."""


class TaskInputError(RstickError, TypeError):
    """A task's input is not keyword arguments its function takes; the step fails
    at once, without retries (the same input would fail the same way)."""


class StickyChildError(RstickError):
    """A sticky child workflow cannot be spawned here."""


class StepTimeout(RstickError):
    """A step ran longer than its ``timeout``."""


class SchedulingTimeout(RstickError):
    """A HARD run's worker did not come back before the run's deadline."""


class WorkerIdInUse(RstickError):
    """Another live process runs a worker with this id."""

    def __init__(self, worker_id: str, holder: str) -> None:
        super().__init__(f"worker id {worker_id} is in use by {holder}")
        self.worker_id = worker_id
        self.holder = holder


class LoginFailed(RstickError):
    """Redis refused the credentials of the URL (a wrong or missing password)."""


class RunNotFound(RstickError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} not found")
        self.run_id = run_id


class ResultTimeout(RstickError, TimeoutError):
    """``RunRef.result`` gave up waiting."""


class ClientClosed(RstickError):
    """The client was closed under a command or a wait that was still going on."""

    def __init__(self, run_id: str | None = None) -> None:
        waiting = f" while waiting for run {run_id}" if run_id else ""
        super().__init__(f"the client was closed{waiting}")
        self.run_id = run_id


class PoolTimeout(RstickError, RedisConnectionError):
    """No pooled connection came free in time; the message names the pool and its size.
    A redis-py ``ConnectionError`` too, as the error it replaces was."""


@dataclass
class StepError:
    """What a failed step left behind."""

    type: str
    message: str
    traceback: str = ""


class RunFailed(RstickError):
    """The run failed; carries the failing step and its error."""

    def __init__(self, run_id: str, step: str, error: StepError) -> None:
        super().__init__(f"run {run_id} failed in step {step!r}: {error.type}: {error.message}")
        self.run_id = run_id
        self.step = step
        self.error_type = error.type
        self.error_message = error.message
        self.traceback = error.traceback


class RunCancelled(RstickError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} was cancelled")
        self.run_id = run_id
